"""Image captioning with any BLIP captioning model, unconditional or continuing a text prompt."""

from __future__ import annotations

import os
import threading

import torch
from PIL import Image
from transformers import BlipForConditionalGeneration, BlipProcessor

from .models import LazyModel


class Captioner(LazyModel):
    """A BLIP captioner: greedy, deterministic captions for an image."""

    role = "captioner"
    setting_env = "IMAGEREC_CAPTIONER"
    setting_flag = "--captioner"

    def __init__(self, model: str | os.PathLike, revision: str | None = None, device: str = "auto",
                 max_new_tokens: int = 30):
        super().__init__(model, revision, device)
        self.max_new_tokens = max_new_tokens
        self.processor = None
        self.model = None
        # a fast tokenizer sets its padding/truncation state on each call; threads sharing it can hit "Already borrowed"
        self._tokenizer_lock = threading.Lock()

    def _load_components(self, source: str, pretrained_kwargs: dict) -> None:
        # the model first: its config errors say more than the processor's
        model = BlipForConditionalGeneration.from_pretrained(source, **pretrained_kwargs)
        self.processor = BlipProcessor.from_pretrained(source, **pretrained_kwargs)
        self.model = self._prepare(model)

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
        return {k: v.to(self._device) for k, v in inputs.items()}

    def _forward(self, inputs: dict[str, torch.Tensor], max_new_tokens: int) -> torch.Tensor:
        # BLIP's generate swaps the prompt's [CLS] for its decoder bos and drops the trailing [SEP]
        with torch.inference_mode():
            return self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)[0]

    def postprocess(self, token_ids: torch.Tensor) -> str:
        with self._tokenizer_lock:
            return self.processor.decode(token_ids.cpu(), skip_special_tokens=True).strip()
