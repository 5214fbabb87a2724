"""Version strings and the offline ``versionNumber`` scheme.

``version`` (the friendly name) follows the original uploader:
``<config version>.<build number>`` plus ``d`` for a debug build, so "1.0"
with ``-n 2 -d`` gives "1.0.2d".

``versionNumber`` is what a device compares. The OTA service assigns it when a
record is created on the server; offline (or in the BitBake build) it is
derived from the config version and the build number so that every newer build
of the same product gets a larger number::

    versionNumber = ((major * 1000 + minor) * 1000 + patch) * 10**7 + build

with ``major``, ``minor`` and ``patch`` the numeric components of the config
version (missing ones are 0, each < 1000) and ``build`` < 10**7. "1.0" build 2
gives 10000000000002. A debug build gets the same number as the production
build of the same build number. Any other scheme can be forced with an
explicit versionNumber (``--version-number`` / ``OTA_VERSION_NUMBER``).
See docs/record.md.
"""

from __future__ import annotations

import re
from typing import Optional

from ota_build.core.errors import UsageError

MAX_VERSION_NUMBER = 2**64 - 1
BUILD_LIMIT = 10**7
COMPONENT_LIMIT = 1000
_VERSION_RE = re.compile(r"([0-9]+)(?:\.([0-9]+))?(?:\.([0-9]+))?")  # matched against the whole string


def parse_build_number(value: object) -> int:
    """Validate a build number (non-negative integer, as Jenkins' BUILD_NUMBER)."""
    text = str(value).strip()
    if not re.fullmatch(r"[0-9]+", text):  # not isdigit(): that takes "²", which int() refuses
        raise UsageError(f"build number: {value!r} is not a non-negative integer")
    number = int(text)
    if number >= BUILD_LIMIT:
        raise UsageError(f"build number: {number} is too large (must be below {BUILD_LIMIT})")
    return number


def version_string(config_version: str, build_number: int, debug: bool = False) -> str:
    """Return the record's ``version``: "<config version>.<build>[d]"."""
    return f"{config_version}.{build_number}{'d' if debug else ''}"


def derive_version_number(config_version: str, build_number: int) -> int:
    """Return the offline versionNumber of ``config_version`` build ``build_number``."""
    match = _VERSION_RE.fullmatch(config_version)
    if not match:
        raise UsageError(
            f"field 'version': {config_version!r} is not numeric (major[.minor[.patch]]); "
            "cannot derive a versionNumber, set one explicitly with --version-number"
        )
    parts = [int(p) if p is not None else 0 for p in match.groups()]
    for part in parts:
        if part >= COMPONENT_LIMIT:
            raise UsageError(
                f"field 'version': component {part} of {config_version!r} is 1000 or more; "
                "set the versionNumber explicitly with --version-number"
            )
    if build_number >= BUILD_LIMIT:
        raise UsageError(f"build number: {build_number} is too large (must be below {BUILD_LIMIT})")
    major, minor, patch = parts
    return ((major * COMPONENT_LIMIT + minor) * COMPONENT_LIMIT + patch) * BUILD_LIMIT + build_number


def parse_version_number(value: object, what: str = "versionNumber") -> int:
    """Validate an explicit versionNumber (a string of digits fitting in 64 bits)."""
    text = str(value).strip()
    if not re.fullmatch(r"[0-9]+", text):  # not isdigit(): that takes "²", which int() refuses
        raise UsageError(f"{what}: {value!r} is not a string of digits")
    number = int(text)
    if number > MAX_VERSION_NUMBER:
        raise UsageError(f"{what}: {number} does not fit in 64 bits")
    return number


def resolve_version_number(config_version: str, build_number: int, explicit: Optional[object] = None) -> int:
    """The explicit versionNumber when given, else the derived one."""
    if explicit not in (None, ""):
        return parse_version_number(explicit)
    return derive_version_number(config_version, build_number)
