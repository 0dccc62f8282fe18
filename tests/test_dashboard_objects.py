"""The "Objects & custom labels" tab: detect and zero_shot queries on a hand-built log, their charts, the app."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from dashboard import charts, queries
from pipelines.log import eventlog, seed
from tests.test_dashboard_queries import T0, _prediction

APP = str(Path(__file__).resolve().parent.parent / "dashboard" / "app.py")
DET = "det@1"
ZS = "zs@1"
TAB = queries.OBJECTS_TAB


def _box(label: str, score: float) -> dict:
    return {"label": label, "score": score, "box": [0.0, 0.0, 10.0, 10.0]}


def _detect(pid: str, boxes: list[dict]) -> dict:
    return {"prediction_id": pid, "task": "detect", "model_version": DET, "precision": "fp32",
            "payload": {"model": DET, "boxes": boxes}, "ms": 200.0}


def _zero_shot(pid: str, scored: list[tuple[str, float]], label_set: list[str]) -> dict:
    return {"prediction_id": pid, "task": "zero_shot", "model_version": ZS, "precision": "fp32",
            "payload": {"model": ZS, "labels": [{"label": l, "score": s} for l, s in scored], "label_set": label_set},
            "ms": 100.0, "label": scored[0][0], "score": scored[0][1]}  # the headline, as the log's insert fills it


def _fb(n: int, pid: str, minutes: float, verdict: str | None, task: str | None, box: dict | None = None,
        label: str | None = None) -> dict:
    """A feedback row, as Studio.feedback logs it: a box's target is the box as it was answered, with its index."""
    return {"id": f"fb{n}", "prediction_id": pid, "created_at": T0 + timedelta(minutes=minutes), "verdict": verdict,
            "corrected_label": label, "edited_caption": None, "task": task,
            "target": None if box is None else eventlog._canonical(box)}


def _target(index: int, box: dict) -> dict:
    return {"index": index, **box}


@pytest.fixture(scope="module")
def handmade(tmp_path_factory) -> str:
    """Five requests on two days: three through detect (3, 0 and 2 boxes), three through zero_shot."""
    path = tmp_path_factory.mktemp("objects") / "log.duckdb"
    preds = [_prediction("a", 0, "tabby"), _prediction("b", 10, "beagle", source="example"),
             _prediction("c", 24 * 60, "tabby"), _prediction("d", 24 * 60 + 5, "pug"), _prediction("e", 30, "pug")]
    outputs = [
        _detect("a", [_box("person", 0.91), _box("person", 0.42), _box("car", 0.77)]),
        _detect("b", []),
        _detect("c", [_box("person", 0.66), _box("dog", 0.33)]),
        _zero_shot("a", [("a cat", 0.8), ("a dog", 0.2)], ["a cat", "a dog"]),
        _zero_shot("c", [("a dog", 0.62), ("a cat", 0.38)], ["a cat", "a dog"]),
        _zero_shot("d", [("a pallet", 0.51), ("a cat", 0.3), ("a forklift", 0.19)],
                   ["a forklift", "a pallet", "a cat"]),
    ]
    versions = [{"version": v, "model": v.split("@")[0], "revision": "1", "first_seen": T0} for v in (DET, ZS)]
    a_boxes, c_boxes = outputs[0]["payload"]["boxes"], outputs[2]["payload"]["boxes"]
    feedback = [
        _fb(1, "a", 1, "down", "detect"), _fb(2, "a", 2, "up", "detect"),  # the latest verdict counts: up
        _fb(3, "c", 24 * 60 + 1, "down", "detect"),
        _fb(4, "a", 3, "down", "detect", _target(1, a_boxes[1]), "dog"),
        _fb(5, "a", 4, "down", "detect", _target(2, a_boxes[2]), "truck"),
        _fb(6, "a", 5, "down", "detect", _target(2, a_boxes[2])),  # then: not an object at all
        _fb(7, "c", 24 * 60 + 2, "down", "detect", _target(0, c_boxes[0]), "dog"),
        _fb(8, "d", 24 * 60 + 6, "down", "zero_shot"),
        _fb(9, "a", 6, "up", None), _fb(10, "a", 7, "down", "classify", label="pug"),  # the labels' verdicts
    ]
    with eventlog.writer(path) as con:
        eventlog.insert_rows(con, "predictions", [p["prediction"] for p in preds])
        eventlog.insert_rows(con, "model_versions", [v for p in preds for v in p["versions"]] + versions)
        eventlog.insert_rows(con, "outputs", [o for p in preds for o in p["outputs"]] + outputs)
        eventlog.insert_rows(con, "feedback", feedback)
    return str(path)


