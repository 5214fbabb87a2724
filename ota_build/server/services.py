"""The server's rules without HTTP: records and their versionNumbers, binaries, resumable
upload sessions, associations, deploys, device reports and seed-001 packages.

Every function takes a SQLAlchemy ``Session`` (and the ``Storage`` when files are
involved) and raises ``ServiceError`` with an HTTP-neutral ``Kind``; the routers
(afero, device, packages, web) map it to a status code and their JSON shape.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import IO, Any, AsyncIterator, List, Optional, Tuple

from sqlalchemy import Select, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ota_build.core.errors import OtaError
from ota_build.core.names import check_name
from ota_build.core.ziputil import MAX_TOTAL, UnsafeZipError, check_zip
from ota_build.core.files import file_sha256
from ota_build.server import auth
from ota_build.server.models import (Binary, Deployment, Device, DeviceType, FirmwareImage, OtaRecord, Package, PackageOwner,
                                     Partner, PartnerKey, Token, UploadSession, utcnow)
from ota_build.server.storage import Storage, TooLarge, discard, verify_image
from ota_build.server.errors import Kind as Kind, ServiceError as ServiceError  # their home is errors.py

log = logging.getLogger(__name__)

REPO_URL_RE = re.compile(r"/v1/ota/partners/[^/]+/repository/([0-9a-f]{64})\Z")
MAX_OPEN_UPLOADS = 16  # unfinished resumable uploads per partner
UPLOAD_SESSION_HOURS = 24  # an unfinished resumable upload (and its .part file) is dropped after this
CREATE_ATTEMPTS = 10  # versionNumber assignment retries when concurrent creates collide
REQUIRED_KEYS = ("package", "version", "branch", "local", "remote", "sha256", "BeforeUpdate", "AfterUpdate",
                 "dependencies")


def _not_found(message: str) -> ServiceError:
    return ServiceError(Kind.NOT_FOUND, message)


def _conflict(message: str, **details: Any) -> ServiceError:
    return ServiceError(Kind.CONFLICT, message, **details)


def _now_ms() -> int:
    return int(time.time() * 1000)


# --------------------------------------------------------------------------- partners and tokens

def issue_partner_token(s: Session, username: str, client_id: str, client_secret: str, password: str) -> Optional[str]:
    """A new access token when the username, client credentials and password all match, else None."""
    partner = s.scalar(select(Partner).where(Partner.username == username))
    # Both secrets are always checked, an unknown user's against a dummy hash: every failure costs
    # the same two scrypt computations, so the time taken does not tell whether the user exists.
    client_ok = auth.check_secret(client_secret, partner.client_secret_hash if partner else auth.dummy_hash())
    password_ok = auth.check_secret(password, partner.password_hash if partner else auth.dummy_hash())
    ok = (partner is not None and secrets.compare_digest(partner.client_id.encode(), client_id.encode())
          and client_ok and password_ok)
    if not ok or partner is None:
        return None
    token = auth.new_token()
    s.add(Token(token_hash=auth.token_hash(token), kind="partner", partner_pk=partner.id,
                expires=utcnow() + dt.timedelta(seconds=auth.ACCESS_TOKEN_SECONDS)))
    s.commit()
    return token


def find_partner(s: Session, partner_pk: int, partner_id: str) -> Partner:
    """The partner row of an authenticated partner."""
    partner = s.get(Partner, partner_pk)
    if partner is None:  # pragma: no cover - token rows cascade with the partner
        raise _not_found(f"partner {partner_id} not found")
    return partner


def find_device_type(s: Session, partner_pk: int, device_type_id: str) -> DeviceType:
    """The partner's device type ``device_type_id``."""
    dtype = s.scalar(select(DeviceType).where(DeviceType.partner_pk == partner_pk,
                                              DeviceType.device_type_id == device_type_id))
    if dtype is None:
        raise _not_found(f"deviceTypeId {device_type_id} is not registered for this partner")
    return dtype


