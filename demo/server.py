"""One ASGI app on one port: FastAPI with the REST face and the probes, the Gradio page mounted at the root."""

from __future__ import annotations

import time
from typing import Any, Callable

import gradio as gr
import uvicorn
from fastapi import FastAPI
from starlette.middleware import Middleware
from starlette.routing import Mount

from demo import rest
from demo.gate import Gate
from demo.metrics import Metrics
from pipelines import access, settings
from pipelines.uploads import UploadBudget

REST_UPLOADS = ("/v1/predict",)
GRACE_S = 5


class CountRequests:
    """ASGI middleware: each HTTP request counted and timed by its route (the page's own routes as 'gradio')."""

    def __init__(self, app: Any, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 500
        started = time.perf_counter()

        async def watch(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) if route is not None else None
            if endpoint is None or not (endpoint.startswith("/v1") or endpoint in ("/healthz", "/readyz", "/metrics")):
                endpoint = "gradio" if scope["path"] not in REST_UPLOADS else scope["path"]
            self.metrics.requests.labels(endpoint, scope["method"], str(status)).inc()
            self.metrics.request_seconds.labels(endpoint).observe(time.perf_counter() - started)


def build(demo: gr.Blocks, config: settings.Settings, warm: list[str], **page: Any) -> FastAPI:
    """The service: REST and probes first, then the page at '/', behind the gate (caps before any body is read)."""
    studio = demo.studio
    metrics = Metrics(studio)
    capacity = rest.Capacity(config.concurrency, config.queue_size)
    metrics.queue_depth.set_function(lambda: capacity.in_flight)
    gate = Middleware(Gate, max_body=int(config.max_body_kb * 1000),
                      budget=UploadBudget(int(config.upload_budget_mb * 1_000_000)),
                      identify=lambda headers, peer: access.client_identity(headers, peer, config),
                      uploads=getattr(demo, "upload_refs", None),
                      on_download=getattr(getattr(demo, "exports", None), "downloaded", None),
                      rest_uploads=REST_UPLOADS, max_upload=int(config.max_upload_mb * 1_000_000),
                      on_refuse=metrics.refused)
    app = FastAPI(title="imagerec", version="1",
                  description="Recognize photos, record feedback, read usage. Errors are JSON: {\"error\": sentence}.",
                  middleware=[Middleware(CountRequests, metrics=metrics), gate])
    rest.install(app, studio, capacity, metrics, warm)
    demo.queue(default_concurrency_limit=config.concurrency, max_size=config.queue_size)
    # show_error=False as launch() has it (mount_gradio_app defaults to True): an unexpected error's own text, with
    # its server paths, stays in the server log; a visitor sees the sentences the app raises as gr.Error
    app = gr.mount_gradio_app(app, demo, path="", server_name=config.host, server_port=config.port,
                              max_file_size=int(config.max_upload_mb * 1_000_000), show_error=False, **page)
    # Gradio checks that a file named in a request was uploaded (not /etc/passwd, not the cwd) only once its Blocks
    # "has launched", which launch() sets and mount_gradio_app does not: without this, forged paths were read
    demo.has_launched = True
    app.state.metrics = metrics
    app.state.capacity = capacity
    return app


class _Server(uvicorn.Server):
    """uvicorn's server that first ends the page's heartbeat streams, as Gradio's own launch does: open streams
    would otherwise hold a SIGTERM until the grace period ends."""

    def __init__(self, config: uvicorn.Config, mounted: list[Any]):
        super().__init__(config)
        self.mounted = mounted

    async def shutdown(self, sockets: Any = None) -> None:
        for page in self.mounted:
            stop = getattr(page, "stop_event", None)
            if stop is not None:
                stop.set()
        await super().shutdown(sockets=sockets)


class Service:
    """A running uvicorn server over the app: in this thread (blocking) or in a background one."""

    def __init__(self, app: FastAPI, host: str, port: int, quiet: bool = False):
        self.config = uvicorn.Config(app, host=host, port=port, log_level="warning" if quiet else "info",
                                     lifespan="on", forwarded_allow_ips="",
                                     # a page's event stream stays open: on SIGTERM wait this long, not for ever
                                     timeout_graceful_shutdown=GRACE_S)
        mounted = [route.app for route in app.routes if isinstance(route, Mount)]
        self.server = _Server(self.config, mounted)
        self.thread = None
        self.url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/"

    def serve(self) -> None:
        self.server.run()

    def start(self) -> "Service":
        import threading

        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"The server did not start on {self.url}; is the port free?")
            time.sleep(0.01)
        return self

    def close(self) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout=10)
