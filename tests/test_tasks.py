"""The task registry and the recognizer loop on tiny models: one intake, the asked tasks, each versioned and cached."""

from __future__ import annotations

import shutil

import pytest
import torch
from PIL import Image

from devtools.demo_server import EXAMPLES
from pipelines import tasks
from pipelines.intake import Limits
from pipelines.models import version_of
from pipelines.recognizer import Recognizer
from pipelines.tasks import Caption, Captioner, Classifier, Classify, ExplainTask, Request
from pipelines.tasks.explain import overlay

PHOTO = EXAMPLES / "cat.jpg"


def _recognizer(classifier_dir, captioner_dir, precision: str = "fp32", cache_size: int = 16) -> Recognizer:
    classifier = Classifier(classifier_dir, device="cpu", top_k=3, precision=precision)
    captioner = Captioner(captioner_dir, device="cpu", max_new_tokens=5)
    return Recognizer({"classify": Classify(classifier), "caption": Caption(captioner),
                       "explain": ExplainTask(classifier)}, Limits(), cache_size=cache_size)


@pytest.fixture(scope="module")
def recognizer(tiny_classifier_dir, tiny_captioner_dir) -> Recognizer:
    return _recognizer(tiny_classifier_dir, tiny_captioner_dir)


def test_the_registry_resolves_names_with_what_they_need_in_run_order():
    assert tasks.resolve(None) == tasks.resolve([]) == ("classify", "caption")  # no tasks named: as before
    assert tasks.resolve(["caption"]) == ("caption",)
    assert tasks.resolve(["explain"]) == ("classify", "explain")  # explain reads the classifier's top label
    assert tasks.resolve(["explain", "caption", "classify"]) == ("classify", "caption", "explain")
    with pytest.raises(tasks.UnknownTask, match="no task 'segment'.*classify, zero_shot, detect, caption, explain"):
        tasks.resolve(["classify", "segment"])


def test_every_task_declares_its_name_model_settings_and_output():
    from pipelines.settings import BY_NAME

    for name, task in tasks.REGISTRY.items():
        assert task.name == name
        assert task.role in ("classifier", "captioner", "detector", "zero_shot")
        assert "@" in task.default_model  # pinned: a fresh install gets the same weights
        assert task.output and all(isinstance(v, str) for v in task.output.values())
        assert set(task.settings) <= set(BY_NAME), f"{name} reads settings that do not exist"
        assert set(task.needs) <= set(tasks.REGISTRY)


def test_the_default_request_runs_classify_and_caption_with_their_versions(recognizer):
    result = recognizer.recognize(PHOTO)
    assert set(result["outputs"]) == {"classify", "caption"}
    classify, caption = result["outputs"]["classify"], result["outputs"]["caption"]
    assert classify["labels"] == result["labels"] and len(result["labels"]) == 3
    assert caption["caption"] == result["caption"] and caption["prompt"] is None
    classifier, captioner = recognizer.classifier, recognizer.captioner
    assert classify["model"] == version_of(classifier.model_id, classifier.revision)
    assert classify["model"].startswith(str(classifier.model_id) + "@local-")  # a folder: a hash of its files
    assert caption["model"] == captioner.version != classify["model"]
    assert set(result["timings_ms"]) == {"intake", "classify", "caption", "total"}
    assert result["pending"] == []


def test_steps_yield_labels_before_the_caption(recognizer):
    steps = recognizer.steps(PHOTO, prompt="a picture of", tasks=None)
    first = next(steps)
    assert first["labels"] and first["caption"] is None and first["pending"] == ["caption"]
    last = next(steps)
    assert last["caption"] is not None and last["pending"] == [] and last["prompt"] == "a picture of"
    assert last["outputs"]["caption"]["prompt"] == "a picture of"
    with pytest.raises(StopIteration):
        next(steps)


def test_a_task_not_asked_is_null_and_its_model_never_loads(tiny_classifier_dir, tiny_captioner_dir):
    fresh = _recognizer(tiny_classifier_dir, tiny_captioner_dir)
    result = fresh.recognize(PHOTO, tasks=["caption"])
    assert result["labels"] is None and result["caption"]
    assert set(result["outputs"]) == {"caption"}
    assert not fresh.classifier.loaded  # nothing asked of it: no load, no memory


def test_a_bad_task_name_is_refused_before_the_photo_is_read(recognizer, tmp_path):
    missing = tmp_path / "never-read.jpg"  # does not exist: intake would fail first if it ran first
    with pytest.raises(tasks.UnknownTask):
        recognizer.recognize(missing, tasks=["zero-shot"])


