"""Review pages in a real browser (headless Chromium via Selenium), opened from disk.

Skipped when selenium or Chromium is missing, unless FADE_REQUIRE_BROWSER=1 (CI sets it), which
turns a missing browser into a failure. Screenshots go to FADE_ARTIFACTS (default
test-artifacts/); FADE_UPDATE_DOCS_SCREENSHOT=1 also writes docs/img/report.png for the README.
"""

import os
import shutil
import time
from pathlib import Path

import pytest

from fade_cli.data.demo_data import make_demo_dataset
from fade_cli.report import build_report, write_eval_report
from fade_cli.report.synthetic import write_synthetic_run

import browser
from helpers import FAST, invoke
from report_helpers import eval_folder

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("FADE_ARTIFACTS", ROOT / "test-artifacts"))


@pytest.fixture(scope="module")
def driver():
    reason = browser.missing()
    if reason:
        if os.environ.get("FADE_REQUIRE_BROWSER") == "1":
            pytest.fail(f"FADE_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    with browser.chromium_driver() as d:
        yield d


def open_page(driver, page: Path):
    driver.get_log("browser")  # drop messages of earlier pages
    driver.get(page.as_uri())
    wait_for(driver, "return document.body.dataset.ready === '1' || document.readyState === 'complete'")


def wait_for(driver, script: str, timeout: float = 10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for: {script}")


def console_errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]


def screenshot(driver, name: str, docs: bool = False) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    assert driver.save_screenshot(str(path))
    if docs and os.environ.get("FADE_UPDATE_DOCS_SCREENSHOT") == "1":
        (ROOT / "docs" / "img").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, ROOT / "docs" / "img" / "report.png")
    return path


def labels(driver) -> list[str]:
    return driver.execute_script("return [...document.querySelectorAll('#grid .card .label')].map(l => l.textContent)")


def visible_cards(driver) -> int:
    return driver.execute_script("return [...document.querySelectorAll('#grid .card')].filter(c => !c.hidden).length")


@pytest.fixture(scope="module")
def segment_run(tmp_path_factory):
    """A real `fade segment` run (tiny model) on the demo set's test images, with two bad inputs."""
    tmp = tmp_path_factory.mktemp("seg")
    demo = make_demo_dataset(tmp / "demo", n_train=1)
    inputs = tmp / "inputs"
    shutil.copytree(demo / "tiles" / "test", inputs)
    (inputs / "good" / "truncated.png").write_bytes(b"\x89PNG\r\n")
    (inputs / "good" / "notes.png").write_text("not an image")
    out = tmp / "results"
    code, _, stderr = invoke("segment", str(inputs), "--out", str(out), "-q", *FAST, cache=tmp / "cache")
    assert code == 1, stderr  # the two bad files
    return out


def test_segment_review_page_slider_filters_toggle_and_detail(driver, segment_run):
    code, stdout, stderr = invoke("report", str(segment_run), "-q")
    assert code == 0, stderr
    page = Path(stdout.strip())
    open_page(driver, page)
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    data = driver.execute_script("return JSON.parse(document.getElementById('fade-data').textContent)")
    scores = [im["score"] for im in data["images"]]
    assert len(scores) == 9 and len(data["failed"]) == 2
    assert scores == sorted(scores, reverse=True)
    before = labels(driver)
    assert before == ["ANOMALOUS" if s >= data["threshold"] else "normal" for s in scores]

    slider = driver.find_element(By.ID, "threshold")
    slider.send_keys(Keys.HOME)  # lowest threshold: everything is anomalous
    assert labels(driver) == ["ANOMALOUS"] * 9
    assert driver.find_element(By.ID, "count-anomalous").text == "9"
    slider.send_keys(Keys.END)  # highest: only scores at the very top stay anomalous
    top = float(slider.get_attribute("value"))
    assert labels(driver) == ["ANOMALOUS" if s >= top else "normal" for s in scores]
    assert labels(driver) != ["ANOMALOUS"] * 9
    middle = sorted(scores)[4]  # typed into the number box: the slider follows
    box = driver.find_element(By.ID, "threshold-value")
    box.clear()
    box.send_keys(f"{middle:.4f}")
    n_anomalous = sum(s >= float(box.get_attribute("value")) for s in scores)
    assert labels(driver).count("ANOMALOUS") == n_anomalous
    assert float(slider.get_attribute("value")) == pytest.approx(float(box.get_attribute("value")), abs=1e-3)

    driver.find_element(By.CSS_SELECTOR, "[data-filter=anomalous]").click()
    assert visible_cards(driver) == n_anomalous
    driver.find_element(By.CSS_SELECTOR, "[data-filter=normal]").click()
    assert visible_cards(driver) == 9 - n_anomalous
    driver.find_element(By.CSS_SELECTOR, "[data-filter=failed]").click()
    assert visible_cards(driver) == 0
    failed = driver.find_element(By.ID, "failed")
    assert failed.is_displayed()
    text = failed.text
    assert "truncated.png" in text and "notes.png" in text and "not an image" in text
    driver.find_element(By.CSS_SELECTOR, "[data-filter=all]").click()
    assert visible_cards(driver) == 9

    srcs = lambda: driver.execute_script(  # noqa: E731
        "return [...document.querySelectorAll('#grid img')].map(i => i.getAttribute('src') || '')")
    wait_for(driver, "return [...document.querySelectorAll('#grid img')].every(i => i.complete && i.naturalWidth > 0)")
    assert all(s.endswith(".o.jpg") for s in srcs())
    driver.find_element(By.CSS_SELECTOR, "[data-view=input]").click()
    assert all(s.endswith(".i.jpg") for s in srcs())
    driver.find_element(By.CSS_SELECTOR, "[data-view=overlay]").click()
    assert all(s.endswith(".o.jpg") for s in srcs())

    driver.find_elements(By.CSS_SELECTOR, "#grid .card")[0].click()
    detail = driver.find_element(By.ID, "detail")
    assert detail.is_displayed()
    assert driver.find_element(By.ID, "detail-score").text == f"{scores[0]:.4f}"
    wait_for(driver, "const i = document.getElementById('detail-img'); return i.complete && i.naturalWidth > 0")
    assert driver.execute_script("return document.getElementById('detail-img').getAttribute('src')").endswith(".overlay.png")
    driver.find_element(By.CSS_SELECTOR, "[data-detail-view=mask]").click()
    assert driver.execute_script("return document.getElementById('detail-img').getAttribute('src')").endswith(".mask.png")
    driver.find_element(By.CSS_SELECTOR, "[data-detail-view=overlay]").click()
    driver.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_RIGHT)
    assert driver.find_element(By.ID, "detail-score").text == f"{scores[1]:.4f}"
    screenshot(driver, "report-detail.png")
    driver.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
    assert not detail.is_displayed()
    assert console_errors(driver) == []
    box.clear()  # for the README: a threshold between the scores, so both labels show
    box.send_keys(f"{sorted(scores)[3]:.4f}")
    driver.execute_script("window.scrollTo(0, 0)")
    screenshot(driver, "report.png", docs=True)


