"""The Models tab: queries on a hand-built log with known answers, its pure charts, the tab through AppTest, and
the training history stored at registration."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from dashboard import model_charts, models, queries
from pipelines import promotion
from pipelines.log import eventlog, rows

APP = str(Path(__file__).resolve().parent.parent / "dashboard" / "app.py")
T0 = datetime(2025, 5, 30, 12)
OLD = ("google/vit-base-patch16-224", "older")
NEW = ("models/ants-bees", "trained1")
OLD_V, NEW_V = (f"{m}@{r}" for m, r in (OLD, NEW))
EVALUATION = {"accuracy": 0.9, "top5_accuracy": 1.0, "ece": 0.05, "count": 20, "labels": ["ant", "bee"],
              "confusion_matrix": [[9, 1], [1, 9]],
              "per_class": {"ant": {"precision": 0.9, "recall": 0.9, "f1": 0.9, "support": 10},
                            "bee": {"precision": 0.8, "recall": 0.7, "f1": 0.75, "support": 10}}}
NO_EVALUATION = ("{name}: no offline evaluation recorded (train it with `python -m pipelines.train` and "
                 "register it with `python -m pipelines.promote`).")
HISTORY = [{"epoch": 1, "train_loss": 0.7, "val_loss": 0.6}, {"epoch": 2, "train_loss": 0.4, "val_loss": 0.5}]


def _prediction(pid: str, minutes: float, labels: list[str], score: float, version=NEW) -> dict:
    return rows.from_v2_row({
        "id": pid, "created_at": T0 + timedelta(minutes=minutes), "image_sha256": pid * 4,
        "classifier": version[0], "classifier_revision": version[1], "captioner": "blip", "captioner_revision": "1",
        "labels": labels, "scores": [score] + [0.01] * (len(labels) - 1), "caption": "a photo",
        "intake_ms": 5.0, "classify_ms": 50.0, "caption_ms": 400.0, "total_ms": 500.0, "cached": False,
        "source": "upload"})


def _feedback(fid: str, pid: str, minutes: float, verdict=None, corrected=None) -> dict:
    return {"id": fid, "prediction_id": pid, "created_at": T0 + timedelta(minutes=minutes), "verdict": verdict,
            "corrected_label": corrected, "edited_caption": None}


SIX = ["ant", "bee", "wasp", "fly", "moth", "beetle"]


@pytest.fixture(scope="module")
def log(tmp_path_factory) -> str:
    """Two versions: NEW (evaluated, with history) and OLD (never evaluated), with verdicts of every kind."""
    path = tmp_path_factory.mktemp("models") / "log.duckdb"
    predictions = [
        _prediction("n1", 0, SIX, 0.9),                              # up: right, top-1 and top-5
        _prediction("n2", 1, SIX, 0.4),                              # down -> fly (4th shown): top-5 only
        _prediction("n3", 2, SIX, 0.3),                              # down -> spider (not shown): wrong both
        _prediction("n4", 3, SIX, 0.2),                              # down without a label: thumbs-up rate only
        _prediction("n5", 4, ["bee", *SIX[2:]], 0.1),                # no verdict, least confident
        _prediction("o1", 5, SIX, 0.95, version=OLD),                # up
        _prediction("o2", 6, SIX, 0.5, version=OLD),                 # down -> beetle (6th shown): wrong both
    ]
    feedback = [
        _feedback("f1", "n1", 10, "up"),
        _feedback("f2", "n2", 10, "up"), _feedback("f3", "n2", 11, "down", "fly"),  # the latest counts
        _feedback("f4", "n3", 10, "down", "spider"),
        _feedback("f5", "n4", 10, "down"),
        _feedback("f6", "o1", 10, "up"),
        _feedback("f7", "o2", 10, "down", "beetle"),
    ]
    with eventlog.writer(path) as con:
        eventlog.insert_rows(con, "predictions", [p["prediction"] for p in predictions])
        versions = {v["version"]: v for p in predictions for v in p["versions"]}
        versions[NEW_V] |= {"base": "google/vit-base-patch16-224", "evaluation": json.dumps(EVALUATION),
                            "params": json.dumps({"mode": "probe", "history": HISTORY})}
        eventlog.insert_rows(con, "model_versions", list(versions.values()))
        eventlog.insert_rows(con, "outputs", [o for p in predictions for o in p["outputs"]])
        eventlog.insert_rows(con, "feedback", feedback)
    return str(path)


def page(path: str, f: queries.Filters = queries.Filters()) -> dict[str, pd.DataFrame]:
    with eventlog.reader(path) as con:
        return queries.PAGES["Models"](con, f, "day")


def test_live_measures_are_distinct_and_count_only_verdicts_that_tell_the_label(log):
    totals = page(log)["live_totals"].set_index("version_id")
    new, old = totals.loc[NEW_V], totals.loc[OLD_V]
    assert (new.n_verdict, new.n_up, new.n_known, new.n_top1, new.n_top5) == (4, 1, 3, 1, 2)
    assert new.up_rate == pytest.approx(1 / 4) and new.top1 == pytest.approx(1 / 3) and new.top5 == pytest.approx(2 / 3)
    assert (old.n_verdict, old.n_known, old.n_top1, old.n_top5) == (2, 2, 1, 1)  # beetle is 6th: not in the top 5


def test_versions_carry_their_evaluation_and_history_or_say_they_have_none(log):
    table = page(log)["versions"].set_index("version")
    assert table.at[NEW_V, "accuracy"] == 0.9 and table.at[NEW_V, "name"] == "ants-bees@trained1"
    assert pd.isna(table.at[OLD_V, "evaluation"]) and pd.isna(table.at[OLD_V, "history"])
    per_class = models.per_class(table.at[NEW_V, "evaluation"])
    assert list(per_class["label"]) == ["bee", "ant"]  # worst F1 first
    matrix = models.confusion(table.at[NEW_V, "evaluation"])
    assert matrix.loc["ant", "bee"] == 1 and matrix.loc["bee", "bee"] == 9
    assert list(models.history(table.at[NEW_V, "history"])["val_loss"]) == [0.6, 0.5]


def test_review_queue_puts_disagreement_first_then_least_confident(log):
    queue = page(log)["review"]
    assert list(queue["id"]) == ["n4", "n3", "n2", "o2", "n5"]  # the downs by score, then the unrated
    assert list(queue["reason"]) == ["feedback disagrees"] * 4 + ["low confidence"]


def test_worst_classes_are_true_labels_by_error_rate(log):
    worst = page(log)["worst_classes"].set_index("label")
    assert worst.at["spider", "error_rate"] == 1 and worst.at["ant", "error_rate"] == 0
    assert worst.at["ant", "n_known"] == 2  # n1 and o1
    assert list(page(log)["worst_classes"]["label"])[-1] == "ant"


def test_filters_narrow_the_live_counts(log):
    f = queries.Filters(versions=(("classify", (OLD_V,)),))
    assert list(page(log, f)["live_totals"]["version_id"]) == [OLD_V]


def test_confusion_chart_draws_the_matrix_rows_true():
    matrix = models.confusion(json.dumps(EVALUATION))
    fig = model_charts.confusion_matrix(matrix)
    assert fig.data[0].z.tolist() == [[9, 1], [1, 9]] and list(fig.data[0].y) == ["ant", "bee"]
    assert "No confusion" in model_charts.confusion_matrix(pd.DataFrame()).layout.annotations[0].text


def test_loss_curves_show_train_and_validation_or_say_there_is_no_history():
    fig = model_charts.loss_curves(pd.DataFrame(HISTORY))
    assert [t.name for t in fig.data] == ["train", "validation"] and list(fig.data[1].y) == [0.6, 0.5]
    assert model_charts.loss_curves(pd.DataFrame()).layout.annotations[0].text.startswith("No training history")


def test_live_accuracy_marks_a_single_point_and_skips_buckets_without_known_verdicts(log):
    live = page(log)["live"]
    fig = model_charts.live_accuracy(live, "top1")
    lines = [t for t in fig.data if t.mode == "lines+markers"]
    assert {t.name for t in lines} == {"ants-bees@trained1", "vit-base-patch16-224@older"}
    assert all(len(t.x) == 1 for t in lines)  # one day: one point each, drawn with a marker
    none_known = live.assign(n_known=0)
    assert "true label" in model_charts.live_accuracy(none_known, "top1").layout.annotations[0].text


def test_compare_puts_offline_and_live_side_by_side(log):
    data = page(log)
    fig = model_charts.compare(data["versions"], data["live_totals"])
    by_name = {t.name: dict(zip(t.x, t.y)) for t in fig.data}
    assert by_name["ants-bees@trained1"]["offline accuracy"] == 0.9
    assert by_name["ants-bees@trained1"]["live top-1"] == pytest.approx(1 / 3)
    assert by_name["vit-base-patch16-224@older"]["offline accuracy"] is None


def test_registration_stores_the_training_history(tmp_path):
    folder = tmp_path / "trained"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "training.json").write_text(json.dumps({"base_name": "base", "params": {"mode": "probe"}}))
    (folder / "history.json").write_text(json.dumps(HISTORY))
    db = tmp_path / "log.duckdb"
    with eventlog.EventLog(db) as log:
        model = SimpleNamespace(model_id=str(folder), version=f"{folder}@local", revision="local")
        promotion.register(log, model)
    params = json.loads(eventlog.query(str(db), "SELECT params FROM model_versions").params[0])
    assert params["mode"] == "probe" and params["history"] == HISTORY


def _models_tab(log: str, monkeypatch) -> AppTest:
    """The dashboard over log, run once on its Models tab over all time."""
    monkeypatch.setenv("IMAGEREC_DB", log)
    monkeypatch.delenv("IMAGEREC_DASHBOARD_PASSWORD", raising=False)
    at = AppTest.from_file(APP, default_timeout=60)
    at.session_state["period"] = "All time"
    at.session_state["tab"] = "Models"
    return at.run()


def test_models_tab_shows_both_versions_and_says_which_has_no_evaluation(log, monkeypatch):
    at = _models_tab(log, monkeypatch)
    assert not at.exception, [e.value for e in at.exception]
    assert [c.value for c in at.caption if "no offline evaluation" in c.value] == [
        NO_EVALUATION.format(name="vit-base-patch16-224@older")]
    assert [m.value for m in at.metric if m.label == "Accuracy"] == ["90.0%"]
    # compare, confusion matrix, loss curves, live top-1, live thumbs-up, error rate per class
    assert len(at.get("plotly_chart")) == 6
    assert list(at.dataframe[-1].value["id"]) == ["n4", "n3", "n2", "o2", "n5"]



def test_picking_versions_to_compare_changes_the_panels(log, monkeypatch):
    at = _models_tab(log, monkeypatch)
    at.multiselect(key="compare_versions").set_value([NEW_V]).run()
    assert not at.exception, [e.value for e in at.exception]
    assert not [c for c in at.caption if "no offline evaluation" in c.value]
    assert [m.value for m in at.metric if m.label == "Top-5 accuracy"] == ["100.0%"]
    compare = at.get("plotly_chart")[0]
    assert [t["name"] for t in json.loads(compare.proto.spec)["data"]] == ["ants-bees@trained1"]
