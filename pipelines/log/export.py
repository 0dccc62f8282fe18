"""Exports of the log for people and tools outside it."""

from __future__ import annotations

import os
import secrets
import shutil
import threading
import time
from pathlib import Path
from typing import Callable

from pipelines.log import eventlog, sql

# An export is for downloading now: one not fetched within this many seconds is removed.
EXPORT_TTL_S = 600.0

# Each request in the wide shape (sql.wide: today's column names, and each task's version) with its latest
# verdict, corrected label and edited caption (sql.latest_feedback).
EXPORT_SQL = sql.export_query()


def to_parquet(db: str | os.PathLike, folder: str | os.PathLike) -> Path:
    """Write the log's predictions with their latest feedback to FOLDER/imagerec-log.parquet."""
    target = Path(folder) / "imagerec-log.parquet"
    with eventlog.reader(db) as con:
        con.execute(f"COPY ({EXPORT_SQL}) TO '{_quote(target)}' (FORMAT parquet)")
    return target


def _quote(path: Path) -> str:
    return str(path).replace("'", "''")


class ExportShelf:
    """Export files on a short lease: each goes once downloaded, after `ttl` seconds, or when rows are deleted."""

    def __init__(self, folder: str | os.PathLike, ttl: float = EXPORT_TTL_S,
                 clock: Callable[[], float] = time.monotonic):
        self.folder = Path(folder)
        self.ttl = ttl
        self.clock = clock
        self._made: dict[str, float] = {}  # export file -> when it was written
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sweeper: threading.Thread | None = None
        self._sweep_leftovers()

    def _sweep_leftovers(self) -> None:
        """Remove exports a previous process left (killed before its sweep), once past the TTL."""
        cutoff = time.time() - self.ttl
        for folder in self.folder.glob("imagerec-export-*") if self.folder.is_dir() else ():
            try:
                if folder.is_dir() and folder.stat().st_mtime < cutoff:
                    shutil.rmtree(folder, ignore_errors=True)
            except OSError:
                pass

    def write(self, db: str | os.PathLike) -> Path:
        """Export the log into a new private folder named by a random token; returns the file."""
        self.sweep()
        folder = self.folder / f"imagerec-export-{secrets.token_hex(16)}"
        folder.mkdir(mode=0o700, parents=True)
        target = to_parquet(db, folder)
        with self._lock:
            self._made[os.path.realpath(target)] = self.clock()
        self._start_sweeper()
        return target

    def __contains__(self, path: object) -> bool:
        with self._lock:
            return os.path.realpath(str(path)) in self._made

    def __len__(self) -> int:
        with self._lock:
            return len(self._made)

    def downloaded(self, path: str) -> bool:
        """A file was served in full: remove it if it is one of ours."""
        return self._remove([os.path.realpath(path)]) > 0

    def sweep(self) -> int:
        """Remove exports older than the TTL; returns how many went."""
        now = self.clock()
        with self._lock:
            old = [p for p, made in self._made.items() if now - made >= self.ttl]
        return self._remove(old)

    def clear(self) -> int:
        """Remove every export (rows were deleted: no copy of them may stay); returns how many went."""
        with self._lock:
            every = list(self._made)
        return self._remove(every)

    def close(self) -> None:
        """Stop the sweeper and remove every export."""
        self._stop.set()
        self.clear()

    def _remove(self, paths: list[str]) -> int:
        gone = 0
        for path in paths:
            with self._lock:
                if self._made.pop(str(path), None) is None:
                    continue
            shutil.rmtree(Path(path).parent, ignore_errors=True)
            gone += 1
        return gone

    def _start_sweeper(self) -> None:
        with self._lock:
            if self._sweeper is not None or self._stop.is_set():
                return
            self._sweeper = threading.Thread(target=self._sweep_forever, name="export-sweep", daemon=True)
        self._sweeper.start()

    def _sweep_forever(self) -> None:
        while not self._stop.wait(max(0.05, self.ttl / 4)):
            self.sweep()