def run(path: str, f: queries.Filters = queries.Filters(), interval: str = "day") -> dict:
    with eventlog.reader(path) as con:
        return queries.objects(con, f, interval)


def test_detect_counts_per_class_interval_and_photo(handmade):
    data = run(handmade)
    assert data["summary"].iloc[0].to_dict() == {"n_detect": 3, "n_boxes": 5, "n_zero_shot": 3}
    classes = {(str(b.date()), l): n for b, l, n in data["classes"][["bucket", "label", "n"]].itertuples(index=False)}
    day0, day1 = str(T0.date()), str((T0 + timedelta(days=1)).date())
    assert classes == {(day0, "person"): 2, (day0, "car"): 1, (day1, "person"): 1, (day1, "dog"): 1}
    assert dict(zip(data["per_photo"]["n_boxes"], data["per_photo"]["n_photos"])) == {0: 1, 2: 1, 3: 1}
    bins = dict(zip(data["box_scores"]["bin_low"].round(2), data["box_scores"]["n"]))
    assert bins == {0.9: 1, 0.4: 1, 0.75: 1, 0.65: 1, 0.3: 1}
    assert (data["box_scores"]["bin_high"] - data["box_scores"]["bin_low"]).round(2).eq(0.05).all()


def test_zero_shot_labels_scores_and_sets(handmade):
    data = run(handmade)
    custom = data["custom_labels"].set_index("label")
    assert list(custom.index) == ["a cat", "a dog", "a forklift", "a pallet"]  # by requests, then name
    assert custom["n_requests"].to_dict() == {"a cat": 3, "a dog": 2, "a forklift": 1, "a pallet": 1}
    assert custom["n_top"].to_dict() == {"a cat": 1, "a dog": 1, "a forklift": 0, "a pallet": 1}
    assert dict(zip(data["top_scores"]["bin_low"].round(2), data["top_scores"]["n"])) == {0.8: 1, 0.6: 1, 0.5: 1}
    sets = data["label_sets"]
    assert [list(s) for s in sets["label_set"]] == [["a cat", "a dog"], ["a forklift", "a pallet", "a cat"]]
    assert list(sets["n_requests"]) == [2, 1]


def test_feedback_per_task_and_boxes_marked_wrong(handmade):
    data = run(handmade)
    verdicts = data["task_verdicts"].set_index("task")
    assert verdicts[["n_verdict", "n_up"]].to_dict("index") == {
        "detect": {"n_verdict": 2, "n_up": 1}, "classify": {"n_verdict": 1, "n_up": 0},
        "zero_shot": {"n_verdict": 1, "n_up": 0}}
    assert verdicts["up_rate"].to_dict() == {"detect": 0.5, "classify": 0.0, "zero_shot": 0.0}
    wrong = [tuple(r) for r in data["wrong_boxes"][["label", "should_be", "n_boxes"]].itertuples(index=False)]
    assert wrong == [("person", "dog", 2), ("car", queries.NOT_AN_OBJECT, 1)]  # box 2's latest: not an object
    day1 = datetime.combine((T0 + timedelta(days=1)).date(), datetime.min.time())
    later = run(handmade, queries.Filters(start=day1, end=day1 + timedelta(days=1)))  # requests c and d
    assert later["task_verdicts"].set_index("task")["n_verdict"].to_dict() == {"detect": 1, "zero_shot": 1}
    assert list(later["wrong_boxes"]["n_boxes"]) == [1]


