"""Classifier and Captioner on tiny models saved from configs and loaded through from_pretrained, offline."""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageClassification, BlipForConditionalGeneration

from pipelines import models
from pipelines.models import defaults as registry
from pipelines.tasks.caption import Captioner
from pipelines.tasks.classify import Classifier, readable_labels
from pipelines.models import ModelLoadError, classify_failure, resolve_device

pytestmark = pytest.mark.usefixtures("hf_offline", "no_network")

TINY_READABLE = ["tench", "goldfish", "tabby", "crane (3)", "crane (4)", "maillot", "maillot, tank suit",
                 "great grey owl", "golden retriever", "espresso"]


@pytest.fixture
def no_network(monkeypatch):
    """Record and refuse any DNS lookup or socket connection; the list must stay empty."""
    attempts: list[str] = []

    def refuse(*args, **kwargs):
        attempts.append(repr(args[:2]))
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    yield attempts
    assert attempts == [], f"network was attempted: {attempts}"


def _image(seed: int = 0, size=(64, 48), mode="RGB") -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB").convert(mode)


@pytest.fixture
def image() -> Image.Image:
    return _image()


@pytest.fixture(scope="module")
def classifier(tiny_classifier_dir) -> Classifier:
    return Classifier(tiny_classifier_dir, device="cpu")


@pytest.fixture(scope="module")
def captioner(tiny_captioner_dir) -> Captioner:
    return Captioner(tiny_captioner_dir, device="cpu", max_new_tokens=8)


def _count_calls(monkeypatch, cls, delay: float = 0.0) -> list[dict]:
    """Spy on cls.from_pretrained: the kwargs of each call; delay widens any race between loading threads."""
    original = cls.from_pretrained
    calls: list[dict] = []

    def spy(source, *args, **kwargs):
        calls.append({"source": str(source), **kwargs})
        time.sleep(delay)
        return original(source, *args, **kwargs)

    monkeypatch.setattr(cls, "from_pretrained", spy)
    return calls


def _in_threads(fn, n: int = 8) -> list:
    """fn() run in n threads released together; results in thread order, errors re-raised."""
    barrier = threading.Barrier(n)
    results: list = [None] * n
    errors: list[BaseException] = []

    def run(i):
        barrier.wait()
        try:
            results[i] = fn()
        except BaseException as exc:  # collected to fail the test in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    if errors:
        raise errors[0]
    return results


# --- classifier ---------------------------------------------------------------------------------------------------

def test_top_k_length_and_order(classifier, image):
    for k in (1, 3, 5):
        result = classifier(image, top_k=k)
        assert len(result) == k
        scores = [r["score"] for r in result]
        assert scores == sorted(scores, reverse=True)
        assert all(isinstance(r["label"], str) and isinstance(r["score"], float) for r in result)
        assert {r["label"] for r in result} <= set(classifier.labels)
    assert len(classifier(image)) == 5  # the constructor's default top_k
    assert len(classifier(image, top_k=100)) == len(classifier.labels)


def test_top_k_below_one_is_refused(classifier, image):
    with pytest.raises(ValueError):
        classifier(image, top_k=0)


def test_probabilities_sum_to_one(classifier, image):
    result = classifier(image, top_k=len(classifier.labels))
    assert sum(r["score"] for r in result) == pytest.approx(1.0, abs=1e-5)
    assert len({r["label"] for r in result}) == len(classifier.labels)


def test_scores_match_the_model_softmax(classifier, image):
    inputs = classifier.preprocess(image)
    with torch.inference_mode():
        expected = torch.softmax(classifier.model(**inputs).logits[0], -1)
    result = classifier(image, top_k=1)[0]
    best = int(expected.argmax())
    assert result["label"] == classifier.labels[best]
    assert result["score"] == pytest.approx(float(expected[best]), rel=1e-5)


def test_readable_labels_of_the_tiny_model(classifier):
    assert classifier.labels == TINY_READABLE
    assert len(set(classifier.labels)) == len(classifier.labels)


def test_readable_label_rule():
    names = ["tabby, tabby cat", "crane", "crane", "maillot", "maillot, tank suit", "black_swan, Cygnus atratus"]
    assert readable_labels(names) == ["tabby", "crane (1)", "crane (2)", "maillot", "maillot, tank suit",
                                      "black swan"]


