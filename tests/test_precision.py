"""Precision modes on the tiny models: each keeps the fidelity bounds against fp32, and the interfaces stay as they were."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageClassification, BlipForConditionalGeneration

from pipelines import models
from pipelines.models import precision as prec
from pipelines.tasks.caption import Captioner
from pipelines.tasks.classify import Classifier
from pipelines.models import ModelLoadError

pytestmark = pytest.mark.usefixtures("hf_offline")

MODES = prec.PRECISIONS  # fp32, bf16, int8


def _images(n: int = 6) -> list[Image.Image]:
    rng = np.random.default_rng(7)
    return [Image.fromarray(rng.integers(0, 256, size=(40 + 3 * i, 56, 3), dtype=np.uint8), "RGB") for i in range(n)]


@pytest.fixture(scope="module")
def reference_classifier(tiny_classifier_dir):
    return AutoModelForImageClassification.from_pretrained(tiny_classifier_dir).eval()


@pytest.fixture(scope="module")
def reference_captioner(tiny_captioner_dir):
    return BlipForConditionalGeneration.from_pretrained(tiny_captioner_dir).eval()


@pytest.fixture(scope="module", params=MODES)
def classifier(request, tiny_classifier_dir) -> Classifier:
    return Classifier(tiny_classifier_dir, device="cpu", precision=request.param).load()


@pytest.fixture(scope="module", params=MODES)
def captioner(request, tiny_captioner_dir) -> Captioner:
    return Captioner(tiny_captioner_dir, device="cpu", precision=request.param, max_new_tokens=8).load()


# --- fidelity -------------------------------------------------------------------------------------------------------

def test_classifier_logits_keep_the_bound(classifier, reference_classifier):
    reference, logits = [], []
    for image in _images():
        pixels = classifier.processor(images=image, return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            reference.append(reference_classifier(pixel_values=pixels).logits[0])
        logits.append(classifier._forward(classifier.preprocess(image)))
    fidelity = prec.classification_fidelity(torch.stack(reference), torch.stack(logits))
    assert fidelity["cosine_min"] >= prec.CLASSIFY_MIN_COSINE, fidelity
    assert fidelity["within_bound"]
    assert fidelity["top1_agreement"] >= 5 / 6, fidelity  # random tiny weights: near-ties may flip one


def test_classifier_scores_follow_its_logits(classifier):
    image = _images(1)[0]
    result = classifier(image, top_k=3)
    probs = torch.softmax(classifier._forward(classifier.preprocess(image)), -1)
    assert [r["score"] for r in result] == pytest.approx(torch.topk(probs, 3).values.tolist(), rel=1e-5)


def test_caption_teacher_forced_logits_keep_the_bound(captioner, reference_captioner):
    for image in _images(3):
        inputs = captioner.processor(images=image, return_tensors="pt")
        with torch.inference_mode():
            tokens = reference_captioner.generate(**inputs, max_new_tokens=8, do_sample=False, num_beams=1)
        reference = prec.teacher_forced_logits(reference_captioner, inputs["pixel_values"], tokens)
        logits = captioner.teacher_forced_logits(captioner.preprocess(image)["pixel_values"], tokens)
        fidelity = prec.caption_fidelity(reference, logits)
        assert fidelity["positions"] == tokens.shape[1]
        assert fidelity["cosine_min"] >= prec.CAPTION_MIN_COSINE, fidelity


def test_fp32_captions_match_the_stock_model(tiny_captioner_dir, reference_captioner):
    """The fused image attention changes the kernel, not the result."""
    captioner = Captioner(tiny_captioner_dir, device="cpu", max_new_tokens=8).load()
    assert captioner.fused_attention == reference_captioner.config.vision_config.num_hidden_layers
    for image in _images(3):
        inputs = captioner.processor(images=image, return_tensors="pt")
        with torch.inference_mode():
            stock = reference_captioner.generate(**inputs, max_new_tokens=8, do_sample=False, num_beams=1)[0]
            embeds = captioner.model.vision_model(pixel_values=inputs["pixel_values"])[0]
            stock_embeds = reference_captioner.vision_model(pixel_values=inputs["pixel_values"])[0]
        assert torch.allclose(embeds, stock_embeds, atol=1e-5)
        assert captioner(image) == captioner.postprocess(stock)


# --- interfaces -----------------------------------------------------------------------------------------------------

def test_interfaces_are_unchanged(classifier, captioner):
    image = _images(1)[0]
    labels = classifier(image)
    assert len(labels) == 5 and all(set(r) == {"label", "score"} for r in labels)
    assert all(isinstance(r["label"], str) and isinstance(r["score"], float) for r in labels)
    assert len(classifier(image, top_k=2)) == 2
    caption = captioner(image)
    assert isinstance(caption, str) and caption == caption.strip()
    assert captioner(image, prompt="a photo of").startswith("a photo of")
    assert 1 <= len(captioner(image, max_new_tokens=2).split()) <= 2


def test_precision_is_reported_after_loading(tiny_classifier_dir, tiny_captioner_dir):
    for cls, folder in ((Classifier, tiny_classifier_dir), (Captioner, tiny_captioner_dir)):
        model = cls(folder, device="cpu", precision="auto")
        assert model.precision is None and model.asked_precision == "auto"
        model.load()
        assert model.precision in MODES
        assert model.precision == prec.resolve_precision("auto", torch.device("cpu"))
        # the precision is its own attribute, never part of the revision
        assert model.revision == models.local_revision(folder)
    assert Classifier(tiny_classifier_dir, device="cpu").asked_precision == "fp32"  # the class default is unchanged


def test_int8_replaces_every_linear_and_keeps_the_rest_exact(tiny_captioner_dir, reference_captioner):
    model = Captioner(tiny_captioner_dir, device="cpu", precision="int8").load().model
    linears = sum(isinstance(m, torch.nn.Linear) for m in reference_captioner.modules())
    assert sum(isinstance(m, prec.Int8Linear) for m in model.modules()) == linears
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())
    reference = dict(reference_captioner.named_parameters())
    for name, param in model.named_parameters():
        assert param.dtype == torch.float32
        assert torch.equal(param, reference[name]), name  # read back from the checkpoint, not rounded via bf16


def test_bf16_runs_in_bf16(tiny_classifier_dir):
    clf = Classifier(tiny_classifier_dir, device="cpu", precision="bf16").load()
    assert {p.dtype for p in clf.model.parameters()} == {torch.bfloat16}
    assert clf.preprocess(_images(1)[0])["pixel_values"].dtype == torch.bfloat16
    assert clf._forward(clf.preprocess(_images(1)[0])).dtype == torch.float32


def test_int8_is_safe_from_many_threads(tiny_classifier_dir):
    import concurrent.futures

    clf = Classifier(tiny_classifier_dir, device="cpu", precision="int8").load()
    images = _images(8)
    serial = [clf(im) for im in images]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert list(pool.map(clf, images)) == serial


# --- resolving the setting ------------------------------------------------------------------------------------------

def test_auto_resolves_to_a_concrete_mode():
    assert prec.resolve_precision("auto", torch.device("cpu")) in MODES
    assert prec.resolve_precision(None, torch.device("cpu")) in MODES
    for mode in MODES:
        assert prec.resolve_precision(mode, torch.device("cpu")) == mode
        assert prec.resolve_precision(mode.upper(), torch.device("cpu")) == mode


def test_auto_follows_the_machine(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(prec, "cpu_has_amx", lambda: False)
    monkeypatch.setattr(prec, "int8_available", lambda: True)
    assert prec.resolve_precision("auto", cpu) == "int8"
    monkeypatch.setattr(prec, "cpu_has_amx", lambda: True)
    assert prec.resolve_precision("auto", cpu) == "bf16"  # AMX tiles
    monkeypatch.setattr(prec, "cpu_has_amx", lambda: False)
    monkeypatch.setattr(prec, "int8_available", lambda: False)
    monkeypatch.setattr(prec, "cpu_has_native_bf16", lambda: True)
    assert prec.resolve_precision("auto", cpu) == "bf16"
    monkeypatch.setattr(prec, "cpu_has_native_bf16", lambda: False)
    assert prec.resolve_precision("auto", cpu) == "fp32"  # emulated bf16 is slower than fp32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert prec.resolve_precision("auto", torch.device("cuda")) == "bf16"


def test_impossible_precisions_are_refused():
    with pytest.raises(ValueError, match="unknown precision"):
        prec.resolve_precision("int4", torch.device("cpu"))
    with pytest.raises(ValueError, match="CPU only"):
        prec.resolve_precision("int8", torch.device("cuda"))


def test_unknown_precision_is_a_load_error(tiny_classifier_dir):
    clf = Classifier(tiny_classifier_dir, device="cpu", precision="int4")
    with pytest.raises(ModelLoadError) as info:
        clf.load()
    assert info.value.kind == models.PRECISION and "int4" in str(info.value)
    assert clf.precision is None and not clf.loaded


def test_studio_passes_the_precision_setting(tmp_path, tiny_classifier_dir, tiny_captioner_dir):
    from pipelines.settings import Settings
    from pipelines.studio import Studio

    config = Settings.defaults(classifier=str(tiny_classifier_dir), captioner=str(tiny_captioner_dir),
                               db=str(tmp_path / "log.duckdb"), precision="int8")
    studio = Studio.from_settings(config)
    try:
        assert studio.recognizer.classifier.asked_precision == "int8"
        assert studio.recognizer.captioner.asked_precision == "int8"
    finally:
        studio.close()
    assert Settings.defaults().precision == "auto"


# --- threads --------------------------------------------------------------------------------------------------------

def test_threads_fit_the_cpus_this_process_may_use(monkeypatch):
    assert 1 <= prec.available_cpus() <= (torch.multiprocessing.cpu_count() or 1)
    monkeypatch.setattr(prec, "_cgroup_cpu_limit", lambda: 1.0)  # a container allowed one CPU on a bigger host
    assert prec.available_cpus() == 1
    monkeypatch.setattr(prec, "_cgroup_cpu_limit", lambda: 0.5)
    assert prec.available_cpus() == 1
    before = torch.get_num_threads()
    try:
        assert prec.configure_threads(0) == 1 and torch.get_num_threads() == 1
        assert prec.configure_threads(3) == 3 and torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_int8_linear_takes_any_leading_dimensions_and_strides():
    torch.manual_seed(0)
    layer = prec.Int8Linear.from_linear(torch.nn.Linear(16, 4))
    rows = torch.randn(24, 16)
    flat = layer(rows)
    assert flat.shape == (24, 4)
    for shaped in (rows.view(2, 3, 4, 16), rows.view(24, 1, 16)):  # the same rows, as leading dimensions
        assert torch.equal(layer(shaped), flat.view(*shaped.shape[:-1], 4))
    strided = rows.view(4, 6, 16).transpose(0, 1)  # not contiguous
    assert torch.equal(layer(strided), layer(strided.contiguous()))
    assert torch.equal(layer(rows[0]), layer(rows[:1])[0])  # one vector in, one vector out
    assert torch.allclose(flat, torch.nn.functional.linear(rows, *_float_weights(layer)), atol=0.05)


def _float_weights(layer: prec.Int8Linear) -> tuple[torch.Tensor, torch.Tensor]:
    weight, bias = torch.ops.quantized.linear_unpack(layer._packed)
    return weight.dequantize(), bias
