"""Both models on one image: one plain result with labels, caption, timings and provenance."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from datetime import datetime
from typing import Any, Callable, Hashable, Iterable, Iterator

from pipelines.tasks.caption import Captioner
from pipelines.tasks.classify import Classifier
from pipelines.log.eventlog import new_id, utcnow
from pipelines.intake import Limits, load_image
from pipelines.log.privacy import ImageStore


class LRUCache:
    """A small thread-safe least-recently-used cache."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key]

    def put(self, key: Hashable, value: Any) -> None:
        if self.capacity <= 0:
            return
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def discard(self, drop: Callable[[Hashable], bool]) -> int:
        """Remove every entry whose key drop() accepts; returns how many."""
        with self._lock:
            doomed = [key for key in self._items if drop(key)]
            for key in doomed:
                del self._items[key]
        return len(doomed)


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 3)


class Recognizer:
    """Intake, classify, caption; the same image again is answered from the cache."""

    def __init__(self, classifier: Classifier, captioner: Captioner, limits: Limits = Limits(),
                 top_k: int = 5, cache_size: int = 256, store: ImageStore | None = None):
        self.classifier = classifier
        self.store = store  # keeps a metadata-free copy of each image, only when the operator opts in
        self.captioner = captioner
        self.limits = limits
        self.top_k = top_k
        self._labels = LRUCache(cache_size)
        self._captions = LRUCache(cache_size)

    def models(self) -> dict:
        """Ids and revisions of both models."""
        return {
            role: {"id": model.model_id, "revision": model.revision, "precision": getattr(model, "precision", None)}
            for role, model in (("classifier", self.classifier), ("captioner", self.captioner))
        }

    def steps(self, source: Any, prompt: str | None = None, top_k: int | None = None) -> Iterator[dict]:
        """Yield the result twice: first with labels (caption None), then complete."""
        started = time.perf_counter()
        prompt = (prompt or "").strip() or None
        top_k = top_k or self.top_k

        t = time.perf_counter()
        intake = load_image(source, self.limits)
        timings = {"intake": _ms(t)}

        labels, timings["classify"], labels_cached = self._cached(
            self._labels, (intake.sha256, top_k), lambda: self.classifier(intake.image, top_k=top_k))
        result = {
            "id": new_id(),
            "created_at": utcnow().isoformat(),
            "labels": labels,
            "caption": None,
            "prompt": prompt,
            "timings_ms": timings,
            "models": self.models(),
            "image": {"sha256": intake.sha256, "width": intake.width, "height": intake.height},
            "cached": labels_cached,
            "image_file": self.store.save(intake.image) if self.store else None,
        }
        yield result

        caption, timings["caption"], caption_cached = self._cached(
            self._captions, (intake.sha256, prompt, self.captioner.max_new_tokens),
            lambda: self.captioner(intake.image, prompt=prompt))
        timings["total"] = _ms(started)
        yield {**result, "caption": caption, "cached": labels_cached and caption_cached}

    def forget(self, hashes: Iterable[str]) -> int:
        """Drop the cached answers for the images with these sha256 hashes; returns how many entries went."""
        hashes = set(hashes)
        if not hashes:
            return 0
        return sum(cache.discard(lambda key: key[0] in hashes) for cache in (self._labels, self._captions))

    def recognize(self, source: Any, prompt: str | None = None, top_k: int | None = None) -> dict:
        """The complete result for one image."""
        *_, result = self.steps(source, prompt=prompt, top_k=top_k)
        return result

    @staticmethod
    def _cached(cache: LRUCache, key: Hashable, compute: Callable[[], Any]) -> tuple[Any, float, bool]:
        t = time.perf_counter()
        value = cache.get(key)
        if value is not None:
            return value, _ms(t), True
        value = compute()
        cache.put(key, value)
        return value, _ms(t), False


def prediction_row(result: dict, source: str, session_id: str | None = None) -> dict:
    """The log's `predictions` row for a recognizer result."""
    labels = result["labels"]
    timings = result["timings_ms"]
    models = result["models"]
    return {
        "id": result["id"],
        "created_at": datetime.fromisoformat(result["created_at"]),
        "image_sha256": result["image"]["sha256"],
        "width": result["image"]["width"],
        "height": result["image"]["height"],
        "classifier": models["classifier"]["id"],
        "classifier_revision": models["classifier"]["revision"],
        "captioner": models["captioner"]["id"],
        "captioner_revision": models["captioner"]["revision"],
        "labels": [item["label"] for item in labels],
        "scores": [float(item["score"]) for item in labels],
        "top1_label": labels[0]["label"] if labels else None,
        "top1_score": float(labels[0]["score"]) if labels else None,
        "caption": result["caption"],
        "prompt": result["prompt"],
        "intake_ms": timings.get("intake"),
        "classify_ms": timings.get("classify"),
        "caption_ms": timings.get("caption"),
        "total_ms": timings.get("total"),
        "cached": result["cached"],
        "source": source,
        "session_id": session_id,
        "image_file": result.get("image_file"),
        "classifier_precision": models["classifier"].get("precision"),
        "captioner_precision": models["captioner"].get("precision"),
    }
