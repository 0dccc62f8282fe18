"""The REST face (/v1, /healthz, /readyz, /metrics): thin over the Studio, errors as one sentence with their status."""

from __future__ import annotations

import json
import threading
from typing import Any, Literal

import anyio
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.background import BackgroundTask

from demo.metrics import Metrics
from pipelines import access, insight
from pipelines.intake import ImageRejected
from pipelines.log.eventlog import FeedbackRejected, LogError
from pipelines.models import ModelLoadError
from pipelines.promotion import PromotionError
from pipelines.studio import Caller, RateLimited, RequestRejected, Studio, public

BUSY_RETRY_S = 5  # what a refused caller is told to wait: about one prediction on a small CPU
MAX_WINDOW_HOURS = 24 * 366


class Problem(BaseModel):
    """Every error: one sentence a person understands."""

    error: str


class Feedback(BaseModel):
    """Feedback on a prediction: on its answer, on one task's output (task), or on one detected box (box: its index
    in outputs.detect.boxes; a thumbs down on a box without a corrected label says it is not an object)."""

    model_config = ConfigDict(extra="forbid")
    prediction_id: str = Field(min_length=1, max_length=64)
    verdict: Literal["up", "down"] | None = None
    corrected_label: str | None = Field(None, max_length=200)
    edited_caption: str | None = Field(None, max_length=2000)
    task: str | None = Field(None, max_length=64)
    box: int | None = Field(None, ge=0, le=10_000)


class Promote(BaseModel):
    """The classifier to serve next: a trained model folder on the server, or a hub id."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1, max_length=1000)


class Purge(BaseModel):
    model_config = ConfigDict(extra="forbid")
    older_than_days: float = Field(ge=0, le=36500)


class ApiError(Exception):
    """A refusal with its status, sentence and optional Retry-After seconds."""

    def __init__(self, status: int, sentence: str, retry_after: float | None = None, headers: dict | None = None):
        super().__init__(sentence)
        self.status, self.sentence, self.retry_after, self.headers = status, sentence, retry_after, headers or {}


def problem(status: int, sentence: str, retry_after: float | None = None, headers: dict | None = None) -> JSONResponse:
    headers = dict(headers or {})
    if retry_after:
        headers["Retry-After"] = str(max(1, round(retry_after + 0.499)))
    return JSONResponse({"error": sentence}, status_code=status, headers=headers)


def _errors(*codes: int) -> dict:
    return {code: {"model": Problem} for code in codes}


def _status_of(exc: Exception) -> ApiError:
    """The status code for what the Studio raised (a user's mistake, a refusal, a fault)."""
    if isinstance(exc, RateLimited):
        return ApiError(429, str(exc), exc.retry_after)
    if isinstance(exc, ImageRejected):
        return ApiError(413 if "the limit is" in str(exc) and "MB" in str(exc) else 400, str(exc))
    if isinstance(exc, FeedbackRejected):
        return ApiError(404 if "no prediction" in str(exc).lower() else 422, str(exc))
    if isinstance(exc, (RequestRejected, PromotionError)):
        return ApiError(422, str(exc))
    if isinstance(exc, ModelLoadError):
        return ApiError(503, str(exc), BUSY_RETRY_S)
    if isinstance(exc, LogError):
        return ApiError(503, str(exc), BUSY_RETRY_S)
    raise exc


class Capacity:
    """REST predictions running or waiting; past the limit a request is refused as busy before its body is read."""

    def __init__(self, running: int, waiting: int):
        self.limit = max(1, running) + max(0, waiting)
        self.limiter = anyio.CapacityLimiter(max(1, running))
        self.in_flight = 0
        self._lock = threading.Lock()

    def enter(self) -> bool:
        with self._lock:
            if self.in_flight >= self.limit:
                return False
            self.in_flight += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    @property
    def full(self) -> bool:
        return self.in_flight >= self.limit


def caller(request: Request) -> Caller:
    return Caller(request.headers, request.client.host if request.client else None)


def bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


PREDICT_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["image"], "properties": {
        "image": {"type": "string", "format": "binary", "description": "The photo file."},
        "prompt": {"type": "string", "maxLength": 300, "description": "Optional start of the caption."},
        "tasks": {"type": "string", "description": "Comma-separated task names, e.g. classify,caption."},
        "options": {"type": "string", "description": 'Per-task options as JSON, e.g. {"detect": {"threshold": 0.3}}.'},
    }}}}}}


