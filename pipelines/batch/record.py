"""A batch job in the log: its run in `batch_runs` and, when asked, each recognised image as a prediction."""

from __future__ import annotations

import json

from pipelines.batch import worker
from pipelines.log.eventlog import EventLog, new_id, utcnow
from pipelines.log.rows import prediction_rows

SOURCE = "batch"


def result_of(row: dict, tasks: dict) -> dict:
    """An OUT row as a recognizer result, the shape pipelines.log.rows.prediction_rows reads."""
    timings = json.loads(row["timings_ms"] or "{}")
    precisions = json.loads(row["precisions"] or "{}")
    outputs = {name: json.loads(row[name]) for name in tasks if row.get(name)}
    runs = {name: {"model_id": tasks[name].model.model_id, "model": payload.get("model"),
                   "revision": _revision(payload.get("model"), tasks[name].model.model_id),
                   "precision": precisions.get(name), "ms": timings.get(name)}
            for name, payload in outputs.items()}
    return {"id": new_id(), "created_at": row["created_at"], "cached": False, "outputs": outputs, "runs": runs,
            "image": {"sha256": row["sha256"], "width": row["width"], "height": row["height"]},
            "timings_ms": {**timings, "total": row["ms"]}}


def _revision(version: str | None, model_id: str) -> str | None:
    """The revision part of a version "id@revision" (None for an id alone)."""
    if not version or not version.startswith(model_id + "@"):
        return None
    return version[len(model_id) + 1:]


def log_rows(log: EventLog, rows: list[dict], tasks: dict) -> int:
    """Log each recognised image of the run as a prediction with source 'batch'; returns how many."""
    logged = 0
    for row in rows:
        if row["status"] == worker.DONE:
            log.log_prediction(prediction_rows(result_of(row, tasks), SOURCE))
            logged += 1
    return logged


def log_run(log: EventLog, summary, job) -> str:
    """Record the run: when, input, output, tasks, model versions, counts and speed."""
    return log.log_batch_run({
        "id": summary.run_id, "created_at": summary.started, "finished_at": utcnow(), "input": job.input,
        "output": job.out, "tasks": list(summary.models), "models": summary.models, "images": summary.images,
        "done": summary.done, "refused": summary.refused, "skipped": summary.skipped, "errors": summary.errors,
        "seconds": summary.seconds, "images_per_s": summary.images_per_s, "batch_size": job.batch_size,
        "ray_address": job.ray_address,
    })
