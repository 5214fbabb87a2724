"""The request guard: who is calling and how big the body may be, decided before any body byte is read.

FastAPI reads and parses a request's body before it runs the route's dependencies, so an
``authenticate`` dependency alone lets an anonymous caller make the server read (and hold, or spool
to disk) any amount of data before the 401. ``BodyGuard`` is a pure ASGI middleware in front of the
application that, for every request that may carry a body (POST, PUT, PATCH):

* authenticates the bearer token (or the HTTP Basic ``token`` user on the seed tools' writes:
  ``PUT /upload``, ``POST /packager/upload``, ``POST /publish``, ``PUT /notify``) of the routes
  that need one, answering 401 without reading the body; the principal found is passed on in the
  scope, so ``auth.authenticate`` does not look it up twice; the web form's token, its first field,
  is checked once that part is read (at most ``FORM_LIMIT`` bytes), before the file;
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
from typing import Any, Awaitable, Callable, Dict, List, MutableMapping, Optional, Tuple
from urllib.parse import quote

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.responses import RedirectResponse

from ota_build.server.auth import PRINCIPAL_KEY, Principal, principal_for, token_from_header
from ota_build.server.responses import error_response

log = logging.getLogger(__name__)

JSON_LIMIT = 2 * 1024 * 1024  # records are a few hundred bytes; a deploy to 10000 devices of 128-character ids fits
FORM_LIMIT = 64 * 1024  # /oauth/token: username, password, grant_type
MULTIPART_OVERHEAD = 1024 * 1024  # the content.json field and the part headers of a package upload
DRAIN_LIMIT = 1024 * 1024  # a refused body up to this size is read (and dropped) before the answer
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})

_IMAGE_UPLOAD = re.compile(r"/v1/ota/partners/[^/]+/binaries(?:/uploads/[^/]+)?")
_PUBLIC = {"/oauth/token": FORM_LIMIT}  # no token: the route checks its own credentials
_PUBLIC_MULTIPART = {"/web/upload"}
#: the seed tools' multipart writes and forms, which may carry the token as HTTP Basic (user ``token``)
_SEED_MULTIPART = {"/upload", "/packager/upload", "/packager/upload/", "/publish", "/publish/"}
_SEED_FORMS = {"/notify", "/notify/"}  # the token is the form's first field: checked once that part is read

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
    if path in _SEED_MULTIPART:  # seed 001's pack.py, seed 000's curl, seed 002's publish.py: token:KEY@host works
        return max_upload + MULTIPART_OVERHEAD, "bearer-or-basic"
    if path in _SEED_FORMS:
        return JSON_LIMIT, "bearer-or-basic"
    if _IMAGE_UPLOAD.fullmatch(path) and not path.endswith("/uploads"):
        return max_upload, "bearer"
    return JSON_LIMIT, "bearer" if path.startswith("/v1/") else None


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
        raw_length = headers.get("content-length")
        declared = int(raw_length) if raw_length is not None and re.fullmatch(r"[0-9]{1,19}", raw_length) else None
        body = _Body(receive)
        receive = body.receive
        # a refused body small enough is read and dropped first, so the client sees the answer (no reset)
        drain = body if declared is not None and declared <= DRAIN_LIMIT else None
        if scheme is not None:
            token, problem = token_from_header(headers.get("authorization", ""), allow_basic=scheme == "bearer-or-basic")
            principal: Optional[Principal] = None
            if token is not None:
                principal = await run_in_threadpool(principal_for, self.db, token)
                problem = "invalid or expired token"
            if principal is None:
                await self._answer(send, 401, problem, path, {"WWW-Authenticate": "Bearer"}, drain)
                return
            scope = {**scope, PRINCIPAL_KEY: principal}
        if raw_length is not None and declared is None:
            await self._answer(send, 400, "header 'Content-Length': not a number", path)
            return
        if declared is not None and declared > limit:
            await self._answer(send, 413, f"request body of {declared} bytes exceeds the limit of {limit} "
                                          f"bytes for this endpoint", path)
            return
        if path in _PUBLIC_MULTIPART:
            replay = await self._token_field_first(headers, receive)
            if replay is None:
                await self._answer_web(send, "a valid partner token is required", drain)
                return
            receive = replay
        await self.app(scope, self._bounded(receive, limit), send)

    async def _token_field_first(self, headers: Dict[str, str], receive: Receive) -> Optional[Receive]:
        """For the web form: read the body only up to the end of its first part, which must be the ``token``
        field (browsers send fields in the form's order, and the token is the form's first field), and check
        that token. A ``receive`` that replays what was read, then goes on; None when the token is missing
        or not a partner's (at most FORM_LIMIT bytes were read)."""
        match = re.search(r'boundary="?([^";]+)"?', headers.get("content-type", ""))
        if not headers.get("content-type", "").lower().startswith("multipart/form-data") or not match:
            return None
        delimiter = b"--" + match.group(1).encode("latin-1")
        read: List[Message] = []
        buf = b""
        while len(buf) <= FORM_LIMIT:
            message = await receive()
            read.append(message)
            if message["type"] != "http.request":
                break
            buf += message.get("body", b"")
            if buf.find(b"\r\n" + delimiter, len(delimiter)) != -1 or not message.get("more_body", False):
                break
        first = re.match(rb"--[^\r\n]*\r\n((?:[^\r\n]+\r\n)*)\r\n(.*?)\r\n" + re.escape(delimiter), buf, re.S)
        if not buf.startswith(delimiter) or first is None \
                or not re.search(rb'content-disposition:\s*form-data;\s*name="token"', first.group(1), re.I):
            return None
        token = first.group(2).decode("utf-8", "replace").strip()
        principal = await run_in_threadpool(principal_for, self.db, token) if token else None
        if principal is None or principal.kind != "partner":
            return None
        pending = list(read)

        async def replay() -> Message:
            return pending.pop(0) if pending else await receive()

        return replay

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
    async def _drain(body: Optional["_Body"]) -> None:
        while body is not None and not body.done:
            await body.receive()

    @classmethod
    async def _answer(cls, send: Send, status: int, message: str, path: str,
                      headers: Optional[Dict[str, str]] = None, drain: Optional["_Body"] = None) -> None:
        """Answer before the body is read (a small one is drained first); the connection is then closed."""
        await cls._drain(drain)
        resp = error_response(status, message, path)
        resp.headers["Connection"] = "close"
        for key, value in (headers or {}).items():
            resp.headers[key] = value
        log.info("%s refused before its body was read: %d %s", path, status, message)
        await resp({"type": "http"}, _no_receive, send)

    @classmethod
    async def _answer_web(cls, send: Send, message: str, drain: Optional["_Body"]) -> None:
        """The web form's refusal: back to the page with the error, as the route answers it."""
        await cls._drain(drain)
        resp = RedirectResponse("/?error=" + quote(message, safe=""), status_code=303)
        resp.headers["Connection"] = "close"
        log.info("/web/upload refused before its file was read: %s", message)
        await resp({"type": "http"}, _no_receive, send)


class _Body:
    """A request's ``receive``, remembering whether the whole body has arrived (or the client left)."""

    def __init__(self, receive: Receive):
        self._receive = receive
        self.done = False

    async def receive(self) -> Message:
        """The next message (``receive`` is not called again once the body is complete)."""
        message = await self._receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            self.done = True
        return message


async def _no_receive() -> Message:  # pragma: no cover - a plain JSONResponse never receives
    return {"type": "http.disconnect"}
