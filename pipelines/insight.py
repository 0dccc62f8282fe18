"""What the log says back: one prediction by id, and usage over a window (counts, rates, latency percentiles)."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from pipelines.log import sql
from pipelines.log.eventlog import EventLog, reader, utcnow

PERCENTILES = ("p50", "p90", "p99")


def _percentiles(values: list | None) -> dict[str, float | None]:
    values = values or [None] * len(PERCENTILES)
    return {name: (round(v, 2) if v is not None else None) for name, v in zip(PERCENTILES, values)}


def prediction(log: EventLog, prediction_id: str) -> dict[str, Any] | None:
    """A logged prediction as a caller may see it again (no session, no stored file), or None if there is none."""
    log.flush()  # an answer acknowledged a moment ago is readable at once
    with reader(log.path) as con:
        row = con.execute(sql.PREDICTION_BY_ID, [prediction_id]).fetchone()
        if row is None:
            return None
        outputs = con.execute(sql.OUTPUTS_BY_ID, [prediction_id]).fetchall()
        feedback = con.execute(sql.FEEDBACK_BY_ID, [prediction_id]).fetchone()
    pid, created, sha, width, height, total_ms, cached, source = row
    return {
        "id": pid, "created_at": created.isoformat(timespec="milliseconds") + "Z", "source": source,
        "image": {"sha256": sha, "width": width, "height": height}, "cached": bool(cached),
        "outputs": {task: json.loads(payload) if payload else None for task, _, payload, _ in outputs},
        "models": {task: version for task, version, _, _ in outputs},
        "timings_ms": {**{task: ms for task, _, _, ms in outputs}, "total": total_ms},
        "feedback": {"verdict": feedback[1], "corrected_label": feedback[2], "edited_caption": feedback[3]}
        if feedback else {"verdict": None, "corrected_label": None, "edited_caption": None},
    }


def usage(log: EventLog, window_hours: float) -> dict[str, Any]:
    """Counts, feedback rate (rated / predictions), accuracy rate (thumbs up / rated) and latency percentiles."""
    log.flush()
    since = utcnow() - timedelta(hours=window_hours)
    with reader(log.path) as con:
        predictions, rated, up, down, corrected, total = con.execute(sql.usage_counts(), [since]).fetchone()
        per_task = con.execute(sql.TASK_LATENCY, [since]).fetchall()
    return {
        "window_hours": window_hours, "predictions": predictions, "rated": rated, "thumbs_up": up,
        "thumbs_down": down, "corrected": corrected,
        "feedback_rate": round(rated / predictions, 4) if predictions else None,
        "accuracy_rate": round(up / rated, 4) if rated else None,
        "latency_ms": {"total": _percentiles(total), **{task: _percentiles(ms) for task, _, ms in per_task}},
        "runs": {task: runs for task, runs, _ in per_task},
    }
