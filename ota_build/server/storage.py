"""The data directory: uploaded files, streamed to disk and published atomically.

Layout under ``<data-dir>``::

    tmp/                  uploads being received (removed on any failure; what a killed server left
                          is swept at start-up and by age, ``sweep_tmp``)
    uploads/<id>.part     resumable upload sessions
    blobs/<sha256>        verified hub_update.bin files (content-addressed)
    otafiles/<pkg>/<branch>/<pkg>-<branch>-<version>.zip   seed-001 packages

A file appears under its final name only by ``os.replace`` after it was
written completely, fsync'd and verified, so a killed upload leaves nothing
visible and nothing half-written. Everything is private to the server's user: directories 0700,
files 0600 (the database too, ``db.open_database``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import tempfile
import time
from pathlib import Path
from typing import AsyncIterator, Iterable, Iterator, Tuple

from ota_build.core.files import fsync_dir
from ota_build.core.header import Header
from ota_build.core.names import check_name
from ota_build.core.package import check_integrity, verify_file
from ota_build.core.signing import Keyring, public_key_from_pem

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
TMP_MAX_AGE = 3600.0  # seconds: a tmp/upload-*.tmp untouched this long was left by a killed server
SWEEP_INTERVAL = 600.0  # seconds between sweeps of tmp/ by a running worker


class TooLarge(Exception):
    """The body exceeds the configured size limit."""



class _Sink:
    """A temporary file being filled: counts, hashes, enforces the size limit."""

    def __init__(self, storage: "Storage"):
        fd, self.path = storage.temp_file()
        self.fh = os.fdopen(fd, "wb")
        self.limit = storage.max_upload_bytes
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            raise TooLarge(f"upload exceeds the limit of {self.limit} bytes")
        self.digest.update(chunk)
        self.fh.write(chunk)

    def finish(self) -> Tuple[str, str, int]:
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()
        return self.path, self.digest.hexdigest(), self.size

    def abort(self) -> None:
        self.fh.close()
        discard(self.path)


class Storage:
    """Files of one data directory."""

    def __init__(self, data_dir: str, max_upload_bytes: int, tmp_max_age: float = TMP_MAX_AGE):
        self.root = Path(data_dir).resolve()
        self.max_upload_bytes = max_upload_bytes
        self.tmp_dir = self.root / "tmp"
        self.tmp_max_age = tmp_max_age
        self._last_sweep = 0.0
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o700)  # also a data directory made before files were private
        for sub in ("tmp", "uploads", "blobs", "otafiles"):
            (self.root / sub).mkdir(exist_ok=True, mode=0o700)
            os.chmod(self.root / sub, 0o700)
        self.sweep_tmp(self.tmp_max_age)

    # ------------------------------------------------------------------ receiving
    def temp_file(self) -> Tuple[int, str]:
        """A new temporary file in ``tmp/`` (fd, path), mode 0600; sweeps stale ones now and then."""
        if time.monotonic() - self._last_sweep > SWEEP_INTERVAL:
            self.sweep_tmp(self.tmp_max_age)
        return tempfile.mkstemp(prefix="upload-", suffix=".tmp", dir=str(self.tmp_dir))

    def sweep_tmp(self, max_age: float) -> int:
        """Remove ``tmp/upload-*.tmp`` files not modified for ``max_age`` seconds (left by a killed
        server: a live upload writes or is verified continuously); how many. ``ota-build serve`` calls
        it with 0 before any worker starts; each worker with ``tmp_max_age`` at start and every
        ``SWEEP_INTERVAL`` seconds."""
        self._last_sweep = time.monotonic()
        cutoff = time.time() - max_age
        removed = 0
        for path in self.tmp_dir.glob("upload-*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime <= cutoff:
                    path.unlink()
                    removed += 1
        if removed:
            log.info("removed %d stale temporary upload file(s) from %s", removed, self.tmp_dir)
        return removed

    @contextlib.contextmanager
    def _sink(self) -> Iterator[_Sink]:
        """A sink whose temporary file is removed on any error."""
        sink = _Sink(self)
        try:
            yield sink
        except BaseException:
            sink.abort()
            raise

    def copy_in(self, src: Iterable[bytes]) -> Tuple[str, str, int]:
        """Stream ``src`` (chunks) into a temporary file, fsync'd: (path, sha256 hex, size).

        Raises TooLarge past the limit; the temporary file is removed on any error.
        """
        with self._sink() as sink:
            for chunk in src:
                sink.write(chunk)
            return sink.finish()

    async def receive(self, chunks: AsyncIterator[bytes]) -> Tuple[str, str, int]:
        """``copy_in`` for an asynchronous iterator of chunks (a request body)."""
        with self._sink() as sink:
            async for chunk in chunks:
                sink.write(chunk)
            return sink.finish()

    # ------------------------------------------------------------------ blobs
    def blob_path(self, sha256: str) -> Path:
        """Where the verified image with this SHA-256 lives."""
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise ValueError("field 'sha256': must be 64 lowercase hex digits")
        return self.root / "blobs" / sha256

    def publish(self, tmp_path: str, final: Path) -> None:
        """Atomically move a fully written temporary file to ``final``."""
        final.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(tmp_path, 0o600)
        os.replace(tmp_path, final)
        fsync_dir(final.parent, strict=True)

    # ------------------------------------------------------------------ resumable uploads
    def part_path(self, upload_id: str) -> Path:
        """The partial file of an upload session."""
        if not re.fullmatch(r"[A-Za-z0-9_-]{16,64}", upload_id):
            raise ValueError("field 'uploadId': malformed")
        return self.root / "uploads" / f"{upload_id}.part"

    def create_part(self, upload_id: str) -> Path:
        """Create the empty partial file of a new upload session, durably (file and directory fsync'd)."""
        part = self.part_path(upload_id)
        fd = os.open(str(part), os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(part.parent, strict=True)
        return part

    # ------------------------------------------------------------------ seed-001 packages
    def package_path(self, package: str, branch: str, version: str) -> Path:
        """``otafiles/<pkg>/<branch>/<pkg>-<branch>-<version>.zip`` (components validated)."""
        check_name(package, "package")
        check_name(branch, "branch")
        check_name(version, "version")
        return self.root / "otafiles" / package / branch / f"{package}-{branch}-{version}.zip"


def discard(path: str) -> None:
    """Remove a temporary file if it still exists."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def verify_image(path: str, public_pems: "Iterable[str]" = ()) -> Header:
    """Check an uploaded hub_update.bin: header, length, payload SHA-256 and, when the
    partner registered public keys, the signature. Raises a VerifyError (one line)."""
    pems = list(public_pems)
    if pems:
        keyring = Keyring([public_key_from_pem(p.encode("ascii"), "partner key") for p in pems])
        return verify_file(path, keyring).header
    return check_integrity(path)


def key_id_of_pem(pem: str) -> str:
    """Hex key id of a PEM public key (raises ValueError/OtaError when it is not one)."""
    return public_key_from_pem(pem.encode("ascii"), "public key").key_id.hex()

