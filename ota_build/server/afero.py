"""The Afero-compatible cloud API (seed 003), paths, methods and success codes
as the original uploader and deploy tools call them, plus resumable uploads,
deploys to many devices or a group, and the partner's device list."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import secrets
import time
from typing import Any, Dict, List, Optional

from fastapi import APIRouter, Depends, Form, HTTPException, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from ota_build.core.errors import OtaError
from ota_build.server import auth
from ota_build.server.auth import Principal, authenticate, require_partner
from ota_build.server.responses import RangeFileResponse
from ota_build.server.models import (Binary, Deployment, Device, DeviceType, FirmwareImage, OtaRecord, Partner, PartnerKey, Token,
                     UploadSession, utcnow)
from ota_build.server.storage import TooLarge, discard, verify_image

log = logging.getLogger(__name__)
router = APIRouter(tags=["afero"])

VERSION_RE = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$"
ID_RE = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
REPO_URL_RE = re.compile(r"/v1/ota/partners/[^/]+/repository/([0-9a-f]{64})$")
MAX_OPEN_UPLOADS = 16  # unfinished resumable uploads per partner
UPLOAD_SESSION_HOURS = 24  # an unfinished resumable upload (and its .part file) is dropped after this

PartnerId = Path(..., pattern=ID_RE, max_length=64, description="partnerId")
DeviceTypeId = Path(..., pattern=ID_RE, max_length=64, description="deviceTypeId")
OtaType = Path(..., ge=0, le=255, description="OTA type (5 = hub)")
VersionNumber = Path(..., ge=0, le=2 ** 63 - 1, description="versionNumber")


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


def _partner(s, principal: Principal, partner_id: str) -> Partner:  # noqa: ANN001
    require_partner(principal, partner_id)
    partner = s.get(Partner, principal.partner_pk)
    if partner is None:  # pragma: no cover - token rows cascade with the partner
        raise HTTPException(404, f"partner {partner_id} not found")
    return partner


def _device_type(s, partner: Partner, device_type_id: str) -> DeviceType:  # noqa: ANN001
    dtype = s.scalar(select(DeviceType).where(DeviceType.partner_pk == partner.id,
                                              DeviceType.device_type_id == device_type_id))
    if dtype is None:
        raise HTTPException(404, f"deviceTypeId {device_type_id} is not registered for this partner")
    return dtype


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

@router.post("/oauth/token", summary="Partner access token (OAuth2 password grant, client auth = Basic auth-string)")
def oauth_token(request: Request, username: str = Form(..., max_length=200), password: str = Form(..., max_length=200),
                grant_type: str = Form(..., max_length=32)) -> JSONResponse:
    """Exchange the partner's username/password for a bearer access token."""
    if grant_type != "password":
        return JSONResponse({"status": 400, "error": "unsupported_grant_type",
                             "message": "field 'grant_type': must be 'password'"}, status_code=400)
    client = auth.parse_basic(request.headers.get("authorization"))
    if client is None:
        return JSONResponse({"status": 401, "error": "invalid_client",
                             "message": "Authorization: Basic <auth-string> is required"}, status_code=401)
    with _db(request).session() as s:
        partner = s.scalar(select(Partner).where(Partner.username == username))
        ok = (partner is not None and secrets.compare_digest(partner.client_id, client[0])
              and auth.check_secret(client[1], partner.client_secret_hash)
              and auth.check_secret(password, partner.password_hash))
        if not ok or partner is None:
            return JSONResponse({"status": 401, "error": "invalid_grant",
                                 "message": "bad credentials (auth-string, username or userpw)"}, status_code=401)
        token = auth.new_token()
        import datetime as dt

        s.add(Token(token_hash=auth.token_hash(token), kind="partner", partner_pk=partner.id,
                    expires=utcnow() + dt.timedelta(seconds=auth.ACCESS_TOKEN_SECONDS)))
        s.commit()
    return JSONResponse({"access_token": token, "token_type": "bearer", "expires_in": auth.ACCESS_TOKEN_SECONDS,
                         "scope": "partner"})


