"""Golden outputs of detect, segment and eval (FADE, FiLo, ALFA; 0- and 1-shot) on the tiny model.

`compute(workdir)` runs every case through the CLI and returns, per case, the JSON-able outputs
(rows minus timings, paths relative to the work folder) and the maps. Stored under tests/golden/
by `python tests/golden_cases.py` (run it only when an output change is intended and explained);
tests/test_golden.py recomputes and compares to 1e-6.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import numpy as np

TESTS = Path(__file__).parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from conftest import TINY_CONFIG, random_image  # noqa: E402
from helpers import invoke, rows  # noqa: E402

GOLDEN = TESTS / "golden"
TOLERANCE = 1e-6
TINY = ["--model", str(TINY_CONFIG), "--pretrained", "none", "--device", "cpu"]
SMALL = [*TINY, "--scales", "32,64", "--cls-scale", "32", "--seg-prompts", "winclip"]
METHODS = {
    "fade": [*SMALL],
    "filo": [*SMALL, "--method", "filo", "--positions"],
    "alfa": [*TINY, "--method", "alfa"],
}
TIMINGS = ("ms", "seconds", "seconds_per_image")


def _inputs(work: Path) -> tuple[Path, Path]:
    images, refs = work / "imgs", work / "refs"
    images.mkdir(parents=True, exist_ok=True)
    refs.mkdir(exist_ok=True)
    for i in range(2):
        random_image(i, (72 + 8 * i, 56)).save(images / f"img{i}.png")
    random_image(42).save(refs / "good.png")
    return images, refs


def _relative(value, work: Path):
    """Paths under the work folder as relative strings, recursively; timings dropped."""
    if isinstance(value, dict):
        return {k: _relative(v, work) for k, v in value.items() if k not in TIMINGS}
    if isinstance(value, list):
        return [_relative(v, work) for v in value]
    if isinstance(value, str) and value.startswith(str(work)):
        return Path(value).relative_to(work).as_posix()
    return value


def _check(code: int, stderr: str, case: str) -> None:
    if code != 0:
        raise AssertionError(f"{case}: exit {code}: {stderr}")


def compute(work: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """Every case's outputs: (JSON-able records by case, maps by 'case/name')."""
    from fade_cli.data.demo_data import make_demo_dataset

    images, refs = _inputs(work)
    demo = make_demo_dataset(work / "demo", classes=("tiles",), n_train=2, n_good=2, n_bad=1, size=64)
    cache = work / "cache"
    records, maps = {}, {}
    for method, flags in METHODS.items():
        for shots, extra in (("0shot", []), ("1shot", ["--refs", str(refs / "good.png")])):
            case = f"{method}-{shots}"
            code, out, err = invoke("detect", str(images), "-q", "--class", "bottle", *flags, *extra, cache=cache)
            _check(code, err, f"detect {case}")
            records[f"detect/{case}"] = _relative(rows(out), work)
            seg = work / "seg" / case
            code, out, err = invoke("segment", str(images), "--out", str(seg), "-q", "--class", "bottle", *flags, *extra,
                                    cache=cache)
            _check(code, err, f"segment {case}")
            got = rows(out)
            records[f"segment/{case}"] = _relative(got, work)
            for r in got:
                maps[f"segment/{case}/{Path(r['path']).name}"] = np.load(r["outputs"]["map"], allow_pickle=False)
        out_dir = work / "eval" / method
        code, out, err = invoke("eval", str(demo), "--shots", "0,1", "--seeds", "1", "--out", str(out_dir), "--eval-size",
                                "32", "--save-maps", "-q", *flags, cache=cache)
        _check(code, err, f"eval {method}")
        result = json.loads((out_dir / "results.json").read_text())
        settings = {k: result["settings"][k] for k in ("method", "banks", "shots", "seeds", "eval_size")}
        classes = [{k: v for k, v in c.items() if k != "settings"} for c in result["classes"]]
        with open(out_dir / "per_image.csv", newline="") as fh:
            per_image = list(csv.DictReader(fh))
        records[f"eval/{method}"] = _relative({"settings": settings, "summary": result["summary"], "classes": classes,
                                               "per_image": per_image, "table": out}, work)
        for p in sorted((out_dir / "maps").rglob("*.npy")):
            maps[f"eval/{method}/{p.relative_to(out_dir / 'maps').as_posix()}"] = np.load(p, allow_pickle=False)
    return records, maps


def differences(expected, actual, where: str = "$") -> list[str]:
    """Where two JSON-able values differ (numbers to TOLERANCE; numeric strings too, as CSV cells)."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        if set(expected) != set(actual):
            return [f"{where}: keys {sorted(set(expected) ^ set(actual))} differ"]
        return [d for k in expected for d in differences(expected[k], actual[k], f"{where}.{k}")]
    if isinstance(expected, list) and isinstance(actual, list):
        if len(expected) != len(actual):
            return [f"{where}: length {len(expected)} != {len(actual)}"]
        return [d for i, (e, a) in enumerate(zip(expected, actual)) for d in differences(e, a, f"{where}[{i}]")]
    if isinstance(expected, bool) or isinstance(actual, bool):
        return [] if expected == actual else [f"{where}: {expected!r} != {actual!r}"]
    if isinstance(expected, (int, float)) and isinstance(actual, (int, float)):
        return [] if math.isclose(expected, actual, rel_tol=0, abs_tol=TOLERANCE * 1.001) else [f"{where}: {expected} != {actual}"]
    if isinstance(expected, str) and isinstance(actual, str) and expected != actual:
        try:
            return differences(float(expected), float(actual), where)
        except ValueError:
            pass
    return [] if expected == actual else [f"{where}: {expected!r} != {actual!r}"]


def save(records: dict, maps: dict[str, np.ndarray]) -> None:
    GOLDEN.mkdir(exist_ok=True)
    (GOLDEN / "outputs.json").write_text(json.dumps(records, indent=1, sort_keys=True) + "\n")
    np.savez_compressed(GOLDEN / "maps.npz", **maps)


def load() -> tuple[dict, dict[str, np.ndarray]]:
    records = json.loads((GOLDEN / "outputs.json").read_text())
    with np.load(GOLDEN / "maps.npz", allow_pickle=False) as data:
        maps = {k: data[k] for k in data.files}
    return records, maps


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        save(*compute(Path(tmp)))
    print(f"wrote {GOLDEN}/outputs.json and maps.npz")
