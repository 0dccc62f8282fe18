"""Default models, each pinned to a hub revision so a fresh install gets the same weights."""

from __future__ import annotations

DEFAULT_CLASSIFIER = "google/vit-base-patch16-224"
DEFAULT_CAPTIONER = "Salesforce/blip-image-captioning-base"

PINNED_REVISIONS: dict[str, str] = {
    DEFAULT_CLASSIFIER: "3f49326eb077187dfe1c2a2bb15fbd74e6ab91e3",
    DEFAULT_CAPTIONER: "82a37760796d32b1411fe092ab5d4e227313294b",
}


def revision_for(model: str, revision: str | None = None) -> str | None:
    """The revision to load: the one asked for, else the pin of a default model, else the hub's main."""
    if revision:
        return revision
    return PINNED_REVISIONS.get(model)
