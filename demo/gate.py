"""The server's edge: request bodies capped before they are read, a per-client upload budget, upload bookkeeping."""

from __future__ import annotations

import json
import math
import re
from typing import Any, Awaitable, Callable, Mapping

from starlette.datastructures import Headers

from pipelines.uploads import UploadBudget, UploadRefs

Identify = Callable[[Mapping[str, str], "str | None"], "str | None"]
FORM_OVERHEAD = 64 * 1024  # a multipart form's boundaries, headers and text fields around the photo
UPLOAD_ANSWER_MAX = 64 * 1024  # an upload's answer is a short JSON list of paths; anything longer is passed on


class Gate:
    """ASGI middleware in front of Gradio: caps, budgets and hooks, each passed in."""

    def __init__(self, app: Any, *, max_body: int, budget: UploadBudget, identify: Identify,
                 uploads: UploadRefs | None = None, on_download: Callable[[str], Any] | None = None,
                 prefix: str = "/gradio_api", rest_uploads: tuple[str, ...] = (), max_upload: int = 0,
                 on_refuse: Callable[[str], Any] | None = None):
        self.app = app
        self.max_body = max_body
        self.budget = budget
        self.identify = identify
        self.uploads = uploads
        self.on_download = on_download
        self.upload_route = prefix + "/upload"
        self.file_route = prefix + "/file="
        self.rest_uploads = set(rest_uploads)  # routes taking a photo in their body (REST /v1/predict)
        self.max_upload = max_upload
        self.on_refuse = on_refuse  # told each refusal's reason (metrics)

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]], send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        root = scope.get("root_path") or ""
        if root and path.startswith(root):
            path = path[len(root):]
        if path.rstrip("/") == self.upload_route:
            return await self._upload(scope, receive, send)
        if path.rstrip("/") in self.rest_uploads and scope["method"] == "POST":
            return await self._rest_upload(scope, receive, send)
        if path.startswith(self.file_route) and scope["method"] == "GET" and self.on_download:
            return await self._download(path[len(self.file_route):], scope, receive, send)
        return await self._capped(scope, receive, send)

    async def _capped(self, scope: dict, receive: Callable, send: Callable) -> None:
        """Any request but an upload: a body over max_body is refused before it is read (Content-Length) or
        as soon as the count passes it (chunked)."""
        limit = self.max_body
        if limit <= 0:
            return await self.app(scope, receive, send)
        length = _content_length(scope)
        if length is not None and length > limit:
            return await _refuse(send, 413, f"The request body is {_kb(length)} KB, over the limit of {_kb(limit)} "
                                            "KB; send images through the upload route, not inside JSON.")
        seen = 0

        def over(message: dict) -> tuple | None:
            nonlocal seen
            seen += len(message.get("body", b""))
            if seen > limit:
                return (413, f"The request body is over the limit of {_kb(limit)} KB; "
                             "send images through the upload route, not inside JSON.", None)
            return None

        await _guarded(self.app, scope, receive, send, over)

    async def _rest_upload(self, scope: dict, receive: Callable, send: Callable) -> None:
        """A photo posted to a REST route: capped at the upload limit (plus the form's own bytes) and paid from the
        client's upload budget like a page upload, each before the body is read where Content-Length says."""
        client = self.identify(Headers(scope=scope), (scope.get("client") or (None,))[0]) or "unknown"
        limit = self.max_upload + FORM_OVERHEAD if self.max_upload > 0 else 0
        length = _content_length(scope)
        if limit and length is not None and length > limit:
            return await self._refuse(send, 413, f"The upload is {length / 1e6:,.1f} MB; the limit is "
                                                 f"{self.max_upload / 1e6:g} MB.", reason="too_large")
        if length and 0 < self.budget.max_bytes < length:
            return await self._refuse(send, 413, f"The upload is {length / 1e6:,.1f} MB, more than one client may "
                                                 f"upload in a minute ({self.budget.max_bytes / 1e6:g} MB).",
                                      reason="too_large")
        if length:
            wait = self.budget.take(client, length)
            if wait:
                return await self._refuse(send, 429, self._over_budget(wait), retry_after=wait, reason="over_budget")
        seen = 0

        def over(message: dict) -> tuple | None:
            nonlocal seen
            seen += len(message.get("body", b""))
            if limit and seen > limit:
                self._told("too_large")
                return (413, f"The upload is over the limit of {self.max_upload / 1e6:g} MB.", None)
            if seen > (length or 0):  # chunked, or more than announced: pay as it comes
                wait = self.budget.take(client, len(message.get("body", b"")))
                if wait:
                    self._told("over_budget")
                    return (429, self._over_budget(wait), wait)
            return None

        await _guarded(self.app, scope, receive, send, over)

    def _told(self, reason: str) -> None:
        if self.on_refuse:
            self.on_refuse(reason)

    async def _refuse(self, send: Callable, status: int, sentence: str, retry_after: float | None = None,
                      reason: str = "too_large") -> None:
        self._told(reason)
        await _refuse(send, status, sentence, retry_after=retry_after)

    async def _upload(self, scope: dict, receive: Callable, send: Callable) -> None:
        """An upload: spend the client's budget (its Content-Length up front, then any bytes beyond it), and
        register the written paths with the upload references before the client learns them."""
        client = self.identify(Headers(scope=scope), (scope.get("client") or (None,))[0]) or "unknown"
        length = _content_length(scope)
        if length and 0 < self.budget.max_bytes < length:
            return await self._refuse(send, 413, f"The upload is {length / 1e6:,.1f} MB, more than one client may "
                                                 f"upload in a minute ({self.budget.max_bytes / 1e6:g} MB).")
        if length:
            wait = self.budget.take(client, length)
            if wait:
                return await self._refuse(send, 429, self._over_budget(wait), retry_after=wait, reason="over_budget")
        reserved, seen = length or 0, 0
        finishing = False
        closing = _closing_delimiter(scope)
        tail = b""

        def over(message: dict) -> tuple | None:
            nonlocal reserved, seen, finishing, tail
            body = message.get("body", b"")
            seen += len(body)
            if seen > reserved:
                wait = self.budget.take(client, seen - reserved)
                reserved = seen
                if wait:
                    self._told("over_budget")
                    return (429, self._over_budget(wait), wait)
            tail = (tail + body)[-len(closing) - 4:] if closing else b""
            # Gradio's parser stops at the closing boundary, so the last (empty) message may never be read
            complete = (not message.get("more_body", False) or (length is not None and seen >= length)
                        or (closing and closing in tail))
            if complete and self.uploads is not None and not finishing:
                # the whole body is in: from now Gradio may rename these bytes into a path already cached
                finishing = True
                self.uploads.upload_started()
            return None

        held: dict[str, Any] = {"start": None, "body": b"", "registered": False}

        async def record(message: dict) -> None:
            if not finishing:
                return await send(message)
            if message["type"] == "http.response.start":
                held["start"] = message
                return
            held["body"] += message.get("body", b"")
            more = message.get("more_body", False)
            if more and len(held["body"]) < UPLOAD_ANSWER_MAX:
                return
            if not held["registered"]:  # before the client can name these paths in a request
                held["registered"] = True
                self.uploads.upload_finished(_written(held["start"], held["body"]) if not more else [])
            if held["start"] is not None:
                await send(held["start"])
                held["start"] = None
            await send({"type": "http.response.body", "body": held["body"], "more_body": more})
            held["body"] = b""

        try:
            await _guarded(self.app, scope, receive, record, over)
        finally:
            if finishing and not held["registered"]:
                self.uploads.upload_finished([])

    def _over_budget(self, wait: float) -> str:
        return (f"Too many uploads from your address: the limit is {self.budget.max_bytes / 1e6:g} MB a minute; "
                f"try again in {math.ceil(wait)} s.")

    async def _download(self, path: str, scope: dict, receive: Callable, send: Callable) -> None:
        """A file served in full (200, last byte sent) is reported, so an export can go once fetched."""
        status, done = 0, False

        async def watch(message: dict) -> None:
            nonlocal status, done
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                done = True
            await send(message)

        await self._capped(scope, receive, watch)
        if status == 200 and done:
            self.on_download(path)


