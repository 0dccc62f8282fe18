"""The detect task on a tiny RT-DETR: boxes in the photo as the visitor sees it, threshold, registry, cache."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from PIL import Image, ImageDraw

from devtools.demo_server import EXAMPLES
from devtools.standins import TINY_DETECTOR_LABELS
from pipelines import settings, tasks
from pipelines.intake import Limits, load_image
from pipelines.recognizer import Recognizer
from pipelines.tasks import BadRequest, Request
from pipelines.tasks import detect as detect_module
from pipelines.tasks.detect import Detect, Detector, check_threshold

PHOTO = EXAMPLES / "cat.jpg"
CAT = TINY_DETECTOR_LABELS.index("cat")


@pytest.fixture(scope="module")
def detector(tiny_detector_dir) -> Detector:
    return Detector(tiny_detector_dir, device="cpu", threshold=0.5).load()


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _outputs(scores_boxes: list[tuple[int, float, list[float]]], queries: int = 20, labels: int = 5):
    """A model output with the given (label, score, relative cx-cy-w-h box) queries; every other query scores ~0."""
    logits = torch.full((1, queries, labels), -30.0)
    boxes = torch.full((1, queries, 4), 0.5)
    for i, (label, score, box) in enumerate(scores_boxes):
        logits[0, i, label] = _logit(score)
        boxes[0, i] = torch.tensor(box)
    return SimpleNamespace(logits=logits, pred_boxes=boxes)


def _bright_box(inputs: dict) -> SimpleNamespace:
    """An oracle in place of the model: one "cat" box around the bright pixels of the input it was given.

    The processor resizes the photo to the model's square input, so the box it finds is relative to the photo: the
    test then sees whether the task maps it back to the right pixels of the right frame.
    """
    pixels = inputs["pixel_values"][0].float().mean(0)  # the processor rescales to 0..1 and does not normalise
    height, width = pixels.shape
    ys, xs = torch.nonzero(pixels > 0.5, as_tuple=True)
    x0, x1 = xs.min().item() / width, (xs.max().item() + 1) / width
    y0, y1 = ys.min().item() / height, (ys.max().item() + 1) / height
    return _outputs([(CAT, 0.98, [(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0])])


def _photo(path, size: tuple[int, int], rect: tuple[int, int, int, int], orientation: int = 1):
    """A black JPEG with a white rectangle (x0, y0, x1, y1, end exclusive) where it is stored, and its orientation."""
    image = Image.new("RGB", size)
    ImageDraw.Draw(image).rectangle((rect[0], rect[1], rect[2] - 1, rect[3] - 1), fill="white")
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.save(path, exif=exif, quality=95)
    return path


def _assert_box(found: list[float], expected: list[float], frame: tuple[int, int]):
    # the oracle sees the photo at the model's 128 px input: a box edge is good to a couple of input pixels
    tolerance = [2.5 * side / 128 for side in (frame[0], frame[1], frame[0], frame[1])]
    assert all(abs(f - e) <= t for f, e, t in zip(found, expected, tolerance)), (found, expected)


# -- the model, loaded like the real ones ------------------------------------------------------------------------

def test_a_tiny_detector_loads_from_a_folder_and_boxes_lie_in_the_photo(detector, tiny_detector_dir):
    assert detector.version.startswith(f"{tiny_detector_dir}@local-")  # a folder: versioned by its files
    image = Image.open(PHOTO).convert("RGB")
    boxes = detector(image, threshold=0.0)  # random weights: every query, to see them all
    assert boxes and len(boxes) <= detect_module.MAX_BOXES
    scores = [b["score"] for b in boxes]
    assert scores == sorted(scores, reverse=True) and all(0.0 <= s <= 1.0 for s in scores)
    for b in boxes:
        assert b["label"] in TINY_DETECTOR_LABELS
        x0, y0, x1, y1 = b["box"]
        assert 0 <= x0 <= x1 <= image.width and 0 <= y0 <= y1 <= image.height
    json.dumps(boxes)  # the payload is logged as it is


# -- boxes where they can be right or wrong ----------------------------------------------------------------------

def test_known_outputs_come_back_in_pixels_of_the_frame_asked(detector):
    outputs = _outputs([(2, 0.9, [0.25, 0.5, 0.2, 0.4]), (CAT, 0.7, [0.9, 0.9, 0.4, 0.4])])
    boxes = detector.postprocess(outputs, 0.5, (1000, 500))
    assert [b["label"] for b in boxes] == ["car", "cat"]
    assert boxes[0]["box"] == [150.0, 150.0, 350.0, 350.0]  # centre (250, 250), 200 x 200
    assert boxes[1]["box"] == [700.0, 350.0, 1000.0, 500.0]  # reaches past the corner (1100, 550): clipped
    assert boxes[0]["score"] == pytest.approx(0.9)


@pytest.mark.parametrize("orientation, expected", [
    (1, [40, 60, 120, 180]),
    (6, [60, 40, 180, 120]),  # turned 90° clockwise to be seen: stored x becomes the visitor's y
    (8, [60, 280, 180, 360]),  # turned 90° counter-clockwise
])
def test_boxes_follow_exif_rotation_through_the_recognizer(detector, tmp_path, monkeypatch, orientation, expected):
    path = _photo(tmp_path / f"o{orientation}.jpg", (400, 240), (40, 60, 120, 180), orientation)
    monkeypatch.setattr(detector, "_forward", _bright_box)
    result = Recognizer({"detect": Detect(detector)}, Limits(), cache_size=0).recognize(path, tasks=["detect"])
    frame = (result["image"]["width"], result["image"]["height"])
    assert frame == ((400, 240) if orientation == 1 else (240, 400))
    (box,) = result["outputs"]["detect"]["boxes"]
    assert box["label"] == "cat"
    _assert_box(box["box"], expected, frame)


@pytest.mark.parametrize("orientation, expected", [
    (1, [800, 400, 1600, 1200]),
    (6, [1200, 800, 2000, 1600]),  # (x, y) stored -> (height - y, x) seen
])
def test_boxes_from_a_reduced_decode_come_back_in_the_full_size_photo(detector, tmp_path, monkeypatch,
                                                                     orientation, expected):
    path = _photo(tmp_path / "large.jpg", (3200, 2400), (800, 400, 1600, 1200), orientation)
    intake = load_image(path, Limits())
    frame = (intake.width, intake.height)
    assert frame == ((3200, 2400) if orientation == 1 else (2400, 3200))
    assert intake.image.width < intake.width  # intake decoded it reduced: the case under test
    monkeypatch.setattr(detector, "_forward", _bright_box)
    (box,) = Detect(detector)(intake.image, Request(size=frame), {})["boxes"]
    _assert_box(box["box"], expected, frame)
    # without the photo's size the boxes are in the reduced image's pixels: the frame is what makes them right
    (small,) = Detect(detector)(intake.image, Request(), {})["boxes"]
    assert small["box"][2] < 0.6 * box["box"][2]


def test_the_recognizer_gives_boxes_of_a_large_jpeg_in_the_full_size_photo(detector, tmp_path, monkeypatch):
    path = _photo(tmp_path / "large.jpg", (3200, 2400), (800, 400, 1600, 1200))
    monkeypatch.setattr(detector, "_forward", _bright_box)
    result = Recognizer({"detect": Detect(detector)}, Limits(), cache_size=0).recognize(path, tasks=["detect"])
    (box,) = result["outputs"]["detect"]["boxes"]
    _assert_box(box["box"], [800, 400, 1600, 1200], (3200, 2400))


# -- the threshold -----------------------------------------------------------------------------------------------

def _three(inputs):
    return _outputs([(0, 0.9, [0.5, 0.5, 0.2, 0.2]), (1, 0.6, [0.3, 0.3, 0.2, 0.2]), (2, 0.3, [0.7, 0.7, 0.2, 0.2])])


def test_the_threshold_setting_and_a_request_s_own(detector, monkeypatch):
    monkeypatch.setattr(detector, "_forward", _three)
    task, image = Detect(detector), Image.new("RGB", (100, 100))

    def labels(request: Request) -> list[str]:
        return [b["label"] for b in task(image, request, {})["boxes"]]

    assert labels(Request()) == ["person", "bicycle"]  # the setting: 0.5
    assert labels(Request(options={"detect": {"threshold": 0.2}})) == ["person", "bicycle", "car"]
    assert labels(Request(options={"detect": {"threshold": "0.75"}})) == ["person"]  # a number sent as text
    assert labels(Request(options={"detect": {"threshold": 1}})) == []
    assert labels(Request(options={"caption": {"threshold": 0.2}})) == ["person", "bicycle"]  # another task's
    assert task.params(Request(), {}) == (0.5,)
    assert task.params(Request(options={"detect": {"threshold": 0.2}}), {}) == (0.2,)


def test_at_most_max_boxes_come_back(detector, monkeypatch):
    monkeypatch.setattr(detect_module, "MAX_BOXES", 2)
    monkeypatch.setattr(detector, "_forward", _three)
    assert len(detector(Image.new("RGB", (100, 100)), threshold=0.0)) == 2


@pytest.mark.parametrize("bad", [-0.1, 1.5, "high", float("nan"), True, [0.5]])
def test_a_threshold_outside_0_to_1_is_refused_with_a_sentence(detector, bad):
    message = "The detection threshold must be a number from 0 to 1"
    with pytest.raises(ValueError, match=message):
        check_threshold(bad)
    with pytest.raises(ValueError, match=message):
        Detect(detector).params(Request(options={"detect": {"threshold": bad}}), {})
    with pytest.raises(ValueError, match=message):
        Detector("unused", threshold=bad)


# -- the registry, the settings and the recognizer ---------------------------------------------------------------

def test_the_registry_resolves_detect_and_builds_it_from_the_settings(tiny_detector_dir):
    assert tasks.resolve(["detect"]) == ("detect",)  # it needs no other task
    assert tasks.resolve(["detect", "classify"]) == ("classify", "detect")
    config = settings.Settings.defaults(detector=str(tiny_detector_dir), detect_threshold=0.25)
    task = tasks.build(config)["detect"]
    assert isinstance(task, Detect) and task.role == "detector" and task.name == "detect"
    assert task.model.model_id == str(tiny_detector_dir) and task.model.threshold == 0.25
    assert set(Detect.settings) <= set(settings.BY_NAME)
    assert not task.model.loaded  # built, not loaded: nothing is read until a photo asks for it


def test_the_default_detector_is_pinned_and_the_settings_name_it():
    default = settings.Settings.defaults()
    assert default.detector == detect_module.DEFAULT_DETECTOR and default.detect_threshold == 0.5
    assert Detect.default_model == f"{detect_module.DEFAULT_DETECTOR}@{detect_module.PINNED_REVISION}"
    assert len(detect_module.PINNED_REVISION) == 40
    built = tasks.build(default)["detect"].model
    assert built._asked_revision == detect_module.PINNED_REVISION  # loads the pinned commit, not main
    other = tasks.build(default.replace(detector="someone/else"))["detect"].model
    assert other._asked_revision is None  # a pin belongs to its model only
    assert detect_module.revision_for(detect_module.DEFAULT_DETECTOR, "v2") == "v2"  # the setting wins
    nano = "ustc-community/dfine-nano-coco"  # the lighter choice for a slower CPU is pinned too
    assert tasks.build(default.replace(detector=nano))["detect"].model._asked_revision == (
        "066438d3d8f0da137a37b38fdf3368fd4afceced")
    env = settings.from_env({"IMAGEREC_DETECTOR": "a/b", "IMAGEREC_DETECT_THRESHOLD": "0.3"})
    assert (env.detector, env.detect_threshold) == ("a/b", 0.3)
    assert settings.BY_NAME["detector"].cli and settings.BY_NAME["detector"].flag == "--detector"


def test_the_recognizer_runs_detect_and_caches_it_by_threshold(detector, monkeypatch):
    calls = []
    monkeypatch.setattr(detector, "_forward", lambda inputs: calls.append(1) or _three(inputs))
    recognizer = Recognizer({"detect": Detect(detector)}, Limits(), cache_size=16)
    first = recognizer.recognize(PHOTO, tasks=["detect"])
    payload = first["outputs"]["detect"]
    assert payload["model"] == detector.version and [b["label"] for b in payload["boxes"]] == ["person", "bicycle"]
    assert first["labels"] is None and first["caption"] is None and set(first["outputs"]) == {"detect"}
    assert recognizer.recognize(PHOTO, tasks=["detect"])["cached"] and len(calls) == 1
    # a request's own threshold: another cache entry, then served from it
    lower = {"detect": {"threshold": 0.2}}
    again = recognizer.recognize(PHOTO, tasks=["detect"], options=lower)
    assert not again["cached"] and len(again["outputs"]["detect"]["boxes"]) == 3 and len(calls) == 2
    assert recognizer.recognize(PHOTO, tasks=["detect"], options=lower)["cached"] and len(calls) == 2
    assert recognizer.recognize(PHOTO, tasks=["detect"])["cached"]  # the setting's threshold: the first entry
    with pytest.raises(BadRequest, match="threshold must be a number from 0 to 1"):
        recognizer.recognize(PHOTO, tasks=["detect"], options={"detect": {"threshold": 7}})
    assert len(calls) == 2


@pytest.mark.parametrize("mode", ["auto", "bf16", "int8"])
def test_every_precision_mode_runs_and_auto_keeps_a_detector_in_fp32(tiny_detector_dir, mode):
    model = Detector(tiny_detector_dir, device="cpu", precision=mode).load()
    assert model.precision == ("fp32" if mode == "auto" else mode)  # a convolutional detector: int8 gains nothing
    boxes = model(Image.new("RGB", (120, 90), "gray"), threshold=0.0)
    assert boxes and all(isinstance(b["score"], float) and len(b["box"]) == 4 for b in boxes)


def test_the_share_of_linear_work_is_measured_where_it_can_be_and_else_taken_as_convolutional(tmp_path):
    from devtools.standins import detector_config

    shares = {}
    for name in ("rtdetr_r18vd", "dfine_s_coco"):
        folder = tmp_path / name
        detector_config(name).save_pretrained(folder)  # the config alone: the share is counted on the meta device
        shares[name] = Detector(folder)._linear_share(str(folder), {})
    assert 0.05 < shares["rtdetr_r18vd"] < 0.5  # measured: its ResNet does most of the work
    assert shares["dfine_s_coco"] == 0.0  # D-FINE cannot run on the meta device: fp32 on auto, not int8
