"""Start the demo for tests: in this process (launched Gradio server) or as `python -m demo`."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

from pipelines import settings

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ROOT.parent / "shared" / "data" / "imagenet-sample"
EXAMPLES = ROOT / "demo" / "examples"


def free_port() -> int:
    """A port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_settings(classifier: Path, captioner: Path, db: Path, **overrides) -> settings.Settings:
    """Settings for a demo on the tiny models, a temp log and a free port."""
    values = dict(classifier=str(classifier), captioner=str(captioner), db=str(db), port=free_port(),
                  caption_max_tokens=6, flush_interval=0.1, compiled="off")
    values.update(overrides)
    return settings.Settings.defaults(**values)


test_settings.__test__ = False  # a helper, not a test


@contextlib.contextmanager
def launched(config: settings.Settings) -> Iterator[tuple[object, str]]:
    """The demo app launched in this process; yields (app, url)."""
    from demo.app import create_app, launch

    demo = create_app(config)
    try:
        _, url, _ = launch(demo, config, prevent_thread_lock=True, quiet=True)
        yield demo, url
    finally:
        if getattr(demo, "service", None) is not None:
            demo.service.close()
        demo.close()
        demo.studio.close()


def wait_for_http(url: str, process: subprocess.Popen | None = None, timeout: float = 120.0) -> None:
    """Wait until url answers, failing early if the server process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            output = "".join(stream.read() for stream in (process.stdout, process.stderr) if stream)
            raise RuntimeError(f"server exited with {process.returncode}: {output[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.25)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


@contextlib.contextmanager
def demo_process(args: list[str], env: dict | None = None) -> Iterator[subprocess.Popen]:
    """`python -m demo ARGS` as a separate process, stopped afterwards."""
    process = subprocess.Popen([sys.executable, "-m", "demo", *args], cwd=ROOT, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               env={**os.environ, **(env or {})})
    try:
        yield process
    finally:
        stop(process)


def stop(process: subprocess.Popen) -> None:
    """End a server process: politely, then for sure."""
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def streamlit_server(db: Path, refresh_seconds: float = 5.0, **env: str) -> Iterator[str]:
    """`streamlit run dashboard/app.py` on a free port over the log at db; yields its URL."""
    port = free_port()
    environment = {**os.environ, "IMAGEREC_DB": str(db), "IMAGEREC_REFRESH_SECONDS": str(refresh_seconds), **env}
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "dashboard/app.py", "--server.port", str(port),
         "--server.headless", "true", "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_for_http(url + "_stcore/health", process)
        yield url
    finally:
        stop(process)
