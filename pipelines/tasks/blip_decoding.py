"""Greedy BLIP caption decoding in one lean loop: the arithmetic of transformers' generate, without its overhead.

transformers' ``generate`` spends more time per token on its own machinery (cache objects, mask building, logits
processors, output classes) than a BLIP text decoder spends on its matrix products once they are int8: about 30 ms a
token here against about 10 of arithmetic. This loop calls the same modules (so every precision mode applies),
keeps the self-attention keys and values in one preallocated cache, computes the image's cross-attention keys and
values once per caption (every layer's in one product), takes each layer's query, key and value from one product, and
runs only the last position through the language-model head.

It covers plain greedy decoding of one image, which is all the captioner asks for; ``supports`` and
``plain_greedy`` say when it applies, and the captioner falls back to ``generate`` otherwise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipelines.models import precision as prec

# generation settings that change what greedy decoding picks; the loop implements none of them
_CHANGES_GREEDY = {"repetition_penalty": (None, 1.0), "no_repeat_ngram_size": (None, 0),
                   "encoder_repetition_penalty": (None, 1.0), "encoder_no_repeat_ngram_size": (None, 0),
                   "bad_words_ids": (None,), "suppress_tokens": (None,), "begin_suppress_tokens": (None,),
                   "forced_bos_token_id": (None,), "forced_eos_token_id": (None,), "sequence_bias": (None,),
                   "exponential_decay_length_penalty": (None,), "renormalize_logits": (None, False),
                   "num_beams": (None, 1), "do_sample": (None, False), "min_length": (None, 0),
                   "min_new_tokens": (None, 0)}


def plain_greedy(generation_config) -> bool:
    """Whether a generation config leaves greedy decoding as plain argmax with no minimum length."""
    return all(getattr(generation_config, name, None) in allowed for name, allowed in _CHANGES_GREEDY.items())


def _has(module: nn.Module, *paths: str) -> bool:
    for path in paths:
        target = module
        for part in path.split("."):
            if not hasattr(target, part):
                return False
            target = getattr(target, part)
    return True


_LAYER_PARTS = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                "attention.output.LayerNorm", "crossattention.self.query", "crossattention.self.key",
                "crossattention.self.value", "crossattention.output.dense", "crossattention.output.LayerNorm",
                "intermediate.dense", "intermediate.intermediate_act_fn", "output.dense", "output.LayerNorm")


def supports(model: nn.Module) -> bool:
    """Whether model is a BLIP captioner laid out as the one this loop was written against."""
    decoder = getattr(model, "text_decoder", None)
    if decoder is None or type(decoder).__name__ != "BlipTextLMHeadModel":
        return False
    if not _has(decoder, "bert.embeddings.word_embeddings", "bert.embeddings.position_embeddings",
                "bert.embeddings.LayerNorm", "bert.encoder.layer", "cls.predictions.transform.dense",
                "cls.predictions.transform.transform_act_fn", "cls.predictions.transform.LayerNorm",
                "cls.predictions.decoder"):
        return False
    config = decoder.config
    if getattr(config, "position_embedding_type", "absolute") != "absolute" or not config.is_decoder:
        return False
    return all(_has(layer, *_LAYER_PARTS) and getattr(layer, "chunk_size_feed_forward", 0) == 0
               for layer in decoder.bert.encoder.layer)


class _Attention:
    """One attention block's projections and its output sublayer (dense, residual, LayerNorm)."""

    def __init__(self, block: nn.Module):
        self.query, self.key, self.value = block.self.query, block.self.key, block.self.value
        self.heads = block.self.num_attention_heads
        self.head_dim = block.self.attention_head_size
        self.dense, self.norm = block.output.dense, block.output.LayerNorm

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """[1, n, heads * dim] -> [1, heads, n, dim]."""
        return x.view(1, x.shape[1], self.heads, self.head_dim).transpose(1, 2)

    def out(self, context: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        context = context.transpose(1, 2).reshape(residual.shape)
        return self.norm(self.dense(context) + residual)


class BlipGreedyDecoder:
    """Greedy decoding and teacher-forced logits for a BLIP captioner's text decoder, one image at a time."""

    def __init__(self, model: nn.Module):
        if not supports(model):
            raise ValueError("not a BLIP captioner this decoder knows")
        decoder = model.text_decoder
        self.config = decoder.config
        embeddings = decoder.bert.embeddings
        self.words, self.positions, self.embed_norm = (embeddings.word_embeddings, embeddings.position_embeddings,
                                                       embeddings.LayerNorm)
        self.layers = [(_Attention(layer.attention), _Attention(layer.crossattention), layer.intermediate,
                        layer.output) for layer in decoder.bert.encoder.layer]
        # each layer's self-attention query, key and value in one product, and every layer's cross-attention keys
        # and values over the image in one; None where the layers cannot be joined (then one product each)
        self.fused_qkv = [prec.concatenated([own.query, own.key, own.value]) for own, _, _, _ in self.layers]
        self.fused_cross = prec.concatenated([linear for _, cross, _, _ in self.layers
                                              for linear in (cross.key, cross.value)])
        head = decoder.cls.predictions
        self.head_dense, self.head_act, self.head_norm = (head.transform.dense, head.transform.transform_act_fn,
                                                          head.transform.LayerNorm)
        self.head_out = head.decoder
        self.bos = self.config.bos_token_id
        self.eos = self.config.sep_token_id
        self.max_positions = self.config.max_position_embeddings

    def prompt_ids(self, input_ids: torch.Tensor | None, device: torch.device) -> torch.Tensor:
        """The decoder's start: [bos] alone, or a processor's [CLS] prompt [SEP] as bos + prompt (as BLIP's generate)."""
        if input_ids is None:
            return torch.tensor([[self.bos]], dtype=torch.long, device=device)
        ids = input_ids[:, :-1].clone()
        ids[:, 0] = self.bos
        return ids

    def _cross(self, image_embeds: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each layer's cross-attention keys and values over the image, [1, heads, patches, dim], computed once."""
        crosses = [cross for _, cross, _, _ in self.layers]
        if self.fused_cross is None:
            pairs = [(cross.key(image_embeds), cross.value(image_embeds)) for cross in crosses]
        else:
            joined = self.fused_cross(image_embeds).split([c.heads * c.head_dim for c in crosses for _ in "kv"], -1)
            pairs = list(zip(joined[0::2], joined[1::2]))
        return [(cross.split(k).contiguous(), cross.split(v).contiguous()) for cross, (k, v) in zip(crosses, pairs)]

    @staticmethod
    def _qkv(own: _Attention, fused: nn.Module | None, hidden: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Self-attention query, key and value of hidden, each [1, heads, n, dim]."""
        if fused is None:
            return own.split(own.query(hidden)), own.split(own.key(hidden)), own.split(own.value(hidden))
        return tuple(own.split(part) for part in fused(hidden).chunk(3, dim=-1))

    def _run(self, ids: torch.Tensor, start: int, cache: list[tuple[torch.Tensor, torch.Tensor]],
             cross: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Hidden states [1, n, hidden] of ids [1, n] at positions start.., writing their keys and values to cache."""
        n = ids.shape[1]
        end = start + n
        hidden = self.embed_norm(self.words(ids) + self.positions.weight[start:end])
        # one query attends to every cached position; several (a prompt, from the start) attend causally
        causal = n > 1
        if causal and start != 0:
            raise ValueError("several tokens at once only from the start")
        for (own, crossed, intermediate, output), fused, (keys, values), (cross_k, cross_v) in zip(
                self.layers, self.fused_qkv, cache, cross):
            query, keys[:, :, start:end], values[:, :, start:end] = self._qkv(own, fused, hidden)
            context = F.scaled_dot_product_attention(query, keys[:, :, :end], values[:, :, :end], is_causal=causal)
            hidden = own.out(context, hidden)
            context = F.scaled_dot_product_attention(crossed.split(crossed.query(hidden)), cross_k, cross_v)
            hidden = crossed.out(context, hidden)
            hidden = output.LayerNorm(output.dense(intermediate.intermediate_act_fn(intermediate.dense(hidden)))
                                      + hidden)
        return hidden

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head_out(self.head_norm(self.head_act(self.head_dense(hidden))))

    def _cache(self, length: int, like: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        shape = lambda a: (1, a.heads, length, a.head_dim)  # noqa: E731
        return [(like.new_zeros(shape(own)), like.new_zeros(shape(own))) for own, _, _, _ in self.layers]

    def generate(self, image_embeds: torch.Tensor, ids: torch.Tensor, max_new_tokens: int,
                 min_new_tokens: int = 0) -> torch.Tensor:
        """ids [1, n] followed by up to max_new_tokens greedy tokens, ending at the first [SEP] after min_new_tokens."""
        if image_embeds.shape[0] != 1 or ids.shape[0] != 1:
            raise ValueError("one image at a time")
        max_new_tokens = min(max_new_tokens, self.max_positions - ids.shape[1])
        if max_new_tokens < 1:
            return ids[0]
        cache = self._cache(ids.shape[1] + max_new_tokens, image_embeds)
        cross = self._cross(image_embeds)
        tokens = ids[0].tolist()
        position, step = 0, ids
        for new in range(max_new_tokens):
            hidden = self._run(step, position, cache, cross)
            position += step.shape[1]
            logits = self._logits(hidden[:, -1])[0]
            if new < min_new_tokens:
                logits[self.eos] = float("-inf")
            token = int(logits.argmax())
            tokens.append(token)
            if token == self.eos:
                break
            step = ids.new_tensor([[token]])
        return ids.new_tensor(tokens)

    def teacher_forced_logits(self, image_embeds: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Next-token logits [n, vocab] at every position of ids [1, n], in one pass."""
        cache = self._cache(ids.shape[1], image_embeds)
        return self._logits(self._run(ids, 0, cache, self._cross(image_embeds)))[0].float()