def router(studio: Studio, capacity: Capacity, metrics: Metrics, warm: list[str]) -> APIRouter:
    """The /v1 routes and the probes, over one Studio."""
    api = APIRouter()

    async def run(fn, *args, **kwargs):
        try:
            return await anyio.to_thread.run_sync(lambda: fn(*args, **kwargs), limiter=capacity.limiter)
        except (RequestRejected, ImageRejected, FeedbackRejected, ModelLoadError, LogError, PromotionError) as exc:
            raise _status_of(exc) from None

    @api.post("/v1/predict", tags=["predictions"], openapi_extra=PREDICT_BODY,
              responses=_errors(400, 413, 422, 429, 503),
              summary="Recognize a photo (multipart: image, optional prompt, tasks, options)")
    async def predict(request: Request) -> dict[str, Any]:
        if not capacity.enter():  # before the body: a busy server must not first take in everyone's photos
            metrics.refused("busy")
            raise ApiError(503, "The server is busy with other photos; try again in a few seconds.", BUSY_RETRY_S)
        try:
            who = caller(request)
            try:
                studio.admit(who)  # the rate limit, also before the body
            except RateLimited as exc:
                metrics.refused("rate_limited")
                raise ApiError(429, str(exc), exc.retry_after) from None
            image, prompt, names, options = await _read_form(request)
            result = await run(studio.predict, image, prompt=prompt, tasks=names, origin="api", options=options,
                               admitted=True)
            return public(result)
        finally:
            capacity.leave()

    @api.get("/v1/predictions/{prediction_id}", tags=["predictions"], responses=_errors(404, 422))
    async def get_prediction(prediction_id: str) -> dict[str, Any]:
        """A logged prediction with its outputs and latest feedback."""
        found = await anyio.to_thread.run_sync(insight.prediction, studio.log, prediction_id)
        if found is None:
            raise ApiError(404, f"There is no prediction with id {prediction_id!r}.")
        return found

    @api.delete("/v1/predictions/{prediction_id}", tags=["predictions"], responses=_errors(404, 422, 503))
    async def delete_prediction(prediction_id: str) -> dict[str, Any]:
        """Delete one prediction, its feedback and any kept image ("delete my data")."""
        deleted = await run(studio.delete_data, prediction_id=prediction_id)
        if not deleted.predictions:
            raise ApiError(404, f"There is no prediction with id {prediction_id!r}; nothing was deleted.")
        return {"deleted": deleted.__dict__, "message": deleted.sentence()}

    @api.post("/v1/feedback", tags=["feedback"], responses=_errors(404, 422, 503))
    async def feedback(body: Feedback) -> dict[str, Any]:
        """Record a verdict, a corrected label and/or an edited caption: on a prediction's answer, on one task's
        output, or on one detected box."""
        given = body.model_dump(exclude={"prediction_id"})
        return await run(studio.feedback, body.prediction_id, **given)

    @api.get("/v1/stats", tags=["usage"], responses=_errors(422))
    async def stats(window_hours: float = 24.0) -> dict[str, Any]:
        """Counts, feedback and accuracy rates and latency percentiles over the last window_hours."""
        if not 0 < window_hours <= MAX_WINDOW_HOURS:
            raise ApiError(422, f"window_hours must be above 0 and at most {MAX_WINDOW_HOURS}.")
        return await anyio.to_thread.run_sync(insight.usage, studio.log, window_hours)

    @api.get("/v1/models", tags=["usage"])
    async def models() -> dict[str, Any]:
        """Each task with its model, version and load state."""
        status = studio.model_status()
        return {"tasks": {name: {"role": task.role, **status[task.role],
                                 "version": studio.recognizer.model_roles[task.role].version}
                          for name, task in studio.recognizer.tasks.items()}}

    # -- admin: the admin password as a bearer token -------------------------------------------------------------
    def admin(request: Request) -> tuple[Caller, str | None]:
        token = bearer(request)
        try:
            studio.check_admin(caller(request), token)
        except access.AccessDenied as exc:
            if studio.access.admin_password and token is None:
                raise ApiError(401, str(exc), headers={"WWW-Authenticate": "Bearer"}) from None
            raise ApiError(403, str(exc)) from None
        return caller(request), token

    @api.post("/v1/admin/reload", tags=["admin"], responses=_errors(401, 403))
    async def admin_reload(request: Request) -> dict[str, Any]:
        """Try again to load the models that failed."""
        who, token = admin(request)
        return await anyio.to_thread.run_sync(studio.admin_reload, who, token)

    @api.post("/v1/admin/promote", tags=["admin"], responses=_errors(401, 403, 422, 503))
    async def admin_promote(body: Promote, request: Request) -> dict[str, Any]:
        """Serve another classifier from the next request on, without a restart (registered in the log)."""
        who, token = admin(request)
        return await run(studio.admin_promote, who, token, body.model)

    @api.post("/v1/admin/rollback", tags=["admin"], responses=_errors(401, 403, 422, 503))
    async def admin_rollback(request: Request) -> dict[str, Any]:
        """Serve the classifier that served before the last promotion."""
        who, token = admin(request)
        return await run(studio.admin_rollback, who, token)

    @api.post("/v1/admin/purge", tags=["admin"], responses=_errors(401, 403, 422, 503))
    async def admin_purge(body: Purge, request: Request) -> dict[str, Any]:
        """Delete predictions, feedback and kept images older than a number of days."""
        who, token = admin(request)
        deleted = await run(studio.admin_purge, who, token, body.older_than_days)
        return {"deleted": deleted.__dict__, "message": deleted.sentence()}

    @api.get("/v1/admin/export", tags=["admin"], responses={**_errors(401, 403, 422, 503), 200: {
        "content": {"application/vnd.apache.parquet": {"schema": {"type": "string", "format": "binary"}}}}},
        response_class=FileResponse)
    async def admin_export(request: Request):
        """The whole log as a Parquet file."""
        who, token = admin(request)
        path = await run(studio.admin_export, who, token)
        return FileResponse(path, media_type="application/vnd.apache.parquet", filename="imagerec-log.parquet",
                            background=BackgroundTask(studio.exports.downloaded, path))

    # -- probes ---------------------------------------------------------------------------------------------------
    @api.get("/healthz", tags=["probes"])
    async def healthz() -> dict[str, Any]:
        """The process answers."""
        return {"ok": True}

    @api.get("/readyz", tags=["probes"], responses={503: {"description": "Not ready; problems says why."}})
    async def readyz() -> JSONResponse:
        """Models loaded, log writable, queue not full; 503 with the problems otherwise."""
        body = readiness(studio, capacity, warm)
        return JSONResponse(body, status_code=200 if body["ready"] else 503)

    @api.get("/metrics", tags=["probes"], response_class=Response)
    async def prometheus() -> Response:
        """Prometheus metrics (text exposition format)."""
        return Response(metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")

    return api


def readiness(studio: Studio, capacity: Capacity, warm: list[str]) -> dict[str, Any]:
    """What stands between this process and answering: the page's models, the log, the queue."""
    problems = []
    status = studio.model_status()
    roles = {studio.recognizer.tasks[name].role for name in warm}
    for role in sorted(roles):
        state = status[role]
        if state["error"]:
            problems.append(f"The {role} failed to load: {state['error']}")
        elif not state["loaded"]:
            problems.append(f"The {role} is still loading.")
    health = studio.log.health()
    if not health["ok"]:
        problems.append(health["problem"])
    if capacity.full:
        problems.append("The queue is full.")
    return {"ready": not problems, "problems": problems, "log": health,
            "queue": {"in_flight": capacity.in_flight, "limit": capacity.limit}}


async def _read_form(request: Request) -> tuple[bytes, str | None, list[str] | None, dict | None]:
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise ApiError(422, "Send the photo as multipart/form-data with the file in the field 'image'.")
    try:
        form = await request.form(max_files=1, max_fields=8)
    except Exception as exc:  # a malformed body (starlette's MultiPartException, a bad boundary)
        raise ApiError(400, f"The form could not be read: {exc}") from None
    image = form.get("image")
    if image is None or isinstance(image, str):
        raise ApiError(422, "Send the photo as a file in the form field 'image'.")
    data = await image.read()
    prompt = form.get("prompt")
    names = form.get("tasks")
    options = form.get("options")
    if not all(v is None or isinstance(v, str) for v in (prompt, names, options)):
        raise ApiError(422, "prompt, tasks and options are text fields, not files.")
    chosen = [n.strip() for n in names.split(",") if n.strip()] if names else None
    parsed = None
    if options:
        try:
            parsed = json.loads(options)
        except ValueError:
            raise ApiError(422, "options is not valid JSON.") from None
        if not isinstance(parsed, dict) or not all(isinstance(v, dict) for v in parsed.values()):
            raise ApiError(422, 'options must map task names to their options, e.g. {"detect": {"threshold": 0.3}}.')
    return data, prompt or None, chosen, parsed


def install(app: FastAPI, studio: Studio, capacity: Capacity, metrics: Metrics, warm: list[str]) -> None:
    """Add the routes and the JSON error handlers to app."""
    app.include_router(router(studio, capacity, metrics, warm))

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return problem(exc.status, exc.sentence, exc.retry_after, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return problem(422, f"{where or 'The request'}: {first.get('msg', 'is not valid')}."
                       if where else f"The request is not valid: {first.get('msg', '')}.")
