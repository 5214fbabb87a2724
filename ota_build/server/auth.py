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
import math
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from fastapi import HTTPException, Request
from sqlalchemy import select

from ota_build.server.models import Device, Partner, Token, utcnow

#: the scope key under which the request guard (server/guard.py) passes the principal it authenticated
PRINCIPAL_KEY = "ota.principal"
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


_DUMMY_HASH: List[str] = []


def dummy_hash() -> str:
    """A ``hash_secret`` value nothing matches, to check an unknown account's secrets against, so that
    an unknown user name costs the same scrypt work as a known one (no user-existence oracle)."""
    if not _DUMMY_HASH:
        _DUMMY_HASH.append(hash_secret(secrets.token_urlsafe(16)))
    return _DUMMY_HASH[0]


def login_keys(username: str, client_host: str) -> Tuple[str, str]:
    """The ``LoginThrottle`` keys of a login: (account, client address)."""
    return "user:" + username.strip().lower(), "ip:" + client_host


class LoginThrottle:
    """Failed-login counters per account and per client address (in each worker process).

    ``free`` failures of a key within ``window`` seconds cost nothing; each further one blocks the key
    for ``base`` * 2^n seconds (at most ``cap``), during which logins with it are answered 429 with
    ``Retry-After`` without checking the credentials. A success clears the account's counter (not the
    address's). At most ``max_keys`` keys are remembered (oldest dropped)."""

    def __init__(self, free_per_account: int = 5, free_per_client: int = 30, base: float = 2.0, cap: float = 300.0,
                 window: float = 900.0, max_keys: int = 100_000):
        self.free = {"user": free_per_account, "ip": free_per_client}
        self.base, self.cap, self.window, self.max_keys = base, cap, window, max_keys
        self._state: "OrderedDict[str, List[float]]" = OrderedDict()  # key -> [failures, last failure, blocked until]
        self._lock = threading.Lock()

    def retry_after(self, keys: Sequence[str]) -> int:
        """Seconds (rounded up) until a login with these keys is checked again; 0 when it is now."""
        now = time.monotonic()
        with self._lock:
            wait = max((self._state[k][2] - now for k in keys if k in self._state), default=0.0)
        return math.ceil(wait) if wait > 0 else 0

    def failed(self, keys: Sequence[str]) -> None:
        """Count a failed login for each key."""
        now = time.monotonic()
        with self._lock:
            for key in keys:
                count, last, _until = self._state.pop(key, [0, now, 0.0])
                count = 1 if now - last > self.window else count + 1
                free = self.free.get(key.split(":", 1)[0], 5)
                until = now + min(self.cap, self.base * 2 ** (count - free)) if count >= free else 0.0
                self._state[key] = [count, now, until]
            while len(self._state) > self.max_keys:
                self._state.popitem(last=False)

    def succeeded(self, keys: Sequence[str]) -> None:
        """Forget the failures of these keys."""
        with self._lock:
            for key in keys:
                self._state.pop(key, None)


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


#: the user name under which HTTP Basic carries an API token (``http://token:KEY@host/``)
BASIC_TOKEN_USER = "token"


def token_from_header(header: str, allow_basic: bool = False) -> Tuple[Optional[str], str]:
    """(token, problem) of an Authorization header: ``Bearer <token>``, or with ``allow_basic`` also HTTP
    Basic with user ``token`` and the token as password (for the seed tools, which can only put
    ``token:KEY@`` in a URL). The one reading of the header, for the dependencies below and the request
    guard (``server/guard.py``)."""
    if header.lower().startswith("bearer ") and header[7:].strip():
        return header[7:].strip(), ""
    if allow_basic:
        basic = parse_basic(header)
        if basic is not None:
            user, token = basic
            if user == BASIC_TOKEN_USER and token.strip():
                return token.strip(), ""
            return None, f"HTTP Basic carries a token as user '{BASIC_TOKEN_USER}'"
    return None, "a bearer token is required (Authorization: Bearer <token>)"


def _principal_of(request: Request, allow_basic: bool) -> Principal:
    cached = request.scope.get(PRINCIPAL_KEY)  # found by the request guard before the body was read
    if isinstance(cached, Principal):
        return cached
    token, problem = token_from_header(request.headers.get("authorization", ""), allow_basic)
    if token is None:
        if allow_basic:
            raise HTTPException(status_code=401, detail=problem, headers={"WWW-Authenticate": 'Basic realm="ota", Bearer'})
        raise _unauthorized(problem)
    principal = principal_for(request.app.state.db, token)
    if principal is None:
        raise _unauthorized("invalid or expired token")
    return principal


def authenticate(request: Request) -> Principal:
    """FastAPI dependency: the Principal of the request's bearer token, else 401 (the one the request guard
    found before the body was read, when it ran: ``server/guard.py``)."""
    return _principal_of(request, allow_basic=False)


def authenticate_or_basic(request: Request) -> Principal:
    """FastAPI dependency for the seed tools that cannot send a bearer header (seed 001's ``pack.py``,
    seed 002's ``publish.py``, seed 000's curl commands): the token as ``Authorization: Bearer <token>``
    or as HTTP Basic with user ``token`` and the token as password, so ``http://token:KEY@host:port``
    works unchanged in their URLs. Else 401."""
    return _principal_of(request, allow_basic=True)


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
