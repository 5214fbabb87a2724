"""Installers: hand a verified payload to the system.

* ``command``: run a program with the payload path (the seed's
  ``/sbin/sysupgrade /tmp/ota_type_5.img`` step).
* ``ab``: write the payload to the inactive slot (a block device, or a file in
  tests), read it back and compare digests, then switch the boot slot through
  U-Boot's environment (``fw_setenv``) or a file. Nothing touches the active
  slot, and the boot choice changes only after the written slot verified.
"""

from __future__ import annotations

import logging
import os
import shlex
import stat
import subprocess
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional

from ota_build.core.errors import OtaError
from ota_build.core.files import atomic_write_text, sha256_of

log = logging.getLogger(__name__)

CHUNK = 1 << 20


class InstallError(OtaError):
    """The installer failed; the running system is unchanged."""


@dataclass(frozen=True)
class InstallResult:
    """What an installer did."""

    detail: str
    slot: Optional[str] = None


class CommandInstaller:
    """Runs ``command`` with ``{image}`` replaced by the payload path."""

    def __init__(self, command: List[str], timeout: float = 3600):
        self.command = list(command)
        self.timeout = timeout

    def install(self, payload: str, sha256: bytes) -> InstallResult:
        """Run the configured command; a non-zero exit is an InstallError."""
        if os.path.getsize(payload) == 0:
            raise InstallError("the payload is empty (0 bytes); the installer was not run")
        argv = [arg.replace("{image}", payload) for arg in self.command]
        if argv == self.command:
            argv.append(payload)
        log.info("running installer: %s", " ".join(shlex.quote(a) for a in argv))
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=self.timeout, check=False)
        except FileNotFoundError:
            raise InstallError(f"installer command not found: {argv[0]}") from None
        except subprocess.TimeoutExpired:
            raise InstallError(f"installer {argv[0]} timed out after {self.timeout:.0f}s") from None
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
            raise InstallError(f"installer {os.path.basename(argv[0])} exited {proc.returncode}: {last}")
        return InstallResult(f"{os.path.basename(argv[0])} succeeded")


class BootEnv:
    """Where the boot slot choice lives: U-Boot's environment or a file."""

    def __init__(self, spec: Mapping[str, Any]):
        self.tool = spec.get("tool", "fw_setenv")
        self.file = spec.get("file", "")
        self.variable = spec.get("variable", "ota_slot")
        self.values: Dict[str, str] = dict(spec.get("values", {}))
        self.fw_setenv = spec.get("fwSetenv", "fw_setenv")
        self.fw_printenv = spec.get("fwPrintenv", "fw_printenv")
        self.fw_config = ["-c", spec["fwEnvConfig"]] if spec.get("fwEnvConfig") else []
        if self.tool == "file" and not self.file:
            raise InstallError("installer.bootEnv.file is required with tool 'file'")

    def _value_of(self, slot: str) -> str:
        return self.values.get(slot, slot)

    def _slot_of(self, value: str) -> Optional[str]:
        for slot, val in self.values.items():
            if val == value:
                return slot
        return value or None

    def read(self) -> Optional[str]:
        """The slot the bootloader will boot, or None when unset."""
        if self.tool == "file":
            try:
                with open(self.file, encoding="utf-8") as fh:
                    for line in fh:
                        key, _, value = line.strip().partition("=")
                        if key == self.variable:
                            return self._slot_of(value)
            except FileNotFoundError:
                return None
            return None
        try:
            out = subprocess.run([self.fw_printenv, *self.fw_config, "-n", self.variable], capture_output=True, text=True,
                                 check=False, timeout=30)
        except FileNotFoundError:
            raise InstallError(f"{self.fw_printenv} not found (install libubootenv-bin / u-boot-fw-utils)") from None
        return self._slot_of(out.stdout.strip()) if out.returncode == 0 else None

    def write(self, slot: str) -> None:
        """Make the bootloader boot ``slot`` next."""
        value = self._value_of(slot)
        if self.tool == "file":
            lines = []
            if os.path.exists(self.file):
                with open(self.file, encoding="utf-8") as fh:
                    lines = [ln.rstrip("\n") for ln in fh if not ln.startswith(f"{self.variable}=")]
            lines.append(f"{self.variable}={value}")
            atomic_write_text(self.file, "\n".join(lines) + "\n", durable=True)
            return
        try:
            proc = subprocess.run([self.fw_setenv, *self.fw_config, self.variable, value], capture_output=True, text=True,
                                  check=False, timeout=60)
        except FileNotFoundError:
            raise InstallError(f"{self.fw_setenv} not found (install libubootenv-bin / u-boot-fw-utils)") from None
        if proc.returncode != 0:
            raise InstallError(f"{self.fw_setenv} {self.variable} failed: {proc.stderr.strip() or proc.returncode}")