# --------------------------------------------------------------------------- pool (records)

@router.get("/v1/ota/partners/{partnerId}/pool/types/{otaType}/names/{name}/versions/{version}/exists")
def record_exists(request: Request, partnerId: str = PartnerId, otaType: int = OtaType,
                  name: str = Path(..., max_length=64), version: str = Path(..., max_length=64),
                  principal: Principal = Depends(authenticate)) -> Dict[str, bool]:
    """Whether a record of this name and version exists."""
    with _db(request).session() as s:
        partner = _partner(s, principal, partnerId)
        found = s.scalar(select(OtaRecord.id).where(OtaRecord.partner_pk == partner.id, OtaRecord.name == name,
                                                    OtaRecord.ota_type == otaType, OtaRecord.version == version))
    return {"value": found is not None}


@router.post("/v1/ota/partners/{partnerId}/pool", status_code=201)
def create_record(request: Request, body: RecordIn, partnerId: str = PartnerId,
                  principal: Principal = Depends(authenticate)) -> JSONResponse:
    """Create a record; the server assigns ``id`` and ``versionNumber`` (increasing per partner and type)."""
    now = int(time.time() * 1000)
    for _attempt in range(10):
        with _db(request).session() as s:
            partner = _partner(s, principal, partnerId)
            dup = select(OtaRecord.id).where(OtaRecord.partner_pk == partner.id, OtaRecord.name == body.name,
                                             OtaRecord.ota_type == body.type, OtaRecord.version == body.version)
            if s.scalar(dup) is not None:
                raise HTTPException(409, f"version {body.version} of {body.name} (type {body.type}) already exists")
            top = s.scalar(select(func.max(OtaRecord.version_number)).where(
                OtaRecord.partner_pk == partner.id, OtaRecord.ota_type == body.type)) or 0
            number = top + 1
            if body.versionNumber is not None:
                wanted = int(body.versionNumber)
                if wanted <= top:
                    raise HTTPException(409, f"field 'versionNumber': {wanted} is not above the latest ({top})")
                number = wanted
            rec = OtaRecord(partner_pk=partner.id, name=body.name, ota_type=body.type, version=body.version,
                            version_number=number, description=body.description, url=body.url or "",
                            url2=body.url2 or "", tags=json.dumps(body.tags), created_ms=now, updated_ms=now)
            s.add(rec)
            try:
                s.commit()
            except IntegrityError:
                s.rollback()
                continue  # raced with another create: re-check and retry
            log.info("partner %s: record %s %s versionNumber %s", partnerId, body.name, body.version, number)
            return JSONResponse(record_json(rec, partner.partner_id), status_code=201)
    raise HTTPException(409, "could not assign a versionNumber (too many concurrent creates); retry")


@router.put("/v1/ota/partners/{partnerId}/pool/types/{otaType}/versionNumbers/{versionNumber}", status_code=204)
def update_record(request: Request, body: RecordIn, partnerId: str = PartnerId, otaType: int = OtaType,
                  versionNumber: int = VersionNumber, principal: Principal = Depends(authenticate)) -> Response:
    """Update a record (the uploader sets ``url`` to the repository URL of the image)."""
    with _db(request).session() as s:
        partner = _partner(s, principal, partnerId)
        rec = s.scalar(select(OtaRecord).where(OtaRecord.partner_pk == partner.id, OtaRecord.ota_type == otaType,
                                               OtaRecord.version_number == versionNumber))
        if rec is None:
            raise HTTPException(404, f"no record of type {otaType} with versionNumber {versionNumber}")
        if body.name != rec.name or body.version != rec.version:
            raise HTTPException(409, "fields 'name' and 'version' cannot be changed")
        rec.url = body.url or ""
        if body.url2 is not None:
            rec.url2 = body.url2
        rec.description = body.description
        rec.tags = json.dumps(body.tags)
        rec.updated_ms = int(time.time() * 1000)
        s.commit()
    return Response(status_code=204)


