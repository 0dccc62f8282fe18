"""A separate writer process for the log tests: logs predictions and prints each id once acknowledged.

    python -m tests.logwriter DB COUNT INTERVAL_S
"""

from __future__ import annotations

import sys
import time

from pipelines.log.eventlog import EventLog


def sample_row(i: int) -> dict:
    """A small prediction row; the index makes it traceable."""
    return {"image_sha256": f"{i:064x}", "width": 640, "height": 480, "labels": ["tabby", "tiger cat"],
            "scores": [0.7, 0.2], "top1_label": "tabby", "top1_score": 0.7, "caption": f"a cat number {i}",
            "intake_ms": 1.0, "classify_ms": 2.0, "caption_ms": 3.0, "total_ms": 6.0, "cached": False,
            "source": "test", "session_id": "writer"}


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
