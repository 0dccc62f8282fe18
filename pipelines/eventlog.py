"""The DuckDB log of predictions and feedback: the one module that owns the database.

DuckDB lets one process open a file read-write or several open it read-only, never both. So the
writer never keeps the database open: each event is appended to a journal file beside it (and
acknowledged once it is there), and a background thread moves journal events into DuckDB in short
transactions. Readers open the file read-only for the length of a query. A reader never makes a
request wait, a writer never holds the file for long, and events survive a SIGKILL in the journal
until the next writer replays them (ids make the replay idempotent).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Sequence

import duckdb
import pyarrow as pa

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2

# Each migration: (version, description, statements). Never edit one that has shipped; add a new one.
MIGRATIONS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (1, "predictions and feedback", (
        """CREATE TABLE predictions (
            id VARCHAR PRIMARY KEY,
            created_at TIMESTAMP NOT NULL,          -- UTC
            image_sha256 VARCHAR NOT NULL,
            width INTEGER,
            height INTEGER,
            classifier VARCHAR,
            classifier_revision VARCHAR,
            captioner VARCHAR,
            captioner_revision VARCHAR,
            labels VARCHAR[],
            scores DOUBLE[],
            top1_label VARCHAR,
            top1_score DOUBLE,
            caption VARCHAR,
            prompt VARCHAR,
            intake_ms DOUBLE,
            classify_ms DOUBLE,
            caption_ms DOUBLE,
            total_ms DOUBLE,
            cached BOOLEAN,
            source VARCHAR,
            session_id VARCHAR
        )""",
        """CREATE TABLE feedback (
            id VARCHAR PRIMARY KEY,
            prediction_id VARCHAR NOT NULL,
            created_at TIMESTAMP NOT NULL,          -- UTC
            verdict VARCHAR CHECK (verdict IN ('up', 'down')),
            corrected_label VARCHAR,
            edited_caption VARCHAR
        )""",
    )),
    (2, "stored image file and model precision", (
        "ALTER TABLE predictions ADD COLUMN image_file VARCHAR",  # opt-in stored copy, see pipelines.privacy
        "ALTER TABLE predictions ADD COLUMN classifier_precision VARCHAR",
        "ALTER TABLE predictions ADD COLUMN captioner_precision VARCHAR",
    )),
)

PREDICTION_COLUMNS: tuple[str, ...] = (
    "id", "created_at", "image_sha256", "width", "height", "classifier", "classifier_revision",
    "captioner", "captioner_revision", "labels", "scores", "top1_label", "top1_score", "caption",
    "prompt", "intake_ms", "classify_ms", "caption_ms", "total_ms", "cached", "source", "session_id",
    "image_file", "classifier_precision", "captioner_precision",
)
FEEDBACK_COLUMNS: tuple[str, ...] = (
    "id", "prediction_id", "created_at", "verdict", "corrected_label", "edited_caption",
)
_COLUMNS = {"predictions": PREDICTION_COLUMNS, "feedback": FEEDBACK_COLUMNS}
VERDICTS = ("up", "down")
MAX_CAPTION_CHARS = 1000
MAX_LABEL_CHARS = 200
_ARROW_SCHEMAS: dict[str, pa.Schema] = {}

LOCK_RETRY_S = 0.02
WRITER_WAITING_FRESH_S = 5.0


class LogError(RuntimeError):
    """A log problem with a message a person can act on."""


class FeedbackRejected(ValueError):
    """Feedback that cannot be recorded, with one sentence saying why."""


def utcnow() -> datetime:
    """The current UTC time as a naive timestamp, the way the log stores it."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def new_id() -> str:
    """A fresh event id."""
    return uuid.uuid4().hex


def _is_lock_conflict(exc: Exception) -> bool:
    # Another process holds the file ("Could not set lock"), or this process has it open the other way.
    text = str(exc).lower()
    return "lock" in text or "different configuration" in text


def _marker(path: Path) -> Path:
    return path.with_name(path.name + ".writer-waiting")


