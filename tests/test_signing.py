"""Signer back-ends: external command, encrypted keys, keygen hygiene."""

from __future__ import annotations

import os
import stat
import subprocess

import pytest

from ota_build.core.errors import KeyError_, SigningError
from ota_build.core.header import SigAlg
from ota_build.core.package import package_image, verify_file
from ota_build.core.signing import (CommandSigner, Keyring, OpenSSLSigner, generate_key, load_public_key, make_signer,
                               verify_signature)

from .conftest import assert_one_line_error, run_cli


@pytest.mark.parametrize("alg", ["ed25519", "ecdsa-p256"])
def test_external_command_signer(keys, tmp_path, alg):
    """An external signer: openssl pkeyutl reading stdin (as an HSM wrapper would)."""
    if alg == "ed25519":
        cmd = f"openssl pkeyutl -sign -rawin -inkey {keys[alg]['private']} -in {{in}} -out {{out}}"
    else:
        cmd = f"openssl dgst -sha256 -sign {keys[alg]['private']}"  # message on stdin, signature on stdout
    signer = CommandSigner(cmd, keys[alg]["public"])
    img = tmp_path / "img"
    img.write_bytes(b"external" * 100)
    out = tmp_path / "hub_update.bin"
    package_image(str(img), str(out), signer, 5, 42)
    verify_file(str(out), Keyring.from_files([keys[alg]["public"]]), expected_type=5)


def test_external_signer_via_cli(keys, tmp_path):
    img = tmp_path / "img"
    img.write_bytes(b"cli" * 100)
    out = tmp_path / "o.bin"
    run_cli("ota-build", "package", str(img), "--version-number", "3", "-o", str(out),
            "--sign-command", f"openssl pkeyutl -sign -rawin -inkey {keys['ed25519']['private']} -in {{in}}",
            "--public-key", keys["ed25519"]["public"], check=0)
    run_cli("ota-build", "verify", str(out), "-k", keys["ed25519"]["public"], check=0)


def test_external_signer_failure_is_one_line(keys, tmp_path):
    img = tmp_path / "img"
    img.write_bytes(b"x")
    proc = run_cli("ota-build", "package", str(img), "--version-number", "3", "-o", str(tmp_path / "o.bin"),
                   "--sign-command", "false", "--public-key", keys["ed25519"]["public"])
    assert_one_line_error(proc, 1, "external signer", "exited 1")
    assert not (tmp_path / "o.bin").exists()


def test_wrong_signature_from_external_signer_is_caught_by_verify(keys, other_key, tmp_path):
    signer = CommandSigner(f"openssl pkeyutl -sign -rawin -inkey {other_key['private']} -in {{in}}",
                           keys["ed25519"]["public"])
    img = tmp_path / "img"
    img.write_bytes(b"x" * 10)
    out = tmp_path / "o.bin"
    package_image(str(img), str(out), signer, 5, 1)
    proc = run_cli("ota-build", "verify", str(out), "-k", keys["ed25519"]["public"])
    assert_one_line_error(proc, 12, "bad-signature")


@pytest.mark.parametrize("backend", ["cryptography", "openssl"])
def test_encrypted_key_password_from_environment(tmp_path, backend, monkeypatch):
    plain = tmp_path / "k.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "ED25519", "-out", str(plain)], check=True)
    enc = tmp_path / "enc.pem"
    subprocess.run(["openssl", "pkey", "-in", str(plain), "-out", str(enc), "-aes256", "-passout", "pass:s3cret"],
                   check=True)
    monkeypatch.setenv("OTA_KEY_PASSWORD", "s3cret")
    signer = make_signer(str(enc), backend=backend)
    sig = signer.sign(b"msg")
    verify_signature(signer.public_key, SigAlg.ED25519, b"msg", sig)
    monkeypatch.setenv("OTA_KEY_PASSWORD", "wrong")
    with pytest.raises((KeyError_, SigningError)):
        make_signer(str(enc), backend=backend)


def test_openssl_signer_never_puts_password_on_command_line(tmp_path, monkeypatch, keys):
    monkeypatch.setenv("OTA_KEY_PASSWORD", "topsecret")
    seen = []
    real_run = subprocess.run

    def spy(cmd, *a, **kw):
        seen.append(list(cmd))
        return real_run(cmd, *a, **kw)

    monkeypatch.setattr(subprocess, "run", spy)
    try:
        OpenSSLSigner(keys["ed25519"]["private"]).sign(b"m")
    except (SigningError, KeyError_):
        pass
    assert seen and not any("topsecret" in arg for cmd in seen for arg in cmd)


@pytest.mark.parametrize("backend", ["cryptography", "openssl"])
def test_keygen_files(tmp_path, backend):
    priv, pub = tmp_path / "a.key.pem", tmp_path / "a.pub.pem"
    key = generate_key("ecdsa-p256", str(priv), str(pub), backend=backend)
    assert stat.S_IMODE(os.stat(priv).st_mode) == 0o600
    assert load_public_key(str(pub)).key_id == key.key_id
    assert b"PRIVATE KEY" in priv.read_bytes()
    with pytest.raises(KeyError_, match="already exists"):
        generate_key("ecdsa-p256", str(priv), str(pub), backend=backend)


def test_keygen_cli(tmp_path):
    proc = run_cli("ota-build", "keygen", "-o", str(tmp_path / "dev"), check=0)
    assert "key id" in proc.stdout
    proc = run_cli("ota-build", "keygen", "-o", str(tmp_path / "dev"))
    assert_one_line_error(proc, 2, "already exists")


def test_unsupported_key_types(tmp_path):
    p = tmp_path / "p384.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384", "-out", str(p)],
                   check=True)
    with pytest.raises(KeyError_, match="P-256"):
        make_signer(str(p), backend="cryptography")
    with pytest.raises(KeyError_, match="P-256"):
        make_signer(str(p), backend="openssl")
    junk = tmp_path / "junk.pem"
    junk.write_text("hello")
    with pytest.raises(KeyError_, match="junk.pem"):
        load_public_key(str(junk))
