"""The task interface: what one task declares, and how the recognizer runs it on a decoded photo."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Hashable, Mapping

from PIL import Image

from pipelines.models import LazyModel


class BadRequest(ValueError):
    """A request a task cannot run, with one sentence saying why."""


class UnknownTask(BadRequest):
    """A request named a task that does not exist."""


@dataclass(frozen=True)
class Request:
    """What a caller asked of one photo, beyond the photo: the task parameters a face may pass."""

    prompt: str | None = None  # caption: the start of the caption (BLIP conditional captioning)
    top_k: int | None = None  # classify: how many labels; None means the setting
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # task name -> its options
    # The photo's (width, height) as the visitor sees it (intake's width and height): the image handed to the tasks
    # may be a reduced decode of it, and a task that answers in pixels (detect's boxes) answers in this frame.
    size: tuple[int, int] | None = None

    def of(self, task: str) -> Mapping[str, Any]:
        """The options given for one task (empty when none)."""
        return self.options.get(task) or {}

    def frame(self, image: Image.Image) -> tuple[int, int]:
        """The (width, height) of the photo as the visitor sees it: size when given, else the image's own."""
        return tuple(self.size) if self.size else image.size


class Task:
    """One thing learnt from a photo, on one model: preprocess -> _forward -> postprocess, a plain-dict payload.

    A subclass declares its name, the model role it runs on (models are shared: explain runs on the classifier),
    the tasks whose payloads it reads, its default model with the pinned revision, the settings it reads and the
    fields of its payload. The recognizer adds "model" (the version) to every payload; the log stores it as is.
    """

    name: ClassVar[str]
    role: ClassVar[str]  # "classifier" or "captioner": the model it runs on
    needs: ClassVar[tuple[str, ...]] = ()  # tasks that run first, whose payloads this one reads
    default_model: ClassVar[str]  # the model a fresh install runs, id@pinned revision
    settings: ClassVar[tuple[str, ...]] = ()  # names of pipelines.settings it reads
    output: ClassVar[dict[str, str]] = {}  # payload field -> what it holds

    def __init__(self, model: LazyModel):
        self.model = model

    def check(self, request: Request) -> None:
        """Raise ValueError with a sentence when the request's options for this task cannot be run (before intake)."""

    def params(self, request: Request, done: Mapping[str, dict]) -> Hashable:
        """What besides the photo and the model version changes the payload: part of the cache key."""
        return ()

    def __call__(self, image: Image.Image, request: Request, done: Mapping[str, dict]) -> dict[str, Any]:
        """The payload for an upright RGB-or-other image; done holds the payloads of the tasks it needs."""
        raise NotImplementedError

    def batch(self, images: list[Image.Image], requests: list[Request],
              done: list[Mapping[str, dict]]) -> list[dict[str, Any]]:
        """The payloads of many photos, each with its request (the same options, each photo's own size) and the
        payloads it has so far; a task whose model takes true batches overrides it, the rest go one at a time."""
        return [self(image, request, seen) for image, request, seen in zip(images, requests, done)]

    @property
    def precision(self) -> str | None:
        """The precision it computes in (the model's, unless the task says otherwise)."""
        return self.model.precision
