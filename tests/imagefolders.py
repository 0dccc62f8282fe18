"""Small generated image folders (one subfolder per class) for the training and evaluation tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30), "white": (240, 240, 240),
           "black": (10, 10, 10), "yellow": (230, 220, 20)}


def make_folder(root: Path, counts: dict[str, int], seed: int = 0, size: int = 40) -> Path:
    """root/<class>/<n>.png: noisy solid-colour photos, a class per colour name in counts."""
    rng = np.random.default_rng(seed)
    for label, count in counts.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for n in range(count):
            pixels = np.clip(np.array(COLOURS[label]) + rng.normal(0, 25, (size, size + 8, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(root / label / f"{label}-{n}.png")
    return root
