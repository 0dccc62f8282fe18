"""Prometheus metrics for one running service (every name starts with imagerec_), fed by the Studio's observers."""

from __future__ import annotations

from typing import Any, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from pipelines.access import AccessDenied
from pipelines.intake import ImageRejected
from pipelines.studio import RateLimited, Studio

SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def rejection_reason(exc: Exception) -> str:
    """A short, bounded label for why a request or upload was refused."""
    if isinstance(exc, RateLimited):
        return "rate_limited"
    if isinstance(exc, ImageRejected):
        return "too_large" if "the limit is" in str(exc) else "bad_image"
    if isinstance(exc, AccessDenied):
        return "denied"
    return "bad_request"


class StudioState(Collector):
    """Read at scrape time: each model's load state and version, and the log's backlog."""

    def __init__(self, studio: Studio):
        self.studio = studio

    def collect(self) -> Iterator[Any]:
        loaded = GaugeMetricFamily("imagerec_model_loaded", "1 when the model is loaded, 0 when not (yet), "
                                   "-1 when it failed to load", labels=["role", "model"])
        info = InfoMetricFamily("imagerec_model", "The model behind each role and its version",
                                labels=["role"])
        for role, state in self.studio.model_status().items():
            loaded.add_metric([role, state["id"]], -1 if state["error"] else int(state["loaded"]))
            model = self.studio.recognizer.model_roles[role]
            version = getattr(model, "version", None) if state["loaded"] else None
            info.add_metric([role], {"model": state["id"], "version": str(version or "")})
        yield loaded
        yield info
        health = self.studio.log.health()
        backlog = GaugeMetricFamily("imagerec_log_backlog", "Events acknowledged but not yet in DuckDB")
        backlog.add_metric([], health["backlog"])
        yield backlog
        ok = GaugeMetricFamily("imagerec_log_ok", "1 when every acknowledged event is durable")
        ok.add_metric([], int(health["ok"]))
        yield ok


class Metrics:
    """The service's metrics in their own registry (two apps in one process, as in tests, do not collide)."""

    def __init__(self, studio: Studio):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("imagerec_requests", "HTTP requests by endpoint, method and status",
                                ["endpoint", "method", "status"], registry=r)
        self.request_seconds = Histogram("imagerec_request_seconds", "HTTP request latency by endpoint",
                                         ["endpoint"], buckets=SECONDS, registry=r)
        self.stage_seconds = Histogram("imagerec_stage_seconds", "Prediction latency by task and stage "
                                       "(stage intake and total are per request, task 'all')",
                                       ["task", "stage"], buckets=SECONDS, registry=r)
        self.queue_depth = Gauge("imagerec_queue_depth", "REST predictions running or waiting", registry=r)
        self.feedback = Counter("imagerec_feedback", "Feedback recorded, by verdict", ["verdict"], registry=r)
        self.rejected = Counter("imagerec_rejected_uploads", "Uploads and requests refused, by reason",
                                ["reason"], registry=r)
        r.register(StudioState(studio))
        studio.on_result.append(self.observe_result)
        studio.on_rejected.append(lambda exc: self.rejected.labels(rejection_reason(exc)).inc())
        studio.on_feedback.append(lambda verdict: self.feedback.labels(verdict or "none").inc())

    def observe_result(self, result: dict) -> None:
        for name, ms in result["timings_ms"].items():
            if name in ("intake", "total"):
                self.stage_seconds.labels("all", name).observe(ms / 1000)
            else:
                cached = result.get("runs", {}).get(name, {}).get("cached")
                self.stage_seconds.labels(name, "cached" if cached else "model").observe(ms / 1000)

    def refused(self, reason: str) -> None:
        """An upload refused at the edge (too large, over the budget), before the Studio saw it."""
        self.rejected.labels(reason).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
