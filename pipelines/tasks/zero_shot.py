"""Zero-shot classification with the visitor's own labels on any CLIP, SigLIP or SigLIP 2 model."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Any, Hashable, Iterable, Mapping

import torch
from PIL import Image
from transformers import AutoModelForZeroShotImageClassification, AutoProcessor

from pipelines.models import LazyModel, precision as prec, version_of
from pipelines.tasks.base import Request, Task

MAX_LABELS = 50  # a new set costs a text pass per label (SigLIP: 64 tokens each): 50 bounds that first wait
MAX_LABEL_CHARS = 100  # CLIP reads 77 tokens; a longer label would be cut short without saying so
# transformers' zero-shot-image-classification pipeline's default, so scores match the pipeline's
DEFAULT_TEMPLATE = "This is a photo of {}."
SIGLIP_TEXT_LENGTH = 64  # the pipeline pads SigLIP text to 64 tokens: the length the models were trained on
TEXT_CACHE_SIZE = 32  # label sets whose text embeddings are kept

# The default model and its pinned hub commit. SigLIP 2 B/32 at 256: 74.0% zero-shot ImageNet against 63.3% for CLIP
# B/32 and 78.2% for SigLIP 2 B/16, Apache-2.0 (CLIP's weights carry no licence and its card puts deployed use out of
# scope), and its image tower costs a third of the default classifier's where B/16's costs as much
# (`python -m bench.zero_shot` times them on stand-ins).
DEFAULT_ZERO_SHOT = "google/siglip2-base-patch32-256"
PINNED_REVISION: str | None = "94dffa8cb1179de3e03f091dbc3917e5d5a9ae84"


def revision_for(model: str, revision: str | None = None) -> str | None:
    """The revision to load: the one asked for, else the pin when model is the default, else None (main)."""
    return revision or (PINNED_REVISION if model == DEFAULT_ZERO_SHOT else None)


def parse_labels(value: Any, source: str = "labels") -> tuple[str, ...]:
    """The labels asked for: a list of strings or one comma-separated string, trimmed and de-duplicated."""
    if value is None:
        return ()
    if isinstance(value, str):
        items: Iterable[Any] = value.split(",")
    elif isinstance(value, (list, tuple)):
        items = value
    else:
        raise ValueError(f"The {source} must be a list of strings or one comma-separated string, "
                         f"not {type(value).__name__}.")
    labels: dict[str, str] = {}  # casefolded -> first spelling: "Cat" and "cat" are one label
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"Each of the {source} must be a string; {item!r} is {type(item).__name__}.")
        label = " ".join(item.split())
        if len(label) > MAX_LABEL_CHARS:
            raise ValueError(f"A label may have at most {MAX_LABEL_CHARS} characters; "
                             f"{label[:40]!r}… in the {source} has {len(label)}.")
        if label:
            labels.setdefault(label.casefold(), label)
    if len(labels) > MAX_LABELS:
        raise ValueError(f"At most {MAX_LABELS} labels can be scored at once; the {source} give {len(labels)}.")
    return tuple(labels.values())


class ZeroShotClassifier(LazyModel):
    """A CLIP-style image-text model scoring an image against labels it was never trained on; text embeddings cached."""

    role = "zero_shot"
    setting_env = "IMAGEREC_ZERO_SHOT_MODEL"
    setting_flag = "--zero-shot-model"

    def __init__(self, model: str | os.PathLike, revision: str | None = None, device: str = "auto",
                 precision: str = prec.FP32, labels: Any = (), template: str = DEFAULT_TEMPLATE,
                 cache_size: int = TEXT_CACHE_SIZE):
        super().__init__(model, revision_for(str(model), revision), device, precision)
        self.labels = parse_labels(labels, "setting zero_shot_labels")  # the operator's set, used when none is asked
        if "{}" not in template:
            raise ValueError(f"The hypothesis template must hold {{}} where the label goes; got {template!r}.")
        self.template = template
        self.processor = None
        self.model = None
        self._input_dtype = torch.float32
        self._sigmoid = False
        self._cache_size = cache_size
        self._text: OrderedDict[tuple, torch.Tensor] = OrderedDict()  # (template, labels) -> normalised embeddings
        self._text_lock = threading.Lock()
        self._tokenizer_lock = threading.Lock()  # a fast tokenizer keeps padding state per call: not thread-safe

    def _load_components(self, source: str, pretrained_kwargs: dict) -> None:
        model = self._load_with_processor(AutoModelForZeroShotImageClassification, AutoProcessor,
                                          source, pretrained_kwargs)
        _float_attention_outputs(model)
        # as the pipeline decides: SigLIP and SigLIP 2 were trained with a sigmoid per label, CLIP with a softmax
        self._sigmoid = "siglip" in model.config.model_type
        with self._text_lock:
            self._text.clear()

    @property
    def cacheable(self) -> bool:
        """Whether text and image sides can be computed apart (CLIP-style towers with a learnt scale)."""
        self.load()
        return all(hasattr(self.model, name) for name in ("get_text_features", "get_image_features", "logit_scale"))

    def __call__(self, image: Image.Image, labels: Iterable[str]) -> list[dict]:
        """[{"label", "score"}] for each label, best first."""
        self.load()
        labels = tuple(labels)
        if not labels:
            raise ValueError("There are no labels to score the photo against.")
        return self.postprocess(self._forward(self.preprocess(image), labels), labels)

    def preprocess(self, image: Image.Image) -> dict[str, torch.Tensor]:
        if image.mode != "RGB":
            image = image.convert("RGB")  # RGBA, palette and greyscale images would break the channel count
        inputs = self.processor.image_processor(images=[image], return_tensors="pt")
        return self._on_device(inputs)

    def _tokens(self, labels: tuple[str, ...]) -> dict[str, torch.Tensor]:
        sequences = [self.template.format(label) for label in labels]
        kwargs: dict[str, Any] = {"padding": True, "truncation": True}
        if self._sigmoid:
            kwargs.update(padding="max_length", max_length=SIGLIP_TEXT_LENGTH)  # as the pipeline pads SigLIP
        else:
            kwargs["max_length"] = getattr(self.model.config.text_config, "max_position_embeddings", 77)
        with self._tokenizer_lock:
            inputs = self.processor.tokenizer(sequences, return_tensors="pt", **kwargs)
        return self._on_device(inputs)

    def text_embeddings(self, labels: tuple[str, ...]) -> torch.Tensor:
        """The labels' normalised text embeddings under the template, from the cache when the set was seen."""
        key = (self.template, labels)
        with self._text_lock:
            if key in self._text:
                self._text.move_to_end(key)
                return self._text[key]
        with torch.inference_mode():
            embeds = _pooled(self.model.get_text_features(**self._tokens(labels)))
        embeds = embeds / embeds.norm(p=2, dim=-1, keepdim=True)
        with self._text_lock:
            self._text[key] = embeds
            self._text.move_to_end(key)
            while len(self._text) > self._cache_size:
                self._text.popitem(last=False)
        return embeds

    def _forward(self, inputs: dict[str, torch.Tensor], labels: tuple[str, ...]) -> torch.Tensor:
        """The image's logit for each label, computed as the model's own forward does."""
        if not self.cacheable:  # another architecture: the whole model on text and image each time
            with torch.inference_mode():
                return self.model(**self._tokens(labels), **inputs).logits_per_image[0].float().cpu()
        text = self.text_embeddings(labels)
        with torch.inference_mode():
            image = _pooled(self.model.get_image_features(**inputs))
            image = image / image.norm(p=2, dim=-1, keepdim=True)
            logits = text @ image.t() * self.model.logit_scale.exp()
            bias = getattr(self.model, "logit_bias", None)
            if bias is not None:
                logits = logits + bias
        return logits[:, 0].float().cpu()

    def postprocess(self, logits: torch.Tensor, labels: tuple[str, ...]) -> list[dict]:
        scores = torch.sigmoid(logits) if self._sigmoid else torch.softmax(logits, dim=-1)
        ranked = sorted(zip(scores.tolist(), labels), key=lambda pair: -pair[0])  # stable: ties keep the asked order
        return [{"label": label, "score": float(score)} for score, label in ranked]

    def cached_label_sets(self) -> list[tuple[str, ...]]:
        """The label sets whose text embeddings are cached, least recently used first."""
        with self._text_lock:
            return [labels for _, labels in self._text]


