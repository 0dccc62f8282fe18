"""The evaluation report and its CLI: the contract's JSON fields, top-5, confusion matrix order, ECE, model card."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipelines import evaluate as evaluate_cli
from pipelines.learn.data import Example
from pipelines.learn.metrics import expected_calibration_error, label_map, report
from tests.imagefolders import make_folder


def test_cli_writes_the_contract_fields_and_a_card(tmp_path, tiny_classifier_dir, hf_offline):
    data = make_folder(tmp_path / "data", {"red": 3, "blue": 2, "green": 2, "white": 2, "black": 1}, size=16)
    model = tmp_path / "model"
    import shutil
    shutil.copytree(tiny_classifier_dir, model)
    out = tmp_path / "eval" / "report.json"
    assert evaluate_cli.main(["--model", str(model), "--data", str(data), "--out", str(out), "--quiet"]) == 0
    result = json.loads(out.read_text())
    assert {"accuracy", "top5_accuracy", "per_class", "labels", "confusion_matrix", "ece"} <= set(result)
    assert set(result["per_class"]["red"]) == {"precision", "recall", "f1", "support"}
    assert result["per_class"]["red"]["support"] == 3
    # the tiny model's labels are no colours: every prediction lands in the "(other)" column
    assert result["labels"][-1] == "(other)" and result["accuracy"] == 0.0
    matrix = np.array(result["confusion_matrix"])
    assert matrix.sum() == 10 and matrix[:, -1].sum() == 10
    assert "accuracy" in (model / "README.md").read_text()


def test_report_rows_are_true_columns_predicted_in_label_order():
    examples = [Example("x", "ant"), Example("y", "ant"), Example("z", "bee")]
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7]])  # model labels below: ant, bee
    result = report(probs, ["ant, emmet, pismire", "bee"], examples)
    assert result["labels"] == ["ant", "bee"]
    assert result["confusion_matrix"] == [[1, 1], [0, 1]]
    assert result["accuracy"] == pytest.approx(2 / 3)
    assert result["per_class"]["bee"]["precision"] == pytest.approx(0.5)
    assert "top5_accuracy" not in result


def test_label_map_matches_exact_then_plain_names():
    assert label_map(["crane (134)", "Ant, emmet", "cat"], ["ant", "crane"]) == [1, 0, -1]


def test_ece_of_known_bins():
    # two bins: confidence 0.9 with accuracy 0.5, and confidence 0.6 always right: 0.5*0.4 + 0.5*0.4
    confidence = np.array([0.9, 0.9, 0.6, 0.6])
    correct = np.array([1.0, 0.0, 1.0, 1.0])
    assert expected_calibration_error(confidence, correct, bins=10) == pytest.approx(0.4)
    assert expected_calibration_error(np.array([0.7, 0.7]), np.array([1.0, 0.0]), bins=10) == pytest.approx(0.2)


def test_bad_folder_is_one_sentence(tmp_path, tiny_classifier_dir, capsys):
    assert evaluate_cli.main(["--model", str(tiny_classifier_dir), "--data", str(tmp_path / "no")]) == 2
    assert "does not exist" in capsys.readouterr().err
