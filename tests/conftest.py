"""Shared fixtures: tiny models built from configs once per session, and an offline hub."""

from __future__ import annotations

import os
import weakref
from pathlib import Path

import pytest

# Every demo a test starts (in process or as a child) would otherwise compile its encoders in the background for
# minutes of CPU; tests/test_compiled.py turns it on where compiling is what is tested.
os.environ.setdefault("IMAGEREC_COMPILED", "off")


@pytest.fixture(scope="session")
def tiny_classifier_dir(tmp_path_factory) -> Path:
    """A saved tiny random ViT classifier folder, loadable with Classifier(path)."""
    from devtools.standins import make_tiny_classifier

    return make_tiny_classifier(tmp_path_factory.mktemp("models") / "tiny-vit")


@pytest.fixture(scope="session")
def tiny_captioner_dir(tmp_path_factory) -> Path:
    """A saved tiny random BLIP captioner folder, loadable with Captioner(path)."""
    from devtools.standins import make_tiny_captioner

    return make_tiny_captioner(tmp_path_factory.mktemp("models") / "tiny-blip")


@pytest.fixture
def hf_offline(monkeypatch):
    """Hugging Face hub offline mode for one test."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads the variable once at import into constants.HF_HUB_OFFLINE; every check reads that
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


_CLIENTS: "weakref.WeakSet" = weakref.WeakSet()


@pytest.fixture(scope="session", autouse=True)
def _track_gradio_clients():
    """Note every gradio_client.Client the tests open, so each module can close its own."""
    from gradio_client import Client

    opened = Client.__init__

    def init(self, *args, **kwargs):
        opened(self, *args, **kwargs)
        _CLIENTS.add(self)

    Client.__init__ = init
    yield
    Client.__init__ = opened


@pytest.fixture(scope="module", autouse=True)
def _close_gradio_clients(_track_gradio_clients):
    """Close a module's clients when it ends: a heartbeat thread left behind reconnects to a closed server later,
    inside another module's test (test_models refuses every connection while it runs)."""
    yield
    for client in list(_CLIENTS):
        client.close()
    _CLIENTS.clear()


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: large models; run only with IMAGEREC_SLOW=1")


# One Chromium for the whole run: a second Playwright instance in the same thread cannot start.
from tests.browser import browser  # noqa: E402,F401


@pytest.fixture(scope="session")
def tiny_detector_dir(tmp_path_factory) -> Path:
    """A saved tiny random RT-DETR detector folder, loadable with Detector(path)."""
    from devtools.standins import make_tiny_detector

    return make_tiny_detector(tmp_path_factory.mktemp("models") / "tiny-rtdetr")


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    """A saved tiny random CLIP (softmax over the labels) with its processor, loadable with ZeroShotClassifier."""
    from devtools.standins import make_tiny_zero_shot

    return make_tiny_zero_shot(tmp_path_factory.mktemp("models") / "tiny-clip", "clip")


@pytest.fixture(scope="session")
def tiny_siglip_dir(tmp_path_factory) -> Path:
    """A saved tiny random SigLIP (a sigmoid per label, Gemma tokenizer as SigLIP 2), loadable the same way."""
    from devtools.standins import make_tiny_zero_shot

    return make_tiny_zero_shot(tmp_path_factory.mktemp("models") / "tiny-siglip", "siglip")
