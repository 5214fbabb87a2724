"""What every command line of ota_build shares: the argument parser whose
usage errors exit 2, logging to stderr, the exit-code epilog rendered from
``errors.EXIT_CODES``, the ``--backend`` option, and ``run_main`` that turns an
``OtaError`` into one stderr line and its exit code.

It lives in ``core`` (standard library only) so that the build host's
commands (``ota_build.cli``) and the device agent (``ota_build.device``) use
the same conventions without the device importing build-host code.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Iterable, Optional

from ota_build.core.errors import EXIT_CODES, OtaError, VerifyError

#: the codes every networked command can return
COMMON_EXIT_CODES = (0, 1, 2, 3)
#: the signing/verification back-ends a user can choose
BACKEND_CHOICES = ("auto", "cryptography", "openssl")


def exit_codes_help(codes: Optional[Iterable[int]] = None) -> str:
    """The ``exit codes:`` epilog for ``codes`` (default: all of them)."""
    lines = ["exit codes:"]
    for code in (codes if codes is not None else EXIT_CODES):
        lines.append(f"  {code:<3} {EXIT_CODES[code]}")
    return "\n".join(lines) + "\n"


EXIT_CODES_COMMON_HELP = exit_codes_help(COMMON_EXIT_CODES)
EXIT_CODES_HELP = exit_codes_help()


class Parser(argparse.ArgumentParser):
    """ArgumentParser whose usage errors exit 2 with one line plus usage."""

    def error(self, message: str) -> "None":  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def add_backend_option(p: argparse.ArgumentParser, verb: str = "sign") -> None:
    """``--backend``: the cryptography library or the openssl command (``verb`` says for what)."""
    p.add_argument("--backend", choices=BACKEND_CHOICES, default="auto",
                   help=f"{verb} with the cryptography library or the openssl command (default: auto, "
                        "cryptography when installed)")


def add_trusted_keys_option(p: argparse.ArgumentParser) -> None:
    """``-k/--key``: the trusted public keys a verifying command checks against (``Keyring.from_files``)."""
    p.add_argument("-k", "--key", action="append", required=True, metavar="PEM",
                   help="trusted public key (repeatable; a directory adds every *.pem in it)")


def setup_logging(verbose: int = 0, quiet: bool = False) -> None:
    """Log to stderr: warnings by default, info with -v, debug with -vv."""
    level = logging.ERROR if quiet else (logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)
    logging.basicConfig(level=level, format="%(levelname)s: %(message)s", stream=sys.stderr, force=True)


def run_main(func: Callable[[], int], prog: str, debug: bool = False) -> int:
    """Run ``func``; turn OtaError into one stderr line and its exit code."""
    try:
        return func()
    except OtaError as exc:
        if debug:
            raise
        kind = f" ({exc.reason})" if isinstance(exc, VerifyError) else ""
        print(f"{prog}: error{kind}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
