"""The model-holding worker a batch job's actor pool runs: intake each file, then each task on the batch at once."""

from __future__ import annotations

import json
import os
import time
from typing import Any, Mapping, Sequence

import pyarrow as pa

from pipelines.intake import ImageRejected, Limits, load_image
from pipelines.log.eventlog import utcnow

DONE, REFUSED, ERROR = "done", "refused", "error"

# OUT's columns besides one per task (the task's payload as JSON text, as the API returns it; null when it did
# not run on that file). models: task -> model version; timings_ms: intake and each task's share of its batch.
# A new column goes at the end: OUT's older files are read with the newest schema, a missing column as null.
BASE_SCHEMA = (
    ("path", pa.string()), ("sha256", pa.string()), ("error", pa.string()), ("status", pa.string()),
    ("width", pa.int32()), ("height", pa.int32()), ("ms", pa.float64()), ("models", pa.string()),
    ("precisions", pa.string()), ("timings_ms", pa.string()), ("created_at", pa.string()), ("run_id", pa.string()),
    ("node", pa.string()),  # the Ray node that read it (null for a file refused from the listing)
)


def schema(task_names: Sequence[str]) -> pa.Schema:
    """OUT's schema for a job that runs these tasks."""
    return pa.schema([pa.field(name, kind) for name, kind in BASE_SCHEMA] +
                     [pa.field(name, pa.string()) for name in task_names])


def models_key(versions: Mapping[str, str]) -> str:
    """The models column: task -> version as JSON with sorted keys, so equal versions give equal text."""
    return json.dumps(dict(sorted(versions.items())))


def table(rows: list[dict], task_names: Sequence[str]) -> pa.Table:
    """Rows as an Arrow table with OUT's schema (payloads and maps as JSON text)."""
    out = schema(task_names)
    for row in rows:
        for name in list(task_names) + ["precisions", "timings_ms"]:
            if row.get(name) is not None and not isinstance(row[name], str):
                row[name] = json.dumps(row[name], ensure_ascii=False)
    return pa.Table.from_pylist([{f.name: row.get(f.name) for f in out} for row in rows], schema=out)


def refusal(path: str, message: str, models: str, run_id: str) -> dict:
    """OUT's row for a file intake refused: the one-sentence reason, no outputs."""
    return {"path": path, "error": message, "status": REFUSED, "models": models, "run_id": run_id,
            "created_at": utcnow().isoformat()}


class Recognize:
    """Holds the tasks' models for the life of its actor; called on a batch of files, returns OUT's rows."""

    def __init__(self, config, task_names: Sequence[str], limits: Limits, models: str, run_id: str,
                 prefix: str = "", threads: int = 0):
        from pipelines import tasks as registry
        from pipelines.models.precision import configure_threads
        from pipelines.tasks import Request

        # Ray gives an actor its share of CPUs in OMP_NUM_THREADS; more torch threads than that fight each other
        configure_threads(threads or int(os.environ.get("OMP_NUM_THREADS") or 0) or config.threads)
        built = registry.build(config)
        self.tasks = {name: built[name] for name in task_names}
        for task in self.tasks.values():
            task.model.load()  # once per actor, before the first batch: a model that will not load fails the job
        self.names = list(task_names)
        self.limits, self.models, self.run_id, self.prefix = limits, models, run_id, prefix
        self._request = Request
        import ray

        self.node = ray.get_runtime_context().get_node_id()

    def __call__(self, batch: dict[str, Any]) -> pa.Table:
        rows, good, images = [], [], []
        for path, data in zip(batch["path"], batch["bytes"]):
            t = time.perf_counter()
            shown = self.prefix + str(path)
            try:
                intake = load_image(bytes(data), self.limits)
            except ImageRejected as exc:
                rows.append(refusal(shown, str(exc), self.models, self.run_id))
                continue
            row = {"path": shown, "sha256": intake.sha256, "width": intake.width, "height": intake.height,
                   "status": DONE, "models": self.models, "run_id": self.run_id, "created_at": utcnow().isoformat(),
                   "timings_ms": {"intake": _ms(t)}, "precisions": {}}
            rows.append(row)
            good.append(row)
            images.append(intake.image)
        if good:
            self._run_tasks(good, images)
        for row in rows:
            row["node"] = self.node
            timings = row.get("timings_ms") or {}
            row["ms"] = round(sum(timings.values()), 3) if timings else None
        return table(rows, self.names)

    def _run_tasks(self, rows: list[dict], images: list) -> None:
        """Each task over the batch in one call; a batch that fails is retried one photo at a time, so one bad
        photo marks only itself."""
        requests = [self._request(size=(row["width"], row["height"])) for row in rows]
        done: list[dict[str, dict]] = [{} for _ in rows]
        for name in self.names:
            task = self.tasks[name]
            live = [i for i, row in enumerate(rows) if row["status"] == DONE]
            if not live:
                return
            t = time.perf_counter()
            try:
                payloads = task.batch([images[i] for i in live], [requests[i] for i in live], [done[i] for i in live])
            except Exception:
                payloads = [self._one(task, images[i], requests[i], done[i], rows[i]) for i in live]
            share = _ms(t) / len(live)
            for i, payload in zip(live, payloads):
                if payload is None:
                    continue
                payload = {"model": task.model.version, **payload}
                done[i][name] = rows[i][name] = payload
                rows[i]["timings_ms"][name] = round(share, 3)
                rows[i]["precisions"][name] = task.precision

    @staticmethod
    def _one(task, image, request, done: dict, row: dict) -> dict | None:
        try:
            return task(image, request, done)
        except Exception as exc:  # the task failed on this photo: the row says so and the job goes on
            row["status"], row["error"] = ERROR, f"The {task.name} task failed on this image: {exc}"
            return None


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 3)
