"""The A/B boot contract's one module (ota_build.core.bootenv): names, switch/commit values, the env-file format
(what U-Boot's ``env export -t`` writes and ``env import -t`` reads; proven against real U-Boot in
test_boot_uboot.py)."""

from __future__ import annotations

import pytest

from ota_build.core.bootenv import (cmdline_slot, commit_values, left_variable, parse_env_text, switch_values,
                                    update_env_text)


def test_parse_stops_at_the_nul_uboot_writes():
    assert parse_env_text(b"BOOT_ORDER=b a\n# c\nbootargs=x=y\nnoequals\n\nupgrade_available=1\n\0junk=1\n") == {
        "BOOT_ORDER": "b a", "bootargs": "x=y", "upgrade_available": "1"}


def test_update_keeps_lines_replaces_in_place_and_drops_the_nul():
    uboot = b"BOOT_ORDER=a b\nBOOT_b_LEFT=0\nupgrade_available=0\nbootcount=0\nbootpart=0:2\n\0"
    new = update_env_text(uboot, {"BOOT_ORDER": "b a", "BOOT_a_LEFT": "3", "upgrade_available": "1"})
    assert new == (b"BOOT_ORDER=b a\nBOOT_b_LEFT=0\nupgrade_available=1\nbootcount=0\nbootpart=0:2\n"
                   b"BOOT_a_LEFT=3\n")                       # appended before nothing: env import -t reads it
    assert update_env_text(b"# keep\nx=1\nx=2\ny=3", {"x": "9"}) == b"# keep\nx=9\ny=3\n"   # one line per name
    assert update_env_text(b"", {"a": ""}) == b"a=\n"
    for bad in ({"a b": "1"}, {"x": "1\n2"}, {"x": "1\0"}):
        with pytest.raises(ValueError):
            update_env_text(b"", bad)


def test_switch_commit_and_cmdline():
    assert left_variable("b") == "BOOT_b_LEFT"
    assert switch_values("c", {"BOOT_ORDER": "b a"}, ["a", "b", "c"], 3) == {
        "BOOT_ORDER": "c b a", "BOOT_c_LEFT": "3", "upgrade_available": "1", "bootcount": "0"}
    assert switch_values("b", {}, ["a", "b"], 5)["BOOT_ORDER"] == "b a"
    assert commit_values("b", 3) == {"upgrade_available": "0", "bootcount": "0", "BOOT_b_LEFT": "3"}
    assert cmdline_slot("root=/dev/vda3 ota.slot=a quiet ota.slot=b\n") == "b"
    assert cmdline_slot("ota.slot=a/b") is None and cmdline_slot("root=x") is None
