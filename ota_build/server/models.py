"""Database tables (SQLAlchemy 2 declarative models).

The schema itself is created and changed only by the Alembic migrations in
``ota_build/server/migrations``; these classes must match them.
"""

from __future__ import annotations

import datetime as dt
from typing import Optional

from sqlalchemy import BigInteger, DateTime, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> dt.datetime:
    """The current time, timezone-aware UTC."""
    return dt.datetime.now(dt.timezone.utc)


class Base(DeclarativeBase):
    """Declarative base of every table."""


class Partner(Base):
    """A partner account: the username/password/auth-string/partnerId of partner-ota-conf.json."""

    __tablename__ = "partners"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    partner_id: Mapped[str] = mapped_column(String(64), unique=True)
    username: Mapped[str] = mapped_column(String(200), unique=True)
    password_hash: Mapped[str] = mapped_column(String(300))
    client_id: Mapped[str] = mapped_column(String(200))
    client_secret_hash: Mapped[str] = mapped_column(String(300))
    created: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class PartnerKey(Base):
    """A public key whose signatures the server accepts on this partner's uploads."""

    __tablename__ = "partner_keys"
    __table_args__ = (UniqueConstraint("partner_pk", "key_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    partner_pk: Mapped[int] = mapped_column(ForeignKey("partners.id", ondelete="CASCADE"))
    key_id: Mapped[str] = mapped_column(String(64))
    pem: Mapped[str] = mapped_column(Text)


class DeviceType(Base):
    """A device type (deviceTypeId) of a partner."""

    __tablename__ = "device_types"
    __table_args__ = (UniqueConstraint("partner_pk", "device_type_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    partner_pk: Mapped[int] = mapped_column(ForeignKey("partners.id", ondelete="CASCADE"))
    device_type_id: Mapped[str] = mapped_column(String(64))


class Device(Base):
    """A device, its group and the last state it reported."""

    __tablename__ = "devices"
    __table_args__ = (UniqueConstraint("partner_pk", "device_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    partner_pk: Mapped[int] = mapped_column(ForeignKey("partners.id", ondelete="CASCADE"))
    device_type_pk: Mapped[int] = mapped_column(ForeignKey("device_types.id", ondelete="CASCADE"))
    device_id: Mapped[str] = mapped_column(String(128))
    group_name: Mapped[Optional[str]] = mapped_column(String(64), nullable=True, index=True)
    state: Mapped[Optional[str]] = mapped_column(String(16), nullable=True)
    state_version_number: Mapped[Optional[int]] = mapped_column(BigInteger, nullable=True)  # BigInteger since 0004
    state_message: Mapped[Optional[str]] = mapped_column(String(500), nullable=True)
    state_updated: Mapped[Optional[dt.datetime]] = mapped_column(DateTime(timezone=True), nullable=True)


class Token(Base):
    """A bearer token (only its SHA-256 is stored): a partner's or a device's."""

    __tablename__ = "tokens"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # "partner" | "device"
    partner_pk: Mapped[int] = mapped_column(ForeignKey("partners.id", ondelete="CASCADE"))
    device_pk: Mapped[Optional[int]] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), nullable=True)
    expires: Mapped[Optional[dt.datetime]] = mapped_column(DateTime(timezone=True), nullable=True)
    created: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class OtaRecord(Base):
    """A record of the OTA pool (``POST /v1/ota/partners/P/pool``)."""

    __tablename__ = "ota_records"
    __table_args__ = (
        UniqueConstraint("partner_pk", "name", "ota_type", "version", name="uq_record_version"),
        UniqueConstraint("partner_pk", "ota_type", "version_number", name="uq_record_version_number"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    partner_pk: Mapped[int] = mapped_column(ForeignKey("partners.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    ota_type: Mapped[int] = mapped_column(Integer)
    version: Mapped[str] = mapped_column(String(64))
    version_number: Mapped[int] = mapped_column(BigInteger)
    description: Mapped[str] = mapped_column(String(500), default="")
    url: Mapped[str] = mapped_column(String(1000), default="")
    url2: Mapped[str] = mapped_column(String(1000), default="")
    tags: Mapped[str] = mapped_column(Text, default="[]")  # JSON list
    # the stored binary ``url`` names (migration 0004); set whenever ``url`` is, or when that binary arrives
    binary_pk: Mapped[Optional[int]] = mapped_column(ForeignKey("binaries.id", name="fk_ota_records_binary_pk"), nullable=True)
    created_ms: Mapped[int] = mapped_column(BigInteger)
    updated_ms: Mapped[int] = mapped_column(BigInteger)


class Binary(Base):
    """An uploaded, verified hub_update.bin, stored by SHA-256 of the whole file."""

    __tablename__ = "binaries"
    __table_args__ = (UniqueConstraint("partner_pk", "sha256"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    partner_pk: Mapped[int] = mapped_column(ForeignKey("partners.id", ondelete="CASCADE"))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    version_number: Mapped[int] = mapped_column(BigInteger)
    ota_type: Mapped[int] = mapped_column(Integer)
    in_repository: Mapped[int] = mapped_column(Integer, default=0)
    created: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class UploadSession(Base):
    """A resumable upload in progress; the bytes live in ``<data>/uploads/<id>.part``."""

    __tablename__ = "upload_sessions"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    partner_pk: Mapped[int] = mapped_column(ForeignKey("partners.id", ondelete="CASCADE"))
    size: Mapped[int] = mapped_column(BigInteger)
    created: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class FirmwareImage(Base):
    """The association of a pool record with a device type; its id is the deploy ``imageId``."""

    __tablename__ = "firmware_images"
    __table_args__ = (UniqueConstraint("device_type_pk", "ota_type", "version_number", name="uq_image_version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_type_pk: Mapped[int] = mapped_column(ForeignKey("device_types.id", ondelete="CASCADE"))
    record_pk: Mapped[int] = mapped_column(ForeignKey("ota_records.id", ondelete="CASCADE"))
    ota_type: Mapped[int] = mapped_column(Integer)
    version_number: Mapped[int] = mapped_column(BigInteger)
    created: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Deployment(Base):
    """A push of a firmware image to one device or to a group of devices."""

    __tablename__ = "deployments"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_pk: Mapped[int] = mapped_column(ForeignKey("firmware_images.id", ondelete="CASCADE"), index=True)
    device_pk: Mapped[Optional[int]] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), nullable=True,
                                                     index=True)
    group_name: Mapped[Optional[str]] = mapped_column(String(64), nullable=True, index=True)
    created: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Package(Base):
    """A seed-001 package version (``PUT /upload``)."""

    __tablename__ = "packages"
    __table_args__ = (UniqueConstraint("name", "branch", "version", name="uq_package_version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    branch: Mapped[str] = mapped_column(String(100))
    version: Mapped[str] = mapped_column(String(100))
    version_key: Mapped[str] = mapped_column(String(400), index=True)  # "C" collation on PostgreSQL (0002)
    content: Mapped[str] = mapped_column(Text)  # content.json, as sent
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    created: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class PackageOwner(Base):
    """Which partner owns a seed-001 package name (every branch and version of it).

    The first partner to store a version of a name owns it; other partners'
    uploads of that name are refused (403). Names stored before this table
    existed (migration 0003) are claimed by their next upload."""

    __tablename__ = "package_owners"
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    partner_pk: Mapped[int] = mapped_column(ForeignKey("partners.id", ondelete="CASCADE"), index=True)
    created: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
