"""The Afero-compatible API end to end: the seed's tools and the original calls,
against a real server on 127.0.0.1 (SQLite, and PostgreSQL in CI)."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
from pathlib import Path
from typing import Dict

import requests

from ota_build.partner.client import OtaClient
from ota_build.core.config import load_config
from ota_build.core.package import package_image
from ota_build.core.signing import make_signer

from .conftest import assert_one_line_error, run_cli
from .serverutil import Partner


def make_image(directory: Path, version_number: int, key: str, size: int = 200_000, name: str = "hub_update.bin",
               ota_type: int = 5) -> Path:
    """A real signed hub_update.bin."""
    payload = directory / f"rootfs-{version_number}.tar.gz"
    payload.write_bytes(os.urandom(size))
    out = directory / name
    package_image(str(payload), str(out), make_signer(key, backend="cryptography"), ota_type, version_number)
    return out


def bearer(token: str) -> Dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def api(p: Partner) -> str:
    return f"{p.server.url}/v1/ota/partners/{p.partner_id}"


def create_record(p: Partner, token: str, version: str, name: str = "Potenco-test") -> dict:
    resp = requests.post(api(p) + "/pool", headers=bearer(token),
                         json={"name": name, "description": "d", "type": 5, "version": version, "url": ""})
    assert resp.status_code == 201, resp.text
    return resp.json()


def publish(p: Partner, token: str, version: str, key: str) -> dict:
    """The original uploader's calls, one by one; returns the firmware image."""
    rec = create_record(p, token, version)
    image = make_image(p.dir, int(rec["versionNumber"]), key, name=f"img-{version}.bin")
    resp = requests.post(api(p) + "/binaries", headers={**bearer(token), "Content-Type": "application/octet-stream"},
                         data=image.read_bytes())
    assert resp.status_code == 200, resp.text
    sha = resp.json()["value"]
    assert sha == hashlib.sha256(image.read_bytes()).hexdigest()
    resp = requests.post(api(p) + "/binaries/moveToRepository", headers=bearer(token), json={"value": sha})
    assert resp.status_code == 200
    rec["url"] = resp.json()["value"]
    resp = requests.put(api(p) + f"/pool/types/5/versionNumbers/{rec['versionNumber']}", headers=bearer(token),
                        json=rec)
    assert resp.status_code == 204, resp.text
    resp = requests.post(api(p) + f"/deviceTypes/{p.device_type}/firmwareImages", headers=bearer(token), json=rec)
    assert resp.status_code == 201, resp.text
    return resp.json()


