"""Feedback per task output and per detected box, through the Studio into a real DuckDB log, and what it refuses."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from devtools.demo_server import EXAMPLES, test_settings
from pipelines.log import eventlog, sql
from pipelines.log.eventlog import EventLog, FeedbackRejected
from pipelines.studio import Studio

PHOTO = EXAMPLES / "cat.jpg"
ALL = ["classify", "caption", "detect", "zero_shot"]
OWN = "a cat, a rocket, a cup of coffee"


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _three_boxes(inputs):
    """The detector's answer, known: three boxes (labels 0, 1, 2 at 0.9, 0.6 and 0.3), every other query ~0."""
    logits = torch.full((1, 20, 5), -30.0)
    boxes = torch.full((1, 20, 4), 0.5)
    for i, (label, score, box) in enumerate([(0, 0.9, [0.5, 0.5, 0.2, 0.2]), (1, 0.6, [0.3, 0.3, 0.2, 0.2]),
                                             (2, 0.3, [0.7, 0.7, 0.2, 0.2])]):
        logits[0, i, label] = _logit(score)
        boxes[0, i] = torch.tensor(box)
    return SimpleNamespace(logits=logits, pred_boxes=boxes)


@pytest.fixture
def studio(tiny_classifier_dir, tiny_captioner_dir, tiny_detector_dir, tiny_clip_dir, tmp_path):
    config = test_settings(tiny_classifier_dir, tiny_captioner_dir, tmp_path / "log.duckdb",
                           detector=str(tiny_detector_dir), zero_shot_model=str(tiny_clip_dir), detect_threshold=0.2,
                           zero_shot_labels=OWN, flush_interval=60)  # flushed when a test says so
    studio = Studio.from_settings(config)
    studio.recognizer.tasks["detect"].model.load()._forward = _three_boxes
    yield studio
    studio.close()


def _feedback(studio) -> list[dict]:
    studio.log.flush()
    with eventlog.reader(studio.log.path) as con:
        cursor = con.execute("SELECT * FROM feedback ORDER BY created_at")
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]


def test_each_task_output_takes_its_own_thumbs_and_the_answer_s_verdict_is_unchanged(studio):
    result = studio.predict(str(PHOTO), tasks=ALL)
    pid = result["id"]
    for task in ("caption", "detect", "zero_shot"):
        saved = studio.feedback(pid, verdict="down", task=task)
        assert saved["task"] == task and not saved["duplicate"]
    studio.feedback(pid, verdict="up")  # the page's thumbs on the labels, as before tasks had feedback
    studio.feedback(pid, verdict="up", task="classify")  # the same verdict on the same answer: counted once
    rows = _feedback(studio)
    assert [(r["task"], r["verdict"]) for r in rows] == [("caption", "down"), ("detect", "down"),
                                                         ("zero_shot", "down"), (None, "up")]
    with eventlog.reader(studio.log.path) as con:
        answer = con.execute(f"SELECT verdict FROM ({sql.latest_feedback(('verdict',))})").fetchall()
        caption = con.execute(f"SELECT verdict FROM ({sql.latest_feedback(('verdict',), task='caption')})").fetchall()
    assert answer == [("up",)]  # the dashboard's accuracy reads the labels' verdict, not the caption's thumbs down
    assert caption == [("down",)]


def test_a_box_marked_wrong_is_stored_with_the_box(studio):
    result = studio.predict(str(PHOTO), tasks=["detect"])
    boxes = result["outputs"]["detect"]["boxes"]
    assert [b["score"] for b in boxes] == pytest.approx([0.9, 0.6, 0.3], abs=1e-4)
    relabelled = studio.feedback(result["id"], corrected_label="cat", box=1)
    assert relabelled["task"] == "detect" and relabelled["box"] == {"index": 1, **boxes[1]}
    assert studio.feedback(result["id"], verdict="down", box=2)["box"]["label"] == boxes[2]["label"]  # not an object
    assert studio.feedback(result["id"], corrected_label="cat", box=1)["duplicate"]  # a double click
    rows = _feedback(studio)
    assert len(rows) == 2
    first, second = (json.loads(r["target"]) for r in rows)
    assert first == {"index": 1, **boxes[1]} and second == {"index": 2, **boxes[2]}
    assert [(r["task"], r["verdict"], r["corrected_label"]) for r in rows] == [("detect", "down", "cat"),
                                                                            ("detect", "down", None)]
    with eventlog.reader(studio.log.path) as con:
        answer = con.execute(f"SELECT * FROM ({sql.latest_feedback()})").fetchall()
    assert answer == []  # a box's verdict says nothing about the labels


