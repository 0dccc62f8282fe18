"""Training-time augmentation (random resized crop, flip, colour jitter) with kornia, and the model's normalisation."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def input_size(processor) -> tuple[int, int]:
    """The (height, width) the model's processor feeds it: its crop size, else its fixed or shortest-edge size."""
    for name in ("crop_size", "size"):
        size = getattr(processor, name, None)
        if size is None:
            continue
        get = size.get if isinstance(size, dict) else lambda key, s=size: getattr(s, key, None)
        if get("height") and get("width"):
            return int(get("height")), int(get("width"))
        if get("shortest_edge"):
            return int(get("shortest_edge")), int(get("shortest_edge"))
    return 224, 224


def make_augmenter(size: tuple[int, int], seed: int):
    """A kornia pipeline of random resized crop, horizontal flip and colour jitter to size, seeded once."""
    import kornia.augmentation as K

    torch.manual_seed(seed)  # kornia draws from torch's generator: a seeded run repeats its crops
    return K.AugmentationSequential(
        K.RandomResizedCrop(size, scale=(0.6, 1.0)),
        K.RandomHorizontalFlip(),
        K.ColorJitter(0.3, 0.3, 0.3, 0.05, p=0.8),
    )


def to_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB PIL image as a float tensor (3, H, W) in [0, 1]."""
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)


def normalize(batch: torch.Tensor, processor) -> torch.Tensor:
    """Apply the processor's mean/std to a [0, 1] batch, as its own normalise step would."""
    if not getattr(processor, "do_normalize", True):
        return batch
    mean = torch.tensor(processor.image_mean, dtype=batch.dtype).view(1, -1, 1, 1)
    std = torch.tensor(processor.image_std, dtype=batch.dtype).view(1, -1, 1, 1)
    return (batch - mean) / std


def augmented_pixels(images: list[Image.Image], augmenter, processor) -> torch.Tensor:
    """pixel_values for a batch of images, each randomly cropped, flipped and jittered."""
    views = [augmenter(to_tensor(im)[None])[0] for im in images]  # sizes differ until the crop
    return normalize(torch.stack(views), processor)


def plain_pixels(images: list[Image.Image], processor) -> torch.Tensor:
    """pixel_values for a batch exactly as serving prepares them (the processor's own resize and crop)."""
    return processor(images=[im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]
