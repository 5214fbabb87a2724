"""Packing an image into ``hub_update.bin`` and verifying one, as a device does.

Both directions are a single streaming pass with a fixed-size buffer, so memory
does not grow with the image.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, Any, Callable, Mapping, Optional

from ota_build.core import header as hdr
from ota_build.core.errors import CorruptError, DowngradeError, TruncatedError, UsageError, WrongTypeError
from ota_build.core.files import atomic_open, file_sha256
from ota_build.core.signing import Keyring, Signer, sign_message, verify_signature

log = logging.getLogger(__name__)

__all__ = ["PackResult", "VerifyResult", "VersionMismatchError", "check_header", "check_integrity", "check_length",
           "check_payload", "copy_hashing", "file_sha256", "inspect_file", "package_image", "read_header", "verify_file"]

CHUNK = 1 << 20
BUFFERS = 3
Progress = Optional[Callable[[int], None]]


class VersionMismatchError(CorruptError):
    """The signed header's versionNumber is not the one the file was offered (or asked) as."""

    reason = "version-mismatch"


class _Writer:
    """Writes chunks to ``dst``; with ``durable``, also starts writeback in the background.

    Durable: every ``SYNC_EVERY`` bytes a background ``fdatasync`` is started (if
    the last one finished), so dirty pages never pile up: memory stays flat on
    small devices, and the final fsync of the atomic write has little left to do.
    """

    SYNC_EVERY = 64 << 20

    def __init__(self, dst: IO[bytes], durable: bool = False):
        dst.flush()
        self.fd = dst.fileno()
        self.durable = durable
        self.pending = 0
        self.syncer: Optional[threading.Thread] = None

    def write(self, chunk: memoryview) -> None:
        size = len(chunk)
        while chunk:  # os.write releases the GIL; the buffered file object is bypassed (flushed above)
            chunk = chunk[os.write(self.fd, chunk):]
        if self.durable:
            self.pending += size
            if self.pending >= self.SYNC_EVERY and (self.syncer is None or not self.syncer.is_alive()):
                self.pending = 0
                self.syncer = threading.Thread(target=self._sync, daemon=True)
                self.syncer.start()

    def _sync(self) -> None:
        try:
            os.fdatasync(self.fd)
        except OSError:  # the final fsync reports real errors
            pass

    def close(self) -> None:
        if self.syncer is not None:
            self.syncer.join()


def copy_hashing(src: IO[bytes], dst: Optional[IO[bytes]], limit: Optional[int], progress: Progress,
                 durable: bool = False, digest: "Optional[hashlib._Hash]" = None) -> "tuple[bytes, int]":
    """Copy up to ``limit`` bytes (all when None) from src to dst, returning (sha256, count).

    ``digest``: a running SHA-256 to continue (a resumed stream); its state includes the copied bytes after
    the call, also when ``src`` raises (every chunk written was hashed; the count is then ``dst``'s position).

    One pass over the data, in a ring of ``BUFFERS`` reused buffers: this thread
    reads chunk N+1 (and writes chunk N) while a worker thread hashes chunk N
    (hashlib and the system calls release the GIL), so the time is about that
    of hashing alone. Without a destination it reads and hashes in this thread.
    """
    digest = hashlib.sha256() if digest is None else digest
    buffers = [memoryview(bytearray(CHUNK)) for _ in range(BUFFERS)]
    writer = _Writer(dst, durable) if dst is not None else None
    # Hashing alone gains nothing from a second thread (and loses to its hand-offs on a busy machine).
    pool = ThreadPoolExecutor(max_workers=1) if writer is not None else None
    pending: "deque[Future[None]]" = deque()
    total = 0
    index = 0
    try:
        while limit is None or total < limit:
            if len(pending) == BUFFERS - 1:
                pending.popleft().result()
            view = buffers[index % BUFFERS]
            index += 1
            want = CHUNK if limit is None else min(CHUNK, limit - total)
            n = src.readinto(view[:want])  # type: ignore[attr-defined]
            if not n:
                break
            chunk = view[:n]
            if pool is None:
                digest.update(chunk)
            else:
                pending.append(pool.submit(digest.update, chunk))
            if writer is not None:
                writer.write(chunk)
            total += n
            if progress:
                progress(n)
        while pending:
            pending.popleft().result()
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
        if writer is not None:
            writer.close()
    return digest.digest(), total


RANGE_STEP = 8 << 20


