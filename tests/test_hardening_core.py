"""Issue 11 in core/: patterns anchored to the whole string (item 4), a config without partnerId (19),
``check_zip`` (8), low-S ECDSA on every sign and verify path (10)."""

from __future__ import annotations

import io
import zipfile

import pytest

from ota_build.core.config import load_config
from ota_build.core.errors import BadSignatureError, ConfigError
from ota_build.core.names import check_name
from ota_build.core.package import package_image, verify_file
from ota_build.core.schema import jsonschema_available, pattern_matches
from ota_build.core.signing import (P256_ORDER, Keyring, ecdsa_is_low_s, ecdsa_low_s, load_public_key, make_signer,
                                    verify_signature)
from ota_build.core.version import derive_version_number, parse_build_number
from ota_build.core.ziputil import UnsafeZipError, check_zip

from .conftest import assert_one_line_error, run_cli, write_config

BACKENDS = ["builtin"] + (["jsonschema"] if jsonschema_available() else [])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("field, value", [("version", "1.0\n"), ("partnerId", "p1\n"), ("deviceTypeId", "d\n"),
                                          ("imageFiles", {"A": "hub.bin\n"})])
def test_config_fields_with_a_trailing_newline_are_refused(tmp_path, backend, field, value):
    """Item 4: ``version: "1.0\\n"`` made the record version "1.0\\n.42" (``$`` before a newline)."""
    path = write_config(tmp_path, **{field: value})
    with pytest.raises(ConfigError) as exc:
        load_config(str(path), env={}, schema_backend=backend)
    assert f"field '{field}" in str(exc.value) and "does not match the pattern" in str(exc.value)


def test_patterns_mean_the_end_of_the_string():
    assert pattern_matches("^[a-z]+$", "abc") and not pattern_matches("^[a-z]+$", "abc\n")
    assert pattern_matches("^https?://", "http://x") and pattern_matches(r"^a\$$", "a$")
    assert pattern_matches("^[$]+$", "$$") and not pattern_matches("^[$]+$", "$$\n")


@pytest.mark.parametrize("bad", ["zpk\n", "1.0\n", "a\r", "\nzpk", " zpk"])
def test_names_are_checked_whole(bad):
    with pytest.raises(ValueError):
        check_name(bad, "package")


def test_version_numbers_are_parsed_whole():
    from ota_build.core.errors import UsageError

    assert derive_version_number("1.2", 3) == derive_version_number("1.2.0", 3)
    for bad in ("1.0\n", "1.0 ", "١.0"):
        with pytest.raises(UsageError):
            derive_version_number(bad, 3)
    for bad in ("7x", "²", "١"):
        with pytest.raises(UsageError):
            parse_build_number(bad)


def test_record_needs_a_partner_id(tmp_path):
    """Item 19: without partnerId the record had "partnerId": "" and exit 0: now one line, exit 2."""
    for changes in ({"partnerId": None}, {"partnerId": ""}):
        path = write_config(tmp_path, **changes)
        proc = run_cli("ota-build", "record", "-c", str(path), "-n", "2", "-s", cwd=tmp_path)
        assert_one_line_error(proc, 2, "partnerId")
        assert not (tmp_path / "full_ota_record.json").exists()


def _zip(*entries: "tuple[str, bytes]") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            zf.writestr(zipfile.ZipInfo(name), data, compress_type=zipfile.ZIP_DEFLATED)
    return buf.getvalue()


@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_check_zip(tmp_path):
    """Item 8: ``core.ziputil.check_zip``, the one check shared by the server (upload) and the device (extract)."""
    path = tmp_path / "p.zip"
    path.write_bytes(_zip(("app/run.sh", b"echo hi\n"), ("app/data.bin", bytes(range(256)) * 100)))
    assert check_zip(str(path)) == 8 + 25600
    cases = {
        "'..'": _zip(("../x", b"x")), "absolute": _zip(("/x", b"x")), "backslash": _zip(("..\\x", b"x")),
        "absolute path": _zip(("D:x", b"x")), "no entries": b"PK\x05\x06" + b"\0" * 18,
        "twice": _zip(("a", b"1"), ("a", b"2")), "not a zip": b"hello",
        "times": _zip(("z", b"\0" * (4 * 1024 * 1024))),
    }
    for why, data in cases.items():
        path.write_bytes(data)
        with pytest.raises(UnsafeZipError, match=why):
            check_zip(str(path))
    path.write_bytes(_zip(("a", b"\1" * 3000), ("b", b"\2" * 3000)))
    with pytest.raises(UnsafeZipError, match="expands to 6000 bytes"):
        check_zip(str(path), max_total=5000)
    link = zipfile.ZipInfo("l")
    link.external_attr = (0o120777 << 16)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(link, "/etc/passwd")
    path.write_bytes(buf.getvalue())
    with pytest.raises(UnsafeZipError, match="symbolic link"):
        check_zip(str(path))


def _high_s(signature: bytes) -> bytes:
    """The malleable twin (r, n - s) of a low-S signature."""
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

    r, s = decode_dss_signature(signature)
    return encode_dss_signature(r, P256_ORDER - s)


@pytest.mark.parametrize("backend", ["cryptography", "openssl"])
def test_ecdsa_is_signed_low_s_and_high_s_is_refused(tmp_path, keys, backend):
    """Item 10: (r, n - s) verified too, so one image had two binaries; now every image is signed low-S and a
    high-S signature is refused by every back-end."""
    key = keys["ecdsa-p256"]
    pub = load_public_key(key["public"])
    payload = tmp_path / "payload"
    payload.write_bytes(b"p" * 1000)
    for i in range(12):  # half of the raw signatures are high-S: each packaging must come out low-S
        out = tmp_path / f"img{i}.bin"
        result = package_image(str(payload), str(out), make_signer(key["private"], backend=backend), 5, 1 + i)
        assert ecdsa_is_low_s(result.header.signature)
        verify_file(str(out), Keyring([pub]), backend=backend)
    header = result.header
    twin = _high_s(header.signature)
    assert not ecdsa_is_low_s(twin) and ecdsa_low_s(twin) == header.signature
    with pytest.raises(BadSignatureError, match="high S"):
        verify_signature(pub, header.sig_alg, header.signed_bytes(), twin, backend=backend)
