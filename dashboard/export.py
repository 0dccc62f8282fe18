"""Filtered rows as CSV or Parquet bytes for the download buttons."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq


def to_csv(table: pa.Table) -> bytes:
    """CSV with a header row; timestamps in ISO format."""
    buf = io.BytesIO()
    pcsv.write_csv(table, buf)
    return buf.getvalue()


def to_parquet(table: pa.Table) -> bytes:
    """Parquet keeps the list columns as lists and the timestamps as timestamps."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()
