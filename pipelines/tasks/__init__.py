"""Tasks run on one photo, each a preprocess -> _forward -> postprocess with a plain-dict payload; the registry."""

from __future__ import annotations

from typing import Iterable

from pipelines.tasks.base import Request, Task, UnknownTask
from pipelines.tasks.caption import Caption, Captioner
from pipelines.tasks.classify import Classifier, Classify
from pipelines.tasks.explain import ExplainTask
from pipelines.tasks.zero_shot import ZeroShot, ZeroShotClassifier

# In the order they run: a task after the ones it needs, the quick classifier first so the page shows labels while
# the caption is written, the optional explanation (a backward pass), then the visitor's own labels (appended, so the
# order of the tasks before is as it was).
REGISTRY: dict[str, type[Task]] = {task.name: task for task in (Classify, Caption, ExplainTask, ZeroShot)}
DEFAULT_TASKS: tuple[str, ...] = ("classify", "caption")  # a request that names none: as before tasks existed

__all__ = ["REGISTRY", "DEFAULT_TASKS", "Request", "Task", "UnknownTask", "resolve", "build"]


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
        "zero_shot": ZeroShotClassifier(config.zero_shot_model, revision=config.zero_shot_model_revision or None,
                                        device=config.device, precision=config.precision,
                                        labels=config.zero_shot_labels),
    }
    return {name: task(models[task.role]) for name, task in REGISTRY.items()}