# --------------------------------------------------------------------------- records

@dataclass(frozen=True)
class RecordFields:
    """A record as a partner sends it (``version_number`` None: the server assigns one)."""

    name: str
    ota_type: int
    version: str
    description: str = ""
    url: str = ""
    url2: Optional[str] = None
    tags: List[str] = field(default_factory=list)
    version_number: Optional[int] = None


def sha_of_url(url: str) -> Optional[str]:
    """The SHA-256 named by a repository URL (``.../v1/ota/partners/P/repository/<sha256>``), else None."""
    m = REPO_URL_RE.search(url or "")
    return m.group(1) if m else None


def repository_url(base_url: str, partner_id: str, sha256: str) -> str:
    """The URL of a published binary, as a record's ``url`` names it."""
    return f"{base_url.rstrip('/')}/v1/ota/partners/{partner_id}/repository/{sha256}"


def _set_url(s: Session, rec: OtaRecord, url: str) -> None:
    """Set the record's URL and its link to the stored binary the URL names (if that binary exists)."""
    rec.url = url
    sha = sha_of_url(url)
    rec.binary_pk = None if sha is None else s.scalar(
        select(Binary.id).where(Binary.partner_pk == rec.partner_pk, Binary.sha256 == sha))


def binary_of(s: Session, rec: OtaRecord) -> Optional[Binary]:
    """The stored binary a record links to, or None."""
    return s.get(Binary, rec.binary_pk) if rec.binary_pk is not None else None


def record_exists(s: Session, partner_pk: int, ota_type: int, name: str, version: str) -> bool:
    """Whether the partner has a record of this type, name and version."""
    return s.scalar(select(OtaRecord.id).where(OtaRecord.partner_pk == partner_pk, OtaRecord.name == name,
                                               OtaRecord.ota_type == ota_type, OtaRecord.version == version)) is not None


def create_record(s: Session, partner_pk: int, fields: RecordFields) -> OtaRecord:
    """Create a record: its versionNumber is the highest of (partner, type) + 1, or the one asked for when
    that is above the highest. CONFLICT when the name/version exists or the number is not above."""
    now = _now_ms()
    for _attempt in range(CREATE_ATTEMPTS):
        if record_exists(s, partner_pk, fields.ota_type, fields.name, fields.version):
            raise _conflict(f"version {fields.version} of {fields.name} (type {fields.ota_type}) already exists")
        top: int = s.scalar(select(func.max(OtaRecord.version_number)).where(
            OtaRecord.partner_pk == partner_pk, OtaRecord.ota_type == fields.ota_type)) or 0
        number = top + 1
        if fields.version_number is not None:
            if fields.version_number <= top:
                raise _conflict(f"field 'versionNumber': {fields.version_number} is not above the latest ({top})")
            number = fields.version_number
        rec = OtaRecord(partner_pk=partner_pk, name=fields.name, ota_type=fields.ota_type, version=fields.version,
                        version_number=number, description=fields.description, url2=fields.url2 or "",
                        tags=json.dumps(fields.tags), created_ms=now, updated_ms=now)
        _set_url(s, rec, fields.url or "")
        s.add(rec)
        try:
            s.commit()
        except IntegrityError:
            s.rollback()
            continue  # raced with another create: re-check and retry
        log.info("partner #%d: record %s %s versionNumber %d", partner_pk, fields.name, fields.version, number)
        return rec
    raise _conflict("could not assign a versionNumber (too many concurrent creates); retry")


