"""Image captioning with any BLIP captioning model, unconditional or continuing a text prompt."""

from __future__ import annotations

import os
import threading
import types

import torch
import torch.nn.functional as F
from PIL import Image
from transformers import BlipForConditionalGeneration, BlipProcessor

from . import precision as prec
from .models import LazyModel


class Captioner(LazyModel):
    """A BLIP captioner: greedy, deterministic captions for an image."""

    role = "captioner"
    setting_env = "IMAGEREC_CAPTIONER"
    setting_flag = "--captioner"

    def __init__(self, model: str | os.PathLike, revision: str | None = None, device: str = "auto",
                 max_new_tokens: int = 30, precision: str = prec.FP32):
        super().__init__(model, revision, device, precision)
        self.max_new_tokens = max_new_tokens
        self.processor = None
        self.model = None
        self._input_dtype = torch.float32
        self.fused_attention = 0  # attention layers switched to torch's fused scaled_dot_product_attention
        # a fast tokenizer sets its padding/truncation state on each call; threads sharing it can hit "Already borrowed"
        self._tokenizer_lock = threading.Lock()

    def _load_components(self, source: str, pretrained_kwargs: dict) -> None:
        # the model first: its config errors say more than the processor's
        model = self._load_model(BlipForConditionalGeneration, source, pretrained_kwargs)
        self.processor = BlipProcessor.from_pretrained(source, **pretrained_kwargs)
        self.model = model
        self._input_dtype = prec.model_dtype(model)
        self.fused_attention = use_fused_attention(model)

    def __call__(self, image: Image.Image, prompt: str | None = None, max_new_tokens: int | None = None) -> str:
        """The caption of image; with a prompt, the caption that starts with it (BLIP conditional captioning)."""
        self.load()
        max_new_tokens = self.max_new_tokens if max_new_tokens is None else max_new_tokens
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        return self.postprocess(self._forward(self.preprocess(image, prompt), max_new_tokens))

    def preprocess(self, image: Image.Image, prompt: str | None = None) -> dict[str, torch.Tensor]:
        if image.mode != "RGB":
            image = image.convert("RGB")  # RGBA, palette and greyscale images would break the channel count
        prompt = (prompt or "").strip() or None
        with self._tokenizer_lock:
            inputs = self.processor(images=image, text=prompt, return_tensors="pt")
        return {k: v.to(self._device, self._input_dtype) if v.is_floating_point() else v.to(self._device)
                for k, v in inputs.items()}

    def _forward(self, inputs: dict[str, torch.Tensor], max_new_tokens: int) -> torch.Tensor:
        # BLIP's generate swaps the prompt's [CLS] for its decoder bos and drops the trailing [SEP]
        with torch.inference_mode():
            return self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)[0]

    def postprocess(self, token_ids: torch.Tensor) -> str:
        with self._tokenizer_lock:
            return self.processor.decode(token_ids.cpu(), skip_special_tokens=True).strip()


# --- fused attention --------------------------------------------------------------------------------------------------
# BLIP's image encoder attention in transformers is written out (matmul, scale, softmax, matmul) and has no SDPA
# switch. Over its 577 tokens the written-out form costs about 2.5x torch's fused kernel on one CPU core (58 ms
# against 23 ms a layer here), so the loaded model's image attention layers get a forward that computes the same
# thing with F.scaled_dot_product_attention. Only layers that look exactly like the one this was written against are
# switched; anything else keeps its own forward. (The text decoder's attention, one query token at a time, gains
# only a few percent from the same switch, not worth copying its cache handling: it keeps transformers' forward.)


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
