"""Seed 000's file packager without HTTP: per-partner inputs, packing, the package, the signing key.

Layout under ``<data-dir>/packager/``::

    signing-key.pem, signing-key.pub.pem   the packager key generated at first use when none is configured (0600)
    <partner pk>/.lock                     the partner's lock file (flock)
    <partner pk>/model.pkl, model.bat      the latest upload of each input
    <partner pk>/model.zip                 the latest package

Every file is written to a temporary file in the same directory, fsync'd, and
renamed over its name (then the directory is fsync'd), so a reader sees the
old file or the new one, never half of one. The inputs are renamed into place
and packed under the partner's lock (``flock``: it holds across threads and
worker processes), so a pack always takes the two files as they stood
together; a download streams the package from one open file, which a later
pack replaces by rename without touching it.

Refusals raise ``PackagerError`` with the original's status code; the router
maps each to its HTTP status.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import IO, Iterator, Optional, Tuple

from ota_build.core import packager
from ota_build.core.files import fsync_dir
from ota_build.core.signing import PublicKey, Signer, generate_key, make_signer

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
DEFAULT_KEY = "signing-key.pem"
DEFAULT_PUBLIC_KEY = "signing-key.pub.pem"


class PackagerError(Exception):
    """A refusal with the original's status code (211, 212, 213, 413)."""

    def __init__(self, statuscode: int, message: str):
        super().__init__(message)
        self.statuscode = statuscode
        self.message = message


class PackagerStore:
    """The packager's files in one data directory, and the key that signs its packages."""

    def __init__(self, data_dir: str, key_path: Optional[str] = None, max_upload_bytes: int = 4 * 1024 ** 3,
                 backend: str = "auto"):
        self.root = Path(data_dir).resolve() / "packager"
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_upload_bytes = max_upload_bytes
        self.key_path = key_path
        self.backend = backend
        self._signer: Optional[Signer] = make_signer(key_path, backend=backend) if key_path else None
        self._signer_lock = threading.Lock()

    @property
    def signer(self) -> Signer:
        """The packager's signer: the configured key, else the generated one (made at first use)."""
        with self._signer_lock:
            if self._signer is None:
                self.key_path = self._default_key()
                self._signer = make_signer(self.key_path, backend=self.backend)
            return self._signer

    def _default_key(self) -> str:
        """``<data-dir>/packager/signing-key.pem``, generated (Ed25519, 0600) at first use; one process does it."""
        private = self.root / DEFAULT_KEY
        public = self.root / DEFAULT_PUBLIC_KEY
        with self._flock(self.root / ".keylock"):
            if not private.exists():
                generate_key("ed25519", str(private), str(public), backend=self.backend, overwrite=True)
                fsync_dir(self.root)
                log.warning("packager: no signing key configured; generated %s (Ed25519, mode 0600)", private)
        return str(private)

    @property
    def public_key(self) -> PublicKey:
        """The public key devices verify packages with."""
        return self.signer.public_key

    def public_pem(self) -> bytes:
        """The public key devices verify packages with (PEM)."""
        return self.public_key.pem

    # ------------------------------------------------------------------ helpers
    @staticmethod
    @contextlib.contextmanager
    def _flock(path: Path) -> Iterator[None]:
        fd = os.open(str(path), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def partner_dir(self, partner_pk: int) -> Path:
        """The partner's directory (created on first use)."""
        path = self.root / str(int(partner_pk))
        path.mkdir(exist_ok=True)
        return path

    def lock(self, partner_pk: int) -> "contextlib.AbstractContextManager[None]":
        """The partner's exclusive lock (threads and processes)."""
        return self._flock(self.partner_dir(partner_pk) / ".lock")

    # ------------------------------------------------------------------ upload
    def put(self, partner_pk: int, filename: Optional[str], src: IO[bytes]) -> Tuple[str, int]:
        """Store ``src`` as the partner's ``filename`` (exactly ``model.pkl`` or ``model.bat``), replacing the
        previous one atomically and durably: (sha256 hex, size). 213 for any other name, 413 past the limit."""
        if filename not in packager.INPUT_NAMES:
            raise PackagerError(213, f"file name {filename!r} not allowed: only {' and '.join(packager.INPUT_NAMES)} "
                                     "are accepted")
        directory = self.partner_dir(partner_pk)
        digest = hashlib.sha256()
        size = 0
        fd, tmp = tempfile.mkstemp(prefix=f".{filename}.", suffix=".tmp", dir=str(directory))
        try:
            with os.fdopen(fd, "wb") as fh:
                while True:
                    chunk = src.read(_CHUNK)
                    if not chunk:
                        break
                    size += len(chunk)
                    if size > self.max_upload_bytes:
                        raise PackagerError(413, f"upload exceeds the limit of {self.max_upload_bytes} bytes")
                    digest.update(chunk)
                    fh.write(chunk)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o644)
            with self.lock(partner_pk):
                os.replace(tmp, directory / filename)
                fsync_dir(directory, strict=True)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        log.info("packager: partner %s stored %s (%d bytes)", partner_pk, filename, size)
        return digest.hexdigest(), size

    # ------------------------------------------------------------------ pack
    def pack(self, partner_pk: int, options: packager.PackOptions = packager.PackOptions()) -> packager.PackResult:
        """Pack the partner's ``model.pkl`` + ``model.bat`` into ``model.zip`` (replacing the previous package).

        211 when ``model.bat`` is missing, 212 when ``model.pkl`` is (the original checks in that order).
        Holds the partner's lock throughout: uploads wait, so the two inputs are a pair and packages are
        replaced in the order they were made."""
        directory = self.partner_dir(partner_pk)
        with self.lock(partner_pk):
            if not (directory / packager.BATCH_NAME).is_file():
                raise PackagerError(211, f"{packager.BATCH_NAME} does not exist")
            if not (directory / packager.MODEL_NAME).is_file():
                raise PackagerError(212, f"{packager.MODEL_NAME} does not exist")
            inputs = {name: directory / name for name in packager.INPUT_NAMES}
            result = packager.pack_file(inputs, directory / packager.PACKAGE_NAME, self.signer, options, durable=True)
        log.info("packager: partner %s packed %s (%d bytes)", partner_pk, packager.PACKAGE_NAME, result.size)
        return result

    # ------------------------------------------------------------------ download
    def open_package(self, partner_pk: int) -> IO[bytes]:
        """The partner's package, open for reading (211 when there is none). The open file stays whole
        whatever is packed meanwhile."""
        try:
            return open(self.partner_dir(partner_pk) / packager.PACKAGE_NAME, "rb")
        except FileNotFoundError:
            raise PackagerError(211, "package does not exist (GET pack first)") from None


def stream(fh: IO[bytes]) -> Iterator[bytes]:
    """The chunks of an open file, closing it at the end (a StreamingResponse body)."""
    with fh:
        while True:
            chunk = fh.read(_CHUNK)
            if not chunk:
                return
            yield chunk
