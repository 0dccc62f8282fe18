"""The imagerec demo: a photo in, what is in it and a caption out, with feedback that is logged.

Layout and wiring over the Studio (pipelines.studio), which owns access, intake, tasks, deletion and the log.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

if __package__ in (None, ""):  # run as `python demo/app.py`, as a Hugging Face Space does
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipelines import space  # noqa: E402

space.use_persistent_cache(os.environ)  # before anything imports huggingface_hub, which reads HF_HOME once

import gradio as gr  # noqa: E402
from gradio.utils import get_upload_folder  # noqa: E402

from demo import server  # noqa: E402
from demo.photo import PhotoInput, in_upload_cache  # noqa: E402
from pipelines import access, settings, tasks  # noqa: E402
from pipelines.intake import ImageRejected  # noqa: E402
from pipelines.log.eventlog import FeedbackRejected, LogError  # noqa: E402
from pipelines.models import ModelLoadError  # noqa: E402
from pipelines.promotion import PromotionError  # noqa: E402
from pipelines.studio import Caller, RequestRejected, Studio, public  # noqa: E402
from pipelines.tasks.explain import overlay  # noqa: E402

log = logging.getLogger("imagerec.demo")
EXAMPLES = sorted(str(p) for p in (Path(__file__).parent / "examples").glob("*.jpg"))
HISTORY_COLUMNS = ["time (UTC)", "top label", "score", "caption", "feedback", "id"]
HISTORY_LENGTH = 20
THEME = gr.themes.Default(primary_hue="orange")
CSS = """
#verdict-row button { font-size: 1.4rem; }
"""
USER_ERRORS = (ImageRejected, RequestRejected, ModelLoadError, FeedbackRejected, LogError, access.AccessDenied,
               PromotionError)
NOT_LOGGED = ("⚠️ This was not saved to disk yet: the log's disk cannot be written, so it is held in memory "
              "and would be lost if the server stopped now.")
ADD_A_PHOTO = "Add a photo first: upload one, drop it here, paste it or take one with the webcam."
# what each task is called on the page, in the registry's order; a task without a title here is not offered on it
TASK_TITLES = {"classify": "Labels", "zero_shot": "Your own labels", "detect": "Objects", "caption": "Caption",
               "explain": "Why the top label (a heatmap; slower)"}
SHOWN_SIDE = 800  # the longest side of the photo the objects are drawn on
# the outputs with a thumbs up or down of their own (the labels have the verdict row), and what the note calls them
RATED = {"zero_shot": ("own labels", "Are these scores right?"), "detect": ("objects", "Are the objects right?"),
         "caption": ("caption", "Is the caption right?"), "explain": ("heatmap", "Does the heatmap show the thing?")}
NOT_AN_OBJECT = "(not an object)"


# -- what the page shows ----------------------------------------------------------------------------------------

EPHEMERAL = ("⚠️ The log is on this Space's temporary disk: predictions and feedback are lost at every restart. "
             "Turn on persistent storage in the Space's settings to keep them (README, *Space settings*).")


def status_markdown(studio: Studio) -> str:
    """The log's problems and each model's state, one line each."""
    lines = [f"⚠️ {problem}" for problem in (studio.log.set_aside, studio.log.append_error, studio.log.taken_over)
             if problem]
    if space.log_is_ephemeral(str(studio.log.path), os.environ):
        lines.append(EPHEMERAL)
    for role, state in studio.model_status().items():
        if state["error"]:
            lines.append(f"⚠️ **The {role} is not available.** {state['error']}")
        elif state["loaded"]:
            lines.append(f"✅ {role}: `{state['id']}`")
        elif state["warming"]:
            lines.append(f"⏳ {role}: loading `{state['id']}` …")
        else:
            lines.append(f"💤 {role}: `{state['id']}` loads when a photo first asks for it")
    return "  \n".join(lines)


def history_rows(history: list[dict]) -> list[list]:
    return [[h["time"], h["label"], h["score"], h["caption"], h["feedback"], h["id"]] for h in history]


def history_entry(result: dict) -> dict:
    top = (result["labels"] or [{"label": None, "score": 0.0}])[0]
    return {"time": result["created_at"][11:19], "label": top["label"], "score": round(top["score"], 3),
            "caption": result["caption"], "feedback": "", "id": result["id"]}


def scores(result: dict) -> dict | None:
    """The labels as the label chart takes them, or nothing when the labels were not asked for."""
    return {item["label"]: item["score"] for item in result["labels"]} if result["labels"] else None


def caption_box(result: dict) -> Any:
    if result["caption"] is not None:
        return gr.Textbox(value=result["caption"], placeholder="")
    waiting = "caption" in result.get("pending", ())
    return gr.Textbox(value="", placeholder="Writing a caption…" if waiting else "No caption asked for.")


def working_on(result: dict) -> str:
    return "Working on: " + ", ".join(TASK_TITLES.get(name, name).lower() for name in result["pending"]) + " …"


def objects(result: dict) -> Any:
    """The photo with each detected object's box and label (hover a box to see it), or nothing when not asked."""
    payload = result["outputs"].get("detect")
    if payload is None:
        return gr.AnnotatedImage(value=None, visible=False)
    photo = result["photo"].convert("RGB")
    photo.thumbnail((SHOWN_SIDE, SHOWN_SIDE))
    scale = photo.width / result["image"]["width"]  # boxes are in the photo as the visitor sees it, at full size
    boxes = [(tuple(round(v * scale) for v in item["box"]), f"{item['label']} {item['score']:.0%}")
             for item in payload["boxes"]]
    return gr.AnnotatedImage(value=(photo, boxes), visible=True,
                             label=f"Objects: {len(boxes)} found" if boxes else "Objects: none above the threshold")


