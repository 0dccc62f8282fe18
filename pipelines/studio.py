"""The one door: every face (the page, the API, batch jobs) predicts, records feedback, deletes and administers here."""

from __future__ import annotations

import atexit
import functools
import logging
import os
import threading
import uuid
from datetime import timedelta
from typing import Any, Callable, Iterator, NamedTuple, Sequence

from pipelines import access, tasks
from pipelines.access import Access
from pipelines.feedback import judge
from pipelines.intake import ImageRejected, Limits
from pipelines.log.eventlog import EventLog, FeedbackRejected, utcnow
from pipelines.log.export import ExportShelf
from pipelines.log.privacy import Deleted, ImageStore
from pipelines.log.rows import prediction_rows
from pipelines.models import ModelLoadError, compiled
from pipelines.promotion import Promoter
from pipelines.recognizer import Recognizer
from pipelines.tasks import BadRequest
from pipelines.settings import Settings
from pipelines.uploads import UploadRefs

log = logging.getLogger(__name__)

MAX_PROMPT_CHARS = 300
RETENTION_CHECK_S = 3600.0
PUBLIC_FIELDS = ("id", "labels", "caption", "prompt", "timings_ms", "models", "image", "cached", "outputs", "logged")


class RequestRejected(ValueError):
    """A request refused before any work, with one sentence saying why."""


class RateLimited(RequestRejected):
    """Too many requests from one client; retry_after says in how many seconds it may try again."""

    def __init__(self, sentence: str, retry_after: float):
        super().__init__(sentence)
        self.retry_after = retry_after


class Caller(NamedTuple):
    """Who sent a request, as the face saw it: its headers and the address of the connection it came on."""

    headers: Any = None
    peer: str | None = None


def public(result: dict) -> dict:
    """The fields of a result a caller is sent (the API contract), without the decoded photo or run details."""
    return {k: result[k] for k in PUBLIC_FIELDS if k in result}


