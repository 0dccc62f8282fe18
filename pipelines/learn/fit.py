"""Fitting a Hugging Face image classifier to an image folder: linear probe, partial or full fine-tune."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, asdict

import numpy as np
import torch
from tqdm.auto import tqdm

from . import augment
from .data import Example, open_image

MODES = ("probe", "partial", "full")


@dataclass
class FitParams:
    """How to fit: every knob the CLI exposes, recorded with the model version."""

    mode: str = "probe"
    epochs: int = 30
    batch_size: int = 16
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 5
    seed: int = 0
    augment: bool = False
    augment_copies: int = 2
    class_weights: str = "balanced"
    unfreeze: int = 2
    device: str = "auto"

    def as_dict(self) -> dict:
        return asdict(self)


def load_base(base: str, labels: list[str]):
    """The base model with a fresh head for labels (kept as is when its labels are exactly these), and its processor."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification, AutoConfig

    config = AutoConfig.from_pretrained(base)
    same = [str(config.id2label[i]) for i in range(config.num_labels)] == labels
    kwargs = {} if same else dict(id2label=dict(enumerate(labels)),
                                  label2id={name: i for i, name in enumerate(labels)},
                                  ignore_mismatched_sizes=True)
    model = AutoModelForImageClassification.from_pretrained(base, **kwargs)
    return model, AutoImageProcessor.from_pretrained(base)


def head_modules(model) -> list[str]:
    """Names of the top-level modules outside the backbone that hold weights: the classification head."""
    return [name for name, child in model.named_children()
            if name != model.base_model_prefix and any(True for _ in child.parameters())]


def _group(name: str) -> str:
    # a parameter's block: up to its first numeric index ("vit.encoder.layer.1"), else its module path
    parts = name.split(".")
    for i, part in enumerate(parts):
        if re.fullmatch(r"\d+", part):
            return ".".join(parts[: i + 1])
    return ".".join(parts[:-1])


def set_trainable(model, mode: str, unfreeze: int) -> list[str]:
    """Freeze what the mode leaves fixed; return the names of the trainable parameters."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}.")
    heads = tuple(f"{h}." for h in head_modules(model))
    groups = list(dict.fromkeys(_group(n) for n, _ in model.named_parameters() if not n.startswith(heads)))
    # partial: the last `unfreeze` numbered blocks and whatever follows them (final norms, last convolutions)
    blocks = [i for i, g in enumerate(groups) if g.rsplit(".", 1)[-1].isdigit()]
    start = blocks[-unfreeze] if mode == "partial" and 0 < unfreeze <= len(blocks) else (
        0 if mode == "partial" and unfreeze > len(blocks) else len(groups))
    opened = set(groups[start:])
    for name, param in model.named_parameters():
        param.requires_grad = mode == "full" or name.startswith(heads) or _group(name) in opened
    return [n for n, p in model.named_parameters() if p.requires_grad]


def class_weight_tensor(train: list[Example], labels: list[str], how: str) -> torch.Tensor | None:
    """Per-class loss weights: scikit-learn's "balanced" (n / (k * count)), or None for plain loss."""
    if how == "none":
        return None
    from sklearn.utils.class_weight import compute_class_weight

    y = [e.label for e in train]
    present = np.array(sorted(set(y)))
    weights = dict(zip(present, compute_class_weight(how, classes=present, y=y)))
    return torch.tensor([weights.get(label, 0.0) for label in labels], dtype=torch.float32)


