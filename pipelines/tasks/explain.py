"""Explain: a Grad-CAM heatmap of the pixels that drove the classifier's top label, over the whole photo."""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass
from typing import Hashable, Mapping

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from pipelines.tasks.base import Request, Task
from pipelines.tasks.classify import Classify, readable_labels

GRID_SIZE = 32  # cells on the photo's long side: a log row stays a few KB, and a 7x7 or 14x14 CAM loses nothing
_CANVAS = 8  # canvas pixels a grid cell is averaged from, so the crop's edge falls between cells, not on them


@dataclass(frozen=True)
class Target:
    """Where Grad-CAM looks: a module, and for a ViT the token layout that turns its output into a grid."""

    name: str
    module: nn.Module
    kind: str  # "conv" (a 4-D feature map) or "tokens" (prefix tokens then patch tokens)
    prefix: int = 0
    grid: tuple[int, int] = (0, 0)


class _TokenGrid(nn.Module):
    """Patch tokens (B, prefix + h*w, D) as a feature map (B, D, h, w), so Grad-CAM sees channels and space."""

    def __init__(self, prefix: int, grid: tuple[int, int]):
        super().__init__()
        self.prefix, self.grid = prefix, grid

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, _, dim = tokens.shape
        return tokens[:, self.prefix:].transpose(1, 2).reshape(batch, dim, *self.grid)


def _first_tensor(output) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


def find_target(model: nn.Module, pixel_values: torch.Tensor) -> Target:
    """The layer to explain: a ViT's last encoder block's input norm, else the last convolutional block.

    Found from one traced forward pass, so any Hugging Face *ForImageClassification model works without a table of
    architectures. For a ViT the last block's output cannot be used: the head reads only the CLS token after it,
    so its patch tokens get zero gradient; the last block's input norm (as pytorch-grad-cam's ViT recipe uses) is
    the last place where patch tokens still reach the label.
    """
    done: list[tuple[str, nn.Module, tuple]] = []  # modules in the order their forward finished
    names = {id(m): n for n, m in model.named_modules()}
    hooks = [m.register_forward_hook(lambda mod, _in, out: done.append(
        (names[id(mod)], mod, tuple(t.shape) if (t := _first_tensor(out)) is not None else ())))
        for n, m in model.named_modules() if n]
    try:
        with torch.inference_mode():
            model(pixel_values=pixel_values)
    finally:
        for hook in hooks:
            hook.remove()
    patch = getattr(model.config, "patch_size", None)
    height, width = pixel_values.shape[-2:]
    last_conv = last_tokens = -1
    for i, (name, mod, shape) in enumerate(done):
        has_conv = any(isinstance(m, nn.Conv2d) for m in mod.modules())
        if len(shape) == 4 and shape[-1] > 1 and shape[-2] > 1 and has_conv:
            last_conv = i
        parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
        if isinstance(parent, nn.ModuleList) and len(shape) == 3 and isinstance(patch, int):
            last_tokens = i
    if last_tokens > last_conv:
        block_name, block, shape = done[last_tokens]
        grid = (height // patch, width // patch)
        prefix = shape[1] - grid[0] * grid[1]
        norms = [n for n, m, s in done if n.startswith(block_name + ".") and isinstance(m, nn.LayerNorm)]
        if prefix < 0 or not norms:
            raise ValueError(f"cannot explain {type(model).__name__}: its last block {block_name} has no "
                             "input norm or its tokens do not form a patch grid.")
        return Target(norms[0], model.get_submodule(norms[0]), "tokens", prefix, grid)
    if last_conv < 0:
        raise ValueError(f"cannot explain {type(model).__name__}: it has neither a convolutional feature map nor "
                         "a ViT-style token encoder.")
    name, mod, _ = done[last_conv]
    return Target(name, mod, "conv")


def crop_box(processor, width: int, height: int) -> tuple[float, float, float, float]:
    """The part of a width x height photo the processor shows the model, (left, top, right, bottom) in photo pixels.

    Follows the processor's own size arithmetic (transformers' get_resize_output_image_size and center_crop), so
    the model input's pixel (x, y) maps back to the photo exactly.
    """
    from transformers.image_transforms import get_resize_output_image_size

    rh, rw = height, width
    if getattr(processor, "do_resize", True):
        size = processor.size
        if getattr(size, "shortest_edge", None) and not getattr(size, "longest_edge", None):
            shape = np.broadcast_to(np.zeros((), np.uint8), (3, height, width))  # only its shape is read
            rh, rw = get_resize_output_image_size(shape, size.shortest_edge, default_to_square=False,
                                                  input_data_format="channels_first")
        elif getattr(size, "height", None) and getattr(size, "width", None):
            rh, rw = size.height, size.width
        else:
            raise ValueError(f"cannot map {type(processor).__name__}'s resize {dict(size)} back to the photo.")
    if getattr(processor, "do_center_crop", False):
        ch, cw = processor.crop_size.height, processor.crop_size.width
        top, left = (rh - ch) // 2, (rw - cw) // 2  # negative where the processor pads instead
    else:
        ch, cw, top, left = rh, rw, 0, 0
    sx, sy = width / rw, height / rh
    return (left * sx, top * sy, (left + cw) * sx, (top + ch) * sy)


def grid_shape(width: int, height: int, grid_size: int = GRID_SIZE) -> tuple[int, int]:
    """(rows, cols) with grid_size cells on the photo's long side and the photo's aspect."""
    if width >= height:
        return max(1, round(grid_size * height / width)), grid_size
    return grid_size, max(1, round(grid_size * width / height))


def to_photo_grid(cam: torch.Tensor, box: tuple[float, float, float, float], size: tuple[int, int],
                  grid: tuple[int, int]) -> torch.Tensor:
    """cam (h, w) over the model's view, placed at box in a size=(width, height) photo, averaged to grid cells.

    Pixels the model never saw (outside the centre crop) get 0: they cannot have driven its answer.
    """
    width, height = size
    rows, cols = grid
    left, top, right, bottom = box
    xs = (torch.arange(cols * _CANVAS, dtype=torch.float32) + 0.5) * (width / (cols * _CANVAS))
    ys = (torch.arange(rows * _CANVAS, dtype=torch.float32) + 0.5) * (height / (rows * _CANVAS))
    gx = 2 * (xs - left) / (right - left) - 1  # grid_sample's [-1, 1] spans the model's view
    gy = 2 * (ys - top) / (bottom - top) - 1
    sample = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)[None]
    canvas = F.grid_sample(cam[None, None].float(), sample, mode="bilinear", padding_mode="zeros",
                           align_corners=False)
    return F.adaptive_avg_pool2d(canvas, (rows, cols))[0, 0]