def own_labels(result: dict) -> Any:
    """The visitor's own labels with their scores, or nothing when not asked."""
    payload = result["outputs"].get("zero_shot")
    if payload is None:
        return gr.Label(value=None, visible=False)
    return gr.Label(value={item["label"]: item["score"] for item in payload["labels"]}, visible=True)


def box_choices(result: dict) -> list[tuple[str, int]]:
    """Each detected box as the page lists it for marking wrong: its number, label and score."""
    payload = result["outputs"].get("detect") or {}
    return [(f"{i + 1}. {b['label']} {b['score']:.0%}", i) for i, b in enumerate(payload.get("boxes", []))]


def rating_rows(result: dict | None) -> list[Any]:
    """A thumbs row under each rated task's output the result has (RATED's order)."""
    return [gr.Row(visible=bool(result) and result["outputs"].get(task) is not None) for task in RATED]


def options(threshold: float | None, custom: str | None) -> dict:
    """The page's per-task options: the objects' threshold, and the visitor's labels (else the operator's)."""
    chosen = {"detect": {"threshold": threshold}} if threshold is not None else {}
    if (custom or "").strip():
        chosen["zero_shot"] = {"labels": custom}
    return chosen


def explanation(result: dict) -> Any:
    """The photo with the heatmap of the top label over it, or a hidden image when none was asked."""
    payload = result["outputs"].get("explain")
    if not payload:
        return gr.Image(value=None, visible=False)
    return gr.Image(value=overlay(result["photo"], payload["heatmap"]), visible=True,
                    label=f"Why “{payload['label']}”: the brighter, the more it drove the label")


class Page(gr.Blocks):
    """gr.Blocks whose named endpoints may be called without their trailing optional arguments.

    gradio_client fills in missing arguments, but a plain HTTP caller sends what it knows: an argument added to an
    endpoint later (/predict's tasks) must not break the scripts written before it.
    """

    # api name -> trailing inputs a caller may leave out: /predict's prompt, tasks, options; /feedback's task, box
    optional_tail = {"predict": 3, "feedback": 2}

    def validate_inputs(self, block_fn, inputs: list[Any]) -> None:
        missing = len(block_fn.inputs) - len(inputs)
        if 0 < missing <= self.optional_tail.get(block_fn.api_name, 0):
            inputs.extend([None] * missing)  # in place: preprocessing reads this same list next
        super().validate_inputs(block_fn, inputs)


