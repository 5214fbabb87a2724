"""What the server's services refuse, without HTTP: a ``Kind`` and a ``ServiceError`` (the routers map each kind
to a status code). A module of its own so that the CoAP worker processes, which use ``Publications``, do not import
SQLAlchemy and FastAPI with ``services``."""

from __future__ import annotations

import enum
from typing import Any


class Kind(str, enum.Enum):
    """What went wrong, without HTTP (the routers map each kind to a status code)."""

    INVALID = "invalid"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    TOO_LARGE = "too_large"
    TOO_MANY = "too_many"


class ServiceError(Exception):
    """A refused request: ``kind``, a one-line ``message`` and optional ``details`` for the answer."""

    def __init__(self, kind: Kind, message: str, **details: Any):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.details = details
