"""The HTML leaderboard in a real browser: headless Chromium renders it, and clicking a header sorts the rows.

Needs Debian's chromium and chromium-driver (`apt-get install -y chromium chromium-driver`; `.ci/run` installs
them) and the selenium package (the `test` extra); skipped, saying so, where they are missing.
"""

from __future__ import annotations

import shutil

import pytest
from test_scoring import result_file

from kvbench import leaderboard
from kvbench.scoring import load_runs, score_runs

pytestmark = pytest.mark.slow


def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is missing: pip install -e '.[test]'")
    chromium, driver = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("no Chromium here: apt-get install -y chromium chromium-driver (as .ci/run does)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    # Headless, no sandbox (CI runs as root), and nothing that reaches for the network.
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ):
        options.add_argument(flag)
    from selenium.webdriver.chrome.service import Service

    return webdriver.Chrome(options=options, service=Service(driver))


def page(tmp_path) -> str:
    """Three methods on one task, each sample scoring its run's score: snapkv crosses at 40%, l2norm at 70%, h2o
    never reaches 0.9 x full (>80%)."""
    folder = tmp_path / "runs"
    folder.mkdir()
    result_file(folder / "results_full.json", "full", {}, {"t": ("recall", 1.0, 1.0)}, samples=10)
    curves = {"snapkv": [(0.3, 0.8), (0.5, 1.0)], "l2norm": [(0.6, 0.8), (0.8, 1.0)], "h2o": [(0.5, 0.2), (0.8, 0.5)]}
    for method, points in curves.items():
        for footprint, score in points:
            result_file(
                folder / f"results_{method}{footprint}.json",
                method,
                {"keep": footprint},
                {"t": ("recall", score, footprint)},
                samples=10,
            )
    path = tmp_path / "board.html"
    path.write_text(leaderboard.render(score_runs(load_runs([folder])), "html", 0.9))
    return path.as_uri()


def test_the_page_renders_in_chromium_and_sorts_by_a_clicked_column(tmp_path):
    url = page(tmp_path)
    driver = browser()
    try:
        driver.get(url)
        assert driver.title == "kvbench leaderboard"
        headers = [th.text for th in driver.find_elements("css selector", "#board th")]
        assert "critical KV footprint [interval]" in headers and "rank" in headers

        def column(name):
            index = headers.index(name)
            return [
                row.find_elements("css selector", "td")[index].text
                for row in driver.find_elements("css selector", "#board tbody tr")
            ]

        assert sorted(column("method")) == ["h2o", "l2norm", "snapkv"]
        assert set(column("critical KV footprint [interval]")) == {"40% [40]", "70% [70]", ">80% [>80]"}
        critical = driver.find_elements("css selector", "#board th")[headers.index("critical KV footprint [interval]")]
        critical.click()
        assert column("method") == ["snapkv", "l2norm", "h2o"]  # by the number, not the text (">80%" < "40%")
        critical.click()
        assert column("method") == ["h2o", "l2norm", "snapkv"]
        driver.find_elements("css selector", "#board th")[headers.index("rank")].click()
        assert column("rank") == ["1", "2", "3"]
        image = driver.find_element("css selector", "img")
        assert image.get_attribute("naturalWidth") not in (None, "0")  # the embedded plot decoded and drew
    finally:
        driver.quit()
