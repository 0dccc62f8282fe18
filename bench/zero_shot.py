"""`python -m bench.zero_shot`: CPU ms of candidate zero-shot models (stand-ins of real shape, random weights)."""

from __future__ import annotations

import argparse
import json
import time

import torch

from bench.common import OUT, built, load_average, machine, md_table, photos, rss_mb, summary
from pipelines.models.precision import release_freed_memory

LABELS = ("a forklift", "a pallet", "an empty shelf", "a cat", "a cup of coffee")
# Published zero-shot ImageNet-1k top-1 (%) of the real checkpoints and their licences. CLIP B/32 and SigLIP B/16:
# open_clip's docs/openclip_results.csv (commit f862f86c, "ImageNet 1k" column, rows "ViT-B-32,openai" and
# "ViT-B-16-SigLIP,webli"); SigLIP 2: big_vision's configs/proj/image_text/README_siglip2.md ("INet 0-shot").
PUBLISHED = {
    "clip-vit-base-patch32": {"id": "openai/clip-vit-base-patch32", "imagenet_zero_shot": 63.3,
                              "license": "none on the hub repo (code MIT); card: deployed use out of scope"},
    "siglip-base-patch16-224": {"id": "google/siglip-base-patch16-224", "imagenet_zero_shot": 76.0,
                                "license": "Apache-2.0; its tokenizer needs sentencepiece (not installed)"},
    "siglip2-base-patch16-224": {"id": "google/siglip2-base-patch16-224", "imagenet_zero_shot": 78.2,
                                 "license": "Apache-2.0"},
    "siglip2-base-patch32-256": {"id": "google/siglip2-base-patch32-256", "imagenet_zero_shot": 74.0,
                                 "license": "Apache-2.0"},
}


def standin(name: str):
    """The stand-in folder for a candidate, built once."""
    from devtools.standins import make_standin_zero_shot

    return built(OUT / "models" / f"zs-{name}", lambda folder: make_standin_zero_shot(folder, name))


def parameters(module: torch.nn.Module) -> float:
    """Millions of weights, int8 linear layers included (they hold packed weights, not parameters)."""
    from pipelines.models.precision import Int8Linear

    packed = sum(m.in_features * m.out_features + m.out_features for m in module.modules() if isinstance(m, Int8Linear))
    return round((sum(p.numel() for p in module.parameters()) + packed) / 1e6, 1)


def time_model(name: str, images, runs: int, precision: str) -> dict:
    """ms for a new label set (text tower, then image) and for a repeated one (image tower only), warm."""
    from pipelines.tasks.zero_shot import ZeroShotClassifier

    folder = standin(name)
    before = rss_mb()
    model = ZeroShotClassifier(folder, device="cpu", precision=precision).load()
    loaded_mb = rss_mb() - before  # resident memory the loaded model added (weights mapped or copied)
    net = model.model
    model(images[0], LABELS)  # warm: first-call allocations
    new_set, repeated = [], []
    for i, image in enumerate(images[:runs]):
        fresh = tuple(f"{label} {i}" for label in LABELS)  # unseen: the text tower runs
        start = time.perf_counter()
        model(image, fresh)
        new_set.append((time.perf_counter() - start) * 1000)
        start = time.perf_counter()
        model(image, fresh)
        repeated.append((time.perf_counter() - start) * 1000)
    result = {"precision": model.precision, "rss_added_mb": round(loaded_mb), "params_m": parameters(net), "vision_params_m": parameters(net.vision_model),
            "text_params_m": parameters(net.text_model), "new_label_set_ms": summary(new_set),
            "repeated_label_set_ms": summary(repeated)}
    del model, net
    release_freed_memory()  # the next candidate's memory figure starts from what this one gave back
    return result


def classify_ms(images, runs: int, precision: str) -> dict:
    """ms of the default classify task (ViT-B/16 stand-in) on the same photos: the scale a zero-shot model adds to."""
    from bench.explain import vit_standin
    from pipelines.tasks.classify import Classifier

    classifier = Classifier(vit_standin(), device="cpu", precision=precision).load()
    classifier(images[0])
    times = []
    for image in images[:runs]:
        start = time.perf_counter()
        classifier(image)
        times.append((time.perf_counter() - start) * 1000)
    return {"precision": classifier.precision, "classify_ms": summary(times)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10, help="photos timed per model")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core box)")
    parser.add_argument("--precision", default="fp32", help="fp32, bf16, int8 or auto")
    parser.add_argument("--models", nargs="*", default=list(PUBLISHED), help="candidates to time")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from PIL import Image, ImageOps

    images = [ImageOps.exif_transpose(Image.open(p)).convert("RGB") for p in photos()[: args.runs]]
    result = {"machine": machine(), "threads": args.threads, "labels": len(LABELS), "load_before": load_average(),
              "models": {}}
    for name in args.models:
        result["models"][name] = {**PUBLISHED[name], **time_model(name, images, args.runs, args.precision)}
    result["classifier"] = classify_ms(images, args.runs, args.precision)
    result["load_after"] = load_average()
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"zero_shot-{args.precision}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    print(md_table(["model", "params (M): all / vision / text", "RSS added (MB)", "precision",
                    "repeated label set ms (median)",
                    "new label set of 5 ms (median)", "zero-shot ImageNet top-1 %", "license"],
                   [[m["id"], f"{m['params_m']} / {m['vision_params_m']} / {m['text_params_m']}", m["rss_added_mb"],
                     m["precision"],
                     m["repeated_label_set_ms"]["median"], m["new_label_set_ms"]["median"], m["imagenet_zero_shot"],
                     m["license"]] for m in result["models"].values()]))
    print(f"For scale, the classify task (ViT-B/16 stand-in, {result['classifier']['precision']}) on the same photos: "
          f"{result['classifier']['classify_ms']['median']} ms median.")


if __name__ == "__main__":
    main()
