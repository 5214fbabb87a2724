"""Seed 000's file packager on a real ``ota-build serve``: the seed's curl commands, every status code,
signatures, and concurrent upload/pack/download (real HTTP on 127.0.0.1, real files)."""

from __future__ import annotations

import io
import os
import re
import shutil
import stat
import subprocess
import threading
import zipfile
from pathlib import Path

import pytest
import requests

from ota_build.core import packager as P
from ota_build.core.signing import Keyring, generate_key, load_public_key, public_key_from_pem

from .serverutil import start_server, stop_server

CURL = shutil.which("curl")


def host(server, token: str) -> str:  # noqa: ANN001
    """The seed's ``HOST``: ``token:KEY@127.0.0.1:PORT/packager``."""
    return f"token:{token}@{server.url.removeprefix('http://')}/packager"


def curl(cmd: str, cwd: Path, hostval: str) -> subprocess.CompletedProcess:
    """Run one of the seed's curl commands through a shell, with ``HOST`` set, as a user would."""
    return subprocess.run(["sh", "-c", cmd], cwd=cwd, env={**os.environ, "HOST": hostval}, capture_output=True,
                          timeout=60, check=False)


def keyring_of(server) -> Keyring:  # noqa: ANN001
    resp = requests.get(server.url + "/packager/key", timeout=30)
    assert resp.status_code == 200
    return Keyring([public_key_from_pem(resp.content, "server")])


def auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.skipif(CURL is None, reason="needs curl")
def test_the_seed_commands_exactly(server, partner, tmp_path):
    token = partner.api_token()
    hostval = host(server, token)
    (tmp_path / "model.pkl").write_bytes(os.urandom(200_000))
    (tmp_path / "model.bat").write_bytes(b"python predict.py model.pkl\r\n")
    out = curl("curl -X POST -F file=@model.pkl http://${HOST}/upload", tmp_path, hostval)
    assert out.returncode == 0 and b'"statuscode":200' in out.stdout, out
    out = curl("curl -X POST -F file=@model.bat http://${HOST}/upload/", tmp_path, hostval)  # the README's slash
    assert b'"statuscode":200' in out.stdout, out
    out = curl("curl http://${HOST}/pack/", tmp_path, hostval)
    assert b'"statuscode":200' in out.stdout, out
    out = curl("curl -s -o model.zip -w '%{http_code}' http://${HOST}/download/", tmp_path, hostval)
    assert out.stdout == b"200", out
    manifest = P.verify_package(tmp_path / "model.zip", keyring_of(server))
    with zipfile.ZipFile(tmp_path / "model.zip") as zf:
        assert zf.read("model.pkl") == (tmp_path / "model.pkl").read_bytes()
        assert zf.read("model.bat") == (tmp_path / "model.bat").read_bytes()
    assert {f["name"] for f in manifest["files"]} >= {"model.pkl", "model.bat"}
    fresh = tmp_path / "served-name"  # an empty directory of this test's own: curl -OJ never overwrites a file
    fresh.mkdir()
    out = curl("curl -s -OJ http://${HOST}/download", fresh, hostval)  # the served name is model.zip
    assert (fresh / "model.zip").read_bytes() == (tmp_path / "model.zip").read_bytes(), out


def test_status_codes(server, partner):
    token = partner.api_token()
    url = server.url + "/packager"

    def check(resp, statuscode, http):  # noqa: ANN001, ANN202
        assert (resp.json()["statuscode"], resp.status_code) == (statuscode, http), resp.text

    check(requests.get(url + "/download", headers=auth(token)), 211, 400)        # before any pack
    check(requests.get(url + "/pack", headers=auth(token)), 211, 200)            # no model.bat
    check(requests.post(url + "/upload", headers=auth(token), files={"file": ("model.bat", b"run")}), 200, 200)
    check(requests.get(url + "/pack", headers=auth(token)), 212, 200)            # no model.pkl
    check(requests.get(url + "/download/", headers=auth(token)), 211, 400)
    for wrong in ("model.zip", "Model.pkl", "x.bat", "../model.pkl", "model.pkl.bat", "model.pkl/"):
        check(requests.post(url + "/upload", headers=auth(token), files={"file": (wrong, b"x")}), 213, 200)
    check(requests.post(url + "/upload", headers=auth(token), files={"other": ("model.pkl", b"x")}), 211, 400)
    check(requests.post(url + "/upload", headers=auth(token), data={"file": "not a file"}), 211, 400)
    check(requests.post(url + "/upload", files={"file": ("model.pkl", b"x")}), 401, 401)
    check(requests.post(url + "/upload", auth=("token", "wrong"), files={"file": ("model.pkl", b"x")}), 401, 401)
    check(requests.get(url + "/pack"), 401, 401)
    check(requests.get(url + "/download"), 401, 401)
    check(requests.post(url + "/upload", auth=("token", token), files={"file": ("model.pkl", b"pkl")}), 200, 200)
    check(requests.get(url + "/pack", params={"version": "1.0"}, headers=auth(token)), 400, 400)
    resp = requests.get(url + "/pack", params={"version": "2.0.0.7"}, headers=auth(token))
    check(resp, 200, 200)
    first = requests.get(url + "/download", headers=auth(token))
    assert first.status_code == 200 and first.headers["content-type"] == "application/zip"
    assert 'filename="model.zip"' in first.headers["content-disposition"]
    assert P.verify_package(io.BytesIO(first.content), keyring_of(server))["version"] == "2.0.0.7"
    second = requests.get(url + "/download", headers=auth(token))  # downloads are repeatable (decision)
    assert second.content == first.content
    # a device of the partner may download, not upload or pack
    device = partner.device("dev-" + partner.partner_id[-6:])
    assert requests.get(url + "/download", headers=auth(device)).content == first.content
    check(requests.get(url + "/pack", headers=auth(device)), 403, 403)
    check(requests.post(url + "/upload", headers=auth(device), files={"file": ("model.pkl", b"x")}), 403, 403)


