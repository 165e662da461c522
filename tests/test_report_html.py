"""report.html in a real browser: a real tiny sweep (3 learning rates x 2 seeds) through the CLI,
`mtl report`, then the page in headless Chromium: no console errors, nothing fetched, the
configurations table (3 rows, n=2) sorts on a click, the plots are inline SVGs; a screenshot is
kept in tests/output/report_html.png.

Skipped, with the reason, where selenium, chromium or chromedriver is missing (.ci/run installs
the browser when it can).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mtl_cli.cli import main as mtl_main
from tests.conftest import REPO, TINY_RUN

LRS = ["0.001", "0.003", "0.01"]
SWEEP = [*TINY_RUN, f"trainer.lr={','.join(LRS)}", "seed=1,2", "trainer.max_steps=4", "trainer.eval_every=2",
         "trainer.batch_size=4"]  # fmt: skip
SCREENSHOT = REPO / "tests" / "output" / "report_html.png"


def browser() -> tuple[str | None, str | None, str | None]:
    """(chromium, chromedriver, why the test cannot run)."""
    chromium = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    driver = "/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").is_file() else shutil.which("chromedriver")
    if importlib.util.find_spec("selenium") is None:
        return chromium, driver, "selenium is not installed (pip install -e '.[dev]')"
    if chromium is None or driver is None:
        return chromium, driver, "chromium or chromedriver is not installed (apt-get install chromium chromium-driver)"
    return chromium, driver, None


CHROMIUM, CHROMEDRIVER, MISSING = browser()
# Slow: a real sweep and a browser (about a minute); CI runs it with the other slow tests.
pytestmark = [pytest.mark.slow, pytest.mark.skipif(MISSING is not None, reason=f"no browser test: {MISSING}")]


def mtl(*args: str, cwd: Path) -> None:
    """`mtl ARGS` in this process (as tests/conftest.py's `mtl` fixture, for a module-scoped sweep)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        patch.setenv("MTL_RUNS_ROOT", str(cwd / "runs"))
        patch.delenv("MTL_DATA_ROOT", raising=False)
        patch.setenv("COLUMNS", "100")
        patch.setattr(sys, "argv", ["mtl", *args])
        try:
            mtl_main(list(args))
        except SystemExit as exit:
            assert not exit.code, f"mtl {' '.join(args)} exited with {exit.code}"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sweep folder after `mtl report`: one evaluation of one run marked as forgetting, as the
    forgetting detector writes it, so the curves draw the mark."""
    root = tmp_path_factory.mktemp("html_sweep")
    mtl("train", "-m", *SWEEP, cwd=root)
    (folder,) = (root / "runs" / "multirun").glob("*/*")
    metrics = next(folder.glob("0_*")) / "metrics.jsonl"
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    marked = next(r for r in records if r["task"] != "average" and r["step"] == 4)
    marked["forgetting"] = True
    metrics.write_text("".join(json.dumps(r) + "\n" for r in records))
    mtl("report", str(folder), cwd=root)
    assert (folder / "report.html").is_file()
    return folder


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000"):
        options.add_argument(arg)
    options.binary_location = str(CHROMIUM)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # The driver's path given: selenium-manager does not go looking for one on the network.
    chrome = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield chrome
    finally:
        chrome.quit()


@pytest.fixture(scope="module")
def page(driver: Any, sweep: Path) -> Any:
    driver.get((sweep / "report.html").as_uri())
    return driver


def cells(page: Any, column: int) -> list[str]:
    from selenium.webdriver.common.by import By

    rows = page.find_elements(By.CSS_SELECTOR, "#configurations tbody tr")
    return [row.find_elements(By.TAG_NAME, "td")[column].get_attribute("data-sort") or "" for row in rows]


def header(page: Any, text: str) -> Any:
    from selenium.webdriver.common.by import By

    heads = page.find_elements(By.CSS_SELECTOR, "#configurations thead tr:last-child th")
    return next((i, th) for i, th in enumerate(heads) if th.text.strip() == text)


def test_the_page_loads_clean_and_lists_the_configurations(page: Any, sweep: Path) -> None:
    from selenium.webdriver.common.by import By

    severe = [entry for entry in page.get_log("browser") if entry["level"] == "SEVERE"]
    assert severe == [], severe
    # Nothing fetched: the Content-Security-Policy allows none, and none is asked for.
    assert page.execute_script("return performance.getEntriesByType('resource').length") == 0
    rows = page.find_elements(By.CSS_SELECTOR, "#configurations tbody tr")
    assert len(rows) == 3
    lr_col, _ = header(page, "trainer.lr")
    n_col, _ = header(page, "n")
    assert [float(v) for v in cells(page, lr_col)] == [float(v) for v in LRS]
    assert cells(page, n_col) == ["2", "2", "2"]
    best = page.find_elements(By.CSS_SELECTOR, "#configurations tbody tr.best")
    assert len(best) == 1 and "best" in best[0].text
    report = json.loads((sweep / "report.json").read_text())
    best_lr = report["rows"][report["best"]["row"]]["config"]["trainer.lr"]
    assert float(best[0].find_elements(By.TAG_NAME, "td")[lr_col].text) == best_lr


def test_clicking_a_header_sorts_the_table(page: Any) -> None:
    col, th = header(page, "trainer.lr")
    th.click()
    assert th.get_attribute("aria-sort") == "ascending"
    assert cells(page, col) == sorted(cells(page, col), key=float)
    th.click()
    assert th.get_attribute("aria-sort") == "descending"
    assert [float(v) for v in cells(page, col)] == sorted((float(v) for v in LRS), reverse=True)
    col, th = header(page, "average main")  # the first one: validation's
    th.click()
    values = [float(v) for v in cells(page, col)]
    assert values == sorted(values)


def test_the_plots_are_inline_svgs(page: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    svgs = page.find_elements(By.CSS_SELECTOR, "figure svg")
    # The sweep: 2 tasks and the average; curves: the same 3; train loss: the 2 tasks.
    assert len(svgs) == 3 + 3 + 2
    assert all(svg.size["width"] > 100 and svg.size["height"] > 50 for svg in svgs)
    assert not page.find_elements(By.CSS_SELECTOR, "img:not([src^='data:'])")
    texts = " ".join(svg.get_attribute("textContent") for svg in svgs)
    assert "trainer.lr" in texts and "forgetting" in texts and "train loss" in texts

    height = page.execute_script("return document.documentElement.scrollHeight")
    page.set_window_size(1400, min(int(height) + 40, 8000))
    shot = tmp_path / "report_html.png"
    assert page.save_screenshot(str(shot)) and shot.read_bytes().startswith(b"\x89PNG")
    SCREENSHOT.parent.mkdir(exist_ok=True)
    shutil.copyfile(shot, SCREENSHOT)