def test_box_feedback_finds_the_box_after_a_restart_and_before_a_flush(studio, tmp_path):
    result = studio.predict(str(PHOTO), tasks=["detect"])  # still in the journal: flush_interval is 60 s
    studio.log._outputs.clear()  # as if many predictions came since
    assert studio.feedback(result["id"], corrected_label="dog", box="0")["box"]["index"] == 0
    path = studio.log.path
    studio.log.close()
    studio.log = EventLog(path, flush_interval=60).open()  # a new process: nothing in memory
    saved = studio.feedback(result["id"], verdict="down", box=1)
    assert saved["box"]["box"] == result["outputs"]["detect"]["boxes"][1]["box"]


@pytest.mark.parametrize("asked, wrong, says", [
    (dict(box=3, verdict="down"), "no box", "There is no box 3: this answer has 3 boxes, numbered 0 to 2."),
    (dict(box=-1, verdict="down"), "a negative box", "There is no box -1"),
    (dict(box=1.5, verdict="down"), "half a box", "There is no box 1.5"),
    (dict(box=True, verdict="down"), "a boolean box", "There is no box True"),
    (dict(box=0, verdict="down", task="caption"), "a box on a caption", "Only detected objects have boxes"),
    (dict(task="detect", corrected_label="cat"), "a label for no box", "Say which box"),
    (dict(task="caption", corrected_label="a dog"), "a label for a caption", "corrected by editing it"),
    (dict(task="detect", edited_caption="a dog"), "a caption edit on objects", "feedback on the caption"),
    (dict(task="explain", verdict="up"), "a task that did not run", "no explain output to judge"),
    (dict(task="faces", verdict="up"), "an unknown task", "There is no task 'faces'"),
    (dict(corrected_label="x", verdict="up"), "a thumbs up with a correction", "send it with a thumbs down"),
])
def test_feedback_that_cannot_be_right_is_refused_with_a_sentence_and_not_stored(studio, asked, wrong, says):
    result = studio.predict(str(PHOTO), tasks=ALL)
    with pytest.raises(FeedbackRejected) as refused:
        studio.feedback(result["id"], **asked)
    assert says in str(refused.value), wrong
    assert _feedback(studio) == []


def test_a_correction_equal_to_the_answer_is_refused_and_an_unknown_label_is_kept_with_a_note(studio):
    result = studio.predict(str(PHOTO), tasks=ALL)
    pid, top = result["id"], result["labels"][0]["label"]
    for asked, given in ((dict(corrected_label=top), top),
                         (dict(task="zero_shot", corrected_label=result["outputs"]["zero_shot"]["labels"][0]["label"]),
                          result["outputs"]["zero_shot"]["labels"][0]["label"]),
                         (dict(box=0, corrected_label=result["outputs"]["detect"]["boxes"][0]["label"]),
                          result["outputs"]["detect"]["boxes"][0]["label"])):
        with pytest.raises(FeedbackRejected, match=f"“{given}” is the label the model gave"):
            studio.feedback(pid, **asked)
    assert _feedback(studio) == []
    known = studio.labels()[-1]
    assert "note" not in studio.feedback(pid, corrected_label=known)
    new = studio.feedback(pid, corrected_label="a label no model has")
    assert "is not one of the classifier's labels" in new["note"]
    asked_labels = [item["label"] for item in result["outputs"]["zero_shot"]["labels"]]
    assert "note" not in studio.feedback(pid, task="zero_shot", corrected_label=asked_labels[-1])
    assert "not one of the labels asked" in studio.feedback(pid, task="zero_shot", corrected_label="a dog")["note"]
    assert "not one of the detector's labels" in studio.feedback(pid, box=0, corrected_label="a unicorn")["note"]
    assert len(_feedback(studio)) == 5  # every one of them kept


def test_deleting_a_prediction_forgets_its_outputs_and_its_box_feedback(studio):
    result = studio.predict(str(PHOTO), tasks=["detect"])
    studio.feedback(result["id"], verdict="down", box=0)
    studio.delete_data(prediction_id=result["id"])
    with pytest.raises(FeedbackRejected, match="no prediction"):
        studio.feedback(result["id"], verdict="down", box=1)
    assert _feedback(studio) == []
    assert studio.log.output(result["id"], "detect") is None


def test_box_feedback_acknowledged_before_a_crash_is_replayed_with_its_box(studio):
    result = studio.predict(str(PHOTO), tasks=["detect"])
    saved = studio.feedback(result["id"], corrected_label="dog", box=1)
    assert saved["logged"]  # on disk in the journal; DuckDB has not seen it (flush_interval is 60 s)
    path = studio.log.path
    studio.log._stop.set()
    studio.log._release()  # a crash: nothing more is written, the next start replays the journal
    studio.log = EventLog(path, flush_interval=60).open()
    (row,) = _feedback(studio)
    assert (row["id"], row["task"], row["corrected_label"]) == (saved["id"], "detect", "dog")
    assert json.loads(row["target"]) == saved["box"] == {"index": 1, **result["outputs"]["detect"]["boxes"][1]}
    assert studio.feedback(result["id"], corrected_label="dog", box=1)["duplicate"]  # the replayed one counts
