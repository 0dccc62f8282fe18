"""The lean greedy caption loop gives exactly what transformers' generate gives on the same model, in every mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageClassification

from pipelines.tasks import blip_decoding
from pipelines.models import precision as prec
from pipelines.tasks.caption import Captioner

pytestmark = pytest.mark.usefixtures("hf_offline")

TOKENS = 8


def _images(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(11)
    return [Image.fromarray(rng.integers(0, 256, size=(48, 40 + 5 * i, 3), dtype=np.uint8), "RGB") for i in range(n)]


@pytest.fixture(scope="module", params=prec.PRECISIONS)
def captioner(request, tiny_captioner_dir) -> Captioner:
    return Captioner(tiny_captioner_dir, device="cpu", precision=request.param, max_new_tokens=TOKENS).load()


def _stock(captioner: Captioner, inputs: dict, **kwargs) -> torch.Tensor:
    """What transformers' generate gives for inputs on the captioner's own loaded model."""
    inputs = {k: v.clone() for k, v in inputs.items()}  # BLIP's generate writes bos into input_ids
    with torch.inference_mode():
        return captioner.model.generate(**inputs, max_new_tokens=TOKENS, do_sample=False, num_beams=1, **kwargs)[0]


def test_the_captioner_uses_the_lean_loop(captioner):
    assert captioner.lean_decoding


@pytest.mark.parametrize("prompt", [None, "a photo of"])
def test_same_tokens_as_generate(captioner, prompt):
    for image in _images(4):
        inputs = captioner.preprocess(image, prompt)
        ours = captioner._forward(inputs, TOKENS)
        assert ours.tolist() == _stock(captioner, inputs).tolist()
        if prompt:
            assert captioner.postprocess(ours).startswith(prompt)


def test_min_new_tokens_holds_off_the_end(captioner):
    inputs = captioner.preprocess(_images(1)[0])
    ours = captioner._forward(inputs, TOKENS, min_new_tokens=TOKENS)
    assert ours.numel() == 1 + TOKENS
    assert ours.tolist() == _stock(captioner, inputs, min_new_tokens=TOKENS).tolist()


def test_stops_at_the_end_token(tiny_captioner_dir):
    captioner = Captioner(tiny_captioner_dir, device="cpu", max_new_tokens=TOKENS).load()
    eos = captioner.model.config.text_config.sep_token_id
    with torch.no_grad():
        captioner.model.text_decoder.cls.predictions.decoder.bias[eos] += 1e4  # [SEP] always wins
    inputs = captioner.preprocess(_images(1)[0])
    ours = captioner._forward(inputs, TOKENS)
    assert ours.tolist() == _stock(captioner, inputs).tolist() == [captioner.model.config.text_config.bos_token_id,
                                                                  eos]
    assert captioner._forward(inputs, TOKENS, min_new_tokens=3).tolist()[-1] == eos
    assert captioner._forward(inputs, TOKENS, min_new_tokens=3).numel() == 1 + 4


def test_teacher_forced_logits_match_the_stock_decoder(captioner):
    bound = {prec.FP32: 1e-4, prec.INT8: 1e-3, prec.BF16: 0.1}[captioner.precision]
    for image in _images(3):
        inputs = captioner.preprocess(image, "a photo of")
        tokens = _stock(captioner, inputs).unsqueeze(0)
        stock = prec.teacher_forced_logits(captioner.model, inputs["pixel_values"], tokens)
        ours = captioner.teacher_forced_logits(inputs["pixel_values"], tokens)
        assert ours.shape == stock.shape == (tokens.shape[1], captioner.model.config.text_config.vocab_size)
        assert (ours - stock).abs().max() <= bound
        assert prec.cosine(stock, ours).min() >= 0.9999


def test_generation_settings_it_does_not_implement_fall_back_to_generate(tiny_captioner_dir):
    captioner = Captioner(tiny_captioner_dir, device="cpu", max_new_tokens=TOKENS).load()
    inputs = captioner.preprocess(_images(1)[0])
    plain = captioner._forward(inputs, TOKENS)
    for name, value in (("repetition_penalty", 50.0), ("no_repeat_ngram_size", 1)):
        config = captioner.model.text_decoder.generation_config
        setattr(config, name, value)
        try:
            assert not captioner.lean_decoding
            changed = captioner._forward(inputs, TOKENS)
            assert changed.tolist() == _stock(captioner, inputs).tolist()
        finally:
            setattr(config, name, None)
        assert captioner.lean_decoding
    assert changed.tolist() != plain.tolist()  # the setting was applied, by generate


def test_only_blip_captioners_are_supported(tiny_classifier_dir, tiny_captioner_dir):
    assert not blip_decoding.supports(AutoModelForImageClassification.from_pretrained(tiny_classifier_dir))
    assert not blip_decoding.supports(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError):
        blip_decoding.BlipGreedyDecoder(torch.nn.Linear(2, 2))
    model = Captioner(tiny_captioner_dir, device="cpu").load().model
    assert blip_decoding.supports(model)
    del model.text_decoder.bert.encoder.layer[0].crossattention.self.key
    assert not blip_decoding.supports(model)


def test_joined_products_give_what_one_product_each_gives(captioner):
    decoder = captioner._decoder
    assert all(fused is not None for fused in decoder.fused_qkv) and decoder.fused_cross is not None
    apart = blip_decoding.BlipGreedyDecoder(captioner.model)
    apart.fused_qkv, apart.fused_cross = [None] * len(apart.layers), None
    inputs = captioner.preprocess(_images(1)[0], "a photo of")
    tokens = _stock(captioner, inputs).unsqueeze(0)
    with torch.inference_mode():
        embeds = captioner.model.vision_model(pixel_values=inputs["pixel_values"].to(captioner._input_dtype))[0]
        joined, separate = decoder.teacher_forced_logits(embeds, tokens), apart.teacher_forced_logits(embeds, tokens)
    if captioner.precision == prec.INT8:  # same int8 weights, same scales, same input scale: the same numbers
        assert torch.equal(joined, separate)
    else:
        assert (joined - separate).abs().max() <= {prec.FP32: 1e-4, prec.BF16: 0.1}[captioner.precision]


def test_joining_layers_keeps_one_copy_and_refuses_what_it_cannot_join():
    torch.manual_seed(0)
    parts = [torch.nn.Linear(8, n) for n in (8, 8, 4)]
    x = torch.randn(3, 8)
    with torch.no_grad():
        before = torch.cat([part(x) for part in parts], dim=-1)
        fused = prec.concatenated(parts)
        assert torch.allclose(fused(x), before, atol=1e-6)
        assert torch.allclose(torch.cat([part(x) for part in parts], dim=-1), before, atol=1e-6)
    start = fused.weight.data_ptr()
    ends = start + fused.weight.numel() * fused.weight.element_size()
    assert all(start <= part.weight.data_ptr() < ends for part in parts)  # views of the joined weight, not copies
    int8 = [prec.Int8Linear.from_linear(torch.nn.Linear(8, 8)) for _ in range(3)]
    with torch.no_grad():
        assert torch.equal(prec.concatenated(int8)(x), torch.cat([part(x) for part in int8], dim=-1))
    assert prec.concatenated([torch.nn.Linear(8, 8), int8[0]]) is None
    assert prec.concatenated([torch.nn.Linear(8, 8), torch.nn.Linear(4, 8)]) is None
    assert prec.concatenated([torch.nn.Linear(8, 8), torch.nn.Linear(8, 8, bias=False)]) is None
    assert prec.concatenated([int8[0], prec.Int8Linear.from_linear(torch.nn.Linear(8, 8, bias=False))]) is None
    assert prec.concatenated([torch.nn.Conv1d(8, 8, 1)]) is None
