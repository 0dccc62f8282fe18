"""The REST face through a real server over loopback with httpx: every status code, the probes and /metrics."""

from __future__ import annotations

import io
import socket
import subprocess
import sys
import time
from urllib.parse import urlparse

import httpx
import pyarrow.parquet as pq
import pytest
from prometheus_client.parser import text_string_to_metric_families

from devtools.demo_server import EXAMPLES, launched, test_settings

PASSWORD = "s3cret-for-tests"
PHOTO = sorted(EXAMPLES.glob("*.jpg"))[0]


@pytest.fixture(scope="module")
def server(tiny_classifier_dir, tiny_captioner_dir, tmp_path_factory):
    db = tmp_path_factory.mktemp("rest") / "log.duckdb"
    config = test_settings(tiny_classifier_dir, tiny_captioner_dir, db, admin_password=PASSWORD, rate_limit=0,
                           max_upload_mb=1.0)
    with launched(config) as (demo, url):
        with httpx.Client(base_url=url, timeout=120) as http:
            _wait_ready(http)
            yield demo, http


def _wait_ready(http: httpx.Client, want: int = 200, timeout: float = 120.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        answer = http.get("/readyz")
        if answer.status_code == want or time.monotonic() > deadline:
            return answer
        time.sleep(0.2)


def _predict(http: httpx.Client, photo=PHOTO, **fields) -> httpx.Response:
    with open(photo, "rb") if not isinstance(photo, bytes) else io.BytesIO(photo) as f:
        return http.post("/v1/predict", files={"image": ("photo.jpg", f, "image/jpeg")}, data=fields)


def _raw(url: str, head: str, body: bytes = b"") -> tuple[int, dict, bytes]:
    """Send headers (and part of a body) on a socket and read the answer: the server must answer without the rest."""
    where = urlparse(url)
    with socket.create_connection((where.hostname, where.port), timeout=30) as sock:
        sock.sendall(head.encode() + b"\r\n\r\n" + body)
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    top, _, rest = data.partition(b"\r\n\r\n")
    lines = top.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, rest


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


def _metrics(http: httpx.Client) -> dict[tuple, float]:
    """Every sample of /metrics as {(name, sorted labels): value}, read with prometheus_client's parser."""
    answer = http.get("/metrics")
    assert answer.status_code == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(answer.text) for s in family.samples}


def _count(samples: dict, name: str, **labels) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


# -- predictions --------------------------------------------------------------------------------------------------

def test_a_multipart_upload_is_predicted_logged_and_read_back(server):
    _, http = server
    answer = _predict(http, tasks="classify,caption", prompt="a photography of")
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["labels"] and result["caption"] and set(result["outputs"]) == {"classify", "caption"}
    again = http.get(f"/v1/predictions/{result['id']}")
    assert again.status_code == 200
    stored = again.json()
    assert stored["id"] == result["id"] and stored["source"] == "api"
    assert stored["outputs"]["classify"]["labels"][0]["label"] == result["labels"][0]["label"]
    assert stored["image"]["sha256"] == result["image"]["sha256"]


def test_each_bad_request_gets_its_status_and_a_sentence(server):
    _, http = server
    cases = [
        (_predict(http, b"this is not a photo"), 400),
        (_predict(http, tasks="astrology"), 422),
        (_predict(http, options="{not json"), 422),
        (_predict(http, prompt="x" * 301), 422),
        (http.post("/v1/predict", data={"prompt": "no file"}), 422),
        (http.post("/v1/predict", files={"photo": ("a.jpg", PHOTO.read_bytes())}), 422),
        (http.get("/v1/predictions/no-such-id"), 404),
        (http.delete("/v1/predictions/no-such-id"), 404),
        (http.post("/v1/feedback", json={"prediction_id": "no-such-id", "verdict": "up"}), 404),
        (http.post("/v1/feedback", json={"prediction_id": "x", "verdict": "maybe"}), 422),
        (http.post("/v1/feedback", json={"verdict": "up"}), 422),
        (http.get("/v1/stats", params={"window_hours": -1}), 422),
    ]
    for answer, status in cases:
        assert answer.status_code == status, (answer.request.url, answer.text)
        sentence = answer.json()["error"]
        assert isinstance(sentence, str) and sentence.endswith(".") and "Traceback" not in sentence
    assert http.get("/healthz").json() == {"ok": True}  # and the service is still up


