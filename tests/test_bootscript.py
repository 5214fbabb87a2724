"""The A/B boot script generator (ota_build.partner.bootscript, ``ota-build boot-script``).

What the script does in a real U-Boot is in test_boot_uboot.py; here: the settings are
checked (names fullmatch, one line naming the bad one, exit 2), the storage modes, and
the script writes the environment only in its ``upgrade_available=1`` branch.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from ota_build.cli.build import main
from ota_build.core.errors import UsageError
from ota_build.core.bootenv import left_variable, parse_env_text, state_variables
from ota_build.partner.bootscript import boot_script_settings, render_boot_script

SLOTS = {"a": "/dev/mmcblk0p2", "b": "/dev/mmcblk0p3"}


def script(**kw) -> str:
    return render_boot_script(boot_script_settings(SLOTS, **kw))


@pytest.mark.parametrize("kw, field", [
    (dict(slots={"a": "/dev/x"}), "slots: the A/B boot script needs at least two slots"),
    (dict(slots={"a-1": "/dev/x", "b": "/dev/y"}), "slots: slot name 'a-1'"),
    (dict(slots={"a": "/dev/x;reset", "b": "/dev/y"}), "slots: device '/dev/x;reset' of slot 'a'"),
    (dict(boot_variable="boot part"), "boot variable: 'boot part'"),
    (dict(boot_variable="BOOT_ORDER"), "boot variable: 'BOOT_ORDER' is one of the boot script's own"),
    (dict(boot_variable="ota_boot_root"), "boot variable: 'ota_boot_root' is one of the boot script's own"),
    (dict(boot_values={"c": "0:4"}), "boot values: 'c' is not a slot"),
    (dict(boot_values={"a": "0:2 ${x}"}), "boot values: value '0:2 ${x}' of slot 'a'"),
    (dict(storage="nvram"), "env storage: 'nvram'"),
    (dict(env_file="my env.txt"), "env file: 'my env.txt'"),
    (dict(boot_commands="bootz\nreset"), "boot commands: 'bootz\\nreset' must be one line"),
    (dict(env_device=""), "env device: must not be empty"),
])
def test_bad_settings_are_named(kw, field):
    slots = kw.pop("slots", SLOTS)
    with pytest.raises(UsageError) as err:
        boot_script_settings(slots, **kw)
    assert str(err.value).startswith(field), str(err.value)


def test_cli_bad_slot_is_one_line_exit_2(tmp_path, capsys):
    out = tmp_path / "boot.cmd"
    assert main(["boot-script", "--slot", "a=/dev/mmcblk0p2", "--slot", "b", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "slot: 'b' is not NAME=VALUE" in err[0], err
    assert not out.exists()


def test_cli_writes_the_generators_script(tmp_path):
    out = tmp_path / "boot.cmd"
    assert main(["boot-script", "--slot", "a=/dev/mmcblk0p2", "--slot", "b=/dev/mmcblk0p3", "--boot-variable", "bootpart",
                 "--boot-value", "a=0:2", "--boot-value", "b=0:3", "--env-storage", "file",
                 "--boot-commands", "bootz ${kernel_addr_r}", "-o", str(out)]) == 0
    assert out.read_text() == script(boot_variable="bootpart", boot_values={"a": "0:2", "b": "0:3"}, storage="file",
                                     boot_commands="bootz ${kernel_addr_r}")


def save_block(text: str) -> str:
    """The lines of the script's one save block (``if test "${ota_boot_save}" = "1"; then`` ... ``fi``)."""
    match = re.search(r'^if test "\$\{ota_boot_save\}" = "1"; then\n(.*?)^fi$', text, re.M | re.S)
    assert match, text
    return match.group(1)


def test_storage_modes_write_only_in_the_save_block():
    saveenv = script()
    assert "saveenv" in save_block(saveenv) and len(re.findall(r"^ *saveenv$", saveenv, re.M)) == 1
    assert "fatwrite" not in saveenv and "env import" not in saveenv and "env export" not in saveenv
    file_mode = script(storage="file", env_file="state/ota.env", env_device="mmc 1:1", env_addr="0x21000000",
                       boot_variable="bootpart")
    block = save_block(file_mode)
    assert "env export -t 0x21000000 " + " ".join(state_variables(list(SLOTS))) + " bootpart" in block
    assert "fatwrite mmc 1:1 0x21000000 state/ota.env ${filesize}" in block
    assert file_mode.count("fatwrite") == 1 and file_mode.count("env export") == 1 and not re.search(r"^ *saveenv", file_mode, re.M)
    # the import reads only the state variables: the file cannot set bootcmd or bootargs
    assert ("env import -t 0x21000000 ${filesize} " + " ".join(state_variables(list(SLOTS))) + "\n") in file_mode
    # ota_boot_save is set to 1 only in the upgrade_available=1 branch
    upgrade = file_mode.index('if test "${upgrade_available}" = "1"; then')
    assert [m.start() for m in re.finditer(r"setenv ota_boot_save 1", file_mode)] == [upgrade + len(
        'if test "${upgrade_available}" = "1"; then\n    ')]


def test_every_slot_is_generated_from_the_settings():
    slots = {"x": "/dev/sda2", "y": "/dev/sda3", "z": "/dev/sda4"}
    text = render_boot_script(boot_script_settings(slots, boot_variable="rootpart", boot_values={"z": "0:4"}))
    assert 'setenv BOOT_ORDER "x y z"' in text
    for slot, device in slots.items():
        assert f'if test "${{ota_boot_slot}}" = "{slot}"; then setenv ota_boot_left ${{{left_variable(slot)}}}; fi' in text
        value = "0:4" if slot == "z" else slot
        assert f'if test "${{ota_boot_slot}}" = "{slot}"; then setenv rootpart {value}; setenv ota_boot_root {device}; fi' in text
    assert "setenv bootargs ${bootargs} root=${ota_boot_root} rootwait ota.slot=${ota_boot_slot}\n" in text
    assert text.rstrip().endswith('echo "ota: slot ${ota_boot_slot} did not boot"\nreset')


def test_parse_env_text():
    assert parse_env_text(b"BOOT_ORDER=b a\n# comment\nupgrade_available=1\nbootargs=a=b\n\0garbage=1\n") == {
        "BOOT_ORDER": "b a", "upgrade_available": "1", "bootargs": "a=b"}


@pytest.mark.skipif(not shutil.which("mkimage"), reason="needs mkimage (Debian: u-boot-tools)")
def test_mkimage_compiles_it(tmp_path):
    (tmp_path / "boot.cmd").write_text(script(storage="file"))
    proc = subprocess.run(["mkimage", "-A", "arm", "-T", "script", "-C", "none", "-d", str(tmp_path / "boot.cmd"),
                           str(tmp_path / "boot.scr")], capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and "ARM Linux Script" in proc.stdout, proc.stdout + proc.stderr
