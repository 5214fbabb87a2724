"""The command-line surface: --help everywhere and the seed's compatibility flags."""

from __future__ import annotations

import json
import shutil

import pytest

from ota_build.cli.build import build_parser
from ota_build.cli.compat import deploy_parser, uploader_parser

from .conftest import assert_one_line_error, run_cli, write_config

SUBCOMMANDS = ["record", "keygen", "pubkey", "package", "verify", "inspect", "agent-config", "demo"]


def test_every_flag_has_help():
    parsers = [build_parser(), uploader_parser(), deploy_parser()]
    sub = build_parser()._subparsers._group_actions[0]  # type: ignore[attr-defined]
    parsers += list(sub.choices.values())
    for parser in parsers:
        for action in parser._actions:
            if action.dest in ("help", "command"):
                continue
            assert action.help, f"{parser.prog} {action.option_strings or action.dest} has no help"


@pytest.mark.parametrize("cmd", SUBCOMMANDS)
def test_subcommand_help(cmd):
    proc = run_cli("ota-build", cmd, "--help", check=0)
    assert "usage: ota-build " + cmd in proc.stdout


def test_exit_codes_in_help():
    proc = run_cli("ota-build", "--help", check=0)
    assert "exit codes" in proc.stdout and "15" in proc.stdout


def test_uploader_seed_flags(seed_config, tmp_path):
    proc = run_cli("partner-ota-hub-uploader", "-h", check=0)
    for flag in ("-c", "--conf", "-d", "-s", "-n", "--buildNum", "--createOTARecord", "--uploadOTAImage"):
        assert flag in proc.stdout
    for tool in ("partner-ota-hub-uploader", "partner-ota-hub-deploy"):
        text = run_cli(tool, "-h", check=0).stdout
        for env in ("OTA_SERVER", "OTA_USERNAME", "OTA_USERPW", "OTA_AUTH_STRING", "OTA_CREDENTIALS_FILE"):
            assert env in text, (tool, env)
        assert "verify:" not in text  # these tools never return the verify codes
    proc = run_cli("partner-ota-hub-uploader", "-c", str(seed_config), "-d", "-s", "-n", "2", "--createOTARecord",
                   cwd=tmp_path, check=0)
    rec = json.loads((tmp_path / "full_ota_record.json").read_text())
    assert rec["version"] == "1.0.2d"
    # no server configured: the user is told the record is offline, and its versionNumber
    assert "offline" in proc.stdout and str(rec["versionNumber"]) in proc.stdout
    (tmp_path / "full_ota_record.json").unlink()
    run_cli("partner-ota-hub-uploader", "--conf", str(seed_config), "--debug", "-s", "--buildNum", "3",
            "--createOTARecord", cwd=tmp_path, check=0)
    assert json.loads((tmp_path / "full_ota_record.json").read_text())["version"] == "1.0.3d"


def test_uploader_default_config_in_current_directory(seed_config):
    run_cli("partner-ota-hub-uploader", "-s", "-n", "4", "--createOTARecord", cwd=seed_config.parent, check=0)
    assert (seed_config.parent / "full_ota_record.json").exists()


def test_uploader_requires_build_number(seed_config, tmp_path):
    proc = run_cli("partner-ota-hub-uploader", "-c", str(seed_config), "-s", "--createOTARecord", cwd=tmp_path)
    assert proc.returncode == 2 and "-n/--buildNum" in proc.stderr


def test_upload_without_server_says_so(seed_config, tmp_path):
    proc = run_cli("partner-ota-hub-uploader", "-c", str(seed_config), "-s", "-n", "2", "--uploadOTAImage",
                   cwd=tmp_path, env={"OTA_SERVER": ""})
    assert_one_line_error(proc, 3, "no OTA server configured")


@pytest.mark.parametrize("args", [["--list"], ["-l"], ["-d", "012359551bf18eba", "-i", "49867"],
                                  ["--device", "012359551bf18eba", "--imageId", "49867"],
                                  ["-d", "012359551bf18eba", "--image", "49867"]])
def test_deploy_seed_flags_parse(seed_config, tmp_path, args):
    proc = run_cli("partner-ota-hub-deploy", "-c", str(seed_config), *args, cwd=tmp_path, env={"OTA_SERVER": ""})
    assert_one_line_error(proc, 3, "no OTA server configured")


def test_deploy_needs_device_and_image(seed_config, tmp_path):
    proc = run_cli("partner-ota-hub-deploy", "-c", str(seed_config), "-d", "x", cwd=tmp_path)
    assert_one_line_error(proc, 2, "-i IMAGEID")


def test_demo_offline_runs(tmp_path):
    proc = run_cli("ota-build", "demo", "--offline", "--workdir", str(tmp_path / "demo"), check=0)
    assert "OK (type 5" in proc.stdout
    assert (tmp_path / "demo" / "hub_update.bin").exists()


def test_demo_journey_end_to_end(tmp_path):
    """The README's first command: server, upload, list, deploy, device installs and reports."""
    proc = run_cli("ota-build", "demo", "--workdir", str(tmp_path / "demo"), check=0)
    out = proc.stdout
    for expected in ("--createOTARecord", "--uploadOTAImage", "Image Id", "Request accepted for processing",
                     "pending-reboot: versionNumber 1", "slot b holds the new rootfs: yes", "boots slot b, BOOT_b_LEFT=2",
                     "installed: versionNumber 1", "rolled-back: versionNumber 2", "the boot script fell back",
                     "Done. Everything is in"):
        assert expected in out, expected
    env = (tmp_path / "demo" / "device" / "uboot-env.txt").read_text()
    assert "BOOT_ORDER=b a\n" in env and "upgrade_available=0\n" in env
    if shutil.which("curl"):  # seed 000's file packager: the seed's curl commands, then packager-verify
        assert "packager/model.zip: OK" in proc.stdout or "model.zip: OK" in proc.stdout, proc.stdout
        assert (tmp_path / "demo" / "packager" / "extracted" / "model.pkl").exists()
    creds = json.loads((tmp_path / "demo" / "credentials.json").read_text())
    for secret in (creds["userpw"], creds["auth-string"]):
        assert secret not in out and secret not in proc.stderr  # secrets are never printed


def test_uploader_invalid_config(tmp_path):
    path = write_config(tmp_path, name="n" * 40)
    proc = run_cli("partner-ota-hub-uploader", "-c", str(path), "-s", "-n", "2", "--createOTARecord", cwd=tmp_path)
    assert_one_line_error(proc, 2, "field 'name'", "35")
