"""Train on the real hymenoptera photos from the real MobileNetV2: held-out accuracy and time, beside a logistic
regression on the same frozen features and split. `python -m bench.hymenoptera` (prints, saves bench/out/hymenoptera.json)."""

from __future__ import annotations

import json
import platform
import sys
import time

import torch

from bench.common import OUT, ROOT
from pipelines.learn import augment, data as datamod
from pipelines.learn.fit import FitParams, head_inputs, head_modules, load_base
from pipelines.train import train

DATA = ROOT.parent / "shared" / "data" / "hymenoptera" / "train"
BASE = ROOT.parent / "shared" / "models" / "mobilenet_v2_1.0_224"


def logistic_baseline(seed: int = 0) -> float:
    """scikit-learn's LogisticRegression on the frozen features of the same seeded train+validation/test split."""
    from sklearn.linear_model import LogisticRegression

    splits = datamod.split(datamod.read_folder(DATA), 0.15, 0.15, seed)
    labels = datamod.labels_of(splits["train"])
    model, processor = load_base(str(BASE), labels)
    head = getattr(model.eval(), head_modules(model)[0])

    def feats(examples):
        return torch.cat([head_inputs(model, head, augment.plain_pixels([datamod.open_image(e.path)], processor))
                          for e in examples]).numpy()

    fit_on = splits["train"] + splits["validation"]
    clf = LogisticRegression(max_iter=2000).fit(feats(fit_on), [e.label for e in fit_on])
    return float(clf.score(feats(splits["test"]), [e.label for e in splits["test"]]))


def main() -> None:
    runs = {"probe": FitParams(), "probe+augment": FitParams(augment=True),
            "partial+augment": FitParams(mode="partial", augment=True, learning_rate=1e-4, epochs=6, unfreeze=2)}
    only = sys.argv[1:] or list(runs)
    results = {"machine": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads()}
    for name in only:
        started = time.perf_counter()
        record = train(str(DATA), str(BASE), str(OUT / f"hymenoptera-{name}"), runs[name], progress=False)
        ev = record["evaluation"]
        results[name] = {"accuracy": ev["accuracy"], "test_images": ev["count"], "ece": ev["ece"],
                         "epochs": record["epochs_run"], "seconds": round(time.perf_counter() - started, 1)}
        print(name, results[name], flush=True)
    started = time.perf_counter()
    results["logistic_regression"] = {"accuracy": logistic_baseline(), "seconds": round(time.perf_counter() - started, 1)}
    print("logistic_regression", results["logistic_regression"])
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "hymenoptera.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