def test_multi_label_model_uses_sigmoid(tiny_classifier_dir, tmp_path, image):
    folder = shutil.copytree(tiny_classifier_dir, tmp_path / "multi")
    config = json.loads((folder / "config.json").read_text())
    config["problem_type"] = "multi_label_classification"
    (folder / "config.json").write_text(json.dumps(config))
    clf = Classifier(folder, device="cpu")
    result = clf(image, top_k=10)
    with torch.inference_mode():
        expected = torch.sigmoid(clf.model(**clf.preprocess(image)).logits[0])
    assert sorted(r["score"] for r in result) == pytest.approx(sorted(expected.tolist()), rel=1e-5)
    assert sum(r["score"] for r in result) > 1.5  # ten independent sigmoids near 0.5, not a distribution


def test_classifier_is_deterministic(classifier, tiny_classifier_dir, image):
    first = classifier(image)
    assert classifier(image) == first
    assert Classifier(tiny_classifier_dir, device="cpu")(image) == first
    assert classifier(_image(seed=1)) != first  # a different image gives different scores


def test_non_rgb_images_are_accepted(classifier):
    for mode in ("L", "RGBA", "P"):
        assert len(classifier(_image(mode=mode), top_k=2)) == 2


def test_local_folders_with_other_weights_get_other_revisions(tiny_classifier_dir, tmp_path):
    copy = tmp_path / "fine-tuned"
    shutil.copytree(tiny_classifier_dir, copy)
    (copy / ".cache").mkdir()  # hf download --local-dir bookkeeping is not the model
    (copy / ".cache" / "note").write_text("x")
    assert models.local_revision(copy) == models.local_revision(tiny_classifier_dir)
    model = AutoModelForImageClassification.from_pretrained(copy)
    with torch.no_grad():
        model.classifier.bias.add_(0.5)  # a "fine-tune": same config and names, other weights
    model.save_pretrained(copy)
    tuned = Classifier(copy, device="cpu").load()
    assert tuned.revision == models.local_revision(copy) != models.local_revision(tiny_classifier_dir)


def test_local_folder_loads_without_revision(monkeypatch, tiny_classifier_dir, image):
    calls = _count_calls(monkeypatch, AutoModelForImageClassification)
    clf = Classifier(tiny_classifier_dir, revision="v1", device="cpu")
    assert not clf.loaded and clf.revision is None and clf.error is None
    clf(image)
    assert clf.loaded and clf.revision == models.local_revision(tiny_classifier_dir)
    assert clf.revision.startswith("local-") and clf.model_id == str(tiny_classifier_dir)
    assert calls == [{"source": str(tiny_classifier_dir)}]  # no revision= for a folder


def test_concurrent_classification_loads_once_and_matches_serial(monkeypatch, tiny_classifier_dir):
    images = [_image(seed=i) for i in range(8)]
    serial = [Classifier(tiny_classifier_dir, device="cpu")(im) for im in images]
    calls = _count_calls(monkeypatch, AutoModelForImageClassification, delay=0.3)
    clf = Classifier(tiny_classifier_dir, device="cpu")
    index = iter(range(8))
    lock = threading.Lock()

    def one():
        with lock:
            i = next(index)
        return i, clf(images[i]), id(clf.model)

    results = _in_threads(one)
    assert len(calls) == 1
    assert len({model_id for _, _, model_id in results}) == 1
    for i, result, _ in results:
        assert result == serial[i]


# --- captioner ----------------------------------------------------------------------------------------------------

def test_caption_is_a_deterministic_string(captioner, tiny_captioner_dir, image):
    caption = captioner(image)
    assert isinstance(caption, str) and caption and caption == caption.strip()
    assert captioner(image) == caption
    assert Captioner(tiny_captioner_dir, device="cpu", max_new_tokens=8)(image) == caption
    assert "[SEP]" not in caption and "[DEC]" not in caption and "[PAD]" not in caption


def test_blank_prompt_is_unconditional(captioner, image):
    assert captioner(image, prompt="   ") == captioner(image)


def test_conditional_caption_starts_with_prompt(captioner, image):
    assert captioner(image, prompt="a photo of").startswith("a photo of ")
    assert captioner(image, prompt="A Photo of").startswith("a photo of ")  # the BERT vocab is uncased


