"""Review page at scale: build time, page size and (with Chromium) load and re-label times.

    python bench/bench_report.py --n 5000 [--browser]

Writes a synthetic segment run of N images (fade_cli.report.synthetic; --size 64 px pictures) in a
temporary folder, builds the page twice (cold: every thumbnail made; warm: thumbnails kept),
and prints sizes. With --browser (needs selenium and /usr/bin/chromium) it opens the page
headless and prints the time until the grid is ready, how many thumbnails were loaded at
first, and the time one threshold change takes to re-label every card.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fade_cli.report import build_report  # noqa: E402
from fade_cli.report.synthetic import write_synthetic_run  # noqa: E402


def _browser_numbers(page: Path) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from browser import chromium_driver  # tests/browser.py: the same flags as the tests

    with chromium_driver() as driver:
        t0 = time.perf_counter()
        driver.get(page.as_uri())
        driver.execute_script("return 1")
        ready = time.perf_counter() - t0
        loaded = driver.execute_script("return [...document.querySelectorAll('#grid img')].filter(i => i.getAttribute('src')).length")
        relabel_ms = driver.execute_script("""
            const s = document.getElementById('threshold'); const times = [];
            for (const v of [s.min, s.max, (Number(s.min) + Number(s.max)) / 2]) {
              const t = performance.now(); s.value = v; s.dispatchEvent(new Event('input')); times.push(performance.now() - t); }
            return times;""")
        filter_ms = driver.execute_script("""
            const t = performance.now(); document.querySelector('[data-filter=anomalous]').click(); return performance.now() - t;""")
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    return {"load_s": ready, "thumbnails_loaded_at_start": loaded, "relabel_ms": relabel_ms, "filter_ms": filter_ms,
            "console_errors": len(errors)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--failed", type=int, default=25)
    ap.add_argument("--size", type=int, default=64, help="side of the synthetic pictures in px")
    ap.add_argument("--browser", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        t0 = time.perf_counter()
        write_synthetic_run(run, args.n, failed=args.failed, size=args.size)
        print(f"synthetic run: {args.n} images of {args.size} px, {args.failed} failed, written in {time.perf_counter() - t0:.1f} s")
        cold = build_report(run)
        warm = build_report(run)
        thumbs = list((run / "report_files").glob("*.jpg"))
        thumb_bytes = sum(p.stat().st_size for p in thumbs)
        html_bytes = cold.page.stat().st_size
        print(f"build cold: {cold.seconds:.2f} s ({cold.thumbnails_made} thumbnails made)")
        print(f"build warm: {warm.seconds:.2f} s ({warm.thumbnails_kept} thumbnails kept)")
        print(f"report.html: {html_bytes / 1e6:.2f} MB ({html_bytes / args.n:.0f} B per image)")
        print(f"thumbnails: {len(thumbs)} files, {thumb_bytes / 1e6:.2f} MB ({thumb_bytes / max(1, len(thumbs)) / 1e3:.1f} kB each)")
        if args.browser:
            for k, v in _browser_numbers(cold.page).items():
                print(f"browser {k}: {[round(x, 1) for x in v] if isinstance(v, list) else round(v, 2)}")


if __name__ == "__main__":
    main()
