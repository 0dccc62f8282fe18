"""A separate writer process for the log tests: logs predictions and prints each id once acknowledged.

    python -m tests.logwriter DB COUNT INTERVAL_S
"""

from __future__ import annotations

import sys
import time
import uuid
from datetime import datetime, timezone

from pipelines.log.eventlog import EventLog
from pipelines.log.rows import prediction_rows

CLASSIFIER = "google/vit-base-patch16-224@3f49326"
CAPTIONER = "Salesforce/blip-image-captioning-base@82a3b3c"


def sample_result(i: int, labels: list[str] | None = None, caption: str | None = None,
                  created_at: datetime | None = None, image_file: str | None = None) -> dict:
    """A recognizer result in the shape the recognizer returns (classify and caption); the index makes it traceable."""
    labels = labels or ["tabby", "tiger cat"]
    scored = [{"label": label, "score": score} for label, score in zip(labels, (0.7, 0.2, 0.05, 0.03, 0.02))]
    caption = f"a cat number {i}" if caption is None else caption
    runs = {}
    for task, version, ms in (("classify", CLASSIFIER, 2.0), ("caption", CAPTIONER, 3.0)):
        model_id, _, revision = version.partition("@")
        runs[task] = {"model": version, "model_id": model_id, "revision": revision, "precision": "fp32", "ms": ms,
                      "cached": False}
    return {"id": uuid.uuid4().hex, "created_at": (created_at or datetime.now(timezone.utc).replace(tzinfo=None)).isoformat(),
            "labels": scored, "caption": caption, "prompt": None,
            "timings_ms": {"intake": 1.0, "classify": 2.0, "caption": 3.0, "total": 6.0}, "cached": False,
            "image_file": image_file, "image": {"sha256": f"{i:064x}", "width": 640, "height": 480}, "models": {},
            "outputs": {"classify": {"model": CLASSIFIER, "labels": scored},
                        "caption": {"model": CAPTIONER, "caption": caption, "prompt": None}},
            "runs": runs}


def sample_row(i: int, session_id: str | None = "writer", source: str = "test", **result) -> dict:
    """The log's rows for a small prediction (pipelines.log.rows.prediction_rows of sample_result)."""
    return prediction_rows(sample_result(i, **result), source=source, session_id=session_id)


def main() -> None:
    db, count, interval = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    log = EventLog(db, flush_interval=0.1).open()
    worst = 0.0
    for i in range(count):
        t = time.perf_counter()
        prediction_id = log.log_prediction(sample_row(i))
        worst = max(worst, time.perf_counter() - t)
        print(prediction_id, flush=True)
        if interval:
            time.sleep(interval)
    log.close()
    print(f"done worst_log_s={worst:.4f} flush_failures={log.flush_failures}", flush=True)


if __name__ == "__main__":
    main()
