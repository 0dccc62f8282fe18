"""Exports of the log for people and tools outside it."""

from __future__ import annotations

import os
from pathlib import Path

from pipelines import eventlog

# Each prediction with its latest verdict, corrected label and edited caption.
EXPORT_SQL = """
SELECT p.*, f.verdict, f.corrected_label, e.edited_caption
FROM predictions p
LEFT JOIN (SELECT prediction_id, arg_max(verdict, created_at) AS verdict,
                  arg_max_null(corrected_label, created_at) AS corrected_label
           FROM feedback WHERE verdict IS NOT NULL GROUP BY prediction_id) f ON f.prediction_id = p.id
LEFT JOIN (SELECT prediction_id, arg_max(edited_caption, created_at) AS edited_caption
           FROM feedback WHERE edited_caption IS NOT NULL GROUP BY prediction_id) e ON e.prediction_id = p.id
ORDER BY p.created_at
"""


def to_parquet(db: str | os.PathLike, folder: str | os.PathLike) -> Path:
    """Write the log's predictions with their latest feedback to FOLDER/imagerec-log.parquet."""
    target = Path(folder) / "imagerec-log.parquet"
    with eventlog.reader(db) as con:
        con.execute(f"COPY ({EXPORT_SQL}) TO '{_quote(target)}' (FORMAT parquet)")
    return target


def _quote(path: Path) -> str:
    return str(path).replace("'", "''")