def test_filters_reach_the_new_queries(handmade):
    day1 = datetime.combine((T0 + timedelta(days=1)).date(), datetime.min.time())
    data = run(handmade, queries.Filters(start=day1, end=day1 + timedelta(days=1)))
    assert data["summary"].iloc[0].to_dict() == {"n_detect": 1, "n_boxes": 2, "n_zero_shot": 2}
    assert set(data["classes"]["label"]) == {"person", "dog"}
    data = run(handmade, queries.Filters(sources=("example",)))
    assert data["summary"].iloc[0].to_dict() == {"n_detect": 1, "n_boxes": 0, "n_zero_shot": 0}
    assert list(data["per_photo"]["n_boxes"]) == [0] and data["box_scores"].empty and data["custom_labels"].empty
    data = run(handmade, queries.Filters(labels=("tabby",)))  # top-1 label filter: requests a and c
    assert data["summary"].iloc[0].to_dict() == {"n_detect": 2, "n_boxes": 5, "n_zero_shot": 2}
    data = run(handmade, queries.Filters(versions=(("detect", ("other@2",)),)))
    assert data["summary"].iloc[0].to_dict() == {"n_detect": 0, "n_boxes": 0, "n_zero_shot": 0}
    data = run(handmade, queries.Filters(versions=(("zero_shot", (ZS,)),)))
    assert data["summary"].iloc[0].to_dict() == {"n_detect": 2, "n_boxes": 5, "n_zero_shot": 3}


def test_more_classes_than_shown_are_summed_as_other(tmp_path):
    path = tmp_path / "log.duckdb"
    labels = [f"class{i:02d}" for i in range(queries.TOP_CLASSES + 2)]
    p = _prediction("a", 0, "tabby")
    boxes = [_box(label, 0.5) for i, label in enumerate(labels) for _ in range(len(labels) - i)]
    with eventlog.writer(path) as con:
        eventlog.insert_rows(con, "predictions", [p["prediction"]])
        eventlog.insert_rows(con, "outputs", p["outputs"] + [_detect("a", boxes)])
    classes = run(str(path))["classes"]
    assert len(classes) == queries.TOP_CLASSES + 1 and classes["n"].sum() == len(boxes)
    assert classes.set_index("label")["n"]["other"] == 2 + 1  # the two least found classes


# -- charts --------------------------------------------------------------------------------------------

def is_empty_state(fig) -> bool:
    return not fig.data and any("No " in a.text for a in fig.layout.annotations)


def test_charts_on_the_query_frames(handmade):
    data = run(handmade)
    fig = charts.objects_over_time(data["classes"])
    assert [t.name for t in fig.data] == ["person", "car", "dog"] and fig.layout.barmode == "stack"
    assert list(fig.data[0].y) == [2, 1]
    fig = charts.boxes_per_photo(data["per_photo"])
    assert list(fig.data[0].x) == [0, 2, 3] and list(fig.data[0].y) == [1, 1, 1]
    fig = charts.score_histogram(data["box_scores"])
    assert sum(fig.data[0].y) == 5 and all(0 < x < 1 for x in fig.data[0].x)
    fig = charts.custom_labels(data["custom_labels"])
    asked, top = fig.data
    assert list(asked.y) == ["a pallet", "a forklift", "a dog", "a cat"] and list(asked.x) == [1, 1, 2, 3]
    assert list(top.x) == [1, 0, 1, 1]
    fig = charts.score_histogram(data["top_scores"], "Zero-shot top scores", "requests", "top score")
    assert sum(fig.data[0].y) == 3
    empty = run(handmade, queries.Filters(sources=("nowhere",)))
    for fig in (charts.objects_over_time(empty["classes"]), charts.boxes_per_photo(empty["per_photo"]),
                charts.score_histogram(empty["box_scores"]), charts.custom_labels(empty["custom_labels"])):
        assert is_empty_state(fig)


