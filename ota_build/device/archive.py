"""The archive installer: the seed's ``tar.gz`` payload into a fresh filesystem on the inactive slot.

What Afero's am335x ``sysupgrade`` does (format the inactive partition, unpack the tarball, switch the
boot slot), with the payload unpacked as it streams in from the network: no copy of the tarball and no
temporary tree on the device. The payload's SHA-256 is computed over the bytes as ``tarfile`` consumes
them (mode ``r|gz``), the rest of the stream is hashed after the end-of-archive marker, and the boot
slot is switched only when the digest matches the signed header.

Every member is checked before it is written: no absolute names, no ``..``, no hard link out of the
tree, nothing written through a symbolic link (a link's parent directories are never links), no device
nodes unless ``allowDeviceNodes``. Symbolic links themselves may point anywhere (``/bin/sh`` is a normal
target in a root filesystem; it is resolved on the device after the switch, never during extraction).

Memory: tarfile keeps one small TarInfo per member (bounded by the number of files, not their size).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import tarfile
import zlib
from typing import IO, Any, Callable, List, Mapping, Optional

from ota_build.core import bootenv
from ota_build.device.installers import ABInstaller, BootEnv, CommandInstaller, InstallError, SlotInstaller

log = logging.getLogger(__name__)

DEFAULT_MKFS = ["mkfs.ext4", "-F", "-q", "{slot}"]
DEFAULT_MOUNT = ["mount", "{slot}", "{mountpoint}"]
DEFAULT_UMOUNT = ["umount", "{mountpoint}"]
DEFAULT_MOUNTPOINT = "/run/ota-agent/slot"


class HashingReader:
    """Reads at most ``length`` bytes of ``src``, hashing every byte handed out (a file-like ``read``)."""

    def __init__(self, src: IO[bytes], length: int):
        self.src = src
        self.left = length
        self.count = 0
        self.sha = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (all that is left when negative)."""
        want = self.left if size is None or size < 0 else min(size, self.left)
        if want <= 0:
            return b""
        data = self.src.read(want)
        self.sha.update(data)
        self.count += len(data)
        self.left -= len(data)
        return data

    def drain(self) -> None:
        """Hash what is left (bytes after the archive's end, the gzip trailer)."""
        while self.read(1 << 20):
            pass


class UnsafeMemberError(InstallError):
    """A tar member would be written outside the new root filesystem, or is a device node."""


def check_member(member: tarfile.TarInfo, root: str, allow_devices: bool = False) -> str:
    """The path ``member`` is to be written to under ``root``; UnsafeMemberError when it is not safe."""
    name = member.name
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if name.startswith("/") or ".." in parts:
        raise UnsafeMemberError(f"tar member {name!r}: absolute or '..' path refused")
    if member.islnk():
        link_parts = member.linkname.split("/")
        if member.linkname.startswith("/") or ".." in link_parts:
            raise UnsafeMemberError(f"tar member {name!r}: hard link to {member.linkname!r} leaves the tree")
    if (member.ischr() or member.isblk()) and not allow_devices:
        raise UnsafeMemberError(f"tar member {name!r}: device node refused (installer.allowDeviceNodes)")
    if not (member.isreg() or member.isdir() or member.issym() or member.islnk() or member.isfifo()
            or member.ischr() or member.isblk()):
        raise UnsafeMemberError(f"tar member {name!r}: unsupported member type {member.type!r}")
    real_root = os.path.realpath(root)
    parent = os.path.join(real_root, *parts[:-1])
    if os.path.realpath(parent) != parent:
        raise UnsafeMemberError(f"tar member {name!r}: its directory is (or passes through) a symbolic link")
    target = os.path.join(real_root, *parts)
    if parts and os.path.islink(target):
        os.unlink(target)  # never write through a link an earlier member made
    return target


def _run(argv: List[str], what: str) -> None:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=1800)
    except FileNotFoundError:
        raise InstallError(f"{what}: {argv[0]} not found") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        raise InstallError(f"{what} ({' '.join(argv)}) failed: {last}")


