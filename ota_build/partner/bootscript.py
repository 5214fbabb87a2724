"""The A/B boot script: U-Boot ``boot.cmd`` generated from the slots (docs/boot.md).

The script implements the boot half of the A/B contract (docs/boot.md, "Algorithm"):
pick the first slot of ``BOOT_ORDER``; while ``upgrade_available=1`` count the new
slot's attempts in ``BOOT_<slot>_LEFT`` (with ``setexpr``) and ``bootcount``, and when
they are used up rotate ``BOOT_ORDER`` so the previous slot boots again; write the
environment only while ``upgrade_available=1``; set the board's boot variable to the
slot's value, append ``ota.slot=<slot>`` to ``bootargs`` and run the boot commands.

Slot names, devices and boot values come only from the layer's ``OTA_AGENT_SLOTS``,
``OTA_AGENT_BOOT_VARIABLE`` and ``OTA_AGENT_BOOT_VALUES`` (the agent's configuration
holds the same): the script is generated from them, here, by the same code for the
layer's ``ota-boot`` recipe (``ota-build boot-script``) and for the tests that boot it
in a real U-Boot. Standard library only (it runs in BitBake's native Python). Build-side code:
the device never runs it. The contract's names and the env-file format come from
``ota_build.core.bootenv``, which the agent uses too.

Two ways to keep the state: ``saveenv`` (U-Boot's own environment storage; Linux
side ``fw_setenv``/``fw_printenv`` with ``/etc/fw_env.config``) or ``file``: a text
file on the FAT boot partition, read with ``env import -t`` and written with
``env export -t`` + ``fatwrite`` (the format: ``ota_build.core.bootenv``). The agent's
key=value-file back-end reads and writes the same file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional

from ota_build.core.bootenv import SLOT_PARAMETER, SLOT_RE, VARIABLE_RE, left_variable, state_variables
from ota_build.core.errors import UsageError

STORAGE_MODES = ("saveenv", "file")
DEFAULT_ENV_FILE = "ota-env.txt"
#: the FAT boot partition of the running script (U-Boot's distro boot sets these)
DEFAULT_ENV_DEVICE = "${devtype} ${devnum}:${distro_bootpart}"
#: RAM for the env file: the kernel's load address, free until the kernel is loaded
DEFAULT_ENV_ADDR = "${kernel_addr_r}"
DEFAULT_BOOTARGS = "root=${ota_boot_root} rootwait"
DEFAULT_ON_FAILURE = "reset"

#: a device path or a boot value: no blanks, quotes, ``;``, ``$`` or anything hush would read
WORD_RE = re.compile(r"[A-Za-z0-9_./:+=,@-]+")
ENV_FILE_RE = re.compile(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*")


@dataclass(frozen=True)
class BootScript:
    """What the boot script is generated from (see :func:`boot_script_settings`)."""

    slots: Dict[str, str]                  # slot name -> root device, in the configured order
    boot_variable: str
    boot_values: Dict[str, str]            # slot name -> value of boot_variable
    storage: str = "saveenv"
    env_file: str = DEFAULT_ENV_FILE
    env_device: str = DEFAULT_ENV_DEVICE
    env_addr: str = DEFAULT_ENV_ADDR
    bootargs: str = DEFAULT_BOOTARGS
    boot_commands: str = ""
    on_failure: str = DEFAULT_ON_FAILURE


def _one_line(value: str, what: str) -> str:
    if any(ord(c) < 0x20 for c in value):
        raise UsageError(f"{what}: {value!r} must be one line without control characters")
    return value.strip()


def boot_script_settings(slots: Mapping[str, str], boot_variable: str = "ota_slot",
                         boot_values: Optional[Mapping[str, str]] = None, storage: str = "saveenv",
                         env_file: str = DEFAULT_ENV_FILE, env_device: str = DEFAULT_ENV_DEVICE,
                         env_addr: str = DEFAULT_ENV_ADDR, bootargs: str = DEFAULT_BOOTARGS,
                         boot_commands: str = "", on_failure: str = DEFAULT_ON_FAILURE) -> BootScript:
    """Check the settings (each name fullmatches its pattern) and return them.

    ``slots``: at least two, ``name -> root device``; ``boot_values``: the boot variable's
    value per slot (default: the slot's name). Raises UsageError naming the setting.
    """
    if len(slots) < 2:
        raise UsageError("slots: the A/B boot script needs at least two slots (a=/dev/... b=/dev/...)")
    for name, device in slots.items():
        if not SLOT_RE.fullmatch(name):
            raise UsageError(f"slots: slot name {name!r} must be letters and digits only")
        if not WORD_RE.fullmatch(device):
            raise UsageError(f"slots: device {device!r} of slot {name!r} is not a device path")
    if not VARIABLE_RE.fullmatch(boot_variable):
        raise UsageError(f"boot variable: {boot_variable!r} is not a U-Boot variable name")
    if boot_variable in state_variables(list(slots)) or boot_variable.startswith("ota_boot_"):
        raise UsageError(f"boot variable: {boot_variable!r} is one of the boot script's own variables")
    values = dict(boot_values or {})
    for name, value in values.items():
        if name not in slots:
            raise UsageError(f"boot values: {name!r} is not a slot (slots: {' '.join(slots)})")
        if not WORD_RE.fullmatch(value):
            raise UsageError(f"boot values: value {value!r} of slot {name!r} has characters U-Boot would interpret")
    if storage not in STORAGE_MODES:
        raise UsageError(f"env storage: {storage!r} is not one of: {', '.join(STORAGE_MODES)}")
    if not ENV_FILE_RE.fullmatch(env_file):
        raise UsageError(f"env file: {env_file!r} is not a file name on the boot partition")
    checked = {what: _one_line(value, what) for what, value in
               (("env device", env_device), ("env address", env_addr), ("bootargs", bootargs),
                ("boot commands", boot_commands), ("on failure", on_failure))}
    for what in ("env device", "env address"):
        if not checked[what]:
            raise UsageError(f"{what}: must not be empty")
    return BootScript(slots=dict(slots), boot_variable=boot_variable,
                      boot_values={name: values.get(name, name) for name in slots}, storage=storage,
                      env_file=env_file, env_device=checked["env device"], env_addr=checked["env address"],
                      bootargs=checked["bootargs"], boot_commands=checked["boot commands"],
                      on_failure=checked["on failure"])


def _per_slot(s: BootScript, line: str) -> List[str]:
    """``line`` (a format string with {slot}, {left}, {device}, {value}) once per slot, guarded by its name."""
    return [f'if test "${{ota_boot_slot}}" = "{slot}"; then '
            + line.format(slot=slot, left=left_variable(slot), device=device, value=s.boot_values[slot])
            + "; fi"
            for slot, device in s.slots.items()]


def _select(s: BootScript) -> List[str]:
    """ota_boot_slot = the first known slot of BOOT_ORDER (the first configured slot if none is known)."""
    known = " || ".join(f'test "${{s}}" = "{slot}"' for slot in s.slots)
    return ["setenv ota_boot_slot",
            "for s in ${BOOT_ORDER}; do",
            f'    if test -z "${{ota_boot_slot}}"; then if {known}; then setenv ota_boot_slot ${{s}}; fi; fi',
            "done",
            f'if test -z "${{ota_boot_slot}}"; then setenv ota_boot_slot {next(iter(s.slots))}; fi']


def render_boot_script(s: BootScript) -> str:
    """The U-Boot script (``boot.cmd``; compile it with ``mkimage -T script``)."""
    names = list(s.slots)
    variables = " ".join(state_variables(names))
    lines = [
        "# meta-ota A/B boot script, generated by 'ota-build boot-script' from OTA_AGENT_SLOTS,",
        "# OTA_AGENT_BOOT_VARIABLE and OTA_AGENT_BOOT_VALUES (docs/boot.md). Do not edit: regenerate.",
        "# slots: " + " ".join(f"{n}={d} ({s.boot_variable}={s.boot_values[n]})" for n, d in s.slots.items()),
        f"# state: {variables} ({s.storage}"
        + (f": {s.env_file} on {s.env_device})" if s.storage == "file" else ")"),
        "setenv ota_boot_save 0",
    ]
    if s.storage == "file":
        lines += [f"if load {s.env_device} {s.env_addr} {s.env_file}; then",
                  f"    env import -t {s.env_addr} ${{filesize}} {variables}",
                  "fi"]
    lines += [f'if test -z "${{BOOT_ORDER}}"; then setenv BOOT_ORDER "{" ".join(names)}"; fi']
    lines += _select(s)
    lines += [
        'if test "${upgrade_available}" = "1"; then',
        "    setenv ota_boot_save 1",
        "    setenv ota_boot_left",
        *("    " + line for line in _per_slot(s, "setenv ota_boot_left ${{{left}}}")),
        '    if test "${ota_boot_left}" -gt 0; then',
        '        setexpr ota_boot_left "${ota_boot_left}" - 1',
        *("        " + line for line in _per_slot(s, "setenv {left} ${{ota_boot_left}}")),
        '        if test -z "${bootcount}"; then setenv bootcount 0; fi',
        '        setexpr bootcount "${bootcount}" + 1',
        '        echo "ota: slot ${ota_boot_slot} is not committed: attempt ${bootcount}, ${ota_boot_left} left"',
        "    else",
        '        echo "ota: slot ${ota_boot_slot} used up its boot attempts: rolling back"',
        "        setenv ota_boot_rest",
        "        for s in ${BOOT_ORDER}; do",
        '            if test "${s}" != "${ota_boot_slot}"; then setenv ota_boot_rest ${ota_boot_rest} ${s}; fi',
        "        done",
        "        setenv BOOT_ORDER ${ota_boot_rest} ${ota_boot_slot}",
        "        setenv upgrade_available 0",
        "        setenv bootcount 0",
        *("        " + line for line in _select(s)),
        "    fi",
        "fi",
        *_per_slot(s, f"setenv {s.boot_variable} {{value}}; setenv ota_boot_root {{device}}"),
        'if test "${ota_boot_save}" = "1"; then',
        "    setenv ota_boot_save",
        "    setenv ota_boot_left",
        "    setenv ota_boot_rest",
    ]
    if s.storage == "file":
        lines += [f"    env export -t {s.env_addr} {variables} {s.boot_variable}",
                  f"    fatwrite {s.env_device} {s.env_addr} {s.env_file} ${{filesize}}"]
    else:
        lines += ["    saveenv"]
    lines += [
        "fi",
        "setenv ota_boot_save",
        f"setenv bootargs ${{bootargs}} {s.bootargs} {SLOT_PARAMETER}=${{ota_boot_slot}}".replace("  ", " "),
        f'echo "ota: booting slot ${{ota_boot_slot}} ({s.boot_variable}=${{{s.boot_variable}}} root=${{ota_boot_root}})"',
    ]
    if s.boot_commands:
        lines.append(s.boot_commands)
    lines.append('echo "ota: slot ${ota_boot_slot} did not boot"')
    if s.on_failure:
        lines.append(s.on_failure)
    return "\n".join(lines) + "\n"
