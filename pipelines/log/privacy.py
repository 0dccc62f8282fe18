"""Privacy: images kept only by choice and without metadata, deletion on request, retention, purge.

    python -m pipelines.privacy purge [--older-than DAYS] [--prediction ID] [--session ID]
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Iterable

from PIL import Image

from pipelines import settings
from pipelines.log import eventlog

_NAME_CHARS = set("0123456789abcdef")


class ImageStore:
    """A private folder of kept images under generated names, holding pixels only (no EXIF, GPS or ICC)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)

    def save(self, image: Image.Image) -> str:
        """Keep an RGB image's pixels; returns the generated file name."""
        self.folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.folder, 0o700)
        name = uuid.uuid4().hex + ".png"
        clean = Image.frombytes("RGB", image.size, image.convert("RGB").tobytes())  # a fresh image: no info dict
        fd = os.open(self.folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            clean.save(out, "PNG")
        return name

    def path(self, name: str) -> Path:
        """Where a kept image lives; only names this store generates are accepted."""
        stem, dot, ext = name.partition(".")
        if not (len(stem) == 32 and set(stem) <= _NAME_CHARS and dot and ext == "png"):
            raise ValueError(f"not a kept-image name: {name!r}")
        return self.folder / name

    def delete(self, names: Iterable[str | None]) -> int:
        """Remove kept images by name; returns how many files went."""
        removed = 0
        for name in names:
            if not name:
                continue
            try:
                self.path(name).unlink()
                removed += 1
            except FileNotFoundError:
                pass
        return removed


@dataclass
class Deleted:
    """What a deletion removed."""

    predictions: int = 0
    feedback: int = 0
    images: int = 0
    uploads: int = 0

    def sentence(self) -> str:
        parts = [f"{self.predictions} prediction(s)", f"{self.feedback} feedback row(s)",
                 f"{self.images} kept image(s)", f"{self.uploads} uploaded copy(ies)"]
        return "Deleted " + ", ".join(parts[:-1]) + " and " + parts[-1] + "."


def purge(db: str | os.PathLike, store: ImageStore | None, older_than_days: float | None = None,
          prediction_id: str | None = None, session_id: str | None = None) -> Deleted:
    """Delete by age, prediction id or session through the log's journal; refused while another process writes it."""
    conditions, params = [], []
    if older_than_days is not None:
        conditions.append("created_at < ?")
        params.append(eventlog.utcnow() - timedelta(days=older_than_days))
    if prediction_id:
        conditions.append("id = ?")
        params.append(prediction_id)
    if session_id:
        conditions.append("session_id = ?")
        params.append(session_id)
    if not conditions:
        raise ValueError("say what to purge: an age, a prediction id or a session id")
    eventlog.require_log(db)  # a mistyped path must not become an empty log
    # Through the writer, not straight into DuckDB: it takes the writer lock (a running demo refuses it),
    # replays what the journal holds, and leaves tombstones so no later replay brings the rows back.
    log = eventlog.EventLog(db, flush_interval=3600).open()
    try:
        removed = log.delete(" AND ".join(conditions), params)
    finally:
        log.close()
    if store and log.replayed_images:
        store.delete(log.replayed_images)
    return Deleted(len(removed.ids), removed.feedback, store.delete(removed.images) if store else 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.privacy", description="Delete logged data.")
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("purge", help="delete predictions, their feedback and kept images")
    settings.add_arguments(cmd, names=("db", "images_dir"))
    cmd.add_argument("--older-than", type=float, default=None, metavar="DAYS",
                     help="delete what is older than DAYS (default: the retention_days setting)")
    cmd.add_argument("--prediction", default=None, help="delete this prediction id")
    cmd.add_argument("--session", default=None, help="delete everything of this session id")
    args = parser.parse_args(argv)
    config = settings.resolve(args)
    older = args.older_than
    if older is None and not (args.prediction or args.session):
        older = config.retention_days or None
    if older is None and not (args.prediction or args.session):
        parser.error("nothing to purge: give --older-than, --prediction or --session (or set IMAGEREC_RETENTION_DAYS)")
    try:
        deleted = purge(config.db, ImageStore(config.images_dir), older, args.prediction, args.session)
    except eventlog.LogError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(deleted.sentence())
    return 0


if __name__ == "__main__":
    sys.exit(main())