def _float_attention_outputs(model: torch.nn.Module) -> None:
    """Give each nn.MultiheadAttention a float output projection again where int8 quantised it, in place.

    int8 replaces every nn.Linear, but nn.MultiheadAttention (SigLIP's pooling head) reads out_proj.weight itself
    rather than calling the layer, so an Int8Linear there breaks the forward pass. One small layer per model: its
    dequantised int8 weights stand in for the original ones (the exact ones are gone once quantised).
    """
    for module in model.modules():
        if isinstance(module, torch.nn.MultiheadAttention) and not isinstance(module.out_proj, torch.nn.Linear):
            weight, bias = torch.ops.quantized.linear_unpack(module.out_proj._packed)
            linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
            with torch.no_grad():
                linear.weight.copy_(weight.dequantize())
                if bias is not None:
                    linear.bias.copy_(bias)
            module.out_proj = linear.eval()


def _pooled(output) -> torch.Tensor:
    # transformers 5 returns the projected embeddings as pooler_output of a model output; 4.x returned the tensor
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class ZeroShot(Task):
    """The photo scored against labels the visitor (or the operator) names, one score per label."""

    name = "zero_shot"
    role = "zero_shot"
    default_model = version_of(DEFAULT_ZERO_SHOT, PINNED_REVISION)
    settings = ("zero_shot_model", "zero_shot_model_revision", "zero_shot_labels", "precision", "device")
    output = {"labels": "list of {label, score}, best first, one per label asked",
              "label_set": "the labels as asked, in the order asked"}

    def labels(self, request: Request) -> tuple[str, ...]:
        """The request's labels, else the operator's; a clear ValueError when there are none or they are bad."""
        labels = parse_labels(request.of(self.name).get("labels"), "zero_shot labels") or self.model.labels
        if not labels:
            raise ValueError('Zero-shot classification needs labels: give them with the request (zero_shot '
                             '{"labels": ["a forklift", "a pallet"]}) or set zero_shot_labels.')
        return labels

    def check(self, request: Request) -> None:
        self.labels(request)

    def params(self, request: Request, done: Mapping[str, dict]) -> Hashable:
        return (self.labels(request), self.model.template)

    def __call__(self, image: Image.Image, request: Request, done: Mapping[str, dict]) -> dict:
        labels = self.labels(request)
        return {"labels": self.model(image, labels), "label_set": list(labels)}
