"""The imagerec demo: a photo in, what is in it and a caption out, with feedback that is logged."""

from __future__ import annotations

import argparse
import atexit
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

if __package__ in (None, ""):  # run as `python demo/app.py`, as a Hugging Face Space does
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gradio as gr  # noqa: E402

from pipelines import settings  # noqa: E402
from pipelines.eventlog import FeedbackRejected  # noqa: E402
from pipelines.intake import ImageRejected  # noqa: E402
from pipelines.models import ModelLoadError  # noqa: E402
from pipelines.studio import Studio  # noqa: E402

EXAMPLES = sorted(str(p) for p in (Path(__file__).parent / "examples").glob("*.jpg"))
HISTORY_COLUMNS = ["time (UTC)", "top label", "score", "caption", "feedback", "id"]
HISTORY_LENGTH = 20
THEME = gr.themes.Default(primary_hue="orange")
CSS = """
#verdict-row button { font-size: 1.4rem; }
footer { visibility: hidden; }
"""

from gradio.events import Dependency

class PhotoInput(gr.Image):
    """gr.Image that hands over the uploaded file untouched, so intake alone decides what is an image."""

    is_template = True  # rendered by the frontend's Image component

    def preprocess(self, payload: Any) -> str | None:
        if payload is None or (payload.url and payload.url.startswith("data:")):
            return super().preprocess(payload)
        return str(payload.path)
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component


def _status_markdown(studio: Studio) -> str:
    lines = []
    for role, state in studio.model_status().items():
        if state["error"]:
            lines.append(f"⚠️ **The {role} is not available.** {state['error']}")
        elif state["loaded"]:
            lines.append(f"✅ {role}: `{state['id']}`")
        else:
            lines.append(f"⏳ {role}: loading `{state['id']}` …")
    return "  \n".join(lines)


def _history_rows(history: list[dict]) -> list[list]:
    return [[h["time"], h["label"], h["score"], h["caption"], h["feedback"], h["id"]] for h in history]


def _user_error(exc: Exception) -> gr.Error:
    return gr.Error(str(exc), print_exception=False)