# --------------------------------------------------------------------------- binaries

def _accept_binary(request: Request, partner_pk: int, tmp: str, sha: str, size: int) -> None:
    """Verify an uploaded file and store it under its SHA-256 (runs in a worker thread)."""
    storage = request.app.state.storage
    try:
        with _db(request).session() as s:
            pems = list(s.scalars(select(PartnerKey.pem).where(PartnerKey.partner_pk == partner_pk)))
        try:
            header = verify_image(tmp, pems)
        except OtaError as exc:
            reason = getattr(exc, "reason", "invalid")
            raise HTTPException(400, f"image rejected ({reason}): {exc}") from None
        with _db(request).session() as s:
            existing = s.scalar(select(Binary).where(Binary.partner_pk == partner_pk, Binary.sha256 == sha))
            if existing is None:
                s.add(Binary(partner_pk=partner_pk, sha256=sha, size=size, version_number=header.version_number,
                             ota_type=header.ota_type, in_repository=0))
                storage.publish(tmp, storage.blob_path(sha))
                try:
                    s.commit()
                except IntegrityError:
                    s.rollback()  # the same bytes were stored concurrently: same content, same name
            elif not storage.blob_path(sha).exists():
                storage.publish(tmp, storage.blob_path(sha))
    finally:
        discard(tmp)


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
    storage = request.app.state.storage
    if body.size > storage.max_upload_bytes:
        raise HTTPException(413, f"field 'size': exceeds the limit of {storage.max_upload_bytes} bytes")
    with _db(request).session() as s:
        expired = s.scalars(select(UploadSession).where(
            UploadSession.created < utcnow() - dt.timedelta(hours=UPLOAD_SESSION_HOURS))).all()
        for old in expired:
            storage.part_path(old.id).unlink(missing_ok=True)
            s.delete(old)
        s.commit()
        if expired:
            log.info("dropped %d resumable upload(s) unfinished after %d h", len(expired), UPLOAD_SESSION_HOURS)
        open_uploads = s.scalar(select(func.count()).select_from(UploadSession)
                                .where(UploadSession.partner_pk == principal.partner_pk)) or 0
        if open_uploads >= MAX_OPEN_UPLOADS:
            raise HTTPException(429, f"{open_uploads} unfinished uploads: finish one, or wait "
                                     f"{UPLOAD_SESSION_HOURS} h for them to expire")
        upload_id = secrets.token_urlsafe(24)
        storage.part_path(upload_id).touch()
        s.add(UploadSession(id=upload_id, partner_pk=principal.partner_pk, size=body.size))
        s.commit()
    return {"uploadId": upload_id, "offset": 0, "size": body.size}


def _session(request: Request, principal: Principal, partner_id: str, upload_id: str) -> UploadSession:
    require_partner(principal, partner_id)
    with _db(request).session() as s:
        sess = s.get(UploadSession, upload_id)
        if sess is None or sess.partner_pk != principal.partner_pk:
            raise HTTPException(404, f"no upload session {upload_id}")
        return sess


UploadId = Path(..., pattern=r"^[A-Za-z0-9_-]{16,64}$")


@router.get("/v1/ota/partners/{partnerId}/binaries/uploads/{uploadId}")
def upload_status(request: Request, partnerId: str = PartnerId, uploadId: str = UploadId,
                  principal: Principal = Depends(authenticate)) -> Dict[str, Any]:
    """How many bytes of the upload the server has (resume from ``offset``)."""
    sess = _session(request, principal, partnerId, uploadId)
    part = request.app.state.storage.part_path(uploadId)
    return {"uploadId": uploadId, "offset": part.stat().st_size if part.exists() else 0, "size": sess.size}


@router.put("/v1/ota/partners/{partnerId}/binaries/uploads/{uploadId}",
            openapi_extra={"requestBody": {"required": True,
                                           "content": {"application/octet-stream": {"schema": {
                                               "type": "string", "format": "binary"}}}}})
