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
