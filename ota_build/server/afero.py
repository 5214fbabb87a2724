"""The Afero-compatible cloud API (seed 003), paths, methods and success codes
as the original uploader and deploy tools call them, plus resumable uploads,
deploys to many devices or a group, and the partner's device list."""

from __future__ import annotations

import json
import logging
import re
from typing import Any, Dict, List, Optional

from fastapi import APIRouter, Depends, Form, HTTPException, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from ota_build.server import auth, services
from ota_build.server.auth import Principal, authenticate, require_partner
from ota_build.server.models import Binary, Device, FirmwareImage, OtaRecord
from ota_build.server.responses import RangeFileResponse, error_body, one_line
from ota_build.server.services import Kind, ServiceError
from ota_build.server.storage import TooLarge

log = logging.getLogger(__name__)
router = APIRouter(tags=["afero"])

VERSION_RE = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$"
ID_RE = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"

PartnerId = Path(..., pattern=ID_RE, max_length=64, description="partnerId")
DeviceTypeId = Path(..., pattern=ID_RE, max_length=64, description="deviceTypeId")
OtaType = Path(..., ge=0, le=255, description="OTA type (5 = hub)")
VersionNumber = Path(..., ge=0, le=2 ** 63 - 1, description="versionNumber")
DEFAULT_PAGE = 20  # images per page when ``page`` is given without ``size``
UNPAGED_MAX = 10_000  # images in the one page answered without ``page`` and ``size``


class Value(BaseModel):
    """``{"value": ...}``, the service's envelope for one value."""

    value: str = Field(..., min_length=1, max_length=128)


class RecordIn(BaseModel):
    """An OTA record as the uploader sends it."""

    name: str = Field(..., min_length=1, max_length=35, pattern=r"^[^\x00-\x1f/\\]+$")
    description: str = Field("", max_length=500)
    type: int = Field(5, ge=0, le=255)
    version: str = Field(..., pattern=VERSION_RE)
    url: str = Field("", max_length=1000)
    url2: Optional[str] = Field(None, max_length=1000)
    tags: List[str] = Field(default_factory=list, max_length=50)
    versionNumber: Optional[str] = Field(None, pattern=r"^[0-9]{1,18}$")


class PushIn(BaseModel):
    """A deploy: ``{"value": deviceId}`` as the original tool sends it, or many devices, or a group."""

    value: Optional[str] = Field(None, pattern=ID_RE)
    devices: List[str] = Field(default_factory=list, max_length=10000)
    group: Optional[str] = Field(None, pattern=ID_RE)


class UploadStart(BaseModel):
    """Start a resumable upload of ``size`` bytes."""

    size: int = Field(..., ge=1)


def _db(request: Request):  # noqa: ANN202
    return request.app.state.db


def _dtype(s, principal: Principal, partner_id: str, device_type_id: str):  # noqa: ANN001, ANN202
    require_partner(principal, partner_id)
    services.find_partner(s, principal.partner_pk, partner_id)
    return services.find_device_type(s, principal.partner_pk, device_type_id)


def _fields(body: RecordIn) -> services.RecordFields:
    """The record as the service layer takes it (versionNumber: the JSON string becomes an int here)."""
    return services.RecordFields(name=body.name, ota_type=body.type, version=body.version, description=body.description,
                                 url=body.url, url2=body.url2, tags=list(body.tags),
                                 version_number=None if body.versionNumber is None else int(body.versionNumber))


def record_json(rec: OtaRecord, partner_id: str) -> Dict[str, Any]:
    """The record as the service returns it (string id and versionNumber)."""
    out: Dict[str, Any] = {
        "createdTimestamp": rec.created_ms, "description": rec.description, "id": str(rec.id), "name": rec.name,
        "partnerId": partner_id, "tags": json.loads(rec.tags or "[]"), "type": rec.ota_type,
        "updatedTimestamp": rec.updated_ms, "url": rec.url, "version": rec.version,
        "versionNumber": str(rec.version_number),
    }
    if rec.url2:
        out["url2"] = rec.url2
    return out


