"""Tests that try: path traversal, forged payloads, hostile text, limits, access control, deletion, faults."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from pipelines.log import eventlog
from pipelines.log import privacy
from pipelines.log.eventlog import EventLog
from devtools.demo_server import EXAMPLES, ROOT, demo_process, free_port, launched, test_settings, wait_for_http
from tests.logwriter import sample_row

PHOTO = EXAMPLES / "cat.jpg"


@pytest.fixture(scope="module")
def server(tiny_classifier_dir, tiny_captioner_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("trust")
    config = test_settings(tiny_classifier_dir, tiny_captioner_dir, folder / "log.duckdb", keep_images=True,
                           images_dir=str(folder / "images"), max_upload_mb=0.5)
    with launched(config) as (demo, url):
        yield url, config, demo


@pytest.fixture(scope="module")
def client(server):
    return Client(server[0], verbose=False)


def _rows(db, sql, params=()):
    return eventlog.query(db, sql, list(params))


TRAVERSALS = [
    "gradio_api/file=/etc/passwd",
    "gradio_api/file=..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "gradio_api/file=..%2f..%2F..%2f..%2Fetc%2fpasswd",
    "gradio_api/file=%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "gradio_api/file=%2E%2E%2F%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
    "gradio_api/file=....//....//etc/passwd",
    "gradio_api/file=..\\..\\..\\etc\\passwd",
    "gradio_api/file=%252e%252e%252fetc%252fpasswd",
    "gradio_api/file/../../../etc/passwd",
    "gradio_api/file=/proc/self/environ",
    "file=/etc/passwd",
    "static/../../../../etc/passwd",
]


@pytest.mark.parametrize("route", TRAVERSALS)
def test_path_traversal_on_file_routes_is_refused(server, route):
    try:
        with urllib.request.urlopen(server[0] + route, timeout=10) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    assert b"root:" not in body and b"PATH=" not in body, f"{route} leaked a file"
    assert status in (400, 403, 404), f"{route} answered {status}"


def _raw_call(url: str, endpoint: str, data: list) -> str:
    """Call an endpoint with a hand-made payload (gradio_client would upload a local path itself)."""
    request = urllib.request.Request(f"{url}gradio_api/call/{endpoint}", data=json.dumps({"data": data}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        event_id = json.loads(response.read())["event_id"]
    with urllib.request.urlopen(f"{url}gradio_api/call/{endpoint}/{event_id}", timeout=60) as response:
        return response.read().decode()


@pytest.mark.parametrize("target", ["/etc/passwd", str(PHOTO.resolve()), "../../../etc/hostname",
                                    "/tmp/../etc/passwd"])
def test_a_forged_file_payload_naming_a_server_path_is_refused(server, target):
    db = server[1].db
    server[2].studio.log.flush()
    before = len(_rows(db, "SELECT id FROM predictions"))
    answer = _raw_call(server[0], "predict", [{"path": target, "meta": {"_type": "gradio.FileData"},
                                               "orig_name": "x.jpg"}, None])
    assert "event: error" in answer and "event: complete" not in answer, answer
    assert "root:" not in answer and "labels" not in answer
    server[2].studio.log.flush()
    assert len(_rows(db, "SELECT id FROM predictions")) == before, "a server file was read and recognized"


HOSTILE = [
    "Robert'); DROP TABLE predictions;--",
    "\" OR 1=1 -- ; SELECT * FROM feedback",
    "<script>window.__xss = 1</script>",
    "<img src=x onerror=\"document.title='pwned'\">",
    "a 🐱 on a 🛋️, très mignon",
    "قطة نائمة على الأريكة",  # right to left
    "שלום \u202e evil \u202c",
    "line one\nline two\ttabbed",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_captions_and_labels_are_stored_verbatim(server, client, text):
    pid = client.predict(handle_file(str(PHOTO)), api_name="/predict")["id"]
    client.predict(pid, None, None, text, api_name="/feedback")
    client.predict(pid, "down", text, None, api_name="/feedback")
    server[2].studio.log.flush()
    rows = _rows(server[1].db, "SELECT edited_caption, corrected_label FROM feedback WHERE prediction_id = ? "
                               "ORDER BY created_at", [pid])
    assert rows.edited_caption[0] == text
    assert rows.corrected_label[1] == text.strip()
    assert _rows(server[1].db, "SELECT count(*) AS n FROM predictions").n[0] > 0  # the table is still there


def test_100kb_of_text_is_refused_with_a_message(client):
    pid = client.predict(handle_file(str(PHOTO)), api_name="/predict")["id"]
    with pytest.raises(Exception, match="the limit is 1000"):
        client.predict(pid, None, None, "x" * 100_000, api_name="/feedback")
    with pytest.raises(Exception, match="the limit is 200"):
        client.predict(pid, "down", "y" * 100_000, None, api_name="/feedback")
    with pytest.raises(Exception, match="the limit is 300"):
        client.predict(handle_file(str(PHOTO)), "z" * 100_000, api_name="/predict")


def test_feedback_for_an_unknown_id_is_refused_and_repeats_count_once(server, client):
    with pytest.raises(Exception, match="no prediction"):
        client.predict("f" * 32, "up", None, None, api_name="/feedback")
    with pytest.raises(Exception, match="no prediction"):
        client.predict("'; DELETE FROM predictions; --", "up", None, None, api_name="/feedback")
    pid = client.predict(handle_file(str(PHOTO)), api_name="/predict")["id"]
    first = client.predict(pid, "down", "tiger cat", None, api_name="/feedback")
    again = client.predict(pid, "down", "tiger cat", None, api_name="/feedback")
    assert not first["duplicate"] and again["duplicate"] and again["id"] == first["id"]
    server[2].studio.log.flush()
    assert _rows(server[1].db, "SELECT count(*) AS n FROM feedback WHERE prediction_id = ?", [pid]).n[0] == 1


def test_upload_size_is_capped_on_the_server(server, client, tmp_path):
    big = tmp_path / "big.png"
    Image.effect_noise((800, 800), 100).convert("RGB").save(big)  # about 1.9 MB of noise, over the 0.5 MB cap
    assert big.stat().st_size > 500_000
    with pytest.raises(Exception):
        client.predict(handle_file(str(big)), api_name="/predict")
    # the server itself refuses the upload, whatever the browser or client does
    boundary = "imagerecboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + big.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(server[0] + "gradio_api/upload", data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 413


def test_kept_images_have_no_metadata_and_delete_my_data_leaves_nothing(server, client, tmp_path):
    photo = tmp_path / "gps.jpg"
    exif = Image.Exif()
    exif[0x010F] = "CameraMaker"
    exif[0x8825] = {1: "N", 2: (48.0, 51.0, 24.0), 3: "E", 4: (2.0, 21.0, 3.0)}  # GPS
    Image.open(PHOTO).save(photo, exif=exif)
    assert Image.open(photo).getexif().get(0x8825)
    result = client.predict(handle_file(str(photo)), api_name="/predict")
    client.predict(result["id"], "up", None, None, api_name="/feedback")
    server[2].studio.log.flush()
    stored = _rows(server[1].db, "SELECT image_file FROM predictions WHERE id = ?", [result["id"]]).image_file[0]
    kept = Path(server[1].images_dir) / stored
    assert kept.exists() and oct(kept.stat().st_mode & 0o777) == "0o600"
    assert oct(kept.parent.stat().st_mode & 0o777) == "0o700"
    with Image.open(kept) as image:
        assert not image.getexif() and not image.info.get("exif") and not image.info.get("icc_profile")

    answer = client.predict(result["id"], api_name="/delete_my_data")
    assert answer["deleted"]["predictions"] == 1 and answer["deleted"]["feedback"] == 1
    assert answer["deleted"]["images"] == 1 and "Deleted 1 prediction" in answer["message"]
    assert not kept.exists()
    assert not len(_rows(server[1].db, "SELECT id FROM predictions WHERE id = ?", [result["id"]]))
    assert not len(_rows(server[1].db, "SELECT id FROM feedback WHERE prediction_id = ?", [result["id"]]))
    assert not any(p.name == "gps.jpg" for p in Path(_upload_folder()).rglob("*")), "a cached copy is left"
    # nor are its answers kept in memory: the same photo again runs the models
    again = client.predict(handle_file(str(photo)), api_name="/predict")
    assert again["cached"] is False
    assert client.predict(handle_file(str(photo)), api_name="/predict")["cached"] is True


def _upload_folder() -> str:
    from gradio.utils import get_upload_folder
    return get_upload_folder()


def test_purge_command_removes_old_rows_and_their_images(tmp_path):
    db, images = tmp_path / "log.duckdb", tmp_path / "images"
    store = privacy.ImageStore(images)
    with EventLog(db) as log:
        old = [log.log_prediction(sample_row(i, created_at=datetime.now() - timedelta(days=40),
                                             image_file=store.save(Image.new("RGB", (32, 32)))))
               for i in range(3)]
        log.log_feedback(old[0], verdict="up")
        fresh = log.log_prediction(sample_row(9, image_file=store.save(Image.new("RGB", (32, 32)))))
    out = subprocess.run([sys.executable, "-m", "pipelines.privacy", "purge", "--db", str(db), "--images-dir",
                          str(images), "--older-than", "30"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Deleted 3 prediction(s), 1 feedback row(s), 3 kept image(s)" in out.stdout
    assert list(_rows(db, "SELECT id FROM predictions").id) == [fresh]
    assert sorted(_rows(db, "SELECT prediction_id, task FROM outputs").itertuples(index=False)) == \
        [(fresh, "caption"), (fresh, "classify")]  # the deleted requests' outputs went with them
    assert len(list(images.iterdir())) == 1


def test_rate_limit_per_client(tiny_classifier_dir, tiny_captioner_dir, tmp_path):
    config = test_settings(tiny_classifier_dir, tiny_captioner_dir, tmp_path / "log.duckdb", rate_limit=3)
    with launched(config) as (demo, url):
        client = Client(url, verbose=False)
        for _ in range(3):
            client.predict(handle_file(str(PHOTO)), api_name="/predict")
        with pytest.raises(Exception, match="Too many requests.*3 predictions a minute"):
            client.predict(handle_file(str(PHOTO)), api_name="/predict")


def test_admin_actions_need_the_password_once_one_is_set(tiny_classifier_dir, tiny_captioner_dir, tmp_path):
    open_config = test_settings(tiny_classifier_dir, tiny_captioner_dir, tmp_path / "open.duckdb")
    with launched(open_config) as (demo, url):  # no password: open from this machine
        client = Client(url, verbose=False)
        client.predict(handle_file(str(PHOTO)), api_name="/predict")
        exported = client.predict(None, api_name="/admin_export")
        assert pq.read_table(exported).num_rows == 1
        assert client.predict(None, api_name="/admin_reload")["classifier"]["loaded"]

    closed = test_settings(tiny_classifier_dir, tiny_captioner_dir, tmp_path / "closed.duckdb",
                           admin_password="s3cret-enough")
    with launched(closed) as (demo, url):
        client = Client(url, verbose=False)
        for call in (lambda t: client.predict(t, api_name="/admin_export"),
                     lambda t: client.predict(t, api_name="/admin_reload"),
                     lambda t: client.predict(1.0, t, api_name="/admin_purge")):
            with pytest.raises(Exception, match="admin password"):
                call(None)
            with pytest.raises(Exception, match="admin password"):
                call("wrong")
        assert client.predict(30.0, "s3cret-enough", api_name="/admin_purge")["deleted"]["predictions"] == 0


@pytest.mark.parametrize("content", [os.urandom(30_000), b"", b"SQLite format 3\x00" + b"\x00" * 4000])
def test_a_bad_log_file_at_start_is_kept_aside_and_the_demo_comes_up(tiny_classifier_dir, tiny_captioner_dir,
                                                                       tmp_path, content):
    db = tmp_path / "log.duckdb"
    db.write_bytes(content)
    port = free_port()
    args = ["--classifier", str(tiny_classifier_dir), "--captioner", str(tiny_captioner_dir), "--db", str(db),
            "--port", str(port)]
    with demo_process(args) as process:
        url = f"http://127.0.0.1:{port}/"
        wait_for_http(url, process)
        client = Client(url, verbose=False)
        pid = client.predict(handle_file(str(PHOTO)), api_name="/predict")["id"]
        kept = [p for p in tmp_path.iterdir() if ".bad-" in p.name]
        assert len(kept) == 1 and kept[0].read_bytes() == content
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not len(_rows(db, "SELECT id FROM predictions WHERE id = ?", [pid])):
            time.sleep(0.1)
        assert len(_rows(db, "SELECT id FROM predictions WHERE id = ?", [pid])) == 1
    output = process.stdout.read()
    assert "kept as" in output and "fresh log" in output, output[-2000:]


def test_status_on_the_page_says_the_log_was_set_aside(tiny_classifier_dir, tiny_captioner_dir, tmp_path):
    db = tmp_path / "log.duckdb"
    db.write_bytes(b"not a database at all" * 100)
    with launched(test_settings(tiny_classifier_dir, tiny_captioner_dir, db)) as (demo, url):
        from demo.app import status_markdown
        status = status_markdown(demo.studio)
        assert "kept as log.duckdb.bad-" in status and "fresh log" in status


def test_png_bytes_helper_makes_valid_images():
    # guards the helpers above: a broken image factory would make the limit tests pass for the wrong reason
    buffer = io.BytesIO()
    Image.new("RGB", (20, 20)).save(buffer, "PNG")
    assert Image.open(io.BytesIO(buffer.getvalue())).size == (20, 20)


@pytest.mark.browser
def test_hostile_text_is_shown_escaped_in_the_dashboard(browser, tmp_path):
    from devtools.demo_server import streamlit_server

    db = tmp_path / "log.duckdb"
    with EventLog(db) as log:
        for i, text in enumerate(HOSTILE):
            pid = log.log_prediction(sample_row(i, labels=[text, "tabby"], caption=text))
            log.log_feedback(pid, verdict="down", corrected_label=text)
            log.log_feedback(pid, edited_caption=text + " (edited)")
    with streamlit_server(db) as url:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        dialogs: list[str] = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(url)
        page.locator(".stPlotlyChart").first.wait_for(timeout=60_000)
        for tab in page.get_by_role("tab").all():
            tab.click()
            page.wait_for_timeout(1500)
            assert page.evaluate("window.__xss === undefined"), f"a script ran on the {tab.inner_text()} tab"
            assert page.title() != "pwned"
            assert page.locator("img[src='x']").count() == 0
            assert page.locator("[data-testid='stException']").count() == 0
        page.close()
    assert not dialogs



def test_an_unreachable_hub_falls_back_to_cached_models(tiny_classifier_dir, tmp_path):
    """With the hub unreachable (not offline mode), a model already in the local cache loads from there."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--imagerec-test--tiny-vit"
    shutil.copytree(tiny_classifier_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    probe = ("from pipelines.tasks.classify import Classifier\n"
             "model = Classifier('imagerec-test/tiny-vit').load()\n"
             "print(model.revision, len(model.labels))\n")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_ENDPOINT": "http://127.0.0.1:9",
           "PYTHONPATH": str(ROOT)}
    env.pop("HF_HUB_OFFLINE", None)
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [commit, "10"], out.stdout

    missing = ("from pipelines.tasks.classify import Classifier\nfrom pipelines.models import ModelLoadError\n"
               "try:\n    Classifier('imagerec-test/not-cached').load()\n"
               "except ModelLoadError as exc:\n    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", missing], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert "imagerec-test/not-cached" in out.stdout and "local folder" in out.stdout, out.stdout + out.stderr[-1000:]
