"""Image folders (one subfolder per class): listing, a seeded stratified split, a fingerprint, and image loading."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..intake import ImageRejected, load_image

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
SPLIT_NAMES = {"train": "train", "val": "validation", "valid": "validation", "validation": "validation",
               "test": "test"}


@dataclass(frozen=True)
class Example:
    """One labelled image file."""

    path: str
    label: str


class DataError(ValueError):
    """The data folder cannot be used; the message says why in one sentence."""


def _class_images(folder: Path) -> list[Example]:
    examples = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for file in sorted(sub.rglob("*")):
            if file.is_file() and file.suffix.lower() in IMAGE_SUFFIXES:
                examples.append(Example(str(file), sub.name))
    return examples


def read_folder(data: str | Path) -> dict[str, list[Example]]:
    """The examples of an image folder by split: {"all": [...]} or, when it holds train/val/test, those splits."""
    root = Path(data).expanduser()
    if not root.is_dir():
        raise DataError(f"data folder {str(data)!r} does not exist or is not a folder.")
    subs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    names = {p.name.lower() for p in subs}
    if subs and "train" in names and names <= set(SPLIT_NAMES):
        splits = {SPLIT_NAMES[p.name.lower()]: _class_images(p) for p in subs}
    else:
        splits = {"all": _class_images(root)}
    if not any(splits.values()):
        raise DataError(f"data folder {str(data)!r} holds no images in class subfolders (one folder per class).")
    return splits


def labels_of(examples: list[Example]) -> list[str]:
    """The sorted class names present in examples."""
    return sorted({e.label for e in examples})


def split(splits: dict[str, list[Example]], val_fraction: float, test_fraction: float,
          seed: int) -> dict[str, list[Example]]:
    """train/validation/test lists: the folder's own splits, with any missing one carved from train, seeded."""
    from sklearn.model_selection import train_test_split

    pool = list(splits.get("all") or splits.get("train") or [])
    out = {"validation": list(splits.get("validation", [])), "test": list(splits.get("test", []))}
    wanted = {name: fraction for name, fraction in (("test", test_fraction), ("validation", val_fraction))
              if not out[name] and fraction > 0}
    remaining = 1.0
    for name, fraction in wanted.items():
        share = fraction / remaining  # of what is left after the previous carve
        labels = [e.label for e in pool]
        stratify = labels if min(labels.count(x) for x in set(labels)) >= 2 else None
        try:
            pool, out[name] = train_test_split(pool, test_size=share, random_state=seed, stratify=stratify)
        except ValueError as exc:
            raise DataError(f"cannot carve a {name} split of {fraction:g} from {len(pool)} images: {exc}") from exc
        remaining -= fraction
    out["train"] = pool
    if not out["train"]:
        raise DataError("the training split is empty; add images or lower --val-fraction/--test-fraction.")
    return out


def fingerprint(examples: list[Example]) -> str:
    """A sha256 over every file's label and content, in a fixed order: the same data gives the same print."""
    digest = hashlib.sha256()
    for e in sorted(examples, key=lambda e: (e.label, Path(e.path).name, e.path)):
        digest.update(e.label.encode() + b"\0" + hashlib.sha256(Path(e.path).read_bytes()).digest())
    return digest.hexdigest()


def open_image(path: str) -> Image.Image:
    """The RGB image at path, through the same checks as an upload (hostile files are refused in one sentence)."""
    try:
        return load_image(path).image
    except ImageRejected as exc:
        raise DataError(f"{path}: {exc}") from exc
