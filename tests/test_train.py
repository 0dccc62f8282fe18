"""Training from the CLI on generated image folders with a tiny stand-in base: contract, modes, split, weights."""

from __future__ import annotations

import json
import re

import pytest
import torch

from pipelines import models, train as train_cli
from pipelines.learn import data as datamod
from pipelines.learn.fit import FitParams, class_weight_tensor, load_base, set_trainable
from tests.imagefolders import make_folder


@pytest.fixture(scope="module")
def two_colours(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("data") / "colours", {"red": 14, "blue": 14})


def test_three_flags_leave_a_loadable_model_folder_that_serves_the_folder_labels(
        two_colours, tiny_classifier_dir, tmp_path, hf_offline, capsys):
    out = tmp_path / "trained"
    assert train_cli.main(["--data", str(two_colours), "--base", str(tiny_classifier_dir), "--out", str(out)]) == 0
    from pipelines.tasks.classify import Classifier
    from tests.imagefolders import COLOURS
    from PIL import Image

    clf = Classifier(str(out), device="cpu")
    assert clf.labels == ["blue", "red"]
    red = Image.new("RGB", (40, 40), COLOURS["red"])
    assert clf(red, top_k=1)[0]["label"] == "red"  # red and blue are easy even for random features
    record = json.loads((out / "training.json").read_text())
    assert record["params"]["mode"] == "probe" and record["base_name"] == str(tiny_classifier_dir)
    assert record["split_sizes"] == {"validation": 5, "test": 5, "train": 18}
    assert len(record["data_fingerprint"]) == 64
    history = json.loads((out / "history.json").read_text())
    assert history and {"epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy"} <= set(history[0])
    assert record["evaluation"]["accuracy"] >= 0.8
    card = (out / "README.md").read_text()
    assert card.startswith("---") and "image-classification" in card and "accuracy" in card
    assert "held-out accuracy" in capsys.readouterr().out


def test_the_card_and_records_do_not_change_the_model_version(two_colours, tiny_classifier_dir, tmp_path, hf_offline):
    out = tmp_path / "m"
    train_cli.train(str(two_colours), str(tiny_classifier_dir), str(out), FitParams(epochs=2), progress=False)
    before = models.local_revision(out)
    (out / "README.md").write_text("another card")
    assert models.local_revision(out) == before
    (out / "config.json").write_text((out / "config.json").read_text() + " ")
    assert models.local_revision(out) != before


@pytest.mark.parametrize("mode", ["partial", "full"])
def test_fine_tune_modes_with_augmentation_change_the_backbone(two_colours, tiny_classifier_dir, tmp_path, mode,
                                                               hf_offline):
    out = tmp_path / mode
    params = FitParams(mode=mode, epochs=2, augment=True, learning_rate=1e-2, unfreeze=1, device="cpu")
    record = train_cli.train(str(two_colours), str(tiny_classifier_dir), str(out), params, progress=False)
    assert record["epochs_run"] == 2
    from safetensors.torch import load_file

    base, tuned = load_file(tiny_classifier_dir / "model.safetensors"), load_file(out / "model.safetensors")
    first = "vit.encoder.layer.0.attention.attention.query.weight"
    last = "vit.encoder.layer.1.attention.attention.query.weight"
    assert not torch.equal(base[last], tuned[last])
    assert torch.equal(base[first], tuned[first]) == (mode == "partial")


def test_modes_choose_the_trainable_weights(tiny_classifier_dir, hf_offline):
    model, _ = load_base(str(tiny_classifier_dir), ["a", "b"])
    assert set(set_trainable(model, "probe", 2)) == {"classifier.weight", "classifier.bias"}
    partial = set_trainable(model, "partial", 1)
    layer = re.compile(r"\.layers?\.(\d+)\.")  # transformers 5 names the blocks vit.layers.N in memory
    assert {m.group(1) for n in partial if (m := layer.search(n))} == {"1"}
    assert "vit.layernorm.weight" in partial  # the final norm follows the last block, so it trains too
    assert len(set_trainable(model, "full", 0)) == len(list(model.parameters()))
    with pytest.raises(ValueError, match="unknown mode"):
        set_trainable(model, "most", 0)


def test_split_is_seeded_stratified_and_keeps_a_folder_s_own_splits(tmp_path):
    folder = make_folder(tmp_path / "d", {"red": 10, "blue": 30}, size=8)
    read = datamod.read_folder(folder)
    a, b = (datamod.split(read, 0.2, 0.2, seed=3) for _ in range(2))
    assert a == b and a != datamod.split(read, 0.2, 0.2, seed=4)
    assert sorted(e.label for e in a["test"]).count("red") == 2  # stratified: a quarter of the test set is red
    assert sum(len(v) for v in a.values()) == 40
    pre = tmp_path / "pre"
    make_folder(pre / "train", {"red": 6, "blue": 6}, size=8)
    make_folder(pre / "test", {"red": 2, "blue": 2}, size=8)
    splits = datamod.split(datamod.read_folder(pre), 0.25, 0.2, seed=0)
    assert len(splits["test"]) == 4 and len(splits["validation"]) == 3 and len(splits["train"]) == 9


def test_balanced_class_weights_favour_the_rare_class(tmp_path):
    folder = make_folder(tmp_path / "d", {"red": 10, "blue": 30}, size=8)
    examples = datamod.read_folder(folder)["all"]
    weights = class_weight_tensor(examples, ["blue", "red"], "balanced")
    assert weights.tolist() == pytest.approx([40 / 60, 40 / 20])
    assert class_weight_tensor(examples, ["blue", "red"], "none") is None


def test_bad_data_gets_one_sentence_and_exit_code_2(tmp_path, tiny_classifier_dir, capsys):
    (tmp_path / "empty").mkdir()
    args = ["--base", str(tiny_classifier_dir), "--out", str(tmp_path / "o")]
    assert train_cli.main(["--data", str(tmp_path / "nowhere")] + args) == 2
    assert "does not exist" in capsys.readouterr().err
    assert train_cli.main(["--data", str(tmp_path / "empty")] + args) == 2
    assert "holds no images" in capsys.readouterr().err
    make_folder(tmp_path / "one", {"red": 5}, size=8)
    assert train_cli.main(["--data", str(tmp_path / "one"), "--quiet"] + args) == 2
    assert "two or more" in capsys.readouterr().err