class Studio:
    """Predictions that are logged before they are answered, feedback on them, deletion and administration."""

    def __init__(self, recognizer: Recognizer, log: EventLog, access: Access | None = None,
                 retention_days: float = 0.0, uploads: UploadRefs | None = None,
                 compile_plan: compiled.Plan | None = None):
        self.recognizer = recognizer
        self.log = log
        self.access = access or Access()
        self.retention_days = retention_days
        self.uploads = uploads or UploadRefs()  # who still needs each visitor's uploaded copy
        self.compile_plan = compile_plan  # where warmed models' encoders are compiled to; None: never
        self.exports: ExportShelf | None = None  # where admin exports are served from, once a face says
        self.after_delete: list[Callable[[], Any]] = []  # run when rows went, e.g. to drop exports holding them
        # observers (metrics): each finished result, each refused image or request, each feedback's verdict
        self.on_result: list[Callable[[dict], Any]] = []
        self.on_rejected: list[Callable[[Exception], Any]] = []
        self.on_feedback: list[Callable[[str | None], Any]] = []
        self._stop = threading.Event()
        self._warming: set[str] = set()  # the roles whose models load at start; the others load when first asked
        if recognizer.store and log.replayed_images:  # finish image deletions a kill cut short
            recognizer.store.delete(log.replayed_images)
        if retention_days > 0:
            threading.Thread(target=self._retain, name="retention", daemon=True).start()

    @classmethod
    def from_settings(cls, config: Settings) -> "Studio":
        """Every task's model (not loaded yet) and an open log, as the settings say."""
        limits = Limits(max_bytes=int(config.max_upload_mb * 1_000_000), max_pixels=config.max_pixels,
                        min_side=config.min_side, max_decoded_bytes=int(config.max_decoded_mb * 1_000_000))
        store = ImageStore(config.images_dir) if config.keep_images else None
        recognizer = Recognizer(tasks.build(config), limits, cache_size=config.cache_size, store=store)
        log = EventLog(config.db, flush_interval=config.flush_interval, fsync=config.fsync).open()
        plan = compiled.Plan.from_settings(config)
        return cls(recognizer, log, Access.from_settings(config), config.retention_days, compile_plan=plan)

    # -- models ----------------------------------------------------------------------------------------------
    def warm_up(self, task_names: Sequence[str] | None = None, background: bool = True) -> threading.Thread | None:
        """Load the models of these tasks now (the default ones when none are named), so no visitor waits for them.

        Any other task's model loads when a request first asks for it: a detector or a zero-shot model a site never
        uses costs no download and no memory.
        """
        roles = {self.recognizer.tasks[name].role for name in tasks.resolve(task_names)}
        models = [model for role, model in self.recognizer.model_roles.items() if role in roles]
        self._warming.update(roles)

        def load() -> None:
            for model in models:
                try:
                    model.load()
                except Exception:
                    pass  # kept in model.error and shown on the page
            if self.compile_plan is not None:  # after every load: visitors are served meanwhile, uncompiled
                self.compile_plan.apply([m for m in models if m.loaded])
        if not background:
            load()
            return None
        thread = threading.Thread(target=load, name="model-warm-up", daemon=True)
        thread.start()
        return thread

    def model_status(self) -> dict[str, dict[str, Any]]:
        """For each model: its id, whether it is loaded or being loaded now, the load error if any, and the compiled
        variant its encoder serves from (None: uncompiled)."""
        return {role: {"id": model.model_id, "loaded": model.loaded, "error": model.error,
                       "warming": role in self._warming, "compiled": getattr(model, "compiled_variant", None)}
                for role, model in self.recognizer.model_roles.items()}

    def labels(self, task: str = "classify") -> list[str]:
        """Every label the task's model knows (the classifier's by default), for a corrected label to be picked from."""
        if task == "classify":
            return self.recognizer.classifier.labels
        return self._labels_of(task, {}) or []

    # -- predictions -----------------------------------------------------------------------------------------
    def predict_steps(self, source: Any, prompt: str | None = None, tasks: Sequence[str] | None = None,
                      origin: str = "api", session_id: str | None = None, caller: Caller | None = None,
                      disposable: bool = False, options: dict | None = None, admitted: bool = False
                      ) -> Iterator[dict]:
        """Yield the result after each task ("pending" says what is still to come); the last one once logged.

        admitted: the face already counted this request against the caller's rate limit (Studio.admit), as the
        REST face does before it reads the body.

        disposable: the source is a visitor's uploaded copy, to be removed once no one needs it: with a session it
        is held until the session's data is deleted (or the face's sweep); without one, until this request ends.
        """
        try:
            names = self._check(prompt, tasks, None if admitted else caller)
        except RequestRejected as exc:
            self._notify(self.on_rejected, exc)
            raise
        holder = f"session:{session_id}" if session_id else f"request:{uuid.uuid4().hex}"
        if disposable:
            self.uploads.acquire(str(source), holder)
        try:
            for result in self.recognizer.steps(source, prompt=prompt, tasks=names, options=options):
                if result["pending"]:
                    yield result
                    continue
                logged = self.log.log_prediction(prediction_rows(result, source=origin, session_id=session_id))
                result["logged"] = logged.durable  # False: answered, but held in memory until the journal can take it
                self._notify(self.on_result, result)
                yield result
        except BadRequest as exc:  # a task's options it cannot run: said before the photo is read
            self._notify(self.on_rejected, RequestRejected(str(exc)))
            raise RequestRejected(str(exc)) from None
        except ImageRejected as exc:
            self._notify(self.on_rejected, exc)
            raise
        finally:
            if disposable and not session_id:  # a caller without a session cannot delete it later: it goes now
                self.uploads.release(str(source), holder)

    def predict(self, source: Any, prompt: str | None = None, tasks: Sequence[str] | None = None,
                origin: str = "api", session_id: str | None = None, caller: Caller | None = None,
                disposable: bool = False, options: dict | None = None, admitted: bool = False) -> dict:
        """The complete result for one image, logged."""
        *_, result = self.predict_steps(source, prompt=prompt, tasks=tasks, origin=origin, session_id=session_id,
                                        caller=caller, disposable=disposable, options=options, admitted=admitted)
        return result

    @staticmethod
    def _notify(hooks: list[Callable[[Any], Any]], value: Any) -> None:
        for hook in hooks:
            try:
                hook(value)
            except Exception as exc:  # an observer's failure must never fail a request
                log.warning("observer failed: %s", exc)

    def _check(self, prompt: str | None, names: Sequence[str] | None, caller: Caller | None) -> tuple[str, ...]:
        """The tasks to run, or RequestRejected before any work: a bad argument, or the caller's rate limit."""
        if prompt and len(prompt) > MAX_PROMPT_CHARS:
            raise RequestRejected(f"The caption prompt is {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}.")
        if isinstance(names, str):
            names = [names]
        try:
            resolved = tasks.resolve(names)
        except tasks.UnknownTask as exc:
            raise RequestRejected(str(exc)) from None
        self.admit(caller)
        return resolved

    def admit(self, caller: Caller | None) -> None:
        """Count one prediction against the caller's rate limit, or raise RateLimited saying when to come back."""
        wait = self.access.retry_after(self.client(caller))
        if wait:
            raise RateLimited(f"Too many requests from your address: the limit is "
                              f"{self.access.limiter.per_minute} predictions a minute. Try again in {wait:.0f} s.",
                              wait)

    def client(self, caller: Caller | None) -> str | None:
        """The caller's address as the access policy resolves it (forwarded headers only from trusted proxies)."""
        return self.access.client(*caller) if caller else None

    # -- feedback --------------------------------------------------------------------------------------------
    def feedback(self, prediction_id: str, verdict: str | None = None, corrected_label: str | None = None,
                 edited_caption: str | None = None, task: str | None = None, box: Any = None) -> dict:
        """Record feedback on a logged prediction: on its answer, on one task's output, or on one detected box."""
        if not self.log.knows(prediction_id):  # said before what it would judge (the log checks again as it writes)
            raise FeedbackRejected(f"There is no prediction with id {prediction_id!r}.")
        judged = judge(lambda name: self.log.output(prediction_id, name), self._labels_of, verdict, corrected_label,
                       edited_caption, task, box)
        feedback_id, new = self.log.log_feedback(prediction_id, verdict=verdict, corrected_label=corrected_label,
                                                 edited_caption=edited_caption, task=judged.task, target=judged.target)
        self._notify(self.on_feedback, verdict)
        saved = {"id": str(feedback_id), "prediction_id": prediction_id, "recorded": True, "duplicate": not new,
                 "logged": feedback_id.durable, "task": judged.task}
        if judged.target is not None:
            saved["box"] = judged.target
        if judged.note:
            saved["note"] = judged.note
        return saved

    def _labels_of(self, task: str, output: dict) -> list[str] | None:
        """The labels a correction of a task's output is expected among (None: any label is as good)."""
        if task == "zero_shot":
            return [item["label"] for item in output.get("labels", [])]
        model = self.recognizer.tasks[task].model if task in self.recognizer.tasks else None
        try:
            return model.labels if model is not None else None
        except ModelLoadError:  # the model is gone since: the correction is kept, unchecked
            return None

    # -- deletion --------------------------------------------------------------------------------------------
    def delete_data(self, session_id: str | None = None, prediction_id: str | None = None) -> Deleted:
        """Delete a session's or one prediction's rows and kept images ("delete my data")."""
        if not (session_id or prediction_id):
            raise RequestRejected("Say whose data to delete: a session or a prediction id.")
        where, params = ("session_id = ?", [session_id]) if session_id else ("id = ?", [prediction_id])
        return self._delete(where, params)

    def delete_session(self, session_id: str | None, key: str | None, issued: str | None) -> Deleted:
        """Delete a session's data and uploaded copies, only for the page holding the key issued to that session."""
        # Gradio's session hash is chosen by the client and its server-side State is looked up by it, so neither
        # proves who calls: the key does, as the server sent it only to the page that opened the session.
        if not (session_id and access.same_key(key, issued)):
            raise RequestRejected("This page cannot show that it made these predictions, so nothing was deleted; "
                                  "delete a prediction by its id with /delete_my_data instead.")
        deleted = self.delete_data(session_id=session_id)
        # copies no one else holds go now; one another visitor still needs goes after them
        deleted.uploads += self.uploads.release_all(f"session:{session_id}")
        return deleted

    def purge_older_than(self, days: float) -> Deleted:
        """Delete predictions, their feedback and kept images older than `days`."""
        return self._delete("created_at < ?", [utcnow() - timedelta(days=days)])

    def _delete(self, where: str, params: list) -> Deleted:
        removed = self.log.delete(where, params)
        self.recognizer.forget(removed.hashes)  # a deleted photo's answers go from memory too
        store = self.recognizer.store
        deleted = Deleted(len(removed.ids), removed.feedback, store.delete(removed.images) if store else 0)
        if deleted.predictions or deleted.feedback:
            if self.exports:
                self.exports.clear()  # a deleted row must not live on in an export
            for hook in self.after_delete:
                hook()
        return deleted

    def _retain(self) -> None:
        while True:
            try:
                deleted = self.purge_older_than(self.retention_days)
                if deleted.predictions:
                    log.info("retention: %s", deleted.sentence())
            except Exception as exc:  # retried at the next round
                log.warning("retention purge failed: %s", exc)
            if self._stop.wait(RETENTION_CHECK_S):
                return

    # -- administration: open to a direct connection from this machine until a password is set, then only with it
    def check_admin(self, caller: Caller | None, token: str | None) -> None:
        """Raise access.AccessDenied unless this caller may run an admin action."""
        self.access.check_admin(*(caller or Caller()), token)

    def admin_reload(self, caller: Caller | None, token: str | None) -> dict:
        """Try again to load the models that failed (the hub is back, a folder was fixed)."""
        self.check_admin(caller, token)
        for role, model in self.recognizer.model_roles.items():
            if not (model.error or role in self._warming):
                continue  # never asked for: it loads when a request first needs it
            try:
                model.load(retry=True)
            except ModelLoadError:
                pass  # reported in the status returned
        return self.model_status()

    @functools.cached_property
    def promoter(self) -> Promoter:
        return Promoter(self.recognizer, self.log)

    def admin_promote(self, caller: Caller | None, token: str | None, model: str) -> dict:
        """Serve another classifier (a trained folder or hub id) from the next request on, registered in the log."""
        self.check_admin(caller, token)
        return self.promoter.promote(model)

    def admin_rollback(self, caller: Caller | None, token: str | None) -> dict:
        """Serve the classifier that served before the last promotion."""
        self.check_admin(caller, token)
        return self.promoter.rollback()

    def admin_purge(self, caller: Caller | None, token: str | None, older_than_days: float) -> Deleted:
        """Delete predictions, feedback and kept images older than a number of days."""
        self.check_admin(caller, token)
        return self.purge_older_than(float(older_than_days))

    def admin_export(self, caller: Caller | None, token: str | None) -> str:
        """The whole log as a Parquet file, removed once downloaded, after a TTL, or on any deletion."""
        self.check_admin(caller, token)
        if self.exports is None:
            raise RequestRejected("Exports are not served here.")
        self.log.flush()
        return str(self.exports.write(self.log.path))

    def serve_exports_from(self, folder: str | os.PathLike) -> ExportShelf:
        """Write admin exports into folder (where the face serves files from)."""
        self.exports = ExportShelf(folder)
        atexit.register(self.exports.close)
        return self.exports

    def close(self) -> None:
        """Write every pending event into the log."""
        self._stop.set()
        self.log.close()
