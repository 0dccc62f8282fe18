"""The evaluation report of a classifier on labelled images: scikit-learn metrics, top-5, calibration (ECE)."""

from __future__ import annotations

import re

import numpy as np
import torch
from tqdm.auto import tqdm

from . import augment
from .data import Example, open_image

OTHER = "(other)"  # column for predictions naming no class of the data (a model with other labels)
ECE_BINS = 15


def _plain(label: str) -> str:
    # "ant, emmet, pismire" and "crane (134)" match the folders "ant" and "crane"
    return re.sub(r"\s*\(\d+\)$", "", str(label)).split(",")[0].strip().lower()


def label_map(model_labels: list[str], data_labels: list[str]) -> list[int]:
    """For each model output, the index of the data label it names (exactly, else by plain name), or -1."""
    exact = {label: i for i, label in enumerate(data_labels)}
    plain = {_plain(label): i for i, label in enumerate(data_labels)}
    return [exact.get(str(m), plain.get(_plain(m), -1)) for m in model_labels]


def probabilities(model, processor, examples: list[Example], batch_size: int = 16,
                  progress: bool = False) -> np.ndarray:
    """Softmax scores (images x model labels), preprocessed exactly as serving does."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    with torch.inference_mode():
        for start in tqdm(range(0, len(examples), batch_size), desc="evaluate", disable=not progress):
            images = [open_image(e.path) for e in examples[start:start + batch_size]]
            logits = model(pixel_values=augment.plain_pixels(images, processor).to(device)).logits
            out.append(torch.softmax(logits.float(), dim=-1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.config.num_labels))


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE: the gap between confidence and accuracy, averaged over equal-width confidence bins by their share."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            total += mask.mean() * abs(confidence[mask].mean() - correct[mask].mean())
    return float(total)


def report(probs: np.ndarray, model_labels: list[str], examples: list[Example]) -> dict:
    """accuracy, top5_accuracy (5+ classes), per_class, labels, confusion_matrix (rows true), ece, count."""
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    data_labels = sorted({e.label for e in examples})
    mapping = np.array(label_map(model_labels, data_labels))
    ranked = np.argsort(-probs, axis=1)
    predicted = mapping[ranked[:, 0]]
    labels = data_labels + ([OTHER] if (predicted < 0).any() else [])
    index = {label: i for i, label in enumerate(labels)}
    y_true = np.array([index[e.label] for e in examples])
    y_pred = np.where(predicted < 0, index.get(OTHER, -1), predicted)
    ids = list(range(len(labels)))
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=ids, zero_division=0)
    result = {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "count": int(len(examples)),
        "labels": labels,
        "per_class": {label: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                              "support": int(support[i])} for i, label in enumerate(labels) if label != OTHER},
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=ids).tolist(),
        "ece": expected_calibration_error(probs.max(axis=1), (y_pred == y_true).astype(float)),
    }
    if len(data_labels) >= 5:
        top5 = mapping[ranked[:, :5]]
        result["top5_accuracy"] = float(np.mean([y in row for y, row in zip(y_true, top5)]))
    return result