def test_seed_tools_end_to_end(partner, keys):
    """createOTARecord -> package -> uploadOTAImage -> --list -> deploy -> device update, download, status."""
    p = partner
    proc = run_cli("partner-ota-hub-uploader", "-c", str(p.conf), "-s", "-n", "42", "--createOTARecord",
                   cwd=p.dir, env=p.env, check=0)
    record = json.loads((p.dir / "full_ota_record.json").read_text())
    assert record["version"] == "1.0.42" and record["versionNumber"].isdigit() and record["id"].isdigit()
    assert record["partnerId"] == p.partner_id and "versionNumber" in proc.stdout
    rootfs = p.dir / "core-image-minimal.rootfs.tar.gz"
    rootfs.write_bytes(os.urandom(300_000))
    run_cli("ota-build", "package", str(rootfs), "-r", str(p.dir / "full_ota_record.json"),
            "-k", keys["ed25519"]["private"], "-o", str(p.dir / "hub_update.bin"), check=0)
    proc = run_cli("partner-ota-hub-uploader", "-c", str(p.conf), "-s", "-n", "42", "--uploadOTAImage",
                   cwd=p.dir, env=p.env, check=0)
    assert "image id" in proc.stdout
    assert not (p.dir / "hub_update.bin.upload").exists()
    record = json.loads((p.dir / "full_ota_record.json").read_text())
    assert "/repository/" in record["url"]
    # a second upload is a no-op, said once
    proc = run_cli("partner-ota-hub-uploader", "-c", str(p.conf), "-s", "-n", "42", "--uploadOTAImage",
                   cwd=p.dir, env=p.env, check=0)
    assert "already uploaded" in proc.stdout and "already uploaded" not in proc.stderr
    # other -n/-d than --createOTARecord's: refused, nothing sent
    for flags in (["-n", "43"], ["-n", "42", "-d"]):
        proc = run_cli("partner-ota-hub-uploader", "-c", str(p.conf), "-s", *flags, "--uploadOTAImage",
                       cwd=p.dir, env=p.env)
        assert_one_line_error(proc, 2, "1.0.42", "same -n/-d")

    proc = run_cli("partner-ota-hub-deploy", "-c", str(p.conf), "--list", env=p.env, check=0)
    lines = proc.stdout.splitlines()
    # the seed's listing: heading, partnerId, deviceTypeId, count, table with a dashed rule
    assert lines[0] == "----  List of HUB FULL OTA images ----"
    assert lines[2].split(":", 1)[1].strip() == p.partner_id and lines[3].split(":", 1)[1].strip() == p.device_type
    assert lines[5] == "Total Number of Images: 1"
    assert lines[6].split() == ["Image", "Id", "Version", "Name", "Description"]
    assert set(lines[7].replace(" ", "")) == {"-"}
    assert len(lines) == 9 and "1.0.42" in lines[8] and "Potenco-test" in lines[8]
    image_id = lines[8].split()[0]

    token = p.device("dev-1")
    dev = f"{p.server.url}/v1/devices/dev-1"
    assert requests.get(dev + "/update", params={"type": 5, "versionNumber": 0}, headers=bearer(token)).status_code == 204
    proc = run_cli("partner-ota-hub-deploy", "-c", str(p.conf), "-d", "dev-1", "-i", image_id, env=p.env, check=0)
    assert proc.stdout.strip() == "Request accepted for processing"

    resp = requests.get(dev + "/update", params={"type": 5, "versionNumber": 0}, headers=bearer(token))
    assert resp.status_code == 200
    upd = resp.json()
    data = (p.dir / "hub_update.bin").read_bytes()
    assert upd["versionNumber"] == record["versionNumber"] and upd["version"] == "1.0.42"
    assert upd["imageId"] == image_id and upd["size"] == len(data)
    assert upd["sha256"] == hashlib.sha256(data).hexdigest()
    assert upd["url"] == f"/v1/devices/dev-1/images/{image_id}"
    newer = requests.get(dev + "/update", params={"type": 5, "versionNumber": record["versionNumber"]},
                         headers=bearer(token))
    assert newer.status_code == 204

    full = requests.get(p.server.url + upd["url"], headers=bearer(token))
    assert full.status_code == 200 and full.content == data
    part = requests.get(p.server.url + upd["url"], headers={**bearer(token), "Range": "bytes=1000-"})
    assert part.status_code == 206 and part.content == data[1000:]
    assert part.headers["Content-Range"] == f"bytes 1000-{len(data) - 1}/{len(data)}"
    head = requests.head(p.server.url + upd["url"], headers=bearer(token))
    assert head.status_code == 200 and int(head.headers["Content-Length"]) == len(data) and not head.content
    assert head.headers["ETag"] == f'"{upd["sha256"]}"'
    assert requests.head(p.server.url + upd["url"]).status_code == 401

    resp = requests.post(dev + "/status", headers=bearer(token),
                         json={"state": "installed", "versionNumber": record["versionNumber"], "message": "ok"})
    assert resp.status_code == 204
    proc = run_cli("ota-build", "devices", "-c", str(p.conf), "--json", env=p.env, check=0)
    devices = json.loads(proc.stdout)
    assert devices[0]["deviceId"] == "dev-1" and devices[0]["state"] == "installed"
    assert devices[0]["versionNumber"] == record["versionNumber"]
    # versionNumber as the integer it is, or its digits as /update sends them; anything else is refused
    as_int = requests.post(dev + "/status", headers=bearer(token),
                           json={"state": "installing", "versionNumber": int(record["versionNumber"])})
    assert as_int.status_code == 204
    proc = run_cli("ota-build", "devices", "-c", str(p.conf), "--json", env=p.env, check=0)
    assert json.loads(proc.stdout)[0]["versionNumber"] == record["versionNumber"]
    for bad in (-1, "12a", True, 2 ** 63):
        resp = requests.post(dev + "/status", headers=bearer(token), json={"state": "installed", "versionNumber": bad})
        assert resp.status_code == 400 and "versionNumber" in resp.json()["message"], (bad, resp.text)


