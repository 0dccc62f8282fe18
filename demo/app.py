"""The imagerec demo: a photo in, what is in it and a caption out, with feedback that is logged."""

from __future__ import annotations

import argparse
import atexit
import os
import signal
import sys
import uuid
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

if __package__ in (None, ""):  # run as `python demo/app.py`, as a Hugging Face Space does
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gradio as gr  # noqa: E402
from gradio.utils import get_upload_folder  # noqa: E402
from gradio_client.utils import is_http_url_like  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402

from demo.gate import Gate  # noqa: E402

from pipelines import access, settings  # noqa: E402
from pipelines.log.eventlog import FeedbackRejected, LogError  # noqa: E402
from pipelines.intake import ImageRejected, Limits, data_url_bytes, save_upload  # noqa: E402
from pipelines.models import ModelLoadError  # noqa: E402
from pipelines.studio import RequestRejected, Studio  # noqa: E402
from pipelines.log import export  # noqa: E402
from pipelines.uploads import UploadBudget, UploadRefs  # noqa: E402

EXAMPLES = sorted(str(p) for p in (Path(__file__).parent / "examples").glob("*.jpg"))
HISTORY_COLUMNS = ["time (UTC)", "top label", "score", "caption", "feedback", "id"]
HISTORY_LENGTH = 20
THEME = gr.themes.Default(primary_hue="orange")
CSS = """
#verdict-row button { font-size: 1.4rem; }
footer { visibility: hidden; }
"""


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
                raise _user_error(exc) from None
            path = save_upload(data, get_upload_folder())
            self.temp_files.add(path)  # swept by Gradio's cache cleaner like any upload
            return path
        if not isinstance(payload.path, str) or not payload.path:
            raise gr.Error(SEND_THE_IMAGE, print_exception=False)
        _refuse_link(payload.path)
        if not _in_upload_cache(payload.path):  # a forged payload naming a file on the server
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


USER_ERRORS = (ImageRejected, RequestRejected, ModelLoadError)
NOT_LOGGED = ("⚠️ This was not saved to disk yet: the log's disk cannot be written, so it is held in memory "
              "and would be lost if the server stopped now.")


def _status_markdown(studio: Studio) -> str:
    lines = []
    if studio.log.set_aside:
        lines.append(f"⚠️ {studio.log.set_aside}")
    for problem in (studio.log.append_error, studio.log.taken_over):
        if problem:
            lines.append(f"⚠️ {problem}")
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


def _caller(request: gr.Request | None) -> tuple[Any, str | None]:
    """The request's headers and the address of the connection it came on."""
    if request is None:
        return None, None
    return request.headers, request.client.host if request.client else None


def client_address(request: gr.Request | None, policy: access.Access | None = None) -> str | None:
    """The caller's address as the access policy resolves it (forwarded headers only from trusted proxies)."""
    if request is None:
        return None
    return (policy or access.Access()).client(*_caller(request))


def _in_upload_cache(path: str) -> bool:
    """Whether a path is one of Gradio's own cached uploads (anything else is never read or deleted)."""
    return Path(path).resolve().is_relative_to(Path(get_upload_folder()).resolve())