def update_record(s: Session, partner_pk: int, ota_type: int, version_number: int, fields: RecordFields) -> OtaRecord:
    """Update a record's url (and its binary link), url2, description and tags; name and version are fixed.

    CONFLICT when the name or version would change, or the url of a record that is associated with a
    device type (an associated image's binary is immutable: devices were offered exactly it)."""
    rec = s.scalar(select(OtaRecord).where(OtaRecord.partner_pk == partner_pk, OtaRecord.ota_type == ota_type,
                                           OtaRecord.version_number == version_number))
    if rec is None:
        raise _not_found(f"no record of type {ota_type} with versionNumber {version_number}")
    if fields.name != rec.name or fields.version != rec.version:
        raise _conflict("fields 'name' and 'version' cannot be changed")
    current = binary_of(s, rec)
    if current is not None and sha_of_url(fields.url or "") != current.sha256 and s.scalar(
            select(FirmwareImage.id).where(FirmwareImage.record_pk == rec.id).limit(1)) is not None:
        raise _conflict("field 'url': the record is associated with a device type, so its image cannot change "
                        "(create a new record for a new image)")
    _set_url(s, rec, fields.url or "")
    if fields.url2 is not None:
        rec.url2 = fields.url2
    rec.description = fields.description
    rec.tags = json.dumps(fields.tags)
    rec.updated_ms = _now_ms()
    s.commit()
    return rec


# --------------------------------------------------------------------------- binaries

def accept_binary(s: Session, storage: Storage, partner_pk: int, tmp: str, sha: str, size: int) -> None:
    """Verify an uploaded file (``tmp``, removed in any case) and store it under its SHA-256.

    INVALID when the image is rejected (header, digest, or signature when the partner registered keys).
    Records whose URL already names this binary are linked to it."""
    try:
        pems = list(s.scalars(select(PartnerKey.pem).where(PartnerKey.partner_pk == partner_pk)))
        s.rollback()  # end the read transaction: verifying may take seconds
        try:
            header = verify_image(tmp, pems)
        except OtaError as exc:
            reason = getattr(exc, "reason", "invalid")
            raise ServiceError(Kind.INVALID, f"image rejected ({reason}): {exc}") from None
        existing = s.scalar(select(Binary).where(Binary.partner_pk == partner_pk, Binary.sha256 == sha))
        if existing is None:
            binary = Binary(partner_pk=partner_pk, sha256=sha, size=size, version_number=header.version_number,
                            ota_type=header.ota_type, in_repository=0)
            s.add(binary)
            try:
                s.flush()
                _link_records(s, binary)
            except IntegrityError:  # pragma: no cover - the same bytes stored concurrently: same content, same name
                s.rollback()
            else:
                storage.publish(tmp, storage.blob_path(sha))
                try:
                    s.commit()
                except IntegrityError:  # pragma: no cover - see above
                    s.rollback()
                return
        if not storage.blob_path(sha).exists():
            storage.publish(tmp, storage.blob_path(sha))
    finally:
        discard(tmp)


def _link_records(s: Session, binary: Binary) -> None:
    """Link the partner's records whose URL names ``binary`` but that were written before it was stored."""
    rows = s.scalars(select(OtaRecord).where(OtaRecord.partner_pk == binary.partner_pk, OtaRecord.binary_pk.is_(None),
                                             OtaRecord.url.like(f"%/repository/{binary.sha256}"))).all()
    for rec in rows:
        if sha_of_url(rec.url) == binary.sha256:
            rec.binary_pk = binary.id


def move_to_repository(s: Session, partner_pk: int, sha256: str) -> Binary:
    """Publish an uploaded binary (it can be downloaded from the repository and associated)."""
    binary = s.scalar(select(Binary).where(Binary.partner_pk == partner_pk, Binary.sha256 == sha256))
    if binary is None:
        raise _not_found(f"field 'value': no uploaded binary with sha256 {sha256}")
    binary.in_repository = 1
    s.commit()
    return binary


def repository_binary(s: Session, partner_pk: int, sha256: str) -> Binary:
    """A published binary of the partner."""
    binary = s.scalar(select(Binary).where(Binary.partner_pk == partner_pk, Binary.sha256 == sha256,
                                           Binary.in_repository == 1))
    if binary is None:
        raise _not_found("no such image in the repository")
    return binary


# --------------------------------------------------------------------------- resumable uploads

