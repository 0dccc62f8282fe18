"""Images per second of the batch job (local Ray, batch sizes 1, 8 and 32) against a plain loop over the stock
transformers code, on the same photos and the real-size stand-in models (ViT-B/16, BLIP base), in one run.

    python -m bench.batch [--images 63] [--cpus 2] [--tokens 20] [--precision fp32]

The loop: `pipeline("image-classification")` then BLIP's processor and `generate` (the model card's code;
transformers 5 has no image-to-text pipeline), one photo after the other, in this process with every CPU as torch
threads. The job: `pipelines.batch` end to end (listing, reading, decoding through intake, both tasks, writing
Parquet) on a local Ray with --cpus CPUs, one model actor per CPU, each with one torch thread; its wall time
includes starting the actors and loading the models in each, which the loop pays once before it is timed. Both
hold captions to the same number of new tokens (random weights would otherwise stop at random lengths). Prints a
table and saves bench/out/batch.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import OUT, PHOTOS, machine, md_table, standins


def plain_loop(vit: Path, blip: Path, photos: list[Path], tokens: int) -> dict:
    """The stock code, one photo at a time: the classification pipeline, then BLIP's generate."""
    import torch
    from PIL import Image
    from transformers import BlipForConditionalGeneration, BlipProcessor, pipeline

    classify = pipeline("image-classification", model=str(vit), device="cpu")
    processor = BlipProcessor.from_pretrained(blip)
    captioner = BlipForConditionalGeneration.from_pretrained(blip).eval()

    def one(path: Path) -> None:
        image = Image.open(path).convert("RGB")
        classify(image)
        with torch.inference_mode():
            captioner.generate(**processor(images=image, return_tensors="pt"), max_new_tokens=tokens,
                               min_new_tokens=tokens)

    one(photos[0])  # warm-up: the first call allocates and picks kernels
    started = time.perf_counter()
    for path in photos:
        one(path)
    wall = time.perf_counter() - started
    return {"name": "plain loop (stock transformers)", "images": len(photos), "wall_s": round(wall, 2),
            "images_per_s": round(len(photos) / wall, 3)}


def batch_job(vit: Path, blip: Path, listing: Path, batch_size: int, tokens: int, precision: str) -> dict:
    """The batch job once, into a fresh OUT."""
    import pyarrow.dataset as pads

    from pipelines import settings
    from pipelines.batch import job as jobs

    config = settings.Settings(classifier=str(vit), captioner=str(blip), caption_max_tokens=tokens,
                               precision=precision, threads=1)
    out = Path(tempfile.mkdtemp(prefix="batch-bench-", dir=OUT)) / "out"
    started = time.perf_counter()
    summary = jobs.run(jobs.Job(input=str(listing), out=str(out), config=config, batch_size=batch_size),
                       progress=False)
    wall = time.perf_counter() - started
    rows = pads.dataset(out, format="parquet").to_table(columns=["timings_ms", "status"]).to_pylist()
    model_ms = [sum(v for k, v in json.loads(r["timings_ms"]).items() if k != "intake") for r in rows]
    return {"name": f"batch job, batch size {batch_size}", "images": summary.done, "errors": summary.errors,
            "wall_s": round(wall, 2), "images_per_s": round(summary.done / wall, 3),
            "model_ms_per_image": round(statistics.fmean(model_ms), 1)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=63, help="photos from the shared sample (default: all 63)")
    parser.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPUs of the local Ray")
    parser.add_argument("--tokens", type=int, default=20, help="new tokens per caption, both sides")
    parser.add_argument("--precision", default="fp32", help="the job's precision (the loop runs fp32)")
    parser.add_argument("--sizes", default="1,8,32")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    OUT.mkdir(parents=True, exist_ok=True)
    vit, blip = standins()
    photos = sorted(PHOTOS.glob("*.JPEG"))[: args.images]
    listing = OUT / "batch-bench-inputs.txt"
    listing.write_text("\n".join(map(str, photos)) + "\n")
    load = os.getloadavg()
    torch.set_num_threads(args.cpus)
    results = [plain_loop(vit, blip, photos, args.tokens)]
    print(results[-1], flush=True)
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    try:
        for size in (int(s) for s in args.sizes.split(",")):
            results.append(batch_job(vit, blip, listing, size, args.tokens, args.precision))
            print(results[-1], flush=True)
    finally:
        ray.shutdown()
    report = {"results": results, "images": len(photos), "tokens": args.tokens, "cpus": args.cpus,
              "precision": args.precision, "load_before": [round(x, 2) for x in load],
              "load_after": [round(x, 2) for x in os.getloadavg()], "machine": machine()}
    (OUT / "batch.json").write_text(json.dumps(report, indent=2) + "\n")
    print(md_table(["run", "images", "wall s", "images/s", "model ms/image"],
                   [[r["name"], r["images"], r["wall_s"], r["images_per_s"], r.get("model_ms_per_image", "")]
                    for r in results]))
    print(f"load average before {report['load_before']}, after {report['load_after']}")
    return report


if __name__ == "__main__":
    main()