def image_json(img: FirmwareImage, rec: OtaRecord, binary: Optional[Binary]) -> Dict[str, Any]:
    """A firmware image (association) as listed and returned by associate."""
    return {
        "id": str(img.id), "recordId": str(rec.id), "name": rec.name, "version": rec.version,
        "description": rec.description, "type": img.ota_type, "versionNumber": str(img.version_number),
        "sha256": binary.sha256 if binary else None, "size": binary.size if binary else None,
    }


# --------------------------------------------------------------------------- OAuth

def _oauth_error(status: int, error: str, message: str, headers: Optional[Dict[str, str]] = None) -> JSONResponse:
    return JSONResponse({"status": status, "error": error, "message": message, "path": "/oauth/token",
                         "trace": one_line(f"{status} {error}: {message}")}, status_code=status, headers=headers)


@router.post("/oauth/token", summary="Partner access token (OAuth2 password grant, client auth = Basic auth-string)")
def oauth_token(request: Request, username: str = Form(..., max_length=200), password: str = Form(..., max_length=200),
                grant_type: str = Form(..., max_length=32)) -> JSONResponse:
    """Exchange the partner's username/password for a bearer access token.

    Failures are counted per account and per client address (``auth.LoginThrottle``): past a few,
    the caller waits (429 with ``Retry-After``) before the credentials are checked again."""
    if grant_type != "password":
        return _oauth_error(400, "unsupported_grant_type", "field 'grant_type': must be 'password'")
    client = auth.parse_basic(request.headers.get("authorization"))
    if client is None:
        return _oauth_error(401, "invalid_client", "Authorization: Basic <auth-string> is required")
    throttle: auth.LoginThrottle = request.app.state.login_throttle
    keys = auth.login_keys(username, request.client.host if request.client else "")
    wait = throttle.retry_after(keys)
    if wait > 0:
        return _oauth_error(429, "too_many_attempts", f"too many failed logins: retry after {wait} s",
                            headers={"Retry-After": str(wait)})
    with _db(request).session() as s:
        token = services.issue_partner_token(s, username, client[0], client[1], password)
    if token is None:
        throttle.failed(keys)
        return _oauth_error(401, "invalid_grant", "bad credentials (auth-string, username or userpw)")
    throttle.succeeded(keys[:1])
    return JSONResponse({"access_token": token, "token_type": "bearer", "expires_in": auth.ACCESS_TOKEN_SECONDS,
                         "scope": "partner"})


# --------------------------------------------------------------------------- pool (records)

@router.get("/v1/ota/partners/{partnerId}/pool/types/{otaType}/names/{name}/versions/{version}/exists")
def record_exists(request: Request, partnerId: str = PartnerId, otaType: int = OtaType,
                  name: str = Path(..., max_length=64), version: str = Path(..., max_length=64),
                  principal: Principal = Depends(authenticate)) -> Dict[str, bool]:
    """Whether a record of this name and version exists."""
    require_partner(principal, partnerId)
    with _db(request).session() as s:
        partner = services.find_partner(s, principal.partner_pk, partnerId)
        return {"value": services.record_exists(s, partner.id, otaType, name, version)}


@router.post("/v1/ota/partners/{partnerId}/pool", status_code=201)
def create_record(request: Request, body: RecordIn, partnerId: str = PartnerId,
                  principal: Principal = Depends(authenticate)) -> JSONResponse:
    """Create a record; the server assigns ``id`` and ``versionNumber`` (increasing per partner and type)."""
    require_partner(principal, partnerId)
    with _db(request).session() as s:
        partner = services.find_partner(s, principal.partner_pk, partnerId)
        rec = services.create_record(s, partner.id, _fields(body))
        return JSONResponse(record_json(rec, partner.partner_id), status_code=201)


