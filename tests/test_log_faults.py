"""The log under faults: deletions that stay deleted across kills, honest acknowledgement when the journal
cannot be written, in-process DuckDB conflicts, and purge on a wrong path. Real processes, real signals."""

from __future__ import annotations

import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from pipelines.log import eventlog
from pipelines.log.eventlog import EventLog, FeedbackRejected, LogError
from devtools.demo_server import demo_process, free_port, wait_for_http, PHOTOS
from tests.logwriter import sample_row

ROOT = Path(__file__).resolve().parent.parent
KILLS = 20  # half SIGKILL, half SIGTERM; the demo test adds one of each

# A writer process under load: one thread logs predictions (three sessions a round) and feedback, another
# deletes by id and by session. Each line is printed only once the call returned: "P id session durable",
# "F feedback-id prediction-id durable", "d id..." / "s session" before a deletion, "D id..." after it.
BURST = r"""
import random, sys, threading, time
from pipelines.log import eventlog
from pipelines.log.eventlog import EventLog, FeedbackRejected
from tests.logwriter import sample_row
db, round_, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
eventlog.COMPACT_BYTES = 4096  # compact often, so that kills land in compactions too
rng = random.Random(seed)
out = threading.Lock()
def say(*parts):
    with out:
        print(*parts, flush=True)
log = EventLog(db, flush_interval=0.02).open()
acked, lock = [], threading.Lock()
def logger():
    i = 0
    while True:
        session = f"{round_}-{rng.randrange(3)}"
        pid = log.log_prediction(sample_row(i, session_id=session))
        say("P", pid, session, int(pid.durable))
        with lock:
            acked.append((pid, session))
        if rng.random() < 0.6:
            with lock:
                target = rng.choice(acked)[0]
            try:
                fid, _ = log.log_feedback(target, verdict=rng.choice(["up", "down"]), edited_caption=f"c{i}")
                say("F", fid, target, int(fid.durable))
            except FeedbackRejected:
                pass  # deleted a moment ago
        i += 1
def deleter():
    while True:
        time.sleep(rng.uniform(0.002, 0.02))
        with lock:
            if not acked:
                continue
            pid, session = rng.choice(acked)
        if rng.random() < 0.3:
            say("s", session)
            removed = log.delete("session_id = ?", [session])
        else:
            say("d", pid)
            removed = log.delete("id = ?", [pid])
        say("D", *removed.ids)
say("open")
threading.Thread(target=logger, daemon=True).start()
deleter()
"""


def _spawn(code: str, *args: str, **popen) -> tuple[subprocess.Popen, list[str], threading.Thread]:
    process = subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, **popen)
    lines: list[str] = []
    # a kill can cut the last line short: only whole lines count as said
    reading = threading.Thread(target=lambda: lines.extend(line[:-1] for line in process.stdout
                                                           if line.endswith("\n")), daemon=True)
    reading.start()
    return process, lines, reading