def test_original_calls_and_codes(partner, keys):
    """The exact calls and success codes of the original tools."""
    p = partner
    token = p.access_token()
    exists = requests.get(api(p) + "/pool/types/5/names/Potenco-test/versions/1.0.1/exists", headers=bearer(token))
    assert exists.status_code == 200 and exists.json() == {"value": False}
    rec1 = create_record(p, token, "1.0.1")
    assert isinstance(rec1["id"], str) and isinstance(rec1["versionNumber"], str)
    assert set(rec1) >= {"createdTimestamp", "description", "id", "name", "partnerId", "tags", "type",
                         "updatedTimestamp", "url", "version", "versionNumber"}
    assert requests.get(api(p) + "/pool/types/5/names/Potenco-test/versions/1.0.1/exists",
                        headers=bearer(token)).json() == {"value": True}
    dup = requests.post(api(p) + "/pool", headers=bearer(token),
                        json={"name": "Potenco-test", "description": "", "type": 5, "version": "1.0.1", "url": ""})
    assert dup.status_code == 409
    rec2 = create_record(p, token, "1.0.2")
    assert int(rec2["versionNumber"]) > int(rec1["versionNumber"])

    assoc = f"{api(p)}/deviceTypes/{p.device_type}/firmwareImages"
    assert requests.get(f"{assoc}/types/5/versionNumbers/{rec1['versionNumber']}",
                        headers=bearer(token)).status_code == 404
    image = publish(p, token, "1.0.3", keys["ed25519"]["private"])
    assert image["id"].isdigit()
    vn = image["versionNumber"]
    assert requests.get(f"{assoc}/types/5/versionNumbers/{vn}", headers=bearer(token)).status_code == 200
    rec3 = {"name": "Potenco-test", "type": 5, "version": "1.0.3", "versionNumber": vn, "description": "d"}
    again = requests.post(assoc, headers=bearer(token), json=rec3)
    assert again.status_code == 409

    listing = requests.get(f"{assoc}/types/5", headers=bearer(token))
    assert listing.status_code == 200
    page = listing.json()
    assert page["totalElements"] == 1 and page["totalPages"] == 1
    assert {"id", "version", "name", "description"} <= set(page["content"][0])

    p.device("dev-a")
    push = requests.put(f"{assoc}/{image['id']}/push", headers=bearer(token), json={"value": "dev-a"})
    assert push.status_code == 202
    unknown = requests.put(f"{assoc}/{image['id']}/push", headers=bearer(token), json={"value": "nope"})
    assert unknown.status_code == 404


def test_list_every_page(partner, keys):
    """The listing is paged; the client and --list show every page."""
    p = partner
    token = p.access_token()
    for i in range(5):
        publish(p, token, f"1.0.{i}", keys["ed25519"]["private"])
    client = OtaClient(load_config(str(p.conf), p.env["OTA_CREDENTIALS_FILE"]))
    page = requests.get(f"{api(p)}/deviceTypes/{p.device_type}/firmwareImages/types/5", params={"size": 2},
                        headers=bearer(token)).json()
    assert page["totalPages"] == 3 and len(page["content"]) == 2
    images = client.list_images(p.device_type, 5, page_size=2)
    assert [img["version"] for img in images] == [f"1.0.{i}" for i in range(5)]
    proc = run_cli("ota-build", "list", "-c", str(p.conf), env=p.env, check=0)
    assert len(proc.stdout.splitlines()) == 7  # header, rule, 5 images
    proc = run_cli("partner-ota-hub-deploy", "-c", str(p.conf), "-l", env=p.env, check=0)
    assert "Total Number of Images: 5" in proc.stdout and len(proc.stdout.splitlines()) == 13