def test_max_new_tokens_bounds_the_caption(captioner, image):
    short = captioner(image, max_new_tokens=2)
    assert 1 <= len(short.split()) <= 2
    assert captioner(image, max_new_tokens=8).startswith(short)
    with pytest.raises(ValueError):
        captioner(image, max_new_tokens=0)


def test_concurrent_captions_load_once_and_match_serial(monkeypatch, tiny_captioner_dir):
    jobs = [(_image(seed=i % 4), "a photo of" if i % 2 else None) for i in range(8)]
    reference = Captioner(tiny_captioner_dir, device="cpu", max_new_tokens=6)
    serial = [reference(im, prompt) for im, prompt in jobs]
    calls = _count_calls(monkeypatch, BlipForConditionalGeneration, delay=0.3)
    cap = Captioner(tiny_captioner_dir, device="cpu", max_new_tokens=6)
    index = iter(range(8))
    lock = threading.Lock()

    def one():
        with lock:
            i = next(index)
        return i, cap(*jobs[i])

    results = _in_threads(one)
    assert len(calls) == 1
    for i, caption in results:
        assert caption == serial[i]


# --- load errors --------------------------------------------------------------------------------------------------

def _load_error(model: Classifier | Captioner, image) -> ModelLoadError:
    with pytest.raises(ModelLoadError) as info:
        model(image)
    return info.value



def test_missing_local_folder(tmp_path, image):
    missing = tmp_path / "no-such-model"
    clf = Classifier(missing, device="cpu")
    err = _load_error(clf, image)
    assert err.kind == models.NO_FOLDER
    assert f"'{missing}'" in str(err) and "local folder" in str(err) and "does not exist" in str(err)
    assert "IMAGEREC_CLASSIFIER" in str(err) and "Traceback" not in str(err)


def test_folder_without_config(tmp_path, image):
    cap = Captioner(tmp_path, device="cpu")
    err = _load_error(cap, image)
    assert err.kind == models.NOT_A_MODEL
    assert "config.json" in str(err) and "local folder" in str(err) and "IMAGEREC_CAPTIONER" in str(err)


def test_unknown_hub_id_offline(monkeypatch, image):
    calls = _count_calls(monkeypatch, AutoModelForImageClassification)
    clf = Classifier("nobody-here/not-a-real-model-xyz", device="cpu")
    err = _load_error(clf, image)
    assert err.kind == models.OFFLINE and err.model == "nobody-here/not-a-real-model-xyz"
    message = str(err)
    assert "'nobody-here/not-a-real-model-xyz'" in message and "local folder" in message
    assert "cannot be reached" in message and "\n" not in message
    assert calls == []  # the revision could not be resolved offline, so no weights were looked for


def test_default_model_offline_asks_for_the_pinned_revision(monkeypatch, image):
    calls = _count_calls(monkeypatch, AutoModelForImageClassification)
    pinned = registry.revision_for(registry.DEFAULT_CLASSIFIER)
    err = _load_error(Classifier(registry.DEFAULT_CLASSIFIER, device="cpu"), image)
    assert err.kind == models.OFFLINE
    assert f"--revision {pinned}" in str(err) and pinned[:12] in str(err)
    assert [c["revision"] for c in calls] == [pinned]  # a commit needs no hub lookup to resolve


def test_failure_is_remembered_and_retry_recovers(monkeypatch, tmp_path, tiny_classifier_dir, image):
    folder = tmp_path / "later"
    clf = Classifier(folder, device="cpu")
    assert clf.error is None
    first = _load_error(clf, image)
    assert clf.error == str(first) and not clf.loaded
    calls = _count_calls(monkeypatch, AutoModelForImageClassification)
    shutil.copytree(tiny_classifier_dir, folder)
    assert _load_error(clf, image) is first  # remembered, not retried
    clf.load(retry=True)
    assert clf.loaded and clf.error is None and len(calls) == 1
    assert len(clf(image)) == 5


def test_repository_not_found_is_told_apart():
    from huggingface_hub.errors import RepositoryNotFoundError
    from huggingface_hub.utils import httpx

    response = httpx.Response(404, request=httpx.Request("GET", "https://huggingface.co/api/models/x/y"))
    wrapped = OSError("x/y is not a local folder and is not a valid model identifier")
    wrapped.__cause__ = RepositoryNotFoundError("404 Client Error: Repository Not Found", response=response)
    assert classify_failure(wrapped) == models.NOT_FOUND
    assert classify_failure(ValueError("bad config")) == models.OTHER


