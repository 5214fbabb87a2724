"""The ``hub_update.bin`` header: byte layout, packing and parsing.

Pure standard library, so that both the BitBake build (python3-native) and a
device can use it. The byte layout is documented in docs/hub_update.bin.md;
everything is big-endian::

    off  len  field
      0    1  ota_type          (5 = HUB; byte 0 as Afero's sysupgrade expects)
      1    1  format_version    (1)
      2    4  magic             b"MOTA"
      6    2  header_length     total header bytes (216 in the compact profile)
      8    1  sig_alg           1 Ed25519, 2 ECDSA P-256/SHA-256, 3 RSA-PSS/SHA-256
      9    1  flags             bit 0: record embedded; other bits 0
     10    2  reserved          0
     12    4  record_length     bytes of embedded record (0 if none)
     16    8  version_number
     24    8  payload_length
     32   32  payload_sha256
     64   32  key_id            SHA-256 of the signer's public key (DER SubjectPublicKeyInfo)
     96   rl  record            UTF-8 JSON, only when flag bit 0 is set
  96+rl    2  sig_length
  98+rl   sl  signature         over bytes [0, 96+rl)
     ...      zero padding up to header_length

The signature covers every header field before it, and through
``payload_sha256`` the payload itself.
"""

from __future__ import annotations

import enum
import json
import struct
from dataclasses import dataclass
from typing import Any, Dict, Optional

from ota_build.core.errors import CorruptError, TruncatedError

MAGIC = b"MOTA"
FORMAT_VERSION = 1
COMPACT_LENGTH = 216
FIXED_LENGTH = 96
MAX_HEADER_LENGTH = 65535
FLAG_RECORD = 0x01
_FIXED = struct.Struct(">BB4sHBBHIQQ32s32s")
assert _FIXED.size == FIXED_LENGTH


class SigAlg(enum.IntEnum):
    """Signature algorithms a header can name."""

    ED25519 = 1
    ECDSA_P256_SHA256 = 2
    RSA_PSS_SHA256 = 3

    @property
    def label(self) -> str:
        """Human/CLI name of the algorithm."""
        return {1: "ed25519", 2: "ecdsa-p256", 3: "rsa-pss"}[int(self)]

    @classmethod
    def from_label(cls, label: str) -> "SigAlg":
        """Inverse of ``label``."""
        for alg in cls:
            if alg.label == label:
                return alg
        raise ValueError(f"unknown signature algorithm {label!r} (ed25519, ecdsa-p256, rsa-pss)")


@dataclass(frozen=True)
class Header:
    """A parsed (or to-be-written) header."""

    ota_type: int
    version_number: int
    payload_length: int
    payload_sha256: bytes
    sig_alg: SigAlg
    key_id: bytes
    header_length: int
    record: Optional[bytes] = None
    signature: bytes = b""
    format_version: int = FORMAT_VERSION

    def signed_bytes(self) -> bytes:
        """The bytes the signature covers: the fixed fields and the record."""
        record = self.record or b""
        flags = FLAG_RECORD if self.record is not None else 0
        fixed = _FIXED.pack(
            self.ota_type, self.format_version, MAGIC, self.header_length, int(self.sig_alg), flags,
            0, len(record), self.version_number, self.payload_length, self.payload_sha256, self.key_id,
        )
        return fixed + record

    def record_json(self) -> Optional[Dict[str, Any]]:
        """The embedded record, decoded, or None."""
        if self.record is None:
            return None
        return json.loads(self.record.decode("utf-8"))

    def as_dict(self) -> Dict[str, Any]:
        """A JSON-friendly view for ``ota-build inspect``."""
        return {
            "ota_type": self.ota_type,
            "format_version": self.format_version,
            "header_length": self.header_length,
            "version_number": str(self.version_number),
            "payload_length": self.payload_length,
            "payload_sha256": self.payload_sha256.hex(),
            "sig_alg": self.sig_alg.label,
            "key_id": self.key_id.hex(),
            "signature_length": len(self.signature),
            "record": self.record_json(),
        }