def test_group_and_many_devices(partner, keys):
    p = partner
    token = p.access_token()
    image = publish(p, token, "2.0.1", keys["ed25519"]["private"])
    t1, t2 = p.device("g-1", group="lab"), p.device("g-2", group="lab")
    t3, t4 = p.device("m-1"), p.device("m-2")
    run_cli("partner-ota-hub-deploy", "-c", str(p.conf), "-g", "lab", "-i", image["id"], env=p.env, check=0)
    run_cli("ota-build", "deploy", "-c", str(p.conf), "-i", image["id"], "-d", "m-1", "-d", "m-2", env=p.env,
            check=0)
    for dev, tok in (("g-1", t1), ("g-2", t2), ("m-1", t3), ("m-2", t4)):
        resp = requests.get(f"{p.server.url}/v1/devices/{dev}/update", params={"versionNumber": 0},
                            headers=bearer(tok))
        assert resp.status_code == 200 and resp.json()["imageId"] == image["id"], dev
    other = p.device("lonely")
    assert requests.get(f"{p.server.url}/v1/devices/lonely/update", headers=bearer(other)).status_code == 204
    # a group with no device (a typo) is refused, by both tools, with the HTTP status
    for tool in (["partner-ota-hub-deploy"], ["ota-build", "deploy"]):
        proc = run_cli(*tool, "-c", str(p.conf), "-g", "lba", "-i", image["id"], env=p.env, check=3)
        assert_one_line_error(proc, 3, "HTTP 404", "group lba")


def test_tokens_and_permissions(partner, keys):
    """Every write needs a token; device tokens cannot upload or deploy; tokens are bound to their owner."""
    p = partner
    token = p.access_token()
    dev_token = p.device("dev-x")
    image = publish(p, token, "3.0.1", keys["ed25519"]["private"])
    assoc = f"{api(p)}/deviceTypes/{p.device_type}/firmwareImages"
    writes = [
        ("POST", api(p) + "/pool", {"json": {"name": "n", "version": "1.0.9", "type": 5}}),
        ("POST", api(p) + "/binaries", {"data": b"x"}),
        ("POST", api(p) + "/binaries/uploads", {"json": {"size": 10}}),
        ("POST", api(p) + "/binaries/moveToRepository", {"json": {"value": "0" * 64}}),
        ("PUT", f"{assoc}/{image['id']}/push", {"json": {"value": "dev-x"}}),
        ("POST", assoc, {"json": {"name": "n", "version": "1.0.9", "type": 5}}),
    ]
    for method, url, kwargs in writes:
        assert requests.request(method, url, **kwargs).status_code == 401, url
        assert requests.request(method, url, headers=bearer("bogus"), **kwargs).status_code == 401, url
        assert requests.request(method, url, headers=bearer(dev_token), **kwargs).status_code == 403, url
    # a partner token cannot touch another partner, nor act as a device
    other = p.server.admin("partner", "--username", f"o-{p.partner_id}@x", "--partner-id", f"o-{p.partner_id}")
    resp = requests.post(f"{p.server.url}/v1/ota/partners/{other['partnerId']}/pool", headers=bearer(token),
                         json={"name": "n", "version": "1.0.9", "type": 5})
    assert resp.status_code == 403
    assert requests.get(f"{p.server.url}/v1/devices/dev-x/update", headers=bearer(token)).status_code == 403
    # a device token is bound to its device
    p.device("dev-y")
    assert requests.get(f"{p.server.url}/v1/devices/dev-y/update", headers=bearer(dev_token)).status_code == 403
    # bad credentials for the token
    bad = requests.post(p.server.url + "/oauth/token", headers={"Authorization": "Basic " + p.secrets["auth-string"]},
                        data={"username": p.secrets["username"], "password": "wrong", "grant_type": "password"})
    assert bad.status_code == 401


def test_uploads_are_verified(partner, keys, other_key):
    p = partner
    token = p.access_token()
    good = make_image(p.dir, 7, keys["ed25519"]["private"], name="good.bin")
    data = bytearray(good.read_bytes())
    data[-1] ^= 1
    for body, reason in ((bytes(data), "corrupt"), (b"not an image at all" * 100, "corrupt"),
                         (good.read_bytes()[:-10], "truncated")):
        resp = requests.post(api(p) + "/binaries", headers=bearer(token), data=body)
        assert resp.status_code == 400 and reason in resp.json()["message"], resp.text
    assert not any((p.server.data_dir / "tmp").iterdir())
    # once the partner registers keys, signatures are checked against them
    p.server.admin("partner-key", "--partner", p.partner_id, keys["ed25519"]["public"])
    stranger = make_image(p.dir, 8, other_key["private"], name="stranger.bin")
    resp = requests.post(api(p) + "/binaries", headers=bearer(token), data=stranger.read_bytes())
    assert resp.status_code == 400 and "unknown-key" in resp.json()["message"]
    assert requests.post(api(p) + "/binaries", headers=bearer(token), data=good.read_bytes()).status_code == 200