def test_partners_are_apart_and_packs_reproducible(server, partner, tmp_path):
    token = partner.api_token()
    url = server.url + "/packager"
    other = server.admin("partner", "--username", f"o{partner.partner_id}@example.com",
                         "--partner-id", "o" + partner.partner_id)
    other_token = server.admin("api-token", "--partner", other["partnerId"])["token"]
    for name, data in (("model.pkl", b"A" * 70_000), ("model.bat", b"run A")):
        assert requests.post(url + "/upload", headers=auth(token), files={"file": (name, data)}).json()["statuscode"] == 200
    one = requests.get(url + "/pack", headers=auth(token)).json()
    zip1 = requests.get(url + "/download", headers=auth(token)).content
    two = requests.get(url + "/pack", headers=auth(token)).json()
    zip2 = requests.get(url + "/download", headers=auth(token)).content
    assert one["sha256"] == two["sha256"] and zip1 == zip2  # byte-identical (Ed25519 default key)
    assert requests.get(url + "/download", headers=auth(other_token)).json()["statuscode"] == 211
    assert requests.get(url + "/pack", headers=auth(other_token)).json()["statuscode"] == 211
    # the upload replaced the previous model.pkl: a new pack holds the new one
    requests.post(url + "/upload", headers=auth(token), files={"file": ("model.pkl", b"B")})
    requests.get(url + "/pack", headers=auth(token))
    with zipfile.ZipFile(io.BytesIO(requests.get(url + "/download", headers=auth(token)).content)) as zf:
        assert zf.read("model.pkl") == b"B" and zf.read("model.bat") == b"run A"
    key = server.data_dir / "packager" / "signing-key.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    leftovers = [p.name for p in (server.data_dir / "packager").rglob("*.tmp")]
    assert not leftovers


def test_concurrent_upload_pack_download_never_mixes(server, partner):
    """One thread uploads generation N of model.pkl then of model.bat, others pack and download: every
    package verifies, each file is whole, and the pair is one the server held at one moment."""
    hammer(server, partner.api_token(), generations=15)


def test_concurrency_across_worker_processes(tmp_path):
    """The same with two uvicorn worker processes (the partner lock is a flock, not a thread lock; one
    generated key for both), and the size limit: 413 for a larger upload, which leaves no temporary file behind."""
    (tmp_path / "data").mkdir()
    srv = start_server(tmp_path / "data", None, extra=["--workers", "2", "--max-upload-bytes", "400000"])
    try:
        token = srv.admin("api-token", "--partner",
                          srv.admin("partner", "--username", "w@example.com", "--partner-id", "pw")["partnerId"])["token"]
        key = srv.data_dir / "packager" / "signing-key.pem"
        assert not key.exists()  # generated at first use, not at start
        hammer(srv, token, generations=8)  # both workers sign with the one key generated under the lock
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        for size in (400_001, 2_000_000):  # past the limit: by the body, and by Content-Length at once
            resp = requests.post(srv.url + "/packager/upload", headers=auth(token),
                                 files={"file": ("model.pkl", b"x" * size)})
            assert (resp.status_code, resp.json()["statuscode"]) == (413, 413)
        assert not [p.name for p in (srv.data_dir / "packager").rglob("*.tmp")]
    finally:
        stop_server(srv)