def test_a_body_over_the_upload_limit_is_refused_before_it_is_read(server):
    demo, http = server
    head = (f"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            f"Content-Length: {5_000_000}")
    status, headers, body = _raw(str(http.base_url), head, b"--b\r\n")  # 5 of 5 MB sent: the rest never comes
    assert status == 413 and "limit is 1 MB" in body.decode()


def test_feedback_and_deletion(server):
    _, http = server
    answer = _predict(http, tasks="classify,caption").json()
    pid, given = answer["id"], answer["labels"][0]["label"]
    right = next(label for label in ("tabby", "beagle", "espresso") if label != given)
    saved = http.post("/v1/feedback", json={"prediction_id": pid, "verdict": "down", "corrected_label": right})
    assert saved.status_code == 200 and saved.json()["recorded"] is True
    assert http.get(f"/v1/predictions/{pid}").json()["feedback"]["corrected_label"] == right
    same = http.post("/v1/feedback", json={"prediction_id": pid, "corrected_label": given})
    assert same.status_code == 422 and "is the label the model gave" in same.json()["error"]
    on_caption = http.post("/v1/feedback", json={"prediction_id": pid, "verdict": "up", "task": "caption"})
    assert on_caption.status_code == 200 and on_caption.json()["task"] == "caption"
    no_boxes = http.post("/v1/feedback", json={"prediction_id": pid, "verdict": "down", "box": 0})
    assert no_boxes.status_code == 422 and "no detect output" in no_boxes.json()["error"]
    # the caption's thumbs up is its own: the answer's latest verdict is still the correction
    assert http.get(f"/v1/predictions/{pid}").json()["feedback"]["corrected_label"] == right
    gone = http.delete(f"/v1/predictions/{pid}")
    assert gone.status_code == 200 and gone.json()["deleted"]["predictions"] == 1
    assert http.get(f"/v1/predictions/{pid}").status_code == 404


def test_stats_count_predictions_and_verdicts(server):
    _, http = server
    before = http.get("/v1/stats").json()
    ids = [_predict(http, tasks="classify", prompt=f"p{i}").json()["id"] for i in range(3)]
    http.post("/v1/feedback", json={"prediction_id": ids[0], "verdict": "up"})
    http.post("/v1/feedback", json={"prediction_id": ids[1], "verdict": "down"})
    after = http.get("/v1/stats").json()
    assert after["predictions"] - before["predictions"] == 3
    assert after["thumbs_up"] - before["thumbs_up"] == 1 and after["thumbs_down"] - before["thumbs_down"] == 1
    assert 0 < after["feedback_rate"] <= 1 and after["latency_ms"]["total"]["p50"] > 0
    assert after["latency_ms"]["classify"]["p99"] >= after["latency_ms"]["classify"]["p50"]


def test_models_lists_every_task_with_its_state(server):
    _, http = server
    listed = http.get("/v1/models").json()["tasks"]
    assert {"classify", "caption"} <= set(listed)
    assert listed["classify"]["loaded"] is True and listed["classify"]["version"]


# -- admin --------------------------------------------------------------------------------------------------------

def test_admin_actions_need_the_password_as_a_bearer_token(server):
    _, http = server
    missing = http.post("/v1/admin/reload")
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    wrong = http.post("/v1/admin/reload", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403 and wrong.json()["error"]
    auth = {"Authorization": f"Bearer {PASSWORD}"}
    assert http.post("/v1/admin/reload", headers=auth).json()["classifier"]["loaded"] is True
    _predict(http, tasks="classify")
    export = http.get("/v1/admin/export", headers=auth)
    assert export.status_code == 200
    assert pq.read_table(io.BytesIO(export.content)).num_rows >= 1
    purged = http.post("/v1/admin/purge", headers=auth, json={"older_than_days": 365})
    assert purged.status_code == 200 and purged.json()["deleted"]["predictions"] == 0
    assert http.post("/v1/admin/purge", headers=auth, json={"older_than_days": -1}).status_code == 422


def test_promote_and_roll_back_over_rest(server, tmp_path):
    from devtools.standins import make_tiny_classifier

    _, http = server
    auth = {"Authorization": f"Bearer {PASSWORD}"}
    before = _predict(http, tasks="classify").json()["outputs"]["classify"]["model"]
    assert http.post("/v1/admin/promote", json={"model": str(tmp_path / "x")}).status_code == 401
    missing = http.post("/v1/admin/promote", headers=auth, json={"model": str(tmp_path / "no-such-model")})
    assert missing.status_code == 422 and missing.json()["error"].startswith("Not promoted")
    trained = make_tiny_classifier(tmp_path / "trained", seed=7)
    promoted = http.post("/v1/admin/promote", headers=auth, json={"model": str(trained)})
    assert promoted.status_code == 200 and promoted.json()["previous"] == before
    after = _predict(http, tasks="classify").json()["outputs"]["classify"]["model"]
    assert after == promoted.json()["serving"] != before  # the next request is answered by the new version
    back = http.post("/v1/admin/rollback", headers=auth)
    assert back.status_code == 200 and back.json()["serving"] == before
    assert _predict(http, tasks="classify").json()["outputs"]["classify"]["model"] == before
    nothing = http.post("/v1/admin/rollback", headers=auth)
    assert nothing.status_code == 422 and "Nothing to roll back to" in nothing.json()["error"]


# -- metrics ------------------------------------------------------------------------------------------------------

def test_metrics_count_the_requests_sent(server):
    _, http = server
    before = _metrics(http)
    for _ in range(3):
        assert _predict(http, tasks="classify").status_code == 200
    assert _predict(http, b"not a photo").status_code == 400
    pid = _predict(http, tasks="classify").json()["id"]
    http.post("/v1/feedback", json={"prediction_id": pid, "verdict": "up"})
    for _ in range(2):
        http.get("/healthz")
    after = _metrics(http)

    def delta(name, **labels):
        return _count(after, name, **labels) - _count(before, name, **labels)

    assert delta("imagerec_requests_total", endpoint="/v1/predict", status="200") == 4
    assert delta("imagerec_requests_total", endpoint="/v1/predict", status="400") == 1
    assert delta("imagerec_requests_total", endpoint="/healthz", status="200") == 2
    assert delta("imagerec_requests_total", endpoint="/v1/feedback", status="200") == 1
    assert delta("imagerec_feedback_total", verdict="up") == 1
    assert delta("imagerec_rejected_uploads_total", reason="bad_image") == 1
    assert delta("imagerec_stage_seconds_count", task="all", stage="total") == 4
    assert delta("imagerec_request_seconds_count", endpoint="/v1/predict") == 5
    assert _count(after, "imagerec_model_loaded", role="classifier") == 1
    assert ("imagerec_log_backlog", ()) in after and ("imagerec_queue_depth", ()) in after
    # every series the shipped Grafana dashboard plots is one this service exports
    import re
    from pathlib import Path

    plotted = set(re.findall(r"imagerec_[a-z_]+", (Path(__file__).parent.parent / "deploy" /
                                                     "grafana-dashboard.json").read_text()))
    exported = {name for name, _ in after}
    assert plotted and plotted <= exported, plotted - exported


def test_the_page_and_gradio_client_still_answer_on_the_same_port(server):
    from gradio_client import Client, handle_file

    _, http = server
    assert "<html" in http.get("/").text.lower()
    client = Client(str(http.base_url), verbose=False)
    assert client.predict(handle_file(str(PHOTO)), api_name="/predict")["labels"]
    assert http.get("/openapi.json").json()["paths"]["/v1/predict"]


# -- refusals that need their own server: busy, rate limited, not ready ------------------------------------------

def test_busy_and_rate_limited_callers_are_told_when_to_come_back(tiny_classifier_dir, tiny_captioner_dir,
                                                                   tmp_path):
    config = test_settings(tiny_classifier_dir, tiny_captioner_dir, tmp_path / "log.duckdb", rate_limit=3,
                           concurrency=1, queue_size=0)
    with launched(config) as (demo, url), httpx.Client(base_url=url, timeout=120) as http:
        where = urlparse(url)
        # a first request holds the only place: its headers are in, its body never comes
        holder = socket.create_connection((where.hostname, where.port))
        try:
            holder.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
                           b"boundary=b\r\nContent-Length: 100000\r\n\r\n--b\r\n")
            deadline = time.monotonic() + 30
            while demo.service.config.app.state.capacity.in_flight == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            head = ("POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                    "Content-Length: 100000")
            status, headers, body = _raw(url, head, b"--b\r\n")  # refused with 99 995 bytes unsent
            assert status == 503 and int(headers["retry-after"]) >= 1 and "busy" in body.decode()
            assert http.get("/readyz").status_code == 503
        finally:
            holder.close()
        deadline = time.monotonic() + 30
        while demo.service.config.app.state.capacity.in_flight and time.monotonic() < deadline:
            time.sleep(0.05)
        answers = [_predict(http, tasks="classify") for _ in range(3)]  # the held request was the first of 3
        assert [a.status_code for a in answers] == [200, 200, 429]
        assert answers[2].status_code == 429 and int(answers[2].headers["retry-after"]) >= 1
        assert "Too many requests" in answers[2].json()["error"]


def test_readyz_says_when_a_model_failed_to_load(tiny_captioner_dir, tmp_path):
    config = test_settings(tmp_path / "no-such-model", tiny_captioner_dir, tmp_path / "log.duckdb")
    with launched(config) as (_, url), httpx.Client(base_url=url, timeout=60) as http:
        answer = _wait_ready(http, want=-1, timeout=5)  # settles: the load fails quickly
        deadline = time.monotonic() + 60
        while "failed to load" not in answer.text and time.monotonic() < deadline:
            time.sleep(0.2)
            answer = http.get("/readyz")
        assert answer.status_code == 503 and any("classifier failed to load" in p for p in answer.json()["problems"])
        assert http.get("/healthz").status_code == 200


def test_readyz_flips_when_the_log_cannot_be_written(tiny_classifier_dir, tiny_captioner_dir, tmp_path):
    db = tmp_path / "log.duckdb"
    config = test_settings(tiny_classifier_dir, tiny_captioner_dir, db)
    with launched(config) as (demo, url), httpx.Client(base_url=url, timeout=60) as http:
        assert _wait_ready(http).status_code == 200
        # another process takes the log over: the lock file replaced and held by it
        lock = db.with_name(db.name + ".lock")
        lock.unlink()
        holder = subprocess.Popen([sys.executable, "-c", (
            "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600); "
            "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(120)"), str(lock)],
            stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout.readline().strip() == "held"
            answer = http.get("/readyz")
            assert answer.status_code == 503 and "taken over the log" in " ".join(answer.json()["problems"])
            samples = _metrics(http)
            assert samples[("imagerec_log_ok", ())] == 0
        finally:
            holder.kill()
            holder.wait()


# -- a Space's persistent storage ---------------------------------------------------------------------------------

def test_a_space_keeps_its_log_and_model_cache_on_persistent_storage_when_it_has_it(tmp_path):
    from pipelines import space

    storage = tmp_path / "data"
    assert space.persistent_dir({"SPACE_ID": "me/imagerec"}, storage) is None  # not turned on: no /data
    assert space.log_is_ephemeral(str(tmp_path / "log.duckdb"), {"SPACE_ID": "me/imagerec"}, storage)
    storage.mkdir()
    environ = {"SPACE_ID": "me/imagerec"}
    assert space.use_persistent_cache(environ, storage) == str(storage / ".huggingface") == environ["HF_HOME"]
    assert space.use_persistent_cache({"SPACE_ID": "x", "HF_HOME": "/mine"}, storage) is None  # the owner's wins
    assert not space.log_is_ephemeral(str(storage / "imagerec.duckdb"), environ, storage)
    assert space.log_is_ephemeral(str(tmp_path / "log.duckdb"), environ, storage)
    assert not space.log_is_ephemeral(str(tmp_path / "log.duckdb"), {}, storage)  # not a Space: no notice
    assert space.persistent_dir({}, storage) is None