def page_tasks(config: settings.Settings) -> list[str]:
    """The tasks the page runs unless the visitor changes them (setting page_tasks), as the registry knows them."""
    return list(tasks.resolve(config.page_tasks.split(",")))  # an unknown name stops the start with a sentence


def caller(request: gr.Request | None) -> Caller | None:
    """Who sent a request: its headers and the address of the connection it came on."""
    if request is None:
        return None
    return Caller(request.headers, request.client.host if request.client else None)


def user_error(exc: Exception | str) -> gr.Error:
    """A visitor's mistake or a refusal: one line in the server's log, the sentence on the page, no traceback."""
    log.info("refused: %s", exc)
    return gr.Error(str(exc), print_exception=False)


def create_app(config: settings.Settings, studio: Studio | None = None) -> gr.Blocks:
    """Build the Blocks app over a studio (made from the settings when none is given)."""
    studio = studio or Studio.from_settings(config)
    studio.warm_up(page_tasks(config))
    # exports live in Gradio's cache folder, so the file served is this one and not a copy that outlives it
    studio.serve_exports_from(get_upload_folder())

    def disposable(path: str) -> bool:
        """A visitor's uploaded copy, as opposed to an example photo Gradio keeps for everyone."""
        return in_upload_cache(path) and path not in photo.keep_in_cache and path not in api_photo.keep_in_cache

    def status() -> tuple[str, gr.Timer]:
        settled = all(s["loaded"] or s["error"] or not s["warming"] for s in studio.model_status().values())
        return status_markdown(studio), gr.Timer(active=not settled)

    def analyze(image: str | None, prompt: str, chosen: list[str], threshold: float, custom: str,
                history: list[dict], request: gr.Request):
        if not image:
            yield refused(ADD_A_PHOTO)
            return
        if not chosen:
            yield refused("Pick at least one thing to find: labels, a caption, …")
            return
        session = request.session_hash if request else None
        try:
            for result in studio.predict_steps(image, prompt=prompt, tasks=chosen, origin="demo", session_id=session,
                                               caller=caller(request), disposable=disposable(image),
                                               options=options(threshold, custom)):
                shown = {labels: scores(result), caption: caption_box(result), heatmap: explanation(result),
                         boxes: objects(result), custom_scores: own_labels(result)}
                if result["pending"]:  # each task's answer shows as soon as it is done; feedback waits for the log
                    yield {**shown, current: None, verdict_row: gr.Row(visible=False),
                           correction: gr.Group(visible=False), message: working_on(result),
                           **dict(zip(rating, rating_rows(None))), box_feedback: gr.Group(visible=False)}
                    continue
                history = ([history_entry(result)] + history)[:HISTORY_LENGTH]
                known = [item["label"] for item in result["labels"] or []]
                choices = known + [x for x in studio.labels() if x not in known] if known else []
                listed = box_choices(result)
                yield {**shown, current: public(result), history_state: history, table: history_rows(history),
                       verdict_row: gr.Row(visible=bool(known)), correction: gr.Group(visible=False),
                       right_label: gr.Dropdown(choices=choices, value=None),
                       **dict(zip(rating, rating_rows(result))),
                       box_feedback: gr.Group(visible=bool(listed)),
                       which_box: gr.Dropdown(choices=listed, value=None),
                       box_label: gr.Dropdown(choices=[NOT_AN_OBJECT, *studio.labels("detect")] if listed else [],
                                              value=None),
                       message: "" if result["logged"] else NOT_LOGGED,
                       model_status: status_markdown(studio)}  # a model first asked for has just loaded
        except USER_ERRORS as exc:
            yield refused(str(exc))

    def refused(sentence: str) -> dict:
        """A photo or request refused: a warning and the sentence under the outputs, which keep their last answer
        (an error raised here would mark every output with a red Error badge)."""
        log.info("refused: %s", sentence)
        gr.Warning(sentence)
        return {message: f"⚠️ {sentence}"}

    def record(current: dict | None, history: list[dict], note: str, **feedback: Any) -> tuple[list[dict], list, str]:
        if not current:
            raise user_error("Recognize a photo first, then give feedback on it.")
        try:
            saved = studio.feedback(current["id"], **feedback)
        except USER_ERRORS as exc:
            raise user_error(exc) from None
        for entry in history:
            if entry["id"] == current["id"]:
                entry["feedback"] = note
        return history, history_rows(history), f"Thanks, saved: {note}." if saved["logged"] else NOT_LOGGED

    def save_caption(current, caption, history):
        if current and current.get("caption") is None:
            raise user_error("There is no caption to correct: tick Caption and recognize the photo again.")
        if not (caption or "").strip():
            raise user_error("The caption is empty; write something before saving it.")
        return record(current, history, "caption edited", edited_caption=caption.strip())

    def thumbs_up(current, history):
        return (*record(current, history, "👍", verdict="up"), gr.Group(visible=False))

    def thumbs_down(current, history):
        return (*record(current, history, "👎", verdict="down"), gr.Group(visible=True))

    def save_correction(current, label, history):
        if not label:
            raise user_error("Pick the right label from the list first.")
        return record(current, history, f"👎 should be “{label}”", verdict="down", corrected_label=label)

    def rate(task: str, verdict: str):
        """The page's thumbs under one task's output."""
        def handler(current, history):
            return record(current, history, f"{RATED[task][0]} {'👍' if verdict == 'up' else '👎'}",
                          verdict=verdict, task=task)
        return handler

    def mark_box(current, index, label, history):
        if index is None or index == "":
            raise user_error("Pick the box that is wrong first.")
        if not label:
            raise user_error(f"Say what is in the box, or pick “{NOT_AN_OBJECT}”.")
        wrong = None if label == NOT_AN_OBJECT else label
        return record(current, history, f"box {int(index) + 1}: " + (f"should be “{wrong}”" if wrong else "not an object"),
                      verdict="down", corrected_label=wrong, task="detect", box=int(index))

    def issue_key(issued: str | None):
        """Hand this page its session key once; a later load with the same session hash gets nothing."""
        if issued:
            return gr.skip(), gr.skip()
        key = access.new_session_key()
        return key, key

    def forget_session(key: str | None, issued: str | None, request: gr.Request):
        try:
            deleted = studio.delete_session(request.session_hash if request else None, key, issued)
        except USER_ERRORS as exc:  # LogError: the deletion could not be journalled, so none ran
            raise user_error(exc) from None
        return (None, [], [], None, None, "", gr.Row(visible=False), gr.Group(visible=False), deleted.sentence(),
                gr.Image(value=None, visible=False), gr.AnnotatedImage(value=None, visible=False),
                gr.Label(value=None, visible=False), gr.Row(visible=False), *rating_rows(None), gr.Group(visible=False))

    # -- endpoints for programs (gradio_client) ------------------------------------------------------------------
    def api_predict(image: str | None, prompt: str | None = None, asked: list[str] | None = None,
                    options: dict | None = None, request: gr.Request = None) -> dict:
        if not image:
            raise user_error("Send an image file.")
        try:
            result = studio.predict(image, prompt=prompt, tasks=asked or None, origin="api", caller=caller(request),
                                    disposable=disposable(image), options=options)
        except USER_ERRORS as exc:
            raise user_error(exc) from None
        return public(result)

    def api_feedback(prediction_id: str, verdict: str | None = None, corrected_label: str | None = None,
                     edited_caption: str | None = None, task: str | None = None, box: int | None = None) -> dict:
        """Record a verdict ('up' or 'down'), a corrected label and/or an edited caption for a prediction: on its
        answer, or on one task's output (task), or on one detected box (box: its index in outputs.detect.boxes)."""
        try:
            return studio.feedback(prediction_id, verdict=verdict or None, corrected_label=corrected_label or None,
                                   edited_caption=edited_caption or None, task=task or None, box=box)
        except USER_ERRORS as exc:
            raise user_error(exc) from None

    def api_delete(prediction_id: str) -> dict:
        """Delete one prediction, its feedback and any kept image ("delete my data")."""
        try:
            deleted = studio.delete_data(prediction_id=prediction_id)
        except USER_ERRORS as exc:
            raise user_error(exc) from None
        return {"deleted": deleted.__dict__, "message": deleted.sentence()}

    def admin_reload(token: str | None = None, request: gr.Request = None) -> dict:
        """Try again to load the models that failed (the hub is back, a folder was fixed)."""
        try:
            return studio.admin_reload(caller(request), token)
        except USER_ERRORS as exc:
            raise user_error(exc) from None

    def admin_purge(older_than_days: float, token: str | None = None, request: gr.Request = None) -> dict:
        """Delete predictions, feedback and kept images older than a number of days."""
        try:
            deleted = studio.admin_purge(caller(request), token, older_than_days)
        except USER_ERRORS as exc:
            raise user_error(exc) from None
        return {"deleted": deleted.__dict__, "message": deleted.sentence()}

    def admin_promote(model: str, token: str | None = None, request: gr.Request = None) -> dict:
        """Serve another classifier (a trained model folder or hub id) from the next request on."""
        try:
            return studio.admin_promote(caller(request), token, model)
        except USER_ERRORS as exc:
            raise user_error(exc) from None

    def admin_rollback(token: str | None = None, request: gr.Request = None) -> dict:
        """Serve the classifier that served before the last promotion."""
        try:
            return studio.admin_rollback(caller(request), token)
        except USER_ERRORS as exc:
            raise user_error(exc) from None

    def admin_export(token: str | None = None, request: gr.Request = None) -> str:
        """The whole log as a Parquet file (predictions with their latest feedback)."""
        try:
            return studio.admin_export(caller(request), token)
        except USER_ERRORS as exc:
            raise user_error(exc) from None

    # -- layout ----------------------------------------------------------------------------------------------------
    rows, thumbs = {}, {}

    def rate_row(task: str) -> None:
        """A thumbs up or down for one task's output, placed under it and shown with it."""
        with gr.Row(visible=False, elem_id=f"rate-{task}", equal_height=True) as rows[task]:
            gr.Markdown(RATED[task][1])
            thumbs[task] = (gr.Button("👍", size="sm", elem_id=f"{task}-up", scale=0, min_width=60),
                            gr.Button("👎", size="sm", elem_id=f"{task}-down", scale=0, min_width=60))

    with Page(title="imagerec", analytics_enabled=False, delete_cache=(300, 900)) as demo:
        gr.Markdown("# imagerec\nDrop a photo to see what is in it and a caption for it. "
                    "Fix the caption and tell us whether the answer was right: it helps the team see how well "
                    "the models do.")
        model_status = gr.Markdown(elem_id="model-status")
        timer = gr.Timer(2.0)
        current = gr.State(None)
        issued_key = gr.State(None)  # the key this session's page was given (server side, found by session hash)
        history_state = gr.State([])
        with gr.Row():
            with gr.Column(scale=1):
                photo = PhotoInput(type="filepath", image_mode=None, sources=["upload", "webcam", "clipboard"],
                                   label="Photo", elem_id="photo", height=360)
                photo.intake_limits = studio.recognizer.limits
                prompt = gr.Textbox(label="Caption prompt (optional)", placeholder="e.g. a photography of",
                                    elem_id="prompt")
                # the operator's defaults (page_tasks): labels and a caption; a heatmap costs a backward pass
                chosen = gr.CheckboxGroup([(TASK_TITLES[n], n) for n in tasks.REGISTRY if n in TASK_TITLES],
                                          value=page_tasks(config), label="What to find", elem_id="tasks")
                with gr.Row():
                    custom = gr.Textbox(value=config.zero_shot_labels, label="Your own labels, comma-separated",
                                        placeholder="e.g. a forklift, a pallet, an empty shelf",
                                        elem_id="custom-labels")
                    threshold = gr.Slider(0.05, 0.95, value=config.detect_threshold, step=0.05,
                                          label="Objects: lowest score shown", elem_id="threshold")
                run = gr.Button("Recognize", variant="primary", elem_id="recognize")
                examples = gr.Examples(EXAMPLES, inputs=photo, label="Try an example", elem_id="examples")
            with gr.Column(scale=1):
                labels = gr.Label(num_top_classes=config.top_k, label="What is in it", elem_id="labels")
                custom_scores = gr.Label(label="Your own labels", visible=False, elem_id="custom-scores")
                rate_row("zero_shot")
                boxes = gr.AnnotatedImage(label="Objects", visible=False, elem_id="objects", height=360)
                with gr.Group(visible=False, elem_id="box-feedback") as box_feedback:
                    with gr.Row():
                        which_box = gr.Dropdown(label="A box that is wrong", choices=[], elem_id="which-box")
                        box_label = gr.Dropdown(label="What is in it really?", choices=[], filterable=True,
                                                allow_custom_value=True, elem_id="box-label")
                    save_box = gr.Button("Mark the box wrong", size="sm", elem_id="mark-box")
                rate_row("detect")
                caption = gr.Textbox(label="Caption (edit it if it is wrong)", interactive=True, lines=2,
                                     elem_id="caption", buttons=["copy"])
                save = gr.Button("Save caption", elem_id="save-caption")
                rate_row("caption")
                with gr.Row(visible=False, elem_id="verdict-row") as verdict_row:
                    up = gr.Button("👍 Right", elem_id="thumbs-up")
                    down = gr.Button("👎 Wrong", elem_id="thumbs-down")
                with gr.Group(visible=False) as correction:
                    right_label = gr.Dropdown(label="What is it really? Type to search", choices=[],
                                              filterable=True, elem_id="corrected-label")
                    correct = gr.Button("Save the right label", elem_id="save-correction")
                message = gr.Markdown(elem_id="message")
                heatmap = gr.Image(visible=False, interactive=False, elem_id="explanation", height=360)
                rate_row("explain")
        page_key = gr.Textbox(visible=False, elem_id="session-key")  # held by the page, sent back to delete
        table = gr.Dataframe(headers=HISTORY_COLUMNS, label="Your recent predictions", interactive=False,
                             elem_id="history", wrap=True)
        with gr.Row():
            forget = gr.Button("Delete my data", variant="stop", size="sm", elem_id="delete-my-data", scale=0)
            with gr.Row(visible=False, elem_id="confirm-delete-row") as confirm_row:
                gr.Markdown("Delete this session's predictions, feedback and uploaded copies? This cannot be undone.")
                confirm = gr.Button("Yes, delete", variant="stop", size="sm", elem_id="confirm-delete", scale=0)
                cancel = gr.Button("Cancel", size="sm", elem_id="cancel-delete", scale=0)
            gr.Markdown("Photos are not kept: the log holds a fingerprint (sha256) of each photo and the "
                        "answers. *Delete my data* removes this session's predictions, feedback and copies.")
        api_photo = PhotoInput(type="filepath", image_mode=None, visible=False)
        api_photo.intake_limits = studio.recognizer.limits
        api_prompt = gr.Textbox(visible=False)
        api_tasks = gr.Dropdown(choices=list(tasks.REGISTRY), value=[], multiselect=True, allow_custom_value=True,
                                visible=False)  # an unknown name gets the studio's sentence, not a traceback
        api_options = gr.JSON(value=None, visible=False)  # per task: its options, e.g. {"detect": {"threshold": 0.3}}
        api_out = gr.JSON(visible=False)

        # -- wiring: the page's events are private; the named endpoints below are the API ------------------------
        demo.load(status, outputs=[model_status, timer], api_visibility="private")
        demo.load(issue_key, inputs=issued_key, outputs=[page_key, issued_key], api_visibility="private")
        timer.tick(status, outputs=[model_status, timer], api_visibility="private")
        rating = [rows[task] for task in RATED]  # in the order rating_rows gives their visibility
        analysis = dict(fn=analyze, inputs=[photo, prompt, chosen, threshold, custom, history_state],
                        outputs=[labels, caption, current, history_state, table, verdict_row, correction, right_label,
                                 message, heatmap, boxes, custom_scores, model_status, *rating, box_feedback,
                                 which_box, box_label], api_visibility="private")
        run.click(**analysis)
        photo.upload(**analysis)
        examples.load_input_event.then(**analysis)  # an example runs at once, as an upload does
        feedback = dict(api_visibility="private", concurrency_limit=None)
        save.click(save_caption, [current, caption, history_state], [history_state, table, message], **feedback)
        up.click(thumbs_up, [current, history_state], [history_state, table, message, correction], **feedback)
        down.click(thumbs_down, [current, history_state], [history_state, table, message, correction], **feedback)
        correct.click(save_correction, [current, right_label, history_state], [history_state, table, message],
                      **feedback)
        for task, (thumb_up, thumb_down) in thumbs.items():
            thumb_up.click(rate(task, "up"), [current, history_state], [history_state, table, message], **feedback)
            thumb_down.click(rate(task, "down"), [current, history_state], [history_state, table, message], **feedback)
        save_box.click(mark_box, [current, which_box, box_label, history_state], [history_state, table, message],
                       **feedback)
        # "Delete my data" asks first; only "Yes, delete" deletes
        forget.click(lambda: gr.Row(visible=True), None, confirm_row, **feedback)
        cancel.click(lambda: gr.Row(visible=False), None, confirm_row, **feedback)
        confirm.click(forget_session, [page_key, issued_key], [photo, history_state, table, labels, current, caption,
                                                               verdict_row, correction, message, heatmap, boxes,
                                                               custom_scores, confirm_row, *rating, box_feedback],
                      **feedback)
        gr.Button(visible=False).click(api_predict, [api_photo, api_prompt, api_tasks, api_options], api_out,
                                       api_name="predict")
        gr.api(api_feedback, api_name="feedback", concurrency_limit=None)
        gr.api(api_delete, api_name="delete_my_data", concurrency_limit=None)
        gr.api(admin_reload, api_name="admin_reload")
        gr.api(admin_purge, api_name="admin_purge", concurrency_limit=None)
        gr.api(admin_promote, api_name="admin_promote")
        gr.api(admin_rollback, api_name="admin_rollback")
        gr.Button(visible=False).click(admin_export, gr.Textbox(visible=False), gr.File(visible=False),
                                       api_name="admin_export", concurrency_limit=None)

    demo.studio = studio
    demo.upload_refs = studio.uploads
    demo.exports = studio.exports
    return demo