def expire_uploads(s: Session, storage: Storage, now: Optional[dt.datetime] = None) -> int:
    """Drop the upload sessions (and their .part files) older than UPLOAD_SESSION_HOURS; how many."""
    cutoff = (now or utcnow()) - dt.timedelta(hours=UPLOAD_SESSION_HOURS)
    expired = s.scalars(select(UploadSession).where(UploadSession.created < cutoff)).all()
    for old in expired:
        storage.part_path(old.id).unlink(missing_ok=True)
        s.delete(old)
    s.commit()
    live = set(s.scalars(select(UploadSession.id)).all())
    for path in (storage.root / "uploads").glob("*.part"):  # a crash between a session's end and its file's
        with contextlib.suppress(FileNotFoundError):
            if path.stem not in live and path.stat().st_mtime < cutoff.timestamp():
                path.unlink()
    if expired:
        log.info("dropped %d resumable upload(s) unfinished after %d h", len(expired), UPLOAD_SESSION_HOURS)
    return len(expired)


def start_upload(s: Session, storage: Storage, partner_pk: int, size: int,
                 now: Optional[dt.datetime] = None) -> UploadSession:
    """Open a resumable upload of ``size`` bytes (after dropping expired ones).

    TOO_LARGE past the storage's limit, TOO_MANY when the partner has MAX_OPEN_UPLOADS unfinished."""
    if size > storage.max_upload_bytes:
        raise ServiceError(Kind.TOO_LARGE, f"field 'size': exceeds the limit of {storage.max_upload_bytes} bytes")
    expire_uploads(s, storage, now)
    open_uploads = s.scalar(select(func.count()).select_from(UploadSession)
                            .where(UploadSession.partner_pk == partner_pk)) or 0
    if open_uploads >= MAX_OPEN_UPLOADS:
        raise ServiceError(Kind.TOO_MANY, f"{open_uploads} unfinished uploads: finish one, or wait "
                                          f"{UPLOAD_SESSION_HOURS} h for them to expire")
    sess = UploadSession(id=secrets.token_urlsafe(24), partner_pk=partner_pk, size=size)
    if now is not None:
        sess.created = now
    storage.create_part(sess.id)
    s.add(sess)
    s.commit()
    return sess


def upload_session(s: Session, partner_pk: int, upload_id: str) -> UploadSession:
    """The partner's open upload session ``upload_id``."""
    sess = s.get(UploadSession, upload_id)
    if sess is None or sess.partner_pk != partner_pk:
        raise _not_found(f"no upload session {upload_id}")
    return sess


def upload_offset(storage: Storage, upload_id: str) -> int:
    """How many bytes of the upload the server has."""
    part = storage.part_path(upload_id)
    return part.stat().st_size if part.exists() else 0


async def append_chunk(storage: Storage, sess: UploadSession, start: int, end: int, total: int,
                       chunks: AsyncIterator[bytes]) -> int:
    """Append the bytes ``start``..``end`` (inclusive) of an upload of ``total`` bytes; the new offset.

    INVALID when the range is not within the upload or the body is longer than it; CONFLICT when
    another request is writing this upload, or when ``start`` is not the current offset (``details``
    has the ``offset`` to resume from). Bytes received before a dropped connection are kept (fsync'd)."""
    if total != sess.size or end < start or end >= total:
        raise ServiceError(Kind.INVALID, f"header 'Content-Range': must lie within the upload's {sess.size} bytes")
    with open(storage.part_path(sess.id), "ab") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise _conflict("another request is writing this upload") from None
        offset = fh.tell()
        if start != offset:
            raise _conflict(f"upload is at offset {offset}, not {start}", offset=offset)
        limit = end + 1
        try:
            async for chunk in chunks:
                if offset + len(chunk) > limit:
                    raise ServiceError(Kind.INVALID, "body is longer than the Content-Range")
                fh.write(chunk)
                offset += len(chunk)
        finally:
            fh.flush()
            os.fsync(fh.fileno())
    return offset


