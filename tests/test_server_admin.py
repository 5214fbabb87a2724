"""``ota-build admin`` and ``serve`` as a user runs them: database settings that cannot work are
one line naming the setting (exit 2, never a password), and ``partner --credentials-out``."""

from __future__ import annotations

import json
import os
import stat

import pytest

from .conftest import assert_one_line_error, run_cli


@pytest.mark.parametrize("args, needle", [
    (["--database-url", "bogus://", "list"], "--database-url"),
    (["--database-url", "sqlite:////nonexistent/x/y.db", "list"], "cannot open the database"),
    (["--database-url", "postgresql+asyncpg://u@/db", "list"], "driver is not installed"),
    (["--database-url", "postgresql+psycopg://u:s3cret@/db?host=/nonexistent", "list"], "--database-url"),
    (["--data-dir", "FILE", "list"], "is not a directory"),
    (["--data-dir", "MISSING", "list"], "no OTA database"),
])
def test_database_settings_that_cannot_work(tmp_path, args, needle):  # noqa: ANN001
    (tmp_path / "FILE").write_text("x")
    args = [str(tmp_path / a) if a in ("FILE", "MISSING") else a for a in args]
    proc = run_cli("ota-build", "admin", *args, cwd=tmp_path)
    assert_one_line_error(proc, 2, needle)
    assert "s3cret" not in proc.stderr
    assert not (tmp_path / "MISSING").exists()  # a mistyped --data-dir is not a new, empty service


def test_serve_on_a_file_is_one_line(tmp_path):  # noqa: ANN001
    (tmp_path / "f").write_text("x")
    assert_one_line_error(run_cli("ota-build", "serve", "--data-dir", str(tmp_path / "f"), "--port", "1"), 2,
                          "--data-dir")


def test_partner_credentials_out(tmp_path):  # noqa: ANN001
    data = str(tmp_path / "data")
    creds = tmp_path / "ota-credentials.json"
    proc = run_cli("ota-build", "admin", "--data-dir", data, "partner", "--username", "a@example.com",
                   "--server-url", "http://127.0.0.1:8080", "--credentials-out", str(creds), check=0)
    shown = json.loads(proc.stdout)
    secrets = json.loads(creds.read_text())
    assert set(secrets) == {"username", "userpw", "auth-string"}
    assert stat.S_IMODE(os.stat(creds).st_mode) == 0o600
    assert secrets["userpw"] not in proc.stdout and secrets["auth-string"] not in proc.stdout
    assert shown["partnerId"] and shown["server"] == "http://127.0.0.1:8080"
    assert shown["credentialsFile"] == str(creds)
    # never overwritten: a second partner would lose the first one's secrets
    again = run_cli("ota-build", "admin", "--data-dir", data, "partner", "--username", "b@example.com",
                    "--credentials-out", str(creds))
    assert_one_line_error(again, 2, "--credentials-out")
    assert json.loads(creds.read_text()) == secrets
    # the file is what the tools read through OTA_CREDENTIALS_FILE, as written
    from ota_build.core.config import load_config

    from .conftest import write_config

    conf = write_config(tmp_path, partnerId=shown["partnerId"], server=shown["server"], username=None, userpw=None,
                        auth_string=None)
    cfg = load_config(str(conf), env={"OTA_CREDENTIALS_FILE": str(creds)})
    assert (cfg.credentials.username, cfg.credentials.password, cfg.credentials.auth_string) == \
        (secrets["username"], secrets["userpw"], secrets["auth-string"])


def test_empty_password_on_stdin_is_refused(tmp_path):  # noqa: ANN001
    import subprocess

    from .conftest import script

    proc = subprocess.run(script("ota-build") + ["admin", "--data-dir", str(tmp_path / "d"), "partner", "--username",
                                                 "c@example.com", "--password-stdin"],
                          input="", capture_output=True, text=True)
    assert_one_line_error(proc, 2, "--password-stdin")


def test_serve_says_where_and_refuses_a_busy_port(tmp_path):  # noqa: ANN001
    from .serverutil import start_server, stop_server

    srv = start_server(tmp_path / "data", None)
    try:
        port = srv.url.rsplit(":", 1)[1]
        log = next((tmp_path).glob(f"server-{port}.log")).read_text()
        assert f"ota-build serve: http://127.0.0.1:{port}" in log and "sqlite" in log
        busy = run_cli("ota-build", "serve", "--data-dir", str(tmp_path / "other"), "--port", port)
        assert_one_line_error(busy, 1, f"127.0.0.1:{port}", "in use")
    finally:
        stop_server(srv)
    assert_one_line_error(run_cli("ota-build", "serve", "--data-dir", str(tmp_path / "d"), "--max-upload-bytes", "0"),
                          2, "--max-upload-bytes")
