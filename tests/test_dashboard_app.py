"""The Streamlit app through streamlit.testing.v1.AppTest on seeded, empty, foreign and protected logs."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import pytest
from streamlit.testing.v1 import AppTest

from pipelines.log import eventlog
from pipelines.log import seed

APP = str(Path(__file__).resolve().parent.parent / "dashboard" / "app.py")
END = datetime(2025, 6, 1)
# The charts each tab must show: every section of the dashboard, counted.
CHARTS = {"Overview": 1, "Accuracy": 4, "Models": 4, "Classes": 3, "Performance": 2, "Confidence": 2, "Captions": 2,
          "Objects & custom labels": 5, "Recent": 0}
OLDER = "google/vit-base-patch16-224@synthetic-older"
OLDER_CAPTIONER = "Salesforce/blip-image-captioning-base@synthetic-older"


@pytest.fixture(scope="module")
def seeded(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("app") / "log.duckdb"
    seed.seed(str(path), 5000, seed=0, end=END)
    return path


@pytest.fixture
def make_app(monkeypatch):
    """An AppTest of dashboard/app.py reading the given log, with settings given as IMAGEREC_* variables."""
    def make(path: Path, **env: str) -> AppTest:
        monkeypatch.setenv("IMAGEREC_DB", str(path))
        monkeypatch.delenv("IMAGEREC_DASHBOARD_PASSWORD", raising=False)
        monkeypatch.delenv("IMAGEREC_REFRESH_SECONDS", raising=False)
        for name, value in env.items():
            monkeypatch.setenv(f"IMAGEREC_{name.upper()}", value)
        return AppTest.from_file(APP, default_timeout=60)
    return make


def metric(at: AppTest, label: str) -> str:
    found = [m.value for m in at.metric if m.label == label]
    assert found, f"no metric {label!r} among {[m.label for m in at.metric]}"
    return found[0]


def open_tab(at: AppTest, name: str) -> AppTest:
    at.session_state["tab"] = name
    return at.run()


def healthy(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def sql(path: Path, query: str, params=()) -> tuple:
    with eventlog.reader(path) as con:
        return con.execute(query, list(params)).fetchone()


def last_week(path: Path) -> tuple[datetime, datetime]:
    """The default window: the 7 days up to the hour after the newest prediction."""
    newest = sql(path, "SELECT max(created_at) FROM predictions")[0]
    end = newest.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    return end - timedelta(days=7), end


# From the raw tables (not the wide relation the dashboard reads): each request's latest verdict, its classify
# output's top-1 label and version, and its caption output's version.
LATEST_VERDICTS = """
    SELECT p.id, json_extract_string(c.payload, '$.labels[0].label') AS top1_label, c.model_version AS classify_version,
           k.model_version AS caption_version, p.created_at, f.verdict
    FROM predictions p JOIN feedback f ON f.prediction_id = p.id
    JOIN outputs c ON c.prediction_id = p.id AND c.task = 'classify'
    JOIN outputs k ON k.prediction_id = p.id AND k.task = 'caption'
    WHERE f.verdict IS NOT NULL AND (f.task IS NULL OR f.task = 'classify') AND f.target IS NULL  -- on the labels
    QUALIFY row_number() OVER (PARTITION BY p.id ORDER BY f.created_at DESC) = 1"""


def test_every_tab_renders_without_exception(make_app, seeded):
    at = make_app(seeded).run()
    healthy(at)
    assert [t.label for t in at.tabs] == list(CHARTS)
    assert [m.label for m in at.metric] == ["Predictions", "Distinct images", "Feedback rate", "Thumbs-up rate",
                                            "Caption-edit rate", "Latency p50", "Latency p95"]
    for name, charts in CHARTS.items():
        open_tab(at, name)
        healthy(at)
        assert len(at.get("plotly_chart")) == charts, name
    assert len(at.dataframe) == 1 and len(at.dataframe[0].value) == 500  # the recent table, LIMITed
    assert [b.label for b in at.get("download_button")] == ["Download CSV", "Download Parquet"]


def test_overview_numbers_match_direct_sql(make_app, seeded):
    at = make_app(seeded).run()
    start, end = last_week(seeded)
    n = sql(seeded, "SELECT count(*) FROM predictions WHERE created_at >= ? AND created_at < ?", [start, end])[0]
    ups, votes = sql(seeded, f"SELECT count(*) FILTER (WHERE verdict = 'up'), count(*) FROM ({LATEST_VERDICTS}) "
                             "WHERE created_at >= ? AND created_at < ?", [start, end])
    assert metric(at, "Predictions") == f"{n:,}"
    assert metric(at, "Thumbs-up rate") == f"{ups / votes:.1%}"
    assert any(c.value.startswith("95% CI") for c in at.caption)


def test_label_filter_changes_the_numbers_to_the_sql_value(make_app, seeded):
    at = make_app(seeded).run()
    before = metric(at, "Predictions")
    at.multiselect(key="labels").set_value(["tabby", "pug"]).run()
    healthy(at)
    start, end = last_week(seeded)
    n = sql(seeded, "SELECT count(*) FROM predictions p JOIN outputs c ON c.prediction_id = p.id AND c.task = 'classify' "
                    "WHERE json_extract_string(c.payload, '$.labels[0].label') IN ('tabby', 'pug') "
                    "AND created_at >= ? AND created_at < ?", [start, end])[0]
    ups, votes = sql(seeded, f"SELECT count(*) FILTER (WHERE verdict = 'up'), count(*) FROM ({LATEST_VERDICTS}) "
                             "WHERE top1_label IN ('tabby', 'pug') AND created_at >= ? AND created_at < ?",
                     [start, end])
    assert metric(at, "Predictions") == f"{n:,}" != before
    assert metric(at, "Thumbs-up rate") == f"{ups / votes:.1%}"
    # the filter holds on every tab: the recent table only lists those labels
    open_tab(at, "Recent")
    assert set(at.dataframe[0].value["top1_label"]) == {"tabby", "pug"}


def test_version_and_period_filters_reach_the_accuracy_tab(make_app, seeded):
    at = make_app(seeded).run()
    at.selectbox(key="period").set_value("All time").run()
    at.multiselect(key="versions_classify").set_value([OLDER]).run()
    open_tab(at, "Accuracy")
    healthy(at)
    table = at.dataframe[0].value
    assert list(table["version"]) == ["vit-base-patch16-224@synthetic-older"]
    votes = sql(seeded, f"SELECT count(*) FROM ({LATEST_VERDICTS}) WHERE classify_version = ?", [OLDER])[0]
    assert int(table["n_verdict"].iloc[0]) == votes


def test_one_version_filter_per_task_in_the_log(make_app, seeded):
    at = make_app(seeded).run()
    healthy(at)
    filters = {m.key: m for m in at.multiselect if m.key.startswith("versions_")}
    assert set(filters) == {"versions_classify", "versions_caption", "versions_detect",
                            "versions_zero_shot"}  # the tasks the seeded log holds
    assert OLDER_CAPTIONER in filters["versions_caption"].options or \
        "blip-image-captioning-base@synthetic-older" in filters["versions_caption"].options
    at.selectbox(key="period").set_value("All time").run()
    at.multiselect(key="versions_caption").set_value([OLDER_CAPTIONER]).run()
    healthy(at)
    n = sql(seeded, "SELECT count(*) FROM outputs WHERE task = 'caption' AND model_version = ?", [OLDER_CAPTIONER])[0]
    assert 0 < n < 5000 and metric(at, "Predictions") == f"{n:,}"  # requests whose caption came from that version
    open_tab(at, "Accuracy")
    votes = sql(seeded, f"SELECT count(*) FROM ({LATEST_VERDICTS}) WHERE caption_version = ?", [OLDER_CAPTIONER])[0]
    assert int(at.dataframe[0].value["n_verdict"].sum()) == votes


def test_verdict_filter(make_app, seeded):
    at = make_app(seeded).run()
    at.multiselect(key="verdicts").set_value(["down"]).run()
    healthy(at)
    assert metric(at, "Thumbs-up rate") == "0.0%" and metric(at, "Feedback rate") == "100.0%"


def test_missing_and_empty_logs_show_the_plain_empty_state(make_app, tmp_path):
    for path in (tmp_path / "missing.duckdb", tmp_path / "empty.duckdb"):
        if path.name == "empty.duckdb":
            with eventlog.writer(path):
                pass  # a log with the schema and no rows, as the demo leaves it before the first upload
        at = make_app(path).run()
        assert not at.exception and not at.error
        assert any("No predictions logged yet" in i.value for i in at.info), path
        assert not at.get("plotly_chart") and not at.metric


@pytest.mark.parametrize("kind", ["foreign", "newer", "text"])
def test_a_log_of_another_schema_is_a_clear_error(make_app, tmp_path, kind):
    path = tmp_path / f"{kind}.duckdb"
    if kind == "foreign":
        con = duckdb.connect(str(path))
        con.execute("CREATE TABLE sales (amount DOUBLE)")
        con.close()
    elif kind == "newer":
        with eventlog.writer(path) as con:
            con.execute("INSERT INTO schema_migrations VALUES (?, now(), 'from the future')",
                        [eventlog.SCHEMA_VERSION + 1])
    else:
        path.write_text("this is not a database\n")
    at = make_app(path).run()
    assert not at.exception
    assert len(at.error) == 1 and str(path) in at.error[0].value
    assert {"foreign": "not an imagerec log", "newer": "newer", "text": "DuckDB"}[kind] in at.error[0].value
    assert not at.get("plotly_chart")


def password_box(at: AppTest):
    return [t for t in at.text_input if t.label == "Password"]


def test_no_password_by_default(make_app, seeded):
    at = make_app(seeded).run()
    assert not password_box(at) and at.get("plotly_chart")


def test_password_from_settings_guards_the_dashboard(make_app, seeded):
    at = make_app(seeded, dashboard_password="hunter2").run()
    assert password_box(at) and not at.get("plotly_chart") and not at.metric
    password_box(at)[0].input("wrong")
    at.button[0].click().run()
    assert [e.value for e in at.error] == ["Wrong password."] and not at.metric
    password_box(at)[0].input("hunter2")
    at.button[0].click().run()
    healthy(at)
    assert not password_box(at) and len(at.get("plotly_chart")) == 1


def test_password_from_streamlit_secrets(make_app, seeded):
    at = make_app(seeded)
    at.secrets["dashboard_password"] = "from-secrets"
    at.run()
    assert password_box(at) and not at.metric
    password_box(at)[0].input("from-secrets")
    at.button[0].click().run()
    assert at.metric and not password_box(at)


def test_refresh_interval_comes_from_settings(make_app, seeded):
    at = make_app(seeded, refresh_seconds="0").run()
    healthy(at)
    assert any("Auto refresh: off" in c.value for c in at.caption)
    at = make_app(seeded, refresh_seconds="2.5").run()
    assert any("Auto refresh: every 2.5 s" in c.value for c in at.caption)