@router.put("/v1/ota/partners/{partnerId}/pool/types/{otaType}/versionNumbers/{versionNumber}", status_code=204)
def update_record(request: Request, body: RecordIn, partnerId: str = PartnerId, otaType: int = OtaType,
                  versionNumber: int = VersionNumber, principal: Principal = Depends(authenticate)) -> Response:
    """Update a record (the uploader sets ``url`` to the repository URL of the image)."""
    require_partner(principal, partnerId)
    with _db(request).session() as s:
        partner = services.find_partner(s, principal.partner_pk, partnerId)
        services.update_record(s, partner.id, otaType, versionNumber, _fields(body))
    return Response(status_code=204)


# --------------------------------------------------------------------------- binaries

def _accept_binary(request: Request, partner_pk: int, tmp: str, sha: str, size: int) -> None:
    """Verify an uploaded file and store it under its SHA-256 (runs in a worker thread)."""
    with _db(request).session() as s:
        services.accept_binary(s, request.app.state.storage, partner_pk, tmp, sha, size)


@router.post("/v1/ota/partners/{partnerId}/binaries",
             openapi_extra={"requestBody": {"required": True,
                                            "content": {"application/octet-stream": {"schema": {
                                                "type": "string", "format": "binary"}}}}})
async def upload_binary(request: Request, partnerId: str = PartnerId,
                        principal: Principal = Depends(authenticate)) -> Dict[str, str]:
    """Upload a hub_update.bin as the raw request body; it is streamed to disk and verified. Returns its SHA-256."""
    require_partner(principal, partnerId)
    try:
        tmp, sha, size = await request.app.state.storage.receive(request.stream())
    except TooLarge as exc:
        raise HTTPException(413, str(exc)) from None
    await run_in_threadpool(_accept_binary, request, principal.partner_pk, tmp, sha, size)
    return {"value": sha}


@router.post("/v1/ota/partners/{partnerId}/binaries/uploads", status_code=201)
def start_upload(request: Request, body: UploadStart, partnerId: str = PartnerId,
                 principal: Principal = Depends(authenticate)) -> Dict[str, Any]:
    """Start a resumable upload; send the bytes with ``PUT .../uploads/{uploadId}`` and Content-Range."""
    require_partner(principal, partnerId)
    with _db(request).session() as s:
        sess = services.start_upload(s, request.app.state.storage, principal.partner_pk, body.size)
    return {"uploadId": sess.id, "offset": 0, "size": body.size}


def _session(request: Request, principal: Principal, partner_id: str, upload_id: str):  # noqa: ANN202
    require_partner(principal, partner_id)
    with _db(request).session() as s:
        return services.upload_session(s, principal.partner_pk, upload_id)


UploadId = Path(..., pattern=r"^[A-Za-z0-9_-]{16,64}$")


@router.get("/v1/ota/partners/{partnerId}/binaries/uploads/{uploadId}")
def upload_status(request: Request, partnerId: str = PartnerId, uploadId: str = UploadId,
                  principal: Principal = Depends(authenticate)) -> Dict[str, Any]:
    """How many bytes of the upload the server has (resume from ``offset``)."""
    sess = _session(request, principal, partnerId, uploadId)
    return {"uploadId": uploadId, "offset": services.upload_offset(request.app.state.storage, uploadId),
            "size": sess.size}


@router.put("/v1/ota/partners/{partnerId}/binaries/uploads/{uploadId}",
            openapi_extra={"requestBody": {"required": True,
                                           "content": {"application/octet-stream": {"schema": {
                                               "type": "string", "format": "binary"}}}}})
