"""A model of the layer's U-Boot boot script (the A/B boot contract, docs/agent.md), as a pure function.

``boot(env, slots)`` is what one power-on does to the saved environment: it picks the slot to boot and
returns the environment as the script leaves it in storage. The agent tests and ``ota-build demo`` use
it to simulate reboots; the boot script itself is checked against the same rules in real U-Boot (QEMU).

Numbers follow U-Boot: ``setexpr`` reads and writes hexadecimal (so the model does too); the agent
writes attempt counts of one digit (``bootLimit`` 1..9), where decimal and hexadecimal agree.
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence, Tuple


def _hex(value: Optional[str]) -> int:
    """U-Boot's reading of a number in ``setexpr`` (hexadecimal; unset or junk is 0)."""
    try:
        return int((value or "0").strip(), 16)
    except ValueError:
        return 0


def boot(env: Mapping[str, str], slots: Sequence[str], variable: str = "ota_slot",
         values: Optional[Mapping[str, str]] = None) -> Tuple[str, Dict[str, str], Dict[str, str]]:
    """One boot: ``(slot booted, environment saved afterwards, variables set for this boot only)``.

    The last item holds ``variable`` (the slot's value, e.g. ``bootpart=0:3``) and ``bootargs`` ending in
    ``ota.slot=<slot>``; the script does not save them. A committed system saves nothing (the returned
    environment equals ``env``).
    """
    saved = dict(env)
    order = saved.get("BOOT_ORDER", "").split() or list(slots)
    slot = order[0]
    if saved.get("upgrade_available") == "1":
        left_name = f"BOOT_{slot}_LEFT"
        left = _hex(saved.get(left_name))
        if left > 0:
            saved[left_name] = format(left - 1, "x")
            saved["bootcount"] = format(_hex(saved.get("bootcount")) + 1, "x")
        else:  # the new slot used up its attempts: back to the previous one
            order = order[1:] + order[:1]
            saved.update(BOOT_ORDER=" ".join(order), upgrade_available="0", bootcount="0")
            slot = order[0]
    bootargs = (saved.get("bootargs", "") + f" ota.slot={slot}").strip()
    return slot, saved, {variable: (values or {}).get(slot, slot), "bootargs": bootargs}
