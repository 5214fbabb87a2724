"""Administration: partner accounts, their signing keys, device types, devices and tokens.

Each function returns the values a person needs next (what goes into
partner-ota-conf.json, a device's token); the secrets are shown only here,
once, and stored hashed.
"""

from __future__ import annotations

import base64
import re
import secrets
import uuid
from typing import Dict, List, Optional

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from ota_build.core.errors import UsageError
from ota_build.server import auth
from ota_build.server.db import Database
from ota_build.server.models import Device, DeviceType, Partner, PartnerKey, Token
from ota_build.server.storage import key_id_of_pem

ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")  # matched against the whole string


def _check_id(value: str, field: str) -> str:
    if not ID_RE.fullmatch(value):
        raise UsageError(f"field '{field}': {value!r} must be 1-64 characters of A-Z a-z 0-9 . _ : -")
    return value


def _partner(s, partner_id: str) -> Partner:  # noqa: ANN001
    partner = s.scalar(select(Partner).where(Partner.partner_id == partner_id))
    if partner is None:
        raise UsageError(f"field 'partnerId': no partner {partner_id!r} (create it with 'ota-build admin partner')")
    return partner


def create_partner(db: Database, username: str, password: Optional[str] = None,
                   partner_id: Optional[str] = None) -> Dict[str, str]:
    """Create a partner account; returns username, userpw, auth-string and partnerId for the config."""
    if not username or len(username) > 200:
        raise UsageError("field 'username': must be 1-200 characters")
    partner_id = _check_id(partner_id or str(uuid.uuid4()), "partnerId")
    password = password or secrets.token_urlsafe(18)
    client_id, client_secret = partner_id, secrets.token_hex(16)
    with db.session() as s:
        s.add(Partner(partner_id=partner_id, username=username, password_hash=auth.hash_secret(password),
                      client_id=client_id, client_secret_hash=auth.hash_secret(client_secret)))
        try:
            s.commit()
        except IntegrityError:
            s.rollback()
            if s.scalar(select(Partner).where(Partner.username == username)) is not None:
                raise UsageError(f"field 'username': a partner with username {username!r} exists") from None
            raise UsageError(f"field 'partnerId': a partner with partnerId {partner_id!r} exists") from None
    auth_string = base64.b64encode(f"{client_id}:{client_secret}".encode()).decode("ascii")
    return {"username": username, "userpw": password, "auth-string": auth_string, "partnerId": partner_id}


def add_device_type(db: Database, partner_id: str, device_type_id: Optional[str] = None) -> Dict[str, str]:
    """Register a device type for a partner; returns its deviceTypeId."""
    device_type_id = _check_id(device_type_id or str(uuid.uuid4()), "deviceTypeId")
    with db.session() as s:
        partner = _partner(s, partner_id)
        s.add(DeviceType(partner_pk=partner.id, device_type_id=device_type_id))
        try:
            s.commit()
        except IntegrityError:
            raise UsageError(f"device type {device_type_id!r} already exists for {partner_id}") from None
    return {"partnerId": partner_id, "deviceTypeId": device_type_id}


def device_token(db: Database, partner_id: str, device_type_id: str, device_id: str,
                 group: Optional[str] = None) -> Dict[str, str]:
    """Register a device (or re-use it) and issue a new device token bound to it."""
    _check_id(device_id, "deviceId")
    if group is not None:
        _check_id(group, "group")
    with db.session() as s:
        partner = _partner(s, partner_id)
        dtype = s.scalar(select(DeviceType).where(DeviceType.partner_pk == partner.id,
                                                  DeviceType.device_type_id == device_type_id))
        if dtype is None:
            raise UsageError(f"field 'deviceTypeId': no device type {device_type_id!r} for {partner_id}")
        dev = s.scalar(select(Device).where(Device.partner_pk == partner.id, Device.device_id == device_id))
        if dev is None:
            dev = Device(partner_pk=partner.id, device_type_pk=dtype.id, device_id=device_id, group_name=group)
            s.add(dev)
            s.flush()
        elif dev.device_type_pk != dtype.id:
            raise UsageError(f"device {device_id!r} exists with another device type")
        elif group is not None:
            dev.group_name = group
        token = auth.new_token()
        s.add(Token(token_hash=auth.token_hash(token), kind="device", partner_pk=partner.id, device_pk=dev.id))
        s.commit()
    out = {"partnerId": partner_id, "deviceTypeId": device_type_id, "deviceId": device_id, "token": token}
    if group:
        out["group"] = group
    return out


def api_token(db: Database, partner_id: str) -> Dict[str, str]:
    """A long-lived partner token (for ``ota-build pack`` / ``PUT /upload`` and scripts)."""
    with db.session() as s:
        partner = _partner(s, partner_id)
        token = auth.new_token()
        s.add(Token(token_hash=auth.token_hash(token), kind="partner", partner_pk=partner.id))
        s.commit()
    return {"partnerId": partner_id, "token": token}


def add_partner_key(db: Database, partner_id: str, pem: str) -> Dict[str, str]:
    """Trust a public key for this partner's uploads (signatures are then required and checked)."""
    try:
        key_id = key_id_of_pem(pem)
    except Exception as exc:  # noqa: BLE001 - any parse failure is a usage error
        raise UsageError(f"not a supported public key: {exc}") from None
    with db.session() as s:
        partner = _partner(s, partner_id)
        s.add(PartnerKey(partner_pk=partner.id, key_id=key_id, pem=pem))
        try:
            s.commit()
        except IntegrityError:
            pass  # already trusted
    return {"partnerId": partner_id, "keyId": key_id}


def list_partners(db: Database) -> List[Dict[str, object]]:
    """Partners with their device types (no secrets)."""
    with db.session() as s:
        out: List[Dict[str, object]] = []
        for p in s.scalars(select(Partner).order_by(Partner.partner_id)):
            types = list(s.scalars(select(DeviceType.device_type_id).where(DeviceType.partner_pk == p.id)))
            out.append({"partnerId": p.partner_id, "username": p.username, "deviceTypes": types})
        return out
