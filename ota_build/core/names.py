"""Names that become path components: package, branch, version and file names
of the package API (seed 001), checked the same way by the partner's ``pack``
and by the server before either touches a file system."""

from __future__ import annotations

import re

#: 1-100 characters of A-Z a-z 0-9 . _ + -, not starting with a dot (matched against the whole string)
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")


def check_name(value: str, field: str) -> str:
    """Return ``value`` if it is a safe path component, else raise ValueError naming ``field``."""
    if not isinstance(value, str) or not NAME_RE.fullmatch(value) or ".." in value:
        raise ValueError(f"field '{field}': must be 1-100 characters of A-Z a-z 0-9 . _ + - "
                         f"(not starting with a dot, no '..')")
    return value
