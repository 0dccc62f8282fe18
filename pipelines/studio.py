"""The recognizer and the log together: what the demo and the API call."""

from __future__ import annotations

import threading
from typing import Any, Iterator

from pipelines.caption import Captioner
from pipelines.classify import Classifier
from pipelines.eventlog import EventLog
from pipelines.intake import Limits
from pipelines.recognizer import Recognizer, prediction_row
from pipelines.settings import Settings


class Studio:
    """Predictions that are logged before they are answered, and feedback on them."""

    def __init__(self, recognizer: Recognizer, log: EventLog):
        self.recognizer = recognizer
        self.log = log

    @classmethod
    def from_settings(cls, config: Settings) -> "Studio":
        """Models (not loaded yet) and an open log, as the settings say."""
        classifier = Classifier(config.classifier, revision=config.classifier_revision or None,
                                device=config.device, top_k=config.top_k)
        captioner = Captioner(config.captioner, revision=config.captioner_revision or None,
                              device=config.device, max_new_tokens=config.caption_max_tokens)
        limits = Limits(max_bytes=int(config.max_upload_mb * 1_000_000), max_pixels=config.max_pixels,
                        min_side=config.min_side)
        recognizer = Recognizer(classifier, captioner, limits, top_k=config.top_k, cache_size=config.cache_size)
        log = EventLog(config.db, flush_interval=config.flush_interval, fsync=config.fsync).open()
        return cls(recognizer, log)

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
                      session_id: str | None = None) -> Iterator[dict]:
        """Yield labels first, then the complete result once it is in the log."""
        steps = self.recognizer.steps(source, prompt=prompt)
        yield next(steps)
        result = next(steps)
        self.log.log_prediction(prediction_row(result, source=origin, session_id=session_id))
        yield result

    def predict(self, source: Any, prompt: str | None = None, origin: str = "api",
                session_id: str | None = None) -> dict:
        """The complete result for one image, logged."""
        *_, result = self.predict_steps(source, prompt=prompt, origin=origin, session_id=session_id)
        return result

    def feedback(self, prediction_id: str, verdict: str | None = None, corrected_label: str | None = None,
                 edited_caption: str | None = None) -> dict:
        """Record feedback on a logged prediction."""
        feedback_id, new = self.log.log_feedback(prediction_id, verdict=verdict, corrected_label=corrected_label,
                                                 edited_caption=edited_caption)
        return {"id": feedback_id, "prediction_id": prediction_id, "recorded": True, "duplicate": not new}

    def close(self) -> None:
        """Write every pending event into the log."""
        self.log.close()
