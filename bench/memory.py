"""Load time and resident memory of both models at one precision, in a fresh process: `python -m bench.memory`.

Prints one JSON object: the resident memory after the imports, after each model loads and after one request
through the recognizer, the peak (ru_maxrss, which includes any spike while loading), and the load times.
"""

from __future__ import annotations

import argparse
import json
import time


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.memory")
    parser.add_argument("--classifier", required=True)
    parser.add_argument("--captioner", required=True)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--photo", required=True)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)

    import torch

    from bench.common import peak_rss_mb, rss_mb, rss_split_mb
    from pipelines.recognizer import Recognizer
    from pipelines.tasks import Caption, Captioner, Classifier, Classify

    if args.threads:
        torch.set_num_threads(args.threads)
    out = {"precision_asked": args.precision, "rss_mb": {"imports": round(rss_mb(), 1)}, "load_s": {}}
    classifier = Classifier(args.classifier, device="cpu", precision=args.precision)
    captioner = Captioner(args.captioner, device="cpu", precision=args.precision, max_new_tokens=args.tokens)
    for role, model in (("classifier", classifier), ("captioner", captioner)):
        start = time.perf_counter()
        model.load()
        out["load_s"][role] = round(time.perf_counter() - start, 2)
        out["rss_mb"][f"{role}_loaded"] = round(rss_mb(), 1)
    out["peak_rss_mb_loading"] = round(peak_rss_mb(), 1)
    recognizer = Recognizer({"classify": Classify(classifier), "caption": Caption(captioner)}, cache_size=0)
    result = recognizer.recognize(args.photo)
    out["rss_mb"]["after_request"] = round(rss_mb(), 1)
    out["rss_after_request_by_kind_mb"] = rss_split_mb()
    out["peak_rss_mb"] = round(peak_rss_mb(), 1)
    out["precision"] = {"classifier": classifier.precision, "captioner": captioner.precision}
    out["request_ms"] = result["timings_ms"]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
