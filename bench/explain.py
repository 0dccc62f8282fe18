"""`python -m bench.explain`: ms per explanation (MobileNetV2, ViT-B/16 stand-in) and the faithfulness figures."""

from __future__ import annotations

import argparse
import json
import time

import torch

from bench.common import OUT, ROOT, load_average, machine, md_table, photos, summary

MOBILENET = ROOT.parent / "shared" / "models" / "mobilenet_v2_1.0_224"


def vit_standin():
    """The ViT-B/16 stand-in folder, built once (the classifier half of bench.common.standins, without BLIP)."""
    from devtools.standins import make_standin_classifier

    folder = OUT / "models" / "vit-b16-224"
    if not (folder / "model.safetensors").is_file():
        make_standin_classifier(folder)
    return folder


def time_explain(folder, images, runs: int) -> dict:
    """Milliseconds per explanation (warm), over runs photos, and the classify ms on the same photos for scale."""
    from pipelines.tasks.classify import Classifier
    from pipelines.tasks.explain import Explain

    classifier = Classifier(folder, device="cpu", precision="fp32")
    explain = Explain.from_classifier(classifier)
    explain(images[0])  # warm: finds the target layer, first-call allocations
    classifier(images[0])
    explain_ms, given_ms, classify_ms = [], [], []
    for image in images[:runs]:
        start = time.perf_counter()
        explain(image)
        explain_ms.append((time.perf_counter() - start) * 1000)
        start = time.perf_counter()
        top = classifier(image, top_k=1)[0]["label"]
        classify_ms.append((time.perf_counter() - start) * 1000)
        start = time.perf_counter()
        explain(image, label=top)  # as a recognizer would call it: the shown label, no extra forward pass
        given_ms.append((time.perf_counter() - start) * 1000)
    return {"layer": explain._target.name, "explain_ms": summary(explain_ms), "explain_given_label_ms":
            summary(given_ms), "classify_ms": summary(classify_ms)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10, help="photos timed per model")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core box)")
    parser.add_argument("--no-faithfulness", action="store_true", help="skip the 63-photo deletion test")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from PIL import Image, ImageOps

    images = [ImageOps.exif_transpose(Image.open(p)).convert("RGB") for p in photos()]
    result = {"machine": machine(), "threads": args.threads, "load_before": load_average(), "timing": {}}
    for name, folder in (("mobilenet_v2_1.0_224", MOBILENET), ("vit-b16-224 stand-in", vit_standin())):
        result["timing"][name] = time_explain(folder, images, args.runs)
    if not args.no_faithfulness:
        from pipelines.tasks.classify import Classifier
        from pipelines.tasks.explain import Explain
        from tests.test_explain import deletion_drops, verdict

        drops = deletion_drops(Explain.from_classifier(Classifier(MOBILENET, device="cpu", precision="fp32")), images)
        blob = [p[0] for p in drops["blob"]]
        result["faithfulness"] = {kind: verdict(pairs, blob) for kind, pairs in drops.items()}
    result["load_after"] = load_average()
    print(json.dumps(result, indent=1))
    rows = [[n, t["layer"], t["explain_ms"]["median"], t["explain_ms"]["p90"], t["explain_given_label_ms"]["median"],
             t["classify_ms"]["median"]] for n, t in result["timing"].items()]
    print(md_table(["model", "layer explained", "explain ms (median)", "explain ms (p90)",
                    "explain ms, label given (median)", "classify ms (median)"], rows))
    if "faithfulness" in result:
        print(md_table(["map", "mean drop", "mean drop, same shape moved", "photos beating the move",
                        "photos beating the blob", "passes"],
                       [[k, round(v["drop"], 3), round(v["drop_shifted"], 3), f"{v['wins']:.0%}",
                         f"{v['beats_blob']:.0%}", v["passes"]] for k, v in result["faithfulness"].items()]))


if __name__ == "__main__":
    main()
