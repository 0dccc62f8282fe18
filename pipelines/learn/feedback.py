"""Collected feedback as a labelled image folder: thumbs up keeps the predicted label, a correction gives the right
one, a thumbs down alone is left out; one row per image (sha256), the latest feedback winning, conflicts reported."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

from ..log import eventlog, sql

# Every classified request with a kept image and a verdict, with the time of that latest verdict.
_ROWS = f"""
    SELECT p.id AS prediction_id, p.image_sha256 AS sha256, p.image_file, c.label AS predicted, c.model_version,
           f.verdict, f.corrected_label, fb.created_at AS feedback_at
    FROM predictions p
    JOIN outputs c ON c.prediction_id = p.id AND c.task = 'classify'
    JOIN ({sql.latest_feedback(("verdict", "corrected_label", "verdict_id"))}) f ON f.prediction_id = p.id
    JOIN feedback fb ON fb.id = f.verdict_id
    WHERE p.image_file IS NOT NULL
    ORDER BY fb.created_at"""


def _folder_name(label: str) -> str:
    # a label becomes a class folder: no path separators, no leading dot
    return re.sub(r"[/\\\\:\0]", "_", label).strip().lstrip(".") or "_"


def labelled(rows: list[dict]) -> tuple[dict[str, dict], list[dict]]:
    """One row per sha256 (its latest labelled feedback) and the images whose feedback disagrees on the label."""
    chosen: dict[str, dict] = {}
    seen: dict[str, list[dict]] = {}
    for row in rows:  # oldest first: a later row replaces an earlier one
        label = row["corrected_label"] or (row["predicted"] if row["verdict"] == "up" else None)
        if not label:
            continue  # a thumbs down without the right label says what it is not, not what it is
        row = row | {"label": label, "source": "correction" if row["corrected_label"] else "up"}
        seen.setdefault(row["sha256"], []).append(row)
        chosen[row["sha256"]] = row
    conflicts = [{"sha256": sha, "labels": sorted({r["label"] for r in rs}), "chosen": chosen[sha]["label"],
                  "prediction_ids": [r["prediction_id"] for r in rs]}
                 for sha, rs in seen.items() if len({r["label"] for r in rs}) > 1]
    for sha, row in chosen.items():
        row["prediction_ids"] = [r["prediction_id"] for r in seen[sha]]
    return chosen, conflicts


def export(db: str | Path, images_dir: str | Path, out: str | Path) -> dict:
    """Write out/<label>/<sha256>.png, out/manifest.csv and out/conflicts.json; returns counts."""
    eventlog.require_log(db)
    with eventlog.reader(db) as con:  # plain tuples: a DataFrame would turn a missing label into NaN
        cursor = con.execute(_ROWS)
        names = [d[0] for d in cursor.description]
        rows = [dict(zip(names, values)) for values in cursor.fetchall()]
    chosen, conflicts = labelled(rows)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    missing = 0
    written = []
    for sha, row in chosen.items():
        source = Path(images_dir) / row["image_file"]
        if not source.is_file():
            missing += 1  # deleted since (a visitor's "delete my data", retention)
            continue
        target = out / _folder_name(row["label"]) / f"{sha}{source.suffix}"
        target.parent.mkdir(exist_ok=True)
        shutil.copyfile(source, target)
        written.append(row | {"file": str(target.relative_to(out))})
    with open(out / "manifest.csv", "w", newline="") as fh:
        fields = ["file", "label", "source", "sha256", "prediction_id", "prediction_ids", "predicted",
                  "model_version", "feedback_at"]
        writer = csv.DictWriter(fh, fields, extrasaction="ignore")
        writer.writeheader()
        for row in written:
            writer.writerow(row | {"prediction_ids": " ".join(row["prediction_ids"])})
    (out / "conflicts.json").write_text(json.dumps(conflicts, indent=1))
    return {"images": len(written), "conflicts": len(conflicts), "missing_images": missing,
            "left_out": len(rows) - sum(len(r["prediction_ids"]) for r in chosen.values())}