def create_app(config: settings.Settings, studio: Studio | None = None) -> gr.Blocks:
    """Build the Blocks app over a studio (made from the settings when none is given)."""
    studio = studio or Studio.from_settings(config)
    studio.warm_up()
    refs = UploadRefs()  # who still needs each cached upload: identical bytes share one path
    # exports live in Gradio's cache folder, so the file served is this one and not a copy that outlives it
    exports = export.ExportShelf(get_upload_folder())
    studio.after_delete.append(exports.clear)  # a deleted row must not live on in an export
    atexit.register(exports.close)

    def status() -> tuple[str, gr.Timer]:
        states = studio.model_status().values()
        settled = all(s["loaded"] or s["error"] for s in states)
        return _status_markdown(studio), gr.Timer(active=not settled)

    def analyze(photo: str | None, prompt: str, history: list[dict], request: gr.Request):
        if not photo:
            raise gr.Error("Add a photo first: upload one, drop it here, paste it or take one with the webcam.")
        session = request.session_hash if request else None
        if session and disposable(photo):  # the session holds its copy until "Delete my data" (or the sweep)
            refs.acquire(photo, f"session:{session}")
        try:
            for result in studio.predict_steps(photo, prompt=prompt, origin="demo", session_id=session,
                                               client=client_address(request, studio.access)):
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
                       gr.Dropdown(choices=choices, value=None), "" if result["logged"] else NOT_LOGGED)
        except USER_ERRORS as exc:
            raise _user_error(exc) from None

    def record(current: dict | None, history: list[dict], note: str, **feedback: Any) -> tuple[list[dict], list, str]:
        if not current or not current.get("caption"):
            raise gr.Error("Recognize a photo first, then give feedback on it.")
        try:
            saved = studio.feedback(current["id"], **feedback)
        except FeedbackRejected as exc:
            raise _user_error(exc) from None
        for entry in history:
            if entry["id"] == current["id"]:
                entry["feedback"] = note
        return history, _history_rows(history), f"Thanks, saved: {note}." if saved["logged"] else NOT_LOGGED

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

    def issue_key(issued: str | None):
        """Hand this page its session key once; a later load with the same session hash gets nothing."""
        if issued:
            return gr.skip(), gr.skip()
        key = access.new_session_key()
        return key, key

    def forget_session(key: str | None, issued: str | None, request: gr.Request):
        session = request.session_hash if request else None
        try:
            deleted = studio.delete_session(session, key, issued)
        except (RequestRejected, LogError) as exc:  # LogError: the deletion could not be journalled, so none ran
            raise _user_error(exc) from None
        if session:  # copies no one else holds go now; one another visitor still needs goes after them
            deleted.uploads += refs.release_all(f"session:{session}")
        return None, [], [], None, None, "", gr.Row(visible=False), gr.Group(visible=False), deleted.sentence()

    def api_predict(photo: str | None, prompt: str | None = None, request: gr.Request = None) -> dict:
        if not photo:
            raise gr.Error("Send an image file.")
        holder = f"api:{uuid.uuid4().hex}"
        if disposable(photo):
            refs.acquire(photo, holder)
        try:
            result = studio.predict(photo, prompt=prompt, origin="api",
                                    client=client_address(request, studio.access))
        except USER_ERRORS as exc:
            raise _user_error(exc) from None
        finally:
            if disposable(photo):  # an API caller has no session to delete later: its copy goes once unused
                refs.release(photo, holder)
        return {k: result[k] for k in ("id", "labels", "caption", "prompt", "timings_ms", "models", "image",
                                       "cached", "logged")}

    def api_feedback(prediction_id: str, verdict: str | None = None, corrected_label: str | None = None,
                     edited_caption: str | None = None) -> dict:
        """Record a verdict ('up' or 'down'), a corrected label and/or an edited caption for a prediction."""
        try:
            return studio.feedback(prediction_id, verdict=verdict or None, corrected_label=corrected_label or None,
                                   edited_caption=edited_caption or None)
        except FeedbackRejected as exc:
            raise _user_error(exc) from None

    def api_delete(prediction_id: str) -> dict:
        """Delete one prediction, its feedback and any kept image ("delete my data")."""
        try:
            deleted = studio.delete_data(prediction_id=prediction_id)
        except (RequestRejected, LogError) as exc:
            raise _user_error(exc) from None
        return {"deleted": deleted.__dict__, "message": deleted.sentence()}

    def admin(request: gr.Request | None, token: str | None) -> None:
        """Open to a direct connection from this machine while no admin password is set; else only with it."""
        try:
            studio.access.check_admin(*_caller(request), token)
        except access.AccessDenied as exc:
            raise _user_error(exc) from None

    def admin_reload(token: str | None = None, request: gr.Request = None) -> dict:
        """Try again to load the models that failed (the hub is back, a folder was fixed)."""
        admin(request, token)
        for model in (studio.recognizer.classifier, studio.recognizer.captioner):
            try:
                model.load(retry=True)
            except ModelLoadError:
                pass  # reported in the status below
        return studio.model_status()

    def admin_purge(older_than_days: float, token: str | None = None, request: gr.Request = None) -> dict:
        """Delete predictions, feedback and kept images older than a number of days."""
        admin(request, token)
        try:
            deleted = studio.purge_older_than(float(older_than_days))
        except LogError as exc:
            raise _user_error(exc) from None
        return {"deleted": deleted.__dict__, "message": deleted.sentence()}

    def admin_export(token: str | None = None, request: gr.Request = None) -> str:
        """The whole log as a Parquet file (predictions with their latest feedback)."""
        admin(request, token)
        studio.log.flush()
        return str(exports.write(studio.log.path))  # removed once downloaded, after a TTL, or on a deletion

    def disposable(path: str) -> bool:
        """A visitor's uploaded copy, as opposed to an example photo Gradio keeps for everyone."""
        return _in_upload_cache(path) and path not in photo.keep_in_cache and path not in api_photo.keep_in_cache

    with gr.Blocks(title="imagerec", analytics_enabled=False, delete_cache=(300, 900)) as demo:
        gr.Markdown("# imagerec\nDrop a photo to see what is in it and a caption for it. "
                    "Fix the caption and tell us whether the answer was right: it helps the team see how well "
                    "the models do.")
        model_status = gr.Markdown(elem_id="model-status")
        timer = gr.Timer(2.0)
        current = gr.State(None)
        issued_key = gr.State(None)  # the key this session's page was given (server side, found by session hash)
        history = gr.State([])
        with gr.Row():
            with gr.Column(scale=1):
                photo = PhotoInput(type="filepath", image_mode=None, sources=["upload", "webcam", "clipboard"],
                                   label="Photo", elem_id="photo", height=360)
                photo.intake_limits = studio.recognizer.limits
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
        page_key = gr.Textbox(visible=False, elem_id="session-key")  # held by the page, sent back to delete
        table = gr.Dataframe(headers=HISTORY_COLUMNS, label="Your recent predictions", interactive=False,
                             elem_id="history", wrap=True)
        with gr.Row():
            forget = gr.Button("Delete my data", variant="stop", size="sm", elem_id="delete-my-data", scale=0)
            gr.Markdown("Photos are not kept: the log holds a fingerprint (sha256) of each photo and the "
                        "answers. *Delete my data* removes this session's predictions, feedback and copies.")

        demo.load(status, outputs=[model_status, timer], api_visibility="private")
        demo.load(issue_key, inputs=issued_key, outputs=[page_key, issued_key], api_visibility="private")
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
        forget.click(forget_session, [page_key, issued_key], [photo, history, table, labels, current, caption,
                                                              verdict_row, correction, message], **feedback)

        # Endpoints for programs (gradio_client): the UI above stays private.
        api_photo = PhotoInput(type="filepath", image_mode=None, visible=False)
        api_photo.intake_limits = studio.recognizer.limits
        api_prompt = gr.Textbox(visible=False)
        api_out = gr.JSON(visible=False)
        gr.Button(visible=False).click(api_predict, [api_photo, api_prompt], api_out, api_name="predict")
        gr.api(api_feedback, api_name="feedback", concurrency_limit=None)
        gr.api(api_delete, api_name="delete_my_data", concurrency_limit=None)
        gr.api(admin_reload, api_name="admin_reload")
        gr.api(admin_purge, api_name="admin_purge", concurrency_limit=None)
        gr.Button(visible=False).click(admin_export, gr.Textbox(visible=False), gr.File(visible=False),
                                       api_name="admin_export", concurrency_limit=None)

    demo.studio = studio
    demo.upload_refs = refs
    demo.exports = exports
    return demo