def _connect(path: Path, read_only: bool, timeout: float, yield_to_writer: bool) -> duckdb.DuckDBPyConnection:
    """Open the file, retrying while another process holds the conflicting lock."""
    deadline = time.monotonic() + timeout
    marker = _marker(path)
    while True:
        if yield_to_writer:
            # A waiting writer goes first so that a busy reader cannot starve ingestion.
            while time.monotonic() < deadline and _fresh(marker):
                time.sleep(LOCK_RETRY_S)
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.Error as exc:
            if not _is_lock_conflict(exc) or time.monotonic() >= deadline:
                raise
        if not read_only:
            marker.touch()
        time.sleep(LOCK_RETRY_S)


def _fresh(marker: Path) -> bool:
    try:
        return time.time() - marker.stat().st_mtime < WRITER_WAITING_FRESH_S
    except FileNotFoundError:
        return False


def schema_version(con: duckdb.DuckDBPyConnection) -> int | None:
    """The log's schema version, 0 for an empty file, None for a database that is not a log."""
    try:  # the common case, in well under a millisecond
        return con.execute("SELECT max(version) FROM schema_migrations").fetchall()[0][0] or 0
    except duckdb.CatalogException:
        pass
    tables = {r[0] for r in con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'").fetchall()}
    if not tables:
        return 0
    if "schema_migrations" not in tables:
        return None
    return con.execute("SELECT max(version) FROM schema_migrations").fetchall()[0][0] or 0


def migrate(con: duckdb.DuckDBPyConnection) -> int:
    """Bring the schema up to SCHEMA_VERSION; return the version found before."""
    found = schema_version(con)
    if found is None:
        raise LogError("This DuckDB file is not an imagerec log (it has no schema_migrations table).")
    if found > SCHEMA_VERSION:
        raise LogError(f"This log has schema version {found}; this imagerec knows up to {SCHEMA_VERSION}. "
                       "Upgrade imagerec to use it.")
    if found == SCHEMA_VERSION:
        return found
    con.execute("BEGIN")
    try:
        con.execute("""CREATE TABLE IF NOT EXISTS schema_migrations (
            version INTEGER PRIMARY KEY, applied_at TIMESTAMP NOT NULL, description VARCHAR)""")
        for version, description, statements in MIGRATIONS:
            if version > found:
                for sql in statements:
                    con.execute(sql)
                con.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)", [version, utcnow(), description])
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise
    return found


@contextlib.contextmanager
def reader(path: str | os.PathLike, timeout: float = 10.0) -> Iterator[duckdb.DuckDBPyConnection]:
    """A short read-only connection to the log; hold it only for the length of a query."""
    con = _connect(Path(path), read_only=True, timeout=timeout, yield_to_writer=True)
    try:
        yield con
    finally:
        con.close()


