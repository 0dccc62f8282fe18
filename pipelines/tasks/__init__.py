"""Tasks run on one photo, each a preprocess -> _forward -> postprocess with a plain-dict payload; the registry."""

from __future__ import annotations

from typing import Iterable

from pipelines.tasks import detect
from pipelines.tasks.base import BadRequest, Request, Task, UnknownTask
from pipelines.tasks.caption import Caption, Captioner
from pipelines.tasks.classify import Classifier, Classify
from pipelines.tasks.detect import Detect, Detector
from pipelines.tasks.explain import ExplainTask
from pipelines.tasks.zero_shot import ZeroShot, ZeroShotClassifier

# In the order they run: a task after the ones it needs, the quick ones first so the page shows each answer while the
# slower are computed: labels, the visitor's own labels, objects, the caption, and the heatmap (a backward pass).
REGISTRY: dict[str, type[Task]] = {task.name: task
                                   for task in (Classify, ZeroShot, Detect, Caption, ExplainTask)}
DEFAULT_TASKS: tuple[str, ...] = ("classify", "caption")  # a request that names none: as before tasks existed

__all__ = ["REGISTRY", "DEFAULT_TASKS", "BadRequest", "Request", "Task", "UnknownTask", "resolve", "build"]


def resolve(names: Iterable[str] | None) -> tuple[str, ...]:
    """The tasks to run for the names asked, with the tasks they need, in run order; none asked: the defaults."""
    asked = [str(n).strip() for n in (names or ()) if str(n).strip()]
    unknown = [n for n in asked if n not in REGISTRY]
    if unknown:
        raise UnknownTask(f"There is no task {unknown[0]!r}; the tasks are {', '.join(REGISTRY)}.")
    wanted = set(asked or DEFAULT_TASKS)
    for name in list(wanted):
        wanted.update(REGISTRY[name].needs)
    return tuple(n for n in REGISTRY if n in wanted)


def build(config) -> dict[str, Task]:
    """Every registered task over models made from the settings (not loaded yet); tasks share a role's model."""
    models = {
        "classifier": Classifier(config.classifier, revision=config.classifier_revision or None,
                                 device=config.device, top_k=config.top_k, precision=config.precision),
        "captioner": Captioner(config.captioner, revision=config.captioner_revision or None, device=config.device,
                               max_new_tokens=config.caption_max_tokens, precision=config.precision),
        "detector": Detector(config.detector, revision=detect.revision_for(config.detector, config.detector_revision),
                             device=config.device, threshold=config.detect_threshold, precision=config.precision),
        "zero_shot": ZeroShotClassifier(config.zero_shot_model, revision=config.zero_shot_model_revision or None,
                                        device=config.device, precision=config.precision,
                                        labels=config.zero_shot_labels),
    }
    return {name: task(models[task.role]) for name, task in REGISTRY.items()}
