"""Seed 002's client (the original ``client/publish.py``): publish a manifest and two slots, then notify devices.

``--ota-host`` may carry the token as ``token:KEY@host`` (HTTP Basic with user ``token``), as the original client
sends it through its URL; otherwise the token comes from ``$OTA_API_TOKEN`` or a token file.
"""

from __future__ import annotations

import logging
import urllib.parse
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

import requests

from ota_build.core.errors import ServerError, UsageError

log = logging.getLogger(__name__)
TIMEOUT = (10, 600)


@dataclass(frozen=True)
class Endpoint:
    """The HTTP server and the token to use."""

    base_url: str
    host: str
    token: Optional[str]


def endpoint(ota_host: str, ota_port: int, token: Optional[str] = None) -> Endpoint:
    """``--ota-host``/``--ota-port`` as the original builds its URL (``http://<host>:<port>``), with the token
    taken out of ``token:KEY@host`` when present."""
    hostpart = ota_host
    if "://" in hostpart:
        hostpart = hostpart.split("://", 1)[1]
    userinfo, sep, host = hostpart.rpartition("@")
    if sep:
        user, _, key = userinfo.partition(":")
        if user != "token" or not key:
            raise UsageError("--ota-host: credentials in the host are token:KEY@host")
        token = urllib.parse.unquote(key)
    host = host.rstrip("/")
    if not host:
        raise UsageError("--ota-host: no host")
    literal = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return Endpoint(f"http://{literal}:{ota_port}", host.strip("[]"), token)


def _auth(ep: Endpoint) -> Optional[Tuple[str, str]]:
    return ("token", ep.token) if ep.token else None


def _check(resp: requests.Response, what: str) -> Dict[str, Any]:
    try:
        doc = resp.json()
    except ValueError:
        doc = {}
    if resp.status_code != 200:
        message = doc.get("message") if isinstance(doc, dict) else None
        raise ServerError(f"{what}: {resp.status_code}: {message or resp.reason}")
    return doc if isinstance(doc, dict) else {}


def publish(ep: Endpoint, publish_id: str, manifest: str, slot0: str, slot1: str) -> Dict[str, Any]:
    """``POST /publish`` with the three files; the server's JSON answer."""
    try:
        with open(manifest, "rb") as m, open(slot0, "rb") as s0, open(slot1, "rb") as s1:
            files = {"manifest": ("manifest", m), "slot0": ("slot0", s0), "slot1": ("slot1", s1)}
            resp = requests.post(ep.base_url + "/publish", data={"publish_id": publish_id}, files=files,
                                 auth=_auth(ep), timeout=TIMEOUT)
    except OSError as exc:
        if isinstance(exc, requests.RequestException):
            raise ServerError(f"publish: {ep.base_url}: {exc}") from None
        raise UsageError(f"{exc.filename}: {exc.strerror}") from None
    return _check(resp, "publish")


def notify(ep: Endpoint, publish_id: str, device_urls: Sequence[str]) -> Dict[str, Any]:
    """``PUT /notify``; the server's JSON answer with each device's outcome."""
    try:
        resp = requests.put(ep.base_url + "/notify", data={"publish_id": publish_id, "device_urls": ",".join(device_urls)},
                            auth=_auth(ep), timeout=TIMEOUT)
    except requests.RequestException as exc:
        raise ServerError(f"notify: {ep.base_url}: {exc}") from None
    return _check(resp, "notify")
