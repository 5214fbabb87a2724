"""The OTA agent: ask, download (resumable), verify, install, report.

One ``check_once`` is the whole journey of seed 003's device side: hubby
downloads the image with header and verifies it, stores the image without the
header (``ota_type_5.img``, header kept as ``ota_type_5.hdr`` as Afero's
scripts expect), and otamgr hands it to the installer. A versionNumber not
greater than the installed one is refused (downgrade/replay) unless
``allowDowngrade`` is set.

HTTP uses the standard library's ``urllib`` so the agent needs no extra
package on the device (docs/decisions.md). The device token is sent only to the
configured server's origin (scheme, host, port), on every hop of a redirect;
an image URL elsewhere is fetched without it, and only from an origin listed in
``downloadOrigins``. Every offer is validated in ``parse_offer`` before use.
"""

from __future__ import annotations

import http.client
import io
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import IO, Any, Dict, Iterable, Optional, Set, Tuple, cast

from ota_build.core import bootenv
from ota_build.core.errors import CorruptError, OtaError, ServerError, VerifyError
from ota_build.core.files import atomic_write_bytes, atomic_write_text, file_sha256
from ota_build.core import header as hdr
from ota_build.core.package import check_header, check_length, verify_file
from ota_build.core.record import load_record
from ota_build.core.signing import Keyring
from ota_build.device.config import AgentConfig
from ota_build.device.archive import make_installer
from ota_build.device.installers import InstallError, SlotInstaller

log = logging.getLogger(__name__)

CHUNK = 1 << 20
USER_AGENT = "ota-agent/1"
MAX_OFFER_BYTES = 64 << 10  # an offer is a few hundred bytes of JSON
MAX_VERSION_NUMBER = 2**63 - 1
_DIGITS = re.compile(r"[0-9]{1,19}")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")

Origin = Tuple[str, str, int]


class BadOfferError(ServerError):
    """The server's answer to ``/update`` is not a usable offer (refused; nothing downloaded)."""


class OriginError(ServerError):
    """A URL (offer or redirect) points to an origin the agent may not fetch from."""


class EmptyPayloadError(CorruptError):
    """The verified image carries an empty payload: there is nothing to install."""

    reason = "empty-payload"


def fault(point: str) -> None:
    """Test hook: ``OTA_AGENT_FAULT=<point>`` kills the agent there with SIGKILL (a simulated power loss).

    Points: ``after-write`` (slot written and verified, not switched), ``after-switch`` (boot environment
    switched, the agent's state not yet updated), ``after-commit`` (committed, not yet reported)."""
    if os.environ.get("OTA_AGENT_FAULT") == point:
        log.warning("OTA_AGENT_FAULT=%s: killing the agent here", point)
        os.kill(os.getpid(), signal.SIGKILL)