async def _guarded(app: Any, scope: dict, receive: Callable, send: Callable,
                   over: Callable[[dict], tuple | None]) -> None:
    """Run the app with a receive that checks each body chunk; past a limit the app is told the client left and
    its answer is replaced by the refusal."""
    refusal: tuple | None = None
    started = False

    async def counted() -> dict:
        nonlocal refusal
        if refusal:
            return {"type": "http.disconnect"}
        message = await receive()
        if message["type"] == "http.request":
            refusal = over(message)
            if refusal:
                return {"type": "http.disconnect"}
        return message

    async def guarded(message: dict) -> None:
        nonlocal started
        if refusal:
            return  # the app's answer to a body it never got whole is replaced by ours
        started = started or message["type"] == "http.response.start"
        await send(message)

    try:
        await app(scope, counted, guarded)
    except Exception:
        if not refusal:
            raise
    if refusal and not started:
        status, sentence, wait = refusal
        await _refuse(send, status, sentence, retry_after=wait)


def _written(start: dict | None, body: bytes) -> list[str]:
    """The paths an upload's answer lists (a JSON list of strings on success)."""
    if start is None or start["status"] != 200:
        return []
    try:
        listed = json.loads(body)
    except ValueError:
        return []
    return [p for p in listed if isinstance(p, str)] if isinstance(listed, list) else []


def _closing_delimiter(scope: dict) -> bytes:
    """The delimiter that ends a multipart body (b"" when the request names no boundary)."""
    content_type = Headers(scope=scope).get("content-type", "")
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    # preceded by CRLF it can only be the real end: inside a part, CRLF--boundary would end that part too
    return b"\r\n--" + match.group(1).encode("latin-1") + b"--" if match else b""


def _content_length(scope: dict) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return max(0, int(value))
            except ValueError:
                return None
    return None


def _kb(n: int) -> str:
    return f"{n / 1000:,.0f}"


async def _refuse(send: Callable, status: int, sentence: str, retry_after: float | None = None) -> None:
    """Answer with a status and one sentence as JSON, closing the connection (the body may be unread)."""
    body = json.dumps({"error": sentence}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")]
    if retry_after:
        headers.append((b"retry-after", str(math.ceil(retry_after)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