async def upload_chunk(request: Request, partnerId: str = PartnerId, uploadId: str = UploadId,
                       principal: Principal = Depends(authenticate)) -> JSONResponse:
    """Append bytes at ``Content-Range: bytes START-END/TOTAL``; START must be the current offset (else 409
    with the offset). Bytes received before a dropped connection are kept, so the client resumes."""
    import fcntl

    sess = await run_in_threadpool(_session, request, principal, partnerId, uploadId)
    part = request.app.state.storage.part_path(uploadId)
    m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", request.headers.get("content-range", "").strip())
    if not m:
        raise HTTPException(400, "header 'Content-Range': must be 'bytes START-END/TOTAL'")
    start, end, total = (int(g) for g in m.groups())
    if total != sess.size or end < start or end >= total:
        raise HTTPException(400, f"header 'Content-Range': must lie within the upload's {sess.size} bytes")
    with open(part, "ab") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise HTTPException(409, "another request is writing this upload") from None
        offset = fh.tell()
        if start != offset:
            return JSONResponse({"status": 409, "message": f"upload is at offset {offset}, not {start}",
                                 "offset": offset}, status_code=409)
        limit = end + 1
        try:
            async for chunk in request.stream():
                if offset + len(chunk) > limit:
                    raise HTTPException(400, "body is longer than the Content-Range")
                fh.write(chunk)
                offset += len(chunk)
        finally:
            fh.flush()
            os.fsync(fh.fileno())
    return JSONResponse({"uploadId": uploadId, "offset": offset, "size": sess.size})


@router.post("/v1/ota/partners/{partnerId}/binaries/uploads/{uploadId}/complete")
async def complete_upload(request: Request, partnerId: str = PartnerId, uploadId: str = UploadId,
                          principal: Principal = Depends(authenticate)) -> Dict[str, str]:
    """Finish a resumable upload: verify the image and store it. Returns ``{"value": sha256}``."""
    sess = await run_in_threadpool(_session, request, principal, partnerId, uploadId)
    storage = request.app.state.storage
    part = storage.part_path(uploadId)
    have = part.stat().st_size if part.exists() else 0
    if have != sess.size:
        raise HTTPException(409, f"upload incomplete: {have} of {sess.size} bytes")

    def finish() -> str:
        fd, tmp = storage.temp_file()
        os.close(fd)
        os.replace(part, tmp)  # claim the bytes; a second complete finds nothing
        from ota_build.core.files import file_sha256

        try:
            sha = file_sha256(tmp)
            _accept_binary(request, principal.partner_pk, tmp, sha, have)
        finally:  # accepted or rejected, the session is over (its bytes were claimed above)
            with _db(request).session() as s:
                row = s.get(UploadSession, uploadId)
                if row is not None:
                    s.delete(row)
                    s.commit()
        return sha

    try:
        sha = await run_in_threadpool(finish)
    except FileNotFoundError:
        raise HTTPException(409, "upload already completed") from None
    return {"value": sha}


@router.post("/v1/ota/partners/{partnerId}/binaries/moveToRepository")
def move_to_repository(request: Request, body: Value, partnerId: str = PartnerId,
                       principal: Principal = Depends(authenticate)) -> Dict[str, str]:
    """Publish an uploaded binary; returns the URL to put in the record."""
    with _db(request).session() as s:
        partner = _partner(s, principal, partnerId)
        binary = s.scalar(select(Binary).where(Binary.partner_pk == partner.id, Binary.sha256 == body.value))
        if binary is None:
            raise HTTPException(404, f"field 'value': no uploaded binary with sha256 {body.value}")
        binary.in_repository = 1
        s.commit()
    return {"value": f"{str(request.base_url).rstrip('/')}/v1/ota/partners/{partnerId}/repository/{body.value}"}


@router.head("/v1/ota/partners/{partnerId}/repository/{sha256}", response_class=Response, include_in_schema=False)  # curl -I
@router.get("/v1/ota/partners/{partnerId}/repository/{sha256}", response_class=Response,
            responses={200: {"content": {"application/octet-stream": {}}}})