class Explain:
    """Grad-CAM (captum's LayerGradCam) for the classifier's top-1 label, as a small heatmap over the whole photo.

    The model must have gradients: the int8 fast path (quantised linears) has none and bf16 ones are coarse, so
    explanations always run on a float32 copy of the weights (from_classifier makes one).
    """

    name = "explain"
    default_model = "the classifier's own model"  # it explains the classifier's answer with the classifier itself
    settings = {"grid_size": GRID_SIZE}
    output = {"label": "str: the top-1 label explained",
              "heatmap": "list[list[float]] in [0, 1], rows top to bottom, over the whole photo as given",
              "grid": "[rows, cols]: the heatmap's shape, at most grid_size a side, the photo's aspect"}

    def __init__(self, model: nn.Module, processor, grid_size: int = GRID_SIZE, labels: list[str] | None = None):
        if grid_size < 1:
            raise ValueError(f"grid_size must be at least 1, got {grid_size}")
        self.model = model.float().eval()
        for param in self.model.parameters():
            param.requires_grad_(False)  # Grad-CAM needs the activations' gradients, never the weights'
        self.processor = processor
        self.grid_size = grid_size
        config = model.config
        self.labels = labels or readable_labels([str(config.id2label[i]) for i in range(config.num_labels)])
        self._device = next(model.parameters()).device
        self._target: Target | None = None
        self._lock = threading.Lock()  # captum hooks the model's modules: one explanation at a time

    @classmethod
    def from_classifier(cls, classifier, grid_size: int = GRID_SIZE) -> Explain:
        """An Explain over a loaded pipelines.tasks.classify.Classifier's model, as a float32 copy of its weights."""
        from pipelines.models import precision as prec
        from pipelines.tasks.classify import Classifier

        classifier.load()
        if classifier.precision == prec.FP32:
            model = copy.deepcopy(classifier.model)  # a copy: captum's hooks must never fire in a classify call
        else:  # int8 or bf16: load the exact fp32 weights again, from the same folder or hub commit
            revision = None if (classifier.revision or "").startswith("local") else classifier.revision
            twin = Classifier(classifier.model_id, revision=revision, device=str(classifier.device),
                              precision=prec.FP32).load()
            model = twin.model
        return cls(model, classifier.processor, grid_size=grid_size, labels=classifier.labels)

    def __call__(self, image: Image.Image, label: str | None = None) -> dict:
        """{"label", "heatmap", "grid"} for image (upright, as the visitor sees it).

        label: the label to explain, e.g. the top-1 the (int8) classifier showed, so the page explains what it
        said and no extra forward pass is run; None explains this float model's own top-1.
        """
        return self.postprocess(self._forward(self.preprocess(image, label)), image.size)

    def preprocess(self, image: Image.Image, label: str | None = None) -> dict:
        """The model input, where it lies in the photo, and the class to explain (None: the top-1)."""
        if label is not None and label not in self.labels:
            raise ValueError(f"cannot explain {label!r}: the classifier has no such label.")
        if image.mode != "RGB":
            image = image.convert("RGB")
        pixels = self.processor(images=image, return_tensors="pt")["pixel_values"]
        return {"pixel_values": pixels.to(self._device, torch.float32),
                "box": crop_box(self.processor, *image.size),
                "index": None if label is None else self.labels.index(label)}

    def _forward(self, inputs: dict) -> dict:
        """Top-1 class and its Grad-CAM over the model input, (h, w) at the input's resolution."""
        from captum.attr import LayerAttribution, LayerGradCam

        with self._lock, torch.inference_mode(False), torch.enable_grad():
            pixels = inputs["pixel_values"].clone()  # a caller's inference-mode tensor cannot enter autograd
            if self._target is None:
                self._target = find_target(self.model, pixels)
            target = self._target
            index = inputs.get("index")
            if index is None:
                with torch.no_grad():
                    index = int(self.model(pixel_values=pixels).logits[0].argmax())
            forward = lambda x: self.model(pixel_values=x).logits  # noqa: E731
            if target.kind == "conv":
                cam = LayerGradCam(forward, target.module).attribute(pixels, target=index, relu_attributions=True)
            else:
                grid = _TokenGrid(target.prefix, target.grid)
                hook = target.module.register_forward_hook(lambda _m, _i, out: torch.cat(
                    [out[:, :target.prefix], grid(out).flatten(2).transpose(1, 2)], dim=1))
                try:
                    cam = LayerGradCam(forward, grid).attribute(pixels, target=index, relu_attributions=True)
                finally:
                    hook.remove()
            cam = LayerAttribution.interpolate(cam.detach(), tuple(pixels.shape[-2:]), "bilinear")
        return {"index": index, "cam": cam[0, 0].clamp(min=0).cpu(), "box": inputs["box"]}

    def postprocess(self, raw: dict, size: tuple[int, int]) -> dict:
        """The payload: the label explained and the heatmap over a size=(width, height) photo, scaled to [0, 1]."""
        grid = grid_shape(*size, self.grid_size)
        heat = to_photo_grid(raw["cam"], raw["box"], size, grid)
        peak = float(heat.max())
        heat = heat / peak if peak > 0 else torch.zeros_like(heat)  # no positive evidence: nothing to show
        return {"label": self.labels[raw["index"]],
                "heatmap": [[round(v, 4) for v in row] for row in heat.clamp(0, 1).tolist()],
                "grid": [grid[0], grid[1]]}


