"""The A/B boot contract's names and the env-file format, in one place (docs/boot.md, docs/agent.md).

Shared by the device agent (``ota_build.device.installers.BootEnv``: switch and commit), the boot
script's Python model (``ota_build.device.bootsim``) and the U-Boot script generator
(``ota_build.partner.bootscript``, ``ota-build boot-script``). Standard library only: it runs on the
device and in BitBake's native Python.

The env file (``file`` mode, ``OTA_BOOT_ENV_FILE`` on the FAT boot partition) is what U-Boot's
``env export -t`` writes and ``env import -t`` reads: one ``KEY=value`` per line, ``\\n``-terminated,
no quoting (the value is everything after the first ``=``), ``#`` lines are comments, and U-Boot
ends what it writes with one NUL byte (``env import -t`` stops at the first NUL, so nothing after it
counts).
"""

from __future__ import annotations

import re
from typing import Dict, List, Mapping, Optional, Sequence

#: the boot-state variables (U-Boot environment or the env file)
BOOT_ORDER = "BOOT_ORDER"
UPGRADE_AVAILABLE = "upgrade_available"
BOOTCOUNT = "bootcount"
BOOTLIMIT = "bootlimit"
#: attempts a new slot gets when nothing else is configured (agent ``bootLimit``, layer ``OTA_AGENT_BOOT_LIMIT``)
DEFAULT_BOOTLIMIT = 3
#: U-Boot's ``setexpr`` computes in hexadecimal and ``test -gt`` reads decimal: the counters stay single
#: digits, where the two agree
MAX_BOOTLIMIT = 9
#: the kernel command-line parameter that names the running slot (``ota.slot=<slot>``)
SLOT_PARAMETER = "ota.slot"
#: a slot name (fullmatch)
SLOT_RE = re.compile(r"[A-Za-z0-9]+")
#: a variable name of the env file (fullmatch)
VARIABLE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def left_variable(slot: str) -> str:
    """The name of the attempts-left counter of ``slot`` (``BOOT_<slot>_LEFT``)."""
    return f"BOOT_{slot}_LEFT"


def state_variables(slots: Sequence[str]) -> List[str]:
    """Every boot-state variable for ``slots``, in the order the boot script exports them."""
    return [BOOT_ORDER] + [left_variable(s) for s in slots] + [UPGRADE_AVAILABLE, BOOTCOUNT, BOOTLIMIT]


def boot_order(env: Mapping[str, str], configured: Sequence[str]) -> List[str]:
    """``BOOT_ORDER`` as a list of names (the configured slot order when unset or empty)."""
    return env.get(BOOT_ORDER, "").split() or list(configured)


def switch_values(slot: str, env: Mapping[str, str], configured: Sequence[str], boot_limit: int) -> Dict[str, str]:
    """The contract's switch to ``slot``: first in BOOT_ORDER with ``boot_limit`` attempts, uncommitted."""
    order = [slot] + [s for s in boot_order(env, configured) if s != slot]
    order += [s for s in configured if s not in order]
    return {BOOT_ORDER: " ".join(order), left_variable(slot): str(boot_limit), UPGRADE_AVAILABLE: "1",
            BOOTCOUNT: "0"}


def commit_values(slot: str, boot_limit: int) -> Dict[str, str]:
    """The contract's commit of the running ``slot``."""
    return {UPGRADE_AVAILABLE: "0", BOOTCOUNT: "0", left_variable(slot): str(boot_limit)}


def cmdline_slot(cmdline: str) -> Optional[str]:
    """The slot named by the last ``ota.slot=<name>`` on a kernel command line, else None."""
    found = [w.partition("=")[2] for w in cmdline.split() if w.startswith(SLOT_PARAMETER + "=")]
    return found[-1] if found and SLOT_RE.fullmatch(found[-1]) else None


def env_text_lines(data: bytes) -> List[str]:
    """The lines of an env file up to the first NUL (what ``env import -t`` reads)."""
    return data.split(b"\0", 1)[0].decode("utf-8", "replace").splitlines()


def parse_env_text(data: bytes) -> Dict[str, str]:
    """The variables of an env file or of ``fw_printenv``'s output: ``KEY=value`` lines up to the first
    NUL (``env export -t`` ends with one); ``#`` lines and lines without ``=`` are skipped."""
    out: Dict[str, str] = {}
    for line in env_text_lines(data):
        if line.strip() and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            out[key] = value
    return out


def update_env_text(data: bytes, values: Mapping[str, str]) -> bytes:
    """``data`` (an env file, possibly as U-Boot wrote it) with ``values`` set: existing lines kept in
    their order, a variable's line replaced in place, new ones appended; the NUL and anything after it
    dropped, so that ``env import -t`` reads every line. ValueError for a name or value the format
    cannot hold (not a variable name; a newline or NUL in the value)."""
    for key, value in values.items():
        if not VARIABLE_RE.fullmatch(key):
            raise ValueError(f"{key!r} is not a variable name")
        if any(c in value for c in "\n\r\0"):
            raise ValueError(f"the value of {key} must be one line without NUL")
    todo = dict(values)
    out: List[str] = []
    for line in env_text_lines(data):
        key = line.partition("=")[0]
        if "=" in line and not line.startswith("#") and key in values:
            if key in todo:
                out.append(f"{key}={todo.pop(key)}")
            # else a later duplicate line: dropped (U-Boot would let it win over the new value)
        else:
            out.append(line)
    out += [f"{k}={v}" for k, v in todo.items()]
    return "".join(line + "\n" for line in out).encode("utf-8")
