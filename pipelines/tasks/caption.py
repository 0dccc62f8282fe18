"""Image captioning with any BLIP captioning model, unconditional or continuing a text prompt."""

from __future__ import annotations

import os
import threading
import types
from typing import Hashable, Mapping

import torch
import torch.nn.functional as F
from PIL import Image
from transformers import BlipForConditionalGeneration, BlipProcessor

from pipelines.models import LazyModel, defaults, precision as prec, version_of
from pipelines.models.compiled import Compilable
from pipelines.tasks import blip_decoding
from pipelines.tasks.base import Request, Task


class _VisionEncoder(torch.nn.Module):
    """BLIP's image encoder as pixel values -> its last hidden state, the form a compiled package takes."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.vision_model = model.vision_model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.vision_model(pixel_values=pixel_values)[0]


class Captioner(Compilable, LazyModel):
    """A BLIP captioner: greedy, deterministic captions for an image."""

    role = "captioner"
    setting_env = "IMAGEREC_CAPTIONER"
    setting_flag = "--captioner"

    def __init__(self, model: str | os.PathLike, revision: str | None = None, device: str = "auto",
                 max_new_tokens: int = 30, precision: str = prec.FP32, min_new_tokens: int = 0):
        super().__init__(model, revision, device, precision)
        self.max_new_tokens = max_new_tokens
        self.min_new_tokens = min_new_tokens  # 0: stop at the model's end token; the benchmark holds lengths equal
        self.processor = None
        self.model = None
        self._input_dtype = torch.float32
        self.fused_attention = 0  # attention layers switched to torch's fused scaled_dot_product_attention
        self._decoder: blip_decoding.BlipGreedyDecoder | None = None  # the lean greedy loop, where it applies
        # a fast tokenizer sets its padding/truncation state on each call; threads sharing it can hit "Already borrowed"
        self._tokenizer_lock = threading.Lock()

    def _load_components(self, source: str, pretrained_kwargs: dict) -> None:
        model = self._load_with_processor(BlipForConditionalGeneration, BlipProcessor, source, pretrained_kwargs)
        self.fused_attention = use_fused_attention(model)
        self._decoder = blip_decoding.BlipGreedyDecoder(model) if blip_decoding.supports(model) else None

    @property
    def lean_decoding(self) -> bool:
        """Whether captions come from the lean greedy loop (else from transformers' generate)."""
        self.load()
        return self._decoder is not None and all(
            blip_decoding.plain_greedy(config) for config in (self.model.generation_config,
                                                              self.model.text_decoder.generation_config))

    def __call__(self, image: Image.Image, prompt: str | None = None, max_new_tokens: int | None = None) -> str:
        """The caption of image; with a prompt, the caption that starts with it (BLIP conditional captioning)."""
        self.load()
        max_new_tokens = self.max_new_tokens if max_new_tokens is None else max_new_tokens
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        return self.postprocess(self._forward(self.preprocess(image, prompt), max_new_tokens,
                                              min(self.min_new_tokens, max_new_tokens)))

    def batch(self, images: list[Image.Image], prompt: str | None = None) -> list[str]:
        """The captions of many images, generated together (one prompt for all, so no padding is needed)."""
        self.load()
        if len(images) == 1:  # the lean loop takes one image; a lone image gets exactly the single-image caption
            return [self(images[0], prompt=prompt)]
        inputs = self.preprocess(images, prompt)
        if "input_ids" in inputs:  # the same prompt for every image: its token ids repeated, not re-tokenised
            inputs["input_ids"] = inputs["input_ids"][:1].repeat(len(images), 1)
            if "attention_mask" in inputs:
                inputs["attention_mask"] = inputs["attention_mask"][:1].repeat(len(images), 1)
        with torch.inference_mode():
            at_least = {"min_new_tokens": self.min_new_tokens} if self.min_new_tokens else {}
            ids = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1,
                                      **at_least)
        with self._tokenizer_lock:
            return [text.strip() for text in self.processor.batch_decode(ids.cpu(), skip_special_tokens=True)]

    def preprocess(self, image: Image.Image | list[Image.Image], prompt: str | None = None) -> dict[str, torch.Tensor]:
        # RGBA, palette and greyscale images would break the channel count
        rgb = [im if im.mode == "RGB" else im.convert("RGB") for im in (image if isinstance(image, list) else [image])]
        prompt = (prompt or "").strip() or None
        with self._tokenizer_lock:
            inputs = self.processor(images=rgb if isinstance(image, list) else rgb[0], text=prompt,
                                    return_tensors="pt")
        return self._on_device(inputs)

    def _forward(self, inputs: dict[str, torch.Tensor], max_new_tokens: int, min_new_tokens: int = 0) -> torch.Tensor:
        """The token ids of the caption (the decoder's start, then the new tokens), greedy."""
        with torch.inference_mode():
            if self.lean_decoding and inputs["pixel_values"].shape[0] == 1:
                embeds = self._encode(inputs["pixel_values"])
                ids = self._decoder.prompt_ids(inputs.get("input_ids"), embeds.device)
                return self._decoder.generate(embeds, ids, max_new_tokens, min_new_tokens)
            # BLIP's generate swaps the prompt's [CLS] for its decoder bos and drops the trailing [SEP]
            at_least = {"min_new_tokens": min_new_tokens} if min_new_tokens else {}  # else the config's own
            return self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                       **at_least)[0]

    def teacher_forced_logits(self, pixel_values: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        """Next-token logits at every position of token_ids [1, n] (bos first), through the path captions take."""
        if not self.lean_decoding:  # (loads the model)
            return prec.teacher_forced_logits(self.model, pixel_values, token_ids)
        with torch.inference_mode():
            embeds = self._encode(pixel_values.to(self._device, self._input_dtype))
            return self._decoder.teacher_forced_logits(embeds, token_ids.to(self._device))

    def _uncompiled(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.vision_model(pixel_values=pixel_values)[0]

    def _encoder_module(self) -> torch.nn.Module:
        return _VisionEncoder(self._fresh_fp32(BlipForConditionalGeneration))

    def postprocess(self, token_ids: torch.Tensor) -> str:
        with self._tokenizer_lock:
            return self.processor.decode(token_ids.cpu(), skip_special_tokens=True).strip()


class Caption(Task):
    """A caption of the photo; with a prompt, the caption that starts with it."""

    name = "caption"
    role = "captioner"
    default_model = version_of(defaults.DEFAULT_CAPTIONER, defaults.PINNED_REVISIONS[defaults.DEFAULT_CAPTIONER])
    settings = ("captioner", "captioner_revision", "caption_max_tokens", "precision", "device")
    output = {"caption": "str", "prompt": "str or null: the prompt the caption starts from"}

    def params(self, request: Request, done: Mapping[str, dict]) -> Hashable:
        return (request.prompt, self.model.max_new_tokens)

    def __call__(self, image: Image.Image, request: Request, done: Mapping[str, dict]) -> dict:
        return {"caption": self.model(image, prompt=request.prompt), "prompt": request.prompt}

    def batch(self, images: list[Image.Image], requests: list[Request], done: list[Mapping[str, dict]]) -> list[dict]:
        prompt = requests[0].prompt  # one job, one set of options: only the sizes differ
        return [{"caption": caption, "prompt": prompt} for caption in self.model.batch(images, prompt=prompt)]


# --- fused attention --------------------------------------------------------------------------------------------------
# BLIP's image encoder attention in transformers is written out (matmul, scale, softmax, matmul) and has no SDPA
# switch. Over its 577 tokens the written-out form costs about 2.5x torch's fused kernel on one CPU core (58 ms
# against 23 ms a layer here), so the loaded model's image attention layers get a forward that computes the same
# thing with F.scaled_dot_product_attention. Only layers that look exactly like the one this was written against are
# switched; anything else keeps its own forward. (The text decoder runs in pipelines.tasks.blip_decoding's loop, which
# calls its modules directly and uses the fused kernel too.)


def _vision_attention_forward(self, hidden_states: torch.Tensor, **kwargs) -> tuple[torch.Tensor, None]:
    """BlipAttention.forward (eval mode) with the fused kernel; no attention weights are returned."""
    bsz, tgt_len, embed_dim = hidden_states.size()
    qkv = self.qkv(hidden_states).reshape(bsz, tgt_len, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
    context = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], scale=self.scale)
    return self.projection(context.transpose(1, 2).reshape(bsz, tgt_len, embed_dim)), None


def _looks_like(module: torch.nn.Module, name: str, attributes: tuple[str, ...]) -> bool:
    return type(module).__name__ == name and all(hasattr(module, a) for a in attributes)


def use_fused_attention(model: torch.nn.Module) -> int:
    """Switch a BLIP model's image attention layers to the fused kernel, in place; returns how many."""
    switched = 0
    for module in model.modules():
        if _looks_like(module, "BlipAttention", ("qkv", "projection", "num_heads", "head_dim", "scale")):
            module.forward = types.MethodType(_vision_attention_forward, module)
            switched += 1
    return switched
