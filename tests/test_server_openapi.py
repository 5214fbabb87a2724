"""The OpenAPI description: committed, current, and fuzzed by schemathesis against the live server
(no 5xx allowed), on SQLite and (in CI) PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import requests

from .conftest import ROOT


def test_committed_openapi_is_current(server):
    live = requests.get(server.url + "/openapi.json").json()
    committed = json.loads((ROOT / "docs" / "openapi.json").read_text())
    assert live == committed, "regenerate: python -m ota_build.server.openapi > docs/openapi.json"
    paths = set(live["paths"])
    for must in ("/oauth/token", "/v1/ota/partners/{partnerId}/pool", "/v1/ota/partners/{partnerId}/binaries",
                 "/v1/devices/{deviceId}/update", "/v1/devices/{deviceId}/images/{imageId}", "/latestVersion",
                 "/upload"):
        assert must in paths


def test_no_debug_and_loopback_by_default(server):
    resp = requests.get(server.url + "/no/such/path")
    assert resp.status_code == 404 and "Traceback" not in resp.text
    from ota_build.cli.build import build_parser

    args = build_parser().parse_args(["serve"])
    assert args.host == "127.0.0.1"


def test_schemathesis_finds_no_server_error(server, partner, tmp_path):
    token = partner.api_token()
    st = Path(sys.executable).parent / "st"
    cmd = [str(st), "run", server.url + "/openapi.json", "--checks", "not_a_server_error", "--max-examples", "8",
           "--seed", "1", "--no-color", "--request-timeout", "20", "-H", f"Authorization: Bearer {token}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    tail = "\n".join(proc.stdout.splitlines()[-60:])
    assert proc.returncode == 0, tail
    assert "passed" in proc.stdout


def test_publish_and_notify_bodies_are_described_and_work(server, partner):
    """The seed 002 bodies in the document are the ones the server takes: a request built from the schema alone
    (binary properties as file parts, the others as fields) is answered 200."""
    from .serverutil import free_udp_port

    doc = requests.get(server.url + "/openapi.json").json()
    headers = {"Authorization": f"Bearer {partner.api_token()}"}
    body = doc["paths"]["/publish"]["post"]["requestBody"]
    schema = body["content"]["multipart/form-data"]["schema"]
    assert body["required"] and set(schema["required"]) == {"publish_id", "manifest", "slot0", "slot1"}
    publish_id = "oa-" + partner.partner_id
    files = {n: (n, f"{n} bytes".encode()) for n, p in schema["properties"].items() if p.get("format") == "binary"}
    data = {n: publish_id for n, p in schema["properties"].items() if p.get("format") != "binary"}
    resp = requests.post(server.url + "/publish", headers=headers, data=data, files=files, timeout=30)
    assert resp.status_code == 200, resp.text
    assert resp.json()["sizes"] == {n: len(f"{n} bytes") for n in ("manifest", "slot0", "slot1")}

    body = doc["paths"]["/notify"]["put"]["requestBody"]
    assert body["required"]
    for media in ("application/x-www-form-urlencoded", "multipart/form-data"):
        schema = body["content"][media]["schema"]
        assert set(schema["required"]) == set(schema["properties"]) == {"publish_id", "device_urls"}
    device = f"127.0.0.1:{free_udp_port()}/notify"  # nobody listens: the outcome is reported, the answer is 200
    values = {"publish_id": publish_id, "device_urls": device}
    resp = requests.put(server.url + "/notify", headers=headers, timeout=60,
                        data={n: values[n] for n in schema["properties"]})
    assert resp.status_code == 200, resp.text
    assert [d["device"] for d in resp.json()["devices"]] == [device]
