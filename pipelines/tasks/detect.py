"""Object detection with any Hugging Face object-detection model: boxes in the photo as the visitor sees it."""

from __future__ import annotations

import math
import os
from typing import Any, Hashable, Mapping

import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForObjectDetection

from pipelines.models import LazyModel, precision as prec, version_of
from pipelines.tasks.base import Request, Task

# D-FINE small (Apache-2.0): 48.5 COCO AP, 10 M parameters, about 0.5 s a photo on 2 CPU threads here; faster and
# more accurate than RT-DETR and RT-DETRv2 r18, 5.7 AP above D-FINE nano for 2.4 times its time (bench/detect.py).
DEFAULT_DETECTOR = "ustc-community/dfine-small-coco"
# Each repository's main head, as its hub tree page shows it (f79e65b, 066438d) and other projects pin it in full;
# nano's is "Fix weights (#1)", which replaced its first weights. Here until the task's pins join models.defaults.
PINNED_REVISIONS = {
    "ustc-community/dfine-small-coco": "f79e65b5fbb33ceb9d3ebba042955d7410c608f8",
    "ustc-community/dfine-nano-coco": "066438d3d8f0da137a37b38fdf3368fd4afceced",  # for a slower CPU
}
PINNED_REVISION = PINNED_REVISIONS[DEFAULT_DETECTOR]
DEFAULT_THRESHOLD = 0.5
# A DETR-style model scores every query: at threshold 0 that is 300 boxes. COCO's evaluation keeps 100 per image.
MAX_BOXES = 100


def revision_for(model: str, revision: str | None = None) -> str | None:
    """The revision to load: the one asked for, else the pin of a pinned detector, else None (the hub's main)."""
    return revision or PINNED_REVISIONS.get(str(model))


def check_threshold(value: Any) -> float:
    """The threshold as a float in [0, 1], or ValueError with one sentence a person understands."""
    try:
        number = float(value) if not isinstance(value, bool) else math.nan  # True is no threshold
    except (TypeError, ValueError):
        number = math.nan
    if not 0.0 <= number <= 1.0:  # NaN fails this too
        raise ValueError(f"The detection threshold must be a number from 0 to 1, not {value!r}.")
    return number


class Detector(LazyModel):
    """An object detector returning [{"label", "score", "box": [x0, y0, x1, y1]}] sorted by score."""

    role = "detector"
    setting_env = "IMAGEREC_DETECTOR"
    setting_flag = "--detector"

    def __init__(self, model: str | os.PathLike, revision: str | None = None, device: str = "auto",
                 threshold: float = DEFAULT_THRESHOLD, precision: str = prec.FP32):
        super().__init__(model, revision, device, precision)
        self.threshold = check_threshold(threshold)
        self.processor = None
        self.model = None
        self._labels: dict[int, str] = {}
        self._input_dtype = torch.float32

    def _load_components(self, source: str, pretrained_kwargs: dict) -> None:
        model = self._load_with_processor(AutoModelForObjectDetection, AutoImageProcessor, source, pretrained_kwargs)
        self._labels = {int(i): str(name) for i, name in model.config.id2label.items()}

    @property
    def labels(self) -> list[str]:
        """The classes the detector knows, in id order (loads the model)."""
        self.load()
        return [self._labels[i] for i in sorted(self._labels)]

    def _linear_share(self, source: str, pretrained_kwargs: dict) -> float | None:
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(source, **pretrained_kwargs)
            with torch.device("meta"):  # shapes only: nothing is allocated or computed
                model = AutoModelForObjectDetection.from_config(config).eval()
                pixels = torch.empty(1, 3, 640, 640)
            return prec.linear_share(model, {"pixel_values": pixels})
        except Exception:
            # D-FINE and RT-DETRv2 read tensor values while they run, which the meta device cannot. Their work is in
            # convolutions (RT-DETR r18: 16% in linear layers), and int8 boxes were never measured: keep fp32 on auto.
            return 0.0

    def __call__(self, image: Image.Image, threshold: float | None = None,
                 size: tuple[int, int] | None = None) -> list[dict]:
        """The boxes scoring above threshold, best first, in pixels of a frame of size (width, height).

        size: the photo as the visitor sees it when image is a reduced copy of it; None: image's own size.
        """
        self.load()
        threshold = self.threshold if threshold is None else check_threshold(threshold)
        return self.postprocess(self._forward(self.preprocess(image)), threshold, size or image.size)

    def preprocess(self, image: Image.Image) -> dict[str, torch.Tensor]:
        if image.mode != "RGB":
            image = image.convert("RGB")  # RGBA, palette and greyscale images would break the channel count
        inputs = self.processor(images=image, return_tensors="pt")
        return self._on_device(inputs)

    def _forward(self, inputs: dict[str, torch.Tensor]):
        """The model's raw output (logits, pred_boxes as centre, width, height relative to the image), in fp32."""
        with torch.inference_mode():
            out = self.model(**inputs)
        out.logits, out.pred_boxes = out.logits.float().cpu(), out.pred_boxes.float().cpu()
        return out

    def postprocess(self, outputs, threshold: float, size: tuple[int, int]) -> list[dict]:
        """Boxes in a width x height frame: the model's boxes are relative to the image, so any uniform scale of it
        (intake's reduced decode) maps back by scaling the relative box to the photo's own size."""
        width, height = size
        found = self.processor.post_process_object_detection(outputs, threshold=threshold,
                                                             target_sizes=[(height, width)])[0]
        boxes = []
        for score, label, box in zip(found["scores"].tolist(), found["labels"].tolist(), found["boxes"].tolist()):
            x0, y0, x1, y1 = box
            # a box may reach past the photo's edge (its centre is inside, its size is not bounded): clip it
            box = [round(min(max(v, 0.0), limit), 1) for v, limit in ((x0, width), (y0, height), (x1, width),
                                                                        (y1, height))]
            boxes.append({"label": self._labels.get(int(label), f"class {label}"), "score": float(score), "box": box})
        boxes.sort(key=lambda b: b["score"], reverse=True)
        return boxes[:MAX_BOXES]


class Detect(Task):
    """The objects in the photo: a label, a score and a box each, in pixels of the photo as the visitor sees it."""

    name = "detect"
    role = "detector"
    default_model = version_of(DEFAULT_DETECTOR, PINNED_REVISION)
    settings = ("detector", "detector_revision", "detect_threshold", "precision", "device")
    output = {"boxes": "list of {label, score, box: [x0, y0, x1, y1]} in pixels of the upright photo, best first, "
                       f"scores above the threshold, at most {MAX_BOXES}"}

    def threshold(self, request: Request) -> float:
        """The request's threshold (options["detect"]["threshold"]), else the setting's; ValueError if not 0..1."""
        asked = request.of(self.name).get("threshold")
        return self.model.threshold if asked is None else check_threshold(asked)

    def check(self, request: Request) -> None:
        self.threshold(request)

    def params(self, request: Request, done: Mapping[str, dict]) -> Hashable:
        return (self.threshold(request),)

    def __call__(self, image: Image.Image, request: Request, done: Mapping[str, dict]) -> dict:
        return {"boxes": self.model(image, threshold=self.threshold(request), size=request.frame(image))}
