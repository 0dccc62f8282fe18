"""The demo through a launched Gradio server and gradio_client, and `python -m demo` as people start it."""

from __future__ import annotations

import io
import subprocess
import sys
import time
import urllib.request

import pytest
from gradio_client import Client, handle_file
from PIL import Image

from pipelines.log import eventlog
from devtools.demo_server import EXAMPLES, PHOTOS, ROOT, demo_process, free_port, launched, test_settings, wait_for_http

PHOTO = EXAMPLES / "cat.jpg"


@pytest.fixture(scope="module")
def server(tiny_classifier_dir, tiny_captioner_dir, tmp_path_factory):
    db = tmp_path_factory.mktemp("demo") / "log.duckdb"
    config = test_settings(tiny_classifier_dir, tiny_captioner_dir, db, rate_limit=0)  # many calls a minute here
    with launched(config) as (demo, url):
        yield url, db


@pytest.fixture(scope="module")
def client(server):
    return Client(server[0], verbose=False)


def _bad_files(tmp_path):
    png = io.BytesIO()
    Image.new("RGB", (8, 300)).save(png, "PNG")
    truncated = PHOTO.read_bytes()[:2000]
    files = {
        "document.pdf": (b"%PDF-1.7\n1 0 obj <<>> endobj\n", "PDF"),
        "drawing.svg": (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>', "SVG"),
        "notes.txt": (b"just some text, not a photo\n" * 10, "text"),
        "noise.jpg": (bytes(range(256)) * 8, "not an image"),
        "empty.png": (b"", "empty"),
        "thin.png": (png.getvalue(), "at least 16 pixels"),
        "cut.jpg": (truncated, "damaged or incomplete"),
    }
    paths = {}
    for name, (data, expected) in files.items():
        path = tmp_path / name
        path.write_bytes(data)
        paths[path] = expected
    return paths


def test_predict_returns_the_json_contract(client):
    result = client.predict(handle_file(str(PHOTO)), api_name="/predict")
    assert set(result) >= {"id", "labels", "caption", "timings_ms"}
    assert len(result["id"]) == 32
    assert len(result["labels"]) == 5
    assert all(set(item) == {"label", "score"} for item in result["labels"])
    scores = [item["score"] for item in result["labels"]]
    assert scores == sorted(scores, reverse=True) and 0 < scores[0] <= 1
    assert isinstance(result["caption"], str) and result["caption"]
    assert set(result["timings_ms"]) == {"intake", "classify", "caption", "total"}
    assert result["image"]["width"] == 451 and result["image"]["height"] == 300


def test_predict_without_tasks_keeps_the_old_contract_and_adds_outputs(client):
    result = client.predict(handle_file(str(PHOTO)), api_name="/predict")
    assert set(result["outputs"]) == {"classify", "caption"}
    assert result["outputs"]["classify"]["labels"] == result["labels"]
    assert result["outputs"]["caption"]["caption"] == result["caption"]
    assert result["outputs"]["classify"]["model"].startswith(result["models"]["classifier"]["id"] + "@local-")
    assert result["outputs"]["caption"]["model"].startswith(result["models"]["captioner"]["id"] + "@local-")
    assert "photo" not in result and "runs" not in result  # the decoded photo never leaves the server


def test_predict_runs_the_tasks_named(client):
    explained = client.predict(handle_file(str(PHOTO)), None, ["explain"], api_name="/predict")
    assert set(explained["outputs"]) == {"classify", "explain"}  # explain needs the classifier's answer
    assert explained["caption"] is None and explained["labels"]
    payload = explained["outputs"]["explain"]
    assert payload["label"] == explained["labels"][0]["label"]
    assert payload["model"] == explained["outputs"]["classify"]["model"]
    rows, cols = len(payload["heatmap"]), len(payload["heatmap"][0])
    assert cols > rows  # the cat photo is 451x300: the heatmap covers it with its aspect
    assert all(0.0 <= v <= 1.0 for row in payload["heatmap"] for v in row)
    only = client.predict(handle_file(str(PHOTO)), "a photography of", ["caption"], api_name="/predict")
    assert only["labels"] is None and set(only["outputs"]) == {"caption"}
    assert only["outputs"]["caption"]["prompt"] == "a photography of"
    every = client.predict(handle_file(str(PHOTO)), None, ["classify", "caption", "explain"], api_name="/predict")
    assert set(every["outputs"]) == {"classify", "caption", "explain"}
    assert set(every["timings_ms"]) == {"intake", "classify", "caption", "explain", "total"}


def test_plain_http_callers_written_before_tasks_existed_still_work(server):
    import httpx
    import json

    url = server[0]
    with httpx.Client(timeout=60) as http:
        uploaded = http.post(f"{url}gradio_api/upload", files={"files": ("cat.jpg", PHOTO.read_bytes())}).json()
        photo = {"path": uploaded[0], "meta": {"_type": "gradio.FileData"}, "orig_name": "cat.jpg"}
        for data, tasks_run in (([photo, None], {"classify", "caption"}), ([photo], {"classify", "caption"}),
                                ([photo, None, ["explain"]], {"classify", "explain"}),
                                ([photo, None, ["caption"], {"caption": {}}], {"caption"})):
            event = http.post(f"{url}gradio_api/call/predict", json={"data": data}).json()["event_id"]
            body = http.get(f"{url}gradio_api/call/predict/{event}").text
            assert "event: complete" in body, (len(data), body[:300])
            result = json.loads(body.split("data: ", 1)[1].splitlines()[0])[0]
            assert set(result["outputs"]) == tasks_run, len(data)


def test_an_unknown_task_is_refused_with_a_sentence(client):
    with pytest.raises(Exception) as caught:
        client.predict(handle_file(str(PHOTO)), None, ["classify", "detect-all-the-things"], api_name="/predict")
    message = str(caught.value)
    assert "detect-all-the-things" in message and "classify, zero_shot, detect, caption, explain" in message, message
    with pytest.raises(Exception, match="no task 'detect-x'"):
        client.predict(handle_file(str(PHOTO)), None, None, {"detect-x": {"threshold": 0.3}}, api_name="/predict")
    with pytest.raises(Exception, match="dict from task names"):
        client.predict(handle_file(str(PHOTO)), None, None, ["not", "a", "dict"], api_name="/predict")
    assert client.predict(handle_file(str(PHOTO)), api_name="/predict")["labels"]  # and the server is still there


def test_a_row_is_readable_from_another_process_within_2s(client, server):
    result = client.predict(handle_file(str(PHOTO)), api_name="/predict")
    started = time.monotonic()
    probe = ("import sys, time\nfrom pipelines.log import eventlog, sql\n"
             "deadline = time.monotonic() + 2.0\n"
             "while time.monotonic() < deadline:\n"
             "    rows = eventlog.query(sys.argv[1], f'SELECT top1_label, source FROM {sql.wide()} WHERE id = ?', [sys.argv[2]])\n"
             "    if len(rows):\n"
             "        print(rows.top1_label[0], rows.source[0]); break\n"
             "    time.sleep(0.05)\n")
    out = subprocess.run([sys.executable, "-c", probe, str(server[1]), result["id"]], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [result["labels"][0]["label"].split()[0], *out.stdout.split()[1:]]
    assert out.stdout.strip().endswith("api"), out.stdout
    print(f"\nrow visible to a reader process {time.monotonic() - started:.2f} s after the answer (process start included)")


def test_each_bad_input_gets_its_sentence_and_the_next_request_is_answered(client, tmp_path):
    for path, expected in _bad_files(tmp_path).items():
        with pytest.raises(Exception) as caught:
            client.predict(handle_file(str(path)), api_name="/predict")
        message = str(caught.value)
        assert expected in message, f"{path.name}: {message}"
        assert "Traceback" not in message and str(tmp_path) not in message
        good = client.predict(handle_file(str(PHOTO)), api_name="/predict")
        assert good["labels"], f"no answer after {path.name}"


def test_feedback_endpoint_records_verdicts_corrections_and_captions(client, server):
    result = client.predict(handle_file(str(EXAMPLES / "coffee.jpg")), api_name="/predict")
    pid = result["id"]
    up = client.predict(pid, "up", None, None, api_name="/feedback")
    assert up["recorded"] and up["prediction_id"] == pid
    client.predict(pid, "down", "espresso", None, api_name="/feedback")
    client.predict(pid, None, None, "a cup of black coffee", api_name="/feedback")
    with pytest.raises(Exception, match="no prediction"):
        client.predict("0" * 32, "up", None, None, api_name="/feedback")
    with pytest.raises(Exception, match="'up' or 'down'"):
        client.predict(pid, "sideways", None, None, api_name="/feedback")
    time.sleep(0.5)
    rows = eventlog.query(server[1], "SELECT verdict, corrected_label, edited_caption FROM feedback "
                                     "WHERE prediction_id = ? ORDER BY created_at", [pid])
    assert rows.verdict.tolist()[:2] == ["up", "down"]
    assert rows.corrected_label.tolist()[1] == "espresso"
    assert rows.edited_caption.tolist()[2] == "a cup of black coffee"


def test_feedback_endpoint_takes_a_task_and_old_callers_still_work(client, server, tmp_path):
    import httpx
    import json

    photo = tmp_path / "own.jpg"  # a photo of its own: the example photos' first answers are other tests' to cache
    Image.new("RGB", (64, 48), (200, 40, 90)).save(photo)
    result = client.predict(handle_file(str(photo)), api_name="/predict")
    pid = result["id"]
    saved = client.predict(pid, "down", None, None, "caption", None, api_name="/feedback")
    assert saved["task"] == "caption" and saved["recorded"]
    with pytest.raises(Exception, match="no detect output to judge"):
        client.predict(pid, "down", None, None, None, 0, api_name="/feedback")  # a box, but no objects were asked
    with pytest.raises(Exception, match="label the model gave"):
        client.predict(pid, "down", result["labels"][0]["label"], None, api_name="/feedback")
    with httpx.Client(timeout=60) as http:  # a plain HTTP caller written before feedback had tasks: four arguments
        event = http.post(f"{server[0]}gradio_api/call/feedback", json={"data": [pid, "up", None, None]}).json()
        body = http.get(f"{server[0]}gradio_api/call/feedback/{event['event_id']}").text
    assert "event: complete" in body, body[:300]
    assert json.loads(body.split("data: ", 1)[1].splitlines()[0])[0]["task"] is None
    time.sleep(0.5)
    rows = eventlog.query(server[1], "SELECT task, verdict FROM feedback WHERE prediction_id = ? ORDER BY created_at",
                          [pid])
    assert rows.verdict.tolist() == ["down", "up"] and rows.task.tolist()[0] == "caption"


def test_the_same_image_again_is_served_from_the_cache(client):
    first = client.predict(handle_file(str(EXAMPLES / "rocket.jpg")), api_name="/predict")
    again = client.predict(handle_file(str(EXAMPLES / "rocket.jpg")), api_name="/predict")
    assert again["cached"] and not first["cached"]
    assert again["labels"] == first["labels"] and again["caption"] == first["caption"]
    assert again["id"] != first["id"]


def test_real_photos_are_answered(client):
    photos = sorted(PHOTOS.glob("*.JPEG"))[:3]
    if not photos:
        pytest.skip("the shared sample photos are not present")
    for photo in photos:
        assert client.predict(handle_file(str(photo)), api_name="/predict")["labels"]


def test_python_m_demo_serves_with_the_contract_flags(tiny_classifier_dir, tiny_captioner_dir, tmp_path):
    db = tmp_path / "cli.duckdb"
    port = free_port()
    args = ["--classifier", str(tiny_classifier_dir), "--captioner", str(tiny_captioner_dir), "--db", str(db),
            "--port", str(port), "--host", "127.0.0.1"]
    with demo_process(args, env={"IMAGEREC_CAPTION_MAX_TOKENS": "5"}) as process:
        url = f"http://127.0.0.1:{port}/"
        wait_for_http(url, process)
        with urllib.request.urlopen(url) as page:
            assert b"imagerec" in page.read()
        result = Client(url, verbose=False).predict(handle_file(str(PHOTO)), api_name="/predict")
        assert {"id", "labels", "caption", "timings_ms"} <= set(result)
        deadline = time.monotonic() + 2.0
        rows = []
        while time.monotonic() < deadline and not len(rows):
            rows = eventlog.query(db, "SELECT id FROM predictions WHERE id = ?", [result["id"]])
        assert len(rows) == 1, "the row did not reach the log within 2 s"
        assert process.poll() is None, "the demo must keep running"


def test_app_starts_and_says_so_when_a_model_cannot_be_loaded(tiny_captioner_dir, tmp_path):
    port = free_port()
    args = ["--classifier", "no-such-org/no-such-model", "--captioner", str(tiny_captioner_dir),
            "--db", str(tmp_path / "log.duckdb"), "--port", str(port)]
    with demo_process(args, env={"HF_HUB_OFFLINE": "1"}) as process:
        url = f"http://127.0.0.1:{port}/"
        wait_for_http(url, process)
        client = Client(url, verbose=False)
        with pytest.raises(Exception) as caught:
            client.predict(handle_file(str(PHOTO)), api_name="/predict")
        message = str(caught.value)
        assert "no-such-org/no-such-model" in message and "local folder" in message, message
        assert process.poll() is None


def test_an_unknown_page_task_stops_the_start_with_a_sentence(monkeypatch, capsys):
    import demo.app as app

    def started(*args, **kwargs):
        raise AssertionError("the demo started with a task that does not exist")

    monkeypatch.setattr(app, "create_app", started)  # so a regression fails here instead of serving
    monkeypatch.setenv("IMAGEREC_PAGE_TASKS", "classify,faces")
    with pytest.raises(SystemExit) as stopped:
        app.main([])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and "There is no task 'faces'" in err and "Traceback" not in err
