"""The dashboard served by `streamlit run`, opened in Debian's Chromium: charts render, no errors show."""

from __future__ import annotations

import time
from datetime import datetime, timedelta

import pandas as pd
import pytest

from pipelines.log import eventlog
from pipelines.log import seed
from tests.browser import screenshot_path
from devtools.demo_server import streamlit_server

pytestmark = pytest.mark.browser

END = datetime(2025, 6, 1)
CHARTS = {"Overview": 1, "Accuracy": 4, "Models": 4, "Classes": 3, "Performance": 2, "Confidence": 2, "Captions": 2}
VISIBLE = '[data-testid="stTabPanel"]:visible'


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory):
    """`streamlit run dashboard/app.py` on a seeded log; yields (url, log path) and stops the server."""
    path = tmp_path_factory.mktemp("browser") / "log.duckdb"
    seed.seed(str(path), 5000, seed=0, end=END)
    with streamlit_server(path, refresh_seconds=2, IMAGEREC_DASHBOARD_PASSWORD="") as url:
        yield url.rstrip("/"), path


def rendered_charts(page) -> int:
    """Plotly charts in the open tab that have drawn their SVG with a real size."""
    return page.evaluate("""() => [...document.querySelectorAll('[data-testid="stTabPanel"]')]
        .filter(p => p.offsetParent !== null)
        .flatMap(p => [...p.querySelectorAll('.js-plotly-plot .main-svg')])
        .filter(svg => svg.getBoundingClientRect().width > 100 && svg.getBoundingClientRect().height > 100)
        .map(svg => svg.closest('.js-plotly-plot'))
        .filter((plot, i, all) => all.indexOf(plot) === i).length""")


def wait_for_charts(page, expected: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while rendered_charts(page) < expected:
        assert time.monotonic() < deadline, f"only {rendered_charts(page)} of {expected} charts rendered"
        page.wait_for_timeout(200)


def assert_no_errors(page, page_errors: list) -> None:
    assert page.locator('[data-testid="stException"]').count() == 0
    alerts = page.locator('[data-testid="stAlert"]')
    assert alerts.count() == 0, alerts.all_inner_texts()
    assert page_errors == []


def test_dashboard_renders_in_chromium(browser, dashboard):  # noqa: F811
    url, path = dashboard
    page = browser.new_page(viewport={"width": 1440, "height": 2000})
    page_errors: list[str] = []
    page.on("pageerror", lambda exc: page_errors.append(str(exc)))
    try:
        page.goto(url, wait_until="domcontentloaded")
        wait_for_charts(page, CHARTS["Overview"])
        labels = page.locator('[data-testid="stMetricLabel"]').all_inner_texts()
        assert [label.strip() for label in labels][:4] == ["Predictions", "Distinct images", "Feedback rate",
                                                            "Thumbs-up rate"]
        with eventlog.reader(path) as con:
            newest = con.execute("SELECT max(created_at) FROM predictions").fetchone()[0]
            end = newest.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
            n = con.execute("SELECT count(*) FROM predictions WHERE created_at >= ? AND created_at < ?",
                            [end - timedelta(days=7), end]).fetchone()[0]
        assert page.locator('[data-testid="stMetricValue"]').first.inner_text().strip() == f"{n:,}"
        assert_no_errors(page, page_errors)
        page.wait_for_timeout(500)  # let plotly finish its transitions before the picture
        page.screenshot(path=str(screenshot_path("dashboard.png")), full_page=True)

        for name, expected in CHARTS.items():
            if name == "Overview":
                continue
            page.get_by_role("tab", name=name).click()
            wait_for_charts(page, expected)
            assert rendered_charts(page) == expected, name
            assert_no_errors(page, page_errors)
            page.screenshot(path=str(screenshot_path(f"dashboard-{name.lower()}.png")), full_page=True)

        # A writer adds rows while the page is open: the page refreshes by itself and shows them.
        page.get_by_role("tab", name="Overview").click()
        wait_for_charts(page, CHARTS["Overview"])
        seed.seed(str(path), 200, seed=9, end=END, days=1)
        value = page.locator('[data-testid="stMetricValue"]').first
        deadline = time.monotonic() + 30
        while value.inner_text().strip() != f"{n + 200:,}":
            assert time.monotonic() < deadline, f"still {value.inner_text()!r}, expected {n + 200:,}"
            page.wait_for_timeout(250)
        assert_no_errors(page, page_errors)

        page.get_by_role("tab", name="Recent").click()
        page.locator('[data-testid="stDownloadButton"]').last.wait_for(timeout=30_000)
        assert page.locator(f'{VISIBLE} [data-testid="stDataFrame"]').count() == 1
        buttons = page.locator(f'{VISIBLE} [data-testid="stDownloadButton"]').all_inner_texts()
        assert [b.split("\n")[-1].strip() for b in buttons] == ["Download CSV", "Download Parquet"], buttons
        with page.expect_download(timeout=60_000) as download:
            page.locator(f'{VISIBLE} [data-testid="stDownloadButton"] button').first.click()
        rows = pd.read_csv(download.value.path())
        assert len(rows) == n + 200 and {"id", "labels", "verdict", "edited_caption"} <= set(rows.columns)
        assert_no_errors(page, page_errors)
    finally:
        page.close()
