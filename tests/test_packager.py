"""Seed 000's package format (core/packager.py): reproducible, signed, verified; real keys and files."""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import pytest

from ota_build.core import packager as P
from ota_build.core.errors import BadSignatureError, CorruptError, TruncatedError, UnknownKeyError, UsageError
from ota_build.core.signing import Keyring, generate_key, load_public_key, make_signer

from .conftest import ALGORITHMS, assert_one_line_error, run_cli


@pytest.fixture
def inputs(tmp_path: Path) -> dict:
    (tmp_path / "model.pkl").write_bytes(bytes(range(256)) * 4000)
    (tmp_path / "model.bat").write_bytes(b"@echo off\r\npython run.py model.pkl\r\n")
    return {n: tmp_path / n for n in P.INPUT_NAMES}


def key(tmp_path: Path, alg: str = "ed25519"):  # noqa: ANN201
    priv, pub = tmp_path / f"{alg}.pem", tmp_path / f"{alg}.pub.pem"
    generate_key(alg, str(priv), str(pub))
    return make_signer(str(priv)), Keyring([load_public_key(str(pub))])


def rewrite(src: Path, dst: Path, change) -> None:  # noqa: ANN001
    """Copy a zip entry by entry, with ``change(name, data) -> data or None (drop)``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = change(info.filename, zin.read(info.filename))
            if data is not None:
                zout.writestr(info, data)


def test_reproducible_and_layout(tmp_path, inputs):
    signer, keyring = key(tmp_path)
    a = P.pack_file(inputs, tmp_path / "a.zip", signer)
    b = P.pack_file(inputs, tmp_path / "b.zip", signer)
    assert (tmp_path / "a.zip").read_bytes() == (tmp_path / "b.zip").read_bytes()
    assert a.sha256 == b.sha256 and a.size == (tmp_path / "a.zip").stat().st_size
    with zipfile.ZipFile(tmp_path / "a.zip") as zf:
        names = zf.namelist()
        assert names == sorted(names) == ["Deploy.xml", "PackageInfo.xml", "manifest.json", "manifest.sig",
                                          "model.bat", "model.pkl"]
        for info in zf.infolist():
            assert info.date_time == P.ZIP_DATE_TIME and info.external_attr >> 16 == 0o100644
        assert zf.read("model.pkl") == inputs["model.pkl"].read_bytes()
        info = ET.fromstring(zf.read("PackageInfo.xml"))
        assert info.tag == "PackageDescription"
        assert [e.tag for e in info.find("BaseSettings")] == ["PackageType", "Version", "OS", "Arch"]
        assert info.findtext("BaseSettings/Version") == "1.0.0.0"
        assert info.find("Password") is not None and info.find("InstallerTool") is not None
        deploy = ET.fromstring(zf.read("Deploy.xml"))
        assert deploy.findtext("DeploySetting/DeployFileName") == "model.bat"
        assert deploy.findtext("DeploySetting/RebootFlag") == "0"
        assert deploy.find("DeploySetting/ResultCheckScript") is not None
    manifest = P.verify_package(tmp_path / "a.zip", keyring)
    sizes = {f["name"]: f["size"] for f in manifest["files"]}
    assert sizes["model.pkl"] == 256 * 4000 and set(sizes) == {"Deploy.xml", "PackageInfo.xml", "model.bat", "model.pkl"}


def test_options_change_the_descriptors_not_the_format(tmp_path, inputs):
    signer, keyring = key(tmp_path)
    opts = P.PackOptions(version="2.3.4.5", platform="x86_64", os="linux", reboot=True, check_file="model.bat",
                         installer_tool="<&tool>")
    data = P.pack_bytes({n: p.read_bytes() for n, p in inputs.items()}, signer, opts)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        info = ET.fromstring(zf.read("PackageInfo.xml"))
        assert info.findtext("BaseSettings/Arch") == "x86_64" and info.findtext("InstallerTool") == "<&tool>"
        assert ET.fromstring(zf.read("Deploy.xml")).findtext("DeploySetting/RebootFlag") == "1"
    assert P.verify_package(io.BytesIO(data), keyring)["version"] == "2.3.4.5"
    for bad in (P.PackOptions(version="1.0"), P.PackOptions(name="a b"), P.PackOptions(boot_file="../x")):
        with pytest.raises(UsageError):
            P.pack_bytes({n: b"x" for n in P.INPUT_NAMES}, signer, bad)
    with pytest.raises(UsageError):
        P.pack_bytes({"model.pkl": b"x"}, signer)


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_every_key_type_signs_and_verifies(tmp_path, inputs, alg):
    signer, keyring = key(tmp_path, alg)
    P.pack_file(inputs, tmp_path / "p.zip", signer)
    assert P.verify_package(tmp_path / "p.zip", keyring)["signature"]["algorithm"] == alg


def test_tampering_is_refused(tmp_path, inputs):
    signer, keyring = key(tmp_path)
    good = tmp_path / "good.zip"
    P.pack_file(inputs, good, signer)
    bad = tmp_path / "bad.zip"
    cases = [
        (lambda n, d: d + b"x" if n == "model.pkl" else d, TruncatedError),
        (lambda n, d: b"Y" + d[1:] if n == "model.bat" else d, CorruptError),
        (lambda n, d: d.replace(b"1.0.0.0", b"9.0.0.0") if n == "manifest.json" else d, BadSignatureError),
        (lambda n, d: bytes([d[0] ^ 1]) + d[1:] if n == "manifest.sig" else d, BadSignatureError),
        (lambda n, d: None if n == "manifest.sig" else d, CorruptError),
        (lambda n, d: None if n == "Deploy.xml" else d, CorruptError),
        (lambda n, d: d.replace(b'"name":"model.bat"', b'"name":["model.bat"]') if n == "manifest.json" else d,
         CorruptError),
        (lambda n, d: d.replace(b'"format":"meta-ota-packager/1"', b'"format":2') if n == "manifest.json" else d,
         CorruptError),
        (lambda n, d: b"\xff" if n == "manifest.json" else d, CorruptError),
    ]
    for change, error in cases:
        rewrite(good, bad, change)
        with pytest.raises(error):
            P.verify_package(bad, keyring)
    with zipfile.ZipFile(bad, "w") as zf:  # an extra entry
        with zipfile.ZipFile(good) as zin:
            for info in zin.infolist():
                zf.writestr(info, zin.read(info))
        zf.writestr("evil.sh", b"rm -rf /")
    with pytest.raises(CorruptError):
        P.verify_package(bad, keyring)
    bad.write_bytes(good.read_bytes()[:-40])
    with pytest.raises(CorruptError):
        P.verify_package(bad, keyring)
    _, other = key(tmp_path, "ecdsa-p256")
    with pytest.raises(UnknownKeyError):
        P.verify_package(good, other)


def test_extract_verifies_first(tmp_path, inputs):
    signer, keyring = key(tmp_path)
    P.pack_file(inputs, tmp_path / "p.zip", signer)
    out = tmp_path / "out"
    out.mkdir()
    P.extract(tmp_path / "p.zip", out, keyring)
    assert (out / "model.pkl").read_bytes() == inputs["model.pkl"].read_bytes()


def test_cli_pack_and_verify(tmp_path, inputs):
    priv, pub = tmp_path / "k.pem", tmp_path / "k.pub.pem"
    generate_key("ed25519", str(priv), str(pub))
    run_cli("ota-build", "packager-pack", "-i", str(tmp_path), "-k", str(priv), "-d", str(tmp_path), "-v", "3.1.4.1",
            "-r", check=0)
    package = tmp_path / "model.zip"
    assert P.verify_package(package, Keyring([load_public_key(str(pub))]))["version"] == "3.1.4.1"
    out = run_cli("ota-build", "packager-verify", str(package), "-k", str(pub), "-x", str(tmp_path / "x"), check=0)
    assert "OK (model 3.1.4.1, ed25519" in out.stdout
    assert (tmp_path / "x" / "model.bat").read_bytes() == inputs["model.bat"].read_bytes()
    other, other_pub = tmp_path / "o.pem", tmp_path / "o.pub.pem"
    generate_key("ed25519", str(other), str(other_pub))
    assert_one_line_error(run_cli("ota-build", "packager-verify", str(package), "-k", str(other_pub)), 13, "unknown-key")
    package.write_bytes(package.read_bytes()[:-30])
    assert_one_line_error(run_cli("ota-build", "packager-verify", str(package), "-k", str(pub)), 10, "not a package")
    assert_one_line_error(run_cli("ota-build", "packager-pack", "-i", str(tmp_path / "x"), "-k", str(priv), "-v", "1.0",
                                  "-o", str(tmp_path / "y.zip")), 2, "version")
    (tmp_path / "x" / "model.pkl").unlink()
    assert_one_line_error(run_cli("ota-build", "packager-pack", "-i", str(tmp_path / "x"), "-k", str(priv)), 2, "model.pkl")
