"""Installers on real files, a real U-Boot environment (libubootenv) and real commands."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess

import pytest

from ota_build.device import bootsim
from ota_build.device.installers import ABInstaller, BootEnv, CommandInstaller, InstallError


SWITCHED_TO_B = "BOOT_ORDER=b a\nBOOT_b_LEFT=3\nupgrade_available=1\nbootcount=0\n"


def sha(path) -> bytes:
    return hashlib.sha256(open(path, "rb").read()).digest()


@pytest.fixture
def payload(tmp_path):
    p = tmp_path / "ota_type_5.img"
    p.write_bytes(os.urandom(3 << 20) + b"tail")
    return p


def file_slots(tmp_path):
    a, b = tmp_path / "slot-a.img", tmp_path / "slot-b.img"
    a.write_bytes(b"running system A" * 1000)
    b.write_bytes(b"old system B".ljust(4 << 20, b"\0"))  # a slot's size is its capacity (payload: 3 MiB + 4)
    return a, b


def test_ab_writes_inactive_slot_and_switches_file_env(tmp_path, payload):
    a, b = file_slots(tmp_path)
    env = tmp_path / "bootenv.txt"
    env.write_text("other=1\nota_slot=a\n")
    a_before = a.read_bytes()
    inst = ABInstaller({"a": str(a), "b": str(b)}, BootEnv({"tool": "file", "file": str(env)}))
    assert inst.active_slot() == "a" and inst.inactive_slot() == "b"
    res = inst.install(str(payload), sha(payload))
    assert res.slot == "b"
    assert b.read_bytes()[:payload.stat().st_size] == payload.read_bytes()
    assert a.read_bytes() == a_before
    # One write: the legacy variable and the A/B boot contract's variables (docs/agent.md).
    assert env.read_text() == "other=1\nota_slot=b\n" + SWITCHED_TO_B
    # The next update goes to the other slot.
    assert inst.inactive_slot() == "a"


def test_ab_failed_write_leaves_active_slot_and_boot_choice(tmp_path, payload):
    a, _ = file_slots(tmp_path)
    env = tmp_path / "bootenv.txt"
    env.write_text("ota_slot=a\n")
    a_before = a.read_bytes()
    inst = ABInstaller({"a": str(a), "b": "/dev/full"}, BootEnv({"tool": "file", "file": str(env)}))
    with pytest.raises(InstallError, match="writing slot b"):
        inst.install(str(payload), sha(payload))
    assert env.read_text() == "ota_slot=a\n"
    assert a.read_bytes() == a_before
    inst = ABInstaller({"a": str(a), "b": str(tmp_path / "no" / "such" / "dir")}, BootEnv({"tool": "file", "file": str(env)}))
    with pytest.raises(InstallError, match="cannot open slot b"):
        inst.install(str(payload), sha(payload))
    assert env.read_text() == "ota_slot=a\n"


def test_ab_read_back_mismatch_does_not_switch(tmp_path, payload):
    a, b = file_slots(tmp_path)
    env = tmp_path / "bootenv.txt"
    env.write_text("ota_slot=a\n")
    inst = ABInstaller({"a": str(a), "b": str(b)}, BootEnv({"tool": "file", "file": str(env)}))
    with pytest.raises(InstallError, match="different SHA-256"):
        inst.install(str(payload), hashlib.sha256(b"something else").digest())
    assert env.read_text() == "ota_slot=a\n"


@pytest.mark.skipif(not shutil.which("fw_setenv") or not shutil.which("mkenvimage"),
                    reason="needs libubootenv-tool and u-boot-tools (installed by .ci/run)")
def test_ab_with_real_uboot_environment(tmp_path, payload):
    init = tmp_path / "init.txt"
    init.write_text("bootpart=0:3\nbootdelay=1\n")
    envimg = tmp_path / "uboot.env"
    subprocess.run(["mkenvimage", "-s", "0x4000", "-o", str(envimg), str(init)], check=True)
    conf = tmp_path / "fw_env.config"
    conf.write_text(f"{envimg} 0x0 0x4000\n")
    a, b = file_slots(tmp_path)
    boot = BootEnv({"tool": "fw_setenv", "variable": "bootpart", "values": {"a": "0:3", "b": "0:4"},
                    "fwEnvConfig": str(conf)})
    inst = ABInstaller({"a": str(a), "b": str(b)}, boot)
    assert inst.active_slot() == "a"
    inst.install(str(payload), sha(payload))
    out = subprocess.run(["fw_printenv", "-c", str(conf), "-n", "bootpart"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0:4"
    assert b.read_bytes()[:payload.stat().st_size] == payload.read_bytes()
    out = subprocess.run(["fw_printenv", "-c", str(conf), "-n", "bootdelay"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"  # the rest of the environment is kept
    env = boot.read_all()
    assert {k: env[k] for k in ("BOOT_ORDER", "BOOT_b_LEFT", "upgrade_available", "bootcount")} == \
        {"BOOT_ORDER": "b a", "BOOT_b_LEFT": "3", "upgrade_available": "1", "bootcount": "0"}
    # The boot script's model boots b (one attempt used), the agent commits: one fw_setenv -s each.
    slot, saved, _ = bootsim.boot(env, ["a", "b"], "bootpart", {"a": "0:3", "b": "0:4"})
    assert slot == "b"
    boot.update({k: v for k, v in saved.items() if env.get(k) != v})
    boot.commit("b", 3)
    env = boot.read_all()
    assert (env["upgrade_available"], env["bootcount"], env["BOOT_b_LEFT"], env["BOOT_ORDER"]) == ("0", "0", "3", "b a")
    # A tool that does not understand the script format is caught, not trusted.
    wrong = BootEnv({"tool": "fw_setenv", "variable": "bootpart", "fwEnvConfig": str(conf), "fwScriptSeparator": " "})
    with pytest.raises(InstallError, match="did not set upgrade_available"):
        wrong.update({"upgrade_available": "1"})


def test_command_installer(tmp_path, payload):
    marker = tmp_path / "installed"
    script = tmp_path / "sysupgrade"
    script.write_text(f"#!/bin/sh\ncp \"$1\" {marker}\n")
    script.chmod(0o755)
    res = CommandInstaller([str(script), "{image}"]).install(str(payload), sha(payload))
    assert marker.read_bytes() == payload.read_bytes()
    assert "sysupgrade" in res.detail
    CommandInstaller([str(script)]).install(str(payload), sha(payload))  # path appended when no {image}
    bad = tmp_path / "bad"
    bad.write_text("#!/bin/sh\necho 'no space left' >&2\nexit 4\n")
    bad.chmod(0o755)
    with pytest.raises(InstallError, match="exited 4: no space left"):
        CommandInstaller([str(bad)]).install(str(payload), sha(payload))
    with pytest.raises(InstallError, match="not found"):
        CommandInstaller(["/sbin/no-such-sysupgrade"]).install(str(payload), sha(payload))
