"""Secrets and bearer tokens.

Passwords and OAuth client secrets are stored as scrypt hashes; bearer tokens
(partner access tokens, long-lived API tokens, device tokens) are random and
stored as their SHA-256 only, so a copy of the database grants nothing.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Optional

from fastapi import HTTPException, Request
from sqlalchemy import select

from ota_build.server.models import Device, Partner, Token, utcnow

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2 ** 14, 8, 1
ACCESS_TOKEN_SECONDS = 3600


def hash_secret(secret: str) -> str:
    """scrypt hash of ``secret`` as ``scrypt$N$r$p$salt$hash`` (base64)."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(secret.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    b64 = lambda b: base64.b64encode(b).decode("ascii")  # noqa: E731
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt)}${b64(digest)}"


def check_secret(secret: str, stored: str) -> bool:
    """True if ``secret`` matches the ``hash_secret`` value ``stored`` (constant time)."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        computed = hashlib.scrypt(secret.encode("utf-8"), salt=base64.b64decode(salt), n=int(n), r=int(r),
                                  p=int(p), dklen=32)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(computed, base64.b64decode(digest))


def token_hash(token: str) -> str:
    """The stored form of a bearer token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    """A new random bearer token."""
    return secrets.token_urlsafe(32)


def parse_basic(header: Optional[str]) -> Optional["tuple[str, str]"]:
    """(clientId, clientSecret) from an ``Authorization: Basic`` header, or None."""
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        raw = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    client_id, sep, client_secret = raw.partition(":")
    return (client_id, client_secret) if sep else None


@dataclass(frozen=True)
class Principal:
    """Who a bearer token belongs to."""

    kind: str  # "partner" or "device"
    partner_pk: int
    partner_id: str
    device_pk: Optional[int] = None
    device_id: Optional[str] = None


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(status_code=401, detail=message, headers={"WWW-Authenticate": "Bearer"})


def principal_for(db, token: str) -> Optional[Principal]:  # noqa: ANN001
    """The Principal of a bearer token, or None if it is unknown or expired."""
    digest = token_hash(token)
    with db.session() as s:
        row = s.execute(
            select(Token, Partner.partner_id).join(Partner, Partner.id == Token.partner_pk)
            .where(Token.token_hash == digest)
        ).first()
        if row is None:
            return None
        tok, partner_id = row
        expires = tok.expires
        if expires is not None:
            if expires.tzinfo is None:  # SQLite drops the zone
                expires = expires.replace(tzinfo=dt.timezone.utc)
            if expires < utcnow():
                return None
        device_id = None
        if tok.device_pk is not None:
            device_id = s.get(Device, tok.device_pk).device_id  # type: ignore[union-attr]
        return Principal(tok.kind, tok.partner_pk, partner_id, tok.device_pk, device_id)


def authenticate(request: Request) -> Principal:
    """FastAPI dependency: the Principal of the request's bearer token, else 401."""
    header = request.headers.get("authorization", "")
    if not header.lower().startswith("bearer ") or not header[7:].strip():
        raise _unauthorized("a bearer token is required (Authorization: Bearer <token>)")
    principal = principal_for(request.app.state.db, header[7:].strip())
    if principal is None:
        raise _unauthorized("invalid or expired token")
    return principal


#: the user name under which HTTP Basic carries an API token (``http://token:KEY@host/``)
BASIC_TOKEN_USER = "token"


def authenticate_or_basic(request: Request) -> Principal:
    """FastAPI dependency for the seed tools that cannot send a bearer header (seed 001's ``pack.py``,
    seed 002's ``publish.py``, seed 000's curl commands): the token as ``Authorization: Bearer <token>``
    or as HTTP Basic with user ``token`` and the token as password, so ``http://token:KEY@host:port``
    works unchanged in their URLs. Else 401."""
    header = request.headers.get("authorization", "")
    basic = parse_basic(header)
    if basic is None:
        return authenticate(request)
    user, token = basic
    if user != BASIC_TOKEN_USER or not token.strip():
        raise HTTPException(status_code=401, detail=f"HTTP Basic carries a token as user '{BASIC_TOKEN_USER}'",
                            headers={"WWW-Authenticate": 'Basic realm="ota", Bearer'})
    principal = principal_for(request.app.state.db, token.strip())
    if principal is None:
        raise _unauthorized("invalid or expired token")
    return principal


def require_partner(principal: Principal, partner_id: Optional[str] = None) -> Principal:
    """403 unless ``principal`` is a partner token (of ``partner_id`` when given)."""
    if principal.kind != "partner":
        raise HTTPException(status_code=403, detail="a device token cannot do this; use a partner token")
    if partner_id is not None and principal.partner_id != partner_id:
        raise HTTPException(status_code=403, detail=f"this token does not belong to partner {partner_id}")
    return principal


def require_device(principal: Principal, device_id: str) -> Principal:
    """403 unless ``principal`` is the token of device ``device_id``."""
    if principal.kind != "device" or principal.device_id != device_id:
        raise HTTPException(status_code=403, detail=f"this token does not belong to device {device_id}")
    return principal
