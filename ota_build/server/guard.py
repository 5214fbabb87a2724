"""The request guard: who is calling and how big the body may be, decided before any body byte is read.

FastAPI reads and parses a request's body before it runs the route's dependencies, so an
``authenticate`` dependency alone lets an anonymous caller make the server read (and hold, or spool
to disk) any amount of data before the 401. ``BodyGuard`` is a pure ASGI middleware in front of the
application that, for every request that may carry a body (POST, PUT, PATCH):

* authenticates the bearer token (or the HTTP Basic ``token`` user on ``PUT /upload``) of the
  routes that need one, answering 401 without reading the body; the principal found is passed on
  in the scope, so ``auth.authenticate`` does not look it up twice;
* refuses a declared ``Content-Length`` above the route's limit with 413 at once;
* cuts off an undeclared (chunked) body as soon as it passes the limit (413).

Limits: the image uploads (``POST .../binaries``, ``PUT .../binaries/uploads/{id}``) take
``max_upload_bytes``; the multipart package uploads (``PUT /upload``, ``POST /web/upload``)
``max_upload_bytes`` plus ``MULTIPART_OVERHEAD`` for the form fields; ``POST /oauth/token``
``FORM_LIMIT``; every other body is JSON (records, deploys, reports) and gets ``JSON_LIMIT``.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Awaitable, Callable, Dict, MutableMapping, Optional, Tuple

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from ota_build.server.auth import BASIC_TOKEN_USER, PRINCIPAL_KEY, Principal, parse_basic, principal_for
from ota_build.server.responses import error_response

log = logging.getLogger(__name__)

JSON_LIMIT = 2 * 1024 * 1024  # records are a few hundred bytes; a deploy to 10000 devices of 128-character ids fits
FORM_LIMIT = 64 * 1024  # /oauth/token: username, password, grant_type
MULTIPART_OVERHEAD = 1024 * 1024  # the content.json field and the part headers of a package upload
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})

_IMAGE_UPLOAD = re.compile(r"/v1/ota/partners/[^/]+/binaries(?:/uploads/[^/]+)?")
_PUBLIC = {"/oauth/token": FORM_LIMIT}  # no token: the route checks its own credentials
_PUBLIC_MULTIPART = {"/web/upload"}  # the token is a form field: only bounded and spooled into the data directory

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when a body passes its limit; FastAPI passes HTTPExceptions through its
    body parsing, so the app answers it as a 413 in the API's error shape."""

    def __init__(self, limit: int):
        super().__init__(413, f"request body exceeds the limit of {limit} bytes for this endpoint")


def route_policy(method: str, path: str, max_upload: int) -> Tuple[int, Optional[str]]:
    """(byte limit, authentication: ``"bearer"``, ``"bearer-or-basic"`` or None) of a body-carrying request."""
    if path in _PUBLIC:
        return _PUBLIC[path], None
    if path in _PUBLIC_MULTIPART:
        return max_upload + MULTIPART_OVERHEAD, None
    if path == "/upload":
        return max_upload + MULTIPART_OVERHEAD, "bearer-or-basic"
    if _IMAGE_UPLOAD.fullmatch(path) and not path.endswith("/uploads"):
        return max_upload, "bearer"
    return JSON_LIMIT, "bearer" if path.startswith("/v1/") else None


def _token_of(header: str, scheme: str) -> Tuple[Optional[str], str]:
    """(token, problem) of an Authorization header under ``scheme``."""
    if header.lower().startswith("bearer ") and header[7:].strip():
        return header[7:].strip(), ""
    if scheme == "bearer-or-basic":
        basic = parse_basic(header)
        if basic is not None:
            user, token = basic
            if user == BASIC_TOKEN_USER and token.strip():
                return token.strip(), ""
            return None, f"HTTP Basic carries a token as user '{BASIC_TOKEN_USER}'"
    return None, "a bearer token is required (Authorization: Bearer <token>)"


class BodyGuard:
    """ASGI middleware: authentication and body limits before the body is read (module docstring)."""

    def __init__(self, app: Any, db: Any, max_upload_bytes: int):
        self.app = app
        self.db = db
        self.max_upload = max_upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        limit, scheme = route_policy(scope["method"], path, self.max_upload)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if scheme is not None:
            token, problem = _token_of(headers.get("authorization", ""), scheme)
            principal: Optional[Principal] = None
            if token is not None:
                principal = await run_in_threadpool(principal_for, self.db, token)
                problem = "invalid or expired token"
            if principal is None:
                await self._answer(send, 401, problem, path, {"WWW-Authenticate": "Bearer"})
                return
            scope = {**scope, PRINCIPAL_KEY: principal}
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                await self._answer(send, 400, "header 'Content-Length': not a number", path)
                return
            if int(declared) > limit:
                await self._answer(send, 413, f"request body of {int(declared)} bytes exceeds the limit of {limit} "
                                              f"bytes for this endpoint", path)
                return
        await self.app(scope, self._bounded(receive, limit), send)

    @staticmethod
    def _bounded(receive: Receive, limit: int) -> Receive:
        seen = 0

        async def bounded() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        return bounded

    @staticmethod
    async def _answer(send: Send, status: int, message: str, path: str,
                      headers: Optional[Dict[str, str]] = None) -> None:
        """Answer without reading the body; the connection is closed (its unread body is not drained)."""
        resp = error_response(status, message, path)
        resp.headers["Connection"] = "close"
        for key, value in (headers or {}).items():
            resp.headers[key] = value
        log.info("%s %s refused before its body was read: %d %s", "request", path, status, message)
        await resp({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:  # pragma: no cover - a plain JSONResponse never receives
    return {"type": "http.disconnect"}