def launch(demo: gr.Blocks, config: settings.Settings, prevent_thread_lock: bool = False, quiet: bool = False):
    """Serve the page and the REST face on one port: blocking, or in a thread (prevent_thread_lock); returns
    (app, url, None) like Gradio's launch."""
    # uvicorn replaces the peer with an X-Forwarded-For entry when the peer is loopback (FORWARDED_ALLOW_IPS):
    # a local process could then pose as any client. The access policy reads forwarded headers itself, as far
    # as forwarded_hops says, so uvicorn must hand over the socket's own peer.
    os.environ["FORWARDED_ALLOW_IPS"] = ""
    app = server.build(demo, config, page_tasks(config), footer_links=["api"], theme=THEME, css=CSS, ssr_mode=False)
    service = server.Service(app, config.host, config.port, quiet=quiet)
    demo.service = service
    if not quiet:
        print(f"imagerec on {service.url} (REST: {service.url}docs)", flush=True)
    if prevent_thread_lock:
        service.start()
        return app, service.url, None
    service.serve()
    return app, service.url, None


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
    try:
        page_tasks(config)
    except tasks.UnknownTask as exc:  # a mistyped IMAGEREC_PAGE_TASKS: say so, as for any other bad setting
        parser.error(f"page_tasks: {exc}")
    _configure_torch(config)
    demo = create_app(config)
    atexit.register(demo.studio.close)
    # SIGTERM (docker stop, systemd, a Space restart) skips atexit; uvicorn closes the server on it and then
    # raises it again here, where it becomes KeyboardInterrupt: the log is closed and its journal drained first.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        launch(demo, config)  # returns once uvicorn has turned the signal into closing the server
    except KeyboardInterrupt:  # the signal came while launch() was still starting up
        pass
    finally:
        demo.studio.close()


def _interrupt(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    raise KeyboardInterrupt


if __name__ == "__main__":
    main()
