"""Phone-size photos: intake and both models' preprocessing with the reduced decode against full size."""

from __future__ import annotations

import io
from pathlib import Path

from bench.common import Timer, md_table, summary

PHONE = (4032, 3024)  # a 12 MP phone camera


def _phone_jpeg(path: Path) -> bytes:
    """A sample photo scaled up to a phone camera's size, as a quality-92 JPEG."""
    from PIL import Image

    with Image.open(path) as im:
        big = im.convert("RGB").resize(PHONE, Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    big.save(buf, "JPEG", quality=92)
    return buf.getvalue()


def bench_large_photos(vit: Path, blip: Path, paths: list[Path], runs: int = 3) -> dict:
    """Median ms of intake, classifier and captioner preprocessing per phone-size photo, reduced vs full size."""
    import numpy as np
    from transformers import AutoImageProcessor, BlipProcessor

    from pipelines.intake import Limits, load_image

    vit_processor = AutoImageProcessor.from_pretrained(vit)
    blip_processor = BlipProcessor.from_pretrained(blip)
    files = [_phone_jpeg(p) for p in paths]
    ways = {"reduced": Limits(), "full": Limits(work_side=0)}
    times = {way: {"intake": [], "classifier_preprocess": [], "caption_preprocess": []} for way in ways}
    worst_level = 0.0
    for data in files:
        pixels = {}
        for _ in range(runs):
            for way, limits in ways.items():
                with Timer() as t:
                    image = load_image(data, limits).image
                times[way]["intake"].append(t.ms)
                with Timer() as t:
                    pixels[way] = vit_processor(images=image, return_tensors="np")["pixel_values"]
                times[way]["classifier_preprocess"].append(t.ms)
                with Timer() as t:
                    blip_processor(images=image, return_tensors="np")
                times[way]["caption_preprocess"].append(t.ms)
        level = 1 / 255 / min(vit_processor.image_std)  # one grey level in the classifier's input units
        worst_level = max(worst_level, float(np.abs(pixels["reduced"] - pixels["full"]).max() / level))
    stats = {way: {stage: summary(v) for stage, v in stages.items()} for way, stages in times.items()}
    total = {way: round(sum(s["median"] for s in stages.values()), 1) for way, stages in stats.items()}
    return {"photos": len(files), "size": list(PHONE), "times_ms": stats, "total_ms": total,
            "speedup": round(total["full"] / total["reduced"], 2),
            "classifier_input_max_diff_grey_levels": round(worst_level, 2)}


def markdown(result: dict) -> list[str]:
    """The section of results.md."""
    s = result["times_ms"]
    rows = [[stage.replace("_", " "), s["full"][stage]["median"], s["reduced"][stage]["median"],
             f"{round(s['full'][stage]['median'] / s['reduced'][stage]['median'], 2)}x"] for stage in s["full"]]
    rows.append(["together", result["total_ms"]["full"], result["total_ms"]["reduced"], f"{result['speedup']}x"])
    w, h = result["size"]
    return ["", f"## Phone-size photos ({w}x{h} JPEG, {result['photos']} sample photos scaled up)", "",
            "Intake decodes large JPEGs at a reduced DCT scale (`Image.draft`) and box-reduces other large images, "
            "never below 768 px a side; the models then resize from that. The classifier's input differs from the "
            f"full-size path by at most {result['classifier_input_max_diff_grey_levels']} grey level(s).", "",
            md_table(["stage", "full size", "reduced", "ratio"], rows)]