def header_length_for(record_length: int, max_signature_length: int) -> int:
    """Header length to reserve: 216 when it fits, else rounded up to 8 bytes."""
    needed = FIXED_LENGTH + record_length + 2 + max_signature_length
    if needed <= COMPACT_LENGTH:
        return COMPACT_LENGTH
    length = (needed + 7) // 8 * 8
    if length > MAX_HEADER_LENGTH:
        raise ValueError(f"header would be {length} bytes; the embedded record is too large")
    return length


def pack(header: Header) -> bytes:
    """Serialise a signed header to exactly ``header.header_length`` bytes."""
    signed = header.signed_bytes()
    body = signed + struct.pack(">H", len(header.signature)) + header.signature
    if len(body) > header.header_length:
        raise ValueError(f"signature of {len(header.signature)} bytes does not fit a {header.header_length}-byte header")
    return body + b"\0" * (header.header_length - len(body))


def peek_length(prefix: bytes) -> int:
    """Header length from the first FIXED_LENGTH bytes (checks magic and version)."""
    if len(prefix) < FIXED_LENGTH:
        raise TruncatedError(f"file is {len(prefix)} bytes, shorter than the {FIXED_LENGTH}-byte fixed header")
    fields = _FIXED.unpack_from(prefix)
    if fields[2] != MAGIC:
        raise CorruptError(f"bad magic {fields[2]!r} (expected {MAGIC!r}): not a hub_update.bin")
    if fields[1] != FORMAT_VERSION:
        raise CorruptError(f"unsupported header format version {fields[1]} (this tool reads {FORMAT_VERSION})")
    length = fields[3]
    if length < FIXED_LENGTH + 2:
        raise CorruptError(f"header length {length} is too small")
    return length


def parse(data: bytes) -> Header:
    """Parse a header from ``data`` (which must hold at least the whole header).

    Every malformed input raises CorruptError or TruncatedError with one line.
    """
    length = peek_length(data)
    if len(data) < length:
        raise TruncatedError(f"file ends inside the {length}-byte header (only {len(data)} bytes)")
    (ota_type, fmt, _magic, _length, alg, flags, reserved, record_length,
     version_number, payload_length, payload_sha256, key_id) = _FIXED.unpack_from(data)
    try:
        sig_alg = SigAlg(alg)
    except ValueError:
        raise CorruptError(f"unknown signature algorithm id {alg}") from None
    if flags & ~FLAG_RECORD:
        raise CorruptError(f"unknown header flags 0x{flags:02x}")
    if reserved:
        raise CorruptError("reserved header field is not zero")
    has_record = bool(flags & FLAG_RECORD)
    if record_length and not has_record:
        raise CorruptError("record length set but the record flag is not")
    sig_len_at = FIXED_LENGTH + record_length
    if sig_len_at + 2 > length:
        raise CorruptError(f"record length {record_length} overruns the {length}-byte header")
    record = bytes(data[FIXED_LENGTH:sig_len_at]) if has_record else None
    (sig_length,) = struct.unpack_from(">H", data, sig_len_at)
    sig_end = sig_len_at + 2 + sig_length
    if sig_length == 0 or sig_end > length:
        raise CorruptError(f"signature length {sig_length} does not fit the {length}-byte header")
    if any(data[sig_end:length]):
        raise CorruptError("header padding is not zero")
    if record is not None:
        try:
            json.loads(record.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise CorruptError("embedded record is not valid UTF-8 JSON") from None
    return Header(
        ota_type=ota_type, version_number=version_number, payload_length=payload_length,
        payload_sha256=bytes(payload_sha256), sig_alg=sig_alg, key_id=bytes(key_id), header_length=length,
        record=record, signature=bytes(data[sig_len_at + 2:sig_end]), format_version=fmt,
    )
