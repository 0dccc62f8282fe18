"""The zero_shot task on tiny random CLIP and SigLIP models: scores as transformers' pipeline gives them, labels, cache."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from devtools.demo_server import EXAMPLES
from pipelines import settings, tasks
from pipelines.intake import Limits
from pipelines.recognizer import Recognizer
from pipelines.tasks import BadRequest, Request
from pipelines.tasks.zero_shot import (DEFAULT_TEMPLATE, DEFAULT_ZERO_SHOT, MAX_LABEL_CHARS, MAX_LABELS,
                                       PINNED_REVISION, ZeroShot, ZeroShotClassifier, parse_labels)

PHOTOS = [EXAMPLES / name for name in ("cat.jpg", "coffee.jpg", "rocket.jpg")]
LABELS = ("a cat", "a dog on the grass", "a cup of coffee", "a red bus", "two people at a table")


def _model(folder, **kwargs) -> ZeroShotClassifier:
    return ZeroShotClassifier(folder, device="cpu", precision=kwargs.pop("precision", "fp32"), **kwargs).load()


@pytest.fixture(scope="module", params=["clip", "siglip"])
def kind_and_model(request, tiny_clip_dir, tiny_siglip_dir):
    folder = tiny_clip_dir if request.param == "clip" else tiny_siglip_dir
    return request.param, folder, _model(folder)


class _Calls:
    """Counts forward passes of a module with a hook."""

    def __init__(self, module: torch.nn.Module):
        self.count = 0
        self._handle = module.register_forward_hook(self._hook)

    def _hook(self, *_):
        self.count += 1

    def take(self) -> int:
        count, self.count = self.count, 0
        return count


def test_scores_match_transformers_own_zero_shot_pipeline(kind_and_model):
    from transformers import pipeline

    kind, folder, model = kind_and_model
    reference = pipeline("zero-shot-image-classification", model=str(folder), device="cpu")
    for path in PHOTOS:
        image = Image.open(path)
        ours = model(image, LABELS)
        theirs = reference(image.convert("RGB"), candidate_labels=list(LABELS))  # its default template, as ours
        assert [r["label"] for r in ours] == [r["label"] for r in theirs]
        assert [r["score"] for r in ours] == pytest.approx([r["score"] for r in theirs], abs=1e-5)
        scores = [r["score"] for r in ours]
        assert max(scores) - min(scores) > 1e-3  # the scores differ, so matching them says something


def test_clip_scores_are_a_softmax_over_the_labels_and_siglip_a_sigmoid_each(kind_and_model):
    kind, _, model = kind_and_model
    image = Image.open(PHOTOS[0])
    scores = {r["label"]: r["score"] for r in model(image, LABELS)}
    alone = model(image, LABELS[:1])[0]["score"]
    if kind == "clip":
        assert sum(scores.values()) == pytest.approx(1.0, abs=1e-5)
        assert alone == pytest.approx(1.0)  # a softmax over one label
    else:
        assert sum(scores.values()) != pytest.approx(1.0, abs=1e-2)  # independent per label: no need to sum to one
        assert alone == pytest.approx(scores[LABELS[0]], abs=1e-6)  # the other labels do not change its score


def test_one_score_per_label_asked_best_first(kind_and_model):
    _, _, model = kind_and_model
    result = model(Image.open(PHOTOS[1]), LABELS)
    assert sorted(r["label"] for r in result) == sorted(LABELS)
    scores = [r["score"] for r in result]
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 <= s <= 1.0 for s in scores)


def test_a_repeated_label_set_runs_only_the_image_tower(tiny_clip_dir):
    model = _model(tiny_clip_dir, cache_size=2)
    text, vision = _Calls(model.model.text_model), _Calls(model.model.vision_model)
    image = Image.open(PHOTOS[0])
    first = model(image, LABELS)
    assert (text.take(), vision.take()) == (1, 1)  # one batched text pass for the whole set
    again = model(image, LABELS)
    assert (text.take(), vision.take()) == (0, 1)  # the set's text embeddings came from the cache
    assert again == first
    model(image, LABELS[:2])
    assert text.take() == 1  # another set is another text pass
    model(image, LABELS[:3])
    assert model.cached_label_sets() == [LABELS[:2], LABELS[:3]]  # bounded: the least recently used set went
    model(image, LABELS)
    assert text.take() == 2


def test_labels_are_parsed_trimmed_and_deduplicated():
    assert parse_labels(" a forklift, a pallet ,,an  empty shelf, A Forklift ") == (
        "a forklift", "a pallet", "an empty shelf")
    assert parse_labels(["a forklift", " a pallet ", "", "a forklift"]) == ("a forklift", "a pallet")
    assert parse_labels(["red, white and blue"]) == ("red, white and blue",)  # a list item keeps its commas
    assert parse_labels(None) == parse_labels("") == parse_labels(" , ") == ()


@pytest.mark.parametrize("value, message", [
    ([f"label {i}" for i in range(MAX_LABELS + 1)], f"At most {MAX_LABELS} labels can be scored at once; "
                                                     f"the labels give {MAX_LABELS + 1}."),
    ("x" * (MAX_LABEL_CHARS + 1), f"A label may have at most {MAX_LABEL_CHARS} characters"),
    (["a cat", 3], "Each of the labels must be a string; 3 is int."),
    ({"a": 1}, "The labels must be a list of strings or one comma-separated string, not dict."),
])
def test_bad_labels_are_refused_with_a_sentence(value, message):
    with pytest.raises(ValueError) as caught:
        parse_labels(value)
    assert str(caught.value).startswith(message)
    assert parse_labels([f"label {i}" for i in range(MAX_LABELS)])  # exactly the limit is fine
    assert parse_labels("x" * MAX_LABEL_CHARS)


def test_the_task_scores_the_requests_labels_and_logs_the_set(tiny_siglip_dir):
    task = ZeroShot(_model(tiny_siglip_dir, labels="a shelf, a box"))
    request = Request(options={"zero_shot": {"labels": "a pallet, a forklift, a pallet"}})
    payload = task(Image.open(PHOTOS[0]), request, {})
    assert payload["label_set"] == ["a pallet", "a forklift"]  # as asked, de-duplicated: not the operator's
    assert sorted(r["label"] for r in payload["labels"]) == sorted(payload["label_set"])
    assert task.params(request, {}) == (("a pallet", "a forklift"), DEFAULT_TEMPLATE)


def test_the_operators_labels_are_used_when_a_request_gives_none(tiny_clip_dir):
    task = ZeroShot(_model(tiny_clip_dir, labels="shoes, bags, hats"))
    for request in (Request(), Request(options={"zero_shot": {}}), Request(options={"zero_shot": {"labels": ""}})):
        payload = task(Image.open(PHOTOS[0]), request, {})
        assert payload["label_set"] == ["shoes", "bags", "hats"]
        assert len(payload["labels"]) == 3


def test_no_labels_anywhere_is_a_clear_sentence(tiny_clip_dir):
    task = ZeroShot(_model(tiny_clip_dir))
    with pytest.raises(ValueError, match="Zero-shot classification needs labels: give them with the request"):
        task.params(Request(), {})
    with pytest.raises(ValueError, match="setting zero_shot_labels"):
        ZeroShotClassifier(tiny_clip_dir, labels=",".join(f"l{i}" for i in range(MAX_LABELS + 1)))


def test_the_registry_resolves_and_builds_zero_shot_from_the_settings(tiny_clip_dir):
    assert tasks.resolve(["zero_shot"]) == ("zero_shot",)
    assert "zero_shot" not in tasks.resolve(None)  # the default request is as before
    assert tasks.resolve(["zero_shot", "caption", "classify"]) == ("classify", "zero_shot", "caption")  # the quick ones first
    config = settings.Settings(zero_shot_model=str(tiny_clip_dir), zero_shot_labels="a cat, a dog", device="cpu",
                               precision="fp32")
    task = tasks.build(config)["zero_shot"]
    assert isinstance(task, ZeroShot) and isinstance(task.model, ZeroShotClassifier)
    assert task.model.labels == ("a cat", "a dog") and not task.model.loaded
    assert set(ZeroShot.settings) <= set(settings.BY_NAME)
    assert settings.Settings().zero_shot_model == DEFAULT_ZERO_SHOT
    assert settings.BY_NAME["zero_shot_model"].flag == "--zero-shot-model"
    assert settings.BY_NAME["zero_shot_model"].env == "IMAGEREC_ZERO_SHOT_MODEL"


def test_the_default_model_loads_its_pinned_revision():
    assert len(PINNED_REVISION) == 40 and int(PINNED_REVISION, 16) >= 0  # a commit, not a branch
    assert ZeroShot.default_model == f"{DEFAULT_ZERO_SHOT}@{PINNED_REVISION}"
    assert ZeroShotClassifier(DEFAULT_ZERO_SHOT)._asked_revision == PINNED_REVISION
    assert ZeroShotClassifier(DEFAULT_ZERO_SHOT, revision="main")._asked_revision == "main"
    assert ZeroShotClassifier("someone/else")._asked_revision is None


def test_the_recognizer_runs_it_with_options_and_caches_by_label_set(tiny_clip_dir):
    model = ZeroShotClassifier(tiny_clip_dir, device="cpu", precision="fp32", labels="a cat, a cup")
    recognizer = Recognizer({"zero_shot": ZeroShot(model)}, Limits(), cache_size=8)
    result = recognizer.recognize(PHOTOS[0], tasks=["zero_shot"])  # no options: the operator's labels
    payload = result["outputs"]["zero_shot"]
    assert payload["label_set"] == ["a cat", "a cup"] and payload["model"] == model.version
    assert result["labels"] is None and result["runs"]["zero_shot"]["precision"] == "fp32"

    def run(labels=None):
        return recognizer.recognize(PHOTOS[0], tasks=["zero_shot"],
                                    options=None if labels is None else {"zero_shot": {"labels": labels}})

    first = run(["a rocket", "a bird"])
    assert not first["cached"] and first["outputs"]["zero_shot"]["label_set"] == ["a rocket", "a bird"]
    again = run("a rocket, a bird")
    assert again["cached"] and again["outputs"] == first["outputs"]  # the same set, however it was written
    other = run(["a rocket"])
    assert not other["cached"] and other["outputs"]["zero_shot"]["label_set"] == ["a rocket"]
    operator = run()
    assert operator["cached"] and operator["outputs"]["zero_shot"] == payload
    with pytest.raises(BadRequest, match="at most"):
        run(["x" * 500])


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_int8_gives_one_score_per_label_close_to_fp32(kind, tiny_clip_dir, tiny_siglip_dir):
    folder = tiny_clip_dir if kind == "clip" else tiny_siglip_dir  # SigLIP's pooling head is a MultiheadAttention
    exact = _model(folder)(Image.open(PHOTOS[2]), LABELS)
    quick_model = _model(folder, precision="int8")
    quick = quick_model(Image.open(PHOTOS[2]), LABELS)
    assert quick_model.precision == "int8" and len(quick) == len(LABELS)
    by_label = {r["label"]: r["score"] for r in exact}
    assert all(abs(r["score"] - by_label[r["label"]]) < 0.05 for r in quick)
