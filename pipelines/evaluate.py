"""`python -m pipelines.evaluate --model DIR --data DIR --out FILE`: a classifier's report on a labelled image folder."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .learn import data as datamod
from .learn.card import write_card
from .learn.metrics import probabilities, report


def evaluate(model_dir: str, data: str, batch_size: int = 16, progress: bool = True, card: bool = True) -> dict:
    """The report of model_dir on data (its test/ split when it has one, else every image); card updates README.md."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    splits = datamod.read_folder(data)
    examples = splits.get("test") or splits.get("all") or [e for v in splits.values() for e in v]
    model = AutoModelForImageClassification.from_pretrained(model_dir).eval()
    processor = AutoImageProcessor.from_pretrained(model_dir)
    labels = [str(model.config.id2label[i]) for i in range(model.config.num_labels)]
    result = report(probabilities(model, processor, examples, batch_size, progress), labels, examples)
    result["model"], result["data"] = str(model_dir), str(Path(data).resolve())
    if card and Path(model_dir).is_dir():
        record_file = Path(model_dir) / "training.json"
        record = json.loads(record_file.read_text()) if record_file.exists() else {}
        write_card(model_dir, result, record, dataset=Path(data).name)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.evaluate", description=__doc__)
    p.add_argument("--model", required=True, help="model folder (or hub id) to evaluate")
    p.add_argument("--data", required=True, help="labelled image folder: one subfolder per class")
    p.add_argument("--out", help="JSON file to write (default: print)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--no-card", action="store_true", help="do not write README.md into the model folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    try:
        result = evaluate(args.model, args.data, args.batch_size, not args.quiet, not args.no_card)
    except (datamod.DataError, ValueError, OSError) as exc:
        print(f"evaluate: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        print(f"accuracy {result['accuracy']:.4f} on {result['count']} images; wrote {args.out}")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
