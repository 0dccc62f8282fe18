"""`python -m pipelines.train --data DIR --base MODEL --out DIR`: fit a classifier on an image folder, save a loadable model."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from .learn import data as datamod
from .learn.card import write_card
from .learn.fit import MODES, FitParams, fit, load_base
from .learn.metrics import probabilities, report


def train(data: str, base: str, out: str, params: FitParams = FitParams(), val_fraction: float = 0.15,
          test_fraction: float = 0.15, progress: bool = True) -> dict:
    """Train on data from base into out; return the training record (also written to out/training.json)."""
    started = time.perf_counter()
    splits = datamod.split(datamod.read_folder(data), val_fraction, test_fraction, params.seed)
    everything = [e for examples in splits.values() for e in examples]
    labels = datamod.labels_of(everything)
    if len(labels) < 2:
        raise datamod.DataError(f"data folder {data!r} has {len(labels)} class folder(s); a classifier needs two or more.")
    torch.manual_seed(params.seed)  # the new head's first weights are drawn here
    model, processor = load_base(base, labels)
    history = fit(model, processor, splits, labels, params, progress)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    record = {
        "base_name": str(base), "data": str(Path(data).resolve()), "data_fingerprint": datamod.fingerprint(everything),
        "params": params.as_dict() | {"val_fraction": val_fraction, "test_fraction": test_fraction},
        "labels": labels, "split_sizes": {name: len(v) for name, v in splits.items()},
        "splits": {name: [[e.path, e.label] for e in v] for name, v in splits.items()},
        "epochs_run": len(history), "train_seconds": round(time.perf_counter() - started, 2),
    }
    (folder / "history.json").write_text(json.dumps(history, indent=1))
    if splits["test"]:
        evaluation = report(probabilities(model, processor, splits["test"], params.batch_size, progress),
                            labels, splits["test"])
        record["evaluation"] = evaluation | {"data": "held-out test split"}
        (folder / "evaluation.json").write_text(json.dumps(record["evaluation"], indent=1))
        write_card(folder, evaluation, record, dataset=f"{Path(data).name} (held-out test split)")
    (folder / "training.json").write_text(json.dumps(record, indent=1))
    return record


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipelines.train", description=__doc__)
    p.add_argument("--data", required=True, help="image folder: one subfolder per class (or train/ val/ test/ of those)")
    p.add_argument("--base", required=True, help="a Hugging Face image-classification model: hub id or folder")
    p.add_argument("--out", required=True, help="folder to save the trained model in")
    d = FitParams()
    p.add_argument("--mode", choices=MODES, default=d.mode,
                   help="probe: train only a new head on frozen features (default); partial: also the last "
                        "--unfreeze blocks; full: every weight")
    p.add_argument("--unfreeze", type=int, default=d.unfreeze, help="blocks of the backbone to train in partial mode")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=None, help="learning rate (default 1e-3 probe, 1e-4 fine-tune)")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--patience", type=int, default=d.patience, help="epochs without a better validation loss before stopping (0: never)")
    p.add_argument("--seed", type=int, default=d.seed, help="seeds the split, the augmentation and the weights")
    p.add_argument("--val-fraction", type=float, default=0.15)
    p.add_argument("--test-fraction", type=float, default=0.15)
    p.add_argument("--augment", action="store_true", help="random resized crop, flip and colour jitter (kornia)")
    p.add_argument("--augment-copies", type=int, default=d.augment_copies, help="augmented views per image in probe mode")
    p.add_argument("--class-weights", choices=("balanced", "none"), default=d.class_weights)
    p.add_argument("--device", default=d.device, help="auto, cpu or cuda")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    lr = args.lr if args.lr is not None else (1e-3 if args.mode == "probe" else 1e-4)
    params = FitParams(mode=args.mode, epochs=args.epochs, batch_size=args.batch_size, learning_rate=lr,
                       weight_decay=args.weight_decay, patience=args.patience, seed=args.seed, augment=args.augment,
                       augment_copies=args.augment_copies, class_weights=args.class_weights, unfreeze=args.unfreeze,
                       device=args.device)
    try:
        record = train(args.data, args.base, args.out, params, args.val_fraction, args.test_fraction, not args.quiet)
    except (datamod.DataError, ValueError, OSError) as exc:
        print(f"train: {exc}", file=sys.stderr)
        return 2
    ev = record.get("evaluation")
    print(f"saved {args.out}: {record['epochs_run']} epochs in {record['train_seconds']} s"
          + (f"; held-out accuracy {ev['accuracy']:.4f} on {ev['count']} images" if ev else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
