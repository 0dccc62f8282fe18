"""Register, promote and roll back a trained classifier on a running demo over loopback, and from the CLI."""

from __future__ import annotations

import json

import pytest
from gradio_client import Client, handle_file
from PIL import Image

from devtools.demo_server import launched, test_settings
from pipelines import promote as promote_cli
from pipelines.learn.fit import FitParams
from pipelines.log import eventlog, sql
from pipelines.train import train
from tests.imagefolders import COLOURS, make_folder


@pytest.fixture(scope="module")
def trained(tiny_classifier_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("promote")
    data = make_folder(root / "colours", {"red": 10, "blue": 10})
    train(str(data), str(tiny_classifier_dir), str(root / "model"), FitParams(), progress=False)
    red = root / "red.png"
    Image.new("RGB", (48, 40), COLOURS["red"]).save(red)
    return root / "model", red


@pytest.fixture(scope="module")
def server(tiny_classifier_dir, tiny_captioner_dir, tmp_path_factory):
    db = tmp_path_factory.mktemp("demo") / "log.duckdb"
    with launched(test_settings(tiny_classifier_dir, tiny_captioner_dir, db, rate_limit=0)) as (demo, url):
        yield demo, url, db


def _classify(client, photo) -> dict:
    return client.predict(handle_file(str(photo)), None, ["classify"], api_name="/predict")


def test_promote_switches_without_restart_logs_the_new_version_and_rolls_back(server, trained, tiny_classifier_dir):
    demo, url, db = server
    model, red = trained
    client = Client(url, verbose=False)
    before = _classify(client, red)
    old_version = before["outputs"]["classify"]["model"]

    answer = client.predict(str(model), None, api_name="/admin_promote")
    assert answer["previous"] == old_version and answer["serving"] != old_version
    after = _classify(client, red)  # the same photo: the cache must not answer with the old model's labels
    assert after["outputs"]["classify"]["model"] == answer["serving"]
    assert after["labels"][0]["label"] == "red" and {x["label"] for x in after["labels"]} == {"red", "blue"}

    demo.studio.log.flush()
    rows = eventlog.query(db, "SELECT o.prediction_id, o.model_version FROM outputs o WHERE o.task = 'classify'")
    versions = dict(zip(rows.prediction_id, rows.model_version))
    assert versions[before["id"]] == old_version and versions[after["id"]] == answer["serving"]
    registered = eventlog.query(db, "SELECT base, data_fingerprint, params, evaluation FROM model_versions "
                                    "WHERE version = ?", [answer["serving"]])
    assert registered.base[0] == str(tiny_classifier_dir) and len(registered.data_fingerprint[0]) == 64
    assert json.loads(registered.params[0])["mode"] == "probe"
    assert 0 <= json.loads(registered.evaluation[0])["accuracy"] <= 1

    back = client.predict(None, api_name="/admin_rollback")
    assert back == {"serving": old_version, "previous": answer["serving"]}
    assert _classify(client, red)["outputs"]["classify"]["model"] == old_version


def test_a_model_that_cannot_load_is_refused_in_a_sentence_and_the_old_one_keeps_serving(server, trained, tmp_path):
    demo, url, _ = server
    client = Client(url, verbose=False)
    serving = demo.studio.recognizer.classifier.version
    with pytest.raises(Exception, match="Not promoted"):
        client.predict(str(tmp_path / "no-such-model"), None, api_name="/admin_promote")
    assert _classify(client, trained[1])["outputs"]["classify"]["model"] == serving


def test_promotion_needs_the_admin_password_once_one_is_set(server, trained, monkeypatch):
    demo, _, _ = server
    from pipelines.access import AccessDenied
    from pipelines.studio import Caller

    monkeypatch.setattr(demo.studio.access, "admin_password", "sesame")
    with pytest.raises(AccessDenied):
        demo.studio.admin_promote(Caller(), "wrong", str(trained[0]))


def test_cli_registers_in_a_log_and_promotes_on_a_running_demo(server, trained, tmp_path, capsys):
    _, url, _ = server
    db = tmp_path / "offline.duckdb"
    assert promote_cli.main(["--log", str(db), "--model", str(trained[0])]) == 0
    version = json.loads(capsys.readouterr().out)["registered"]
    row = eventlog.query(db, "SELECT data_fingerprint FROM model_versions WHERE version = ?", [version])
    assert len(row.data_fingerprint[0]) == 64
    assert promote_cli.main(["--url", url, "--model", str(trained[0])]) == 0
    assert json.loads(capsys.readouterr().out)["serving"] == version
    assert promote_cli.main(["--url", url, "--rollback"]) == 0
    assert promote_cli.main(["--url", url, "--model", str(tmp_path / "nothing")]) == 2
    assert "Not promoted" in capsys.readouterr().err