def complete_upload(s: Session, storage: Storage, partner_pk: int, upload_id: str) -> str:
    """Finish a resumable upload: verify and store its bytes (``accept_binary``); the SHA-256.

    CONFLICT when bytes are missing, or another request is completing or writing it. Accepted or
    rejected, the session ends once the answer is known. Crash-safe: the bytes stay in the session's
    ``.part`` file until the binary is stored (verified from a hard link in ``tmp/``), so after a kill
    at any point either the binary is stored or ``complete`` can simply be repeated."""
    sess = upload_session(s, partner_pk, upload_id)
    part = storage.part_path(upload_id)
    try:
        fh = open(part, "rb")
    except FileNotFoundError:
        raise _conflict(f"upload incomplete: 0 of {sess.size} bytes") from None
    with fh:
        try:  # the lock append_chunk takes: no chunk is written while the bytes are verified
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise _conflict("another request is writing or completing this upload") from None
        have = os.fstat(fh.fileno()).st_size
        if have != sess.size:
            raise _conflict(f"upload incomplete: {have} of {sess.size} bytes")
        fd, tmp = storage.temp_file()
        os.close(fd)
        os.unlink(tmp)
        os.link(part, tmp)  # a second name for the same bytes: publishing it leaves the session's intact
        sha = file_sha256(tmp)
        try:
            accept_binary(s, storage, partner_pk, tmp, sha, have)  # removes tmp in any case
        except ServiceError:
            _end_upload(s, storage, upload_id)  # rejected: the session is over
            raise
        _end_upload(s, storage, upload_id)
    return sha


def _end_upload(s: Session, storage: Storage, upload_id: str) -> None:
    """Drop a finished upload session, then its ``.part`` file (a crash in between leaves a file without
    a session, removed with the expired sessions' files)."""
    s.rollback()
    row = s.get(UploadSession, upload_id)
    if row is not None:
        s.delete(row)
        s.commit()
    storage.part_path(upload_id).unlink(missing_ok=True)


# --------------------------------------------------------------------------- firmware images and deploys

def _image_rows(device_type_pk: int, ota_type: int) -> Select:
    return (select(FirmwareImage, OtaRecord).join(OtaRecord, OtaRecord.id == FirmwareImage.record_pk)
            .where(FirmwareImage.device_type_pk == device_type_pk, FirmwareImage.ota_type == ota_type))


ImageRow = Tuple[FirmwareImage, OtaRecord, Optional[Binary]]


def image_by_version(s: Session, dtype: DeviceType, ota_type: int, version_number: int) -> ImageRow:
    """The image of this type and versionNumber associated with the device type."""
    row = s.execute(_image_rows(dtype.id, ota_type).where(FirmwareImage.version_number == version_number)).first()
    if row is None:
        raise _not_found(f"versionNumber {version_number} is not associated with {dtype.device_type_id}")
    img, rec = row
    return img, rec, binary_of(s, rec)


def list_images(s: Session, dtype: DeviceType, ota_type: int, page: int, size: int) -> Tuple[int, List[ImageRow]]:
    """(total, one page of images) of the device type, by versionNumber."""
    total = s.scalar(select(func.count(FirmwareImage.id)).where(
        FirmwareImage.device_type_pk == dtype.id, FirmwareImage.ota_type == ota_type)) or 0
    rows = s.execute(_image_rows(dtype.id, ota_type).order_by(FirmwareImage.version_number)
                     .offset(page * size).limit(size)).all()
    return total, [(img, rec, binary_of(s, rec)) for img, rec in rows]


