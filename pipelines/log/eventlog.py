"""The DuckDB log of predictions and feedback: the one module that owns the database.

DuckDB lets one process open a file read-write or several open it read-only, never both. So the
writer never keeps the database open: each event is appended to a journal file beside it (and
acknowledged once it is there), and a background thread moves journal events into DuckDB in short
transactions. Readers open the file read-only for the length of a query. A reader never makes a
request wait, a writer never holds the file for long, and events survive a SIGKILL in the journal
until the next writer replays them (ids make the replay idempotent).

A deletion is itself a journal event (a tombstone naming the prediction ids), forced to disk before
DuckDB is touched, so a replay never brings a deleted row back and finishes a deletion a kill cut short.
The journal is compacted once its consumed part grows, and the writer holds `<db>.lock` for its whole
life, so a removed journal is recreated by its owner rather than taken over by a second process.
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
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Sequence

import duckdb
import pyarrow as pa

from pipelines.log import rows as log_rows
from pipelines.log import sql

log = logging.getLogger(__name__)

# The schema, its migrations and every table's columns live in pipelines.log.sql, with the rest of the SQL.
SCHEMA_VERSION = sql.SCHEMA_VERSION
MIGRATIONS = sql.MIGRATIONS
PREDICTION_COLUMNS = sql.PREDICTION_COLUMNS
OUTPUT_COLUMNS = sql.OUTPUT_COLUMNS
VERSION_COLUMNS = sql.VERSION_COLUMNS
FEEDBACK_COLUMNS = sql.FEEDBACK_COLUMNS
_COLUMNS = sql.COLUMNS
VERDICTS = ("up", "down")
MAX_CAPTION_CHARS = 1000
MAX_LABEL_CHARS = 200
RECENT_OUTPUTS = 4096  # predictions whose outputs feedback finds in memory; older ones are read from the file
_ARROW_SCHEMAS: dict[str, pa.Schema] = {}

LOCK_RETRY_S = 0.02
WRITER_WAITING_FRESH_S = 5.0
TOMBSTONE_IDS_PER_LINE = 10_000  # a retention purge of many rows becomes several tombstone lines
COMPACT_BYTES = 1 << 20  # rewrite the journal once this much of it is consumed but it never drained

_PATH_LOCKS: dict[str, threading.RLock] = {}
_PATH_LOCKS_GUARD = threading.Lock()


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
    # Another process holds the file ("Could not set lock ... Conflicting lock"), or this process has it open
    # the other way ("different configuration", "Unique file handle conflict ... already attached"). Not a bare
    # "lock": an I/O error about a "block" (a full disk) must fail at once, not be retried for half a minute.
    text = str(exc).lower()
    return any(s in text for s in ("could not set lock", "conflicting lock", "different configuration",
                                   "already attached"))


def _path_lock(path: Path) -> threading.RLock:
    """One lock per database file in this process: DuckDB refuses a second in-process attach of an open file."""
    key = os.path.realpath(path)
    with _PATH_LOCKS_GUARD:
        return _PATH_LOCKS.setdefault(key, threading.RLock())


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
                for statement in statements:
                    con.execute(statement)
                con.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)", [version, utcnow(), description])
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise
    return found


@contextlib.contextmanager
def reader(path: str | os.PathLike, timeout: float = 10.0) -> Iterator[duckdb.DuckDBPyConnection]:
    """A short read-only connection to the log; hold it only for the length of a query."""
    with _path_lock(Path(path)):  # connections to one file in one process take turns, like processes do
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
    with _path_lock(path):
        try:
            con = _connect(path, read_only=False, timeout=timeout, yield_to_writer=False)
        finally:
            _marker(path).unlink(missing_ok=True)
        try:
            migrate(con)
            yield con
        finally:
            con.close()


def require_log(path: str | os.PathLike) -> None:
    """Refuse, creating nothing, a path that is not an existing imagerec log."""
    path = Path(path)
    if not path.is_file():
        raise LogError(f"There is no imagerec log at {path}; check the path (nothing was created).")
    try:
        with reader(path) as con:
            version = schema_version(con)
    except duckdb.Error as exc:
        raise LogError(f"{path} is not a readable DuckDB log ({str(exc).splitlines()[0]}).") from None
    if not version:
        raise LogError(f"{path} is not an imagerec log (it has no schema_migrations table).")


def check(path: str | os.PathLike) -> None:
    """Create or migrate the log and read every table through, so a damaged file fails now, not mid-request."""
    with writer(path) as con:
        for table in _COLUMNS:
            key = sql.KEYS[table][0]
            when = "max(created_at)" if "created_at" in _COLUMNS[table] else "count(*)"
            con.execute(f"SELECT count(*), max(length({key})), {when} FROM {table}").fetchall()


def query(path: str | os.PathLike, sql: str, params: Sequence[Any] | dict | None = None):
    """Run one parameterised read query and return a pandas DataFrame."""
    with reader(path) as con:
        return con.execute(sql, params or []).df()


def insert_rows(con: duckdb.DuckDBPyConnection, table: str, rows: Sequence[dict] | pa.Table) -> None:
    """Insert rows (dicts, or an Arrow table with the table's columns) by key, ignoring keys already present.

    So replays are harmless, and a model version keeps the first_seen of its first insert. Outputs and
    feedback go in only for a prediction that is in the table, so none outlives a deleted prediction.
    """
    if rows is None or not len(rows):
        return
    columns = _COLUMNS[table]
    # One Arrow batch per call: DuckDB inserts it in a few ms, where executemany costs ~10 ms a row.
    if table not in _ARROW_SCHEMAS:
        _ARROW_SCHEMAS[table] = con.sql(f"SELECT {', '.join(columns)} FROM {table} LIMIT 0").to_arrow_table().schema
    schema = _ARROW_SCHEMAS[table]
    if isinstance(rows, pa.Table):
        for name in columns:  # columns a later migration added are empty in a table made without them
            if name not in rows.column_names:
                rows = rows.append_column(name, pa.nulls(len(rows), schema.field(name).type))
        incoming = rows.select(list(columns)).cast(schema)
    else:
        if table == "outputs":  # a payload is the task's output dict; the column holds its JSON text
            rows = [row | {"payload": _payload(row.get("payload"))} for row in rows]
        incoming = pa.Table.from_pylist([{c: row.get(c) for c in columns} for row in rows], schema=schema)
    con.register("incoming_rows", incoming)
    try:
        known = " WHERE prediction_id IN (SELECT id FROM predictions)" if "prediction_id" in columns else ""
        con.execute(f"INSERT OR IGNORE INTO {table} ({', '.join(columns)}) "
                    f"SELECT {', '.join(columns)} FROM incoming_rows{known}")
    finally:
        con.unregister("incoming_rows")


def _payload(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=_to_json)


def _feedback_view(payload: Any) -> dict | None:
    """A task's output as feedback checks it: the payload without a heatmap's pixels."""
    if isinstance(payload, str):
        payload = json.loads(payload)
    return {k: v for k, v in payload.items() if k != "heatmap"} if isinstance(payload, dict) else payload


def _canonical(target: dict | None) -> str | None:
    """A feedback target as JSON text that is the same for the same target, so it can be matched as text."""
    return None if target is None else json.dumps(target, sort_keys=True, ensure_ascii=False,
                                                 separators=(",", ":"), default=_to_json)


def _verdict_scope(task: str | None, target: str | None) -> str:
    """What a verdict is on: the answer's labels ('classify', as before tasks had feedback), a task, or a box."""
    scope = "classify" if task is None else task
    return scope if target is None else f"{scope}:{target}"


class Removed(NamedTuple):
    """What a deletion took out of the log."""

    ids: list[str]  # prediction ids
    feedback: int  # feedback rows
    images: list[str]  # names of kept images, for the image store to delete
    hashes: list[str]  # sha256 of the deleted predictions' images, for caches keyed by them


class Logged(str):
    """An event id that also says whether the event was durable (in the journal) when it was acknowledged."""

    durable: bool

    def __new__(cls, value: str, durable: bool) -> "Logged":
        logged = super().__new__(cls, value)
        logged.durable = durable
        return logged


def _to_json(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot log a {type(value).__name__}")


def _from_journal(row: dict, key: str = "created_at") -> dict:
    row = dict(row)
    if isinstance(row.get(key), str):
        row[key] = datetime.fromisoformat(row[key])
    return row


@dataclass
class _Pending:
    predictions: list[dict]
    feedback: list[dict]
    end: int  # journal offset just past the last complete line read
    deletes: list[str] = field(default_factory=list)  # tombstoned prediction ids, applied before the inserts
    images: list[str] = field(default_factory=list)  # kept images the tombstones name
    lines: int = 0
    dropped_feedback: int = 0  # pending feedback a tombstone took out before it reached DuckDB
    generation: int = 0  # which journal file the offsets refer to
    outputs: list[dict] = field(default_factory=list)
    versions: list[dict] = field(default_factory=list)
    batch_runs: list[dict] = field(default_factory=list)
    registered: list[dict] = field(default_factory=list)  # model versions registered with their training record


def _parse(lines: Sequence[bytes], end: int) -> _Pending:
    """Journal lines in order; a tombstone removes its ids' earlier pending events."""
    pending = _Pending([], [], end, lines=len(lines))
    for line in lines:
        event = json.loads(line)
        if "delete" in event:
            doomed = set(event["delete"])
            kept = [f for f in pending.feedback if f["prediction_id"] not in doomed]
            pending.dropped_feedback += len(pending.feedback) - len(kept)
            pending.feedback = kept
            pending.predictions = [p for p in pending.predictions if p["id"] not in doomed]
            pending.outputs = [o for o in pending.outputs if o["prediction_id"] not in doomed]
            pending.deletes.extend(event["delete"])
            pending.images.extend(event.get("images", []))
        elif "request" in event:  # a prediction: the request, its outputs and their model versions, in one line
            _add_request(pending, event["request"], event.get("outputs", []), event.get("versions", []))
        elif "batch_run" in event:
            pending.batch_runs.append(_from_journal(_from_journal(event["batch_run"]), "finished_at"))
        elif "register" in event:
            pending.registered.append(_from_journal(event["register"], "first_seen"))
        elif event["table"] == "predictions":  # a schema-2 line an older imagerec wrote: the same rows, converted
            rows = log_rows.from_v2_row(_from_journal(event["row"]))
            _add_request(pending, rows["prediction"], rows["outputs"], rows["versions"])
        else:
            pending.feedback.append(_from_journal(event["row"]))
    return pending


def _add_request(pending: _Pending, request: dict, outputs: list[dict], versions: list[dict]) -> None:
    pending.predictions.append(_from_journal(request))
    pending.outputs.extend(outputs)
    pending.versions.extend(_from_journal(v, "first_seen") for v in versions)


def _apply(con: duckdb.DuckDBPyConnection, pending: _Pending) -> int:
    """Apply pending events in one transaction: deletions first, then inserts; returns feedback rows deleted."""
    con.execute("BEGIN")
    deleted = 0
    try:
        if pending.deletes:
            deleted = con.execute("DELETE FROM feedback WHERE list_contains(?, prediction_id)",
                                  [pending.deletes]).fetchone()[0]
            con.execute("DELETE FROM outputs WHERE list_contains(?, prediction_id)", [pending.deletes])
            con.execute("DELETE FROM predictions WHERE list_contains(?, id)", [pending.deletes])
        insert_rows(con, "predictions", pending.predictions)
        insert_rows(con, "model_versions", pending.versions)
        insert_rows(con, "outputs", pending.outputs)
        insert_rows(con, "feedback", pending.feedback)
        insert_rows(con, "batch_runs", [run | {"models": _payload(run.get("models"))} for run in pending.batch_runs])
        for row in pending.registered:
            con.execute(sql.REGISTER_VERSION, [row.get(c) for c in VERSION_COLUMNS])
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise
    if pending.deletes:
        con.execute("CHECKPOINT")  # rewrite the table files now rather than at some later checkpoint
    return deleted + pending.dropped_feedback


def _take_lock(path: Path, flags: int = os.O_RDWR | os.O_CREAT) -> int | None:
    """Open a file and take its exclusive lock; None if another process holds it."""
    fd = os.open(path, flags, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _same_file(path: Path, fd: int) -> bool:
    """Whether path still names the open file fd (not deleted, not replaced)."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return mine.st_nlink > 0 and (named.st_ino, named.st_dev) == (mine.st_ino, mine.st_dev)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class EventLog:
    """The writer: acknowledges events once they are in the journal and moves them into DuckDB."""

    def __init__(self, path: str | os.PathLike, flush_interval: float = 0.25, fsync: bool = True,
                 known_ids: int = 100_000):
        self.path = Path(path)
        self.journal_path = self.path.with_name(self.path.name + ".journal")
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.flush_interval = flush_interval
        self.fsync = fsync
        self._append_lock = threading.Lock()
        self._flush_lock = threading.RLock()  # a deletion flushes, writes its tombstone and flushes again
        self._known: OrderedDict[str, None] = OrderedDict()
        self._deleted: OrderedDict[str, None] = OrderedDict()  # tombstoned ids: refused even before DuckDB has them out
        self._known_cap = known_ids
        self._consumed = 0
        self._generation = 0  # bumped when the journal file is replaced (compaction, recreation)
        self._journal_events = 0  # complete lines in the journal past _consumed
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._fd: int | None = None
        self._lock_fd: int | None = None
        self.last_flush_error: str | None = None
        self.flush_failures = 0
        self.set_aside: str | None = None  # what open() did with a damaged or foreign file
        self._backlog: list[bytes] = []  # events the journal could not take yet (disk full, I/O error)
        self.append_error: str | None = None
        self.taken_over: str | None = None  # set when another process took the log from under this one
        self.replayed_images: list[str] = []  # kept images named by tombstones replayed at open
        self._last_feedback: OrderedDict[str, dict] = OrderedDict()
        self._outputs: OrderedDict[str, dict] = OrderedDict()  # recent predictions' outputs, by task
        self._feedback_lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------------
    def open(self) -> "EventLog":
        """Take the log's lock and journal, replay what a previous run left in it, and start the flusher."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_fd = _take_lock(self.lock_path)
        # the journal's own lock keeps out a writer of an older imagerec that knows no lock file
        fd = _take_lock(self.journal_path, os.O_RDWR | os.O_CREAT | os.O_APPEND) if self._lock_fd is not None else None
        if fd is None:
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None
            raise LogError(f"Another imagerec process is already writing to the log {self.path}.")
        self._fd = fd
        try:
            self._new_journal_path().unlink(missing_ok=True)  # a compaction a kill cut short; the journal is whole
            self._drop_torn_tail()
            self._journal_events = os.pread(fd, os.fstat(fd).st_size, 0).count(b"\n")
            try:
                check(self.path)
            except (LogError, duckdb.Error) as exc:
                if isinstance(exc, duckdb.Error) and _is_lock_conflict(exc):
                    raise
                self.set_aside = self._set_aside(exc)
                check(self.path)
            pending = self._read_pending()
            self.replayed_images = list(pending.images)
            self._flush_pending(pending)
        except BaseException:
            self._release()
            raise
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
            try:
                self.flush()
            finally:
                if self._backlog:
                    log.error("%d logged event(s) could not be written before exit: %s", len(self._backlog),
                              self.append_error or self.taken_over)
                self._release()

    def _release(self) -> None:
        for fd in (self._fd, self._lock_fd):
            if fd is not None:
                os.close(fd)
        self._fd = self._lock_fd = None

    def __enter__(self) -> "EventLog":
        return self.open()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- the verbs ---------------------------------------------------------------------------------
    def log_prediction(self, rows: dict) -> Logged:
        """Record a prediction: the rows `pipelines.log.rows.prediction_rows` gives (the request, its outputs and
        their model versions), as one journal line, so all of it or none of it is logged.

        Returns its id, whose `durable` says whether it is on disk already. A schema-2 wide row (what
        `prediction_row` gave before schema 3) is taken too, converted as the migration converts it.
        """
        if "prediction" not in rows:
            rows = log_rows.from_v2_row({"id": None, **rows})
        row = {c: rows["prediction"].get(c) for c in PREDICTION_COLUMNS}
        row["id"] = row["id"] or new_id()
        row["created_at"] = row["created_at"] or utcnow()
        outputs = []
        for output in rows.get("outputs", ()):
            output = {c: output.get(c) for c in OUTPUT_COLUMNS} | {"prediction_id": row["id"]}
            if output["label"] is None and output["score"] is None:
                output["label"], output["score"] = log_rows.headline(output["payload"])
            outputs.append(output)
        versions = [{c: v.get(c) for c in VERSION_COLUMNS} for v in rows.get("versions", ())]
        for version in versions:
            version["first_seen"] = version["first_seen"] or row["created_at"]
        durable = self._append({"request": row, "outputs": outputs, "versions": versions})
        self._remember(row["id"])
        # what feedback checks against (the labels, the boxes), at hand while it is most likely to come
        self._outputs[row["id"]] = {o["task"]: _feedback_view(o["payload"]) for o in outputs}
        if len(self._outputs) > RECENT_OUTPUTS:
            self._outputs.popitem(last=False)
        return Logged(row["id"], durable)

    def output(self, prediction_id: str, task: str) -> dict | None:
        """The output a task gave on a logged prediction (a heatmap left out), or None when it did not run on it."""
        if not self.knows(prediction_id):
            return None
        held = self._outputs.get(prediction_id)
        if held is not None:
            return held.get(task)
        for attempt in range(2):
            with reader(self.path) as con:
                found = con.execute("SELECT o.payload, p.id FROM predictions p LEFT JOIN outputs o "
                                    "ON o.prediction_id = p.id AND o.task = ? WHERE p.id = ?",
                                    [task, prediction_id]).fetchone()
            if found:
                return _feedback_view(json.loads(found[0])) if found[0] is not None else None
            self.flush()  # logged, but still in the journal
        return None

    def log_batch_run(self, run: dict) -> Logged:
        """Record one batch job (a `batch_runs` row: counts, models, timing), as one journal line."""
        row = {c: run.get(c) for c in sql.BATCH_RUN_COLUMNS}
        row["id"] = row["id"] or new_id()
        row["created_at"] = row["created_at"] or utcnow()
        return Logged(row["id"], self._append({"batch_run": row}))

    def register_version(self, version: str, model: str, revision: str | None, base: str | None = None,
                         data_fingerprint: str | None = None, params: dict | None = None,
                         evaluation: dict | None = None) -> bool:
        """Record a model version with what it was trained from and its evaluation; True once in the journal."""
        row = {"version": version, "model": model, "revision": revision, "first_seen": utcnow(), "base": base,
               "data_fingerprint": data_fingerprint,
               "params": None if params is None else json.dumps(params),
               "evaluation": None if evaluation is None else json.dumps(evaluation)}
        return self._append({"register": row})

    def log_feedback(self, prediction_id: str, verdict: str | None = None, corrected_label: str | None = None,
                     edited_caption: str | None = None, task: str | None = None,
                     target: dict | None = None) -> tuple[Logged, bool]:
        """Record feedback on a known prediction; returns (feedback id, False if it repeated the last one).

        Without `task` it is on the request's answer (the labels' verdict, the caption's edit); with it, on
        that task's output, and with `target` on one part of it (a detected box). The id's `durable` says
        whether the feedback is on disk already.
        """
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
        if edited_caption is not None and task not in (None, "caption"):
            raise FeedbackRejected(f"An edited caption is feedback on the caption, not on {task}.")
        if corrected_label and verdict is None:
            verdict = "down"  # a correction says the answer was wrong
        if verdict is None and corrected_label is None and edited_caption is None:
            raise FeedbackRejected("Nothing to record: give a verdict, a corrected label or an edited caption.")
        target_json = _canonical(target)
        scope = _verdict_scope(task, target_json)
        with self._feedback_lock:  # a deletion takes this lock too: feedback lands before its tombstone or is refused
            if not self.knows(prediction_id):
                raise FeedbackRejected(f"There is no prediction with id {prediction_id!r}.")
            latest = self._latest_feedback(prediction_id, task, target_json)
            # A double click or a retried request counts once: feedback that says what the latest feedback on the
            # same thing says (the same verdict and corrected label, the same edited caption) is not recorded again.
            said = latest[scope]
            same_verdict = verdict is None or (said["verdict"], said["corrected_label"]) == (verdict, corrected_label)
            same_edit = edited_caption is None or latest["edit"]["edited_caption"] == edited_caption
            if same_verdict and same_edit:
                return Logged(said["verdict_id"] if verdict is not None else latest["edit"]["edit_id"],
                              not self._backlog), False
            row = {"id": new_id(), "prediction_id": prediction_id, "created_at": utcnow(), "verdict": verdict,
                   "corrected_label": corrected_label, "edited_caption": edited_caption, "task": task,
                   "target": target_json}
            durable = self._append({"table": "feedback", "row": row})
            if verdict is not None:
                said.update(verdict=verdict, corrected_label=corrected_label, verdict_id=row["id"])
            if edited_caption is not None:
                latest["edit"].update(edited_caption=edited_caption, edit_id=row["id"])
            self._last_feedback[prediction_id] = latest
            if len(self._last_feedback) > self._known_cap:
                self._last_feedback.popitem(last=False)
        return Logged(row["id"], durable), True

    def _latest_feedback(self, prediction_id: str, task: str | None = None, target: str | None = None) -> dict:
        """The prediction's latest feedback, by what it is on (sql.latest_feedback, the dashboard's definition):
        {"edit": its latest edited caption, scope: its latest verdict on that task's output or box}."""
        scope = _verdict_scope(task, target)
        known = self._last_feedback.get(prediction_id)
        if known is not None and scope in known:
            return {key: dict(value) for key, value in known.items()}
        latest = {key: dict(value) for key, value in (known or {}).items()}
        on = None if scope == "classify" else task  # the answer's verdicts: task NULL before schema 4, or classify
        where, params = "prediction_id = ?", [prediction_id]
        if target is not None:
            where, params = where + " AND CAST(target AS VARCHAR) = ?", params + [target]
        verdicts = ("verdict", "corrected_label", "verdict_id")
        edits = ("edited_caption", "edit_id")
        with reader(self.path) as con:
            found = con.execute(f"SELECT {', '.join(verdicts)} FROM ({sql.latest_feedback(verdicts, where, on)})",
                                params).fetchall()
            latest[scope] = dict(zip(verdicts, found[0] if found else (None,) * len(verdicts)))
            if "edit" not in latest:
                found = con.execute(f"SELECT {', '.join(edits)} FROM ({sql.latest_feedback(edits, 'prediction_id = ?')})",
                                    [prediction_id]).fetchall()
                latest["edit"] = dict(zip(edits, found[0] if found else (None,) * len(edits)))
        return latest

    def knows(self, prediction_id: str) -> bool:
        """Whether a prediction with this id was logged (here, or earlier in the file) and not deleted."""
        if not isinstance(prediction_id, str) or not prediction_id:
            return False
        if prediction_id in self._deleted:
            return False
        if prediction_id in self._known:
            return True
        with reader(self.path) as con:
            found = con.execute("SELECT 1 FROM predictions WHERE id = ?", [prediction_id]).fetchone()
        if found and prediction_id not in self._deleted:
            self._remember(prediction_id)
        return bool(found) and prediction_id not in self._deleted

    def delete(self, where: str, params: Sequence) -> Removed:
        """Delete predictions (and their feedback) matching a parameterised condition, pending ones included.

        The ids go to the journal as a tombstone, on disk, before DuckDB is touched: a replay after any
        kill deletes them again instead of bringing them back. Refused (LogError) if the journal cannot
        take the tombstone.
        """
        with self._flush_lock:
            self.flush()  # everything acknowledged is in DuckDB, so the condition sees it
            with reader(self.path) as con:
                doomed = con.execute(f"SELECT id, image_file, image_sha256 FROM predictions WHERE {where}",
                                     list(params)).fetchall()
            if not doomed:
                return Removed([], 0, [], [])
            ids = [row[0] for row in doomed]
            images = [row[1] for row in doomed if row[1]]
            with self._feedback_lock:
                self._write_tombstones(ids, images)
                for prediction_id in ids:
                    self._deleted[prediction_id] = None
                    self._known.pop(prediction_id, None)
                    self._last_feedback.pop(prediction_id, None)
                    self._outputs.pop(prediction_id, None)
                while len(self._deleted) > self._known_cap:
                    self._deleted.popitem(last=False)
            feedback = self._flush_pending(self._read_pending())
        return Removed(ids, feedback, images, sorted({row[2] for row in doomed}))

    def _write_tombstones(self, ids: list[str], images: list[str]) -> None:
        lines = []
        for start in range(0, len(ids), TOMBSTONE_IDS_PER_LINE):
            event = {"delete": ids[start:start + TOMBSTONE_IDS_PER_LINE], "at": utcnow()}
            if start == 0:
                event["images"] = images
            lines.append(self._line(event))
        with self._append_lock:
            if not self._journal_ready() or self._backlog:
                raise LogError("The deletion could not be recorded: the log journal cannot be written "
                               f"({self.append_error or self.taken_over or 'unavailable'}); nothing was deleted. "
                               "Try again later.")
            try:
                self._write_line(b"".join(lines), events=len(lines))
            except OSError as exc:
                raise LogError(f"The deletion could not be recorded: the log journal cannot be written "
                               f"({exc.strerror or exc}); nothing was deleted. Try again later.") from None

    def flush(self) -> int:
        """Move journal events into DuckDB now; returns how many were moved."""
        if self._fd is None:
            raise LogError("The log is not open.")
        with self._flush_lock:
            with self._append_lock:
                ready = self._journal_ready()
                if ready:
                    self._drain_backlog_locked()
                held = list(self._backlog) if self.taken_over else []
            if held:  # the journal is another process's now: put what is held straight into DuckDB
                pending = _parse(held, 0)
                with writer(self.path) as con:
                    _apply(con, pending)
                with self._append_lock:
                    del self._backlog[:len(held)]
            pending = self._read_pending()
            if not pending.lines:
                return 0
            self._flush_pending(pending)
            return len(pending.predictions) + len(pending.feedback)

    def _flush_pending(self, pending: _Pending) -> int:
        """Apply what was read from the journal, mark it consumed and compact; returns feedback rows deleted."""
        if not pending.lines:
            return 0
        with writer(self.path) as con:
            deleted = _apply(con, pending)
        with self._append_lock:
            if pending.generation == self._generation:  # else the new journal holds these lines again: harmless
                self._consumed = pending.end
                self._journal_events -= pending.lines
                self._compact_locked()
        return deleted

    def health(self) -> dict[str, Any]:
        """Whether every acknowledged event is durable, and how many are not in DuckDB yet (for a readiness probe)."""
        with self._append_lock:
            if self._fd is not None:
                self._journal_ready()
            held = len(self._backlog)
            backlog = held + self._journal_events
            journal_bytes = os.fstat(self._fd).st_size if self._fd is not None else 0
        problem = self.taken_over or self.append_error
        if self._fd is None:
            problem = problem or "The log is not open."
        elif self.last_flush_error:
            problem = problem or f"Events are safe in the journal but cannot be moved into DuckDB: {self.last_flush_error}"
        return {"ok": problem is None, "problem": problem, "held_in_memory": held, "backlog": backlog,
                "journal_bytes": journal_bytes, "flush_failures": self.flush_failures}

    # -- journal -----------------------------------------------------------------------------------
    @staticmethod
    def _line(event: dict) -> bytes:
        return (json.dumps(event, default=_to_json, ensure_ascii=False) + "\n").encode()

    def _append(self, event: dict) -> bool:
        """Append one event; True if it is in the journal, False if it is held in memory for now."""
        if self._fd is None:
            raise LogError("The log is not open.")
        line = self._line(event)
        with self._append_lock:
            ready = self._journal_ready()  # stats the journal and lock file: once an append is enough
            if ready and self._backlog:
                self._drain_backlog_locked()
            if self._backlog or not ready:  # keep the order: nothing jumps ahead of held events
                self._backlog.append(line)
                return False
            try:
                self._write_line(line)
            except OSError as exc:
                self._backlog.append(line)
                self.append_error = (f"The log journal cannot be written ({exc.strerror or exc}); new events are "
                                     "held in memory until it can, and a stop before then loses them.")
                log.error(self.append_error)
                return False
            return True

    def _write_line(self, line: bytes, events: int = 1) -> None:
        """Append whole lines to the journal, or leave the journal as it was."""
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
        self._journal_events += events

    def _drain_backlog_locked(self) -> None:
        """Move events held in memory into the journal, in order, as far as it takes them."""
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

    def _journal_ready(self) -> bool:
        """Whether appends reach this writer's journal; recreates a journal deleted or replaced under it.

        Called with the append lock held. False (and `taken_over` set) when another process holds the log.
        """
        if self.taken_over:
            return False
        if _same_file(self.journal_path, self._fd) and _same_file(self.lock_path, self._lock_fd):
            return True
        if not _same_file(self.lock_path, self._lock_fd):
            fd = _take_lock(self.lock_path)
            if fd is None:
                return self._lost("its lock file was replaced and another process holds the new one")
            os.close(self._lock_fd)
            self._lock_fd = fd
        if not _same_file(self.journal_path, self._fd):
            if self.journal_path.exists():
                fd = _take_lock(self.journal_path, os.O_RDWR | os.O_APPEND)
                if fd is None:
                    return self._lost("its journal was replaced by one another process is writing")
                os.close(fd)
                kept = self.journal_path.with_name(f"{self.journal_path.name}.replaced-{utcnow():%Y%m%dT%H%M%S%f}")
                os.rename(self.journal_path, kept)  # never replayed: it could name rows deleted since
                log.error("The log journal %s was replaced under the running writer; the stranger was kept as %s.",
                          self.journal_path, kept.name)
            else:
                log.error("The log journal %s was deleted under the running writer; recreating it with the "
                          "%d event(s) not yet in DuckDB.", self.journal_path, self._journal_events)
            try:
                self._rewrite_journal()
            except OSError as exc:
                self.append_error = f"The log journal was removed and cannot be recreated ({exc.strerror or exc})."
                log.error(self.append_error)
                return False
        return True

    def _lost(self, why: str) -> bool:
        self.taken_over = (f"Another process has taken over the log {self.path} ({why}); this process holds new "
                           "events in memory and writes them straight into DuckDB.")
        log.error(self.taken_over)
        return False

    def _new_journal_path(self) -> Path:
        return self.journal_path.with_name(self.journal_path.name + ".new")

    def _rewrite_journal(self) -> None:
        """Replace the journal with its unconsumed part, atomically (written, synced, renamed into place)."""
        size = os.fstat(self._fd).st_size
        tail = os.pread(self._fd, size - self._consumed, self._consumed)
        new = self._new_journal_path()
        fd = os.open(new, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.write(fd, tail) != len(tail):
                raise OSError(28, "No space left on device")
            os.fsync(fd)
            os.rename(new, self.journal_path)
        except BaseException:
            os.close(fd)
            new.unlink(missing_ok=True)
            raise
        _fsync_dir(self.journal_path.parent)
        os.close(self._fd)
        self._fd = fd
        self._consumed = 0
        self._generation += 1

    def _compact_locked(self) -> None:
        """Cut what DuckDB holds out of the journal: all of it once drained, else once it passes COMPACT_BYTES."""
        if not _same_file(self.journal_path, self._fd):
            return  # the next append recreates it
        size = os.fstat(self._fd).st_size
        try:
            if size == self._consumed:
                os.ftruncate(self._fd, 0)
                self._consumed = 0
            elif self._consumed >= COMPACT_BYTES:
                self._rewrite_journal()
        except OSError as exc:  # a full disk, an immutable journal: it keeps its consumed part, replay is idempotent
            log.warning("journal compaction failed, will retry: %s", exc)

    def _read_pending(self) -> _Pending:
        with self._append_lock:
            size = os.fstat(self._fd).st_size
            consumed, generation = self._consumed, self._generation
            data = os.pread(self._fd, size - consumed, consumed)
        complete = data[: data.rfind(b"\n") + 1]
        pending = _parse(complete.splitlines(), consumed + len(complete))
        pending.generation = generation
        return pending

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
