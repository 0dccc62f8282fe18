"""The state of the log file, and the one short reader connection a page render uses."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import duckdb

from pipelines.log import eventlog

# The queries read the requests and their task outputs (schema version 3); the dashboard never migrates (it
# opens the file read-only), so an older log is read once the demo has opened (and migrated) it.
OLDEST_SCHEMA = 3
EMPTY = "No predictions logged yet — start the demo (python -m demo) or seed one (python -m pipelines.seed)."


@dataclass(frozen=True)
class LogState:
    """What the dashboard can do with the file: 'ok', or why not ('missing', 'empty', 'foreign', ...)."""

    kind: str
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.kind == "ok"

    @property
    def blank(self) -> bool:
        """Nothing to show yet, which is not an error."""
        return self.kind in ("missing", "empty")


def signature(path: str | os.PathLike) -> tuple:
    """Size and mtime of the log and its WAL: any committed write changes it, so caches key on it."""
    parts = []
    for p in (Path(path), Path(f"{path}.wal")):
        try:
            st = p.stat()
            parts.append((st.st_mtime_ns, st.st_size))
        except OSError:
            parts.append(None)
    return tuple(parts)


def is_busy(exc: BaseException) -> bool:
    """Whether a failed open means another process holds the file, not that the file is bad."""
    text = str(exc).lower()
    return "lock" in text or "different configuration" in text


class Session:
    """Opens a read-only connection on first use and closes it when the render's queries are done."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._cm = None
        self._con: duckdb.DuckDBPyConnection | None = None
        self.opened = 0

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            cm = eventlog.reader(self.path)
            self._con = cm.__enter__()
            self._cm = cm
            self.opened += 1
        return self._con

    def close(self) -> None:
        if self._cm is not None:
            cm, self._cm, self._con = self._cm, None, None
            cm.__exit__(None, None, None)

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check(session: Session) -> LogState:
    """Whether the file is a readable imagerec log with predictions in it; raises only when it is busy."""
    path = session.path
    if not path.exists():
        return LogState("missing", f"{EMPTY} (There is no file at {path}.)")
    if path.is_dir():
        return LogState("unreadable", f"{path} is a folder, not a DuckDB log file. Set IMAGEREC_DB to the log file.")
    if path.stat().st_size == 0:
        return LogState("empty", EMPTY)
    try:
        con = session.con
    except duckdb.Error as exc:
        if is_busy(exc):
            raise
        first = str(exc).splitlines()[0]
        return LogState("unreadable", f"Cannot read {path} as a DuckDB database: {first}")
    version = eventlog.schema_version(con)
    if version is None:
        return LogState("foreign", f"{path} is a DuckDB database but not an imagerec log (it has no "
                                   "schema_migrations table). Set IMAGEREC_DB to the log the demo writes.")
    if version == 0:
        return LogState("empty", EMPTY)
    if version > eventlog.SCHEMA_VERSION:
        return LogState("newer", f"{path} has log schema version {version}, newer than the {eventlog.SCHEMA_VERSION} "
                                 "this dashboard reads. Upgrade imagerec to read it.")
    if version < OLDEST_SCHEMA:
        return LogState("older", f"{path} has log schema version {version}, older than the {OLDEST_SCHEMA} this "
                                 "dashboard reads. Start the demo once (python -m demo) to migrate it.")
    if not con.execute("SELECT count(*) FROM predictions").fetchall()[0][0]:
        return LogState("empty", EMPTY)
    return LogState("ok")