async def upload_chunk(request: Request, partnerId: str = PartnerId, uploadId: str = UploadId,
                       principal: Principal = Depends(authenticate)) -> JSONResponse:
    """Append bytes at ``Content-Range: bytes START-END/TOTAL``; START must be the current offset (else 409
    with the offset). Bytes received before a dropped connection are kept, so the client resumes."""
    sess = await run_in_threadpool(_session, request, principal, partnerId, uploadId)
    m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", request.headers.get("content-range", "").strip())
    if not m:
        raise HTTPException(400, "header 'Content-Range': must be 'bytes START-END/TOTAL'")
    start, end, total = (int(g) for g in m.groups())
    try:
        offset = await services.append_chunk(request.app.state.storage, sess, start, end, total, request.stream())
    except ServiceError as exc:
        if exc.kind is Kind.CONFLICT and "offset" in exc.details:
            return JSONResponse({**error_body(409, exc.message, request.url.path), "offset": exc.details["offset"]},
                                status_code=409)
        raise
    return JSONResponse({"uploadId": uploadId, "offset": offset, "size": sess.size})


@router.post("/v1/ota/partners/{partnerId}/binaries/uploads/{uploadId}/complete")
async def complete_upload(request: Request, partnerId: str = PartnerId, uploadId: str = UploadId,
                          principal: Principal = Depends(authenticate)) -> Dict[str, str]:
    """Finish a resumable upload: verify the image and store it. Returns ``{"value": sha256}``."""
    require_partner(principal, partnerId)

    def finish() -> str:
        with _db(request).session() as s:
            return services.complete_upload(s, request.app.state.storage, principal.partner_pk, uploadId)

    return {"value": await run_in_threadpool(finish)}


@router.post("/v1/ota/partners/{partnerId}/binaries/moveToRepository")
def move_to_repository(request: Request, body: Value, partnerId: str = PartnerId,
                       principal: Principal = Depends(authenticate)) -> Dict[str, str]:
    """Publish an uploaded binary; returns the URL to put in the record."""
    require_partner(principal, partnerId)
    with _db(request).session() as s:
        partner = services.find_partner(s, principal.partner_pk, partnerId)
        services.move_to_repository(s, partner.id, body.value)
    return {"value": services.repository_url(str(request.base_url), partnerId, body.value)}


@router.head("/v1/ota/partners/{partnerId}/repository/{sha256}", response_class=Response, include_in_schema=False)  # curl -I
@router.get("/v1/ota/partners/{partnerId}/repository/{sha256}", response_class=Response,
            responses={200: {"content": {"application/octet-stream": {}}}})
def repository_file(request: Request, partnerId: str = PartnerId,
                    sha256: str = Path(..., pattern=r"^[0-9a-f]{64}$"),
                    principal: Principal = Depends(authenticate)) -> Response:
    """Download a stored image (partner token)."""
    require_partner(principal, partnerId)
    with _db(request).session() as s:
        partner = services.find_partner(s, principal.partner_pk, partnerId)
        services.repository_binary(s, partner.id, sha256)
    return RangeFileResponse(request.app.state.storage.blob_path(sha256), media_type="application/octet-stream")


# --------------------------------------------------------------------------- firmware images

@router.get("/v1/ota/partners/{partnerId}/deviceTypes/{deviceTypeId}/firmwareImages/types/{otaType}"
            "/versionNumbers/{versionNumber}")
def image_by_version(request: Request, partnerId: str = PartnerId, deviceTypeId: str = DeviceTypeId,
                     otaType: int = OtaType, versionNumber: int = VersionNumber,
                     principal: Principal = Depends(authenticate)) -> Dict[str, Any]:
    """200 with the image if this versionNumber is associated with the device type, else 404."""
    with _db(request).session() as s:
        dtype = _dtype(s, principal, partnerId, deviceTypeId)
        return image_json(*services.image_by_version(s, dtype, otaType, versionNumber))


