"""A schema-2 log as the code before schema 3 wrote it: the shipped migrations 1-2, rows in the shape its
`prediction_row` gave, feedback, and a journal line still pending (written, never moved into DuckDB).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import duckdb

from pipelines.log import sql


# Copied literally from pipelines/recognizer.py at commit 9f4cd9f (schema 2): the wide row the log stored.
def prediction_row(result: dict, source: str, session_id: str | None = None) -> dict:
    """The log's `predictions` row for a recognizer result."""
    labels = result["labels"]
    timings = result["timings_ms"]
    models = result["models"]
    return {
        "id": result["id"],
        "created_at": datetime.fromisoformat(result["created_at"]),
        "image_sha256": result["image"]["sha256"],
        "width": result["image"]["width"],
        "height": result["image"]["height"],
        "classifier": models["classifier"]["id"],
        "classifier_revision": models["classifier"]["revision"],
        "captioner": models["captioner"]["id"],
        "captioner_revision": models["captioner"]["revision"],
        "labels": [item["label"] for item in labels],
        "scores": [float(item["score"]) for item in labels],
        "top1_label": labels[0]["label"] if labels else None,
        "top1_score": float(labels[0]["score"]) if labels else None,
        "caption": result["caption"],
        "prompt": result["prompt"],
        "intake_ms": timings.get("intake"),
        "classify_ms": timings.get("classify"),
        "caption_ms": timings.get("caption"),
        "total_ms": timings.get("total"),
        "cached": result["cached"],
        "source": source,
        "session_id": session_id,
        "image_file": result.get("image_file"),
        "classifier_precision": models["classifier"].get("precision"),
        "captioner_precision": models["captioner"].get("precision"),
    }


V2_COLUMNS = (  # schema 2's predictions columns, in order
    "id", "created_at", "image_sha256", "width", "height", "classifier", "classifier_revision",
    "captioner", "captioner_revision", "labels", "scores", "top1_label", "top1_score", "caption",
    "prompt", "intake_ms", "classify_ms", "caption_ms", "total_ms", "cached", "source", "session_id",
    "image_file", "classifier_precision", "captioner_precision",
)
T0 = datetime(2026, 3, 1, 12, 0, 0)
VIT = ("google/vit-base-patch16-224", "3f49326")
VIT_OLD = ("google/vit-base-patch16-224", "synthetic-older")
LOCAL = ("../shared/models/mobilenet_v2_1.0_224", None)  # a folder logged without a revision
BLIP = ("Salesforce/blip-image-captioning-base", "82a3b3c")


def result(i: int, classifier=VIT, captioner=BLIP, labels=(("tabby", 0.7), ("tiger cat", 0.2)),
           caption: str | None = "a cat on a sofa", prompt: str | None = None, precision=("fp32", "fp16")) -> dict:
    """A recognizer result of the schema-2 code (its `models` and top-level labels and caption)."""
    return {
        "id": f"v2-{i:04d}", "created_at": (T0 + timedelta(minutes=i)).isoformat(),
        "labels": [{"label": label, "score": score} for label, score in labels], "caption": caption,
        "prompt": prompt, "timings_ms": {"intake": 1.0 + i, "classify": 10.0 + i, "caption": 100.0 + i,
                                         "total": 111.0 + 3 * i},
        "cached": i % 5 == 0, "image_file": None, "image": {"sha256": f"{i:064x}", "width": 640, "height": 480},
        "models": {"classifier": {"id": classifier[0], "revision": classifier[1], "precision": precision[0]},
                   "captioner": {"id": captioner[0], "revision": captioner[1], "precision": precision[1]}},
    }


def results() -> list[dict]:
    """Requests that cover what schema 2 held: two classifier versions, a folder without revision, a prompt,
    a caption not made (None), no labels at all, and a label with a comma and a quote."""
    return [
        result(0),
        result(1, prompt="a photo of", caption="a photo of a cat"),
        result(2, classifier=VIT_OLD, labels=(("beagle", 0.55), ("pug", 0.3), ("tabby", 0.1))),
        result(3, classifier=LOCAL, precision=("int8", None)),
        result(4, caption=None),
        result(5, labels=()),
        result(6, labels=(('tabby, tabby cat', 0.9), ('say "cheese"', 0.05))),
    ]


def _insert(con: duckdb.DuckDBPyConnection, row: dict) -> None:
    columns = [c for c in V2_COLUMNS if c in row]
    con.execute(f"INSERT INTO predictions ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})",
                [row[c] for c in columns])


def build(db: Path) -> dict:
    """Write a schema-2 log at `db` with a pending journal line; returns what it wrote, for the assertions."""
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at TIMESTAMP NOT NULL, "
                "description VARCHAR)")
    for version, description, statements in sql.MIGRATIONS[:2]:  # the shipped migrations, as they shipped
        for statement in statements:
            con.execute(statement)
        con.execute("INSERT INTO schema_migrations VALUES (?, now(), ?)", [version, description])
    rows = [prediction_row(r, source="upload", session_id=f"s{i % 2}") for i, r in enumerate(results())]
    for row in rows:
        _insert(con, row)
    feedback = [
        ("f1", "v2-0000", T0 + timedelta(minutes=1), "down", "tiger cat", None),
        ("f2", "v2-0000", T0 + timedelta(minutes=2), None, None, "a cat asleep on a sofa"),
        ("f3", "v2-0002", T0 + timedelta(minutes=3), "up", None, None),
    ]
    con.executemany("INSERT INTO feedback VALUES (?, ?, ?, ?, ?, ?)", feedback)
    con.close()
    # A prediction acknowledged (in the journal) but not yet in DuckDB when the old writer stopped; the line is
    # exactly what its EventLog._append wrote: {"table": "predictions", "row": {...}}.
    pending = prediction_row(result(7, classifier=VIT_OLD, prompt="a picture of", caption="a picture of a dog",
                                    labels=(("beagle", 0.8),)), source="example", session_id=None)
    line = json.dumps({"table": "predictions", "row": pending},
                      default=lambda v: v.isoformat(), ensure_ascii=False) + "\n"
    db.with_name(db.name + ".journal").write_text(line)
    return {"rows": rows + [pending], "feedback": feedback}