def create_app(config: settings.Settings, studio: Studio | None = None) -> gr.Blocks:
    """Build the Blocks app over a studio (made from the settings when none is given)."""
    studio = studio or Studio.from_settings(config)
    studio.warm_up()

    def status() -> tuple[str, gr.Timer]:
        states = studio.model_status().values()
        settled = all(s["loaded"] or s["error"] for s in states)
        return _status_markdown(studio), gr.Timer(active=not settled)

    def analyze(photo: str | None, prompt: str, history: list[dict], request: gr.Request):
        if not photo:
            raise gr.Error("Add a photo first: upload one, drop it here, paste it or take one with the webcam.")
        session = request.session_hash if request else None
        try:
            for result in studio.predict_steps(photo, prompt=prompt, origin="demo", session_id=session):
                scores = {item["label"]: item["score"] for item in result["labels"]}
                if result["caption"] is None:
                    yield (scores, gr.Textbox(value="", placeholder="Writing a caption…"), result, history,
                           gr.skip(), gr.Row(visible=False), gr.Group(visible=False), gr.skip(), "")
                    continue
                entry = {"time": result["created_at"][11:19], "label": result["labels"][0]["label"],
                         "score": round(result["labels"][0]["score"], 3), "caption": result["caption"],
                         "feedback": "", "id": result["id"]}
                history = ([entry] + history)[:HISTORY_LENGTH]
                known = [item["label"] for item in result["labels"]]
                choices = known + [x for x in studio.recognizer.classifier.labels if x not in known]
                yield (scores, gr.Textbox(value=result["caption"], placeholder=""), result, history,
                       _history_rows(history), gr.Row(visible=True), gr.Group(visible=False),
                       gr.Dropdown(choices=choices, value=None), "")
        except (ImageRejected, ModelLoadError) as exc:
            raise _user_error(exc) from None

    def record(current: dict | None, history: list[dict], note: str, **feedback: Any) -> tuple[list[dict], list, str]:
        if not current or not current.get("caption"):
            raise gr.Error("Recognize a photo first, then give feedback on it.")
        try:
            studio.feedback(current["id"], **feedback)
        except FeedbackRejected as exc:
            raise _user_error(exc) from None
        for entry in history:
            if entry["id"] == current["id"]:
                entry["feedback"] = note
        return history, _history_rows(history), f"Thanks, saved: {note}."

    def save_caption(current, caption, history):
        if not (caption or "").strip():
            raise gr.Error("The caption is empty; write something before saving it.")
        return record(current, history, "caption edited", edited_caption=caption.strip())

    def thumbs_up(current, history):
        return (*record(current, history, "👍", verdict="up"), gr.Group(visible=False))

    def thumbs_down(current, history):
        return (*record(current, history, "👎", verdict="down"), gr.Group(visible=True))

    def save_correction(current, label, history):
        if not label:
            raise gr.Error("Pick the right label from the list first.")
        return record(current, history, f"👎 should be “{label}”", verdict="down", corrected_label=label)

    def api_predict(photo: str | None, prompt: str | None = None) -> dict:
        if not photo:
            raise gr.Error("Send an image file.")
        try:
            result = studio.predict(photo, prompt=prompt, origin="api")
        except (ImageRejected, ModelLoadError) as exc:
            raise _user_error(exc) from None
        return {k: result[k] for k in ("id", "labels", "caption", "prompt", "timings_ms", "models", "image",
                                       "cached")}

    def api_feedback(prediction_id: str, verdict: str | None = None, corrected_label: str | None = None,
                     edited_caption: str | None = None) -> dict:
        """Record a verdict ('up' or 'down'), a corrected label and/or an edited caption for a prediction."""
        try:
            return studio.feedback(prediction_id, verdict=verdict or None, corrected_label=corrected_label or None,
                                   edited_caption=edited_caption or None)
        except FeedbackRejected as exc:
            raise _user_error(exc) from None

    with gr.Blocks(title="imagerec", analytics_enabled=False, delete_cache=(300, 900)) as demo:
        gr.Markdown("# imagerec\nDrop a photo to see what is in it and a caption for it. "
                    "Fix the caption and tell us whether the answer was right: it helps the team see how well "
                    "the models do.")
        model_status = gr.Markdown(elem_id="model-status")
        timer = gr.Timer(2.0)
        current = gr.State(None)
        history = gr.State([])
        with gr.Row():
            with gr.Column(scale=1):
                photo = PhotoInput(type="filepath", image_mode=None, sources=["upload", "webcam", "clipboard"],
                                   label="Photo", elem_id="photo", height=360)
                prompt = gr.Textbox(label="Caption prompt (optional)", placeholder="e.g. a photography of",
                                    elem_id="prompt")
                run = gr.Button("Recognize", variant="primary", elem_id="recognize")
                gr.Examples(EXAMPLES, inputs=photo, label="Try an example")
            with gr.Column(scale=1):
                labels = gr.Label(num_top_classes=config.top_k, label="What is in it", elem_id="labels")
                caption = gr.Textbox(label="Caption (edit it if it is wrong)", interactive=True, lines=2,
                                     elem_id="caption")
                save = gr.Button("Save caption", elem_id="save-caption")
                with gr.Row(visible=False, elem_id="verdict-row") as verdict_row:
                    up = gr.Button("👍 Right", elem_id="thumbs-up")
                    down = gr.Button("👎 Wrong", elem_id="thumbs-down")
                with gr.Group(visible=False) as correction:
                    right_label = gr.Dropdown(label="What is it really? Type to search", choices=[],
                                              filterable=True, elem_id="corrected-label")
                    correct = gr.Button("Save the right label", elem_id="save-correction")
                message = gr.Markdown(elem_id="message")
        table = gr.Dataframe(headers=HISTORY_COLUMNS, label="Your recent predictions", interactive=False,
                             elem_id="history", wrap=True)

        demo.load(status, outputs=[model_status, timer], api_visibility="private")
        timer.tick(status, outputs=[model_status, timer], api_visibility="private")
        analysis = dict(fn=analyze, inputs=[photo, prompt, history],
                        outputs=[labels, caption, current, history, table, verdict_row, correction, right_label,
                                 message], api_visibility="private")
        run.click(**analysis)
        photo.upload(**analysis)
        feedback = dict(api_visibility="private", concurrency_limit=None)
        save.click(save_caption, [current, caption, history], [history, table, message], **feedback)
        up.click(thumbs_up, [current, history], [history, table, message, correction], **feedback)
        down.click(thumbs_down, [current, history], [history, table, message, correction], **feedback)
        correct.click(save_correction, [current, right_label, history], [history, table, message], **feedback)

        # Endpoints for programs (gradio_client): the UI above stays private.
        api_photo = PhotoInput(type="filepath", image_mode=None, visible=False)
        api_prompt = gr.Textbox(visible=False)
        api_out = gr.JSON(visible=False)
        gr.Button(visible=False).click(api_predict, [api_photo, api_prompt], api_out, api_name="predict")
        gr.api(api_feedback, api_name="feedback", concurrency_limit=None)

    demo.studio = studio
    return demo


def launch(demo: gr.Blocks, config: settings.Settings, **overrides: Any):
    """Queue and launch with safe defaults: no share link, capped uploads, concurrency fit for the CPU."""
    demo.queue(default_concurrency_limit=config.concurrency, max_size=config.queue_size)
    options = dict(server_name=config.host, server_port=config.port, share=False,
                   max_file_size=int(config.max_upload_mb * 1_000_000), footer_links=["api"],
                   theme=THEME, css=CSS, ssr_mode=False)
    options.update(overrides)
    return demo.launch(**options)


def _configure_torch(config: settings.Settings) -> None:
    import torch
    torch.set_num_threads(config.threads or os.cpu_count() or 1)


def main(argv: list[str] | None = None) -> None:
    """Entry point: `python -m demo` or `python demo/app.py`."""
    parser = argparse.ArgumentParser(prog="python -m demo", description="Start the imagerec demo.")
    settings.add_arguments(parser)
    config = settings.resolve(parser.parse_args(argv))
    _configure_torch(config)
    demo = create_app(config)
    atexit.register(demo.studio.close)
    launch(demo, config)


if __name__ == "__main__":
    main()