@router.post("/v1/ota/partners/{partnerId}/deviceTypes/{deviceTypeId}/firmwareImages", status_code=201)
def associate(request: Request, body: RecordIn, partnerId: str = PartnerId, deviceTypeId: str = DeviceTypeId,
              principal: Principal = Depends(authenticate)) -> JSONResponse:
    """Associate a record (with its uploaded image) with a device type. 409 if that version is there already."""
    fields = _fields(body)
    with _db(request).session() as s:
        dtype = _dtype(s, principal, partnerId, deviceTypeId)
        row = services.associate(s, principal.partner_pk, dtype, fields.ota_type, fields.version_number,
                                 fields.name, fields.version)
        return JSONResponse(image_json(*row), status_code=201)


@router.get("/v1/ota/partners/{partnerId}/deviceTypes/{deviceTypeId}/firmwareImages/types/{otaType}")
def list_images(request: Request, partnerId: str = PartnerId, deviceTypeId: str = DeviceTypeId,
                otaType: int = OtaType, page: Optional[int] = Query(None, ge=0, le=1_000_000),
                size: Optional[int] = Query(None, ge=1, le=1000),
                principal: Principal = Depends(authenticate)) -> Dict[str, Any]:
    """The device type's images, as a Spring page: ``content``, ``totalElements``, ``totalPages``.

    Without ``page`` and ``size`` every image is in one page (up to ``UNPAGED_MAX``): the original
    ``--list`` reads only the first page, up to ``totalElements``. With either, pages of ``size`` (20)."""
    with _db(request).session() as s:
        dtype = _dtype(s, principal, partnerId, deviceTypeId)
        unpaged = page is None and size is None
        page, size = page or 0, (UNPAGED_MAX if unpaged else size or DEFAULT_PAGE)
        total, rows = services.list_images(s, dtype, otaType, page, size)
        content = [image_json(*row) for row in rows]
    if unpaged and total <= UNPAGED_MAX:
        size = max(total, 1)  # one page holding everything
    return {"content": content, "totalElements": total, "totalPages": (total + size - 1) // size,
            "number": page, "size": size}


@router.put("/v1/ota/partners/{partnerId}/deviceTypes/{deviceTypeId}/firmwareImages/{imageId}/push",
            status_code=202)
def push(request: Request, body: PushIn, partnerId: str = PartnerId, deviceTypeId: str = DeviceTypeId,
         imageId: int = Path(..., ge=1, le=2 ** 62), principal: Principal = Depends(authenticate)) -> JSONResponse:
    """Deploy an image: ``{"value": deviceId}`` (the original), ``{"devices": [...]}`` or ``{"group": name}``."""
    targets = ([body.value] if body.value else []) + list(body.devices)
    if not targets and not body.group:
        raise HTTPException(400, "field 'value': give a deviceId (or 'devices' or 'group')")
    with _db(request).session() as s:
        dtype = _dtype(s, principal, partnerId, deviceTypeId)
        count = services.push(s, principal.partner_pk, dtype, imageId, targets, body.group)
    log.info("partner %s: image %s pushed to %d device(s)", partnerId, imageId, count)
    return JSONResponse({"value": "Request accepted for processing", "devices": count}, status_code=202)


@router.get("/v1/ota/partners/{partnerId}/devices")
def partner_devices(request: Request, partnerId: str = PartnerId,
                    principal: Principal = Depends(authenticate)) -> List[Dict[str, Any]]:
    """The partner's devices with the last state each reported."""
    require_partner(principal, partnerId)
    with _db(request).session() as s:
        partner = services.find_partner(s, principal.partner_pk, partnerId)
        return [device_json(dev, dtid) for dev, dtid in services.partner_devices(s, partner.id)]


def device_json(dev: Device, device_type_id: str) -> Dict[str, Any]:
    """A device and its last reported state (versionNumber as a string of digits, as the API has it)."""
    vn = dev.state_version_number
    return {"deviceId": dev.device_id, "deviceTypeId": device_type_id, "group": dev.group_name,
            "state": dev.state, "versionNumber": None if vn is None else str(vn), "message": dev.state_message,
            "updated": dev.state_updated.isoformat() if dev.state_updated else None}
