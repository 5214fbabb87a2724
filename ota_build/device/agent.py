"""The OTA agent: ask, download (resumable), verify, install, report.

One ``check_once`` is the whole journey of seed 003's device side: hubby
downloads the image with header and verifies it, stores the image without the
header (``ota_type_5.img``, header kept as ``ota_type_5.hdr`` as Afero's
scripts expect), and otamgr hands it to the installer. A versionNumber not
greater than the installed one is refused (downgrade/replay) unless
``allowDowngrade`` is set.

HTTP uses the standard library's ``urllib`` so the agent needs no extra
package on the device (docs/decisions.md).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any, Dict, Optional

from ota_build.core.errors import OtaError, ServerError, VerifyError
from ota_build.core.files import atomic_write_bytes, atomic_write_text, file_sha256
from ota_build.core.package import verify_file
from ota_build.core.record import load_record
from ota_build.core.signing import Keyring
from ota_build.device.config import AgentConfig
from ota_build.device.installers import InstallError, make_installer

log = logging.getLogger(__name__)

CHUNK = 1 << 20
USER_AGENT = "ota-agent/1"


@dataclass(frozen=True)
class Outcome:
    """Result of one check: ``state`` is no-update, installed, rejected or failed."""

    state: str
    version_number: Optional[int] = None
    message: str = ""
    exit_code: int = 0


class ServerApi:
    """The device half of the OTA service API (docs/server.md)."""

    def __init__(self, base: str, device: str, token: str, timeout: float = 30.0):
        self.base = base.rstrip("/")
        self.device = device
        self.token = token
        self.timeout = timeout

    def _request(self, method: str, path: str, body: Optional[bytes] = None,
                 headers: Optional[Dict[str, str]] = None) -> urllib.request.Request:
        url = path if path.startswith(("http://", "https://")) else self.base + path
        req = urllib.request.Request(url, data=body, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        req.add_header("User-Agent", USER_AGENT)
        for key, value in (headers or {}).items():
            req.add_header(key, value)
        return req

    def _open(self, req: urllib.request.Request):
        try:
            return urllib.request.urlopen(req, timeout=self.timeout)  # noqa: S310 (URL from local config)
        except urllib.error.HTTPError as exc:
            detail = exc.read(300).decode("utf-8", "replace").strip().replace("\n", " ")
            raise ServerError(f"{req.get_method()} {req.full_url}: HTTP {exc.code} {detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ServerError(f"{req.get_method()} {req.full_url}: cannot connect ({reason})") from None

    def check(self, ota_type: int, version_number: int) -> Optional[Dict[str, Any]]:
        """The update offered to this device, or None."""
        query = urllib.parse.urlencode({"type": ota_type, "versionNumber": version_number})
        dev = urllib.parse.quote(self.device, safe="")
        with self._open(self._request("GET", f"/v1/devices/{dev}/update?{query}")) as resp:
            if resp.status == 204:
                return None
            return json.loads(resp.read().decode("utf-8"))

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

    def download(self, url: str, dest: str, size: int, retries: int = 5, backoff: float = 0.5) -> None:
        """Download ``url`` to ``dest``, resuming what ``dest`` already holds."""
        attempt = 0
        while True:
            have = os.path.getsize(dest) if os.path.exists(dest) else 0
            if have == size:
                return
            if have > size:
                os.unlink(dest)
                have = 0
            headers = {"Range": f"bytes={have}-"} if have else {}
            try:
                with self._open(self._request("GET", url, headers=headers)) as resp:
                    if have and resp.status != 206:
                        log.info("server ignored the Range request; starting over")
                        have = 0
                    elif have:
                        start = resp.headers.get("Content-Range", "").split(" ")[-1].split("-")[0]
                        if start != str(have):
                            raise ServerError(f"GET {url}: Content-Range {resp.headers.get('Content-Range')!r} "
                                              f"does not start at {have}")
                        log.info("resuming download at byte %d of %d", have, size)
                    with open(dest, "r+b" if have else "wb") as out:
                        out.seek(have)
                        while True:
                            chunk = resp.read(CHUNK)
                            if not chunk:
                                break
                            out.write(chunk)
                            if out.tell() > size:
                                raise ServerError(f"GET {url}: more than the announced {size} bytes")
                        out.flush()
                        os.fsync(out.fileno())
                if os.path.getsize(dest) == size:
                    return
                raise ServerError(f"GET {url}: connection ended at {os.path.getsize(dest)} of {size} bytes")
            except (ServerError, OSError) as exc:
                attempt += 1
                if attempt > retries:
                    raise ServerError(f"download failed after {retries} retries: {exc}") from None
                delay = backoff * 2 ** (attempt - 1)
                log.warning("download interrupted (%s); retrying in %.1fs", exc, delay)
                time.sleep(delay)


class Agent:
    """One device's agent."""

    def __init__(self, config: AgentConfig, api: Optional[ServerApi] = None):
        self.config = config
        self.api = api or ServerApi(config.server, config.device, config.device_token)
        self.installer = make_installer(config.installer)
        self.keyring = Keyring.from_files(config.public_keys)
        os.makedirs(config.state_dir, exist_ok=True)
        self.state_file = os.path.join(config.state_dir, "state.json")
        self.last: Dict[str, Any] = {}

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
        atomic_write_text(self.state_file, json.dumps(state, indent=2, sort_keys=True) + "\n", durable=True)

    def installed_record(self) -> Dict[str, Any]:
        """The record installed in the running image (``/etc/full_ota_record.json``)."""
        return load_record(self.config.record)

    def current_version_number(self) -> int:
        """The higher of the running image's versionNumber and the last one this agent installed."""
        running: int = self.installed_record()["versionNumber"]
        return max(running, int(self._state().get("installedVersionNumber", 0)))

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
            "pendingSlot": state.get("pendingSlot"),
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

    def check_once(self) -> Outcome:
        """Ask for an update and, if there is one, download, verify and install it."""
        cfg = self.config
        current = self.current_version_number()
        offer = self.api.check(cfg.ota_type, current)
        if offer is None:
            log.info("no update for %s (versionNumber %d)", cfg.device, current)
            return self._finish(Outcome("no-update", current))
        offered = int(offer.get("versionNumber", 0) or 0)
        log.info("update offered: version %s, versionNumber %s, %s bytes", offer.get("version"), offered, offer.get("size"))
        part = os.path.join(cfg.state_dir, "hub_update.bin.part")
        meta = os.path.join(cfg.state_dir, "download.json")
        ident = {"imageId": str(offer.get("imageId")), "sha256": offer.get("sha256"), "size": offer.get("size")}
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
            self.api.download(offer["url"], part, int(offer["size"]))
        except ServerError as exc:
            return self._finish(Outcome("failed", offered, f"download: {exc}", exc.exit_code))
        if offer.get("sha256") and file_sha256(part) != offer["sha256"]:
            os.unlink(part)
            return self._finish(Outcome("failed", offered, "download does not match the server's SHA-256", 10))
        payload = os.path.join(cfg.state_dir, f"ota_type_{cfg.ota_type}.img")
        minimum = None if cfg.allow_downgrade else current + 1
        try:
            result = verify_file(part, self.keyring, expected_type=cfg.ota_type, min_version_number=minimum,
                                 extract_to=payload, backend=cfg.verify_backend)
        except VerifyError as exc:
            os.unlink(part)
            log.error("refused the image offered as versionNumber %s: %s: %s; nothing was installed",
                      offered, exc.reason, exc)
            return self._finish(Outcome("rejected", offered, f"{exc.reason}: {exc}", exc.exit_code))
        header = result.header
        with open(part, "rb") as fh:  # kept beside the image, as Afero's scripts expect
            atomic_write_bytes(os.path.join(cfg.state_dir, f"ota_type_{cfg.ota_type}.hdr"), fh.read(header.header_length),
                               durable=True)
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
        finally:
            if self.config.installer["type"] == "ab" and os.path.exists(payload):
                os.unlink(payload)
        self._save_state(installedVersionNumber=header.version_number, pendingSlot=installed.slot)
        log.info("installed versionNumber %d: %s", header.version_number, installed.detail)
        return self._finish(Outcome("installed", header.version_number, installed.detail))

    def run(self, stop=None) -> None:
        """Poll forever (or until ``stop`` is set), one check per pollInterval."""
        while stop is None or not stop.is_set():
            try:
                self.check_once()
            except OtaError as exc:
                log.error("check failed: %s", exc)
            if stop is not None:
                stop.wait(self.config.poll_interval)
            else:
                time.sleep(self.config.poll_interval)
