"""HTTP client of the Afero-compatible OTA API (ours, or any server with the same calls).

Every failure becomes one ``ServerError`` line with the HTTP status; the
access token, password and auth string never appear in messages or logs.
Connection errors and 502/503/504 are retried with exponential back-off.
Uploads are resumable: the upload session's id is kept in a small state file
next to the image, so a re-run after a crash or a dropped connection continues
where the server stopped receiving.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional

import requests

from .config import OtaConfig
from .errors import ServerError, UsageError
from .fsutil import atomic_write_text

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
RETRY_STATUSES = (502, 503, 504)


def _message(resp: requests.Response) -> str:
    try:
        doc = resp.json()
    except ValueError:
        text = resp.text.strip().splitlines()
        return text[0][:200] if text else resp.reason or ""
    if isinstance(doc, dict):
        for key in ("message", "error_description", "error", "detail"):
            if doc.get(key):
                return str(doc[key]).splitlines()[0][:300]
    return resp.reason or ""


def progress_bar(total: int, initial: int, desc: str) -> Any:
    """A tqdm bar on a terminal, nothing in CI logs or pipes."""
    from tqdm import tqdm

    quiet = not sys.stderr.isatty() or bool(os.environ.get("CI"))
    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                disable=quiet, leave=False)


class _Slice:
    """Bytes ``start..end`` (inclusive) of a file, read lazily: a streamed request body with a known length."""

    def __init__(self, path: str, start: int, end: int, bar: Any = None):
        self._fh = open(path, "rb")
        self._fh.seek(start)
        self._left = end - start + 1
        self._len = self._left
        self._bar = bar

    def __len__(self) -> int:
        return self._len

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes of the slice (b"" at its end)."""
        if self._left <= 0:
            self._fh.close()
            return b""
        want = self._left if size is None or size < 0 else min(size, self._left)
        chunk = self._fh.read(max(want, 0))
        self._left -= len(chunk)
        if self._bar is not None and chunk:
            self._bar.update(len(chunk))
        if not chunk:
            self._fh.close()
        return chunk


