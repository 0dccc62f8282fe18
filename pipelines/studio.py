"""The recognizer and the log together: what the demo and the API call."""

from __future__ import annotations

import logging
import threading
from datetime import timedelta
from typing import Any, Callable, Iterator

from pipelines import access
from pipelines.access import Access
from pipelines.tasks.caption import Captioner
from pipelines.tasks.classify import Classifier
from pipelines.log.eventlog import EventLog, utcnow
from pipelines.intake import Limits
from pipelines.log.privacy import Deleted, ImageStore
from pipelines.log.rows import prediction_rows
from pipelines.recognizer import Recognizer
from pipelines.settings import Settings

log = logging.getLogger(__name__)

MAX_PROMPT_CHARS = 300
RETENTION_CHECK_S = 3600.0


class RequestRejected(ValueError):
    """A request refused before any work, with one sentence saying why."""


class Studio:
    """Predictions that are logged before they are answered, and feedback on them."""

    def __init__(self, recognizer: Recognizer, log: EventLog, access: Access | None = None,
                 retention_days: float = 0.0):
        self.recognizer = recognizer
        self.log = log
        self.access = access or Access()
        self.retention_days = retention_days
        self.after_delete: list[Callable[[], Any]] = []  # run when rows went, e.g. to drop exports holding them
        self._stop = threading.Event()
        if recognizer.store and log.replayed_images:  # finish image deletions a kill cut short
            recognizer.store.delete(log.replayed_images)
        if retention_days > 0:
            threading.Thread(target=self._retain, name="retention", daemon=True).start()

    @classmethod
    def from_settings(cls, config: Settings) -> "Studio":
        """Models (not loaded yet) and an open log, as the settings say."""
        classifier = Classifier(config.classifier, revision=config.classifier_revision or None,
                                device=config.device, top_k=config.top_k, precision=config.precision)
        captioner = Captioner(config.captioner, revision=config.captioner_revision or None,
                              device=config.device, max_new_tokens=config.caption_max_tokens,
                              precision=config.precision)
        limits = Limits(max_bytes=int(config.max_upload_mb * 1_000_000), max_pixels=config.max_pixels,
                        min_side=config.min_side, max_decoded_bytes=int(config.max_decoded_mb * 1_000_000))
        store = ImageStore(config.images_dir) if config.keep_images else None
        recognizer = Recognizer(classifier, captioner, limits, top_k=config.top_k, cache_size=config.cache_size,
                                store=store)
        log = EventLog(config.db, flush_interval=config.flush_interval, fsync=config.fsync).open()
        return cls(recognizer, log, Access.from_settings(config), config.retention_days)

    def warm_up(self, background: bool = True) -> threading.Thread | None:
        """Load both models now, so the first visitor does not wait for it."""
        def load() -> None:
            for model in (self.recognizer.classifier, self.recognizer.captioner):
                try:
                    model.load()
                except Exception:
                    pass  # kept in model.error and shown on the page
        if not background:
            load()
            return None
        thread = threading.Thread(target=load, name="model-warm-up", daemon=True)
        thread.start()
        return thread

    def model_status(self) -> dict[str, dict[str, Any]]:
        """For each model: its id, whether it is loaded, and the load error if any."""
        return {
            role: {"id": model.model_id, "loaded": model.loaded, "error": model.error}
            for role, model in (("classifier", self.recognizer.classifier),
                                ("captioner", self.recognizer.captioner))
        }

    def predict_steps(self, source: Any, prompt: str | None = None, origin: str = "api",
                      session_id: str | None = None, client: str | None = None) -> Iterator[dict]:
        """Yield labels first, then the complete result once it is in the log."""
        if prompt and len(prompt) > MAX_PROMPT_CHARS:
            raise RequestRejected(f"The caption prompt is {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}.")
        wait = self.access.retry_after(client)
        if wait:
            raise RequestRejected(f"Too many requests from your address: the limit is "
                                  f"{self.access.limiter.per_minute} predictions a minute. Try again in {wait:.0f} s.")
        steps = self.recognizer.steps(source, prompt=prompt)
        yield next(steps)
        result = next(steps)
        logged = self.log.log_prediction(prediction_rows(result, source=origin, session_id=session_id))
        result["logged"] = logged.durable  # False: answered, but held in memory until the journal can take it
        yield result

    def predict(self, source: Any, prompt: str | None = None, origin: str = "api",
                session_id: str | None = None, client: str | None = None) -> dict:
        """The complete result for one image, logged."""
        *_, result = self.predict_steps(source, prompt=prompt, origin=origin, session_id=session_id, client=client)
        return result

    def feedback(self, prediction_id: str, verdict: str | None = None, corrected_label: str | None = None,
                 edited_caption: str | None = None) -> dict:
        """Record feedback on a logged prediction."""
        feedback_id, new = self.log.log_feedback(prediction_id, verdict=verdict, corrected_label=corrected_label,
                                                 edited_caption=edited_caption)
        return {"id": str(feedback_id), "prediction_id": prediction_id, "recorded": True, "duplicate": not new,
                "logged": feedback_id.durable}

    def delete_data(self, session_id: str | None = None, prediction_id: str | None = None) -> Deleted:
        """Delete a session's or one prediction's rows and kept images ("delete my data")."""
        if not (session_id or prediction_id):
            raise RequestRejected("Say whose data to delete: a session or a prediction id.")
        where, params = ("session_id = ?", [session_id]) if session_id else ("id = ?", [prediction_id])
        return self._delete(where, params)

    def delete_session(self, session_id: str | None, key: str | None, issued: str | None) -> Deleted:
        """Delete a session's data, only for the page that holds the key the server issued to that session."""
        # Gradio's session hash is chosen by the client and its server-side State is looked up by it, so neither
        # proves who calls: the key does, as the server sent it only to the page that opened the session.
        if not (session_id and access.same_key(key, issued)):
            raise RequestRejected("This page cannot show that it made these predictions, so nothing was deleted; "
                                  "delete a prediction by its id with /delete_my_data instead.")
        return self.delete_data(session_id=session_id)

    def purge_older_than(self, days: float) -> Deleted:
        """Delete predictions, their feedback and kept images older than `days`."""
        return self._delete("created_at < ?", [utcnow() - timedelta(days=days)])

    def _delete(self, where: str, params: list) -> Deleted:
        removed = self.log.delete(where, params)
        self.recognizer.forget(removed.hashes)  # a deleted photo's answers go from memory too
        store = self.recognizer.store
        deleted = Deleted(len(removed.ids), removed.feedback, store.delete(removed.images) if store else 0)
        if deleted.predictions or deleted.feedback:
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

    def close(self) -> None:
        """Write every pending event into the log."""
        self._stop.set()
        self.log.close()
