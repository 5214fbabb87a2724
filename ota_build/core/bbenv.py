"""Finding the BitBake build's ``TMPDIR``, as the original uploader does.

The original runs ``bitbake -e | grep ^TMPDIR`` and crashes when that fails.
We ask ``bitbake-getvar`` first (fast, Yocto 4.0+), fall back to
``bitbake -e``, parse the assignment properly, and turn every failure into one
line that says what to do instead (``-s`` or ``-o``).
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from typing import Optional

from ota_build.core.errors import UsageError

log = logging.getLogger(__name__)

_TMPDIR_RE = re.compile(r'^TMPDIR="(.*)"\s*$', re.MULTILINE)
HINT = "run it from an initialised BitBake build environment (source oe-init-build-env), or use -s (current directory) or -o PATH"


def parse_bitbake_env(output: str) -> Optional[str]:
    """Return TMPDIR from ``bitbake -e`` output, or None."""
    match = _TMPDIR_RE.search(output)
    return match.group(1) if match else None


def find_tmpdir(timeout: float = 600.0) -> str:
    """Ask BitBake for TMPDIR; raise UsageError with a hint when it cannot."""
    getvar = shutil.which("bitbake-getvar")
    if getvar:
        try:
            out = subprocess.run([getvar, "--value", "TMPDIR"], capture_output=True, text=True,
                                 timeout=timeout, check=False)
            value = out.stdout.strip().splitlines()[-1].strip() if out.stdout.strip() else ""
            if out.returncode == 0 and value.startswith("/"):
                return value
            log.debug("bitbake-getvar failed (%s): %s", out.returncode, out.stderr.strip())
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.debug("bitbake-getvar failed: %s", exc)
    bitbake = shutil.which("bitbake")
    if not bitbake:
        raise UsageError(f"cannot find BitBake's TMPDIR: 'bitbake' is not on PATH; {HINT}")
    try:
        out = subprocess.run([bitbake, "-e"], capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise UsageError(f"cannot find BitBake's TMPDIR: 'bitbake -e' took over {timeout:.0f}s; {HINT}") from None
    except OSError as exc:
        raise UsageError(f"cannot find BitBake's TMPDIR: cannot run bitbake: {exc.strerror}; {HINT}") from None
    found = parse_bitbake_env(out.stdout) if out.returncode == 0 else None
    if not found:
        last = (out.stderr.strip().splitlines() or ["no TMPDIR in its output"])[-1]
        raise UsageError(f"cannot find BitBake's TMPDIR: 'bitbake -e' failed ({last}); {HINT}")
    return found


def layer_settings_problem(config: str, build_number: str, version_number: str, ota_type: str) -> Optional[str]:
    """meta-ota's parse-time check of its settings: None when usable, else one line that
    starts with the BitBake variable to look at (and names the config field).

    The layer runs it in a separate Python (``python3 -I -B``), never inside BitBake's
    parser: see ``ota_settings_problem`` in meta-ota/classes/ota-common.bbclass.
    """
    from ota_build.core.config import load_config
    from ota_build.core.errors import OtaError
    from ota_build.core.version import derive_version_number, parse_build_number, parse_version_number

    blame = "OTA_CONFIG"
    try:
        cfg = load_config(config, env={})
        blame = "OTA_BUILD_NUMBER"
        build = parse_build_number(build_number)
        blame = "OTA_VERSION_NUMBER"
        if version_number:
            parse_version_number(version_number)
        else:
            derive_version_number(cfg.version, build)
    except OtaError as exc:
        return f"{blame}: " + str(exc).replace("--version-number", "OTA_VERSION_NUMBER")
    if int(ota_type) != cfg.ota_type:
        return f"OTA_TYPE = '{ota_type}' but field 'type' of OTA_CONFIG ({config}) is {cfg.ota_type}: make them the same"
    return None