def _copy_range_hashing(src: IO[bytes], dst: IO[bytes], offset: int, progress: Progress) -> "Optional[tuple[bytes, int]]":
    """Copy all of ``src`` to ``dst`` at ``offset`` in the kernel (``copy_file_range``) while this thread
    hashes the bytes as written, read back from ``dst`` (page cache) behind the copy: the digest is
    that of exactly what was shipped, the data never passes through Python's buffers on its way out,
    and hashing overlaps the copy. None (nothing written) when the kernel cannot copy between these
    files (not regular files, another file system without support): the caller then copies itself."""
    copy_range = getattr(os, "copy_file_range", None)
    if copy_range is None:
        return None
    try:
        import stat

        if not stat.S_ISREG(os.fstat(src.fileno()).st_mode):
            return None
    except (OSError, ValueError, io.UnsupportedOperation):
        return None
    dst.flush()
    src_fd, dst_fd = src.fileno(), dst.fileno()
    start = src.tell()
    try:  # the first step in this thread: an unsupported pair fails here, before any thread exists
        first = copy_range(src_fd, dst_fd, RANGE_STEP, start, offset)
    except OSError:
        return None
    done = [first]  # bytes copied so far (the copier's progress), then the end marker
    finished = threading.Event() if first else None
    failure: "list[BaseException]" = []
    cond = threading.Condition()

    def copier() -> None:
        copied = first
        try:
            while True:
                n = copy_range(src_fd, dst_fd, RANGE_STEP, start + copied, offset + copied)
                if not n:
                    break
                copied += n
                with cond:
                    done[0] = copied
                    cond.notify()
        except BaseException as exc:  # noqa: B036 - handed to the hashing thread
            failure.append(exc)
        finally:
            with cond:
                done.append(-1)
                cond.notify()

    worker = threading.Thread(target=copier, daemon=True) if finished is not None else None
    if worker is not None:
        worker.start()
    digest = hashlib.sha256()
    buf = memoryview(bytearray(CHUNK))
    hashed = 0
    while True:
        with cond:
            while done[0] <= hashed and len(done) == 1 and worker is not None:
                cond.wait()
            available, ended = done[0], len(done) > 1 or worker is None
        while hashed < available:
            n = os.preadv(dst_fd, [buf[:min(CHUNK, available - hashed)]], offset + hashed)
            if not n:
                raise OSError(f"{dst.name}: short read while hashing the copy")
            digest.update(buf[:n])
            hashed += n
            if progress:
                progress(n)
        if ended and hashed >= done[0]:
            break
    if worker is not None:
        worker.join()
    if failure:
        raise failure[0]
    src.seek(start + hashed)
    return digest.digest(), hashed


def _open_input(path: str, what: str) -> io.BufferedReader:
    """Open ``path`` for reading; UsageError naming it when that fails."""
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise UsageError(f"{path}: {what} not found") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read {what}: {exc.strerror}") from None


@dataclass(frozen=True)
class PackResult:
    """What ``package_image`` produced."""

    path: str
    header: hdr.Header


def package_image(image_path: str, output_path: str, signer: Signer, ota_type: int, version_number: int,
                  record: Optional[Mapping[str, Any]] = None, embed_record: bool = False,
                  progress: Progress = None, durable: bool = False) -> PackResult:
    """Wrap ``image_path`` into a signed ``hub_update.bin`` at ``output_path`` (atomic).

    ``record`` (the OTA record, ``versionNumber`` an int) is embedded in the header, as JSON, when ``embed_record``.
    ``durable`` fsyncs the output before it gets its name (a build artefact needs not).
    """
    if not 0 <= ota_type <= 255:
        raise UsageError(f"OTA type {ota_type} is out of range 0..255")
    if not 0 <= version_number < 2**64:
        raise UsageError(f"versionNumber {version_number} does not fit in 64 bits")
    record_bytes = None
    if embed_record:
        if record is None:
            raise UsageError("--embed-record needs a record (--record)")
        from ota_build.core.record import record_to_json  # config and schemas are not needed to verify

        record_bytes = json.dumps(record_to_json(record), sort_keys=True, separators=(",", ":")).encode("utf-8")
    src = _open_input(image_path, "image file")
    if os.path.abspath(image_path) == os.path.abspath(output_path):
        raise UsageError(f"{output_path}: output must not be the input image")
    length = hdr.header_length_for(len(record_bytes or b""), signer.max_signature_length)
    with src, atomic_open(output_path, durable=durable) as out:
        out.seek(length)
        copied = None if durable else _copy_range_hashing(src, out, length, progress)
        digest, size = copied if copied is not None else copy_hashing(src, out, None, progress, durable)
        if size == 0:  # raised inside the with: the temporary output is removed, output_path is untouched
            raise UsageError(f"{image_path}: the image is empty (0 bytes): nothing to package")
        unsigned = hdr.Header(
            ota_type=ota_type, version_number=version_number, payload_length=size, payload_sha256=digest,
            sig_alg=signer.algorithm, key_id=signer.key_id, header_length=length, record=record_bytes,
        )
        signature = sign_message(signer, unsigned.signed_bytes())  # ECDSA: low-S
        signed = hdr.Header(**{**unsigned.__dict__, "signature": signature})
        out.seek(0)
        out.write(hdr.pack(signed))
    log.info("packaged %s (%d bytes, versionNumber %d, %s) into %s", image_path, size, version_number,
             signer.algorithm.label, output_path)
    return PackResult(output_path, signed)