@contextlib.contextmanager
def writer(path: str | os.PathLike, timeout: float = 30.0) -> Iterator[duckdb.DuckDBPyConnection]:
    """A short read-write connection with the schema up to date; the marker makes readers yield."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        con = _connect(path, read_only=False, timeout=timeout, yield_to_writer=False)
    finally:
        _marker(path).unlink(missing_ok=True)
    try:
        migrate(con)
        yield con
    finally:
        con.close()


def check(path: str | os.PathLike) -> None:
    """Create or migrate the log and read every table through, so a damaged file fails now, not mid-request."""
    with writer(path) as con:
        for table in _COLUMNS:
            con.execute(f"SELECT count(*), max(length(id)), max(created_at) FROM {table}").fetchall()


def query(path: str | os.PathLike, sql: str, params: Sequence[Any] | dict | None = None):
    """Run one parameterised read query and return a pandas DataFrame."""
    with reader(path) as con:
        return con.execute(sql, params or []).df()


def insert_rows(con: duckdb.DuckDBPyConnection, table: str, rows: Sequence[dict]) -> None:
    """Insert rows by id, ignoring ids already present, so replays are harmless."""
    if not rows:
        return
    columns = _COLUMNS[table]
    # One Arrow batch per call: DuckDB inserts it in a few ms, where executemany costs ~10 ms a row.
    if table not in _ARROW_SCHEMAS:
        _ARROW_SCHEMAS[table] = con.sql(f"SELECT {', '.join(columns)} FROM {table} LIMIT 0").to_arrow_table().schema
    schema = _ARROW_SCHEMAS[table]
    incoming = pa.Table.from_pylist([{c: row.get(c) for c in columns} for row in rows], schema=schema)
    con.register("incoming_rows", incoming)
    try:
        con.execute(f"INSERT OR IGNORE INTO {table} ({', '.join(columns)}) "
                    f"SELECT {', '.join(columns)} FROM incoming_rows")
    finally:
        con.unregister("incoming_rows")


class Removed(NamedTuple):
    """What a deletion took out of the log."""

    ids: list[str]  # prediction ids
    feedback: int  # feedback rows
    images: list[str]  # names of kept images, for the image store to delete
    hashes: list[str]  # sha256 of the deleted predictions' images, for caches keyed by them


def delete_predictions(con: duckdb.DuckDBPyConnection, where: str, params: Sequence) -> Removed:
    """Delete the predictions matching `where` and their feedback."""
    doomed = con.execute(f"SELECT id, image_file, image_sha256 FROM predictions WHERE {where}",
                         list(params)).fetchall()
    if not doomed:
        return Removed([], 0, [], [])
    ids = [row[0] for row in doomed]
    con.execute("BEGIN")
    feedback = con.execute("DELETE FROM feedback WHERE list_contains(?, prediction_id)", [ids]).fetchone()[0]
    con.execute("DELETE FROM predictions WHERE list_contains(?, id)", [ids])
    con.execute("COMMIT")
    con.execute("CHECKPOINT")  # rewrite the table files now rather than at some later checkpoint
    return Removed(ids, feedback, [row[1] for row in doomed if row[1]], sorted({row[2] for row in doomed}))


def _to_json(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot log a {type(value).__name__}")


def _from_journal(row: dict) -> dict:
    row = dict(row)
    row["created_at"] = datetime.fromisoformat(row["created_at"])
    return row


@dataclass
class _Pending:
    predictions: list[dict]
    feedback: list[dict]
    end: int  # journal offset just past the last complete line read


class EventLog:
    """The writer: acknowledges events once they are in the journal and moves them into DuckDB."""

    def __init__(self, path: str | os.PathLike, flush_interval: float = 0.25, fsync: bool = True,
                 known_ids: int = 100_000):
        self.path = Path(path)
        self.journal_path = self.path.with_name(self.path.name + ".journal")
        self.flush_interval = flush_interval
        self.fsync = fsync
        self._append_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._known: OrderedDict[str, None] = OrderedDict()
        self._known_cap = known_ids
        self._consumed = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._fd: int | None = None
        self.last_flush_error: str | None = None
        self.flush_failures = 0
        self.set_aside: str | None = None  # what open() did with a damaged or foreign file
        self._backlog: list[bytes] = []  # events the journal could not take yet (disk full, I/O error)
        self.append_error: str | None = None
        self._last_feedback: OrderedDict[str, tuple] = OrderedDict()
        self._feedback_lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------------
    def open(self) -> "EventLog":
        """Take the journal, replay what a previous run left in it, and start the flusher."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.journal_path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LogError(f"Another imagerec process is already writing to the log {self.path}.") from None
        self._fd = fd
        self._drop_torn_tail()
        try:
            check(self.path)
        except (LogError, duckdb.Error) as exc:
            if isinstance(exc, duckdb.Error) and _is_lock_conflict(exc):
                raise
            self.set_aside = self._set_aside(exc)
            check(self.path)
        self.flush()
        self._thread = threading.Thread(target=self._run, name="eventlog-flusher", daemon=True)
        self._thread.start()
        return self

    def _set_aside(self, problem: Exception) -> str:
        """Move a file that is not a usable log out of the way, never overwriting it, and say so."""
        stamp = utcnow().strftime("%Y%m%dT%H%M%S")
        kept = self.path.with_name(f"{self.path.name}.bad-{stamp}")
        n = 1
        while kept.exists():
            kept = self.path.with_name(f"{self.path.name}.bad-{stamp}-{n}")
            n += 1
        os.rename(self.path, kept)
        wal = self.path.with_name(self.path.name + ".wal")
        if wal.exists():
            os.rename(wal, kept.with_name(kept.name + ".wal"))
        reason = str(problem).splitlines()[0]
        message = (f"The log {self.path} could not be used ({reason}); it was kept as {kept.name} "
                   f"and a fresh log was started.")
        log.error(message)
        return message

    def close(self) -> None:
        """Stop the flusher and move every pending event into DuckDB."""
        self._stop.set()
        if self._thread:
            self._thread.join()
        if self._fd is not None:
            self.flush()
            if self._backlog:
                log.error("%d logged event(s) could not be written before exit: %s", len(self._backlog),
                          self.append_error)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "EventLog":
        return self.open()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- the verbs ---------------------------------------------------------------------------------
    def log_prediction(self, row: dict) -> str:
        """Record a prediction; returns its id once it is durable."""
        row = {c: row.get(c) for c in PREDICTION_COLUMNS}
        row["id"] = row["id"] or new_id()
        row["created_at"] = row["created_at"] or utcnow()
        self._append("predictions", row)
        self._remember(row["id"])
        return row["id"]

    def log_feedback(self, prediction_id: str, verdict: str | None = None, corrected_label: str | None = None,
                     edited_caption: str | None = None) -> tuple[str, bool]:
        """Record feedback on a known prediction; returns (feedback id, False if it repeated the last one)."""
        if verdict is not None and verdict not in VERDICTS:
            raise FeedbackRejected(f"The verdict must be 'up' or 'down', not {verdict!r}.")
        corrected_label = (corrected_label or "").strip() or None
        if edited_caption is not None and not edited_caption.strip():
            raise FeedbackRejected("The edited caption is empty.")
        if edited_caption is not None and len(edited_caption) > MAX_CAPTION_CHARS:
            raise FeedbackRejected(f"The edited caption is {len(edited_caption)} characters; "
                                   f"the limit is {MAX_CAPTION_CHARS}.")
        if corrected_label is not None and len(corrected_label) > MAX_LABEL_CHARS:
            raise FeedbackRejected(f"The corrected label is {len(corrected_label)} characters; "
                                   f"the limit is {MAX_LABEL_CHARS}.")
        if corrected_label and verdict is None:
            verdict = "down"  # a correction says the answer was wrong
        if verdict is None and corrected_label is None and edited_caption is None:
            raise FeedbackRejected("Nothing to record: give a verdict, a corrected label or an edited caption.")
        if not self.knows(prediction_id):
            raise FeedbackRejected(f"There is no prediction with id {prediction_id!r}.")
        content = (verdict, corrected_label, edited_caption)
        with self._feedback_lock:
            previous = self._latest_feedback(prediction_id)
            if previous and previous[1:] == content:  # a double click or a retried request counts once
                return previous[0], False
            row = {"id": new_id(), "prediction_id": prediction_id, "created_at": utcnow(), "verdict": verdict,
                   "corrected_label": corrected_label, "edited_caption": edited_caption}
            self._append("feedback", row)
            self._last_feedback[prediction_id] = (row["id"], *content)
            if len(self._last_feedback) > self._known_cap:
                self._last_feedback.popitem(last=False)
        return row["id"], True

    def _latest_feedback(self, prediction_id: str) -> tuple | None:
        if prediction_id in self._last_feedback:
            return self._last_feedback[prediction_id]
        with reader(self.path) as con:
            return con.execute("SELECT id, verdict, corrected_label, edited_caption FROM feedback "
                               "WHERE prediction_id = ? ORDER BY created_at DESC LIMIT 1", [prediction_id]).fetchone()

    def knows(self, prediction_id: str) -> bool:
        """Whether a prediction with this id was logged (here, or earlier in the file)."""
        if not isinstance(prediction_id, str) or not prediction_id:
            return False
        if prediction_id in self._known:
            return True
        with reader(self.path) as con:
            found = con.execute("SELECT 1 FROM predictions WHERE id = ?", [prediction_id]).fetchone()
        if found:
            self._remember(prediction_id)
        return bool(found)

    def delete(self, where: str, params: Sequence) -> Removed:
        """Delete predictions (and their feedback) matching a parameterised condition, pending ones included."""
        self._drain_backlog()
        with self._flush_lock:
            self._flush_locked()
            with writer(self.path) as con:
                removed = delete_predictions(con, where, params)
            for prediction_id in removed.ids:
                self._known.pop(prediction_id, None)
                self._last_feedback.pop(prediction_id, None)
        return removed

    def flush(self) -> int:
        """Move journal events into DuckDB now; returns how many were moved."""
        self._drain_backlog()
        with self._flush_lock:
            return self._flush_locked()

    def _flush_locked(self) -> int:
        pending = self._read_pending()
        if pending.end == self._consumed:
            return 0
        with writer(self.path) as con:
            con.execute("BEGIN")
            insert_rows(con, "predictions", pending.predictions)
            insert_rows(con, "feedback", pending.feedback)
            con.execute("COMMIT")
        self._consumed = pending.end
        self._truncate_if_drained()
        return len(pending.predictions) + len(pending.feedback)

    # -- journal -----------------------------------------------------------------------------------
    def _append(self, table: str, row: dict) -> None:
        if self._fd is None:
            raise LogError("The log is not open.")
        line = (json.dumps({"table": table, "row": row}, default=_to_json, ensure_ascii=False) + "\n").encode()
        with self._append_lock:
            if self._backlog:  # keep the order: nothing jumps ahead of events still waiting
                self._backlog.append(line)
                return
            try:
                self._write_line(line)
            except OSError as exc:
                self._backlog.append(line)
                self.append_error = f"The log journal cannot be written ({exc.strerror or exc}); " \
                                    f"{len(self._backlog)} event(s) are held in memory until it can."
                log.error(self.append_error)

    def _write_line(self, line: bytes) -> None:
        """Append one whole line to the journal, or leave the journal as it was."""
        size = os.fstat(self._fd).st_size
        try:
            written = os.write(self._fd, line)
            if written != len(line):
                raise OSError(28, "No space left on device")
            if self.fsync:
                os.fdatasync(self._fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, size)  # never leave half a line behind
            raise

    def _drain_backlog(self) -> None:
        """Move events held in memory into the journal, in order, as far as it takes them."""
        with self._append_lock:
            while self._backlog:
                try:
                    self._write_line(self._backlog[0])
                except OSError:
                    return
                self._backlog.pop(0)
            self.append_error = None

    @property
    def held_in_memory(self) -> int:
        """Events acknowledged but not yet in the journal (only while it cannot be written)."""
        return len(self._backlog)

    def _read_pending(self) -> _Pending:
        with self._append_lock:
            size = os.fstat(self._fd).st_size
            data = os.pread(self._fd, size - self._consumed, self._consumed)
        complete = data[: data.rfind(b"\n") + 1]
        pending = _Pending([], [], self._consumed + len(complete))
        for line in complete.splitlines():
            event = json.loads(line)
            getattr(pending, event["table"]).append(_from_journal(event["row"]))
        return pending

    def _truncate_if_drained(self) -> None:
        with self._append_lock:
            if os.fstat(self._fd).st_size == self._consumed:
                os.ftruncate(self._fd, 0)
                self._consumed = 0

    def _drop_torn_tail(self) -> None:
        """Cut a line a killed writer left half-written; it was never acknowledged."""
        size = os.fstat(self._fd).st_size
        if not size:
            return
        data = os.pread(self._fd, size, 0)
        keep = data.rfind(b"\n") + 1
        if keep != size:
            log.warning("dropping %d bytes of an unfinished journal line", size - keep)
            os.ftruncate(self._fd, keep)

    def _remember(self, prediction_id: str) -> None:
        self._known[prediction_id] = None
        if len(self._known) > self._known_cap:
            self._known.popitem(last=False)

    def _run(self) -> None:
        while not self._stop.wait(self.flush_interval):
            try:
                self.flush()
                self.last_flush_error = None
            except Exception as exc:  # the events stay in the journal; the next round retries
                self.flush_failures += 1
                self.last_flush_error = str(exc)
                log.warning("log flush failed, will retry: %s", exc)
