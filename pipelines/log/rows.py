"""The log's rows for one request: its `predictions` row, one `outputs` row per task run, and the model versions.

`prediction_rows` turns a recognizer result into them; `from_v2_row` turns a schema-2 `predictions` row (a
journal line an older imagerec wrote) into the same shape, so an acknowledged event survives the upgrade.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

Rows = dict[str, Any]  # {"prediction": {...}, "outputs": [{...}, ...], "versions": [{...}, ...]}


def headline(payload: dict | None) -> tuple[str | None, float | None]:
    """An output's headline label and score, whatever its task: the first of its `labels` (classify, zero-shot),
    else its `label` and `score` (explain names the label it explains); (None, None) for a task without one."""
    if not isinstance(payload, dict):
        return None, None
    labels = payload.get("labels")
    first = labels[0] if isinstance(labels, list) and labels and isinstance(labels[0], dict) else None
    if first is None and "label" in payload:
        first = payload
    if first is None:
        return None, None
    label, score = first.get("label"), first.get("score")
    return (str(label) if label is not None else None), (float(score) if isinstance(score, (int, float)) else None)


def _version_of(model_id: str, revision: str | None) -> str:
    from pipelines.models import version_of  # only when needed: importing it imports torch

    return version_of(model_id, revision)


def _when(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else value


def prediction_rows(result: dict, source: str, session_id: str | None = None) -> Rows:
    """The log's rows for a recognizer result: the request, each task's output, and the versions that made them.

    An output's payload is the task's output dict as the API returns it; its version is the payload's
    "model" (else the run's id@revision), its precision and ms come from the task's run.
    """
    timings = result.get("timings_ms") or {}
    if "outputs" not in result and "models" in result:  # a result from before tasks: classify and caption only
        return from_v2_row(_v2_row(result, source, session_id))
    created_at = _when(result["created_at"])
    image = result["image"]
    prediction = {
        "id": result["id"],
        "created_at": created_at,
        "image_sha256": image["sha256"],
        "width": image.get("width"),
        "height": image.get("height"),
        "intake_ms": timings.get("intake"),
        "total_ms": timings.get("total"),
        "cached": result.get("cached"),
        "source": source,
        "session_id": session_id,
        "image_file": result.get("image_file"),
    }
    runs = result.get("runs") or {}
    outputs, versions = [], {}
    for task, payload in (result.get("outputs") or {}).items():
        if payload is None:
            continue
        run = runs.get(task) or {}
        model_id = run.get("model_id")
        version = payload.get("model") or run.get("model") or (_version_of(model_id, run.get("revision"))
                                                               if model_id else None)
        ms = run.get("ms")
        label, score = headline(payload)
        outputs.append({"prediction_id": result["id"], "task": task, "model_version": version,
                        "precision": run.get("precision"), "payload": payload,
                        "ms": timings.get(task) if ms is None else ms, "label": label, "score": score})
        if version and model_id:
            versions.setdefault(version, {"version": version, "model": model_id,
                                          "revision": run.get("revision") or None, "first_seen": created_at})
    return {"prediction": prediction, "outputs": outputs, "versions": list(versions.values())}


def from_v2_row(row: dict) -> Rows:
    """A schema-2 `predictions` row (the wide shape) as the rows schema 3 logs; the migration's rule, in Python."""
    prediction = {c: row.get(c) for c in ("id", "created_at", "image_sha256", "width", "height", "intake_ms",
                                          "total_ms", "cached", "source", "session_id", "image_file")}
    prediction["created_at"] = _when(prediction["created_at"])
    outputs, versions = [], {}

    def version(model: str | None, revision: str | None) -> str | None:
        if not model:
            return None
        v = _version_of(model, revision)
        versions.setdefault(v, {"version": v, "model": model, "revision": revision or None,
                                "first_seen": prediction["created_at"]})
        return v

    classify_version = version(row.get("classifier"), row.get("classifier_revision"))
    caption_version = version(row.get("captioner"), row.get("captioner_revision"))
    if row.get("labels") is not None or row.get("top1_label") is not None:
        v = classify_version
        if row.get("labels") is not None:
            scores = list(row.get("scores") or [])
            labels = [{"label": label, "score": scores[i] if i < len(scores) else None}
                      for i, label in enumerate(row["labels"])]
        else:
            labels = [{"label": row.get("top1_label"), "score": row.get("top1_score")}]
        payload = {"model": v, "labels": labels}
        label, score = headline(payload)
        outputs.append({"prediction_id": row["id"], "task": "classify", "model_version": v,
                        "precision": row.get("classifier_precision"), "payload": payload,
                        "ms": row.get("classify_ms"), "label": label, "score": score})
    if row.get("caption") is not None:
        v = caption_version
        outputs.append({"prediction_id": row["id"], "task": "caption", "model_version": v,
                        "precision": row.get("captioner_precision"),
                        "payload": {"model": v, "caption": row["caption"], "prompt": row.get("prompt")},
                        "ms": row.get("caption_ms")})
    return {"prediction": prediction, "outputs": outputs, "versions": list(versions.values())}


def _v2_row(result: dict, source: str, session_id: str | None) -> dict:
    """The schema-2 row of a result without `outputs` (the recognizer before tasks), as its prediction_row made it."""
    labels = result.get("labels")
    timings = result.get("timings_ms") or {}
    models = result.get("models") or {}
    classifier, captioner = models.get("classifier") or {}, models.get("captioner") or {}
    return {
        "id": result["id"], "created_at": result["created_at"], "image_sha256": result["image"]["sha256"],
        "width": result["image"].get("width"), "height": result["image"].get("height"),
        "classifier": classifier.get("id"), "classifier_revision": classifier.get("revision"),
        "captioner": captioner.get("id"), "captioner_revision": captioner.get("revision"),
        "labels": None if labels is None else [item["label"] for item in labels],
        "scores": None if labels is None else [float(item["score"]) for item in labels],
        "caption": result.get("caption"), "prompt": result.get("prompt"),
        "intake_ms": timings.get("intake"), "classify_ms": timings.get("classify"),
        "caption_ms": timings.get("caption"), "total_ms": timings.get("total"), "cached": result.get("cached"),
        "source": source, "session_id": session_id, "image_file": result.get("image_file"),
        "classifier_precision": classifier.get("precision"), "captioner_precision": captioner.get("precision"),
    }
