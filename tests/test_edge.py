"""The server's edge under attack: huge bodies, upload floods, identical uploads from many visitors, exports."""

from __future__ import annotations

import io
import json
import os
import select
import socket
import threading
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from gradio_client import Client, handle_file
from PIL import Image
from playwright.sync_api import expect

from pipelines.log.export import ExportShelf
from pipelines.uploads import UploadBudget, UploadRefs
from tests.browser import recognize_upload
from devtools.demo_server import EXAMPLES, demo_process, free_port, launched, test_settings, wait_for_http

PHOTO = EXAMPLES / "cat.jpg"
MB = 1_000_000


def _upload_folder() -> Path:
    from gradio.utils import get_upload_folder
    return Path(get_upload_folder())


def _unique_photo(folder: Path, name: str, size: int = 96) -> Path:
    """A JPEG no other test uploads (noise), so Gradio's shared upload folder holds only our copies of it."""
    path = folder / name
    Image.effect_noise((size, size), 80).convert("RGB").save(path, quality=90)
    return path


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _send(port: int, path: str, total: int, chunked: bool = False, source: str = "127.0.0.1",
          content_type: str = "application/json", head: bytes = b"", tail: bytes = b"",
          timeout: float = 60.0) -> tuple[int, dict, bytes, int]:
    """POST a body of `total` bytes (head + filler + tail), stopping as soon as the server answers; returns
    (status, headers, body, body bytes the server let us send)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {total}"
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {content_type}\r\n"
                 f"{framing}\r\n\r\n".encode())
    sent, block = 0, b"x" * 65536
    deadline = time.monotonic() + timeout
    try:
        while sent < total and time.monotonic() < deadline:
            readable, writable, _ = select.select([sock], [sock], [], 1.0)
            if readable:
                break  # the server answered before the body was all sent
            if not writable:
                continue
            if sent == 0 and head:
                piece = head
            elif total - sent <= len(tail):
                piece = tail[len(tail) - (total - sent):]
            else:
                piece = block[:max(1, min(len(block), total - sent - len(tail)))]
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            sent += len(piece)
        if chunked and sent >= total:
            sock.sendall(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass
    answer = b""
    try:
        while b"\r\n\r\n" not in answer or len(answer) < _expected(answer):
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    except (ConnectionResetError, socket.timeout):
        pass
    finally:
        sock.close()
    header_text, _, body = answer.partition(b"\r\n\r\n")
    lines = header_text.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines and lines[0] else 0
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body, sent


def _expected(answer: bytes) -> int:
    head, _, _ = answer.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(head) + 4 + int(line.split(b":")[1])
    return len(answer) + 1  # unknown: read until the server closes


def _port(url: str) -> int:
    return int(url.rstrip("/").rsplit(":", 1)[1])


def _multipart(name: str, payload: bytes) -> tuple[bytes, bytes, str]:
    boundary = "imagerecedgeboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode() + payload
    return head, f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _upload(port: int, payload: bytes, name: str, source: str = "127.0.0.1", chunked: bool = False):
    head, tail, content_type = _multipart(name, payload)
    return _send(port, "/gradio_api/upload", len(head) + len(tail), chunked=chunked, source=source,
                 content_type=content_type, head=head, tail=tail)


# --- 1. request bodies are capped at the server ------------------------------------------------------------------

def test_150mb_json_bodies_are_refused_before_they_are_read(tiny_classifier_dir, tiny_captioner_dir, tmp_path):
    port = free_port()
    args = ["--classifier", str(tiny_classifier_dir), "--captioner", str(tiny_captioner_dir),
            "--db", str(tmp_path / "log.duckdb"), "--port", str(port)]
    with demo_process(args, env={"IMAGEREC_CAPTION_MAX_TOKENS": "4"}) as process:
        url = f"http://127.0.0.1:{port}/"
        wait_for_http(url, process)
        client = Client(url, verbose=False)
        pid = client.predict(handle_file(str(PHOTO)), api_name="/predict")["id"]
        before = _rss_mb(process.pid)
        for route in ("/gradio_api/call/feedback", "/gradio_api/queue/join"):
            for chunked in (False, True):
                status, headers, body, sent = _send(port, route, 150 * MB, chunked=chunked)
                print(f"\n{route} chunked={chunked}: {status}, {sent / MB:.2f} MB of 150 MB sent before the answer")
                assert status == 413, (route, chunked, status, body[:300])
                message = json.loads(body)["error"]
                assert "over the limit of 1,000 KB" in message and message.count(". ") == 0, message
                assert sent < 20 * MB, f"{sent} bytes went in before the refusal"
        after = _rss_mb(process.pid)
        print(f"server resident memory: {before:.0f} MB before, {after:.0f} MB after four 150 MB bodies")
        assert after - before < 60, f"resident memory rose {after - before:.0f} MB"
        # the service stays up, and legitimate JSON still gets through, up to a 1,000-character caption
        answer = client.predict(pid, "up", None, "é" * 1000, api_name="/feedback")
        assert answer["recorded"]
        with pytest.raises(Exception, match="the limit is 1000"):
            client.predict(pid, None, None, "x" * 100_000, api_name="/feedback")  # under the cap: the app's sentence
        assert client.predict(handle_file(str(PHOTO)), api_name="/predict")["labels"]


def test_a_data_url_must_fit_the_body_cap(tiny_classifier_dir, tiny_captioner_dir, tmp_path):
    config = test_settings(tiny_classifier_dir, tiny_captioner_dir, tmp_path / "log.duckdb", max_body_kb=64)
    big = io.BytesIO()
    Image.effect_noise((400, 400), 80).convert("RGB").save(big, "BMP")  # 480 KB as a data: URL in JSON
    import base64
    payload = {"data": [{"path": None, "url": "data:image/bmp;base64," + base64.b64encode(big.getvalue()).decode(),
                         "meta": {"_type": "gradio.FileData"}}, None]}
    with launched(config) as (demo, url):
        body = json.dumps(payload).encode()
        status, _, answer, _ = _send(_port(url), "/gradio_api/call/predict", len(body), head=body)
        assert status == 413 and "upload route" in json.loads(answer)["error"]
        assert Client(url, verbose=False).predict(handle_file(str(PHOTO)), api_name="/predict")["labels"]


# --- 2. a per-client upload budget ---------------------------------------------------------------------------------

def test_an_upload_flood_is_held_to_the_budget_per_client(tiny_classifier_dir, tiny_captioner_dir, tmp_path):
    config = test_settings(tiny_classifier_dir, tiny_captioner_dir, tmp_path / "log.duckdb", upload_budget_mb=2)
    payload = os.urandom(400_000)
    with launched(config) as (demo, url):
        port = _port(url)
        accepted, refused, stored = 0, [], 0
        for i in range(30):  # 12 MB tried in a burst from one address
            status, headers, body, _ = _upload(port, payload, f"flood{i}.jpg")
            if status == 200:
                accepted += 1
                stored += len(payload)
            else:
                refused.append((status, headers, body))
        print(f"\nflood from one client: {accepted} of 30 uploads of 400 KB stored ({stored / MB:.1f} MB), "
              f"budget 2 MB a minute")
        assert stored <= 2 * MB and accepted >= 4
        status, headers, body = refused[0]
        assert status == 429 and 1 <= int(headers["retry-after"]) <= 60
        assert json.loads(body)["error"].startswith("Too many uploads from your address: the limit is 2 MB a minute")
        # a chunked body (no Content-Length) is counted as it streams and refused the same way
        head, tail, content_type = _multipart("chunked.jpg", b"")
        status, headers, body, sent = _send(port, "/gradio_api/upload", 100 * MB, chunked=True, head=head, tail=tail,
                                            content_type=content_type)
        print(f"a chunked 100 MB upload over the budget: {status} after {sent / MB:.1f} MB sent")
        assert status == 429 and sent < 20 * MB
        # another address has its own budget
        status, _, body, _ = _upload(port, payload, "other.jpg", source="127.0.0.2")
        assert status == 200, body
        # and the service stays up for predictions from elsewhere
        assert Client(url, verbose=False).predict is not None


# --- 3. identical uploads from different visitors -----------------------------------------------------------------

def test_identical_uploads_from_four_clients_never_interfere(tiny_classifier_dir, tiny_captioner_dir, tmp_path):
    config = test_settings(tiny_classifier_dir, tiny_captioner_dir, tmp_path / "log.duckdb", rate_limit=0,
                           cache_size=0, queue_size=64)
    photo = _unique_photo(tmp_path, "same-for-everyone.jpg")
    clients, rounds = 4, 26
    failures: list[str] = []
    answered: list[str] = []

    def visitor(url: str) -> None:
        client = Client(url, verbose=False)
        for _ in range(rounds):
            try:
                answered.append(client.predict(handle_file(str(photo)), api_name="/predict")["id"])
            except Exception as exc:  # noqa: BLE001 - every failure counts
                failures.append(str(exc)[:200])

    with launched(config) as (demo, url):
        threads = [threading.Thread(target=visitor, args=(url,)) for _ in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=600)
        print(f"\n{clients} clients x {rounds}: {len(answered)} answered, {len(failures)} failed")
        assert not failures, failures[:3]
        assert len(answered) == clients * rounds
        left = [p for p in _upload_folder().rglob(photo.name)]
        assert not left, f"cached copies left after the API calls: {left}"
        assert len(demo.upload_refs) == 0


def _uploaded(refs: UploadRefs, path: Path) -> None:
    """What the gate reports for one upload of a path."""
    refs.upload_started()
    refs.upload_finished([str(path)])


def test_upload_references_keep_a_shared_file_until_its_last_holder_is_done(tmp_path):
    now = [0.0]
    refs = UploadRefs(clock=lambda: now[0], claim_ttl=100)
    shared = tmp_path / ("5" * 64) / "photo.jpg"  # Gradio names the folder by the bytes' sha256
    shared.parent.mkdir()
    shared.write_bytes(b"same bytes")

    _uploaded(refs, shared)  # a visitor's page
    refs.acquire(str(shared), "session:a")
    _uploaded(refs, shared)  # an API caller with the same bytes
    refs.acquire(str(shared), "api:1")
    assert not refs.release(str(shared), "api:1") and shared.exists(), "the session still shows it"
    _uploaded(refs, shared)  # a second API caller, not yet predicting
    assert refs.release_all("session:a") == 0 and shared.exists(), "the second caller has not used it yet"
    refs.acquire(str(shared), "api:2")
    assert refs.release(str(shared), "api:2") and not shared.exists() and not shared.parent.exists()

    # a deletion waits while an upload is in flight: it may be renaming the same bytes into place
    shared.parent.mkdir()
    shared.write_bytes(b"same bytes")
    refs.acquire(str(shared), "api:3")
    refs.upload_started()
    assert refs.release(str(shared), "api:3") and shared.exists()
    refs.upload_finished([str(shared)])  # it was: the new upload's claim keeps the file
    assert shared.exists() and refs.held(str(shared))
    now[0] += 101  # a claim nobody used expires with Gradio's own cache age
    assert refs.sweep() == 1 and not shared.exists() and len(refs) == 0


def test_upload_budget_window():
    now = [0.0]
    budget = UploadBudget(1000, clock=lambda: now[0])
    assert budget.take("a", 600) == 0 and budget.take("b", 600) == 0
    now[0] = 10
    assert budget.take("a", 300) == 0
    assert budget.take("a", 200) == 50.0  # the first 600 leave the window at 60 s
    now[0] = 60
    assert budget.take("a", 200) == 0
    assert budget.take("a", 5000) == 60.0
    assert UploadBudget(0).take("a", 10**12) == 0


# --- 4. admin exports ----------------------------------------------------------------------------------------------

def _raw_export(url: str) -> str:
    """Ask for an export without downloading it; returns the path on the server."""
    request = urllib.request.Request(f"{url}gradio_api/call/admin_export", data=b'{"data": [null]}',
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        event = json.loads(response.read())["event_id"]
    with urllib.request.urlopen(f"{url}gradio_api/call/admin_export/{event}", timeout=60) as response:
        text = response.read().decode()
    data = next(line for line in text.splitlines() if line.startswith("data:"))
    return json.loads(data[5:])[0]["path"]


def test_exports_go_once_downloaded_or_when_rows_are_deleted(tiny_classifier_dir, tiny_captioner_dir, tmp_path):
    config = test_settings(tiny_classifier_dir, tiny_captioner_dir, tmp_path / "log.duckdb")
    with launched(config) as (demo, url):
        client = Client(url, verbose=False)
        first = client.predict(handle_file(str(PHOTO)), api_name="/predict")["id"]
        client.predict(handle_file(str(EXAMPLES / "coffee.jpg")), api_name="/predict")

        held = Path(_raw_export(url))  # exported, not fetched yet
        assert held.exists() and first in pq.read_table(held).column("id").to_pylist()
        client.predict(first, api_name="/delete_my_data")
        assert not held.exists() and not held.parent.exists(), "an export kept a deleted prediction"

        written: list[Path] = []
        write = demo.exports.write
        demo.exports.write = lambda db: written.append(write(db)) or written[-1]  # note where each export went
        for _ in range(5):  # exports fetched by the client go from the server at once: none accumulate
            local = client.predict(None, api_name="/admin_export")
            assert pq.read_table(local).num_rows == 1 and Path(local) not in written
        # the server removes a file once its last byte is sent, which can come just after the client has it all
        deadline = time.monotonic() + 60
        while any(p.exists() or p.parent.exists() for p in written) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(written) == 5 and not any(p.exists() or p.parent.exists() for p in written)
        assert len(demo.exports) == 0

        second = Path(_raw_export(url))
        assert second.exists()
        client.predict(0.0, api_name="/admin_purge")  # a purge of everything: no export keeps a purged row
        assert not second.exists()
        with urllib.request.urlopen(url, timeout=10):
            pass  # still up


def test_an_export_not_fetched_goes_after_its_ttl(tmp_path):
    from pipelines.log.eventlog import EventLog
    from tests.logwriter import sample_row

    db = tmp_path / "log.duckdb"
    with EventLog(db) as log:
        log.log_prediction(sample_row(1))
    shelf = ExportShelf(tmp_path / "exports", ttl=5.0)
    paths = [shelf.write(db) for _ in range(3)]
    assert all(p.exists() for p in paths) and oct(paths[0].parent.stat().st_mode & 0o777) == "0o700"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(p.exists() for p in paths):
        time.sleep(0.1)
    assert not any(p.exists() for p in paths) and len(shelf) == 0
    assert not list((tmp_path / "exports").iterdir())
    shelf.close()


def _demo_rows(demo, db) -> int:
    from pipelines.log import eventlog
    demo.studio.log.flush()
    return len(eventlog.query(db, "SELECT id FROM predictions WHERE source = 'demo'"))


@pytest.mark.browser
def test_a_visitor_and_an_api_caller_with_the_same_photo(browser, tiny_classifier_dir, tiny_captioner_dir, tmp_path):
    """The API caller's copy goes without breaking the visitor's page; Delete my data then removes the copy."""
    photo = _unique_photo(tmp_path, "shared-by-two.jpg")
    config = test_settings(tiny_classifier_dir, tiny_captioner_dir, tmp_path / "log.duckdb", rate_limit=0)
    with launched(config) as (demo, url):
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        try:
            recognize_upload(page, url, photo)
            cached = list(_upload_folder().rglob(photo.name))
            assert len(cached) == 1
            client = Client(url, verbose=False)
            for _ in range(3):  # the same bytes from a program: one path in Gradio's cache
                assert client.predict(handle_file(str(photo)), api_name="/predict")["labels"]
            assert cached[0].exists(), "an API call deleted the copy the visitor's page still uses"
            page.locator("#recognize").click()  # the visitor runs it again on the same copy
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and _demo_rows(demo, config.db) < 2:
                time.sleep(0.2)
            assert _demo_rows(demo, config.db) == 2, "the visitor's second run on the shared copy failed"
            page.locator("#delete-my-data").click()
            page.locator("#confirm-delete").click()  # the page asks first
            page.locator("#message").get_by_text("Deleted 2 prediction(s)", exact=False).wait_for(timeout=60_000)
            expect(page.locator("#message")).to_contain_text("1 uploaded copy(ies)")
            assert "could not be found" not in page.content()
        finally:
            page.close()
    assert not cached[0].exists() and not cached[0].parent.exists(), "Delete my data left the cached copy"
    assert len(demo.upload_refs) == 0