def hammer(server, token: str, generations: int) -> None:  # noqa: ANN001
    """Upload generations 1..N while two threads pack and two download; check every downloaded package."""
    url = server.url + "/packager"
    keyring = keyring_of(server)
    size = 256 * 1024

    def content(name: str, gen: int) -> bytes:
        line = f"{name} generation {gen:06d}\n".encode()
        return (line * (size // len(line) + 1))[:size]

    errors: list = []
    seen: list = []
    stop = threading.Event()

    def uploader() -> None:
        with requests.Session() as s:
            for gen in range(1, generations + 1):
                for name in ("model.pkl", "model.bat"):
                    r = s.post(url + "/upload", headers=auth(token), files={"file": (name, content(name, gen))})
                    if r.json()["statuscode"] != 200:
                        errors.append(r.text)
        stop.set()

    def packer() -> None:
        with requests.Session() as s:
            while not stop.is_set():
                code = s.get(url + "/pack", headers=auth(token)).json()["statuscode"]
                if code not in (200, 211, 212):
                    errors.append(code)

    def downloader() -> None:
        with requests.Session() as s:
            while not stop.is_set():
                r = s.get(url + "/download", headers=auth(token))
                if r.status_code != 200:
                    continue
                try:
                    P.verify_package(io.BytesIO(r.content), keyring)
                    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
                        gens = {}
                        for name in ("model.pkl", "model.bat"):
                            data = zf.read(name)
                            found = set(re.findall(rb"generation (\d{6})", data))
                            assert len(found) == 1 and data == content(name, int(found.pop())), f"{name} torn"
                            gens[name] = int(re.search(rb"generation (\d{6})", data).group(1))
                    assert gens["model.pkl"] - gens["model.bat"] in (0, 1), f"mixed pair {gens}"
                    seen.append(gens["model.pkl"])
                except Exception as exc:  # noqa: BLE001 - collected for the main thread
                    errors.append(repr(exc))

    threads = [threading.Thread(target=f) for f in (uploader, packer, packer, downloader, downloader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors[:5]
    assert requests.get(url + "/pack", headers=auth(token)).json()["statuscode"] == 200
    final = requests.get(url + "/download", headers=auth(token)).content
    with zipfile.ZipFile(io.BytesIO(final)) as zf:
        assert zf.read("model.pkl") == content("model.pkl", generations)
        assert zf.read("model.bat") == content("model.bat", generations)
    assert seen, "no package was downloaded while uploading"


def test_configured_signing_key(tmp_path):
    priv, pub = tmp_path / "k.pem", tmp_path / "k.pub.pem"
    generate_key("ecdsa-p256", str(priv), str(pub))
    (tmp_path / "data").mkdir()
    srv = start_server(tmp_path / "data", None, extra=["--packager-key", str(priv)])
    try:
        token = srv.admin("api-token", "--partner",
                          srv.admin("partner", "--username", "k@example.com", "--partner-id", "pk")["partnerId"])["token"]
        for name in P.INPUT_NAMES:
            requests.post(srv.url + "/packager/upload", headers=auth(token), files={"file": (name, name.encode())})
        assert requests.get(srv.url + "/packager/pack", headers=auth(token)).json()["statuscode"] == 200
        data = requests.get(srv.url + "/packager/download", headers=auth(token)).content
        manifest = P.verify_package(io.BytesIO(data), Keyring([load_public_key(str(pub))]))
        assert manifest["signature"]["algorithm"] == "ecdsa-p256"
        assert not (srv.data_dir / "packager" / "signing-key.pem").exists()
    finally:
        stop_server(srv)


def test_cli_pack_equals_server_pack(server, partner, tmp_path):
    """``ota-build packager-pack`` with the server's key writes the very bytes the server serves."""
    from .conftest import run_cli

    token = partner.api_token()
    url = server.url + "/packager"
    for name in P.INPUT_NAMES:
        (tmp_path / name).write_bytes(os.urandom(5000))
        requests.post(url + "/upload", headers=auth(token), files={"file": (name, (tmp_path / name).read_bytes())})
    assert requests.get(url + "/pack", params={"version": "4.0.0.1"}, headers=auth(token)).json()["statuscode"] == 200
    served = requests.get(url + "/download", headers=auth(token)).content
    key = server.data_dir / "packager" / "signing-key.pem"
    run_cli("ota-build", "packager-pack", "-i", str(tmp_path), "-k", str(key), "-v", "4.0.0.1", "-o",
            str(tmp_path / "local.zip"), check=0)
    assert (tmp_path / "local.zip").read_bytes() == served