def url_origin(url: str) -> Origin:
    """``(scheme, host, port)`` of an absolute http(s) URL; ValueError when it is not one."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an absolute http(s) URL")
    port = parts.port  # ValueError for a port out of range
    return scheme, parts.hostname.lower(), port if port is not None else (443 if scheme == "https" else 80)


@dataclass(frozen=True)
class Offer:
    """A validated answer to ``GET /v1/devices/{device}/update``."""

    version_number: int
    size: int
    sha256: str
    url: str
    image_id: str = ""
    version: str = ""


def _bad(what: str) -> BadOfferError:
    return BadOfferError(f"malformed offer: {what}; nothing was downloaded")


def parse_offer(body: bytes) -> Offer:
    """The offer in ``body`` (the JSON the server sent), or BadOfferError saying what is wrong.

    versionNumber: an integer 0..2^63-1 or its digits as a string; size: a positive integer; sha256: 64 hex
    digits; url: a path on the server (``/...``) or an absolute http(s) URL; imageId and version: optional.
    """
    try:
        doc = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise _bad("the answer is not JSON") from None
    if not isinstance(doc, dict):
        raise _bad(f"expected a JSON object, got {type(doc).__name__}")
    missing = [k for k in ("versionNumber", "size", "sha256", "url") if k not in doc]
    if missing:
        raise _bad("field(s) " + ", ".join(repr(k) for k in missing) + " missing")
    raw_vn = doc["versionNumber"]
    if isinstance(raw_vn, str) and _DIGITS.fullmatch(raw_vn):
        version_number = int(raw_vn)
    elif isinstance(raw_vn, int) and not isinstance(raw_vn, bool):
        version_number = raw_vn
    else:
        raise _bad(f"field 'versionNumber': {str(raw_vn)[:40]!r} is not a versionNumber")
    if not 0 <= version_number <= MAX_VERSION_NUMBER:
        raise _bad(f"field 'versionNumber': {version_number} is out of range")
    size = doc["size"]
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise _bad(f"field 'size': {str(size)[:40]!r} is not a positive integer")
    sha = doc["sha256"]
    if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
        raise _bad(f"field 'sha256': {str(sha)[:70]!r} is not 64 hex digits")
    url = doc["url"]
    if not isinstance(url, str) or not url or any(c.isspace() or ord(c) < 32 for c in url):
        raise _bad(f"field 'url': {str(url)[:80]!r} is not a URL")
    if not (url.startswith("/") and not url.startswith("//")):
        try:
            url_origin(url)
        except ValueError:
            raise _bad(f"field 'url': {url[:80]!r} is neither a path on the server nor an http(s) URL") from None
    image_id, version = doc.get("imageId", ""), doc.get("version", "")
    if not isinstance(image_id, (str, int)) or isinstance(image_id, bool) or not isinstance(version, (str, type(None))):
        raise _bad("field 'imageId' or 'version' has the wrong type")
    return Offer(version_number, size, sha.lower(), url, str(image_id), version or "")


@dataclass(frozen=True)
class Outcome:
    """Result of one check: ``state`` is no-update, installed, rejected or failed."""

    state: str
    version_number: Optional[int] = None
    message: str = ""
    exit_code: int = 0


class _OriginRedirectHandler(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to an allowed origin, and gives the token back only on the server's origin.

    The token is an unredirected header, so urllib never copies it to the next hop; this handler adds it
    again when (and only when) the next hop is the configured server's origin.
    """

    def __init__(self, api: "ServerApi"):
        super().__init__()
        self.api = api

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> Optional[urllib.request.Request]:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is None:
            return None
        self.api.check_allowed(new.full_url, f"redirect ({code}) from {req.full_url}")
        new.remove_header("Authorization")
        self.api.authorise(new)
        return new


