"""The FastAPI application: settings, error format and the routers.

``create_app(settings)`` builds an app; ``app_from_env()`` is the factory
uvicorn workers call (settings from ``OTA_DATA_DIR``, ``OTA_DATABASE_URL``,
``OTA_MAX_UPLOAD_BYTES``). Debug mode does not exist.
"""

from __future__ import annotations

import logging
import mmap
import os
from dataclasses import dataclass
from typing import Any, Optional

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Send

from .. import __version__
from .db import open_database
from .storage import Storage

log = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD = 4 * 1024 ** 3
REASONS = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
           409: "Conflict", 413: "Payload Too Large", 416: "Range Not Satisfiable", 422: "Unprocessable Entity",
           429: "Too Many Requests"}


class RangeFileResponse(FileResponse):
    """FileResponse (Range/206, If-Range, HEAD: Starlette's) whose body is sent from a memory map.

    Starlette reads each chunk into a new bytes object (in a worker thread)
    before the server copies it into the socket: two copies per byte. Here
    the file is mapped and slices of the map are handed to the server, which
    copies them into the socket once; the next slice is announced to the
    kernel (``MADV_WILLNEED``) so a cold file is read ahead while the current
    one is sent, and what was sent is dropped from the process again
    (``MADV_DONTNEED``), so resident memory does not grow with the file.
    Served files are never modified in place (blobs are content-addressed,
    packages replaced by rename), so the map stays valid.
    Measured: benchmarks/README.md (downloads).
    """

    chunk_size = 1024 * 1024

    async def _send_mapped(self, send: Send, start: int, end: int) -> None:
        if end <= start:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        with open(self.path, "rb") as fh:
            mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        # no close(): the server may still hold slices; the map goes with its last reference
        view = memoryview(mapped)
        pos = start
        while pos < end:
            stop = min(pos + self.chunk_size, end)
            if stop < end:
                ahead = stop - stop % mmap.PAGESIZE
                mapped.madvise(mmap.MADV_WILLNEED, ahead, min(self.chunk_size, end - ahead))
            await send({"type": "http.response.body", "body": view[pos:stop], "more_body": stop < end})
            # Unmap what was sent two chunks ago, so resident memory stays a few chunks for any file
            # size. Only a hint: a page still queued in the server's buffer is read back from the
            # page cache (file-backed, read-only map).
            old = pos - 2 * self.chunk_size
            if old >= 0:
                old -= old % mmap.PAGESIZE
                mapped.madvise(mmap.MADV_DONTNEED, old, self.chunk_size)
            pos = stop

    async def _handle_simple(self, send: Send, send_header_only: bool, send_pathsend: bool) -> None:
        size = int(self.headers.get("content-length", -1))
        if send_header_only or send_pathsend or size != os.path.getsize(self.path):  # replaced since the stat
            await super()._handle_simple(send, send_header_only, send_pathsend)
            return
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        await self._send_mapped(send, 0, size)

    async def _handle_single_range(self, send: Send, start: int, end: int, file_size: int,
                                   send_header_only: bool) -> None:
        if send_header_only:
            await super()._handle_single_range(send, start, end, file_size, send_header_only)
            return
        headers = MutableHeaders(raw=list(self.raw_headers))
        headers["content-range"] = f"bytes {start}-{end - 1}/{file_size}"
        headers["content-length"] = str(end - start)
        await send({"type": "http.response.start", "status": 206, "headers": headers.raw})
        await self._send_mapped(send, start, end)


@dataclass(frozen=True)
class Settings:
    """Server settings."""

    data_dir: str
    database_url: Optional[str] = None
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD
    run_migrations: bool = True
    latest_cache_ttl: float = 1.0


def settings_from_env() -> Settings:
    """Settings from the environment (set by ``ota-build serve`` for its workers)."""
    return Settings(data_dir=os.environ.get("OTA_DATA_DIR", "ota-data"),
                    database_url=os.environ.get("OTA_DATABASE_URL") or None,
                    max_upload_bytes=int(os.environ.get("OTA_MAX_UPLOAD_BYTES", DEFAULT_MAX_UPLOAD)),
                    run_migrations=os.environ.get("OTA_SKIP_MIGRATIONS") != "1",
                    latest_cache_ttl=float(os.environ.get("OTA_LATEST_CACHE_TTL", "1.0")))


def _error(status: int, message: str, path: str) -> JSONResponse:
    # Spring Boot's error shape, which the original tools parse (minus the stack trace).
    return JSONResponse({"status": status, "error": REASONS.get(status, "Error"), "message": message, "path": path},
                        status_code=status)


def create_app(settings: Settings) -> FastAPI:
    """Build the application over ``settings`` (opens the DB, applies migrations)."""
    from . import afero, device, packages, web

    app = FastAPI(title="meta-ota OTA service", version=__version__, debug=False,
                  description="Afero-compatible partner OTA API, device API and seed-001 package API. "
                              "See docs/server.md.")
    app.state.settings = settings
    app.state.db = open_database(settings.data_dir, settings.database_url, run_migrations=settings.run_migrations)
    app.state.storage = Storage(settings.data_dir, settings.max_upload_bytes)
    app.state.latest = packages.LatestVersions(app.state.db, settings.latest_cache_ttl)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        resp = _error(exc.status_code, str(exc.detail), request.url.path)
        for key, value in (getattr(exc, "headers", None) or {}).items():
            resp.headers[key] = value
        return resp

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first: Any = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "header", "form"))
        return _error(400, f"field '{where}': {first.get('msg', 'invalid')}", request.url.path)

    app.include_router(afero.router)
    app.include_router(device.router)
    app.include_router(packages.router)
    app.include_router(web.router)
    return app


def asgi_app(settings: Settings) -> Any:
    """The application as served: ``create_app`` plus the ``/latestVersion`` fast path."""
    from .packages import LatestVersionFastPath

    app = create_app(settings)
    return LatestVersionFastPath(app, app.state.latest)


def app_from_env() -> Any:
    """uvicorn factory: ``uvicorn --factory ota_build.server.app:app_from_env``."""
    return asgi_app(settings_from_env())


__all__ = ["create_app", "app_from_env", "Settings", "RangeFileResponse", "HTTPException"]
