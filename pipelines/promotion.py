"""Which classifier serves: promote a model (version) into the running recognizer, register it, roll back."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from .log.eventlog import EventLog
from .models import ModelLoadError, is_local_folder
from .recognizer import Recognizer
from .tasks.classify import Classifier


class PromotionError(ValueError):
    """A promotion or rollback that cannot be done; the message says why in one sentence."""


def training_record(model: str) -> dict:
    """What train.py wrote beside a model folder (base, data fingerprint, params, evaluation, history), or {}."""
    folder = Path(model)
    record = {}
    if is_local_folder(model) and (folder / "training.json").is_file():
        record = json.loads((folder / "training.json").read_text())
    if is_local_folder(model) and (folder / "evaluation.json").is_file():
        record["evaluation"] = json.loads((folder / "evaluation.json").read_text())  # the latest evaluate
    if is_local_folder(model) and (folder / "history.json").is_file():
        record["history"] = json.loads((folder / "history.json").read_text())  # per-epoch losses, for the dashboard
    return record


def register(log: EventLog, model: Classifier) -> str:
    """Record a loaded classifier's version in the log with its training record; returns the version."""
    record = training_record(model.model_id)
    params = record.get("params")
    if params is not None:
        params = params | {"labels": record.get("labels"), "split_sizes": record.get("split_sizes")}
    if record.get("history") is not None:
        params = (params or {}) | {"history": record["history"]}
    log.register_version(model.version, model.model_id, model.revision, base=record.get("base_name"),
                         data_fingerprint=record.get("data_fingerprint"), params=params,
                         evaluation=record.get("evaluation"))
    return model.version


class Promoter:
    """Swaps the classifier every classifier task runs on, without a restart; keeps the earlier ones for rollback."""

    def __init__(self, recognizer: Recognizer, log: EventLog):
        self.recognizer = recognizer
        self.log = log
        self.earlier: list[Classifier] = []  # newest last
        self._lock = threading.Lock()

    def promote(self, model: str) -> dict:
        """Load model (a folder or hub id), register it and serve it; the answer names the old and new versions."""
        model = (model or "").strip()
        if not model:
            raise PromotionError("Name the model to promote: a trained model folder or a hub id.")
        current = self.recognizer.classifier
        new = Classifier(model, device=current._device_name, top_k=getattr(current, "top_k", 5),
                         precision=current.asked_precision)
        try:
            new.load()  # before the swap: a model that cannot serve never replaces one that can
        except ModelLoadError as exc:
            raise PromotionError(f"Not promoted: {exc}") from None
        register(self.log, new)
        with self._lock:
            old = self._swap(new)
            self.earlier.append(old)
        return {"serving": new.version, "previous": old.version}

    def rollback(self) -> dict:
        """Serve the classifier that served before the last promotion."""
        with self._lock:
            if not self.earlier:
                raise PromotionError("Nothing to roll back to: no model was promoted since the server started.")
            old = self.earlier.pop()
            replaced = self._swap(old)
        return {"serving": old.version, "previous": replaced.version}

    def _swap(self, new: Classifier) -> Classifier:
        # every task on the classifier role (classify, explain) moves together; answers cached under the old
        # version stay cached under it: the cache key holds the version, so none is served for the new one
        old = self.recognizer.classifier
        for task in self.recognizer.tasks.values():
            if task.role == "classifier":
                task.model = new
        return old