def test_upload_resumes_after_a_dropped_connection(partner, keys):
    """A connection dropped mid-upload keeps what arrived; the next run resumes from there."""
    p = partner
    token = p.access_token()
    image = make_image(p.dir, 11, keys["ed25519"]["private"], size=3_000_000)
    data = image.read_bytes()
    base = api(p) + "/binaries/uploads"
    upload_id = requests.post(base, headers=bearer(token), json={"size": len(data)}).json()["uploadId"]
    # send the headers and 1 MB of a 3 MB body, then drop the connection
    host, port = p.server.url[7:].split(":")
    path = f"/v1/ota/partners/{p.partner_id}/binaries/uploads/{upload_id}"
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall((f"PUT {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
                      f"Content-Type: application/octet-stream\r\nContent-Length: {len(data)}\r\n"
                      f"Content-Range: bytes 0-{len(data) - 1}/{len(data)}\r\n\r\n").encode())
        sock.sendall(data[:1_000_000])
    for _ in range(50):
        offset = requests.get(f"{base}/{upload_id}", headers=bearer(token)).json()["offset"]
        if offset >= 1_000_000:
            break
        import time

        time.sleep(0.1)
    assert 0 < offset <= 1_000_000
    # a half upload is not visible: completing it is refused
    assert requests.post(f"{base}/{upload_id}/complete", headers=bearer(token)).status_code == 409
    # the client picks the session up from its state file and sends only the rest
    cfg = load_config(str(p.conf), p.env["OTA_CREDENTIALS_FILE"])
    st = os.stat(image)
    (p.dir / (image.name + ".upload")).write_text(json.dumps(
        {"uploadId": upload_id, "size": len(data), "mtime": st.st_mtime_ns, "server": p.server.url}))
    sent = []

    client = OtaClient(cfg)
    orig_put = client.http.put

    def put(url, data=None, **kwargs):  # noqa: ANN001, ANN201
        sent.append(kwargs["headers"]["Content-Range"])
        return orig_put(url, data=data, **kwargs)

    client.http.put = put  # observe (not replace) the real requests
    sha = client.upload_binary(str(image), chunk_size=1 << 20, show_progress=False)
    assert sha == hashlib.sha256(data).hexdigest()
    assert sent[0].startswith(f"bytes {offset}-"), sent
    assert not (p.dir / (image.name + ".upload")).exists()
    assert (p.server.data_dir / "blobs" / sha).read_bytes() == data


def test_concurrent_creates_of_one_version(partner):
    """Two concurrent creates of the same version: exactly one record."""
    p = partner
    token = p.access_token()
    results = []

    def create() -> None:
        resp = requests.post(api(p) + "/pool", headers=bearer(token),
                             json={"name": "race", "description": "", "type": 5, "version": "9.9.9", "url": ""})
        results.append(resp.status_code)

    threads = [threading.Thread(target=create) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [201, 409, 409, 409, 409, 409]


def test_client_errors_are_one_line(partner, tmp_path):
    p = partner
    creds = json.loads(Path(p.env["OTA_CREDENTIALS_FILE"]).read_text())
    creds["userpw"] = "wrong-password-123"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(creds))
    bad.chmod(0o600)
    proc = run_cli("partner-ota-hub-deploy", "-c", str(p.conf), "--list", env={"OTA_CREDENTIALS_FILE": str(bad)})
    assert_one_line_error(proc, 3, "HTTP 401")
    assert "wrong-password-123" not in proc.stderr + proc.stdout
    assert p.secrets["auth-string"] not in proc.stderr + proc.stdout
    proc = run_cli("partner-ota-hub-deploy", "-c", str(p.conf), "--list",
                   env={**p.env, "OTA_SERVER": "http://127.0.0.1:9", "OTA_RETRIES": "0"})
    assert_one_line_error(proc, 3, "cannot reach")
    proc = run_cli("partner-ota-hub-deploy", "-c", str(p.conf), "-d", "x", "-i", "abc", env=p.env)
    assert_one_line_error(proc, 2, "imageId")
    proc = run_cli("partner-ota-hub-uploader", "-c", str(p.conf), "-s", "-n", "1", "--uploadOTAImage",
                   cwd=tmp_path, env=p.env)
    assert_one_line_error(proc, 2, "createOTARecord")