def associate(s: Session, partner_pk: int, dtype: DeviceType, ota_type: int, version_number: Optional[int],
              name: str, version: str) -> ImageRow:
    """Associate a record (by versionNumber, else by name and version) with a device type.

    NOT_FOUND without such a record; INVALID unless its binary is in the repository and the binary's
    header has the record's type and versionNumber; CONFLICT when that versionNumber is associated already."""
    query = select(OtaRecord).where(OtaRecord.partner_pk == partner_pk, OtaRecord.ota_type == ota_type)
    if version_number is not None:
        query = query.where(OtaRecord.version_number == version_number)
    else:
        query = query.where(OtaRecord.name == name, OtaRecord.version == version)
    rec = s.scalar(query)
    if rec is None:
        raise _not_found("no such record in the pool (create it with POST .../pool first)")
    binary = binary_of(s, rec)
    if binary is None or not binary.in_repository:
        raise ServiceError(Kind.INVALID, "field 'url': the record has no uploaded image in the repository")
    if binary.version_number != rec.version_number or binary.ota_type != rec.ota_type:
        raise ServiceError(Kind.INVALID, f"the image's header says type {binary.ota_type} versionNumber "
                                         f"{binary.version_number}; the record says type {rec.ota_type} "
                                         f"versionNumber {rec.version_number}")
    img = FirmwareImage(device_type_pk=dtype.id, record_pk=rec.id, ota_type=rec.ota_type,
                        version_number=rec.version_number)
    s.add(img)
    try:
        s.commit()
    except IntegrityError:
        s.rollback()
        raise _conflict(f"type {rec.ota_type} versionNumber {rec.version_number} is already "
                        f"associated with {dtype.device_type_id}") from None
    return img, rec, binary


def push(s: Session, partner_pk: int, dtype: DeviceType, image_id: int, device_ids: List[str],
         group: Optional[str]) -> int:
    """Deploy an image to devices and/or a group; how many devices that reaches now.

    INVALID without any target; NOT_FOUND for an unknown image or device, or a group with no device
    of the type (a typo is not a silent success)."""
    if not device_ids and not group:
        raise ServiceError(Kind.INVALID, "field 'value': give a deviceId (or 'devices' or 'group')")
    img = s.get(FirmwareImage, image_id)
    if img is None or img.device_type_pk != dtype.id:
        raise _not_found(f"no image {image_id} for device type {dtype.device_type_id}")
    devices = []
    for device_id in device_ids:
        dev = s.scalar(select(Device).where(Device.partner_pk == partner_pk, Device.device_id == device_id))
        if dev is None or dev.device_type_pk != dtype.id:
            raise _not_found(f"device {device_id} is not a {dtype.device_type_id} device of this partner")
        devices.append(dev)
    in_group = 0
    if group:  # a group exists while a device is in it (ota-build admin device-token --group)
        in_group = s.scalar(select(func.count(Device.id)).where(Device.partner_pk == partner_pk,
                                                                Device.device_type_pk == dtype.id,
                                                                Device.group_name == group)) or 0
        if not in_group:
            raise _not_found(f"group {group} has no {dtype.device_type_id} device of this partner")
    for dev in devices:
        s.add(Deployment(image_pk=img.id, device_pk=dev.id))
    if group:
        s.add(Deployment(image_pk=img.id, group_name=group))
    s.commit()
    return len(devices) + in_group


def partner_devices(s: Session, partner_pk: int) -> List[Tuple[Device, str]]:
    """The partner's devices with their deviceTypeId, by deviceId."""
    rows = s.execute(select(Device, DeviceType.device_type_id).join(DeviceType, DeviceType.id == Device.device_type_pk)
                     .where(Device.partner_pk == partner_pk).order_by(Device.device_id)).all()
    return [(dev, dtid) for dev, dtid in rows]


# --------------------------------------------------------------------------- devices

def _deployed(dev: Device) -> Select:
    """Query of (image, record) pushed to ``dev`` or its group, whose stored binary's header has the image's
    type and versionNumber (a mismatching one is never offered nor served)."""
    targets = [Deployment.device_pk == dev.id]
    if dev.group_name:
        targets.append(Deployment.group_name == dev.group_name)
    return (select(FirmwareImage, OtaRecord).join(Deployment, Deployment.image_pk == FirmwareImage.id)
            .join(OtaRecord, OtaRecord.id == FirmwareImage.record_pk)
            .join(Binary, Binary.id == OtaRecord.binary_pk)
            .where(or_(*targets), FirmwareImage.device_type_pk == dev.device_type_pk,
                   # never offer a binary whose signed header says another image than the offer
                   Binary.version_number == FirmwareImage.version_number, Binary.ota_type == FirmwareImage.ota_type))


