"""`python -m bench.detect`: ms per photo of small real-time detectors (stand-ins at real size, random weights).

Each stand-in is built from its real configuration (devtools.standins.DETECTORS) and run through the project's own
path (Detector: the processor's 640x640 resize, the model, post-processing to the photo's frame) on the shared
photos after intake. Models take turns photo by photo, so a neighbour's load on a shared machine falls on all alike.
Figures go to stdout and bench/out/detect.json.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from bench.common import OUT, built, load_average, machine, md_table, photos, summary

# Published COCO val2017 AP at 640, parameters and GFLOPs, from the authors' model zoos.
PUBLISHED = {
    "rtdetr_r18vd": {"ap": 46.5, "params_m": 20, "gflops": 60,
                     "source": "RT-DETR paper (arXiv 2304.08069); github.com/lyuwenyu/RT-DETR README"},
    "rtdetr_v2_r18vd": {"ap": 48.1, "params_m": 20, "gflops": 60,
                        "source": "RT-DETRv2-S, github.com/lyuwenyu/RT-DETR rtdetrv2_pytorch/README.md"},
    "dfine_n_coco": {"ap": 42.8, "params_m": 4, "gflops": 7, "source": "D-FINE-N, github.com/Peterande/D-FINE"},
    "dfine_s_coco": {"ap": 48.5, "params_m": 10, "gflops": 25,
                     "source": "D-FINE-S, github.com/Peterande/D-FINE README (arXiv 2410.13842)"},
}


def standin(name: str):
    """The stand-in folder for one detector, built once."""
    from devtools.standins import make_standin_detector

    return built(OUT / "models" / f"detector-{name}", lambda folder: make_standin_detector(folder, name))


def main(argv=None) -> None:
    from devtools.standins import DETECTORS
    from pipelines.intake import load_image
    from pipelines.tasks.detect import Detector

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=8, help="photos timed per model")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (a free Space has 2 vCPUs)")
    parser.add_argument("--models", nargs="*", default=list(DETECTORS), choices=list(DETECTORS))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    images = [load_image(p).image for p in photos()[: args.runs]]
    detectors = {}
    for name in args.models:
        detector = Detector(standin(name), device="cpu", threshold=0.5, precision="fp32").load()
        detector(images[0])  # warm: first-call allocations
        detectors[name] = detector
    result = {"machine": machine(), "threads": args.threads, "input": "640x640", "load_before": load_average(),
              "models": {}}
    times: dict[str, list[float]] = {name: [] for name in detectors}
    for image in images:
        for name, detector in detectors.items():
            start = time.perf_counter()
            detector(image)
            times[name].append((time.perf_counter() - start) * 1000)
    result["load_after"] = load_average()
    for name, detector in detectors.items():
        params = sum(p.numel() for p in detector.model.parameters())
        weights_mb = (standin(name) / "model.safetensors").stat().st_size / 1e6  # fp32, as the hub's files
        result["models"][name] = {"hub_id": DETECTORS[name], "params_m": round(params / 1e6, 2),
                                  "weights_mb": round(weights_mb, 1),
                                  "ms": summary(times[name]), "published": PUBLISHED[name]}
    print(json.dumps(result, indent=1))
    rows = [[n, m["hub_id"], m["params_m"], m["weights_mb"], m["ms"]["median"], m["ms"]["p90"], m["published"]["ap"]]
            for n, m in result["models"].items()]
    print(md_table(["stand-in", "hub id", "params (M)", "weights (MB)", "ms (median)", "ms (p90)",
                    "COCO AP (published)"], rows))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "detect.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
