"""Settings: declared once, every one documented in the README, read from env and CLI at entry points."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from pipelines import settings

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


@pytest.mark.parametrize("setting", settings.SETTINGS, ids=lambda s: s.name)
def test_every_setting_is_documented_in_the_readme(setting):
    row = next((line for line in README.splitlines() if f"`{setting.env}`" in line), None)
    assert row is not None, f"{setting.env} is missing from the README's settings table"
    assert setting.help in row
    if setting.cli:
        assert f"`{setting.flag}`" in row


def test_settings_and_dataclass_agree():
    assert [s.name for s in settings.SETTINGS] == list(settings.Settings.__dataclass_fields__)


def test_contract_names():
    names = {s.env for s in settings.SETTINGS}
    assert {"IMAGEREC_CLASSIFIER", "IMAGEREC_CAPTIONER", "IMAGEREC_DB", "IMAGEREC_HOST", "IMAGEREC_PORT",
            "IMAGEREC_CAPTION_MAX_TOKENS"} <= names
    flags = {s.flag for s in settings.SETTINGS if s.cli}
    assert {"--classifier", "--captioner", "--db", "--host", "--port"} <= flags


def test_flags_override_env_override_defaults():
    parser = argparse.ArgumentParser()
    settings.add_arguments(parser)
    env = {"IMAGEREC_PORT": "9000", "IMAGEREC_DB": "/tmp/env.duckdb", "IMAGEREC_CAPTION_MAX_TOKENS": "12"}
    config = settings.resolve(parser.parse_args(["--db", "/tmp/flag.duckdb"]), env)
    assert (config.port, config.db, config.caption_max_tokens) == (9000, "/tmp/flag.duckdb", 12)
    assert config.classifier == "google/vit-base-patch16-224"


def test_a_space_listens_on_all_interfaces_unless_told_otherwise():
    assert settings.from_env({"SPACE_ID": "team/imagerec"}).host == "0.0.0.0"
    assert settings.from_env({"SPACE_ID": "x", "IMAGEREC_HOST": "127.0.0.1"}).host == "127.0.0.1"
    assert settings.from_env({}).host == "127.0.0.1"


def test_bad_values_stop_with_a_message():
    with pytest.raises(SystemExit, match="IMAGEREC_PORT"):
        settings.from_env({"IMAGEREC_PORT": "eighty"})
    with pytest.raises(SystemExit, match="auto, cpu, cuda"):
        settings.from_env({"IMAGEREC_DEVICE": "tpu"})


def test_env_is_read_only_at_entry_points():
    core = Path(settings.__file__).parent
    readers = {p.name for p in core.glob("*.py") if re.search(r"os\.environ|getenv", p.read_text())}
    assert readers <= {"settings.py"}, f"env read outside the settings module: {readers}"
