"""Installers: hand a verified payload to the system.

* ``command``: run a program with the payload path (the seed's
  ``/sbin/sysupgrade /tmp/ota_type_5.img`` step).
* ``ab``: stream a raw image into the inactive slot (a block device, or a file
  in tests) while hashing it, then switch the boot slot through U-Boot's
  environment (``fw_setenv``) or a ``KEY=value`` file, per the A/B boot
  contract (docs/agent.md). Nothing touches the active slot, and the boot
  choice changes only after the written payload's SHA-256 matched.
* ``archive`` (``ota_build.device.archive``): a fresh filesystem on the
  inactive slot and the ``tar.gz`` payload unpacked into it as it streams in.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shlex
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from typing import IO, Any, Callable, Dict, List, Mapping, Optional, Sequence

from ota_build.core import bootenv
from ota_build.core.errors import OtaError
from ota_build.core.files import atomic_write_bytes, sha256_of

log = logging.getLogger(__name__)

CHUNK = 1 << 20
SLOT_NAME = bootenv.SLOT_RE


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
    """Where the boot slot choice lives: U-Boot's environment (``fw_setenv``/``fw_printenv``) or a ``KEY=value``
    file (``uEnv.txt`` style, or what U-Boot's ``env export -t`` writes).

    Besides the legacy boot variable (``variable`` = the value of a slot), the A/B boot contract's variables
    (``ota_build.core.bootenv``, shared with the boot script's generator): ``BOOT_ORDER``, ``BOOT_<slot>_LEFT``,
    ``upgrade_available``, ``bootcount``. Every change is ONE write: the file rewritten atomically and durably
    (other lines kept, in the format U-Boot's ``env import -t`` reads), or one ``fw_setenv -s`` script.
    """

    def __init__(self, spec: Mapping[str, Any]):
        self.tool = spec.get("tool", "fw_setenv")
        self.file = spec.get("file", "")
        self.variable = spec.get("variable", "ota_slot")
        self.values: Dict[str, str] = dict(spec.get("values", {}))
        self.fw_setenv = spec.get("fwSetenv", "fw_setenv")
        self.fw_printenv = spec.get("fwPrintenv", "fw_printenv")
        self.fw_config = ["-c", spec["fwEnvConfig"]] if spec.get("fwEnvConfig") else []
        self.script_separator = spec.get("fwScriptSeparator", "=")
        if self.tool == "file" and not self.file:
            raise InstallError("installer.bootEnv.file is required with tool 'file'")

    def value_of(self, slot: str) -> str:
        """The boot variable's value that selects ``slot``."""
        return self.values.get(slot, slot)

    def _slot_of(self, value: str) -> Optional[str]:
        for slot, val in self.values.items():
            if val == value:
                return slot
        return value or None

    def read_all(self) -> Dict[str, str]:
        """The whole environment (or file) as a dict."""
        if self.tool == "file":
            try:
                with open(self.file, "rb") as fh:
                    return bootenv.parse_env_text(fh.read())  # also what U-Boot's env export -t wrote (NUL)
            except FileNotFoundError:
                return {}
        else:
            try:
                out = subprocess.run([self.fw_printenv, *self.fw_config], capture_output=True, text=True, check=False,
                                     timeout=30)
            except FileNotFoundError:
                raise InstallError(f"{self.fw_printenv} not found (install libubootenv-bin / u-boot-fw-utils)") from None
            if out.returncode != 0:
                raise InstallError(f"{self.fw_printenv} failed: {out.stderr.strip() or out.returncode}")
            return bootenv.parse_env_text(out.stdout.encode("utf-8"))

    def read(self) -> Optional[str]:
        """The slot the boot variable selects, or None when unset."""
        return self._slot_of(self.read_all().get(self.variable, ""))

    def update(self, values: Mapping[str, str]) -> None:
        """Set ``values`` in one write (durable); InstallError when that fails."""
        if self.tool == "file":
            try:
                with open(self.file, "rb") as fh:
                    old = fh.read()
            except FileNotFoundError:
                old = b""
            try:
                new = bootenv.update_env_text(old, values)
            except ValueError as exc:
                raise InstallError(f"{self.file}: {exc}") from None
            atomic_write_bytes(self.file, new, durable=True)
            return
        with tempfile.NamedTemporaryFile("w", prefix="ota-env-", suffix=".txt", encoding="utf-8") as script:
            script.write("".join(f"{k}{self.script_separator}{v}\n" for k, v in values.items()))
            script.flush()
            try:
                proc = subprocess.run([self.fw_setenv, *self.fw_config, "-s", script.name], capture_output=True,
                                      text=True, check=False, timeout=60)
            except FileNotFoundError:
                raise InstallError(f"{self.fw_setenv} not found (install libubootenv-bin / u-boot-fw-utils)") from None
        if proc.returncode != 0:
            raise InstallError(f"{self.fw_setenv} -s failed: {proc.stderr.strip() or proc.returncode}")
        now = self.read_all()
        wrong = [k for k, v in values.items() if now.get(k, "") != v]
        if wrong:  # e.g. a tool that reads "name value" scripts (u-boot-fw-utils): set bootEnv.fwScriptSeparator
            raise InstallError(f"{self.fw_setenv} -s did not set {', '.join(wrong)} (script separator "
                               f"{self.script_separator!r}; see installer.bootEnv.fwScriptSeparator)")

    def write(self, slot: str) -> None:
        """Set only the legacy boot variable to ``slot`` (boards without the boot script)."""
        self.update({self.variable: self.value_of(slot)})

    def boot_order(self, configured: Sequence[str], env: Optional[Mapping[str, str]] = None) -> List[str]:
        """``BOOT_ORDER`` as a list (the configured slot order when unset)."""
        return bootenv.boot_order(self.read_all() if env is None else env, configured)

    def switch(self, slot: str, configured: Sequence[str], boot_limit: int) -> None:
        """The contract's switch: ``slot`` first in BOOT_ORDER with ``boot_limit`` attempts, uncommitted."""
        values = bootenv.switch_values(slot, self.read_all(), configured, boot_limit)
        self.update({**values, self.variable: self.value_of(slot)})

    def commit(self, slot: str, boot_limit: int) -> None:
        """The contract's commit of the running ``slot``."""
        self.update(bootenv.commit_values(slot, boot_limit))


def read_cmdline_slot(path: str) -> Optional[str]:
    """The slot named by ``ota.slot=<name>`` on the kernel command line at ``path``, else None."""
    try:
        with open(path, encoding="utf-8") as fh:
            return bootenv.cmdline_slot(fh.read())
    except OSError:
        return None


class SlotInstaller:
    """What the A/B installers share: slots, the boot environment, which slot runs and which one to write."""

    resumable = False

    def __init__(self, slots: Mapping[str, str], boot_env: BootEnv, cmdline: str = "/proc/cmdline",
                 boot_limit: int = bootenv.DEFAULT_BOOTLIMIT):
        if len(slots) < 2:
            raise InstallError("the A/B installer needs at least two slots")
        bad = [name for name in slots if not SLOT_NAME.fullmatch(name)]
        if bad:
            raise InstallError(f"slot name {bad[0]!r} is not letters and digits")
        self.slots = dict(slots)
        self.boot_env = boot_env
        self.cmdline = cmdline
        self.boot_limit = boot_limit

    def active_slot(self) -> str:
        """The slot running now: ``ota.slot=`` on the kernel command line, else the boot variable (the first
        slot when unset)."""
        slot = read_cmdline_slot(self.cmdline) or self.boot_env.read()
        if slot is None:
            return next(iter(self.slots))
        if slot not in self.slots:
            raise InstallError(f"the running slot is {slot!r}, which is not configured")
        return slot

    def inactive_slot(self) -> str:
        """The slot to write."""
        active = self.active_slot()
        return next(s for s in self.slots if s != active)

    def switch(self, slot: str) -> None:
        """Make the bootloader try ``slot`` next (the contract's switch)."""
        self.boot_env.switch(slot, list(self.slots), self.boot_limit)

    def install(self, payload: str, sha256: bytes) -> InstallResult:
        """Install a payload file (not the agent's path, which streams): stream it in, compare, switch."""
        size = os.path.getsize(payload)
        target = self.inactive_slot()
        with open(payload, "rb") as src:
            digest, _ = self.stream_into(target, src, size, expected=sha256)
        if digest != sha256:
            raise InstallError(f"slot {target}: the written payload has a different SHA-256; the boot slot was not switched")
        self.switch(target)
        return InstallResult(f"wrote slot {target} and switched the boot slot to it", slot=target)

    def stream_into(self, slot: str, src: IO[bytes], length: int, done: int = 0,
                    checkpoint: Optional[Callable[[int], None]] = None,
                    expected: Optional[bytes] = None) -> "tuple[bytes, int]":
        """Write ``length`` payload bytes read from ``src`` into ``slot``; (SHA-256, bytes)."""
        raise NotImplementedError


class ABInstaller(SlotInstaller):
    """Streams a raw image (a filesystem image) into the inactive slot while hashing it."""

    resumable = True
    CHECKPOINT_EVERY = 64 << 20

    def stream_into(self, slot: str, src: IO[bytes], length: int, done: int = 0,
                    checkpoint: Optional[Callable[[int], None]] = None,
                    expected: Optional[bytes] = None) -> "tuple[bytes, int]":
        """Write the payload from ``src`` into ``slot`` from byte ``done`` on (what the slot already holds is
        hashed again first); fsync; return (SHA-256 of the whole payload, bytes in the slot).

        The slot's size is its capacity: a block device's size, or a regular file's size (written in place,
        like a partition image). Only an empty or missing regular file (a simulated slot: tests, the demo),
        or one holding exactly the ``done`` bytes of a resumed install, has no limit. An empty payload or one
        larger than the slot is refused before anything is written. ``checkpoint(n)`` is called after ``n``
        bytes are durable (every 64 MiB, when the download gives up, at the end), so a restart resumes there.
        """
        from ota_build.core.package import copy_hashing  # core.package imports no third-party module

        device = self.slots[slot]
        if length == 0:
            raise InstallError(f"the payload is empty (0 bytes); slot {slot} was not written")
        try:
            fh = open(device, "r+b" if os.path.exists(device) else "w+b", buffering=0)
        except OSError as exc:
            raise InstallError(f"cannot open slot {slot} ({device}): {exc.strerror}") from None
        with fh:
            fd = fh.fileno()
            try:
                mode = os.fstat(fd).st_mode
                capacity = os.lseek(fd, 0, os.SEEK_END)  # a block device's size too (st_size is 0 for one)
                if capacity in (0, done) and stat.S_ISREG(mode):
                    capacity = length  # a simulated slot: grows to the payload (also when resumed)
                sized = stat.S_ISREG(mode) or stat.S_ISBLK(mode)  # a character device (MTD, /dev/full) has no size
                if sized and length > capacity:
                    raise InstallError(f"payload of {length} bytes does not fit slot {slot} ({device}: {capacity} "
                                       "bytes); nothing was written")
                digest = hashlib.sha256()
                if done:
                    os.lseek(fd, 0, os.SEEK_SET)
                    with open(device, "rb", buffering=0) as back:
                        _, got = sha256_of(back, done, into=digest)
                    if got != done:
                        raise InstallError(f"slot {slot} holds {got} bytes, not the {done} recorded")
                    log.info("slot %s holds %d of %d bytes already (hashed again); resuming", slot, done, length)
                fh.seek(done)
                log.info("streaming %d bytes into slot %s (%s)", length - done, slot, device)
                written = done
                while written < length:
                    step = min(self.CHECKPOINT_EVERY, length - written)
                    try:
                        _, count = copy_hashing(src, fh, step, None, durable=True, digest=digest)
                    except OtaError:  # the download gave up: what the slot holds is kept for the next check
                        if checkpoint is not None:
                            os.fdatasync(fd)
                            checkpoint(fh.tell())
                        raise
                    written += count
                    if count < step:
                        raise InstallError(f"the payload ended after {written} of {length} bytes")
                    if checkpoint is not None and written < length:
                        os.fdatasync(fd)
                        checkpoint(written)
                os.fsync(fd)
                if checkpoint is not None:  # all written and durable: a restart only hashes the slot again
                    checkpoint(written)
            except OSError as exc:
                raise InstallError(f"writing slot {slot} ({device}) failed: {exc.strerror}") from None
        return digest.digest(), written
