"""Intake once, then the asked tasks over the same decoded photo: one plain result, each task timed and cached."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import OrderedDict
from typing import Any, Callable, Hashable, Iterable, Iterator, Mapping, Sequence

from pipelines import tasks as registry
from pipelines.intake import Limits, load_image
from pipelines.log.eventlog import new_id, utcnow
from pipelines.log.privacy import ImageStore
from pipelines.models import LazyModel
from pipelines.tasks import Request, Task


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
    """Intake, then the asked tasks in order; the same photo, task, model version and parameters come from the cache."""

    def __init__(self, tasks: dict[str, Task], limits: Limits = Limits(), cache_size: int = 256,
                 store: ImageStore | None = None):
        self.tasks = tasks
        self.limits = limits
        self.store = store  # keeps a metadata-free copy of each image, only when the operator opts in
        self._cache = LRUCache(cache_size)

    @property
    def model_roles(self) -> dict[str, LazyModel]:
        """Each model the tasks run on, by role (tasks share them: explain runs on the classifier)."""
        return {task.role: task.model for task in self.tasks.values()}

    @property
    def classifier(self) -> LazyModel:
        return self.model_roles["classifier"]

    @property
    def captioner(self) -> LazyModel:
        return self.model_roles["captioner"]

    def models(self) -> dict:
        """Id, revision, precision and version of each model, by role."""
        return {role: {"id": model.model_id, "revision": model.revision, "precision": model.precision,
                       "version": model.version}
                for role, model in self.model_roles.items()}

    def steps(self, source: Any, prompt: str | None = None, tasks: Sequence[str] | None = None,
              top_k: int | None = None, options: Mapping[str, Mapping] | None = None) -> Iterator[dict]:
        """Yield the result after each task: "pending" names the tasks still to run, none in the last one.

        options: per task name, that task's options (e.g. {"detect": {"threshold": 0.3}}).
        """
        started = time.perf_counter()
        names = registry.resolve(tasks)  # before intake: a bad request costs no decoding
        request = Request(prompt=(prompt or "").strip() or None, top_k=top_k, options=_options(options))
        for name in names:
            try:
                self.tasks[name].check(request)
            except ValueError as exc:  # check() only reads the request: its ValueError is a request it cannot run
                raise registry.BadRequest(str(exc)) from None

        t = time.perf_counter()
        intake = load_image(source, self.limits)
        # tasks that answer in pixels answer in the photo the visitor sees, not in a reduced decode of it
        request = dataclasses.replace(request, size=(intake.width, intake.height))
        outputs: dict[str, dict] = {}
        result = {
            "id": new_id(),
            "created_at": utcnow().isoformat(),
            "labels": None,
            "caption": None,
            "prompt": request.prompt,
            "timings_ms": {"intake": _ms(t)},
            "models": {},
            "image": {"sha256": intake.sha256, "width": intake.width, "height": intake.height},
            "cached": True,
            "image_file": self.store.save(intake.image) if self.store else None,
            "outputs": outputs,
            "runs": {},
            "photo": intake.image,  # for a face to draw on (an explanation over the photo); never logged or sent
        }
        for i, name in enumerate(names):
            task = self.tasks[name]
            payload, run = self._run(task, intake.sha256, intake.image, request, outputs)
            outputs[name] = payload
            result["runs"][name] = run
            result["timings_ms"][name] = run["ms"]
            result["cached"] = result["cached"] and run["cached"]
            result["labels"] = outputs["classify"]["labels"] if "classify" in outputs else None
            result["caption"] = outputs["caption"]["caption"] if "caption" in outputs else None
            result["models"] = self.models()
            result["pending"] = list(names[i + 1:])
            if result["pending"]:
                yield {**result, "outputs": dict(outputs), "runs": dict(result["runs"]),
                       "timings_ms": dict(result["timings_ms"])}
        result["timings_ms"]["total"] = _ms(started)
        yield result

    def _run(self, task: Task, sha256: str, image, request: Request, done: dict) -> tuple[dict, dict]:
        """A task's payload (with its model version) and how it ran, from the cache when it has it."""
        t = time.perf_counter()
        task.model.load()  # its version is part of the key; a failed load raises with the reason
        version = task.model.version
        key = (sha256, task.name, version, task.params(request, done))
        payload = self._cache.get(key)
        cached = payload is not None
        if not cached:
            payload = {"model": version, **task(image, request, done)}
            self._cache.put(key, payload)
        run = {"model": version, "model_id": task.model.model_id, "revision": task.model.revision,
               "precision": task.precision, "ms": _ms(t), "cached": cached}
        return payload, run

    def forget(self, hashes: Iterable[str]) -> int:
        """Drop the cached answers for the images with these sha256 hashes; returns how many entries went."""
        hashes = set(hashes)
        if not hashes:
            return 0
        return self._cache.discard(lambda key: key[0] in hashes)

    def recognize(self, source: Any, prompt: str | None = None, tasks: Sequence[str] | None = None,
                  top_k: int | None = None, options: Mapping[str, Mapping] | None = None) -> dict:
        """The complete result for one image."""
        *_, result = self.steps(source, prompt=prompt, tasks=tasks, top_k=top_k, options=options)
        return result


def _options(options: Any) -> dict[str, Mapping]:
    """Per-task options as given by a caller, checked for shape: a dict from task names to dicts."""
    if not options:
        return {}
    if not isinstance(options, Mapping):
        raise registry.BadRequest("The options must be a dict from task names to their options, "
                                  "e.g. {\"detect\": {\"threshold\": 0.3}}.")
    for name, value in options.items():
        if name not in registry.REGISTRY:
            raise registry.UnknownTask(f"There is no task {name!r}; the tasks are {', '.join(registry.REGISTRY)}.")
        if value is not None and not isinstance(value, Mapping):
            raise registry.BadRequest(f"The options of {name} must be a dict, not {type(value).__name__}.")
    return {name: value or {} for name, value in options.items()}