def repository_file(request: Request, partnerId: str = PartnerId,
                    sha256: str = Path(..., pattern=r"^[0-9a-f]{64}$"),
                    principal: Principal = Depends(authenticate)) -> Response:
    """Download a stored image (partner token)."""

    with _db(request).session() as s:
        partner = _partner(s, principal, partnerId)
        binary = s.scalar(select(Binary).where(Binary.partner_pk == partner.id, Binary.sha256 == sha256,
                                               Binary.in_repository == 1))
        if binary is None:
            raise HTTPException(404, "no such image in the repository")
    return RangeFileResponse(request.app.state.storage.blob_path(sha256), media_type="application/octet-stream")


# --------------------------------------------------------------------------- firmware images

def _image_rows(s, dtype: DeviceType, ota_type: int):  # noqa: ANN001, ANN202
    return (select(FirmwareImage, OtaRecord).join(OtaRecord, OtaRecord.id == FirmwareImage.record_pk)
            .where(FirmwareImage.device_type_pk == dtype.id, FirmwareImage.ota_type == ota_type))


def _binary_of(s, rec: OtaRecord) -> Optional[Binary]:  # noqa: ANN001
    m = REPO_URL_RE.search(rec.url or "")
    if not m:
        return None
    return s.scalar(select(Binary).where(Binary.partner_pk == rec.partner_pk, Binary.sha256 == m.group(1)))


@router.get("/v1/ota/partners/{partnerId}/deviceTypes/{deviceTypeId}/firmwareImages/types/{otaType}"
            "/versionNumbers/{versionNumber}")
def image_by_version(request: Request, partnerId: str = PartnerId, deviceTypeId: str = DeviceTypeId,
                     otaType: int = OtaType, versionNumber: int = VersionNumber,
                     principal: Principal = Depends(authenticate)) -> Dict[str, Any]:
    """200 with the image if this versionNumber is associated with the device type, else 404."""
    with _db(request).session() as s:
        partner = _partner(s, principal, partnerId)
        dtype = _device_type(s, partner, deviceTypeId)
        row = s.execute(_image_rows(s, dtype, otaType).where(FirmwareImage.version_number == versionNumber)).first()
        if row is None:
            raise HTTPException(404, f"versionNumber {versionNumber} is not associated with {deviceTypeId}")
        img, rec = row
        return image_json(img, rec, _binary_of(s, rec))


@router.post("/v1/ota/partners/{partnerId}/deviceTypes/{deviceTypeId}/firmwareImages", status_code=201)
def associate(request: Request, body: RecordIn, partnerId: str = PartnerId, deviceTypeId: str = DeviceTypeId,
              principal: Principal = Depends(authenticate)) -> JSONResponse:
    """Associate a record (with its uploaded image) with a device type. 409 if that version is there already."""
    with _db(request).session() as s:
        partner = _partner(s, principal, partnerId)
        dtype = _device_type(s, partner, deviceTypeId)
        query = select(OtaRecord).where(OtaRecord.partner_pk == partner.id, OtaRecord.ota_type == body.type)
        if body.versionNumber is not None:
            query = query.where(OtaRecord.version_number == int(body.versionNumber))
        else:
            query = query.where(OtaRecord.name == body.name, OtaRecord.version == body.version)
        rec = s.scalar(query)
        if rec is None:
            raise HTTPException(404, "no such record in the pool (create it with POST .../pool first)")
        binary = _binary_of(s, rec)
        if binary is None or not binary.in_repository:
            raise HTTPException(400, "field 'url': the record has no uploaded image in the repository")
        if binary.version_number != rec.version_number or binary.ota_type != rec.ota_type:
            raise HTTPException(400, f"the image's header says type {binary.ota_type} versionNumber "
                                     f"{binary.version_number}; the record says type {rec.ota_type} "
                                     f"versionNumber {rec.version_number}")
        img = FirmwareImage(device_type_pk=dtype.id, record_pk=rec.id, ota_type=rec.ota_type,
                            version_number=rec.version_number)
        s.add(img)
        try:
            s.commit()
        except IntegrityError:
            s.rollback()
            raise HTTPException(409, f"type {rec.ota_type} versionNumber {rec.version_number} is already "
                                     f"associated with {deviceTypeId}") from None
        return JSONResponse(image_json(img, rec, binary), status_code=201)


