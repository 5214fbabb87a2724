"""package / verify / inspect against real keys and real files, tampering included."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from ota_build.core.errors import (BadSignatureError, CorruptError, DowngradeError, TruncatedError, UnknownKeyError,
                              VerifyError, WrongTypeError)
from ota_build.core.errors import UsageError
from ota_build.core.package import inspect_file, package_image, verify_file
from ota_build.cli.sample import make_sample_rootfs
from ota_build.core.signing import Keyring, make_signer

from .conftest import ALGORITHMS, assert_one_line_error, run_cli

BACKENDS = ("cryptography", "openssl")


@pytest.fixture
def image(tmp_path):
    return make_sample_rootfs(str(tmp_path / "rootfs.tar.gz"))


def pack(keys, alg, image, out, backend="cryptography", **kw):
    signer = make_signer(keys[alg]["private"], backend=backend)
    return package_image(image, str(out), signer, kw.pop("ota_type", 5), kw.pop("version_number", 10000000000002), **kw)


@pytest.mark.parametrize("alg", ALGORITHMS)
@pytest.mark.parametrize("sign_backend", BACKENDS)
@pytest.mark.parametrize("verify_backend", BACKENDS)
def test_roundtrip_every_algorithm_and_backend(keys, image, tmp_path, alg, sign_backend, verify_backend):
    out = tmp_path / "hub_update.bin"
    res = pack(keys, alg, image, out, backend=sign_backend)
    ring = Keyring.from_files([keys[alg]["public"]])
    got = verify_file(str(out), ring, expected_type=5, min_version_number=10000000000002,
                      extract_to=str(tmp_path / "img"), backend=verify_backend)
    assert got.header == res.header
    with open(image, "rb") as a, open(tmp_path / "img", "rb") as b:
        assert a.read() == b.read()
    if alg != "rsa-pss":
        assert res.header.header_length == 216
        assert out.read_bytes()[0] == 5


def test_payload_follows_header_unchanged(keys, image, tmp_path):
    out = tmp_path / "hub_update.bin"
    pack(keys, "ed25519", image, out)
    data = out.read_bytes()
    with open(image, "rb") as fh:
        assert data[216:] == fh.read()  # Afero's scripts split .hdr (216) and .img


def test_every_single_bit_flip_fails_verification(keys, tmp_path):
    img = tmp_path / "small.img"
    img.write_bytes(bytes(range(256)) * 2)
    out = tmp_path / "hub_update.bin"
    pack(keys, "ed25519", str(img), out, record={"versionNumber": "1"}, embed_record=True)
    good = out.read_bytes()
    ring = Keyring.from_files([keys["ed25519"]["public"]])
    verify_file(str(out), ring)
    bad = tmp_path / "flipped.bin"
    reasons = set()
    for byte in range(len(good)):
        for bit in range(8):
            data = bytearray(good)
            data[byte] ^= 1 << bit
            bad.write_bytes(bytes(data))
            with pytest.raises(VerifyError) as exc:
                verify_file(str(bad), ring, expected_type=5)
            reasons.add(exc.value.reason)
    assert {"corrupt", "bad-signature", "unknown-key"} <= reasons


@pytest.mark.parametrize("alg", ["ecdsa-p256", "rsa-pss"])
def test_bit_flips_in_header_and_payload_other_algorithms(keys, tmp_path, alg):
    img = tmp_path / "small.img"
    img.write_bytes(b"payload" * 20)
    out = tmp_path / "hub_update.bin"
    pack(keys, alg, str(img), out)
    good = out.read_bytes()
    ring = Keyring.from_files([keys[alg]["public"]])
    bad = tmp_path / "flipped.bin"
    for byte in list(range(0, len(good), 3)):
        data = bytearray(good)
        data[byte] ^= 0x10
        bad.write_bytes(bytes(data))
        with pytest.raises(VerifyError):
            verify_file(str(bad), ring)


def test_failure_classes(keys, other_key, image, tmp_path):
    out = tmp_path / "hub_update.bin"
    pack(keys, "ed25519", image, out)
    ring = Keyring.from_files([keys["ed25519"]["public"]])
    data = out.read_bytes()
    cases = tmp_path / "c.bin"
    cases.write_bytes(data[:-1])
    with pytest.raises(TruncatedError):
        verify_file(str(cases), ring)
    cases.write_bytes(data[:100])
    with pytest.raises(TruncatedError):
        verify_file(str(cases), ring)
    cases.write_bytes(data + b"\0")
    with pytest.raises(CorruptError):
        verify_file(str(cases), ring)
    with pytest.raises(UnknownKeyError):
        verify_file(str(out), Keyring.from_files([other_key["public"]]))
    with pytest.raises(WrongTypeError):
        verify_file(str(out), ring, expected_type=3)
    with pytest.raises(DowngradeError):
        verify_file(str(out), ring, min_version_number=10000000000003)
    # A trusted key id with someone else's signature: the attacker copies the key id.
    forged = tmp_path / "forged.bin"
    pack({"ed25519": other_key}, "ed25519", image, forged)
    fd = bytearray(forged.read_bytes())
    fd[64:96] = data[64:96]
    forged.write_bytes(bytes(fd))
    with pytest.raises(BadSignatureError):
        verify_file(str(forged), ring)


def test_extract_only_after_everything_verified(keys, image, tmp_path):
    out = tmp_path / "hub_update.bin"
    pack(keys, "ed25519", image, out)
    data = bytearray(out.read_bytes())
    data[-1] ^= 1  # payload corruption is only found at the end of the stream
    out.write_bytes(bytes(data))
    target = tmp_path / "extract" / "ota_type_5.img"
    target.parent.mkdir()
    target.write_bytes(b"previous")
    with pytest.raises(CorruptError):
        verify_file(str(out), Keyring.from_files([keys["ed25519"]["public"]]), extract_to=str(target))
    assert target.read_bytes() == b"previous"
    assert os.listdir(target.parent) == ["ota_type_5.img"]  # no temporary left behind


CLI_CASES = [
    ("truncated", 11), ("trailing", 10), ("payload", 10), ("signature", 12), ("unknown-key", 13),
    ("wrong-type", 14), ("downgrade", 15), ("magic", 10),
]


@pytest.mark.parametrize("case,code", CLI_CASES)
def test_cli_verify_exit_codes(keys, other_key, image, tmp_path, case, code):
    out = tmp_path / "hub_update.bin"
    run_cli("ota-build", "package", image, "-o", str(out), "--version-number", "100", "-k",
            keys["ed25519"]["private"], check=0)
    data = bytearray(out.read_bytes())
    key = keys["ed25519"]["public"]
    extra = []
    if case == "truncated":
        data = data[:-10]
    elif case == "trailing":
        data += b"x"
    elif case == "payload":
        data[300] ^= 4
    elif case == "signature":
        data[100] ^= 4
    elif case == "unknown-key":
        key = other_key["public"]
    elif case == "wrong-type":
        extra = ["--type", "3"]
    elif case == "downgrade":
        extra = ["--min-version-number", "101"]
    elif case == "magic":
        data[3] = 0
    out.write_bytes(bytes(data))
    proc = run_cli("ota-build", "verify", str(out), "-k", key, *extra)
    assert_one_line_error(proc, code, case.split("-")[0] if case not in ("trailing", "payload", "magic") else "corrupt")


def test_cli_package_with_record_and_inspect(keys, image, tmp_path, seed_config):
    run_cli("ota-build", "record", "-c", str(seed_config), "-n", "2", "-d", "-s", cwd=tmp_path, check=0)
    out = tmp_path / "hub_update.bin"
    run_cli("ota-build", "package", image, "-r", str(tmp_path / "full_ota_record.json"), "-o", str(out),
            "-k", keys["ecdsa-p256"]["private"], "--embed-record", check=0)
    proc = run_cli("ota-build", "inspect", str(out), "--json", check=0)
    info = json.loads(proc.stdout)
    assert info["sig_alg"] == "ecdsa-p256" and info["ota_type"] == 5
    assert info["version_number"] == "10000000000002"
    assert info["record"]["version"] == "1.0.2d"
    assert info["record"]["versionNumber"] == "10000000000002"  # the embedded record is the file format: a string
    proc = run_cli("ota-build", "verify", str(out), "-k", keys["ecdsa-p256"]["public"], "-t", "5",
                   "-x", str(tmp_path / "img"), check=0)
    assert "OK" in proc.stdout
    assert (tmp_path / "img").read_bytes() == open(image, "rb").read()


def test_keyring_directory(keys, image, tmp_path):
    out = tmp_path / "hub_update.bin"
    pack(keys, "rsa-pss", image, out)
    ring_dir = tmp_path / "ring"
    ring_dir.mkdir()
    for alg in ALGORITHMS:
        shutil.copy(keys[alg]["public"], ring_dir / f"{alg}.pem")
    proc = run_cli("ota-build", "verify", str(out), "-k", str(ring_dir), check=0)
    assert "rsa-pss" in proc.stdout


def test_package_errors_are_one_line(keys, tmp_path):
    proc = run_cli("ota-build", "package", str(tmp_path / "missing.tar.gz"), "--version-number", "1",
                   "-k", keys["ed25519"]["private"], "-o", str(tmp_path / "o.bin"))
    assert_one_line_error(proc, 2, "missing.tar.gz", "not found")
    img = tmp_path / "i.img"
    img.write_bytes(b"x")
    proc = run_cli("ota-build", "package", str(img), "--version-number", "1", "-k", str(tmp_path / "nokey.pem"),
                   "-o", str(tmp_path / "o.bin"))
    assert_one_line_error(proc, 2, "nokey.pem")
    proc = run_cli("ota-build", "package", str(img), "-k", keys["ed25519"]["private"], "-o", str(tmp_path / "o.bin"))
    assert_one_line_error(proc, 2, "--record")
    assert not (tmp_path / "o.bin").exists()


def test_inspect_garbage(tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(os.urandom(300))
    proc = run_cli("ota-build", "inspect", str(junk))
    assert_one_line_error(proc, 10, "magic")


def test_output_not_replaced_when_packaging_fails(keys, image, tmp_path):
    out = tmp_path / "hub_update.bin"
    out.write_bytes(b"old release")
    with pytest.raises(UsageError, match="64 bits"):
        package_image(image, str(out), make_signer(keys["ed25519"]["private"]), 5, 2**64)
    assert out.read_bytes() == b"old release"
    assert sorted(os.listdir(tmp_path)) == sorted(["hub_update.bin", "rootfs.tar.gz"])
    assert inspect_file  # imported API stays public


def test_check_integrity_without_a_key(keys, image, tmp_path):
    """What the server checks when a partner registered no key: structure, length, payload digest."""
    import hashlib

    from ota_build.core.package import check_integrity, file_sha256

    out = tmp_path / "hub_update.bin"
    pack(keys, "ed25519", image, out)
    assert check_integrity(str(out)).payload_length == os.path.getsize(image)
    assert file_sha256(str(out)) == hashlib.sha256(out.read_bytes()).hexdigest()
    data = bytearray(out.read_bytes())
    data[-1] ^= 1
    out.write_bytes(bytes(data))
    with pytest.raises(CorruptError):
        check_integrity(str(out))
    out.write_bytes(bytes(data[:-5]))
    with pytest.raises(TruncatedError):
        check_integrity(str(out))


def test_kernel_copy_hashes_exactly_what_it_wrote(tmp_path):
    """package's copy_file_range path: the output holds the image at the offset, the digest is the image's,
    and what cannot be copied by the kernel (a pipe) falls back to the buffered copy with the same result."""
    import hashlib
    import os

    from ota_build.core import package as P

    data = os.urandom(3 * P.RANGE_STEP + 12345)  # several steps of the copier, and a partial last one
    image = tmp_path / "image"
    image.write_bytes(data)
    with open(image, "rb") as src, open(tmp_path / "out", "wb+") as dst:
        dst.write(b"H" * 100)
        got = P._copy_range_hashing(src, dst, 100, None)
    if got is None:
        pytest.skip("copy_file_range is not available here")
    assert got == (hashlib.sha256(data).digest(), len(data))
    assert (tmp_path / "out").read_bytes() == b"H" * 100 + data
    read, write = os.pipe()
    with open(read, "rb") as pipe_src, open(tmp_path / "out2", "wb") as dst:
        assert P._copy_range_hashing(pipe_src, dst, 0, None) is None  # not a regular file: the caller copies
    with open(tmp_path / "empty", "wb"):
        pass
    with open(tmp_path / "empty", "rb") as src, open(tmp_path / "out3", "wb+") as dst:
        assert P._copy_range_hashing(src, dst, 0, None) == (hashlib.sha256(b"").digest(), 0)
    os.close(write)