def test_each_task_is_cached_by_photo_task_version_and_parameters(tiny_classifier_dir, tiny_captioner_dir):
    fresh = _recognizer(tiny_classifier_dir, tiny_captioner_dir)
    first = fresh.recognize(PHOTO)
    assert not first["cached"] and not any(run["cached"] for run in first["runs"].values())
    again = fresh.recognize(PHOTO)
    assert again["cached"] and again["outputs"] == first["outputs"]
    prompted = fresh.recognize(PHOTO, prompt="a photography of")
    assert prompted["runs"]["classify"]["cached"]  # the labels do not depend on the prompt
    assert not prompted["runs"]["caption"]["cached"]  # the caption does
    fewer = fresh.recognize(PHOTO, top_k=2)
    assert not fewer["runs"]["classify"]["cached"] and len(fewer["labels"]) == 2
    assert fresh.forget([first["image"]["sha256"]]) == 4  # every task's entries for that photo go
    assert not fresh.recognize(PHOTO)["cached"]


def test_two_folders_with_different_weights_are_two_versions(tiny_classifier_dir, tmp_path):
    tuned = tmp_path / "tuned"
    shutil.copytree(tiny_classifier_dir, tuned)
    model = Classifier(tuned, device="cpu").load().model
    with torch.no_grad():
        model.classifier.bias.add_(1.0)  # a "fine-tune": the same config and files, other weights
    model.save_pretrained(tuned)
    a = Classifier(tiny_classifier_dir, device="cpu").load()
    b = Classifier(tuned, device="cpu").load()
    assert a.revision.startswith("local-") and b.revision.startswith("local-")
    assert a.version != b.version


def test_explain_heatmaps_the_shown_label_over_the_whole_upright_photo(recognizer, tmp_path):
    wide = tmp_path / "wide.jpg"
    Image.open(PHOTO).convert("RGB").resize((320, 160)).save(wide)
    result = recognizer.recognize(wide, tasks=["explain"])
    assert set(result["outputs"]) == {"classify", "explain"} and result["caption"] is None
    payload = result["outputs"]["explain"]
    assert payload["label"] == result["labels"][0]["label"]
    assert payload["model"] == result["outputs"]["classify"]["model"]  # the classifier, explained by itself
    heat = payload["heatmap"]
    rows, cols = len(heat), len(heat[0])
    assert [rows, cols] == payload["grid"] and cols == 2 * rows  # the photo's aspect: 2:1
    assert all(len(row) == cols for row in heat)
    values = [v for row in heat for v in row]
    assert min(values) >= 0.0 and max(values) <= 1.0 and max(values) > 0.0
    assert result["runs"]["explain"]["precision"] == "fp32"


def test_explain_follows_exif_rotation(recognizer, tmp_path):
    sideways = tmp_path / "sideways.jpg"
    image = Image.open(PHOTO).convert("RGB").resize((300, 150))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated 90°: the visitor sees it portrait
    image.save(sideways, exif=exif)
    payload = recognizer.recognize(sideways, tasks=["explain"])["outputs"]["explain"]
    rows, cols = payload["grid"]
    assert rows == 2 * cols  # covers the photo as the visitor sees it: tall


def test_explain_on_the_int8_path_runs_on_float_weights(tiny_classifier_dir, tiny_captioner_dir):
    quick = _recognizer(tiny_classifier_dir, tiny_captioner_dir, precision="int8")
    result = quick.recognize(PHOTO, tasks=["explain"])
    assert result["runs"]["classify"]["precision"] == "int8"
    assert result["runs"]["explain"]["precision"] == "fp32"
    assert result["outputs"]["explain"]["label"] == result["labels"][0]["label"]  # what the page showed


def test_the_overlay_puts_the_heat_where_the_grid_says(tmp_path):
    grey = Image.new("RGB", (400, 200), (128, 128, 128))
    drawn = overlay(grey, [[0.0, 1.0]], alpha=0.5)
    assert drawn.size == (400, 200)
    left, right = drawn.getpixel((20, 100)), drawn.getpixel((380, 100))
    assert sum(right) > sum(left) + 100  # the hot right half is brighter than the cold left half


def test_a_task_payload_is_what_the_task_returned_plus_its_model(recognizer):
    image = Image.open(PHOTO)
    direct = recognizer.tasks["classify"](image, Request(top_k=3), {})
    result = recognizer.recognize(PHOTO)
    payload = dict(result["outputs"]["classify"])
    assert payload.pop("model") and payload == direct


def test_options_must_name_tasks_and_be_dicts_before_the_photo_is_read(recognizer, tmp_path):
    missing = tmp_path / "never-read.jpg"
    for options, sentence in (({"nope": {}}, "no task 'nope'"), ("threshold=0.3", "dict from task names"),
                              ({"classify": 3}, "options of classify must be a dict")):
        with pytest.raises(tasks.BadRequest, match=sentence):
            recognizer.recognize(missing, options=options)
    # options for a task that exists but was not asked are carried and ignored
    assert recognizer.recognize(PHOTO, tasks=["classify"], options={"caption": {}})["labels"]
