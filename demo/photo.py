"""The photo input: a gr.Image that decodes and fetches nothing, so every image reaches intake as bytes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr
from gradio.utils import get_upload_folder
from gradio_client.utils import is_http_url_like

from pipelines.intake import ImageRejected, Limits, data_url_bytes, save_upload

SEND_THE_IMAGE = "Send the image itself, as a file or a data URL, not a link to it."


class PhotoInput(gr.Image):
    """gr.Image that decodes and fetches nothing: it hands intake a file in the upload folder, and intake decides."""

    is_template = True  # rendered by the frontend's Image component
    # The byte limit a data: URL is held to before it is decoded; create_app sets the studio's. Not an __init__
    # argument: Gradio sends the frontend the props named in __init__'s signature, so it must stay gr.Image's.
    intake_limits = Limits()

    def preprocess(self, payload: Any) -> str | None:
        if payload is None:
            return None
        if payload.url and payload.url.startswith("data:"):  # gr.Image would decode it with every Pillow plugin
            try:
                data = data_url_bytes(payload.url, self.intake_limits)
            except ImageRejected as exc:
                raise gr.Error(str(exc), print_exception=False) from None
            path = save_upload(data, get_upload_folder())
            self.temp_files.add(path)  # swept by Gradio's cache cleaner like any upload
            return path
        if not isinstance(payload.path, str) or not payload.path:
            raise gr.Error(SEND_THE_IMAGE, print_exception=False)
        _refuse_link(payload.path)
        if not in_upload_cache(payload.path):  # a forged payload naming a file on the server
            raise gr.Error("That file was not uploaded here; send the image itself.", print_exception=False)
        return str(payload.path)

    # Gradio moves a payload's file into its cache before preprocess runs, downloading it when its path is a URL:
    # a photo is never fetched from anywhere, so a link is refused there, before any request goes out.
    async def async_move_resource_to_block_cache(self, url_or_file_path: str | Path | None) -> str | None:
        _refuse_link(url_or_file_path)
        return await super().async_move_resource_to_block_cache(url_or_file_path)

    def move_resource_to_block_cache(self, url_or_file_path: str | Path | None) -> str | None:
        _refuse_link(url_or_file_path)
        return super().move_resource_to_block_cache(url_or_file_path)


def _refuse_link(path: str | Path | None) -> None:
    """Refuse a payload whose file is a web address, before Gradio downloads it."""
    if is_http_url_like(path):
        raise gr.Error(SEND_THE_IMAGE, print_exception=False)


def in_upload_cache(path: str) -> bool:
    """Whether a path is one of Gradio's own cached uploads (anything else is never read or deleted)."""
    return Path(path).resolve().is_relative_to(Path(get_upload_folder()).resolve())
