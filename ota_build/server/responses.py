"""HTTP responses shared by the routers: files sent from a memory map, and the status code of
each kind of ``ServiceError``."""

from __future__ import annotations

import mmap
import os

from fastapi.responses import FileResponse, JSONResponse
from starlette.datastructures import MutableHeaders
from starlette.types import Send

from ota_build.server.services import Kind

#: the HTTP status of each kind of refusal of the service layer
STATUS_OF_KIND = {Kind.INVALID: 400, Kind.FORBIDDEN: 403, Kind.NOT_FOUND: 404, Kind.CONFLICT: 409,
                  Kind.TOO_LARGE: 413, Kind.TOO_MANY: 429}

REASONS = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
           409: "Conflict", 413: "Payload Too Large", 416: "Range Not Satisfiable", 422: "Unprocessable Entity",
           429: "Too Many Requests", 500: "Internal Server Error", 507: "Insufficient Storage"}


def one_line(text: str, limit: int = 500) -> str:
    """``text`` as one line of at most ``limit`` characters (for the ``trace`` field)."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[:limit - 1] + "…"


#: where seed 000's file packager is mounted (its answers carry ``statuscode``)
PACKAGER_PREFIX = "/packager"


def error_body(status: int, message: str, path: str) -> dict:
    """Spring Boot's error shape, which the original tools parse: ``status``, ``error``, ``message``, ``path``
    and ``trace`` (the original uploader and deploy print only ``trace``): here one line, never a stack trace."""
    error = REASONS.get(status, "Error")
    body = {"status": status, "error": error, "message": message, "path": path,
            "trace": one_line(f"{status} {error}: {message}")}
    if path == PACKAGER_PREFIX or path.startswith(PACKAGER_PREFIX + "/"):
        body["statuscode"] = status  # seed 000's clients read {"statuscode": N}, also on a 401/413 from the guard
    return body


def error_response(status: int, message: str, path: str) -> JSONResponse:
    """``error_body`` as a JSON response with that status."""
    return JSONResponse(error_body(status, message, path), status_code=status)


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
