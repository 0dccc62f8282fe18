"""Shared fixtures: tiny models built from configs once per session, and an offline hub."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_classifier_dir(tmp_path_factory) -> Path:
    """A saved tiny random ViT classifier folder, loadable with Classifier(path)."""
    from pipelines.standins import make_tiny_classifier

    return make_tiny_classifier(tmp_path_factory.mktemp("models") / "tiny-vit")


@pytest.fixture(scope="session")
def tiny_captioner_dir(tmp_path_factory) -> Path:
    """A saved tiny random BLIP captioner folder, loadable with Captioner(path)."""
    from pipelines.standins import make_tiny_captioner

    return make_tiny_captioner(tmp_path_factory.mktemp("models") / "tiny-blip")


@pytest.fixture
def hf_offline(monkeypatch):
    """Hugging Face hub offline mode for one test."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads the variable once at import into constants.HF_HUB_OFFLINE; every check reads that
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: large models; run only with IMAGEREC_SLOW=1")


# One Chromium for the whole run: a second Playwright instance in the same thread cannot start.
from tests.browser import browser  # noqa: E402,F401