class ArchiveInstaller(SlotInstaller):
    """Formats the inactive slot and unpacks the streamed ``tar.gz`` payload into it.

    A slot that is a directory (tests, ``ota-build demo``) is emptied instead of formatted and not mounted.
    """

    def __init__(self, slots: Mapping[str, str], boot_env: BootEnv, cmdline: str = "/proc/cmdline",
                 boot_limit: int = bootenv.DEFAULT_BOOTLIMIT, spec: Optional[Mapping[str, Any]] = None):
        super().__init__(slots, boot_env, cmdline, boot_limit)
        spec = spec or {}
        self.mkfs = list(spec.get("mkfs", DEFAULT_MKFS))
        self.mount = list(spec.get("mount", DEFAULT_MOUNT))
        self.umount = list(spec.get("umount", DEFAULT_UMOUNT))
        self.mountpoint = spec.get("mountpoint", DEFAULT_MOUNTPOINT)
        self.allow_devices = bool(spec.get("allowDeviceNodes", False))

    def _argv(self, template: List[str], device: str) -> List[str]:
        return [a.replace("{slot}", device).replace("{mountpoint}", self.mountpoint) for a in template]

    def stream_into(self, slot: str, src: IO[bytes], length: int, done: int = 0,
                    checkpoint: Optional[Callable[[int], None]] = None,
                    expected: Optional[bytes] = None) -> "tuple[bytes, int]":
        """Fresh filesystem on ``slot``, the archive unpacked from ``src`` as it streams; (SHA-256, bytes).

        Always from the first byte (``done`` is ignored: an unpack cannot resume; a dropped connection is
        resumed by the stream itself). An archive that fails to unpack is hashed to its end: when the digest
        is not ``expected`` the bytes were corrupt (the caller reports that), else InstallError.
        """
        device = self.slots[slot]
        if length == 0:
            raise InstallError(f"the payload is empty (0 bytes); slot {slot} was not written")
        mounted = False
        if os.path.isdir(device):
            root = device
            for entry in os.listdir(root):
                path = os.path.join(root, entry)
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                else:
                    os.unlink(path)
            log.info("slot %s is a directory (%s): emptied", slot, device)
        else:
            if os.path.ismount(self.mountpoint):  # left mounted by an agent that died mid-unpack
                _run(self._argv(self.umount, device), f"unmounting slot {slot}")
            _run(self._argv(self.mkfs, device), f"formatting slot {slot}")
            os.makedirs(self.mountpoint, exist_ok=True)
            _run(self._argv(self.mount, device), f"mounting slot {slot}")
            mounted = True
            root = self.mountpoint
        reader = HashingReader(src, length)
        extra = {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}  # checked above
        try:
            try:
                with tarfile.open(fileobj=reader, mode="r|gz", bufsize=1 << 20) as tar:  # type: ignore[call-overload]
                    files = 0
                    for member in tar:
                        check_member(member, root, self.allow_devices)
                        tar.extract(member, root, set_attrs=True, numeric_owner=True, **extra)
                        files += 1
                reader.drain()
            except UnsafeMemberError:
                raise
            except (tarfile.TarError, zlib.error, EOFError, OSError) as exc:
                if isinstance(exc, OSError) and exc.errno is not None and not isinstance(exc, EOFError):
                    raise InstallError(f"unpacking into slot {slot} failed: {exc}") from None
                reader.drain()
                if expected is not None and reader.sha.digest() != expected:
                    return reader.sha.digest(), reader.count
                raise InstallError(f"the payload is not a readable tar.gz ({exc}); slot {slot} is not switched to") \
                    from None
            os.sync()  # the unpacked tree is on disk before the boot slot can name it
            log.info("unpacked %d members (%d bytes of tar.gz) into slot %s", files, reader.count, slot)
        finally:
            if mounted:
                _run(self._argv(self.umount, device), f"unmounting slot {slot}")
        return reader.sha.digest(), reader.count


def make_installer(spec: Mapping[str, Any], cmdline: str = "/proc/cmdline", boot_limit: int = bootenv.DEFAULT_BOOTLIMIT):
    """Build the installer the agent config's ``installer`` object describes (``ab``, ``archive``, ``command``)."""
    if spec["type"] == "command":
        return CommandInstaller(spec["command"])
    boot_env = BootEnv(spec.get("bootEnv", {}))
    if spec["type"] == "archive":
        return ArchiveInstaller(spec["slots"], boot_env, cmdline, boot_limit, spec)
    return ABInstaller(spec["slots"], boot_env, cmdline, boot_limit)