class ABInstaller:
    """Writes the payload to the inactive slot, verifies it, switches the boot slot."""

    def __init__(self, slots: Mapping[str, str], boot_env: BootEnv):
        if len(slots) < 2:
            raise InstallError("the A/B installer needs at least two slots")
        self.slots = dict(slots)
        self.boot_env = boot_env

    def active_slot(self) -> str:
        """The slot running now (as the boot environment says; the first slot when unset)."""
        slot = self.boot_env.read()
        if slot is None:
            return next(iter(self.slots))
        if slot not in self.slots:
            raise InstallError(f"boot environment names slot {slot!r}, which is not configured")
        return slot

    def inactive_slot(self) -> str:
        """The slot to write."""
        active = self.active_slot()
        return next(s for s in self.slots if s != active)

    def install(self, payload: str, sha256: bytes) -> InstallResult:
        """Write, read back and compare, then switch; raise InstallError on any failure.

        The slot's size is its capacity: a block device's size, or a regular file's size (written in place,
        like a partition image). Only an empty or missing regular file (a simulated slot: tests, the demo)
        has no limit and takes the payload's size. An empty payload or one larger than the slot is refused
        before anything is written.
        """
        target_slot = self.inactive_slot()
        device = self.slots[target_slot]
        size = os.path.getsize(payload)
        if size == 0:
            raise InstallError(f"the payload is empty (0 bytes); slot {target_slot} was not written")
        try:
            fd = os.open(device, os.O_WRONLY | os.O_CREAT, 0o644)
        except OSError as exc:
            raise InstallError(f"cannot open slot {target_slot} ({device}): {exc.strerror}") from None
        try:
            mode = os.fstat(fd).st_mode
            capacity = os.lseek(fd, 0, os.SEEK_END)  # a block device's size too (st_size is 0 for one)
            os.lseek(fd, 0, os.SEEK_SET)
            if capacity == 0 and stat.S_ISREG(mode):
                capacity = size  # a simulated slot: grows to the payload
            sized = stat.S_ISREG(mode) or stat.S_ISBLK(mode)  # a character device (MTD, /dev/full) has no size here
            if sized and size > capacity:
                raise InstallError(f"payload of {size} bytes does not fit slot {target_slot} ({device}: {capacity} bytes); "
                                   "nothing was written")
            log.info("writing %d bytes to slot %s (%s)", size, target_slot, device)
            with open(payload, "rb") as src:
                while True:
                    chunk = src.read(CHUNK)
                    if not chunk:
                        break
                    view = memoryview(chunk)
                    while view:
                        written = os.write(fd, view)
                        view = view[written:]
            os.fsync(fd)
        except OSError as exc:
            raise InstallError(f"writing slot {target_slot} ({device}) failed: {exc.strerror}") from None
        finally:
            os.close(fd)
        written_digest = _digest(device, size)
        if written_digest != sha256:
            raise InstallError(f"slot {target_slot} read back a different SHA-256: the write did not stick")
        self.boot_env.write(target_slot)
        return InstallResult(f"wrote slot {target_slot} and switched the boot slot to it", slot=target_slot)


def _digest(path: str, length: int) -> bytes:
    """SHA-256 of the first ``length`` bytes of ``path`` (a slot is often larger than what was written)."""
    with open(path, "rb", buffering=0) as fh:
        return sha256_of(fh, length)[0]


def make_installer(spec: Mapping[str, Any]):
    """Build the installer the agent config's ``installer`` object describes."""
    if spec["type"] == "command":
        return CommandInstaller(spec["command"])
    return ABInstaller(spec["slots"], BootEnv(spec.get("bootEnv", {})))