def _batches(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


class _EarlyStop:
    """Keeps the trainable weights of the epoch with the lowest validation loss; says when patience runs out."""

    def __init__(self, patience: int):
        self.patience, self.best, self.bad, self.state, self.epoch = patience, float("inf"), 0, None, 0

    def update(self, epoch: int, loss: float, module: torch.nn.Module) -> bool:
        if loss < self.best - 1e-6:
            self.best, self.bad, self.epoch = loss, 0, epoch
            self.state = copy.deepcopy({k: v.detach().cpu() for k, v in module.state_dict().items()})
            return False
        self.bad += 1
        return self.patience > 0 and self.bad >= self.patience


def fit(model, processor, splits: dict[str, list[Example]], labels: list[str], params: FitParams,
        progress: bool = True) -> list[dict]:
    """Train model in place on splits["train"], early-stopping on splits["validation"]; the per-epoch history."""
    torch.manual_seed(params.seed)
    set_trainable(model, params.mode, params.unfreeze)
    heads = head_modules(model)
    weights = class_weight_tensor(splits["train"], labels, params.class_weights)
    if params.mode == "probe" and len(heads) == 1:
        return _fit_probe(model, getattr(model, heads[0]), processor, splits, labels, params, weights, progress)
    return _fit_loop(model, processor, splits, labels, params, weights, progress)


def _targets(examples: list[Example], labels: list[str]) -> torch.Tensor:
    index = {label: i for i, label in enumerate(labels)}
    return torch.tensor([index[e.label] for e in examples])


def head_inputs(model, head: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """What the frozen backbone hands the head for pixels (captured at the head's input, so any architecture works)."""
    seen = []
    hook = head.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    try:
        with torch.inference_mode():
            model(pixel_values=pixels)
    finally:
        hook.remove()
    return seen[0].clone()


def _features(model, head, processor, examples: list[Example], params: FitParams, augmenter, copies: int,
              progress: bool, what: str) -> tuple[torch.Tensor, list[int]]:
    model.eval()
    feats, order = [], []
    bar = tqdm(total=len(examples) * (1 + copies), desc=f"features ({what})", disable=not progress, unit="img")
    for batch in _batches(list(range(len(examples))), params.batch_size):
        images = [open_image(examples[i].path) for i in batch]
        views = [augment.plain_pixels(images, processor)]
        views += [augment.augmented_pixels(images, augmenter, processor) for _ in range(copies)]
        for pixels in views:
            feats.append(head_inputs(model, head, pixels))
            order.extend(batch)
            bar.update(len(batch))
    bar.close()
    return torch.cat(feats), order


def _fit_probe(model, head, processor, splits, labels, params, weights, progress) -> list[dict]:
    """Linear probe: the backbone runs once per image (and per augmented copy); only the head trains, on those features."""
    augmenter = augment.make_augmenter(augment.input_size(processor), params.seed) if params.augment else None
    copies = params.augment_copies if params.augment else 0
    x, order = _features(model, head, processor, splits["train"], params, augmenter, copies, progress, "train")
    y = _targets(splits["train"], labels)[order]
    val = splits.get("validation") or []
    if val:
        vx, vorder = _features(model, head, processor, val, params, None, 0, progress, "validation")
        vy = _targets(val, labels)[vorder]
    loss_fn = torch.nn.CrossEntropyLoss(weight=weights)
    optimizer = torch.optim.AdamW(head.parameters(), lr=params.learning_rate, weight_decay=params.weight_decay)
    generator = torch.Generator().manual_seed(params.seed)
    stop, history = _EarlyStop(params.patience), []
    for epoch in tqdm(range(1, params.epochs + 1), desc="epochs", disable=not progress):
        head.train()
        total, correct, seen = 0.0, 0, 0
        for idx in torch.randperm(len(y), generator=generator).split(params.batch_size):
            logits = head(x[idx])
            loss = loss_fn(logits, y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(-1) == y[idx]).sum())
            seen += len(idx)
        row = {"epoch": epoch, "train_loss": total / seen, "train_accuracy": correct / seen}
        if val:
            head.eval()
            with torch.no_grad():
                logits = head(vx)
            row.update(val_loss=float(loss_fn(logits, vy)), val_accuracy=float((logits.argmax(-1) == vy).float().mean()))
        history.append(row)
        if val and stop.update(epoch, row["val_loss"], head):
            break
    if stop.state is not None:
        head.load_state_dict(stop.state)
    model.eval()
    return history


def _freeze_norms(model) -> None:
    # frozen blocks keep their batch-norm statistics: a module with weights, none of them trainable, stays in eval
    for module in model.modules():
        params = list(module.parameters(recurse=False))
        if params and not any(p.requires_grad for p in params):
            module.eval()


def _fit_loop(model, processor, splits, labels, params, weights, progress) -> list[dict]:
    """Fine-tune (partial or full, or a probe on a model whose head is not one module) with accelerate."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=params.device == "cpu")
    augmenter = augment.make_augmenter(augment.input_size(processor), params.seed) if params.augment else None
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=params.learning_rate, weight_decay=params.weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)
    loss_fn = torch.nn.CrossEntropyLoss(weight=None if weights is None else weights.to(accelerator.device))
    train, val = splits["train"], splits.get("validation") or []
    rng = np.random.default_rng(params.seed)
    stop, history = _EarlyStop(params.patience), []
    unwrapped = accelerator.unwrap_model(model)
    for epoch in tqdm(range(1, params.epochs + 1), desc="epochs", disable=not progress):
        model.train()
        _freeze_norms(unwrapped)
        total, correct, seen = 0.0, 0, 0
        order = [train[i] for i in rng.permutation(len(train))]
        for batch in tqdm(list(_batches(order, params.batch_size)), desc=f"epoch {epoch}", leave=False,
                          disable=not progress):
            images = [open_image(e.path) for e in batch]
            pixels = (augment.augmented_pixels(images, augmenter, processor) if augmenter
                      else augment.plain_pixels(images, processor)).to(accelerator.device)
            y = _targets(batch, labels).to(accelerator.device)
            logits = model(pixel_values=pixels).logits
            loss = loss_fn(logits, y)
            optimizer.zero_grad()
            accelerator.backward(loss)
            optimizer.step()
            total += float(loss.detach()) * len(batch)
            correct += int((logits.argmax(-1) == y).sum())
            seen += len(batch)
        row = {"epoch": epoch, "train_loss": total / seen, "train_accuracy": correct / seen}
        if val:
            vloss, vacc = _validate(model, processor, val, labels, params, loss_fn, accelerator.device)
            row.update(val_loss=vloss, val_accuracy=vacc)
        history.append(row)
        if val and stop.update(epoch, row["val_loss"], unwrapped):
            break
    if stop.state is not None:
        unwrapped.load_state_dict(stop.state)
    unwrapped.eval()
    return history


def _validate(model, processor, val, labels, params, loss_fn, device) -> tuple[float, float]:
    model.eval()
    total, correct = 0.0, 0
    with torch.no_grad():
        for batch in _batches(val, params.batch_size):
            pixels = augment.plain_pixels([open_image(e.path) for e in batch], processor).to(device)
            y = _targets(batch, labels).to(device)
            logits = model(pixel_values=pixels).logits
            total += float(loss_fn(logits, y)) * len(batch)
            correct += int((logits.argmax(-1) == y).sum())
    return total / len(val), correct / len(val)
