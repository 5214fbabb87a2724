"""``ota-build packager-pack`` and ``packager-verify``: seed 000's packer on the command line.

``packager-pack`` takes ``otapackager-cli``'s options (``-n -v -p -s -i -b -c -r -t -d``) plus
``-k`` (the signing key) and writes the same signed, reproducible ``model.zip`` the
server's ``GET /packager/pack`` builds (``core/packager.py``). ``packager-verify`` checks
one as a device does, and with ``-x`` writes ``model.pkl``/``model.bat`` after every check passed.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from ota_build.core import packager
from ota_build.core.cliutil import EXIT_CODES_HELP, add_backend_option, add_trusted_keys_option
from ota_build.core.errors import UsageError
from ota_build.core.signing import Keyring, make_signer
from ota_build.core.files import ensure_dir


def cmd_packager_pack(args: argparse.Namespace) -> int:
    """Pack ``INPUT_DIR/model.pkl`` + ``model.bat`` into a signed ``model.zip``."""
    inputs = {name: os.path.join(args.input_dir, name) for name in packager.INPUT_NAMES}
    for path in inputs.values():
        if not os.path.isfile(path):
            raise UsageError(f"-i: {path}: not found (the input directory holds {' and '.join(packager.INPUT_NAMES)})")
    options = packager.PackOptions(name=args.name, version=args.version, platform=args.platform, os=args.os,
                                   boot_file=args.boot_file, check_file=args.check_file or "", reboot=args.reboot,
                                   installer_tool=args.installer_tool or "").check()
    output = args.output or os.path.join(args.output_dir, packager.PACKAGE_NAME)
    signer = make_signer(args.key, backend=args.backend)
    result = packager.pack_file(inputs, output, signer, options)
    print(f"{output}: {result.size} bytes, sha256 {result.sha256}, signed by {signer.key_id.hex()[:16]}… "
          f"({signer.algorithm.label})")
    return 0


def cmd_packager_verify(args: argparse.Namespace) -> int:
    """Verify a package against trusted public keys (exit codes as ``verify``)."""
    keyring = Keyring.trusted(args.key)
    if args.extract:
        ensure_dir(args.extract, "--extract")
        manifest = packager.extract(args.file, args.extract, keyring)
    else:
        manifest = packager.verify_package(args.file, keyring, backend=args.backend)
    files = ", ".join(f"{f['name']} ({f['size']} bytes)" for f in manifest["files"])
    msg = f"{args.file}: OK ({manifest['name']} {manifest['version']}, {manifest['signature']['algorithm']}; {files})"
    if args.extract:
        msg += f"; {' and '.join(packager.INPUT_NAMES)} written to {args.extract}"
    print(msg)
    return 0


def add_packager_commands(sub: Any) -> None:
    """Register ``packager-pack`` and ``packager-verify`` on ``ota-build``'s subparsers."""
    p = sub.add_parser("packager-pack", help="pack model.pkl + model.bat into a signed model.zip (seed 000)",
                       description="Our otapackager-cli: a reproducible zip (fixed times, sorted entries) of "
                                   "model.pkl, model.bat, Deploy.xml, PackageInfo.xml and a signed manifest "
                                   "(each file's size and SHA-256). Same options as otapackager-cli, plus -k.",
                       epilog=EXIT_CODES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-i", "--input-dir", required=True, help="directory holding model.pkl and model.bat")
    p.add_argument("-k", "--key", required=True, metavar="PEM", help="private signing key (PEM)")
    p.add_argument("-n", "--name", default="model", help="package name, a-zA-Z0-9_ (default: model)")
    p.add_argument("-v", "--version", default="1.0.0.0", help="version x.x.x.x (default: 1.0.0.0)")
    p.add_argument("-p", "--platform", default="", help="platform (PackageInfo.xml Arch)")
    p.add_argument("-s", "--os", default="", help="operating system (PackageInfo.xml OS)")
    p.add_argument("-b", "--boot-file", default=packager.BATCH_NAME, help="boot file (default: model.bat)")
    p.add_argument("-c", "--check-file", help="result check script (Deploy.xml ResultCheckScript)")
    p.add_argument("-r", "--reboot", action="store_true", help="reboot after deploying (Deploy.xml RebootFlag 1)")
    p.add_argument("-t", "--installer-tool", help="installer tool (PackageInfo.xml InstallerTool)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("-d", "--output-dir", default=".", help="write OUTPUT_DIR/model.zip (default: .)")
    out.add_argument("-o", "--output", help="write this file instead")
    add_backend_option(p, "sign")
    p.set_defaults(func=cmd_packager_pack)

    p = sub.add_parser("packager-verify", help="verify a packager model.zip as a device does (seed 000)",
                       description="Check the manifest's signature against trusted keys (the server's key: "
                                   "GET /packager/key), that the zip holds exactly the files it lists, and each "
                                   "file's size and SHA-256. With -x, write model.pkl and model.bat after every "
                                   "check passed.", epilog=EXIT_CODES_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", help="the model.zip to verify")
    add_trusted_keys_option(p)
    p.add_argument("-x", "--extract", metavar="DIR", help="write model.pkl and model.bat into DIR, atomically")
    add_backend_option(p, "verify")
    p.set_defaults(func=cmd_packager_verify)
