"""HTTP of seed 000's file packager (``FileServer.py`` of OTA-Packager), mounted under ``/packager``.

``POST /packager/upload`` (multipart ``file``: exactly ``model.pkl`` or ``model.bat``),
``GET /packager/pack`` (signs and zips the two into ``model.zip``), ``GET /packager/download``;
each also with the trailing slash the seed's README writes. Every answer is the
original's ``{"statuscode": N}`` (plus a ``message``) with the original's HTTP
status for each N; the download's success is the zip itself. ``GET /packager/key``
gives the public key that verifies the packages.

The token is a partner API token, as ``Authorization: Bearer`` or HTTP Basic
with user ``token`` (``HOST=token:KEY@host:port/packager`` in the seed's curl
commands). A device token may download its partner's package. The rules live in
``packager_store``; this module only maps them to HTTP.
"""

from __future__ import annotations

import logging
import os
from typing import Dict, Optional, Union

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.datastructures import UploadFile as StarletteUploadFile
from starlette.formparsers import MultiPartException

from ota_build.core import packager as fmt
from ota_build.core.errors import OtaError
from ota_build.server.auth import Principal, authenticate_or_basic
from ota_build.server.packager_store import PackagerError, PackagerStore, stream
from ota_build.server.responses import PACKAGER_PREFIX

log = logging.getLogger(__name__)

#: where the packager is mounted (``HOST`` of the seed's commands ends with it)
PREFIX = PACKAGER_PREFIX
router = APIRouter(prefix=PREFIX, tags=["file packager (seed 000)"])

#: the original's HTTP status for each statuscode, per endpoint
UPLOAD_HTTP: Dict[int, int] = {200: 200, 211: 400, 212: 400, 213: 200, 413: 413, 500: 500}
PACK_HTTP: Dict[int, int] = {200: 200, 211: 200, 212: 200, 400: 400, 500: 500}
DOWNLOAD_HTTP: Dict[int, int] = {211: 400, 500: 500}


def answer(statuscode: int, table: Dict[int, int], message: str, **fields: object) -> JSONResponse:
    """``{"statuscode": N, "message": ...}`` with the HTTP status the original used for N."""
    return JSONResponse({"statuscode": statuscode, "message": message, **fields},
                        status_code=table.get(statuscode, statuscode))


def _store(request: Request) -> PackagerStore:
    return request.app.state.packager  # type: ignore[no-any-return]


def _who(request: Request, devices: bool = False) -> Union[Principal, JSONResponse]:
    """The caller's principal, or the 401/403 answer in the packager's shape."""
    try:
        principal = authenticate_or_basic(request)
    except HTTPException as exc:
        resp = JSONResponse({"statuscode": exc.status_code, "message": str(exc.detail)}, status_code=exc.status_code)
        for key, value in (exc.headers or {}).items():
            resp.headers[key] = value
        return resp
    if principal.kind != "partner" and not devices:
        return JSONResponse({"statuscode": 403, "message": "a device token cannot do this; use a partner token"},
                            status_code=403)
    return principal


_UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"],
    "properties": {"file": {"type": "string", "format": "binary", "description": "model.pkl or model.bat"}}}}}}}