def update_for(s: Session, dev: Device, ota_type: int, above: int) -> Optional[Tuple[FirmwareImage, OtaRecord, Binary]]:
    """The newest image of ``ota_type`` pushed to the device (or its group) above versionNumber ``above``."""
    row = s.execute(_deployed(dev).where(FirmwareImage.ota_type == ota_type, FirmwareImage.version_number > above)
                    .order_by(FirmwareImage.version_number.desc()).limit(1)).first()
    if row is None:
        return None
    img, rec = row
    binary = binary_of(s, rec)
    return None if binary is None else (img, rec, binary)


def deployed_binary(s: Session, dev: Device, image_id: int) -> Optional[Binary]:
    """The binary of image ``image_id`` if it was pushed to the device (or its group), else None."""
    row = s.execute(_deployed(dev).where(FirmwareImage.id == image_id).limit(1)).first()
    return binary_of(s, row[1]) if row else None


def report_status(s: Session, dev: Device, state: str, version_number: Optional[int], message: str) -> None:
    """Store a device's last state."""
    dev.state = state
    dev.state_version_number = version_number
    dev.state_message = message
    dev.state_updated = utcnow()
    s.commit()


# --------------------------------------------------------------------------- the web page

def public_images(s: Session, limit: int = 500) -> List[ImageRow]:
    """Every associated image (what devices may download), by name and newest first."""
    rows = s.execute(select(FirmwareImage, OtaRecord).join(OtaRecord, OtaRecord.id == FirmwareImage.record_pk)
                     .order_by(OtaRecord.name, FirmwareImage.version_number.desc()).limit(limit)).all()
    return [(img, rec, binary_of(s, rec)) for img, rec in rows]


def public_packages(s: Session, limit: int = 500) -> List[Package]:
    """Every package version, newest first per package and branch."""
    return list(s.scalars(select(Package).order_by(Package.name, Package.branch, Package.version_key.desc())
                          .limit(limit)).all())


# --------------------------------------------------------------------------- seed-001 packages

def version_key(version: str) -> str:
    """A string that sorts like the version: numbers numerically, 0.0.10 after 0.0.9."""
    parts = []
    for token in re.findall(r"\d+|[A-Za-z]+", version):
        parts.append("n" + token.lstrip("0").zfill(12) if token.isdigit() else "a" + token.lower())
    return ".".join(parts)[:400]


def _owned_by_other(s: Session, name: str, partner_pk: int) -> bool:
    owner = s.get(PackageOwner, name)
    return owner is not None and owner.partner_pk != partner_pk


def _claim(s: Session, name: str, partner_pk: int) -> bool:
    """Make the partner the owner of an unowned package name; whether it owns it now."""
    if s.get(PackageOwner, name) is None:
        s.add(PackageOwner(name=name, partner_pk=partner_pk))
        try:
            s.commit()
        except IntegrityError:  # claimed concurrently: by whom is read below
            s.rollback()
    return not _owned_by_other(s, name, partner_pk)


@dataclass(frozen=True)
class StoredPackage:
    """A package version as stored."""

    package: str
    branch: str
    version: str
    sha256: str
    size: int

    @property
    def url(self) -> str:
        """Where it is served."""
        return f"/otafiles/{self.package}/{self.branch}/{self.package}-{self.branch}-{self.version}.zip"


_EXISTS_TIP = "add overwrite=1 (or force=1) to the URL to replace it"


