"""The dashboard reading while a real writer (the demo's EventLog, in another process) logs events."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

from streamlit.testing.v1 import AppTest

from dashboard import logfile, queries
from pipelines.log import eventlog
from pipelines.log import seed

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "dashboard" / "app.py")
SEEDED = 2000
WRITES = 80  # at 20 a second: about 4 s of writing

# The demo's side: an EventLog logging predictions (and some verdicts) at a steady rate. It reports
# every flush error it saw (last_flush_error is cleared by the next good flush, so it is sampled after
# every event and the module's warnings are caught too) and how long its flushes took.
WRITER = r"""
import json, logging, sys, time
from pipelines.log import eventlog
from tests.logwriter import sample_row

path, count, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
errors, flushes = [], []

class Catch(logging.Handler):
    def emit(self, record):
        errors.append(record.getMessage())

logging.getLogger("pipelines.log.eventlog").addHandler(Catch(logging.WARNING))
log = eventlog.EventLog(path).open()
flush = log.flush
def timed_flush():
    started = time.monotonic()
    try:
        return flush()
    finally:
        flushes.append(time.monotonic() - started)
log.flush = timed_flush
print("ready", flush=True)
predictions = feedback = 0
started = time.monotonic()
while predictions < count:
    pid = log.log_prediction(sample_row(predictions, source="live-test", session_id=None,
                                        caption="a photo of a cat"))
    predictions += 1
    if predictions % 3 == 0:
        log.log_feedback(pid, verdict="up")
        feedback += 1
    if log.last_flush_error:
        errors.append(log.last_flush_error)
    time.sleep(max(0.0, started + predictions / rate - time.monotonic()))  # at most `rate` a second
log.close()
if log.last_flush_error:
    errors.append(log.last_flush_error)
print(json.dumps({"predictions": predictions, "feedback": feedback, "errors": errors,
                  "max_flush_s": max(flushes), "seconds": time.monotonic() - started}), flush=True)
"""


def test_dashboard_and_writer_both_keep_working(tmp_path, monkeypatch):
    path = tmp_path / "live.duckdb"
    now = eventlog.utcnow()
    seed.seed(str(path), SEEDED, seed=5, end=now, days=2)  # ends at this hour, so new rows share the window
    seeded_feedback = eventlog.query(path, "SELECT count(*) AS n FROM feedback")["n"].item()
    monkeypatch.setenv("IMAGEREC_DB", str(path))
    monkeypatch.setenv("IMAGEREC_REFRESH_SECONDS", "30")  # the cache must follow writes, not its TTL
    monkeypatch.delenv("IMAGEREC_DASHBOARD_PASSWORD", raising=False)
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception and [m.value for m in at.metric][0] == f"{SEEDED:,}"

    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(WRITES), "20"], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "ready", writer.stderr.read()
        seen, shown, reads = [], [], 0
        while writer.poll() is None:
            # every page's queries, on one connection, as the app does on each render
            with logfile.Session(path) as session:
                ctx = queries.context(session.con)
                window = queries.Filters(start=ctx.newest - timedelta(days=7), end=ctx.newest + timedelta(hours=1))
                for page in queries.PAGES.values():
                    page(session.con, window, "hour")
            seen.append(ctx.predictions)
            at.run()
            assert not at.exception, [e.value for e in at.exception]
            assert not at.error and not at.warning, [e.value for e in [*at.error, *at.warning]]
            shown.append(int(at.metric[0].value.replace(",", "")))
            reads += 1
            time.sleep(0.2)  # a dashboard refreshes every few seconds; this is already far more often
        out, err = writer.communicate(timeout=60)
    finally:
        if writer.poll() is None:
            writer.kill()
    assert writer.returncode == 0, err
    report = json.loads(out.strip().splitlines()[-1])

    # the writer: no flush ever failed, flushes stayed short, and every event reached DuckDB
    assert report["errors"] == []
    assert report["max_flush_s"] < 10.0, report  # the writer's own open timeout is 30 s
    assert report["predictions"] == WRITES, report
    total = SEEDED + report["predictions"]
    counts = eventlog.query(path, "SELECT (SELECT count(*) FROM predictions) AS p, "
                                  "(SELECT count(*) FROM feedback) AS f, "
                                  "(SELECT count(*) FROM predictions WHERE source = 'live-test') AS live")
    assert counts.to_dict("records") == [{"p": total, "f": seeded_feedback + report["feedback"],
                                          "live": report["predictions"]}]

    # the dashboard: read throughout, and saw the count grow while the writer ran
    assert reads >= 3
    assert seen == sorted(seen) and seen[-1] > seen[0] >= SEEDED
    assert shown == sorted(shown) and shown[-1] > SEEDED
    at.run()  # after the writer's last flush: all the new rows show up
    assert not at.exception
    assert at.metric[0].value == f"{total:,}"
    assert any(c.value.startswith(f"{total:,} predictions") for c in at.caption)