class ServerApi:
    """The device half of the OTA service API (docs/server.md).

    The token goes to ``base``'s origin only; ``download_origins`` (``http(s)://host[:port]``) are the other
    origins images may come from (without the token).
    """

    def __init__(self, base: str, device: str, token: str, timeout: float = 30.0,
                 download_origins: Iterable[str] = ()):
        self.base = base.rstrip("/")
        self.device = device
        self.token = token
        self.timeout = timeout
        self.origin = url_origin(self.base)
        self.download_origins = {url_origin(o) for o in download_origins}
        self.opener = urllib.request.build_opener(_OriginRedirectHandler(self))
        self.retries = 5      # a dropped download is resumed this many times in a row
        self.backoff = 0.5    # seconds before the first retry, doubled for each next one

    def resolve(self, url: str) -> str:
        """An absolute URL: a path (``/...``) is on the server."""
        return url if url.startswith(("http://", "https://")) else self.base + url

    def check_allowed(self, url: str, what: str = "URL") -> None:
        """OriginError unless ``url`` is on the server's origin or a configured download origin."""
        try:
            origin = url_origin(url)
        except ValueError as exc:
            raise OriginError(f"{what}: {exc}") from None
        if origin != self.origin and origin not in self.download_origins:
            raise OriginError(f"{what} points to {origin[0]}://{origin[1]}:{origin[2]}, which is neither the server "
                              "nor in downloadOrigins; refused (the device token never leaves the server's origin)")

    def authorise(self, req: urllib.request.Request) -> None:
        """Add the device token to ``req`` if it goes to the server's origin (never copied to a redirect)."""
        if url_origin(req.full_url) == self.origin:
            req.add_unredirected_header("Authorization", f"Bearer {self.token}")

    def _request(self, method: str, path: str, body: Optional[bytes] = None,
                 headers: Optional[Dict[str, str]] = None) -> urllib.request.Request:
        url = self.resolve(path)
        self.check_allowed(url, f"{method} {url}")
        req = urllib.request.Request(url, data=body, method=method)
        self.authorise(req)
        req.add_header("User-Agent", USER_AGENT)
        for key, value in (headers or {}).items():
            req.add_header(key, value)
        return req

    def _open(self, req: urllib.request.Request):
        try:
            return self.opener.open(req, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            detail = exc.read(300).decode("utf-8", "replace").strip().replace("\n", " ")
            raise ServerError(f"{req.get_method()} {req.full_url}: HTTP {exc.code} {detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ServerError(f"{req.get_method()} {req.full_url}: cannot connect ({reason})") from None

    def check(self, ota_type: int, version_number: int) -> Optional[Offer]:
        """The update offered to this device (validated: BadOfferError), or None."""
        query = urllib.parse.urlencode({"type": ota_type, "versionNumber": version_number})
        dev = urllib.parse.quote(self.device, safe="")
        with self._open(self._request("GET", f"/v1/devices/{dev}/update?{query}")) as resp:
            if resp.status == 204:
                return None
            body = resp.read(MAX_OFFER_BYTES + 1)
        if len(body) > MAX_OFFER_BYTES:
            raise _bad(f"the answer is longer than {MAX_OFFER_BYTES} bytes")
        return parse_offer(body)

    def report(self, state: str, version_number: Optional[int], message: str = "") -> None:
        """Tell the server how this device is doing; never raises (logged)."""
        body = json.dumps({"state": state, "versionNumber": str(version_number or ""), "message": message[:500]})
        dev = urllib.parse.quote(self.device, safe="")
        req = self._request("POST", f"/v1/devices/{dev}/status", body.encode(), {"Content-Type": "application/json"})
        try:
            with self._open(req):
                pass
        except ServerError as exc:
            log.warning("could not report state %s: %s", state, exc)

    def stream(self, url: str, start: int, end: int) -> "RangeStream":
        """Bytes ``start``..``end`` of ``url`` as a file-like stream that resumes a dropped connection."""
        return RangeStream(self, url, start, end, self.retries, self.backoff)

    def download(self, url: str, dest: str, size: int) -> None:
        """Download ``url`` to ``dest``, resuming what ``dest`` already holds (the command installer's path).

        An OriginError (the URL or a redirect leaves the allowed origins) is raised at once, not retried.
        """
        have = os.path.getsize(dest) if os.path.exists(dest) else 0
        if have > size:
            os.unlink(dest)
            have = 0
        with self.stream(url, have, size) as src, open(dest, "r+b" if have else "wb") as out:
            out.seek(have)
            shutil.copyfileobj(src, out, CHUNK)
            out.flush()
            os.fsync(out.fileno())


class RangeStream(io.RawIOBase):
    """Bytes ``start``..``end`` of an image URL, read as a file; a dropped connection (reset, timeout, a body
    that ends early) is reopened with ``Range: bytes=<position>-`` and reading goes on, up to ``retries``
    times in a row with exponential back-off. A server that ignores ``Range`` (200) is read up to the
    position again. An OriginError is raised at once."""

    def __init__(self, api: ServerApi, url: str, start: int, end: int, retries: int = 5, backoff: float = 0.5):
        super().__init__()
        self.api, self.url, self.pos, self.end = api, url, start, end
        self.retries, self.backoff = retries, backoff
        self.resp: Any = None
        self.failures = 0

    def readable(self) -> bool:
        return True

    def _connect(self) -> None:
        headers = {"Range": f"bytes={self.pos}-"} if self.pos else {}
        resp = self.api._open(self.api._request("GET", self.url, headers=headers))
        if self.pos and resp.status != 206:
            log.info("server ignored the Range request; reading up to byte %d again", self.pos)
            skip = self.pos
            while skip:
                got = resp.read(min(CHUNK, skip))
                if not got:
                    raise ServerError(f"GET {self.url}: the body ended at byte {self.pos - skip}")
                skip -= len(got)
        elif self.pos:
            start = resp.headers.get("Content-Range", "").split(" ")[-1].split("-")[0]
            if start != str(self.pos):
                resp.close()
                raise ServerError(f"GET {self.url}: Content-Range {resp.headers.get('Content-Range')!r} "
                                  f"does not start at {self.pos}")
            log.info("resuming download at byte %d of %d", self.pos, self.end)
        self.resp = resp

    def _drop(self, exc: BaseException) -> None:
        if self.resp is not None:
            self.resp.close()
            self.resp = None
        self.failures += 1
        if self.failures > self.retries:
            raise ServerError(f"download failed after {self.retries} retries: {exc}") from None
        delay = self.backoff * 2 ** (self.failures - 1)
        log.warning("download interrupted at byte %d (%s); retrying in %.1fs", self.pos, exc, delay)
        time.sleep(delay)

    def readinto(self, buf: Any) -> int:
        """Read into ``buf``; 0 only at ``end``."""
        want = min(len(buf), self.end - self.pos)
        if want <= 0:
            return 0
        view = memoryview(buf)[:want]
        while True:
            try:
                if self.resp is None:
                    self._connect()
                n = self.resp.readinto(view)
                if not n:
                    raise ServerError(f"the connection ended at byte {self.pos} of {self.end}")
            except OriginError:
                raise
            except (ServerError, OSError, http.client.HTTPException) as exc:
                self._drop(exc)
                continue
            self.pos += n
            self.failures = 0
            return n

    def read_exact(self, size: int) -> bytes:
        """Exactly ``size`` bytes (fewer only at ``end``)."""
        out = bytearray()
        while len(out) < size:
            chunk = self.read(size - len(out))
            if not chunk:
                break
            out += chunk
        return bytes(out)

    def close(self) -> None:
        if self.resp is not None:
            self.resp.close()
            self.resp = None
        super().close()


class Agent:
    """One device's agent."""

    def __init__(self, config: AgentConfig, api: Optional[ServerApi] = None):
        self.config = config
        self.api = api or ServerApi(config.server, config.device, config.device_token,
                                    download_origins=config.download_origins)
        self.installer = make_installer(config.installer, config.cmdline, config.boot_limit)
        self.keyring = Keyring.from_files(config.public_keys)
        os.makedirs(config.state_dir, exist_ok=True)
        self.state_file = os.path.join(config.state_dir, "state.json")
        self.last: Dict[str, Any] = {}
        self.skipped: Set[int] = set()  # rolled-back versionNumbers already logged as not retried

    # -------------------------------------------------------------- state
    def _state(self) -> Dict[str, Any]:
        try:
            with open(self.state_file, encoding="utf-8") as fh:
                return json.load(fh)
        except (FileNotFoundError, ValueError):
            return {}

    def _save_state(self, **values: Any) -> None:
        state = self._state()
        state.update(values)
        for key in [k for k, v in values.items() if v is None]:
            del state[key]
        atomic_write_text(self.state_file, json.dumps(state, indent=2, sort_keys=True) + "\n", durable=True)

    def installed_record(self) -> Dict[str, Any]:
        """The record installed in the running image (``/etc/full_ota_record.json``)."""
        return load_record(self.config.record)

    def current_version_number(self) -> int:
        """The higher of the running image's versionNumber and the last one this agent installed."""
        running: int = self.installed_record()["versionNumber"]
        state = self._state()
        pending = int((state.get("pending") or {}).get("versionNumber", 0))
        return max(running, int(state.get("installedVersionNumber", 0)), pending)

    def info(self) -> Dict[str, Any]:
        """What the local API's /getInfo returns."""
        record = self.installed_record()
        state = self._state()
        return {
            "device": self.config.device,
            "description": self.config.description,
            "version": record.get("version"),
            "versionNumber": str(self.current_version_number()),
            "runningVersionNumber": str(record["versionNumber"]),
            "lastState": state.get("lastState"),
            "lastMessage": state.get("lastMessage"),
            "pendingSlot": (state.get("pending") or {}).get("slot"),
            "failedVersionNumbers": state.get("failedVersionNumbers", []),
            "packages": self.config.packages,
        }

    # -------------------------------------------------------------- hooks
    def _hook(self, name: str, record_name: str) -> None:
        pkg = self.config.package_for(record_name) or {}
        command = pkg.get(name)
        if not command:
            return
        log.info("running %s: %s", name, command)
        proc = subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True, timeout=600, check=False)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
            raise InstallError(f"{name} command exited {proc.returncode}: {last}")

    # -------------------------------------------------------------- the journey
    def _finish(self, outcome: Outcome) -> Outcome:
        self.last = {"state": outcome.state, "message": outcome.message}
        self._save_state(lastState=outcome.state, lastMessage=outcome.message)
        if outcome.state != "no-update":
            self.api.report(outcome.state, outcome.version_number, outcome.message)
        return outcome

    def _refuse(self, offered: Optional[int], exc: OtaError, reason: str) -> Outcome:
        """Log one line for a refused offer or image and report it; nothing was installed."""
        log.error("refused the image offered as versionNumber %s: %s: %s; nothing was installed", offered, reason, exc)
        return self._finish(Outcome("rejected", offered, f"{reason}: {exc}", exc.exit_code))

    def check_once(self) -> Outcome:
        """Settle a pending switch (commit or roll-back report); else ask for an update and install it."""
        settled = self.settle()
        if settled is not None:
            return settled
        cfg = self.config
        current = self.current_version_number()
        try:
            offer = self.api.check(cfg.ota_type, current)
        except BadOfferError as exc:
            log.error("refused the offer: %s", exc)
            return self._finish(Outcome("rejected", None, f"bad-offer: {exc}", exc.exit_code))
        if offer is None:
            log.info("no update for %s (versionNumber %d)", cfg.device, current)
            return self._finish(Outcome("no-update", current))
        offered = offer.version_number
        if offered in self._state().get("failedVersionNumbers", []):
            if offered not in self.skipped:
                log.warning("versionNumber %d rolled back on this device before; not installing it again "
                            "(deploy a newer image)", offered)
                self.skipped.add(offered)
            return Outcome("no-update", current, f"versionNumber {offered} rolled back before; not retried")
        log.info("update offered: version %s, versionNumber %d, %d bytes", offer.version, offered, offer.size)
        url = self.api.resolve(offer.url)
        try:
            self.api.check_allowed(url, "the offer's url")
        except OriginError as exc:
            return self._refuse(offered, exc, "bad-origin")
        if isinstance(self.installer, SlotInstaller):
            return self._stream_install(offer, url, current)
        return self._file_install(offer, url, current)

    def _hdr_path(self) -> str:
        return os.path.join(self.config.state_dir, f"ota_type_{self.config.ota_type}.hdr")

    def _stream_install(self, offer: Offer, url: str, current: int) -> Outcome:
        """Header first (verified before any payload byte is written), then the payload straight from the
        network into the inactive slot while hashing it; the switch only on a matching SHA-256."""
        cfg = self.config
        installer = self.installer
        assert isinstance(installer, SlotInstaller)
        offered = offer.version_number
        slot = installer.inactive_slot()
        ident = {"imageId": offer.image_id, "sha256": offer.sha256, "size": offer.size, "versionNumber": offered,
                 "slot": slot}
        progress = self._state().get("install") or {}
        done = int(progress.get("done", 0)) if installer.resumable and \
            {k: progress.get(k) for k in ident} == ident and os.path.exists(self._hdr_path()) else 0
        minimum = None if cfg.allow_downgrade else current + 1
        self.api.report("downloading", offered)
        stream: Optional[RangeStream] = None
        try:
            if done:
                with open(self._hdr_path(), "rb") as fh:
                    raw = fh.read()
                header = hdr.parse(raw)
                stream = self.api.stream(url, header.header_length + done, offer.size)
            else:
                stream = self.api.stream(url, 0, offer.size)
                prefix = stream.read_exact(hdr.FIXED_LENGTH)
                raw = prefix + stream.read_exact(hdr.peek_length(prefix) - len(prefix))
                header = hdr.parse(raw)
            check_header(header, self.keyring, cfg.ota_type, minimum, cfg.verify_backend, offered)
            check_length(header, offer.size)
            if header.payload_length == 0:
                raise EmptyPayloadError("the image's payload is empty (0 bytes)")
        except (OriginError, VerifyError, ServerError) as exc:
            if stream is not None:
                stream.close()
            if isinstance(exc, OriginError):
                return self._refuse(offered, exc, "bad-origin")
            if isinstance(exc, VerifyError):
                self._save_state(install=None)
                return self._refuse(offered, exc, exc.reason)
            return self._finish(Outcome("failed", offered, f"download: {exc}", exc.exit_code))
        with stream:
            if not done:  # kept beside the slot, as Afero's scripts keep it; the only copy of the image here
                atomic_write_bytes(self._hdr_path(), raw, durable=True)
                self._save_state(install=dict(ident, done=0))
            record_name = self.installed_record().get("name", "")
            self.api.report("installing", offered)

            def checkpoint(count: int) -> None:
                self._save_state(install=dict(ident, done=count))

            try:
                self._hook("BeforeUpdate", record_name)
                digest, _count = installer.stream_into(slot, cast(IO[bytes], stream), header.payload_length, done, checkpoint,
                                                       expected=header.payload_sha256)
            except InstallError as exc:
                log.error("install of versionNumber %d failed: %s", offered, exc)
                self._save_state(install=None)
                return self._finish(Outcome("failed", offered, str(exc), exc.exit_code))
            except OriginError as exc:
                return self._refuse(offered, exc, "bad-origin")
            except ServerError as exc:  # the slot keeps what it holds; the next check resumes there
                return self._finish(Outcome("failed", offered, f"download: {exc}", exc.exit_code))
        if digest != header.payload_sha256:
            marks = dict(self._state().get("badSlots", {}), **{slot: offered})
            self._save_state(install=None, badSlots=marks)
            corrupt = CorruptError(f"the payload streamed into slot {slot} does not match the signed SHA-256; "
                                   "the slot is marked bad and the boot slot was not switched")
            return self._refuse(offered, corrupt, corrupt.reason)
        fault("after-write")
        bad = self._state().get("badSlots", {})
        bad.pop(slot, None)
        self._save_state(install=None, badSlots=bad, pending={
            "slot": slot, "versionNumber": offered, "fromSlot": installer.active_slot(),
            "bootId": self._boot_id(), "switched": False})
        return self._switch(record_name)

    def _switch(self, record_name: str) -> Outcome:
        """The contract's switch of the pending slot (verified), then pending-reboot."""
        installer = self.installer
        assert isinstance(installer, SlotInstaller)
        pending = self._state()["pending"]
        slot, version_number = pending["slot"], int(pending["versionNumber"])
        try:
            installer.switch(slot)
            fault("after-switch")
            self._save_state(pending=dict(pending, switched=True))
            self._hook("AfterUpdate", record_name)
        except InstallError as exc:
            log.error("switching to slot %s failed: %s", slot, exc)
            return self._finish(Outcome("failed", version_number, str(exc), exc.exit_code))
        detail = f"wrote slot {slot} and switched the boot slot to it; commits after the reboot"
        log.info("installed versionNumber %d into slot %s: waiting for the reboot", version_number, slot)
        outcome = self._finish(Outcome("pending-reboot", version_number, detail))
        self._reboot(f"into slot {slot} for versionNumber {version_number}")
        return outcome

    def _reboot(self, why: str) -> None:
        """Run ``rebootCommand`` after the outcome was reported; without one, someone else reboots.

        A failing command is one log line: the state stays, the next check tries again.
        """
        command = self.config.reboot_command
        if not command:
            return
        log.info("rebooting %s: %s", why, " ".join(command))
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.error("rebootCommand failed (%s): the device must be rebooted to go on", exc)
            return
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
            log.error("rebootCommand exited %d (%s): the device must be rebooted to go on", proc.returncode, last)

    def _boot_id(self) -> str:
        try:
            with open(self.config.boot_id_file, encoding="utf-8") as fh:
                return fh.read().strip()
        except OSError:
            return ""

    def settle(self) -> Optional[Outcome]:
        """Bring a pending switch to its end, per the A/B boot contract; None when nothing is pending.

        Same boot as the switch: pending-reboot (the switch is redone if a power loss interrupted it).
        Booted into the new slot: health check, then commit and ``installed`` (or ``failed`` without commit:
        the boot script falls back after bootLimit boots). Back on another slot: ``rolled-back``; that
        versionNumber is never installed again automatically. With ``rebootCommand`` the agent reboots
        after pending-reboot and after a failed health check (the latter at most bootLimit times).
        """
        state = self._state()
        pending = state.get("pending")
        installer = self.installer
        if not isinstance(installer, SlotInstaller):
            return None
        if not pending:
            return self._settle_unrecorded()
        slot, version_number = pending["slot"], int(pending["versionNumber"])
        boot_id = self._boot_id()
        same_boot = bool(boot_id) and boot_id == pending.get("bootId")
        running = installer.active_slot()
        if same_boot or (not boot_id and running != slot):
            env = installer.boot_env.read_all()
            if not pending.get("switched") or installer.boot_env.boot_order(list(installer.slots), env)[0] != slot:
                log.info("the switch to slot %s was interrupted; switching again", slot)
                return self._switch(self.installed_record().get("name", ""))
            outcome = self._finish(Outcome("pending-reboot", version_number,
                                           f"slot {slot} holds versionNumber {version_number}; waiting for the reboot"))
            self._reboot(f"into slot {slot} for versionNumber {version_number} (still pending)")
            return outcome
        if running != slot:
            if not pending.get("switched"):  # power lost before the switch, then a reboot: switch now
                log.info("the switch to slot %s was interrupted before a reboot; switching again", slot)
                self._save_state(pending=dict(pending, bootId=boot_id))
                return self._switch(self.installed_record().get("name", ""))
            failed = sorted(set(state.get("failedVersionNumbers", [])) | {version_number})
            self._save_state(pending=None, failedVersionNumbers=failed)
            message = (f"versionNumber {version_number} did not come up in slot {slot}; the device runs slot "
                       f"{running} again and will not retry it")
            log.error("rolled back: %s", message)
            return self._finish(Outcome("rolled-back", version_number, message, 1))
        env = installer.boot_env.read_all()
        if env.get(bootenv.UPGRADE_AVAILABLE) == "1":
            unhealthy = self._check_health_and_commit(slot, version_number, env)
            if unhealthy is not None:
                return unhealthy
        self._save_state(pending=None, installedVersionNumber=version_number)
        log.info("committed versionNumber %d in slot %s", version_number, slot)
        return self._finish(Outcome("installed", version_number, f"running slot {slot}, committed"))

    def _check_health_and_commit(self, slot: str, version_number: int, env: Dict[str, str]) -> Optional[Outcome]:
        """Report committing, run the health check, commit ``slot``. Returns the ``failed`` outcome (after
        which the agent reboots, with rebootCommand) when it is not healthy, else None."""
        installer = self.installer
        assert isinstance(installer, SlotInstaller)
        self.api.report("committing", version_number)
        healthy, why = self._health_check(version_number)
        if not healthy:
            log.error("health check of versionNumber %d in slot %s failed (%s): not committing; the boot script "
                      "falls back after %d boots", version_number, slot, why, installer.boot_limit)
            outcome = self._finish(Outcome("failed", version_number, f"health check failed: {why}; not committed", 1))
            self._reboot(f"after the failed health check (boot attempts of slot {slot} left: "
                         f"{env.get(bootenv.left_variable(slot), '?')})")
            return outcome
        installer.boot_env.commit(slot, installer.boot_limit)
        fault("after-commit")
        return None

    def _settle_unrecorded(self) -> Optional[Outcome]:
        """The running slot is the boot environment's uncommitted new slot, but this agent's state does not
        say it installed it: the state directory is in the slot (each rootfs has its own) and the agent
        that wrote the slot ran in the other one. The boot environment is shared, so it decides: health
        check, commit, ``installed`` with the running image's versionNumber. None when there is nothing
        to settle (committed, or not booted into the new slot)."""
        installer = self.installer
        assert isinstance(installer, SlotInstaller)
        env = installer.boot_env.read_all()
        if env.get(bootenv.UPGRADE_AVAILABLE) != "1":
            return None
        running = installer.active_slot()
        if installer.boot_env.boot_order(list(installer.slots), env)[0] != running:
            return None
        version_number = int(self.installed_record()["versionNumber"])
        log.info("running the uncommitted slot %s (versionNumber %d), installed by the agent of the other slot",
                 running, version_number)
        unhealthy = self._check_health_and_commit(running, version_number, env)
        if unhealthy is not None:
            return unhealthy
        self._save_state(installedVersionNumber=version_number)
        log.info("committed versionNumber %d in slot %s", version_number, running)
        return self._finish(Outcome("installed", version_number, f"running slot {running}, committed"))

    def _health_check(self, version_number: int) -> "tuple[bool, str]":
        """Run ``healthCheck`` (exit 0 = healthy); without one, healthy when the server was reached."""
        command = self.config.health_check
        if not command:
            try:
                self.api.check(self.config.ota_type, version_number)
            except ServerError as exc:
                return False, f"the server could not be reached: {exc}"
            return True, "the server was reached"
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return False, f"{command[0]}: {exc}"
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
            return False, f"{os.path.basename(command[0])} exited {proc.returncode}: {last}"
        return True, "healthCheck passed"

    def _file_install(self, offer: Offer, url: str, current: int) -> Outcome:
        """The command installer's path: the whole file downloaded (resumable), verified, payload extracted."""
        cfg = self.config
        offered = offer.version_number
        part = os.path.join(cfg.state_dir, "hub_update.bin.part")
        meta = os.path.join(cfg.state_dir, "download.json")
        ident = {"imageId": offer.image_id, "sha256": offer.sha256, "size": offer.size}
        try:
            with open(meta, encoding="utf-8") as fh:
                if json.load(fh) != ident and os.path.exists(part):
                    os.unlink(part)  # a partial download of another image
        except (FileNotFoundError, ValueError):
            if os.path.exists(part):
                os.unlink(part)
        atomic_write_text(meta, json.dumps(ident), durable=True)
        self.api.report("downloading", offered)
        try:
            self.api.download(url, part, offer.size)
        except OriginError as exc:
            return self._refuse(offered, exc, "bad-origin")
        except ServerError as exc:
            return self._finish(Outcome("failed", offered, f"download: {exc}", exc.exit_code))
        if file_sha256(part) != offer.sha256:
            os.unlink(part)
            return self._finish(Outcome("failed", offered, "download does not match the server's SHA-256", 10))
        payload = os.path.join(cfg.state_dir, f"ota_type_{cfg.ota_type}.img")
        minimum = None if cfg.allow_downgrade else current + 1
        try:
            result = verify_file(part, self.keyring, expected_type=cfg.ota_type, min_version_number=minimum,
                                 extract_to=payload, backend=cfg.verify_backend, expected_version_number=offered)
            if result.header.payload_length == 0:
                os.unlink(payload)
                raise EmptyPayloadError("the image's payload is empty (0 bytes)")
        except VerifyError as exc:
            os.unlink(part)
            return self._refuse(offered, exc, exc.reason)
        header = result.header
        with open(part, "rb") as fh:  # kept beside the image, as Afero's scripts expect
            atomic_write_bytes(self._hdr_path(), fh.read(header.header_length), durable=True)
        os.unlink(part)
        record_name = self.installed_record().get("name", "")
        self.api.report("installing", header.version_number)
        try:
            self._hook("BeforeUpdate", record_name)
            installed = self.installer.install(payload, header.payload_sha256)
            self._hook("AfterUpdate", record_name)
        except InstallError as exc:
            log.error("install of versionNumber %d failed: %s", header.version_number, exc)
            return self._finish(Outcome("failed", header.version_number, str(exc), exc.exit_code))
        self._save_state(installedVersionNumber=header.version_number)
        log.info("installed versionNumber %d: %s", header.version_number, installed.detail)
        return self._finish(Outcome("installed", header.version_number, installed.detail))

    def run(self, stop=None) -> None:
        """Poll forever (or until ``stop`` is set), one check per pollInterval.

        No failure of one check ends the loop (sysvinit does not restart the agent): each is one log line.
        """
        while stop is None or not stop.is_set():
            try:
                self.check_once()
            except OtaError as exc:
                log.error("check failed: %s", exc)
            except Exception as exc:  # noqa: BLE001 (the loop must survive anything one check does)
                log.error("check failed (%s): %s", type(exc).__name__, exc)
            if stop is not None:
                stop.wait(self.config.poll_interval)
            else:
                time.sleep(self.config.poll_interval)