@router.post("/upload", openapi_extra=_UPLOAD_BODY)
@router.post("/upload/", openapi_extra=_UPLOAD_BODY, include_in_schema=False)
async def upload(request: Request) -> JSONResponse:
    """Store ``model.pkl`` or ``model.bat`` (multipart ``file``), replacing the previous one atomically.
    200; 211 (HTTP 400) without a ``file`` part or with a malformed body; 212 (HTTP 400) when it cannot be
    stored; 213 (HTTP 200) for any other file name; 413 past the size limit.

    The form is parsed here rather than by a ``File`` parameter, so a malformed request is answered
    with 211 in the packager's shape too."""
    who = await run_in_threadpool(_who, request)
    if isinstance(who, JSONResponse):
        return who
    limit = _store(request).max_upload_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit + 64 * 1024:  # the file plus generous multipart framing
        return answer(413, UPLOAD_HTTP, f"upload exceeds the limit of {limit} bytes")
    try:
        form = await request.form(max_files=4, max_fields=16)
    except (MultiPartException, ValueError) as exc:
        return answer(211, UPLOAD_HTTP, f"malformed multipart body ({exc})")
    try:
        file = form.get("file")
        if not isinstance(file, StarletteUploadFile):
            return answer(211, UPLOAD_HTTP, "no multipart file part 'file' (curl -X POST -F file=@model.pkl ...)")
        try:
            sha256, size = await run_in_threadpool(_store(request).put, who.partner_pk, file.filename, file.file)
        except PackagerError as exc:
            return answer(exc.statuscode, UPLOAD_HTTP, exc.message)
        except OSError as exc:
            log.error("packager upload: cannot store %s: %s", file.filename, exc)
            return answer(212, UPLOAD_HTTP, f"cannot store the file on the server ({exc.strerror})")
        return answer(200, UPLOAD_HTTP, f"{file.filename} stored", name=file.filename, size=size, sha256=sha256)
    finally:
        await form.close()


@router.get("/pack")
@router.get("/pack/", include_in_schema=False)
def pack(request: Request, version: Optional[str] = Query(None, max_length=40)) -> JSONResponse:
    """Pack the uploaded ``model.pkl`` + ``model.bat`` into a signed ``model.zip`` (``version``: its
    ``x.x.x.x``, default 1.0.0.0). 200; 211 (HTTP 200) without ``model.bat``; 212 (HTTP 200) without
    ``model.pkl``."""
    who = _who(request)
    if isinstance(who, JSONResponse):
        return who
    try:
        options = fmt.PackOptions(version=version or fmt.PackOptions.version).check()
    except OtaError as exc:
        return answer(400, PACK_HTTP, str(exc))
    try:
        result = _store(request).pack(who.partner_pk, options)
    except PackagerError as exc:
        return answer(exc.statuscode, PACK_HTTP, exc.message)
    except OSError as exc:
        log.error("packager pack failed: %s", exc)
        return answer(500, PACK_HTTP, f"packing failed ({exc.strerror})")
    return answer(200, PACK_HTTP, f"{fmt.PACKAGE_NAME} packed", name=fmt.PACKAGE_NAME, size=result.size,
                  sha256=result.sha256, version=options.version)


@router.get("/download", response_class=Response, responses={200: {"content": {"application/zip": {}}}})
@router.get("/download/", response_class=Response, include_in_schema=False)
def download(request: Request) -> Response:
    """The latest package as ``model.zip`` (repeatable: it stays until the next pack replaces it).
    211 (HTTP 400) before any pack. A device token downloads its partner's package."""
    who = _who(request, devices=True)
    if isinstance(who, JSONResponse):
        return who
    try:
        fh = _store(request).open_package(who.partner_pk)
    except PackagerError as exc:
        return answer(exc.statuscode, DOWNLOAD_HTTP, exc.message)
    except OSError as exc:
        log.error("packager download failed: %s", exc)
        return answer(500, DOWNLOAD_HTTP, f"cannot read the package ({exc.strerror})")
    size = os.fstat(fh.fileno()).st_size
    return StreamingResponse(stream(fh), media_type="application/zip",
                             headers={"Content-Length": str(size),
                                      "Content-Disposition": f'attachment; filename="{fmt.PACKAGE_NAME}"'})


@router.get("/key", response_class=Response, responses={200: {"content": {"application/x-pem-file": {}}}})
def key(request: Request) -> Response:
    """The public key (PEM) that verifies this server's packages: ``ota-build packager-verify --pubkey``."""
    return Response(_store(request).public_pem(), media_type="application/x-pem-file")