def store_package(s: Session, storage: Storage, content_text: str, upload: IO[bytes], overwrite: bool,
                  partner_pk: int) -> StoredPackage:
    """Validate, check and store one package (content.json text and the zip's bytes).

    The first partner to store a package name owns it; another partner's upload of that name is
    FORBIDDEN. INVALID for bad content.json, a wrong sha256 or a non-zip; CONFLICT when the version
    exists and ``overwrite`` is off (``details``: ``TIP``); TOO_LARGE past the storage's limit. The zip
    must pass ``core.ziputil.check_zip`` (safe entry names, at least one entry, bounded expansion)."""
    try:
        content = json.loads(content_text)
    except ValueError:
        raise ServiceError(Kind.INVALID, "JSONDecodeError: field 'content' is not JSON") from None
    if not isinstance(content, dict):
        raise ServiceError(Kind.INVALID, "Json Content Error: field 'content' must be a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in content]
    if missing:
        raise ServiceError(Kind.INVALID, f"Json Content Error: field '{missing[0]}' is missing")
    try:
        pkg = check_name(content["package"], "package")
        branch = check_name(content["branch"], "branch")
        version = check_name(content["version"], "version")
        final = storage.package_path(pkg, branch, version)
    except (ValueError, TypeError) as exc:
        raise ServiceError(Kind.INVALID, str(exc)) from None
    sha_claimed = str(content["sha256"]).lower()
    forbidden = ServiceError(Kind.FORBIDDEN, f"Forbidden: package '{pkg}' belongs to another partner")
    # What exists is read before the owner: a name's claim is committed before any of its versions
    # appears, so a version seen here is never mistaken for a conflict of a name another partner owns.
    row = s.scalar(select(Package).where(Package.name == pkg, Package.branch == branch, Package.version == version))
    file_exists = final.exists()
    if _owned_by_other(s, pkg, partner_pk):
        raise forbidden
    s.rollback()  # end the read transaction: receiving the file may take long
    if file_exists and not overwrite:
        raise _conflict("File exists", TIP=_EXISTS_TIP)
    if row is not None and not overwrite:
        raise _conflict("Version exists", TIP=_EXISTS_TIP)
    try:
        tmp, sha, size = storage.copy_in(iter(lambda: upload.read(1024 * 1024), b""))
    except TooLarge as exc:
        raise ServiceError(Kind.TOO_LARGE, str(exc)) from None
    try:
        if sha != sha_claimed:
            raise ServiceError(Kind.INVALID, f"SHA256 Error: field 'sha256' is {sha_claimed}, the file's is {sha}")
        try:  # served as <package>-<branch>-<version>.zip and unzipped by devices (which check it again)
            check_zip(tmp, max_total=max(MAX_TOTAL, 4 * storage.max_upload_bytes))
        except UnsafeZipError as exc:
            raise ServiceError(Kind.INVALID, f"Zip Error: field 'file': {exc}") from None
        if not _claim(s, pkg, partner_pk):
            raise forbidden
        row = s.scalar(select(Package).where(Package.name == pkg, Package.branch == branch,
                                             Package.version == version))
        if row is None:
            s.add(Package(name=pkg, branch=branch, version=version, version_key=version_key(version),
                          content=content_text, sha256=sha, size=size))
        elif overwrite:
            row.content, row.sha256, row.size = content_text, sha, size
        else:
            s.rollback()
            raise _conflict("Version exists")
        try:
            s.flush()  # takes the row lock / unique check before the file appears
        except IntegrityError:
            s.rollback()
            raise _conflict("Version exists") from None
        storage.publish(tmp, final)
        s.commit()
    finally:
        discard(tmp)
    log.info("package %s %s %s stored (%d bytes)", pkg, branch, version, size)
    return StoredPackage(pkg, branch, version, sha, size)


def package_versions(s: Session, package: str, branch: Optional[str], version: Optional[str]) -> List[Package]:
    """Every version of ``package`` matching the filters, by branch and version."""
    q = select(Package).where(Package.name == package)
    if branch:
        q = q.where(Package.branch == branch)
    if version:
        q = q.where(Package.version == version)
    return list(s.scalars(q.order_by(Package.branch, Package.version_key)).all())
