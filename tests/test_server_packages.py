"""Seed 001's package API and ``ota-build pack``, against a real server."""

from __future__ import annotations

import hashlib
import io
import json
import threading
import zipfile

import requests

from ota_build.server.services import version_key

from .conftest import ROOT, assert_one_line_error, run_cli


def content_for(data: bytes, package: str = "helloworld", branch: str = "major", version: str = "0.1.0") -> dict:
    return {"package": package, "description": "d", "updateInfo": "u", "version": version, "branch": branch,
            "local": "/opt/hello", "remote": "http://x", "sha256": hashlib.sha256(data).hexdigest(),
            "BeforeUpdate": "", "AfterUpdate": "", "dependencies": {}}


def a_zip(text: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(zipfile.ZipInfo("hello.txt", date_time=(2024, 1, 1, 0, 0, 0)), text)
    return buf.getvalue()


def put(srv, token, data, content, query=""):  # noqa: ANN001, ANN201
    return requests.put(f"{srv.url}/upload{query}", headers={"Authorization": f"Bearer {token}"},
                        data={"content": json.dumps(content) if isinstance(content, dict) else content},
                        files={"file": ("p.zip", data, "application/zip")})


def test_version_order():
    assert version_key("0.0.10") > version_key("0.0.9")
    assert version_key("1.10.0") > version_key("1.9.99")
    assert version_key("2.0") > version_key("1.99.99")


def test_upload_latest_and_files(server, partner):
    token = partner.api_token()
    pkg = "hello" + partner.partner_id[-6:]
    for version in ("0.0.9", "0.0.10", "0.0.2"):
        data = a_zip(version)
        resp = put(server, token, data, content_for(data, pkg, "major", version))
        assert resp.status_code == 200 and resp.json()["status"] == 200, resp.text
    latest = requests.get(f"{server.url}/latestVersion", params={"package": pkg, "branch": "major"})
    assert latest.status_code == 200 and latest.json()["status"] == 200
    content = json.loads(latest.json()["content.json"])  # a JSON string, as the original sends it
    assert content["version"] == "0.0.10"
    listing = requests.get(f"{server.url}/getVersion", params={"package": pkg}).json()
    assert listing["status"] == 200 and {i["version"] for i in listing["list"]} == {"0.0.9", "0.0.10", "0.0.2"}
    one = requests.get(f"{server.url}/getVersion", params={"package": pkg, "version": "0.0.9"}).json()["list"]
    assert len(one) == 1 and json.loads(one[0]["content"])["version"] == "0.0.9"
    for prefix in ("otafiles", "ota-files"):
        resp = requests.get(f"{server.url}/{prefix}/{pkg}/major/{pkg}-major-0.0.9.zip")
        assert resp.status_code == 200 and resp.content == a_zip("0.0.9")
        head = requests.head(f"{server.url}/{prefix}/{pkg}/major/{pkg}-major-0.0.9.zip")
        assert head.status_code == 200 and int(head.headers["Content-Length"]) == len(a_zip("0.0.9"))
    assert requests.get(f"{server.url}/otafiles/{pkg}/major/{pkg}-major-9.9.9.zip").status_code == 404
    missing = requests.get(f"{server.url}/latestVersion", params={"package": "nope", "branch": "major"})
    assert missing.status_code == 404 and missing.json()["status"] == 404
    assert requests.get(f"{server.url}/latestVersion", params={"package": pkg}).json()["status"] == 400
    assert requests.get(f"{server.url}/getVersion").status_code == 400


def test_upload_refusals(server, partner):
    token = partner.api_token()
    pkg = "r" + partner.partner_id[-8:]
    data = a_zip("one")
    assert put(server, token, data, content_for(data, pkg)).status_code == 200
    again = put(server, token, a_zip("two"), content_for(a_zip("two"), pkg))
    assert again.status_code == 409 and again.json()["status"] == 409 and "exists" in again.json()["message"]
    for flag in ("?force=1", "?overwrite=1"):
        new = a_zip("new" + flag)
        assert put(server, token, new, content_for(new, pkg), flag).status_code == 200
        assert requests.get(f"{server.url}/otafiles/{pkg}/major/{pkg}-major-0.1.0.zip").content == new
    wrong = content_for(data, pkg, version="0.2.0")
    wrong["sha256"] = "0" * 64
    resp = put(server, token, data, wrong)
    assert resp.status_code == 400 and "SHA256" in resp.json()["message"]
    assert not (server.data_dir / "otafiles" / pkg / "major" / f"{pkg}-major-0.2.0.zip").exists()
    assert put(server, token, data, "{not json").json()["message"].startswith("JSONDecodeError")
    bad = content_for(data, pkg)
    del bad["sha256"]
    assert "sha256" in put(server, token, data, bad).json()["message"]
    for field, value in (("package", "../etc"), ("branch", ".."), ("version", "1/../../x"), ("package", "a b")):
        evil = content_for(data, pkg)
        evil[field] = value
        resp = put(server, token, data, evil)
        assert resp.status_code == 400 and field in resp.json()["message"], resp.text
    nofile = requests.put(f"{server.url}/upload", headers={"Authorization": f"Bearer {token}"},
                          data={"content": json.dumps(content_for(data, pkg))})
    assert nofile.status_code == 400 and "No file or content" in nofile.json()["message"]
    assert requests.get(f"{server.url}/otafiles/..%2F..%2Fetc/x/passwd").status_code in (400, 404)
    # no token, a bad token, a device token: refused
    assert put(server, "", data, content_for(data, pkg, version="0.3.0")).status_code == 401
    assert put(server, "bogus", data, content_for(data, pkg, version="0.3.0")).status_code == 401
    dev = partner.device("pkg-dev")
    assert put(server, dev, data, content_for(data, pkg, version="0.3.0")).status_code == 403
    assert not list((server.data_dir / "tmp").iterdir())


def test_concurrent_uploads_of_one_version(server, partner):
    token = partner.api_token()
    pkg = "c" + partner.partner_id[-8:]
    bodies = [a_zip(f"racer {i}") for i in range(4)]
    results = []

    def go(data: bytes) -> None:
        results.append(put(server, token, data, content_for(data, pkg, version="1.0.0")).status_code)

    threads = [threading.Thread(target=go, args=(b,)) for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [200, 409, 409, 409]
    stored = (server.data_dir / "otafiles" / pkg / "major" / f"{pkg}-major-1.0.0.zip").read_bytes()
    assert stored in bodies
    listing = requests.get(f"{server.url}/getVersion", params={"package": pkg}).json()["list"]
    assert len(listing) == 1 and listing[0]["sha256"] == hashlib.sha256(stored).hexdigest()
    assert not [f for f in (server.data_dir / "tmp").iterdir()]


def test_pack_command(server, partner, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(partner.api_token())
    folder = tmp_path / "app"
    (folder / "sub").mkdir(parents=True)
    (folder / "run.sh").write_text("echo hi\n")
    (folder / "sub" / "data.txt").write_text("data\n")
    pkg = "pk" + partner.partner_id[-8:]
    out = tmp_path / "out.zip"
    proc = run_cli("ota-build", "pack", str(folder), "--package", pkg, "--branch", "main", "--version", "0.0.1",
                   "-o", str(out), "--server", server.url, "--token-file", str(token_file), check=0)
    assert "uploaded" in proc.stdout
    content = json.loads((tmp_path / "content.json").read_text())
    assert content["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert sorted(zipfile.ZipFile(out).namelist()) == ["run.sh", "sub/data.txt"]
    latest = requests.get(f"{server.url}/latestVersion", params={"package": pkg, "branch": "main"}).json()
    assert json.loads(latest["content.json"])["sha256"] == content["sha256"]
    proc = run_cli("ota-build", "pack", str(folder), "--package", pkg, "--branch", "main", "--version", "0.0.1",
                   "-o", str(out), "--server", server.url, "--token-file", str(token_file))
    assert_one_line_error(proc, 3, "HTTP 409")
    assert token_file.read_text() not in proc.stderr
    proc = run_cli("ota-build", "pack", str(folder), "--package", "../x", "--branch", "main", "--version", "1",
                   "--no-upload")
    assert_one_line_error(proc, 2, "--package")


def test_a_package_belongs_to_the_partner_that_stored_it(server, partner):
    """Another partner can neither add versions to nor overwrite a package it did not store."""
    token = partner.api_token()
    pkg = "own" + partner.partner_id[-6:]
    data = a_zip("mine")
    assert put(server, token, data, content_for(data, pkg, "main", "0.0.10")).status_code == 200
    other_id = "q-" + partner.partner_id[-8:]
    server.admin("partner", "--username", f"{other_id}@example.com", "--partner-id", other_id)
    other = server.admin("api-token", "--partner", other_id)["token"]
    evil = a_zip("theirs")
    for version, query in (("0.0.10", "?force=1"), ("0.0.10", "?overwrite=1"), ("0.0.11", ""), ("0.0.11", "?force=1")):
        for branch in ("main", "other"):
            resp = put(server, other, evil, content_for(evil, pkg, branch, version), query)
            assert resp.status_code == 403 and "another partner" in resp.json()["message"], resp.text
    assert requests.get(f"{server.url}/otafiles/{pkg}/main/{pkg}-main-0.0.10.zip").content == data
    latest = requests.get(f"{server.url}/latestVersion", params={"package": pkg, "branch": "main"}).json()
    assert json.loads(latest["content.json"])["version"] == "0.0.10"
    # the owner still can, on any branch; the other partner's own names are its own
    new = a_zip("mine 2")
    assert put(server, token, new, content_for(new, pkg, "other", "1.0")).status_code == 200
    assert put(server, other, evil, content_for(evil, "q" + pkg, "main", "1.0")).status_code == 200
    assert put(server, token, data, content_for(data, "q" + pkg, "main", "1.1")).status_code == 403


def test_two_partners_racing_for_a_new_name(server, partner):
    """Concurrent first uploads of one name by two partners: exactly one of them owns it."""
    token = partner.api_token()
    other_id = "r-" + partner.partner_id[-8:]
    server.admin("partner", "--username", f"{other_id}@example.com", "--partner-id", other_id)
    other = server.admin("api-token", "--partner", other_id)["token"]
    pkg = "race" + partner.partner_id[-6:]
    results = {}

    def go(who: str, tok: str, version: str) -> None:
        body = a_zip(who + version)
        results[(who, version)] = put(server, tok, body, content_for(body, pkg, "main", version)).status_code

    threads = [threading.Thread(target=go, args=(who, tok, v)) for who, tok in (("a", token), ("b", other))
               for v in ("1.0", "1.1", "1.2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = {who for (who, _), code in results.items() if code == 200}
    assert len(winners) == 1, results
    loser = ({"a", "b"} - winners).pop()
    assert all(code == 403 for (who, _), code in results.items() if who == loser), results
    assert all(code == 200 for (who, _), code in results.items() if who in winners), results


def test_a_package_must_be_a_zip(server, partner):
    token = partner.api_token()
    pkg = "zip" + partner.partner_id[-6:]
    pem = b"-----BEGIN PRIVATE KEY-----\nnot a zip\n-----END PRIVATE KEY-----\n"
    resp = put(server, token, pem, content_for(pem, pkg))
    assert resp.status_code == 400 and "not a zip" in resp.json()["message"]
    assert not (server.data_dir / "otafiles" / pkg).exists()
    assert requests.get(f"{server.url}/latestVersion", params={"package": pkg, "branch": "major"}).status_code == 404
NO_ENV = {"OTA_SERVER": "", "OTA_PACKAGE_SERVER": "", "OTA_TOKEN": ""}


def documented_exit_code(meaning: str) -> int:
    """The code docs/exit-codes.md gives for the row mentioning ``meaning``."""
    for line in (ROOT / "docs" / "exit-codes.md").read_text().splitlines():
        if meaning in line:
            return int(line.split("|")[1])
    raise AssertionError(f"docs/exit-codes.md has no row for {meaning!r}")


def an_app(folder):  # noqa: ANN001, ANN201
    """A small folder to pack; the sorted names it should zip to."""
    (folder / "sub").mkdir(parents=True)
    (folder / "run.sh").write_text("echo hi\n")
    (folder / "sub" / "data.txt").write_text("data\n")
    (folder / "sub" / "content.json").write_text("{}\n")  # the app's own file, not beside a pack zip
    (folder / "other.zip").write_bytes(a_zip("bundled"))  # not named like this package's zips
    return ["other.zip", "run.sh", "sub/content.json", "sub/data.txt"]


def test_pack_without_server_is_refused(server, partner, tmp_path):
    code = documented_exit_code("no server configured")
    assert code == 3
    folder = tmp_path / "app"
    names = an_app(folder)
    pkg = "ns" + partner.partner_id[-8:]
    args = ["pack", str(folder), "--package", pkg, "--branch", "main", "--version", "0.0.1"]
    # a valid token but no server anywhere: refused before anything is written or uploaded
    proc = run_cli("ota-build", *args, cwd=tmp_path, env=dict(NO_ENV, OTA_TOKEN=partner.api_token()))
    assert_one_line_error(proc, code, "no OTA server configured", "--server", "OTA_SERVER", "--no-upload")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app", "credentials.json", "partner-ota-conf.json"]
    assert requests.get(f"{server.url}/getVersion", params={"package": pkg}).json()["list"] == []
    # --no-upload: only the files, and exit 0 without server or token
    proc = run_cli("ota-build", *args, "--no-upload", cwd=tmp_path, env=NO_ENV, check=0)
    assert "uploaded" not in proc.stdout and not proc.stderr
    out = tmp_path / f"{pkg}-main-0.0.1.zip"
    assert sorted(zipfile.ZipFile(out).namelist()) == names
    content = json.loads((tmp_path / "content.json").read_text())
    assert content["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest() and content["version"] == "0.0.1"
    assert requests.get(f"{server.url}/getVersion", params={"package": pkg}).json()["list"] == []
    # OTA_SERVER alone is enough to upload
    proc = run_cli("ota-build", *args, cwd=tmp_path, env=dict(NO_ENV, OTA_SERVER=server.url,
                                                              OTA_TOKEN=partner.api_token()), check=0)
    assert "uploaded" in proc.stdout
    assert len(requests.get(f"{server.url}/getVersion", params={"package": pkg}).json()["list"]) == 1


def test_pack_output_inside_the_folder_leaves_its_own_files_out(server, partner, tmp_path):
    folder = tmp_path / "app"
    names = an_app(folder)
    pkg = "in" + partner.partner_id[-8:]
    base = ["pack", ".", "--package", pkg, "--branch", "b"]
    run_cli("ota-build", *base, "--version", "1", "--no-upload", cwd=folder, env=NO_ENV, check=0)
    first = folder / f"{pkg}-b-1.zip"
    assert sorted(zipfile.ZipFile(first).namelist()) == names  # not its own temporary file
    assert (folder / "content.json").exists()
    # leftovers of an interrupted run, then a second version uploaded from inside the folder
    (folder / f".{pkg}-b-0.9.zip.ab12cd34.tmp").write_bytes(b"partial")
    (folder / ".content.json.ef56gh78.tmp").write_text("{")
    env = dict(NO_ENV, OTA_TOKEN=partner.api_token())
    proc = run_cli("ota-build", *base, "--version", "2", "--server", server.url, cwd=folder, env=env, check=0)
    assert "uploaded" in proc.stdout
    second = folder / f"{pkg}-b-2.zip"
    assert sorted(zipfile.ZipFile(second).namelist()) == names  # no earlier zip, content.json or temp file
    content = json.loads((folder / "content.json").read_text())
    assert content["version"] == "2" and content["sha256"] == hashlib.sha256(second.read_bytes()).hexdigest()
    stored = requests.get(f"{server.url}/otafiles/{pkg}/b/{pkg}-b-2.zip")
    assert stored.status_code == 200 and stored.content == second.read_bytes()
    # from outside, into another directory: the earlier outputs inside the folder stay out too
    dist = tmp_path / "dist"
    run_cli("ota-build", "pack", str(folder), "--package", pkg, "--branch", "b", "--version", "3",
            "-o", str(dist / "three.zip"), "--no-upload", env=NO_ENV, check=0)
    assert sorted(zipfile.ZipFile(dist / "three.zip").namelist()) == names
    assert (dist / "content.json").exists()
    # -o with a custom name inside the folder: that zip and the content.json beside it stay out
    run_cli("ota-build", *base, "--version", "4", "-o", "sub/custom.zip", "--no-upload", cwd=folder, env=NO_ENV,
            check=0)
    assert sorted(zipfile.ZipFile(folder / "sub" / "custom.zip").namelist()) == [
        n for n in names if n != "sub/content.json"]


def test_pack_token_message_and_help(server, partner, tmp_path):
    folder = tmp_path / "app"
    an_app(folder)
    pkg = "tk" + partner.partner_id[-8:]
    args = ["pack", str(folder), "--package", pkg, "--branch", "main", "--version", "0.0.1", "--server", server.url]
    proc = run_cli("ota-build", *args, cwd=tmp_path, env=NO_ENV)
    assert_one_line_error(proc, 2, "OTA_TOKEN", "--token-file", "--no-upload")
    assert "--token " not in proc.stderr and "--token (" not in proc.stderr
    assert not list(tmp_path.glob("*.zip")) and not (tmp_path / "content.json").exists()
    empty = tmp_path / "empty-token"
    empty.write_text("\n")
    proc = run_cli("ota-build", *args, "--token-file", str(empty), cwd=tmp_path, env=NO_ENV)
    assert_one_line_error(proc, 2, "--token-file", "empty")
    proc = run_cli("ota-build", *args, "--token-file", str(tmp_path / "missing"), cwd=tmp_path, env=NO_ENV)
    assert_one_line_error(proc, 2, "--token-file", "missing")
    # OTA_TOKEN holds the token itself
    proc = run_cli("ota-build", *args, cwd=tmp_path, env=dict(NO_ENV, OTA_TOKEN=partner.api_token()), check=0)
    assert "uploaded" in proc.stdout
    helptext = run_cli("ota-build", "pack", "--help", env={"COLUMNS": "400"}, check=0).stdout
    line = next(x for x in helptext.splitlines() if x.strip().startswith("--token-file"))
    assert "default: $OTA_TOKEN" not in line and "OTA_TOKEN" in line and "token itself" in line
    line = next(x for x in helptext.splitlines() if x.strip().startswith("--server"))
    assert "required unless --no-upload" in line


def test_upload_with_the_token_as_http_basic(server, partner):
    """Seed 001's pack.py sends no bearer header: http://token:KEY@host works through its URL (HTTP Basic)."""
    token = partner.api_token()
    pkg = f"basic{partner.partner_id.lower()}"[:60]
    data = a_zip("basic")
    host = server.url.split("://", 1)[1]

    def put_basic(user: str, key: str, version: str) -> requests.Response:
        return requests.put(f"http://{user}:{key}@{host}/upload",
                            files={"file": ("p.zip", data)}, data={"content": json.dumps(content_for(data, pkg, version=version))})

    ok = put_basic("token", token, "1.0.0")
    assert ok.status_code == 200, ok.text
    latest = requests.get(f"{server.url}/latestVersion", params={"package": pkg, "branch": "major"}).json()
    assert json.loads(latest["content.json"])["version"] == "1.0.0"
    wrong_user = put_basic("admin", token, "1.0.1")
    assert wrong_user.status_code == 401 and "user 'token'" in wrong_user.json()["message"]
    assert put_basic("token", "bogus", "1.0.1").status_code == 401
    assert put_basic("token", partner.device("basic-dev"), "1.0.1").status_code == 403
