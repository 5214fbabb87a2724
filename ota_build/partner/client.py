"""HTTP client of the Afero-compatible OTA API (ours, or any server with the same calls).

Every failure becomes one ``ServerError`` line with the HTTP status; the
access token, password and auth string never appear in messages or logs.
An answer that is not the OTA API's JSON (an HTML page from some other web
server) is reported as such, never printed.

Timeouts and retries are the transport's (``ota_build.partner.http``, from
``OTA_CONNECT_TIMEOUT``, ``OTA_READ_TIMEOUT``, ``OTA_RETRIES``): every attempt
has a connect and a read timeout; failures are retried with exponential
back-off, each retry announced by one WARNING line. A retry must not do a thing
twice, so idempotent calls (GET, HEAD, PUT, DELETE, and the POSTs marked
``retry_safe`` here: the token and moveToRepository) are retried after any
connection error, timeout or HTTP 502/503/504, other POSTs only when the
request cannot have reached the server (connection refused, name not found,
connect timeout).

Uploads are resumable: the upload session's id is kept in a small state file
next to the image, so a re-run after a crash or a dropped connection continues
where the server stopped receiving; within one run a failed chunk is resumed
from the offset the server reports.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import requests

from ota_build.core.config import NetworkSettings, OtaConfig
from ota_build.core.record import record_from_json, record_to_json
from ota_build.core.errors import ServerError, UsageError
from ota_build.core.files import atomic_write_text
from ota_build.partner.http import RETRY_STATUSES, OtaSession, describe, tls_failure

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
# Transport failures: no complete answer arrived (ConnectTimeout and ReadTimeout are in the first two).
TRANSPORT_ERRORS = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)
# The server verifies an image before it answers POST .../complete: allow it this speed on top of the read timeout.
VERIFY_BYTES_PER_SECOND = 20 * 1024 * 1024


def _content_type(resp: requests.Response) -> str:
    return (resp.headers.get("Content-Type") or "").split(";")[0].strip().lower()


def _json_body(resp: requests.Response) -> Any:
    """The parsed body when the answer is JSON, else None."""
    ctype = _content_type(resp)
    if ctype != "application/json" and not ctype.endswith("+json"):
        return None
    try:
        return resp.json()
    except ValueError:
        return None


def _not_ota(resp: requests.Response, base: str) -> str:
    """``HTTP <status> from <base>: not an OTA server response (<type>)``."""
    what = _content_type(resp) or ("empty" if not resp.content else "no content type")
    return f"HTTP {resp.status_code} from {base}: not an OTA server response ({what})"


def _message(resp: requests.Response, base: str) -> str:
    """One line for an unexpected answer: the status and the OTA API's message, or what the answer is."""
    doc = _json_body(resp)
    if not isinstance(doc, dict):
        return _not_ota(resp, base)
    for key in ("message", "error_description", "error", "detail"):
        if doc.get(key):
            return f"HTTP {resp.status_code}: " + str(doc[key]).splitlines()[0][:300]
    return f"HTTP {resp.status_code}: {(resp.reason or '')[:80]}"


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

    def __init__(self, cfg: OtaConfig, settings: Optional[NetworkSettings] = None):
        self.base = cfg.server_url()
        cfg.require("partnerId", "username", "userpw", "auth-string")
        self.cfg = cfg
        self.partner = cfg.partner_id
        self.settings = NetworkSettings.from_env() if settings is None else settings
        self.http = OtaSession(self.base, self.settings)
        self._token: Optional[str] = None

    # ------------------------------------------------------------------ plumbing
    def _url(self, path: str) -> str:
        return self.http.url(path)

    def _timeout(self, extra_read: float = 0.0) -> Tuple[float, float]:
        """``(connect, read)`` timeouts for requests."""
        return self.http.timeout(extra_read)

    def request(self, method: str, path: str, ok: "tuple[int, ...]" = (200,), auth: bool = True,
                retry_safe: Optional[bool] = None, **kwargs: Any) -> requests.Response:
        """Send a request (the transport retries it as far as safe); raise ServerError unless the status is in ``ok``.

        ``retry_safe`` says whether sending the request twice is harmless (default: whether the
        method is idempotent); see ``ota_build.partner.http`` for when a request is retried.
        """
        if auth:
            headers = dict(kwargs.pop("headers", {}) or {})
            headers["Authorization"] = f"Bearer {self.token()}"
            kwargs["headers"] = headers
        what = f"{method} {path}"
        resp = self.http.call(method, path, what=what, retry_safe=retry_safe, **kwargs)
        if resp.status_code not in ok:
            raise ServerError(f"{what}: {_message(resp, self.base)}")
        return resp

    def request_json(self, method: str, path: str, ok: "tuple[int, ...]" = (200,), keys: Sequence[str] = (),
                     **kwargs: Any) -> Any:
        """``request`` and the answer's JSON; ServerError unless it is JSON (an object with ``keys``, if given)."""
        resp = self.request(method, path, ok, **kwargs)
        doc = _json_body(resp)
        if doc is None or (keys and not (isinstance(doc, dict) and all(k in doc for k in keys))):
            raise ServerError(f"{method} {path}: {_not_ota(resp, self.base)}")
        return doc

    def token(self) -> str:
        """The access token (``POST /oauth/token``, fetched once; retried like a GET: a second token is harmless)."""
        if self._token is None:
            creds = self.cfg.credentials
            doc = self.request_json("POST", "/oauth/token", auth=False, retry_safe=True, keys=("access_token",),
                                    headers={"Authorization": f"Basic {creds.auth_string}",
                                             "Accept": "application/json"},
                                    data={"username": creds.username, "password": creds.password,
                                          "grant_type": "password"})
            self._token = str(doc["access_token"])
        return self._token

    # ------------------------------------------------------------------ pool
    def record_exists(self, name: str, version: str, ota_type: int) -> bool:
        """Whether the pool has this name/version."""
        from urllib.parse import quote

        path = (f"/v1/ota/partners/{self.partner}/pool/types/{ota_type}/names/{quote(name, safe='')}"
                f"/versions/{quote(version, safe='')}/exists")
        return bool(self.request_json("GET", path, keys=("value",))["value"])

    def create_record(self, name: str, description: str, version: str, ota_type: int,
                      tags: Optional[List[str]] = None, version_number: Optional[int] = None) -> Dict[str, Any]:
        """Register a record; the server assigns ``id`` and ``versionNumber`` (or keeps ``version_number``
        when given and above the latest one)."""
        body: Dict[str, Any] = {"name": name, "description": description, "type": ota_type, "version": version,
                                "url": "", "tags": list(tags or [])}
        if version_number is not None:
            body["versionNumber"] = str(version_number)
        return record_from_json(self.request_json("POST", f"/v1/ota/partners/{self.partner}/pool", ok=(201,),
                                                  keys=("id", "versionNumber"), json=body))

    def update_record(self, record: Dict[str, Any]) -> None:
        """PUT the record (with its url) back."""
        self.request("PUT", f"/v1/ota/partners/{self.partner}/pool/types/{record['type']}/versionNumbers/"
                            f"{record['versionNumber']}", ok=(204,), json=record_to_json(record))

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
            doc = _json_body(resp)
            if resp.status_code == 200 and isinstance(doc, dict) and "offset" in doc:
                offset = int(doc["offset"])
                log.info("resuming upload of %s at byte %d of %d", path, offset, size)
            else:
                state = None
        if not state:
            upload_id = self.request_json("POST", base, ok=(201,), keys=("uploadId",), json={"size": size})["uploadId"]
            stat = os.stat(path)
            state = {"uploadId": upload_id, "size": size, "mtime": stat.st_mtime_ns, "server": self.base}
            atomic_write_text(state_path, json.dumps(state))
        upload_id = state["uploadId"]
        bar = progress_bar(size, offset, os.path.basename(path)) if show_progress else None
        try:
            failures = 0
            timeout = self._timeout()
            while offset < size:
                end = min(offset + chunk_size, size) - 1
                try:
                    resp = self.http.put(self._url(f"{base}/{upload_id}"), data=_Slice(path, offset, end, bar),
                                         headers={"Authorization": f"Bearer {self.token()}",
                                                  "Content-Type": "application/octet-stream",
                                                  "Content-Range": f"bytes {offset}-{end}/{size}"},
                                         timeout=timeout, retries=0)  # resumed below, from the server's offset
                except requests.exceptions.SSLError as exc:
                    raise tls_failure(f"PUT {base}/…", self.base, exc) from None
                except TRANSPORT_ERRORS as exc:
                    problem = describe(exc, self.base, timeout)
                except requests.RequestException as exc:
                    raise ServerError(f"PUT {base}/…: {self.base}: {type(exc).__name__}") from None
                else:
                    doc = _json_body(resp)
                    if resp.status_code in (200, 409) and isinstance(doc, dict) and "offset" in doc:
                        offset = int(doc["offset"])
                        failures = 0
                        if bar is not None:
                            bar.n = offset
                            bar.refresh()
                        continue
                    if resp.status_code not in RETRY_STATUSES:
                        raise ServerError(f"PUT {base}/…: {_message(resp, self.base)}")
                    problem = f"HTTP {resp.status_code} from {self.base}"
                failures += 1
                if failures > self.settings.retries:
                    raise ServerError(f"upload of {path} interrupted at byte {offset} of {size} ({problem}); run "
                                      f"the same command again to resume")
                delay = self.settings.delay(failures - 1)
                log.warning("upload of %s interrupted at byte %d of %d (%s); retry %d of %d in %g s", path, offset,
                            size, problem, failures, self.settings.retries, delay)
                time.sleep(delay)
                offset = int(self.request_json("GET", f"{base}/{upload_id}", keys=("offset",))["offset"])
        finally:
            if bar is not None:
                bar.close()
        # the server verifies the whole image before it answers: give it time for that
        sha = self.request_json("POST", f"{base}/{upload_id}/complete", keys=("value",),
                                timeout=self._timeout(size / VERIFY_BYTES_PER_SECOND))["value"]
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
        """Publish an uploaded binary; returns its URL (retried like a GET: publishing twice is harmless)."""
        return self.request_json("POST", f"/v1/ota/partners/{self.partner}/binaries/moveToRepository",
                                 retry_safe=True, keys=("value",), json={"value": sha256})["value"]

    # ------------------------------------------------------------------ firmware images
    def is_associated(self, device_type: str, ota_type: int, version_number: int) -> bool:
        """Whether that versionNumber is already associated with the device type."""
        resp = self.request("GET", f"/v1/ota/partners/{self.partner}/deviceTypes/{device_type}/firmwareImages/"
                                   f"types/{ota_type}/versionNumbers/{version_number}", ok=(200, 404))
        return resp.status_code == 200

    def associate(self, device_type: str, record: Dict[str, Any]) -> Dict[str, Any]:
        """Associate the record with the device type; returns the image (its ``id`` is the imageId)."""
        return self.request_json("POST", f"/v1/ota/partners/{self.partner}/deviceTypes/{device_type}/firmwareImages",
                                 ok=(201,), keys=("id",), json=record_to_json(record))

    def list_images(self, device_type: str, ota_type: int, page_size: int = 100) -> List[Dict[str, Any]]:
        """Every image of the device type, over all pages."""
        out: List[Dict[str, Any]] = []
        page = 0
        while True:
            doc = self.request_json("GET", f"/v1/ota/partners/{self.partner}/deviceTypes/{device_type}/"
                                           f"firmwareImages/types/{ota_type}", keys=("content",),
                                    params={"page": page, "size": page_size})
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
        doc = self.request_json("PUT", f"/v1/ota/partners/{self.partner}/deviceTypes/{device_type}/firmwareImages/"
                                       f"{image_id}/push", ok=(202,), keys=(), json=body)
        return int(doc.get("devices", len(devices))) if isinstance(doc, dict) else len(devices)

    def devices(self) -> List[Dict[str, Any]]:
        """The partner's devices and their last reported state."""
        return self.request_json("GET", f"/v1/ota/partners/{self.partner}/devices")
