"""Exceptions with the process exit code each one maps to.

``EXIT_CODES`` is the one table of exit codes: every command's ``--help``
renders its part of it (``ota_build.core.cliutil``), and docs/exit-codes.md
is checked against it by the tests.
"""

from __future__ import annotations

from typing import Dict

#: exit code -> meaning, shared by every command (docs/exit-codes.md).
EXIT_CODES: Dict[int, str] = {
    0: "success",
    1: "general failure (I/O, an external tool failed)",
    2: "usage error or invalid input (config, record, key, option)",
    3: "the OTA server refused the request or could not be reached",
    10: "verify: corrupt (bad magic or header, payload digest mismatch)",
    11: "verify: truncated",
    12: "verify: bad signature",
    13: "verify: unknown key (signed by a key that is not trusted)",
    14: "verify: wrong OTA type",
    15: "verify: downgrade (versionNumber below --min-version-number)",
    130: "interrupted (Ctrl-C)",
}


class OtaError(Exception):
    """Base class of every error ota_build reports to the user as one line."""

    exit_code = 1


class UsageError(OtaError):
    """Bad input: an option, a config field, a record field, a key file."""

    exit_code = 2


class ConfigError(UsageError):
    """The configuration file is missing, not JSON, or fails its schema."""


class RecordError(UsageError):
    """The OTA record is missing or malformed."""


class KeyError_(UsageError):
    """A key file is missing, unreadable or of an unsupported type."""


class SigningError(OtaError):
    """The signer (library, openssl or external command) failed."""


class ServerError(OtaError):
    """The OTA server answered with an error or could not be reached."""

    exit_code = 3


class VerifyError(OtaError):
    """Base class of the ways a hub_update.bin can fail verification."""

    exit_code = 10
    reason = "corrupt"


class CorruptError(VerifyError):
    """Bad magic, malformed header, or a payload whose digest does not match."""

    exit_code = 10
    reason = "corrupt"


class TruncatedError(VerifyError):
    """The file ends before the header or the payload does."""

    exit_code = 11
    reason = "truncated"


class BadSignatureError(VerifyError):
    """The signature does not verify with the key named by the header."""

    exit_code = 12
    reason = "bad-signature"


class UnknownKeyError(VerifyError):
    """The header's key id matches none of the trusted public keys."""

    exit_code = 13
    reason = "unknown-key"


class WrongTypeError(VerifyError):
    """The header's OTA type is not the expected one."""

    exit_code = 14
    reason = "wrong-type"


class DowngradeError(VerifyError):
    """The header's versionNumber is below the allowed minimum."""

    exit_code = 15
    reason = "downgrade"