def test_regions_are_listed_and_boxed_in_the_detail_view(driver, tmp_path):
    run_dir = write_synthetic_run(tmp_path / "run", 12)
    open_page(driver, build_report(run_dir).page)
    data = driver.execute_script("return JSON.parse(document.getElementById('fade-data').textContent)")
    first = data["images"][0]
    assert first["regions"]  # the highest score is >= 0.5 in this synthetic run: one region
    driver.execute_script("document.querySelector('#grid .card').click()")
    wait_for(driver, "return document.querySelectorAll('#detail-svg rect').length > 0")
    rows = driver.execute_script("return [...document.querySelectorAll('#detail-regions tbody tr')].map(r => r.cells[1].textContent)")
    assert rows == [", ".join(map(str, r["bbox"])) for r in first["regions"]]
    rect = driver.execute_script("const r = document.querySelector('#detail-svg rect'); return [r.getAttribute('x'), r.getAttribute('y')]")
    assert [float(v) for v in rect] == first["regions"][0]["bbox"][:2]
    last = data["images"][-1]
    assert last["regions"] == []
    driver.execute_script("document.getElementById('detail-close').click();"
                          "[...document.querySelectorAll('#grid .card')].pop().click()")
    assert "none above the pixel threshold" in driver.execute_script("return document.getElementById('detail-regions-title').textContent")
    assert driver.execute_script("return document.querySelectorAll('#detail-svg rect').length") == 0
    assert console_errors(driver) == []


def test_thumbnails_load_lazily_at_thousands_of_images(driver, tmp_path):
    run_dir = write_synthetic_run(tmp_path / "run", 1500, size=16, regions=False)
    open_page(driver, build_report(run_dir).page)
    loaded = "return [...document.querySelectorAll('#grid img')].filter(i => i.getAttribute('src')).length"
    at_start = driver.execute_script(loaded)
    assert 0 < at_start < 300
    driver.execute_script("window.scrollTo(0, document.body.scrollHeight)")
    wait_for(driver, "const imgs = document.querySelectorAll('#grid img'); return imgs[imgs.length - 1].getAttribute('src')")
    assert driver.execute_script(loaded) < 600  # the middle of the grid was never in view
    # re-labelling every card for one slider move stays quick
    ms = driver.execute_script("""const s = document.getElementById('threshold'); const t = performance.now();
        s.value = s.max; s.dispatchEvent(new Event('input')); return performance.now() - t;""")
    assert ms < 1000
    assert driver.execute_script("return document.getElementById('count-anomalous').textContent") in ("0", "1")
    assert console_errors(driver) == []


def test_eval_report_renders_without_errors(driver, tmp_path):
    summary, crs, settings, _ = eval_folder(tmp_path)
    page = write_eval_report(tmp_path / "eval", summary, crs, settings, worst=3)
    open_page(driver, page)
    from selenium.webdriver.common.by import By

    charts = driver.find_elements(By.CSS_SELECTOR, "svg.chart")
    assert len(charts) == 1 and charts[0].is_displayed() and charts[0].size["width"] > 200
    assert "widget" in driver.find_element(By.ID, "metrics").text
    wait_for(driver, "return [...document.images].every(i => i.complete && i.naturalWidth > 0)")
    assert len(driver.find_elements(By.CSS_SELECTOR, ".tile img")) == 6
    assert console_errors(driver) == []
    screenshot(driver, "eval-report.png")
