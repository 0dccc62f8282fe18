"""Image classification with any Hugging Face image-classification model: preprocess -> _forward -> postprocess."""

from __future__ import annotations

import os
from collections import Counter
from typing import Hashable, Mapping

import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification

from pipelines.models import LazyModel, defaults, precision as prec, version_of
from pipelines.models.compiled import Compilable
from pipelines.tasks.base import Request, Task


def _short_name(label: str) -> str:
    return label.split(",")[0].replace("_", " ").strip()


def _full_name(label: str) -> str:
    return label.replace("_", " ").strip()


def readable_labels(names: list[str]) -> list[str]:
    """Short unique names: "tabby, tabby cat" -> "tabby"; clashing short names keep the full name, then the id."""
    short = [_short_name(n) for n in names]
    clashes = Counter(short)
    result = [s if clashes[s] == 1 and s else _full_name(n) for s, n in zip(short, names)]
    # ImageNet's two "crane" are identical even in full, so only the id can tell them apart. A leading
    # "background" output (TF-slim MobileNets: 1001 outputs) is no class of the dataset: ids count from the class
    # after it, so the same class gets the same name, "crane (134)", in models with and without it.
    first = 1 if names and names[0].strip().lower() == "background" else 0
    clashes = Counter(result)
    return [r if clashes[r] == 1 and r else f"{r} ({i - first})".lstrip() for i, r in enumerate(result)]


class _Logits(torch.nn.Module):
    """An image classifier as pixel values -> logits, the form a compiled package takes."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits


class Classifier(Compilable, LazyModel):
    """An image classifier returning [{"label", "score"}] sorted by score."""

    role = "classifier"
    setting_env = "IMAGEREC_CLASSIFIER"
    setting_flag = "--classifier"

    def __init__(self, model: str | os.PathLike, revision: str | None = None,
                 device: str = "auto", top_k: int = 5, precision: str = prec.FP32):
        super().__init__(model, revision, device, precision)
        self.top_k = top_k
        self.processor = None
        self.model = None
        self._labels: list[str] = []
        self._multi_label = False
        self._input_dtype = torch.float32

    def _load_components(self, source: str, pretrained_kwargs: dict) -> None:
        model = self._load_with_processor(AutoModelForImageClassification, AutoImageProcessor,
                                          source, pretrained_kwargs)
        config = model.config
        self._labels = readable_labels([str(config.id2label[i]) for i in range(config.num_labels)])
        self._multi_label = config.problem_type == "multi_label_classification" or config.num_labels == 1

    def _linear_share(self, source: str, pretrained_kwargs: dict) -> float | None:
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(source, **pretrained_kwargs)
            with torch.device("meta"):  # shapes only: nothing is allocated or computed
                model = AutoModelForImageClassification.from_config(config).eval()
                size = getattr(config, "image_size", 224)
                height, width = (size, size) if isinstance(size, int) else tuple(size)[:2]
                pixels = torch.empty(1, getattr(config, "num_channels", 3), height, width)
            return prec.linear_share(model, {"pixel_values": pixels})
        except Exception:  # an architecture that will not run on the meta device: int8 as before
            return None

    @property
    def labels(self) -> list[str]:
        """The model's readable labels in id order (loads the model)."""
        self.load()
        return list(self._labels)

    def __call__(self, image: Image.Image, top_k: int | None = None) -> list[dict]:
        """The top_k labels for image with their probabilities, best first."""
        self.load()
        top_k = self.top_k if top_k is None else top_k
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        return self.postprocess(self._forward(self.preprocess(image)), top_k)

    def batch(self, images: list[Image.Image], top_k: int | None = None) -> list[list[dict]]:
        """The top_k labels of each image, in one forward pass over them all."""
        self.load()
        top_k = self.top_k if top_k is None else top_k
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        logits = self._forward(self.preprocess(images), rows=slice(None))
        return [self.postprocess(row, top_k) for row in logits]

    def preprocess(self, image: Image.Image | list[Image.Image]) -> dict[str, torch.Tensor]:
        # RGBA, palette and greyscale images would break the channel count
        rgb = [im if im.mode == "RGB" else im.convert("RGB") for im in (image if isinstance(image, list) else [image])]
        inputs = self.processor(images=rgb if isinstance(image, list) else rgb[0], return_tensors="pt")
        return self._on_device(inputs)

    def _forward(self, inputs: dict[str, torch.Tensor], rows: int | slice = 0) -> torch.Tensor:
        # inference_mode is per thread and the model is only read, so concurrent calls are safe
        with torch.inference_mode():
            return self._encode(inputs["pixel_values"])[rows].float().cpu()

    def _uncompiled(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits

    def _encoder_module(self) -> torch.nn.Module:
        return _Logits(self._fresh_fp32(AutoModelForImageClassification))

    def postprocess(self, logits: torch.Tensor, top_k: int) -> list[dict]:
        scores = torch.sigmoid(logits) if self._multi_label else torch.softmax(logits, dim=-1)
        values, indices = torch.topk(scores, min(top_k, scores.numel()))
        return [{"label": self._labels[i], "score": float(v)} for v, i in zip(values.tolist(), indices.tolist())]


class Classify(Task):
    """The top-k labels of the photo with their probabilities."""

    name = "classify"
    role = "classifier"
    default_model = version_of(defaults.DEFAULT_CLASSIFIER, defaults.PINNED_REVISIONS[defaults.DEFAULT_CLASSIFIER])
    settings = ("classifier", "classifier_revision", "top_k", "precision", "device")
    output = {"labels": "list of {label, score}, best first, top_k long"}

    def params(self, request: Request, done: Mapping[str, dict]) -> Hashable:
        return (request.top_k or self.model.top_k,)

    def __call__(self, image: Image.Image, request: Request, done: Mapping[str, dict]) -> dict:
        return {"labels": self.model(image, top_k=request.top_k or self.model.top_k)}

    def batch(self, images: list[Image.Image], requests: list[Request], done: list[Mapping[str, dict]]) -> list[dict]:
        top_k = requests[0].top_k or self.model.top_k  # one job, one set of options: only the sizes differ
        return [{"labels": labels} for labels in self.model.batch(images, top_k=top_k)]
