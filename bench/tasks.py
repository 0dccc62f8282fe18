"""Each task's cost through the recognizer, and the default request against the path before tasks existed.

    .venv/bin/python -m bench.tasks [--limit N] [--precision auto]

On the stand-ins (ViT-B/16 224, BLIP base 384, random weights): per photo, in turn and interleaved so load drifts
hit both alike, (a) the old path (intake, then the classifier and the captioner called directly, as the recognizer
did before the task registry) and (b) the recognizer's default request (classify + caption through the task loop),
both with no cache, then every task through the loop (classify, zero_shot on five labels, detect with D-FINE small,
caption, explain), and the resident memory with every task's model loaded. Also runs inside `make bench`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench.common import OUT, PHOTOS, Timer, machine, md_table, peak_rss_mb, photos, rss_mb, standins, summary
from bench.detect import standin as detect_standin
from bench.zero_shot import standin as zero_shot_standin

EVERY_TASK = ("classify", "zero_shot", "detect", "caption", "explain")
LABELS = ["a forklift", "a pallet", "an empty shelf", "a cat", "a cup of coffee"]



def bench_tasks(vit: Path, blip: Path, paths: list[Path], precision: str, tokens: int, rounds: int = 2) -> dict:
    """Median ms per task and of the default request, old path against the task loop, same process and photos."""
    from pipelines.intake import Limits, load_image
    from pipelines.recognizer import Recognizer
    from pipelines.tasks import Caption, Captioner, Classifier, Classify, ExplainTask
    from pipelines.tasks.detect import Detect, Detector
    from pipelines.tasks.zero_shot import ZeroShot, ZeroShotClassifier

    classifier = Classifier(vit, device="cpu", precision=precision).load()
    captioner = Captioner(blip, device="cpu", precision=precision, max_new_tokens=tokens,
                          min_new_tokens=tokens).load()  # equal lengths: the caption's cost does not vary by photo
    detector = Detector(detect_standin("dfine_s_coco"), device="cpu", precision=precision).load()
    zero_shot = ZeroShotClassifier(zero_shot_standin("siglip2-base-patch32-256"), device="cpu",
                                   precision=precision).load()
    recognizer = Recognizer({"classify": Classify(classifier), "zero_shot": ZeroShot(zero_shot),
                             "detect": Detect(detector), "caption": Caption(captioner),
                             "explain": ExplainTask(classifier)}, Limits(), cache_size=0)
    options = {"zero_shot": {"labels": LABELS}}
    recognizer.recognize(paths[0], tasks=EVERY_TASK, options=options)  # the float copy, CAM target, label embeddings
    memory = {"rss_mb_every_task_loaded": round(rss_mb(), 1), "peak_rss_mb": round(peak_rss_mb(), 1)}
    limits = Limits()
    times: dict[str, list[float]] = {"old_path": [], "default_request": [], **{name: [] for name in EVERY_TASK}}
    def old_path(path: Path) -> None:  # the recognizer before the registry: intake, classifier, captioner
        image = load_image(path, limits).image
        classifier(image)
        captioner(image)

    ways = {"old_path": old_path, "default_request": recognizer.recognize}
    for round_ in range(rounds):
        for i, path in enumerate(paths):
            order = list(ways) if (round_ + i) % 2 == 0 else list(reversed(ways))  # neither always goes first
            for way in order:
                with Timer() as t:
                    ways[way](path)
                times[way].append(t.ms)
            result = recognizer.recognize(path, tasks=EVERY_TASK, options=options)
            for name in EVERY_TASK:
                times[name].append(result["runs"][name]["ms"])
    stats = {name: summary(values) for name, values in times.items()}
    memory["peak_rss_mb"] = round(peak_rss_mb(), 1)
    return {"photos": len(paths), "rounds": rounds, "memory": memory,
            "precision": {"classify": classifier.precision, "zero_shot": zero_shot.precision,
                          "detect": detector.precision, "caption": captioner.precision, "explain": "fp32"},
            "caption_tokens": tokens, "times_ms": stats,
            "default_over_old": round(stats["default_request"]["median"] / stats["old_path"]["median"], 3)}


def markdown(result: dict) -> list[str]:
    """The section of results.md."""
    t = result["times_ms"]
    rows = [[name, result["precision"].get(name, ""), t[name]["median"], t[name]["p90"]] for name in EVERY_TASK]
    rows += [["default request (classify + caption), task loop", "", t["default_request"]["median"],
              t["default_request"]["p90"]],
             ["the same, old path (models called directly)", "", t["old_path"]["median"], t["old_path"]["p90"]]]
    return ["", "## Tasks", "",
            f"{result['photos']} photos x {result['rounds']} rounds, no cache, captions of {result['caption_tokens']} "
            f"tokens; zero_shot on five labels (their text side cached), detect with the D-FINE small stand-in; explain "
            f"on a float32 copy of the classifier (Grad-CAM, one forward and one backward pass).", "",
            md_table(["task", "precision", "median ms", "p90 ms"], rows), "",
            f"Default request through the task loop / old path: **{result['default_over_old']}x** (medians, same "
            f"process, interleaved photo by photo). Resident memory with every task's model loaded: "
            f"{result['memory']['rss_mb_every_task_loaded']} MB (peak {result['memory']['peak_rss_mb']} MB)."]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.tasks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=Path, default=PHOTOS)
    parser.add_argument("--limit", type=int, default=8, help="photos to use (default: 8)")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=OUT / "tasks.json")
    args = parser.parse_args(argv)
    from pipelines.models.precision import configure_threads

    configure_threads(0)
    vit, blip = standins()
    started = time.perf_counter()
    result = bench_tasks(vit, blip, photos(args.photos)[:args.limit], args.precision, args.tokens, args.rounds)
    result["machine"] = machine()
    result["seconds"] = round(time.perf_counter() - started, 1)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("\n".join(markdown(result)))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
