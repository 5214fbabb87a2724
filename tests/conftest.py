"""Shared fixtures: real keys, the seed's config, and a CLI runner."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest
from hypothesis import HealthCheck, settings

from ota_build.core.signing import generate_key

# Hypothesis's timing checks (a slow draw, a slow example) measure wall time, which the real-BitBake builds
# on the other pytest worker can stretch at any moment: speed lives in benchmarks/, not in tests (the
# number of examples stays bounded as each test sets it).
settings.register_profile("ota", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ota")

ROOT = Path(__file__).resolve().parent.parent

# The server fixtures (server, partner) live in tests/serverutil.py.
pytest_plugins = ["tests.serverutil"]

# The seed document's example configuration, byte for byte (Comments key and all).
SEED_CONFIG = """{
    "Comments"    : "Configuration file for partner full OTA image upload tool",

    "description" : "OTA image description",
    "version"     : "1.0",
    "url"         : "dummy",

    "username"    : "john@company.io",
    "userpw"      : "12334",
    "auth-string" : "NGY3ZGU0ODQtY2YyMy00NzhkLTktYTctEREyMTA0ZDUxMjBiOjcxYTllODU5NDYxYjQ2ZjMhNTFhOTE3OWM0Z1234OTRk",

    "name"        : "Potenco-test",
    "deviceTypeId": "a6542896-8464-48f1-x12g-664a57e4e702",
    "partnerId"   : "4f7de484-b438-578d-90a7-422104d5120i",


    "imageFiles"   : {
        "A": "hub_update.bin"
    }
}
"""

ALGORITHMS = ("ed25519", "ecdsa-p256", "rsa-pss")


@pytest.fixture
def seed_config(tmp_path: Path) -> Path:
    """The seed's partner-ota-conf.json in a temporary directory."""
    path = tmp_path / "partner-ota-conf.json"
    path.write_text(SEED_CONFIG)
    return path


def write_config(directory: Path, **changes) -> Path:
    """The seed config with some fields changed (None deletes a field)."""
    doc = json.loads(SEED_CONFIG)
    for key, value in changes.items():
        key = key.replace("_", "-") if key == "auth_string" else key
        if value is None:
            doc.pop(key, None)
        else:
            doc[key] = value
    path = directory / "partner-ota-conf.json"
    path.write_text(json.dumps(doc, indent=4))
    return path


@pytest.fixture(scope="session")
def keys(tmp_path_factory) -> Dict[str, Dict[str, str]]:
    """One real key pair per algorithm: {alg: {"private": path, "public": path}}."""
    base = tmp_path_factory.mktemp("keys")
    out = {}
    for alg in ALGORITHMS:
        priv, pub = base / f"{alg}.key.pem", base / f"{alg}.pub.pem"
        generate_key(alg, str(priv), str(pub), backend="cryptography", rsa_bits=2048)
        out[alg] = {"private": str(priv), "public": str(pub)}
    return out


@pytest.fixture(scope="session")
def other_key(tmp_path_factory) -> Dict[str, str]:
    """An Ed25519 key pair nobody trusts."""
    base = tmp_path_factory.mktemp("otherkey")
    priv, pub = base / "other.key.pem", base / "other.pub.pem"
    generate_key("ed25519", str(priv), str(pub), backend="cryptography")
    return {"private": str(priv), "public": str(pub)}


def script(name: str) -> List[str]:
    """Command line of an installed console script (falls back to python -m)."""
    exe = Path(sys.executable).parent / name
    if exe.exists():
        return [str(exe)]
    found = shutil.which(name)
    if found:
        return [found]
    module = {"ota-build": "ota_build.cli.build", "partner-ota-hub-uploader": "ota_build.cli.compat"}[name]
    return [sys.executable, "-m", module]


def run_cli(name: str, *args: str, cwd=None, env=None, check=None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run a console script as a user would, capturing text output (killed after ``timeout`` seconds)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = subprocess.run(script(name) + list(args), cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)
    if check is not None:
        assert proc.returncode == check, f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    return proc


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    """A failure is exit ``code``, one stderr line naming the problem, no traceback."""
    assert proc.returncode == code, f"exit {proc.returncode}, stderr: {proc.stderr}"
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("usage:")]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture
def env(tmp_path: Path):  # noqa: ANN201
    """(database, storage, partner_pk) of a fresh data directory with one partner: the service-layer tests
    (tests/test_server_services.py, tests/test_server_hardening_services.py) run on it without HTTP."""
    import sqlalchemy as sa

    from ota_build.server import admin
    from ota_build.server.db import open_database
    from ota_build.server.storage import Storage

    db = open_database(str(tmp_path / "data"))
    storage = Storage(str(tmp_path / "data"), max_upload_bytes=10_000_000)
    admin.create_partner(db, "p1@example.com", partner_id="p1")
    with db.session() as s:
        pk = s.scalar(sa.text("SELECT id FROM partners WHERE partner_id = 'p1'"))
    yield db, storage, int(pk)
    db.dispose()
