"""Header layout and a property-based test of the parser against random bytes."""

from __future__ import annotations

import hashlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ota_build.core import header as hdr
from ota_build.core.errors import CorruptError, TruncatedError


def make(**kw) -> hdr.Header:
    base = dict(ota_type=5, version_number=7112, payload_length=123, payload_sha256=hashlib.sha256(b"x").digest(),
                sig_alg=hdr.SigAlg.ED25519, key_id=b"\x11" * 32, header_length=216, signature=b"\x22" * 64)
    base.update(kw)
    return hdr.Header(**base)


def test_compact_layout_bytes():
    h = make()
    data = hdr.pack(h)
    assert len(data) == 216
    assert data[0] == 5                       # Afero's sysupgrade reads the type from byte 0
    assert data[1] == 1 and data[2:6] == b"MOTA"
    assert struct.unpack(">H", data[6:8])[0] == 216
    assert data[8] == 1                       # Ed25519
    assert struct.unpack(">Q", data[16:24])[0] == 7112
    assert struct.unpack(">Q", data[24:32])[0] == 123
    assert data[32:64] == h.payload_sha256
    assert data[64:96] == b"\x11" * 32
    assert struct.unpack(">H", data[96:98])[0] == 64
    assert data[98:162] == b"\x22" * 64
    assert data[162:] == b"\0" * 54
    assert hdr.parse(data) == h


def test_header_length_profiles():
    assert hdr.header_length_for(0, 64) == 216     # Ed25519
    assert hdr.header_length_for(0, 72) == 216     # ECDSA P-256 (DER)
    assert hdr.header_length_for(0, 294) == 392    # RSA-2048 bound: extended header
    assert hdr.header_length_for(300, 64) % 8 == 0


def test_record_roundtrip():
    rec = b'{"version":"1.0.2d"}'
    length = hdr.header_length_for(len(rec), 64)
    h = make(record=rec, header_length=length)
    parsed = hdr.parse(hdr.pack(h))
    assert parsed.record_json() == {"version": "1.0.2d"}
    assert parsed.signed_bytes() == h.signed_bytes()


@pytest.mark.parametrize("offset,value,error", [
    (2, 0x00, CorruptError),     # magic
    (1, 0x02, CorruptError),     # format version
    (8, 0x09, CorruptError),     # unknown algorithm
    (9, 0x80, CorruptError),     # unknown flag
    (10, 0x01, CorruptError),    # reserved
    (200, 0x01, CorruptError),   # padding
    (96, 0xff, CorruptError),    # signature length overruns
])
def test_malformed_headers(offset, value, error):
    data = bytearray(hdr.pack(make()))
    data[offset] = value
    with pytest.raises(error):
        hdr.parse(bytes(data))


def test_truncated():
    data = hdr.pack(make())
    with pytest.raises(TruncatedError):
        hdr.parse(data[:50])
    with pytest.raises(TruncatedError):
        hdr.parse(data[:150])


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=600))
def test_parser_never_crashes_on_random_bytes(data):
    try:
        hdr.parse(data)
    except (CorruptError, TruncatedError) as exc:
        assert str(exc) and "\n" not in str(exc)


@settings(max_examples=3000, deadline=None)
@given(st.binary(min_size=1, max_size=400), st.integers(0, 2**16 - 1))
def test_parser_never_crashes_on_plausible_headers(tail, length):
    """Random bytes behind a valid magic reach the deeper checks."""
    data = bytes([5, 1]) + b"MOTA" + struct.pack(">H", length) + tail
    try:
        h = hdr.parse(data)
        assert h.header_length == length
    except (CorruptError, TruncatedError) as exc:
        assert str(exc)