def _wait_for(predicate, process: subprocess.Popen, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout  # a safety net only
    while not predicate():
        if process.poll() is not None:
            raise AssertionError(f"the writer exited with {process.returncode}: {process.stderr.read()[-3000:]}")
        assert time.monotonic() < deadline, "the writer made no progress"
        time.sleep(0.01)


def _kill(process: subprocess.Popen, reading: threading.Thread, sig: int) -> None:
    process.send_signal(sig)
    process.wait(timeout=60)
    reading.join(timeout=60)
    process.stderr.close()


def _ids(db: Path, table: str = "predictions") -> set[str]:
    return set(eventlog.query(db, f"SELECT id FROM {table}").id)


def _account(lines: list[str], ledger: dict) -> None:
    """Fold one writer's output into what must be in the log, what must not, and what may be either."""
    by_session: dict[str, set[str]] = {}
    open_intent: tuple[str, str] | None = None
    for line in lines:
        kind, *rest = line.split()
        if kind == "P":
            ledger["acked"].add(rest[0])
            by_session.setdefault(rest[1], set()).add(rest[0])
        elif kind == "F":
            ledger["feedback"][rest[0]] = rest[1]
        elif kind in ("d", "s"):
            open_intent = (kind, rest[0])
        elif kind == "D":
            ledger["deleted"].update(rest)
            open_intent = None
    # a kill between the announcement and the answer: the deletion may or may not have happened, to the id
    # or to every id of the session (those logged after the announcement included)
    if open_intent:
        kind, key = open_intent
        ledger["uncertain"].update(({key} if kind == "d" else by_session.get(key, set())) - ledger["deleted"])


def test_deleted_rows_never_come_back_over_20_kills(tmp_path):
    db = tmp_path / "log.duckdb"
    rng = random.Random(9)
    ledger = {"acked": set(), "deleted": set(), "uncertain": set(), "feedback": {}}
    resurrected = {signal.SIGKILL: 0, signal.SIGTERM: 0}
    kills = {signal.SIGKILL: 0, signal.SIGTERM: 0}

    def count_resurrected(sig: int) -> None:
        came_back = ledger["deleted"] & _ids(db)
        resurrected[sig] += len(came_back)
        ledger["deleted"] -= came_back  # each counted once

    for round_ in range(KILLS):
        sig = signal.SIGKILL if round_ % 2 == 0 else signal.SIGTERM
        process, lines, reading = _spawn(BURST, str(db), str(round_), str(rng.randrange(10**6)))
        _wait_for(lambda: "open" in lines, process)
        if round_:  # this writer has replayed what the previous one left: did a deleted row come back?
            count_resurrected(previous)
        target = rng.randrange(10, 45)
        _wait_for(lambda: any(line[:2] == "D " for line in lines) and len(lines) >= target, process)
        _kill(process, reading, sig)
        kills[sig] += 1
        _account(lines, ledger)
        previous = sig
    with EventLog(db):  # the last kill's leftovers, replayed
        pass
    count_resurrected(previous)
    found, feedback = _ids(db), eventlog.query(db, "SELECT id, prediction_id FROM feedback")
    must_stay = ledger["acked"] - ledger["deleted"] - ledger["uncertain"]
    lost = must_stay - found
    feedback_ids = set(feedback.id)
    feedback_lost = {f for f, p in ledger["feedback"].items() if p in must_stay and f not in feedback_ids}
    orphans = int((~feedback.prediction_id.isin(found)).sum())
    outputs = eventlog.query(db, "SELECT prediction_id, task FROM outputs")
    output_orphans = int((~outputs.prediction_id.isin(found)).sum())
    print(f"\n{kills[signal.SIGKILL]} SIGKILLs and {kills[signal.SIGTERM]} SIGTERMs; predictions acknowledged "
          f"{len(ledger['acked'])}, deleted {len(ledger['deleted'])}, in flight at a kill "
          f"{len(ledger['uncertain'])}; resurrected after SIGKILL {resurrected[signal.SIGKILL]}, after SIGTERM "
          f"{resurrected[signal.SIGTERM]}; acknowledged predictions lost {len(lost)}, acknowledged feedback lost "
          f"{len(feedback_lost)}, feedback of deleted predictions left {orphans}")
    assert len(ledger["deleted"]) >= KILLS, "every round deletes at least one row before its kill"
    assert resurrected == {signal.SIGKILL: 0, signal.SIGTERM: 0}
    assert not lost and not feedback_lost and orphans == 0
    assert output_orphans == 0 and len(outputs) == 2 * len(found)  # each request's two outputs, none of a deleted one
    assert not found & ledger["deleted"]


def test_a_tombstone_a_kill_cut_short_finishes_the_deletion_at_the_next_start(tmp_path):
    db = tmp_path / "log.duckdb"
    log = EventLog(db, flush_interval=60).open()
    ids = [log.log_prediction(sample_row(i)) for i in range(3)]
    log.log_feedback(ids[0], verdict="up")
    log.flush()
    log._write_tombstones([ids[0]], [])  # on disk; then the process dies before DuckDB is touched
    log._stop.set()
    log._release()
    assert ids[0] in _ids(db)
    with EventLog(db):
        pass
    assert _ids(db) == set(ids[1:]) and not _ids(db, "feedback")


def test_a_journal_that_never_drains_is_compacted(tmp_path, monkeypatch):
    monkeypatch.setattr(eventlog, "COMPACT_BYTES", 2048)
    db = tmp_path / "log.duckdb"
    log = EventLog(db, flush_interval=60).open()
    ids = [log.log_prediction(sample_row(i)) for i in range(20)]
    pending = log._read_pending()
    late = log.log_prediction(sample_row(99))  # arrives while the flush runs: the journal never drains
    journal = log.journal_path
    before = journal.stat().st_size
    log._flush_pending(pending)
    after = journal.stat().st_size
    assert before > 5 * after and after == len(journal.read_bytes().splitlines()[0]) + 1
    log._stop.set()
    log._release()  # a crash: the next start replays the compacted journal
    with EventLog(db):
        pass
    assert _ids(db) == set(ids) | {late}
    assert int(eventlog.query(db, "SELECT count(*) AS n FROM predictions").n[0]) == 21


# A writer that logs one prediction every few ms and says whether each was durable, and its health.
STEADY = r"""
import json, sys, time
from pipelines.log.eventlog import EventLog
from tests.logwriter import sample_row
log = EventLog(sys.argv[1], flush_interval=float(sys.argv[2])).open()
print("open", flush=True)
i = 0
while True:
    pid = log.log_prediction(sample_row(i))
    print("P", pid, int(pid.durable), flush=True)
    if i % 10 == 0:
        print("H", json.dumps(log.health()), flush=True)
    i += 1
    time.sleep(0.003)
"""


def _durable(lines: list[str]) -> tuple[set[str], set[str]]:
    events = [line.split() for line in lines if line.startswith("P ")]
    return {e[1] for e in events if e[2] == "1"}, {e[1] for e in events if e[2] == "0"}


def _last_health(lines: list[str]) -> dict:
    return json.loads([line for line in lines if line.startswith("H ")][-1][2:])


def test_disk_full_then_sigkill_loses_no_durable_event(tmp_path):
    db = tmp_path / "log.duckdb"
    with EventLog(db):
        pass

    def small_disk() -> None:  # every file this process writes stops at 40 kB: EFBIG (SIGXFSZ is ignored)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000))

    process, lines, reading = _spawn(STEADY, str(db), "0.05", preexec_fn=small_disk)
    _wait_for(lambda: len(_durable(lines)[1]) >= 10, process)
    health = _last_health(lines)
    _kill(process, reading, signal.SIGKILL)
    durable, held = _durable(lines)
    with EventLog(db):
        pass
    lost = durable - _ids(db)
    print(f"\ndisk full: {len(durable)} acknowledged durable, {len(held)} answered with logged=false, "
          f"durable lost after SIGKILL {len(lost)}; health while full: {health}")
    assert durable and not lost
    assert health["ok"] is False and health["held_in_memory"] > 0 and "journal cannot be written" in health["problem"]


def test_an_immutable_journal_is_reported_and_nothing_durable_is_lost(tmp_path):
    if shutil.which("chattr") is None or os.geteuid() != 0:
        pytest.skip("chattr +i needs the chattr tool and root")
    db = tmp_path / "log.duckdb"
    journal = db.with_name(db.name + ".journal")
    process, lines, reading = _spawn(STEADY, str(db), "60")  # no flush: the journal keeps every event
    try:
        _wait_for(lambda: len(_durable(lines)[0]) >= 20, process)
        if subprocess.run(["chattr", "+i", str(journal)], capture_output=True).returncode:
            pytest.skip("this file system does not support chattr +i")
        _wait_for(lambda: len(_durable(lines)[1]) >= 10, process)
        health = _last_health(lines)
        _kill(process, reading, signal.SIGKILL)
    finally:
        subprocess.run(["chattr", "-i", str(journal)], capture_output=True)
        if process.poll() is None:
            process.kill()
    durable, held = _durable(lines)
    with EventLog(db):
        pass
    lost = durable - _ids(db)
    print(f"\nimmutable journal: {len(durable)} acknowledged durable, {len(held)} answered with logged=false, "
          f"durable lost after SIGKILL {len(lost)}; health: {health}")
    assert not lost
    assert health["ok"] is False and health["held_in_memory"] > 0


def test_a_journal_deleted_under_the_writer_is_recreated_and_a_second_writer_refused(tmp_path):
    db = tmp_path / "log.duckdb"
    journal = db.with_name(db.name + ".journal")
    process, lines, reading = _spawn(STEADY, str(db), "60")  # no flush: every event lives only in the journal
    try:
        _wait_for(lambda: len(_durable(lines)[0]) >= 20, process)
        journal.unlink()
        before = len(_durable(lines)[0])  # acknowledged into the journal that is now gone
        _wait_for(lambda: len(_durable(lines)[0]) >= before + 20, process)
        with pytest.raises(LogError, match="already writing"):
            EventLog(db).open()  # the first writer is alive: the log is not up for grabs
        assert journal.exists(), "the writer recreates its journal"
        _kill(process, reading, signal.SIGKILL)
    finally:
        if process.poll() is None:
            process.kill()
    durable, held = _durable(lines)
    with EventLog(db):
        pass
    lost = durable - _ids(db)
    print(f"\njournal deleted: {len(durable)} acknowledged durable ({len(held)} not), second writer refused, "
          f"lost after SIGKILL {len(lost)}")
    assert len(durable) >= before + 20 and not held and not lost  # events before and after the deletion


def test_feedback_deletes_reads_and_flushes_in_threads_never_conflict(tmp_path):
    db = tmp_path / "log.duckdb"
    log = EventLog(db, flush_interval=0.01).open()
    ids = [log.log_prediction(sample_row(i, session_id=f"s{i % 8}")) for i in range(240)]
    log.flush()
    log._known.clear()  # knows() and the duplicate check must ask DuckDB, as they do for older rows
    errors: list[str] = []
    calls = {"n": 0}
    rng = random.Random(4)

    def feedback(k):
        try:
            log.log_feedback(rng.choice(ids), verdict="up" if k % 2 else "down")
        except FeedbackRejected as exc:
            assert "no prediction" in str(exc)  # deleted by another thread a moment ago
    actions = [
        feedback,
        lambda k: log.knows(rng.choice(ids)),
        lambda k: log.delete("id = ?", [ids[k * 7 % len(ids)]]),
        lambda k: log.delete("session_id = ?", [f"s{k % 8}"]) if k % 10 == 9 else log.flush(),
        lambda k: eventlog.query(db, "SELECT count(*) FROM feedback"),
        lambda k: log.log_prediction(sample_row(1000 + k)),
    ]

    def work(action):
        for k in range(60):
            try:
                action(k)
            except Exception as exc:
                errors.append(repr(exc))
            calls["n"] += 1

    threads = [threading.Thread(target=work, args=(a,)) for a in actions for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    log.close()
    print(f"\nin-process: {calls['n']} calls from {len(threads)} threads, {len(errors)} failures")
    assert calls["n"] == 720 and not errors, errors[:3]


def _purge(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.privacy", "purge", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_purge_refuses_a_path_that_is_not_a_log_and_creates_nothing(tmp_path):
    typo = tmp_path / "typo" / "imagerec.duckdb"
    out = _purge("--db", str(typo), "--older-than", "1")
    assert out.returncode != 0 and "There is no imagerec log" in out.stderr and "Deleted" not in out.stdout
    assert not typo.parent.exists()
    missing = tmp_path / "imagrec.duckdb"  # the folder exists, the name is mistyped
    out = _purge("--db", str(missing), "--older-than", "1")
    assert out.returncode != 0 and "There is no imagerec log" in out.stderr
    assert list(tmp_path.iterdir()) == [], "nothing is created beside it either"
    foreign = tmp_path / "notes.txt"
    foreign.write_text("not a database")
    out = _purge("--db", str(foreign), "--older-than", "1")
    assert out.returncode != 0 and "not a readable DuckDB log" in out.stderr
    assert foreign.read_text() == "not a database" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_purge_goes_through_the_journal_and_waits_for_no_running_writer(tmp_path):
    db = tmp_path / "log.duckdb"
    log = EventLog(db, flush_interval=60).open()
    old = [log.log_prediction(sample_row(i, created_at=datetime.now() - timedelta(days=40))) for i in range(4)]
    log.log_feedback(old[0], verdict="up")
    fresh = log.log_prediction(sample_row(9))
    out = _purge("--db", str(db), "--older-than", "30")  # refused: the writer holds the log
    assert out.returncode == 1 and "already writing" in out.stderr
    log._stop.set()
    log._release()  # the writer dies; its events live only in the journal
    out = _purge("--db", str(db), "--older-than", "30")
    assert out.returncode == 0, out.stderr
    assert "Deleted 4 prediction(s), 1 feedback row(s)" in out.stdout
    with EventLog(db):  # the next start replays the journal: the purged rows stay purged
        pass
    assert _ids(db) == {fresh} and not _ids(db, "feedback")
    assert set(eventlog.query(db, "SELECT prediction_id FROM outputs").prediction_id) == {fresh}


def test_the_demo_closes_its_log_on_sigterm_and_deletions_stay_deleted(tiny_classifier_dir, tiny_captioner_dir,
                                                                       tmp_path):
    from gradio_client import Client, handle_file

    db = tmp_path / "log.duckdb"
    journal = db.with_name(db.name + ".journal")
    photos = sorted(PHOTOS.glob("*.JPEG"))[:2]
    env = {"IMAGEREC_FLUSH_INTERVAL": "3600", "IMAGEREC_CAPTION_MAX_TOKENS": "4", "HF_HUB_OFFLINE": "1"}
    port = free_port()
    with demo_process(["--classifier", str(tiny_classifier_dir), "--captioner", str(tiny_captioner_dir),
                       "--db", str(db), "--port", str(port)], env=env) as process:
        url = f"http://127.0.0.1:{port}/"
        wait_for_http(url, process)
        client = Client(url, verbose=False)
        results = [client.predict(handle_file(str(p)), api_name="/predict") for p in photos]
        assert all(r["logged"] is True for r in results)
        feedback = client.predict(results[0]["id"], "up", None, None, api_name="/feedback")
        assert feedback["logged"] is True and feedback["recorded"] is True
        gone = client.predict(results[0]["id"], api_name="/delete_my_data")
        assert gone["deleted"] == {"predictions": 1, "feedback": 1, "images": 0, "uploads": 0}
        later = client.predict(handle_file(str(photos[0])), api_name="/predict")  # the same photo, anew
        assert later["logged"] is True and later["id"] != results[0]["id"]
        assert journal.stat().st_size > 0  # a flush an hour away: the last prediction is only in the journal
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        output = process.stdout.read()
    assert journal.stat().st_size == 0, "SIGTERM closed the log: the journal was drained into DuckDB"
    assert "Traceback" not in output, output[-2000:]
    found = _ids(db)  # read as it is, before any writer replays anything
    kept = {later["id"], results[1]["id"]}
    print(f"\ndemo SIGTERM: exit 0, journal {journal.stat().st_size} bytes; deleted 1, resurrected "
          f"{len({results[0]['id']} & found)}; kept {len(kept)}, lost {len(kept - found)}")
    assert found == kept and not _ids(db, "feedback")


def test_a_deletion_that_cannot_be_journalled_is_refused_with_a_sentence(tiny_classifier_dir, tiny_captioner_dir,
                                                                         tmp_path):
    if shutil.which("chattr") is None or os.geteuid() != 0:
        pytest.skip("chattr +i needs the chattr tool and root")
    from gradio_client import Client, handle_file
    from devtools.demo_server import launched, test_settings

    db = tmp_path / "log.duckdb"
    journal = db.with_name(db.name + ".journal")
    config = test_settings(tiny_classifier_dir, tiny_captioner_dir, db, flush_interval=3600.0)
    with launched(config) as (_, url):
        client = Client(url, verbose=False)
        result = client.predict(handle_file(str(sorted(PHOTOS.glob("*.JPEG"))[0])), api_name="/predict")
        if subprocess.run(["chattr", "+i", str(journal)], capture_output=True).returncode:
            pytest.skip("this file system does not support chattr +i")
        try:
            with pytest.raises(Exception) as refused:
                client.predict(result["id"], api_name="/delete_my_data")
        finally:
            subprocess.run(["chattr", "-i", str(journal)], capture_output=True)
        assert "nothing was deleted" in str(refused.value), str(refused.value)
        assert client.predict(result["id"], "up", None, None, api_name="/feedback")["recorded"] is True
        gone = client.predict(result["id"], api_name="/delete_my_data")  # once the journal can be written
        assert gone["deleted"]["predictions"] == 1
    assert result["id"] not in _ids(db)
