"""A model of the layer's U-Boot boot script (the A/B boot contract, docs/boot.md), as a pure function.

``boot(env, slots)`` is what one power-on does to the saved environment: it picks the slot to boot and
returns the environment as the script leaves it in storage. The agent tests and ``ota-build demo`` use
it to simulate reboots; tests/test_boot_uboot.py runs the real script in U-Boot (QEMU) on the same
environments and checks that both choose the same slot and save the same variables. The names come
from ``ota_build.core.bootenv``, like the agent's and the script generator's.

Numbers follow U-Boot: ``test -gt`` reads the leading decimal number of a counter, ``setexpr`` the
leading hexadecimal one and writes hexadecimal (junk or unset reads as 0); the agent writes attempt
counts of one digit (``bootLimit`` 1..9), where the two agree.
"""

from __future__ import annotations

import re
from typing import Dict, Mapping, Optional, Sequence, Tuple

from ota_build.core.bootenv import BOOT_ORDER, BOOTCOUNT, SLOT_PARAMETER, UPGRADE_AVAILABLE, boot_order, left_variable

_DECIMAL = re.compile(r"-?[0-9]+")
_HEX = re.compile(r"(0[xX])?([0-9a-fA-F]+)")


def _decimal(value: Optional[str]) -> int:
    """``test -gt``'s reading of a number (U-Boot's ``simple_strtol(.., 10)``: the leading number, else 0)."""
    found = _DECIMAL.match(value or "")
    return int(found.group()) if found else 0


def _hex(value: Optional[str]) -> int:
    """``setexpr``'s reading of a number (hexadecimal, the leading digits; unset or junk is 0)."""
    found = _HEX.match(value or "")
    return int(found.group(2), 16) if found else 0


def boot(env: Mapping[str, str], slots: Sequence[str], variable: str = "ota_slot",
         values: Optional[Mapping[str, str]] = None) -> Tuple[str, Dict[str, str], Dict[str, str]]:
    """One boot: ``(slot booted, environment saved afterwards, variables set for this boot only)``.

    While the slot is uncommitted the script saves the state, including ``variable`` (the slot's value,
    e.g. ``bootpart=0:3``) and ``BOOT_ORDER``; the last item holds ``variable`` and ``bootargs`` ending in
    ``ota.slot=<slot>``. A committed system saves nothing (the returned environment equals ``env``).
    """
    saved = dict(env)
    order = boot_order(saved, slots)
    known = [s for s in order if s in slots]
    slot = known[0] if known else slots[0]
    if saved.get(UPGRADE_AVAILABLE) == "1":
        left_name = left_variable(slot)
        if _decimal(saved.get(left_name)) > 0:
            saved[left_name] = format(_hex(saved.get(left_name)) - 1, "x")
            saved[BOOTCOUNT] = format(_hex(saved.get(BOOTCOUNT)) + 1, "x")
        else:  # the new slot used up its attempts: back to the previous one
            order = [s for s in order if s != slot] + [slot]
            saved.update({BOOT_ORDER: " ".join(order), UPGRADE_AVAILABLE: "0", BOOTCOUNT: "0"})
            known = [s for s in order if s in slots]
            slot = known[0] if known else slots[0]
        if not saved.get(BOOT_ORDER):  # the script sets the configured order first, and saves it now
            saved[BOOT_ORDER] = " ".join(order)
        saved[variable] = (values or {}).get(slot, slot)
    bootargs = (saved.get("bootargs", "") + f" {SLOT_PARAMETER}={slot}").strip()
    return slot, saved, {variable: (values or {}).get(slot, slot), "bootargs": bootargs}