# -- seed and app --------------------------------------------------------------------------------------

def test_seed_adds_detect_and_zero_shot_deterministically(tmp_path):
    path = tmp_path / "log.duckdb"
    end = datetime(2025, 6, 1)
    assert seed.seed(str(path), 1000, seed=4, end=end)[0] == 1000
    assert seed.seed(str(path), 1000, seed=4, end=end) == (0, 0)
    with eventlog.reader(path) as con:
        counts = dict(con.execute("SELECT task, count(*) FROM outputs GROUP BY ALL").fetchall())
        first = con.execute("SELECT payload FROM outputs WHERE task = 'zero_shot' ORDER BY prediction_id "
                            "LIMIT 1").fetchall()
    assert counts["classify"] == 1000 and 200 < counts["detect"] < 400 and 100 < counts["zero_shot"] < 300
    again = seed.synthetic_tables(1000, seed=4, end=end)["outputs"].to_pandas()
    zs = again[again["task"] == "zero_shot"].sort_values("prediction_id")
    assert zs["payload"].iloc[0] == first[0][0]
    with eventlog.reader(path) as con:  # each seeded box verdict is on a box of its output, as answered
        marked = con.execute("""
            SELECT f.target, o.payload FROM feedback f JOIN outputs o ON o.prediction_id = f.prediction_id
            WHERE f.task = 'detect' AND f.target IS NOT NULL AND o.task = 'detect'""").fetchall()
    assert len(marked) > 10
    for target, payload in marked:
        target, boxes = json.loads(target), json.loads(payload)["boxes"]
        assert boxes[target.pop("index")] == target


@pytest.fixture
def make_app(monkeypatch):
    def make(path) -> AppTest:
        monkeypatch.setenv("IMAGEREC_DB", str(path))
        monkeypatch.delenv("IMAGEREC_DASHBOARD_PASSWORD", raising=False)
        monkeypatch.delenv("IMAGEREC_REFRESH_SECONDS", raising=False)
        return AppTest.from_file(APP, default_timeout=60)
    return make


def open_tab(at: AppTest) -> AppTest:
    at.run()
    at.selectbox(key="period").set_value("All time").run()
    at.session_state["tab"] = TAB
    return at.run()


def test_app_shows_the_tab_with_data(make_app, handmade):
    at = open_tab(make_app(handmade))
    assert not at.exception and not at.error, [e.value for e in at.exception]
    assert TAB in [t.label for t in at.tabs]
    assert len(at.get("plotly_chart")) == 5 and not at.info
    sets = at.dataframe[0].value
    assert list(sets["label_set"]) == ["a cat · a dog", "a forklift · a pallet · a cat"]
    assert any("3 photos through detect, 5 boxes found" in c.value for c in at.caption)
    boxes = at.dataframe[2].value
    assert list(boxes["should_be"]) == ["dog", queries.NOT_AN_OBJECT]
    assert at.dataframe[1].value.set_index("task")["n_up"].to_dict() == {"detect": 1, "classify": 0, "zero_shot": 0}


def test_app_empty_state_names_the_task_to_run(make_app, tmp_path):
    path = tmp_path / "log.duckdb"
    p = _prediction("a", 0, "tabby")
    with eventlog.writer(path) as con:
        eventlog.insert_rows(con, "predictions", [p["prediction"]])
        eventlog.insert_rows(con, "model_versions", p["versions"])
        eventlog.insert_rows(con, "outputs", p["outputs"])
    at = open_tab(make_app(path))
    assert not at.exception and not at.error
    assert not at.get("plotly_chart")
    info = [i.value for i in at.info]
    assert len(info) == 3 and "run the detect task" in info[0] and "run the zero_shot task" in info[1]
    assert "No feedback on single answers yet" in info[2]
