"""The demo killed mid-burst, 20 times over; and 16 clients for 60 s while the dashboard refreshes every second."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from gradio_client import Client, handle_file

from pipelines.log import eventlog
from devtools.demo_server import EXAMPLES, ROOT, free_port, wait_for_http

PHOTOS = sorted(EXAMPLES.glob("*.jpg"))
KILLS = int(os.environ.get("IMAGEREC_KILLS", "20"))
LOAD_SECONDS = float(os.environ.get("IMAGEREC_LOAD_SECONDS", "60"))


def _start_demo(classifier, captioner, db, port, **env):
    args = [sys.executable, "-m", "demo", "--classifier", str(classifier), "--captioner", str(captioner),
            "--db", str(db), "--port", str(port)]
    # one load generator stands for many visitors: no per-address rate limit or upload budget
    environment = {**os.environ, "IMAGEREC_CAPTION_MAX_TOKENS": "4", "IMAGEREC_RATE_LIMIT": "0",
                   "IMAGEREC_UPLOAD_BUDGET_MB": "0", "IMAGEREC_FLUSH_INTERVAL": "0.1", **env}
    return subprocess.Popen(args, cwd=ROOT, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def _started(classifier, captioner, db):
    """A demo up and answering on a free port; a port taken in between by someone else is tried again."""
    for attempt in range(3):
        port = free_port()
        process = _start_demo(classifier, captioner, db, port)
        try:
            wait_for_http(f"http://127.0.0.1:{port}/", process)
            return port, process
        except RuntimeError as exc:
            if "port" not in str(exc).lower() or attempt == 2:
                raise
    raise AssertionError("unreachable")


def _burst(url: str, acked: list[str], stop: threading.Event, clients: int = 3) -> None:
    """Predict from a few clients until stopped; keep the ids the server acknowledged."""
    def run(k: int) -> None:
        client = Client(url, verbose=False)
        i = k
        while not stop.is_set():
            try:
                result = client.predict(handle_file(str(PHOTOS[i % len(PHOTOS)])), f"shot {i}", api_name="/predict")
            except Exception:
                return  # the server died under us: what it did not answer was not acknowledged
            acked.append(result["id"])
            i += clients

    threads = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)


def test_sigkill_during_a_write_burst_20_times(tiny_classifier_dir, tiny_captioner_dir, tmp_path):
    db = tmp_path / "log.duckdb"
    acked: list[str] = []
    survived = 0
    for round_ in range(KILLS):
        port, process = _started(tiny_classifier_dir, tiny_captioner_dir, db)  # the log opened, whatever the kill left
        try:
            stop = threading.Event()
            before = len(acked)
            burst = threading.Thread(target=_burst, args=(f"http://127.0.0.1:{port}/", acked, stop), daemon=True)
            burst.start()
            deadline = time.monotonic() + 30
            while len(acked) < before + 5 + round_ % 7 and time.monotonic() < deadline:
                time.sleep(0.01)
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
            stop.set()
            burst.join(timeout=60)
            assert len(acked) > before, f"round {round_}: nothing was answered before the kill"
            survived += 1
        finally:
            if process.poll() is None:
                process.kill()
    # The next start replays whatever the killed processes left in the journal.
    from pipelines.log.eventlog import EventLog
    with EventLog(db):
        pass
    found = set(eventlog.query(db, "SELECT id FROM predictions").id)
    lost = set(acked) - found
    print(f"\nSIGKILLs survived: {survived}; acknowledged predictions: {len(acked)}; in the log: {len(found)}; "
          f"lost: {len(lost)}")
    assert survived == KILLS
    assert not lost


def _percentiles(values: list[float]) -> str:
    if not values:
        return "none"
    p50, p95, p99 = np.percentile(np.array(values) * 1000, [50, 95, 99])
    return f"p50 {p50:.0f} ms, p95 {p95:.0f} ms, p99 {p99:.0f} ms"


@pytest.mark.browser
def test_16_clients_for_60s_while_the_dashboard_refreshes_every_second(browser, tiny_classifier_dir,
                                                                       tiny_captioner_dir, tmp_path):
    from pipelines.log import seed
    from devtools.demo_server import streamlit_server  # the dashboard as people start it

    db = tmp_path / "log.duckdb"
    seed.seed(str(db), 2000)
    port = free_port()
    demo = _start_demo(tiny_classifier_dir, tiny_captioner_dir, db, port, IMAGEREC_QUEUE_SIZE="8")
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_for_http(url, demo)
        with streamlit_server(db, refresh_seconds=1) as dashboard_url:
            page = browser.new_page()
            page.goto(dashboard_url)
            page.locator(".stPlotlyChart").first.wait_for(timeout=60_000)
            answered, busy, failed = [], [], []
            lock = threading.Lock()
            deadline = time.monotonic() + LOAD_SECONDS

            def client_loop(k: int) -> None:
                client = Client(url, verbose=False)
                i = k
                while time.monotonic() < deadline:
                    started = time.perf_counter()
                    try:
                        result = client.predict(handle_file(str(PHOTOS[i % len(PHOTOS)])), f"load {k} {i}",
                                                api_name="/predict")
                        with lock:
                            answered.append((result["id"], time.perf_counter() - started))
                    except Exception as exc:
                        with lock:
                            (busy if "queue is full" in str(exc).lower() else failed).append(
                                (str(exc)[:200], time.perf_counter() - started))
                        time.sleep(0.05)
                    i += 16

            with ThreadPoolExecutor(16) as pool:
                list(pool.map(client_loop, range(16)))
            time.sleep(2)
            dashboard_errors = page.locator("[data-testid='stException']").count()
            page.close()
        demo.send_signal(signal.SIGTERM)
        demo.wait(timeout=60)
        demo_stderr = demo.stderr.read()
    finally:
        if demo.poll() is None:
            demo.kill()

    ids = [a[0] for a in answered]
    logged = eventlog.query(db, "SELECT id, count(*) AS n FROM predictions WHERE source = 'api' GROUP BY id")
    counts = dict(zip(logged.id, logged.n))
    sent = len(answered) + len(busy) + len(failed)
    print(f"\nload: {sent} requests sent, {len(answered)} answered ({_percentiles([a[1] for a in answered])}), "
          f"{len(busy)} refused as busy ({_percentiles([b[1] for b in busy])}), {len(failed)} failed; "
          f"logged {sum(counts.get(i, 0) for i in ids)}, lost {sum(1 for i in ids if i not in counts)}")
    assert not failed, failed[:3]
    assert dashboard_errors == 0
    assert "Traceback" not in demo_stderr, demo_stderr[-3000:]
    assert answered and all(counts.get(i) == 1 for i in ids), "every answered request is logged exactly once"
    assert len(counts) == len(set(ids)), "nothing is logged that was not answered"
    assert all("queue is full" in b[0].lower() for b in busy)

