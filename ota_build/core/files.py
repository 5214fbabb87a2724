"""Atomic file writes (temporary file + rename) and the one whole-file SHA-256.

Every file ota_build produces goes through here so that an interrupted run
never leaves a half-written record, key or image under the final name.

Atomic is not durable: by default nothing is fsync'd (a build artefact is
rebuilt after a crash, and BitBake never syncs either). Callers whose data must
survive a power cut once acknowledged (device state and slots, server storage)
pass ``durable=True``: the file is fsync'd before the rename and its directory
after it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tempfile
from pathlib import Path
from typing import IO, Iterator, Union

from ota_build.core.errors import UsageError

PathLike = Union[str, "os.PathLike[str]"]

#: read size of ``file_sha256`` (large reads: fewer system calls, hashlib releases the GIL per call)
HASH_CHUNK = 4 << 20


def fsync_dir(directory: PathLike, strict: bool = False) -> None:
    """fsync ``directory`` so a rename or a new file inside it survives a crash.

    Best effort by default (a file system that cannot sync a directory is not an
    error for build artefacts); ``strict=True`` raises, for data whose
    acknowledgement depends on it (server storage)."""
    try:
        fd = os.open(str(directory), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        if strict:
            raise
        return
    try:
        os.fsync(fd)
    except OSError:
        if strict:
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: int = 0o644, durable: bool = False) -> Iterator[IO[bytes]]:
    """Open a temporary file next to ``path`` for binary writing.

    On normal exit of the ``with`` block the data is flushed and the file
    renamed over ``path`` (``replace_without_flush``; with ``durable``, fsync'd
    first and the directory fsync'd after); on an exception the temporary file is removed and ``path``
    is left untouched.
    """
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=str(directory))
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        if durable:
            os.replace(tmp, target)
            fsync_dir(directory)
        else:
            replace_without_flush(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def replace_without_flush(tmp: PathLike, target: PathLike) -> None:
    """``os.replace(tmp, target)``, without ext4 writing ``tmp`` out because it replaces a file.

    ext4 (``auto_da_alloc``) starts writeback of a file renamed over another one,
    in the caller: for a 1 GiB artefact that is about 0.4 s of allocation and I/O
    submission nobody asked for. Exchanging the two names (``renameat2`` with
    ``RENAME_EXCHANGE``, equally atomic: ``target`` always names a complete file)
    and unlinking the old file skips it. Falls back to ``os.replace`` where that
    is unavailable (not Linux, no ``ctypes``, a file system without exchange) or
    when ``target`` is not a regular file.
    """
    try:
        if not stat.S_ISREG(os.lstat(target).st_mode):
            raise FileNotFoundError
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        exchanged = libc.renameat2(_AT_FDCWD, os.fsencode(tmp), _AT_FDCWD, os.fsencode(target), _RENAME_EXCHANGE) == 0
    except (OSError, ImportError, AttributeError):  # no target, no ctypes, no renameat2
        exchanged = False
    if not exchanged:
        os.replace(tmp, target)
        return
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def atomic_write_bytes(path: PathLike, data: bytes, mode: int = 0o644, durable: bool = False) -> None:
    """Write ``data`` to ``path`` atomically (and durably with ``durable``)."""
    with atomic_open(path, mode, durable) as fh:
        fh.write(data)


def atomic_write_text(path: PathLike, text: str, mode: int = 0o644, durable: bool = False) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically (and durably with ``durable``)."""
    atomic_write_bytes(path, text.encode("utf-8"), mode, durable)


def ensure_dir(path: PathLike, what: str) -> None:
    """Create directory ``path`` (and its parents); UsageError naming ``what`` when that is impossible."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{what}: cannot create directory {path}: {exc.strerror}") from None


def sha256_of(fh: IO[bytes], limit: "int | None" = None, into: "hashlib._Hash | None" = None) -> "tuple[bytes, int]":
    """SHA-256 of the next ``limit`` bytes of ``fh`` (to its end when None): (digest, bytes read).

    Reads into one reused buffer, so memory stays flat whatever the size. ``into``: a running SHA-256 to
    continue (it then holds the bytes read too).
    """
    digest = hashlib.sha256() if into is None else into
    buf = bytearray(HASH_CHUNK)
    view = memoryview(buf)
    readinto = getattr(fh, "readinto", None)
    total = 0
    while limit is None or total < limit:
        want = HASH_CHUNK if limit is None else min(HASH_CHUNK, limit - total)
        if readinto is not None:
            n = readinto(view[:want])
            chunk = view[:n] if n else b""
        else:  # a file object without readinto
            chunk = fh.read(want)
            n = len(chunk)
        if not n:
            break
        digest.update(chunk)
        total += n
    return digest.digest(), total


def file_sha256(path: "PathLike | IO[bytes]") -> str:
    """SHA-256 (hex) of a whole file: a path, or an open binary file (read from where it stands to its end)."""
    if hasattr(path, "read"):
        return sha256_of(path)[0].hex()  # type: ignore[arg-type]
    with open(path, "rb", buffering=0) as fh:  # type: ignore[arg-type]
        return sha256_of(fh)[0].hex()