def test_not_found_message(monkeypatch, image):
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError
    from huggingface_hub.utils import httpx

    def not_found(self, repo_id, **kwargs):
        response = httpx.Response(404, request=httpx.Request("GET", f"https://huggingface.co/api/models/{repo_id}"))
        raise RepositoryNotFoundError("404 Client Error: Repository Not Found", response=response)

    monkeypatch.setattr(HfApi, "resolve_revision", not_found)
    err = _load_error(Captioner("someone/typo-model", device="cpu"), image)
    assert err.kind == models.NOT_FOUND
    assert "'someone/typo-model'" in str(err) and "no such model" in str(err) and "local folder" in str(err)


def test_other_errors_keep_a_one_line_summary(tmp_path, tiny_classifier_dir, image):
    folder = shutil.copytree(tiny_classifier_dir, tmp_path / "broken")
    (folder / "config.json").write_text("{ not json")
    err = _load_error(Classifier(folder, device="cpu"), image)
    assert err.kind == models.OTHER
    assert "\n" not in str(err) and "Traceback" not in str(err) and "Error" in str(err)


# --- devices ------------------------------------------------------------------------------------------------------

def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu")


def test_cuda_without_cuda_is_a_clear_error(monkeypatch, tiny_classifier_dir, image):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA"):
        resolve_device("cuda")
    err = _load_error(Classifier(tiny_classifier_dir, device="cuda"), image)
    assert err.kind == models.DEVICE and "cpu" in str(err)


# --- full-size stand-ins ------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("IMAGEREC_SLOW") != "1", reason="large models; set IMAGEREC_SLOW=1")
def test_standins_build_and_run(tmp_path, image):
    from devtools.standins import make_standin_captioner, make_standin_classifier

    clf = Classifier(make_standin_classifier(tmp_path / "vit"), device="cpu")
    assert len(clf.labels) == 1000 and len(set(clf.labels)) == 1000
    assert clf.model.config.image_size == 224 and clf.model.config.hidden_size == 768
    assert len(clf(image)) == 5
    cap = Captioner(make_standin_captioner(tmp_path / "blip"), device="cpu", max_new_tokens=3)
    assert isinstance(cap(image), str)
    assert cap.model.config.text_config.vocab_size == 30524 == len(cap.processor.tokenizer)
    assert cap.processor.tokenizer.sep_token_id == cap.model.config.text_config.sep_token_id == 102
    assert cap.processor.tokenizer.bos_token_id == cap.model.config.text_config.bos_token_id == 30522


def test_two_models_loaded_from_two_threads_build_in_turn_and_leave_transformers_as_it_was(
        tiny_classifier_dir, tiny_captioner_dir, monkeypatch):
    # transformers swaps tie_weights and the default dtype process-wide while it builds; two builds at once
    # can leave them swapped (seen: every later BLIP load kept its tied decoder weight on the meta device)
    from transformers import PreTrainedModel

    tie_weights = PreTrainedModel.tie_weights
    classifier = Classifier(tiny_classifier_dir, device="cpu", precision="fp32")
    captioner = Captioner(tiny_captioner_dir, device="cpu", max_new_tokens=3, precision="bf16")
    building, overlapped = threading.Event(), threading.Event()
    real_caption_build, real_classify_build = Captioner._load_components, Classifier._load_components

    def caption_build(self, *args):
        building.set()
        # wait for the other thread's build to begin, as it would were builds not taking turns
        overlapped.wait(timeout=3)
        return real_caption_build(self, *args)

    def classify_build(self, *args):
        if building.is_set() and not captioner.loaded:
            overlapped.set()
        return real_classify_build(self, *args)

    monkeypatch.setattr(Captioner, "_load_components", caption_build)
    monkeypatch.setattr(Classifier, "_load_components", classify_build)
    first = threading.Thread(target=captioner.load)
    first.start()
    assert building.wait(timeout=60)
    classifier.load()
    first.join()
    assert not overlapped.is_set(), "the classifier was built while the captioner's build was still open"
    assert PreTrainedModel.tie_weights is tie_weights and torch.get_default_dtype() == torch.float32
    photo = Image.new("RGB", (64, 64), "white")
    assert classifier(photo) and captioner(photo) is not None