class ExplainTask(Task):
    """Why the classifier said its top label: a Grad-CAM heatmap over the photo, on a float copy of its weights."""

    name = "explain"
    role = "classifier"  # the classifier's answer, explained with the classifier itself: no model of its own
    needs = ("classify",)
    default_model = Classify.default_model
    settings = ("classifier", "classifier_revision", "device")
    output = {"label": Explain.output["label"], "heatmap": Explain.output["heatmap"], "grid": Explain.output["grid"]}

    def __init__(self, model, grid_size: int = GRID_SIZE):
        super().__init__(model)
        self.grid_size = grid_size
        self._explain: Explain | None = None
        self._explain_for: object = None  # the loaded classifier it was copied from (a reload makes a new one)
        self._lock = threading.Lock()

    def params(self, request: Request, done: Mapping[str, dict]) -> Hashable:
        return (self.grid_size, _top_label(done))

    def __call__(self, image: Image.Image, request: Request, done: Mapping[str, dict]) -> dict:
        # the label the page showed: an int8 classifier's top-1 is explained, not the float copy's own
        return self.explainer()(image, label=_top_label(done))

    def explainer(self) -> Explain:
        """The float copy of the classifier's model with captum's Grad-CAM, made on first use."""
        with self._lock:
            if self._explain is None or self._explain_for is not self.model.model:
                self._explain = Explain.from_classifier(self.model, grid_size=self.grid_size)
                self._explain_for = self.model.model
            return self._explain

    @property
    def precision(self) -> str | None:
        return "fp32" if self.model.loaded else None  # always a float32 copy: int8 weights have no gradients


def _top_label(done: Mapping[str, dict]) -> str | None:
    labels = done.get("classify", {}).get("labels") or []
    return labels[0]["label"] if labels else None


def overlay(photo: Image.Image, heatmap: list[list[float]], alpha: float = 0.5, longest: int = 640) -> Image.Image:
    """The photo with the heatmap over it in a colour map (bright: what drove the label), at most `longest` px."""
    from matplotlib import colormaps

    base = photo.convert("RGB")
    base.thumbnail((longest, longest))
    grid = np.asarray(heatmap, dtype=np.float32)
    heat = Image.fromarray(grid).resize(base.size, Image.Resampling.BILINEAR)  # mode F: floats stay floats
    colours = colormaps["inferno"](np.clip(np.asarray(heat), 0.0, 1.0))[..., :3]
    tinted = Image.fromarray((colours * 255).astype(np.uint8), "RGB")
    return Image.blend(base, tinted, alpha)
