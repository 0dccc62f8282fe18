"""The explain task: its payload's contract on a tiny ViT, and its faithfulness on the real MobileNetV2."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from pipelines.tasks.explain import Explain, crop_box

ROOT = Path(__file__).resolve().parent.parent
MOBILENET = ROOT.parent / "shared" / "models" / "mobilenet_v2_1.0_224"
PHOTOS = ROOT.parent / "shared" / "data" / "imagenet-sample"

GREY_FRACTION = 0.2  # share of the pixels the model sees that each mask greys
SHIFTS = 1  # random placements of the same shape per photo (more only slows the test; 63 photos average it)
PASS_FRACTION = 0.6  # "most photos": the heatmap's mask must beat its shifted copies on at least this share


def photos() -> list[Image.Image]:
    files = sorted(p for p in PHOTOS.iterdir() if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    return [ImageOps.exif_transpose(Image.open(p)).convert("RGB") for p in files]


def view_cells(processor, size: tuple[int, int], grid: tuple[int, int]) -> np.ndarray:
    """Which grid cells of the photo the model sees (their centres inside the processor's crop)."""
    (width, height), (rows, cols) = size, grid
    left, top, right, bottom = crop_box(processor, width, height)
    xs = (np.arange(cols) + 0.5) * width / cols
    ys = (np.arange(rows) + 0.5) * height / rows
    return (ys[:, None] >= top) & (ys[:, None] < bottom) & (xs[None] >= left) & (xs[None] < right)


def top_cells(heat: np.ndarray, view: np.ndarray) -> np.ndarray:
    """The GREY_FRACTION of the seen cells that heat ranks highest, as a boolean mask (ties by position)."""
    k = max(1, round(GREY_FRACTION * view.sum()))
    ranked = np.where(view, heat, -np.inf).ravel()
    mask = np.zeros(heat.size, bool)
    mask[np.argsort(-ranked, kind="stable")[:k]] = True
    return mask.reshape(heat.shape)


def shifted(mask: np.ndarray, view: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The same shape moved to a random place within the seen cells (rolled, so its area stays exactly the same).

    Within the seen cells only: greying pixels the model never sees changes nothing, which would flatter any map.
    """
    rows, cols = np.nonzero(view.any(axis=1))[0], np.nonzero(view.any(axis=0))[0]
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    out = np.zeros_like(mask)
    inner = mask[r0:r1, c0:c1]
    out[r0:r1, c0:c1] = np.roll(inner, (rng.integers(inner.shape[0]), rng.integers(inner.shape[1])), axis=(0, 1))
    return out


def greyed(image: Image.Image, mask: np.ndarray, grey: np.ndarray) -> Image.Image:
    """image with the pixels under mask's cells set to grey."""
    pixels = np.array(image)
    cells = np.array(Image.fromarray(mask.astype(np.uint8) * 255).resize(image.size, Image.NEAREST)) > 0
    pixels[cells] = grey
    return Image.fromarray(pixels)


def probabilities(model, processor, images: list[Image.Image], index: int) -> list[float]:
    """The probability of class index for each image, through the processor and model as the classifier runs."""
    inputs = processor(images=images, return_tensors="pt")
    with torch.inference_mode():
        return torch.softmax(model(**inputs).logits.float(), -1)[:, index].tolist()


def deletion_drops(explain: Explain, images: list[Image.Image], seed: int = 0) -> dict[str, list[tuple[float, float]]]:
    """Per map kind and photo: (drop greying the map's top cells, mean drop greying the same shape moved at random).

    Kinds: "heatmap" (the explanation), "noise" (uniform noise) and "blob" (a fixed disc at the photo's centre);
    the last two are the controls that must not pass.
    """
    rng = np.random.default_rng(seed)
    model, processor = explain.model, explain.processor
    grey = np.round(np.array(processor.image_mean) * 255).astype(np.uint8)  # the processor's mean: zero input
    drops: dict[str, list[tuple[float, float]]] = {"heatmap": [], "noise": [], "blob": []}
    for image in images:
        payload = explain(image)
        heat = np.array(payload["heatmap"])
        rows, cols = heat.shape
        view = view_cells(processor, image.size, (rows, cols))
        yy, xx = np.mgrid[0:rows, 0:cols]
        maps = {"heatmap": heat, "noise": rng.random(heat.shape),
                "blob": -(((yy + 0.5) / rows - 0.5) ** 2 + ((xx + 0.5) / cols - 0.5) ** 2)}
        masks = []
        for kind, values in maps.items():
            mask = top_cells(values, view)
            masks += [mask] + [shifted(mask, view, rng) for _ in range(SHIFTS)]
        index = explain.labels.index(payload["label"])
        base, *rest = probabilities(model, processor, [image] + [greyed(image, m, grey) for m in masks], index)
        for i, kind in enumerate(maps):
            own, *moved = rest[i * (SHIFTS + 1):(i + 1) * (SHIFTS + 1)]
            drops[kind].append((base - own, base - statistics.fmean(moved)))
    return drops


def verdict(pairs: list[tuple[float, float]], prior: list[float]) -> dict:
    """Mean drops, the shares of photos where the map beat its shifted copies and the centre prior, and the bar.

    Beating random shifts alone does not tell an explanation from a centre prior: ImageNet subjects sit in the
    middle, so a fixed centred blob beats its shifts too. So the bar also asks the map to beat that blob.
    """
    own = [p[0] for p in pairs]
    moved = [p[1] for p in pairs]
    wins = sum(o > m for o, m in zip(own, moved)) / len(pairs)
    beats_prior = sum(o > b for o, b in zip(own, prior)) / len(pairs)
    passes = (wins >= PASS_FRACTION and statistics.fmean(own) > statistics.fmean(moved)
              and beats_prior >= PASS_FRACTION and statistics.fmean(own) > statistics.fmean(prior))
    return {"drop": statistics.fmean(own), "drop_shifted": statistics.fmean(moved), "wins": wins,
            "beats_blob": beats_prior, "passes": passes}


@pytest.fixture(scope="module")
def mobilenet_explain():
    if not (MOBILENET / "model.safetensors").is_file():
        pytest.skip(f"the real MobileNetV2 is not at {MOBILENET}")
    from pipelines.tasks.classify import Classifier

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a busy 2-core machine one thread is several times faster than two
    try:
        yield Explain.from_classifier(Classifier(MOBILENET, device="cpu", precision="fp32"))
    finally:
        torch.set_num_threads(threads)


def test_heatmap_is_faithful_and_noise_and_blob_are_not(mobilenet_explain):
    images = photos()
    assert len(images) >= 60
    drops = deletion_drops(mobilenet_explain, images)
    blob = [p[0] for p in drops["blob"]]
    result = {kind: verdict(pairs, blob) for kind, pairs in drops.items()}
    print({k: {n: round(v, 4) if isinstance(v, float) else v for n, v in r.items()} for k, r in result.items()})
    assert result["heatmap"]["passes"], result["heatmap"]
    # the same bar must refuse maps that carry no explanation, or it proves nothing
    assert not result["noise"]["passes"], result["noise"]
    assert result["noise"]["wins"] < PASS_FRACTION  # noise loses to its own shifted copies, not only to the blob
    assert not result["blob"]["passes"], result["blob"]


def test_label_is_the_classifiers_top_label(mobilenet_explain):
    from pipelines.tasks.classify import Classifier

    classifier = Classifier(MOBILENET, device="cpu", precision="fp32")
    for image in photos()[:5]:
        assert mobilenet_explain(image)["label"] == classifier(image, top_k=1)[0]["label"]


def test_crop_box_matches_the_processor(mobilenet_explain):
    """The photo cut at crop_box and resized to the model's input equals what the processor gives the model."""
    processor = mobilenet_explain.processor
    image = photos()[0]
    left, top, right, bottom = crop_box(processor, *image.size)
    assert 0 < left < right < image.width and 0 <= top < bottom <= image.height  # a 4:3 photo loses its sides
    ours = image.resize((224, 224), Image.BILINEAR, box=(left, top, right, bottom))
    theirs = processor(images=image, return_tensors="pt")["pixel_values"][0]
    ours = (torch.from_numpy(np.array(ours)).permute(2, 0, 1).float() / 255 - 0.5) / 0.5
    assert (ours - theirs).abs().mean() < 0.05  # same region: only resampling differs


def test_outside_the_crop_is_zero(mobilenet_explain):
    image = photos()[0]
    payload = mobilenet_explain(image)
    heat = np.array(payload["heatmap"])
    view = view_cells(mobilenet_explain.processor, image.size, heat.shape)
    assert not view[:, 0].any() and not view[:, -1].any()  # the crop cuts the photo's sides
    assert heat[:, 0].max() < 0.05 and heat[:, -1].max() < 0.05
    assert heat[view].max() == 1.0


def test_int8_classifier_is_explained_on_float_weights():
    if not (MOBILENET / "model.safetensors").is_file():
        pytest.skip(f"the real MobileNetV2 is not at {MOBILENET}")
    from pipelines.models import precision as prec
    from pipelines.tasks.classify import Classifier

    if not prec.int8_available():
        pytest.skip("this torch build has no int8 kernels")
    classifier = Classifier(MOBILENET, device="cpu", precision="int8").load()
    explain = Explain.from_classifier(classifier)
    assert all(p.dtype == torch.float32 for p in explain.model.parameters())
    assert explain.model is not classifier.model
    payload = explain(photos()[1])
    assert max(map(max, payload["heatmap"])) == 1.0


@pytest.mark.parametrize("size", [(200, 100), (100, 200), (64, 64)])
def test_payload_contract_on_tiny_vit(tiny_classifier_dir, size):
    from pipelines.tasks.classify import Classifier

    classifier = Classifier(tiny_classifier_dir, device="cpu", precision="fp32")
    explain = Explain.from_classifier(classifier)
    rng = np.random.default_rng(size[0])
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    payload = explain(image)
    assert set(payload) == {"label", "heatmap", "grid"}
    assert payload["label"] == classifier(image, top_k=1)[0]["label"]
    rows, cols = payload["grid"]
    assert max(rows, cols) <= Explain.settings["grid_size"]
    assert len(payload["heatmap"]) == rows and all(len(r) == cols for r in payload["heatmap"])
    values = [v for r in payload["heatmap"] for v in r]
    assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in values)
    assert abs(cols / rows - size[0] / size[1]) < 0.1  # a 2:1 photo gives a grid twice as wide as tall
    assert explain._target.kind == "tokens"  # the ViT route: the last block's input norm, reshaped to patches
    assert max(values) == 1.0  # Grad-CAM found positive evidence somewhere
    assert len(json.dumps(payload)) < 12_000  # the log stores a small grid, never the photo


def test_explains_inside_a_callers_inference_mode(tiny_classifier_dir):
    from pipelines.tasks.classify import Classifier

    explain = Explain.from_classifier(Classifier(tiny_classifier_dir, device="cpu", precision="fp32"))
    image = Image.new("RGB", (48, 40), (200, 30, 30))
    with torch.inference_mode():
        payload = explain(image)
    assert payload["grid"] == [27, 32]


def test_class_attributes_for_a_registry():
    assert Explain.name == "explain"
    assert Explain.default_model and Explain.settings["grid_size"] == 32
    assert set(Explain.output) == {"label", "heatmap", "grid"}


def test_explains_the_label_it_is_given(tiny_classifier_dir):
    from pipelines.tasks.classify import Classifier

    classifier = Classifier(tiny_classifier_dir, device="cpu", precision="fp32")
    explain = Explain.from_classifier(classifier)
    image = Image.new("RGB", (40, 40), (30, 200, 30))
    last = classifier(image, top_k=10)[-1]["label"]  # the least likely label: not what the model would pick
    assert explain(image, label=last)["label"] == last
    with pytest.raises(ValueError, match="no such label"):
        explain(image, label="not a label")
