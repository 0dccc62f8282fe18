"""What a new deployment sees on its first day: readable time axes, markers on lone points, partial periods
hatched, changes inside the noise left uncoloured, and a warning on a calibration error from a few verdicts."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from dashboard import charts, metrics, queries, stats
from pipelines.log import eventlog, rows

APP = str(Path(__file__).resolve().parent.parent / "dashboard" / "app.py")
DAY = datetime(2025, 5, 30)
T0 = DAY + timedelta(hours=14)  # the deployment went live at 14:00


@pytest.fixture(scope="module")
def one_day(tmp_path_factory) -> str:
    """Four predictions and three verdicts, all on the deployment's first afternoon."""
    path = tmp_path_factory.mktemp("first_day") / "log.duckdb"
    made = [rows.from_v2_row({
        "id": f"p{i}", "created_at": T0 + timedelta(minutes=20 * i), "image_sha256": f"img{i}" * 8,
        "classifier": "google/vit-base-patch16-224", "classifier_revision": "r1", "captioner": "blip",
        "captioner_revision": "c1", "labels": ["ant", "bee"], "scores": [0.3 + 0.2 * i, 0.1], "caption": "a photo",
        "intake_ms": 5.0, "classify_ms": 50.0, "caption_ms": 400.0, "total_ms": 500.0 + i, "cached": False,
        "source": "upload"}) for i in range(4)]
    feedback = [{"id": f"f{i}", "prediction_id": f"p{i}", "created_at": T0 + timedelta(minutes=20 * i + 1),
                 "verdict": verdict, "corrected_label": None, "edited_caption": None}
                for i, verdict in enumerate(["up", "down", "up"])]
    with eventlog.writer(path) as con:
        eventlog.insert_rows(con, "predictions", [m["prediction"] for m in made])
        versions = {v["version"]: v for m in made for v in m["versions"]}
        eventlog.insert_rows(con, "model_versions", list(versions.values()))
        eventlog.insert_rows(con, "outputs", [o for m in made for o in m["outputs"]])
        eventlog.insert_rows(con, "feedback", feedback)
    return str(path)


def run(path: str, page, f: queries.Filters = queries.Filters(), interval: str = "day"):
    with eventlog.reader(path) as con:
        return page(con, f, interval)


def test_a_single_day_gets_a_readable_axis_not_a_millisecond(one_day):
    trend = run(one_day, queries.overview)["trend"]
    assert len(trend) == 1
    fig = charts.activity(trend)
    low, high = (pd.Timestamp(v) for v in fig.layout.xaxis.range)
    assert (low, high) == (pd.Timestamp(DAY) - charts.ONE_MOMENT_PAD, pd.Timestamp(DAY) + charts.ONE_MOMENT_PAD)
    assert charts.top_labels(pd.DataFrame({"label": ["a"], "n": [1]})).layout.xaxis.range is None  # not a time axis


def test_a_single_latency_point_is_drawn_with_a_marker(one_day):
    fig = charts.latency_over_time(run(one_day, queries.performance)["over_time"])
    drawn = [t for t in fig.data if len(t.x) == 1]
    assert drawn and all("markers" in t.mode for t in drawn)


def test_partial_periods_are_marked_and_hatched(one_day):
    # the first day starts at 14:00 and is still running: partial; so is the last hour of an hourly view
    assert run(one_day, queries.overview)["trend"]["partial"].tolist() == [True]
    hourly = run(one_day, queries.overview, interval="hour")["trend"]
    # 14:00 to 15:00 is covered in full; the hour from 15:00 holds only the newest request, at 15:00
    assert hourly["partial"].tolist() == [False, True]
    bars = [t for t in charts.activity(hourly).data if t.type == "bar"][0]
    assert list(bars.marker.pattern.shape) == ["", charts.PARTIAL_PATTERN]
    buckets = pd.Series(pd.to_datetime(["2025-05-30", "2025-05-31", "2025-06-01"]))
    assert stats.mark_partial(buckets, "day", datetime(2025, 5, 30, 6), datetime(2025, 6, 2)).tolist() == \
        [True, False, False]


def summary(cur_up: int, cur_n: int, prev_up: int, prev_n: int) -> pd.DataFrame:
    return pd.DataFrame({"period": ["current", "previous"], "n": [1000, 1000], "images": [900, 900],
                         "n_verdict": [cur_n, prev_n], "n_up": [cur_up, prev_up], "n_edited": [10, 10],
                         "p50_ms": [100.0, 100.0], "p95_ms": [200.0, 200.0]})


@pytest.mark.parametrize("cur_up, cur_n, prev_up, prev_n, settled", [
    (45, 100, 50, 100, False),   # -5 pp on 100 verdicts: 50% is well inside 35–55%
    (450, 1000, 900, 1000, True),  # -45 pp: far outside
    (1, 3, 1, 1, True),            # 33% of 3 against 100%: 100% is outside 6–79%
])
def test_a_change_is_coloured_only_when_its_interval_excludes_the_previous_value(cur_up, cur_n, prev_up, prev_n,
                                                                                   settled):
    card = {c.label: c for c in metrics.overview_cards(summary(cur_up, cur_n, prev_up, prev_n))}["Thumbs-up rate"]
    assert card.delta is not None and card.settled is settled


def test_a_calibration_error_from_a_handful_of_verdicts_is_flagged(one_day):
    table = run(one_day, queries.confidence)["reliability"]
    warning = stats.calibration_warning(table)
    assert warning.startswith("The calibration error comes from only 3 verdicts")
    assert str(stats.MIN_CALIBRATION_VERDICTS) in warning
    assert "too few verdicts" in charts.reliability_diagram(table).layout.title.text
    many = table.assign(n_verdict=table["n_verdict"] * 100)
    assert stats.calibration_warning(many) is None


def test_first_day_tabs_render_with_the_warning(one_day, monkeypatch):
    monkeypatch.setenv("IMAGEREC_DB", one_day)
    monkeypatch.delenv("IMAGEREC_DASHBOARD_PASSWORD", raising=False)
    at = AppTest.from_file(APP, default_timeout=60)
    for tab in ("Overview", "Accuracy", "Models", "Performance", "Confidence"):
        at.session_state["tab"] = tab
        at.run()
        assert not at.exception and not at.error, tab
    assert [w.value for w in at.warning if "calibration error" in w.value] == [
        stats.calibration_warning(run(one_day, queries.confidence)["reliability"])]