def read_header(fh: io.BufferedReader) -> hdr.Header:
    """Read and parse the header at the start of an open file."""
    prefix = fh.read(hdr.FIXED_LENGTH)
    length = hdr.peek_length(prefix)
    rest = fh.read(length - len(prefix))
    return hdr.parse(prefix + rest)


def inspect_file(path: str) -> hdr.Header:
    """Parse the header of ``path`` without verifying anything else."""
    with _open_input(path, "file") as fh:
        return read_header(fh)


@dataclass(frozen=True)
class VerifyResult:
    """A verified file's header and where its payload went (if extracted)."""

    header: hdr.Header
    extracted: Optional[str] = None


def verify_file(path: str, keyring: Keyring, expected_type: Optional[int] = None,
                min_version_number: Optional[int] = None, extract_to: Optional[str] = None,
                backend: str = "auto", progress: Progress = None, durable: bool = False,
                expected_version_number: Optional[int] = None) -> VerifyResult:
    """Verify ``path`` as the device does; optionally write the payload to ``extract_to``.

    Order: header structure, file length, trusted key, header signature, type,
    versionNumber (equal to ``expected_version_number``, e.g. the offer's, and at
    least ``min_version_number``), payload digest. The extracted file appears (atomically)
    only after every check has passed (fsync'd first with ``durable``).
    """
    with _open_input(path, "file") as fh:
        header = _read_checked_header(fh)
        check_header(header, keyring, expected_type, min_version_number, backend, expected_version_number)
        if extract_to is None:
            digest, count = copy_hashing(fh, None, header.payload_length, progress)
            check_payload(header, digest, count)
            return VerifyResult(header)

        # atomic_open removes the temporary file if the payload check raises.
        with atomic_open(extract_to, durable=durable) as out:
            digest, count = copy_hashing(fh, out, header.payload_length, progress, durable)
            check_payload(header, digest, count)
        return VerifyResult(header, extract_to)


def check_header(header: hdr.Header, keyring: Keyring, expected_type: Optional[int] = None,
                 min_version_number: Optional[int] = None, backend: str = "auto",
                 expected_version_number: Optional[int] = None) -> None:
    """Check a parsed header as the device does, before any payload byte is used.

    Order: trusted key, signature, type, versionNumber equal to ``expected_version_number`` (e.g. the
    offer's), versionNumber at least ``min_version_number``. Raises the VerifyError of the first failure.
    """
    key = keyring.get(header.key_id)
    verify_signature(key, header.sig_alg, header.signed_bytes(), header.signature, backend=backend)
    if expected_type is not None and header.ota_type != expected_type:
        raise WrongTypeError(f"OTA type is {header.ota_type}, expected {expected_type}")
    if expected_version_number is not None and header.version_number != expected_version_number:
        raise VersionMismatchError(f"the signed header says versionNumber {header.version_number}, "
                                   f"but it was offered as {expected_version_number}")
    if min_version_number is not None and header.version_number < min_version_number:
        raise DowngradeError(f"versionNumber {header.version_number} is below the minimum {min_version_number}")


def check_length(header: hdr.Header, size: int) -> None:
    """TruncatedError/CorruptError unless a file of ``size`` bytes is exactly header + payload long."""
    expected = header.header_length + header.payload_length
    if size < expected:
        raise TruncatedError(f"file is {size} bytes; the header announces {expected}")
    if size > expected:
        raise CorruptError(f"file is {size} bytes; the header announces {expected} (trailing data)")


def _read_checked_header(fh: io.BufferedReader) -> hdr.Header:
    """The header, after checking the file is exactly header + payload long."""
    header = read_header(fh)
    check_length(header, os.fstat(fh.fileno()).st_size)
    return header


def check_integrity(path: str) -> hdr.Header:
    """Structure, length and payload digest of ``path``, without a key (the signature is not checked).

    What a server can check of an upload when no trusted key is registered.
    """
    with _open_input(path, "file") as fh:
        header = _read_checked_header(fh)
        digest, count = copy_hashing(fh, None, header.payload_length, None)
        check_payload(header, digest, count)
    return header


def check_payload(header: hdr.Header, digest: bytes, count: int) -> None:
    """TruncatedError/CorruptError unless ``count`` bytes with SHA-256 ``digest`` are the header's payload."""
    if count != header.payload_length:
        raise TruncatedError(f"payload is {count} bytes; the header announces {header.payload_length}")
    if digest != header.payload_sha256:
        raise CorruptError("payload SHA-256 does not match the signed header")