def launch(demo: gr.Blocks, config: settings.Settings, **overrides: Any):
    """Queue and launch with safe defaults: no share link, capped uploads, concurrency fit for the CPU."""
    # uvicorn replaces the peer with an X-Forwarded-For entry when the peer is loopback (FORWARDED_ALLOW_IPS):
    # a local process could then pose as any client. The access policy reads forwarded headers itself, as far
    # as forwarded_hops says, so uvicorn must hand over the socket's own peer.
    os.environ["FORWARDED_ALLOW_IPS"] = ""
    demo.queue(default_concurrency_limit=config.concurrency, max_size=config.queue_size)
    gate = Middleware(Gate, max_body=int(config.max_body_kb * 1000),
                      budget=UploadBudget(int(config.upload_budget_mb * 1_000_000)),
                      identify=lambda headers, peer: access.client_identity(headers, peer, config),
                      uploads=getattr(demo, "upload_refs", None),
                      on_download=getattr(getattr(demo, "exports", None), "downloaded", None))
    options = dict(server_name=config.host, server_port=config.port, share=False,
                   max_file_size=int(config.max_upload_mb * 1_000_000), footer_links=["api"],
                   theme=THEME, css=CSS, ssr_mode=False)
    options.update(overrides)
    # the gate sits in front of every route (Gradio's own middleware wraps it), before any body is read
    app_kwargs = dict(options.pop("app_kwargs", None) or {})
    app_kwargs["middleware"] = [gate, *app_kwargs.get("middleware", [])]
    return demo.launch(app_kwargs=app_kwargs, **options)


def _configure_torch(config: settings.Settings) -> None:
    # one intra-op thread per CPU this process may use (affinity and container quota), not per host CPU: more
    # threads than CPUs make every parallel region wait for a descheduled thread
    from pipelines.models.precision import configure_threads
    configure_threads(config.threads)


def main(argv: list[str] | None = None) -> None:
    """Entry point: `python -m demo` or `python demo/app.py`."""
    parser = argparse.ArgumentParser(prog="python -m demo", description="Start the imagerec demo.")
    settings.add_arguments(parser)
    config = settings.resolve(parser.parse_args(argv))
    _configure_torch(config)
    demo = create_app(config)
    atexit.register(demo.studio.close)
    # SIGTERM (docker stop, systemd, a Space restart) skips atexit; as KeyboardInterrupt it makes Gradio close
    # the server and return here, so the log is closed and its journal drained before the process ends.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        launch(demo, config)  # returns once Gradio's loop has turned the signal into closing the server
    except KeyboardInterrupt:  # the signal came while launch() was still starting up
        demo.close()
    finally:
        demo.studio.close()


def _interrupt(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    raise KeyboardInterrupt


if __name__ == "__main__":
    main()
