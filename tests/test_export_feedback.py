"""Feedback exported as a labelled image folder from a real log and image store, by the rules of issue 12."""

from __future__ import annotations

import csv
import json

from PIL import Image

from pipelines import export_feedback
from pipelines.settings import Settings
from pipelines.studio import Studio
from tests.imagefolders import COLOURS


def test_export_keeps_ups_and_corrections_one_row_per_image_latest_wins_conflicts_reported(
        tmp_path, tiny_classifier_dir, tiny_captioner_dir, hf_offline):
    config = Settings.defaults(classifier=str(tiny_classifier_dir), captioner=str(tiny_captioner_dir),
                               db=str(tmp_path / "log.duckdb"), keep_images=True, images_dir=str(tmp_path / "kept"),
                               flush_interval=0.1)
    studio = Studio.from_settings(config)
    photos = {}
    for name in ("red", "blue", "green", "white"):
        photos[name] = tmp_path / f"{name}.png"
        Image.new("RGB", (40, 36), COLOURS[name]).save(photos[name])
    try:
        def predict(name):
            return studio.predict(str(photos[name]), tasks=["classify"])

        red1 = predict("red")
        studio.feedback(red1["id"], verdict="up")  # keeps the predicted label
        blue = predict("blue")
        studio.feedback(blue["id"], verdict="down", corrected_label="blue")
        green = predict("green")
        studio.feedback(green["id"], verdict="down")  # no right label: left out
        predict("white")  # no feedback at all
        red2 = predict("red")  # the same photo again, later corrected: the latest wins, the conflict is reported
        studio.feedback(red2["id"], verdict="down", corrected_label="red")
        studio.log.flush()
    finally:
        studio.close()
    out = tmp_path / "export"
    assert export_feedback.main(["--db", config.db, "--images", config.images_dir, "--out", str(out)]) == 0
    with open(out / "manifest.csv") as fh:
        rows = {row["label"]: row for row in csv.DictReader(fh)}
    assert set(rows) == {"red", "blue"}
    assert rows["blue"]["source"] == "correction" and rows["blue"]["prediction_id"] == blue["id"]
    assert rows["red"]["prediction_ids"].split() == [red1["id"], red2["id"]]
    assert rows["red"]["sha256"] == red1["image"]["sha256"]
    for row in rows.values():
        assert (out / row["file"]).is_file() and row["file"].startswith(row["label"] + "/")
    conflicts = json.loads((out / "conflicts.json").read_text())
    predicted = red1["labels"][0]["label"]
    assert conflicts == [{"sha256": red1["image"]["sha256"], "labels": sorted({predicted, "red"}), "chosen": "red",
                          "prediction_ids": [red1["id"], red2["id"]]}]
    assert sorted(p.name for p in out.iterdir()) == ["blue", "conflicts.json", "manifest.csv", "red"]


def test_a_missing_log_is_one_sentence(tmp_path, capsys):
    assert export_feedback.main(["--db", str(tmp_path / "none.duckdb"), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.startswith("export_feedback: ")
