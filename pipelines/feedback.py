"""What a piece of feedback judges, checked against the output it judges: the answer, one task's output, or a box."""

from __future__ import annotations

import numbers
from typing import Any, Callable, NamedTuple

from pipelines import tasks
from pipelines.log.eventlog import FeedbackRejected

# What each task's output takes besides a thumbs up or down: a corrected label (and from whose labels), an edit.
CORRECTABLE = {"classify": "the classifier's labels", "zero_shot": "the labels asked", "detect": "the detector's labels"}


class Judged(NamedTuple):
    """Feedback made precise: the task it is on (None: the request's answer), the box, and a note for the caller."""

    task: str | None
    target: dict | None
    note: str | None


def judge(output_of: Callable[[str], dict | None], labels_of: Callable[[str, dict], list[str] | None],
          verdict: str | None, corrected_label: str | None, edited_caption: str | None, task: str | None,
          box: Any) -> Judged:
    """Check feedback against the output it judges; FeedbackRejected with one sentence when it cannot be right.

    output_of(task) gives the output a task gave on the prediction (None: it did not run); labels_of(task,
    output) the labels a correction is expected among. A box is its index in outputs.detect.boxes; a thumbs
    down on a box without a corrected label says it is not an object.
    """
    task = task or None
    corrected_label = (corrected_label or "").strip() or None
    if task is not None and task not in tasks.REGISTRY:
        raise FeedbackRejected(f"There is no task {task!r}; feedback is on one of: {', '.join(tasks.REGISTRY)}.")
    if box is not None and box != "":
        if task not in (None, "detect"):
            raise FeedbackRejected(f"Only detected objects have boxes; this feedback is on {task}.")
        task = "detect"
    else:
        box = None
    if corrected_label is not None and verdict == "up":
        raise FeedbackRejected("A corrected label says the answer was wrong: send it with a thumbs down.")
    if task is None:  # the answer: its labels' verdict, its caption's edit, as before feedback had tasks
        judged = "classify" if corrected_label is not None else None
    else:
        judged = task
    output = output_of(judged) if judged else None
    if judged and output is None:
        raise FeedbackRejected(f"This prediction has no {judged} output to judge: {judged} was not asked for.")
    if corrected_label is not None and judged not in CORRECTABLE:
        raise FeedbackRejected("A caption is corrected by editing it (edited_caption)." if judged == "caption"
                               else f"The {judged} output takes a thumbs up or down, not a corrected label.")
    target = None
    given = None  # the label the output gave for what is judged
    if judged == "detect":
        if box is None:
            if corrected_label is not None:
                raise FeedbackRejected("Say which box the corrected label is for: box is its index in "
                                       "outputs.detect.boxes.")
        else:
            found = output.get("boxes") or []
            index = _index(box)
            if index is None or not 0 <= index < len(found):
                raise FeedbackRejected(f"There is no box {box!r}: this answer has {len(found)} boxes"
                                       + (f", numbered 0 to {len(found) - 1}." if found else "."))
            target = {"index": index, **{k: found[index][k] for k in ("label", "score", "box")}}
            given = found[index]["label"]
    elif judged in ("classify", "zero_shot"):
        given = (output.get("labels") or [{}])[0].get("label")
    note = None
    if corrected_label is not None:
        if given is not None and corrected_label == given:
            raise FeedbackRejected(f"“{given}” is the label the model gave; if it is right, give a thumbs up.")
        known = labels_of(judged, output)
        if known is not None and corrected_label not in known:
            note = f"“{corrected_label}” is not one of {CORRECTABLE[judged]}; it was kept as a new label."
    return Judged(task, target, note)


def _index(box: Any) -> int | None:
    """A box index from JSON or a form: 2, 2.0 and "2" are box 2; anything else is none."""
    if isinstance(box, bool):
        return None
    if isinstance(box, numbers.Integral):
        return int(box)
    if isinstance(box, float) and box.is_integer():
        return int(box)
    if isinstance(box, str) and box.strip().isdigit():
        return int(box.strip())
    return None