@router.get("/v1/ota/partners/{partnerId}/deviceTypes/{deviceTypeId}/firmwareImages/types/{otaType}")
def list_images(request: Request, partnerId: str = PartnerId, deviceTypeId: str = DeviceTypeId,
                otaType: int = OtaType, page: int = Query(0, ge=0, le=1_000_000),
                size: int = Query(20, ge=1, le=1000), principal: Principal = Depends(authenticate)) -> Dict[str, Any]:
    """The device type's images, as a Spring page: ``content``, ``totalElements``, ``totalPages``."""
    with _db(request).session() as s:
        partner = _partner(s, principal, partnerId)
        dtype = _device_type(s, partner, deviceTypeId)
        total = s.scalar(select(func.count(FirmwareImage.id)).where(
            FirmwareImage.device_type_pk == dtype.id, FirmwareImage.ota_type == otaType)) or 0
        rows = s.execute(_image_rows(s, dtype, otaType).order_by(FirmwareImage.version_number)
                         .offset(page * size).limit(size)).all()
        content = [image_json(img, rec, _binary_of(s, rec)) for img, rec in rows]
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
        partner = _partner(s, principal, partnerId)
        dtype = _device_type(s, partner, deviceTypeId)
        img = s.get(FirmwareImage, imageId)
        if img is None or img.device_type_pk != dtype.id:
            raise HTTPException(404, f"no image {imageId} for device type {deviceTypeId}")
        devices = []
        for device_id in targets:
            dev = s.scalar(select(Device).where(Device.partner_pk == partner.id, Device.device_id == device_id))
            if dev is None or dev.device_type_pk != dtype.id:
                raise HTTPException(404, f"device {device_id} is not a {deviceTypeId} device of this partner")
            devices.append(dev)
        in_group = 0
        if body.group:  # a group exists while a device is in it (ota-build admin device-token --group)
            in_group = s.scalar(select(func.count(Device.id)).where(Device.partner_pk == partner.id,
                                                                    Device.device_type_pk == dtype.id,
                                                                    Device.group_name == body.group)) or 0
            if not in_group:
                raise HTTPException(404, f"group {body.group} has no {deviceTypeId} device of this partner")
        for dev in devices:
            s.add(Deployment(image_pk=img.id, device_pk=dev.id))
        count = len(devices) + in_group
        if body.group:
            s.add(Deployment(image_pk=img.id, group_name=body.group))
        s.commit()
    log.info("partner %s: image %s pushed to %d device(s)", partnerId, imageId, count)
    return JSONResponse({"value": "Request accepted for processing", "devices": count}, status_code=202)


@router.get("/v1/ota/partners/{partnerId}/devices")
def partner_devices(request: Request, partnerId: str = PartnerId,
                    principal: Principal = Depends(authenticate)) -> List[Dict[str, Any]]:
    """The partner's devices with the last state each reported."""
    with _db(request).session() as s:
        partner = _partner(s, principal, partnerId)
        rows = s.execute(select(Device, DeviceType.device_type_id).join(DeviceType, DeviceType.id == Device.device_type_pk)
                         .where(Device.partner_pk == partner.id).order_by(Device.device_id)).all()
        return [device_json(dev, dtid) for dev, dtid in rows]


def device_json(dev: Device, device_type_id: str) -> Dict[str, Any]:
    """A device and its last reported state."""
    return {"deviceId": dev.device_id, "deviceTypeId": device_type_id, "group": dev.group_name,
            "state": dev.state, "versionNumber": dev.state_version_number, "message": dev.state_message,
            "updated": dev.state_updated.isoformat() if dev.state_updated else None}