class OtaClient:
    """A logged-in session with the partner API of ``cfg.server``."""

    def __init__(self, cfg: OtaConfig, timeout: float = 60.0, retries: Optional[int] = None, backoff: float = 0.5):
        cfg.require("server", "partnerId", "username", "userpw", "auth-string")
        self.cfg = cfg
        self.base = cfg.server.rstrip("/")
        self.partner = cfg.partner_id
        self.timeout = timeout
        self.retries = int(os.environ.get("OTA_RETRIES", "5")) if retries is None else retries
        self.backoff = backoff
        self.http = requests.Session()
        self._token: Optional[str] = None

    # ------------------------------------------------------------------ plumbing
    def _url(self, path: str) -> str:
        return self.base + path

    def request(self, method: str, path: str, ok: "tuple[int, ...]" = (200,), auth: bool = True,
                **kwargs: Any) -> requests.Response:
        """Send a request (with retries); raise ServerError unless the status is in ``ok``."""
        if auth:
            headers = dict(kwargs.pop("headers", {}) or {})
            headers["Authorization"] = f"Bearer {self.token()}"
            kwargs["headers"] = headers
        kwargs.setdefault("timeout", self.timeout)
        resp = self._with_retries(lambda: self.http.request(method, self._url(path), **kwargs), f"{method} {path}")
        if resp.status_code not in ok:
            raise ServerError(f"{method} {path}: HTTP {resp.status_code}: {_message(resp)}")
        return resp

    def _with_retries(self, send: Callable[[], requests.Response], what: str) -> requests.Response:
        delay = self.backoff
        for attempt in range(self.retries + 1):
            try:
                resp = send()
            except (requests.ConnectionError, requests.Timeout) as exc:
                if attempt == self.retries:
                    raise ServerError(f"{what}: cannot reach {self.base}: {type(exc).__name__}") from None
                log.info("%s: %s; retrying in %.1fs", what, type(exc).__name__, delay)
            else:
                if resp.status_code not in RETRY_STATUSES or attempt == self.retries:
                    return resp
                log.info("%s: HTTP %d; retrying in %.1fs", what, resp.status_code, delay)
            time.sleep(delay)
            delay = min(delay * 2, 30.0)
        raise AssertionError("unreachable")  # pragma: no cover

    def token(self) -> str:
        """The access token (``POST /oauth/token``, fetched once)."""
        if self._token is None:
            creds = self.cfg.credentials
            resp = self.request("POST", "/oauth/token", auth=False,
                                headers={"Authorization": f"Basic {creds.auth_string}", "Accept": "application/json"},
                                data={"username": creds.username, "password": creds.password,
                                      "grant_type": "password"})
            token = resp.json().get("access_token")
            if not token:
                raise ServerError("POST /oauth/token: HTTP 200 but no access_token in the answer")
            self._token = token
        return self._token

    # ------------------------------------------------------------------ pool
    def record_exists(self, name: str, version: str, ota_type: int) -> bool:
        """Whether the pool has this name/version."""
        from urllib.parse import quote

        path = (f"/v1/ota/partners/{self.partner}/pool/types/{ota_type}/names/{quote(name, safe='')}"
                f"/versions/{quote(version, safe='')}/exists")
        return bool(self.request("GET", path).json().get("value"))

    def create_record(self, name: str, description: str, version: str, ota_type: int,
                      tags: Optional[List[str]] = None, version_number: Optional[str] = None) -> Dict[str, Any]:
        """Register a record; the server assigns ``id`` and ``versionNumber`` (or keeps ``version_number``
        when given and above the latest one)."""
        body: Dict[str, Any] = {"name": name, "description": description, "type": ota_type, "version": version,
                                "url": "", "tags": list(tags or [])}
        if version_number is not None:
            body["versionNumber"] = str(version_number)
        return self.request("POST", f"/v1/ota/partners/{self.partner}/pool", ok=(201,), json=body).json()

    def update_record(self, record: Dict[str, Any]) -> None:
        """PUT the record (with its url) back."""
        self.request("PUT", f"/v1/ota/partners/{self.partner}/pool/types/{record['type']}/versionNumbers/"
                            f"{record['versionNumber']}", ok=(204,), json=record)

    # ------------------------------------------------------------------ binaries
    def upload_binary(self, path: str, chunk_size: int = 8 * CHUNK, show_progress: bool = True) -> str:
        """Upload ``path`` resumably; returns the server's SHA-256 of the file."""
        size = os.path.getsize(path)
        if size == 0:
            raise UsageError(f"{path}: file is empty")
        state_path = path + ".upload"
        state = self._load_state(state_path, path)
        base = f"/v1/ota/partners/{self.partner}/binaries/uploads"
        offset = 0
        if state:
            resp = self.request("GET", f"{base}/{state['uploadId']}", ok=(200, 404))
            if resp.status_code == 200:
                offset = int(resp.json()["offset"])
                log.info("resuming upload of %s at byte %d of %d", path, offset, size)
            else:
                state = None
        if not state:
            upload_id = self.request("POST", base, ok=(201,), json={"size": size}).json()["uploadId"]
            stat = os.stat(path)
            state = {"uploadId": upload_id, "size": size, "mtime": stat.st_mtime_ns, "server": self.base}
            atomic_write_text(state_path, json.dumps(state))
        upload_id = state["uploadId"]
        bar = progress_bar(size, offset, os.path.basename(path)) if show_progress else None
        try:
            delay = self.backoff
            failures = 0
            while offset < size:
                end = min(offset + chunk_size, size) - 1
                try:
                    resp = self.http.put(self._url(f"{base}/{upload_id}"), data=_Slice(path, offset, end, bar),
                                         headers={"Authorization": f"Bearer {self.token()}",
                                                  "Content-Type": "application/octet-stream",
                                                  "Content-Range": f"bytes {offset}-{end}/{size}"},
                                         timeout=self.timeout)
                except (requests.ConnectionError, requests.Timeout) as exc:
                    resp = None  # type: ignore[assignment]
                    err = type(exc).__name__
                if resp is not None and resp.status_code in (200, 409) and "offset" in (resp.json() or {}):
                    offset = int(resp.json()["offset"])
                    failures, delay = 0, self.backoff
                    if bar is not None:
                        bar.n = offset
                        bar.refresh()
                    continue
                if resp is not None and resp.status_code not in RETRY_STATUSES:
                    raise ServerError(f"PUT {base}/…: HTTP {resp.status_code}: {_message(resp)}")
                failures += 1
                if failures > self.retries:
                    raise ServerError(f"upload of {path} interrupted at byte {offset} of {size}; run the same "
                                      f"command again to resume")
                log.warning("upload interrupted (%s); resuming in %.1fs", err if resp is None else
                            f"HTTP {resp.status_code}", delay)
                time.sleep(delay)
                delay = min(delay * 2, 30.0)
                offset = int(self.request("GET", f"{base}/{upload_id}").json()["offset"])
        finally:
            if bar is not None:
                bar.close()
        sha = self.request("POST", f"{base}/{upload_id}/complete").json()["value"]
        try:
            os.unlink(state_path)
        except FileNotFoundError:
            pass
        return sha

    def _load_state(self, state_path: str, path: str) -> Optional[Dict[str, Any]]:
        try:
            with open(state_path, encoding="utf-8") as fh:
                state = json.load(fh)
            stat = os.stat(path)
            if (state.get("size") == stat.st_size and state.get("mtime") == stat.st_mtime_ns
                    and state.get("server") == self.base and isinstance(state.get("uploadId"), str)):
                return state
        except (OSError, ValueError):
            pass
        return None

    def move_to_repository(self, sha256: str) -> str:
        """Publish an uploaded binary; returns its URL."""
        return self.request("POST", f"/v1/ota/partners/{self.partner}/binaries/moveToRepository",
                            json={"value": sha256}).json()["value"]

    # ------------------------------------------------------------------ firmware images
    def is_associated(self, device_type: str, ota_type: int, version_number: str) -> bool:
        """Whether that versionNumber is already associated with the device type."""
        resp = self.request("GET", f"/v1/ota/partners/{self.partner}/deviceTypes/{device_type}/firmwareImages/"
                                   f"types/{ota_type}/versionNumbers/{version_number}", ok=(200, 404))
        return resp.status_code == 200

    def associate(self, device_type: str, record: Dict[str, Any]) -> Dict[str, Any]:
        """Associate the record with the device type; returns the image (its ``id`` is the imageId)."""
        return self.request("POST", f"/v1/ota/partners/{self.partner}/deviceTypes/{device_type}/firmwareImages",
                            ok=(201,), json=record).json()

    def list_images(self, device_type: str, ota_type: int, page_size: int = 100) -> List[Dict[str, Any]]:
        """Every image of the device type, over all pages."""
        out: List[Dict[str, Any]] = []
        page = 0
        while True:
            doc = self.request("GET", f"/v1/ota/partners/{self.partner}/deviceTypes/{device_type}/firmwareImages/"
                                      f"types/{ota_type}", params={"page": page, "size": page_size}).json()
            out.extend(doc.get("content", []))
            page += 1
            if page >= int(doc.get("totalPages", 0)) or not doc.get("content"):
                return out

    def push(self, device_type: str, image_id: str, devices: List[str], group: Optional[str] = None) -> int:
        """Deploy an image to devices and/or a group; returns how many devices it reaches."""
        body: Dict[str, Any] = {}
        if len(devices) == 1 and not group:
            body["value"] = devices[0]  # exactly what the original tool sends
        else:
            body["devices"] = list(devices)
        if group:
            body["group"] = group
        resp = self.request("PUT", f"/v1/ota/partners/{self.partner}/deviceTypes/{device_type}/firmwareImages/"
                                   f"{image_id}/push", ok=(202,), json=body)
        return int(resp.json().get("devices", len(devices)))

    def devices(self) -> List[Dict[str, Any]]:
        """The partner's devices and their last reported state."""
        return self.request("GET", f"/v1/ota/partners/{self.partner}/devices").json()
