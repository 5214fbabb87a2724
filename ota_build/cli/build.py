"""``ota-build``: the command-line entry point.

Subcommands: record, keygen, package, verify, inspect, agent-config, boot-script, demo, (service.py) serve, admin,
upload, list, deploy, devices, pack, and (packager.py) packager-pack, packager-verify. Exit codes are
listed in ``ota_build.core.errors`` and docs/exit-codes.md; every failure is one line
on stderr, never a traceback (``--debug`` shows one).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
from typing import Optional, Sequence

from ota_build import __version__
from ota_build.core.config import DEFAULT_CONFIG_NAME
from ota_build.core.cliutil import EXIT_CODES_HELP, Parser, add_backend_option, add_trusted_keys_option, run_main, setup_logging
from ota_build.core.errors import UsageError
from ota_build.core.files import atomic_write_bytes
from ota_build.core.package import inspect_file, package_image, verify_file
from ota_build.core.record import create_record_file, load_record, locate_record, record_output_path
from ota_build.core.signing import KEYGEN_ALGORITHMS, Keyring, generate_key, make_signer
from ota_build.core.version import parse_version_number

log = logging.getLogger("ota_build")

# --------------------------------------------------------------------------- subcommands

def cmd_record(args: argparse.Namespace) -> int:
    if args.from_record:
        # A record made earlier (e.g. by partner-ota-hub-uploader --createOTARecord, with the
        # server's id and versionNumber): validate it and copy it to the output unchanged.
        source = locate_record(args.from_record) if os.path.isdir(args.from_record) else args.from_record
        load_record(source)  # validated; the bytes are copied as they are (a versionNumber "007" stays "007")
        path = record_output_path(args.output, args.s)
        if os.path.abspath(path) != os.path.abspath(source):
            with open(source, "rb") as fh:
                atomic_write_bytes(path, fh.read())
        print(path)
        return 0
    if args.buildNum is None:
        raise UsageError("record: -n/--buildNum is required (unless --from is given)")
    path = create_record_file(args.conf, args.buildNum, args.debug_build, args.s, args.output,
                              args.version_number, args.credentials, args.force)
    print(path)
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    private = args.private or f"{args.output}.key.pem"
    public = args.public or f"{args.output}.pub.pem"
    key = generate_key(args.algorithm, private, public, backend=args.backend, rsa_bits=args.rsa_bits,
                       overwrite=args.force)
    print(f"private key: {private}")
    print(f"public key:  {public}")
    print(f"key id:      {key.key_id.hex()}")
    return 0


def cmd_pubkey(args: argparse.Namespace) -> int:
    signer = make_signer(args.key, backend=args.backend)
    pem = signer.public_key.pem
    if args.output:
        atomic_write_bytes(args.output, pem, mode=0o644)
        print(f"{args.output}: key id {signer.key_id.hex()}")
    else:
        sys.stdout.write(pem.decode("ascii"))
    return 0


def cmd_package(args: argparse.Namespace) -> int:
    record = load_record(args.record) if args.record else None
    if args.version_number is not None:
        version_number = parse_version_number(args.version_number, "--version-number")
    elif record is not None:
        version_number = record["versionNumber"]
    else:
        raise UsageError("give --record (the OTA record) or --version-number")
    ota_type = args.type if args.type is not None else (int(record["type"]) if record else 5)
    signer = make_signer(args.key, backend=args.backend, command=args.sign_command, public_key=args.public_key)
    result = package_image(args.image, args.output, signer, ota_type, version_number, record=record,
                           embed_record=args.embed_record, durable=args.fsync)
    h = result.header
    print(f"{result.path}: type {h.ota_type}, versionNumber {h.version_number}, payload {h.payload_length} bytes, "
          f"sha256 {h.payload_sha256.hex()}, {h.sig_alg.label} key {h.key_id.hex()[:16]}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    keyring = Keyring.trusted(args.key)
    minimum = parse_version_number(args.min_version_number, "--min-version-number") if args.min_version_number else None
    result = verify_file(args.file, keyring, expected_type=args.type, min_version_number=minimum,
                         extract_to=args.extract, backend=args.backend)
    h = result.header
    msg = f"{args.file}: OK (type {h.ota_type}, versionNumber {h.version_number}, {h.payload_length} bytes, {h.sig_alg.label})"
    if result.extracted:
        msg += f"; payload written to {result.extracted}"
    print(msg)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    h = inspect_file(args.file)
    if args.json:
        print(json.dumps(h.as_dict(), indent=2, sort_keys=True))
        return 0
    for key, value in h.as_dict().items():
        if key == "record":
            value = json.dumps(value, sort_keys=True) if value is not None else "(none)"
        print(f"{key:17} {value}")
    return 0


def cmd_agent_config(args: argparse.Namespace) -> int:
    from ota_build.device.config import build_agent_config
    from ota_build.core.files import atomic_write_text

    device_type = args.device_type
    if not device_type:
        if not args.conf:
            raise UsageError("agent-config: give --device-type, or -c with a config that has 'deviceTypeId'")
        from ota_build.core.config import load_config
        device_type = load_config(args.conf, env={}).device_type_id
    for flag, value in (("--state-dir", args.state_dir), ("--device-dir", args.device_dir)):
        if not os.path.isabs(value):
            raise UsageError(f"agent-config: {flag} {value!r} must be an absolute path on the device")
    doc = build_agent_config(args.server, device_type, args.public_key, ota_type=args.type, slots=args.slot,
                             boot_variable=args.boot_variable, boot_values=args.boot_value,
                             command=args.command.split() if args.command else None, poll_interval=args.poll_interval,
                             local_port=args.local_port, description=args.description, boot_limit=args.boot_limit,
                             health_check=shlex.split(args.health_check) if args.health_check else None,
                             payload_fstype=args.payload_fstype, boot_env_file=args.boot_env_file,
                             reboot_command=shlex.split(args.reboot_command) if args.reboot_command else None,
                             state_dir=args.state_dir, device_file=os.path.join(args.device_dir, "device-id"),
                             device_token_file=os.path.join(args.device_dir, "device-token"))
    atomic_write_text(args.output, json.dumps(doc, indent=2, sort_keys=True) + "\n")
    print(args.output)
    return 0


def cmd_boot_script(args: argparse.Namespace) -> int:
    from ota_build.core.files import atomic_write_text
    from ota_build.partner.bootscript import boot_script_settings, render_boot_script
    from ota_build.device.config import parse_pairs

    settings = boot_script_settings(parse_pairs(args.slot or [], "slot"), boot_variable=args.boot_variable,
                                    boot_values=parse_pairs(args.boot_value or [], "boot value"),
                                    storage=args.env_storage, env_file=args.env_file, env_device=args.env_device,
                                    env_addr=args.env_addr, bootargs=args.bootargs, boot_commands=args.boot_commands,
                                    on_failure=args.on_failure)
    atomic_write_text(args.output, render_boot_script(settings))
    print(args.output)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ota_build.cli.demo import run_demo

    return run_demo(args.workdir, offline=args.offline)


# --------------------------------------------------------------------------- parser

def add_signing_options(p: argparse.ArgumentParser) -> None:
    """Options that choose the signer."""
    p.add_argument("--key", "-k", metavar="PEM", help="private signing key (PEM: Ed25519, ECDSA P-256 or RSA); "
                   "an encrypted key's password is read from OTA_KEY_PASSWORD")
    add_backend_option(p, "sign")
    p.add_argument("--sign-command", metavar="CMD", help="external signer (HSM, PKCS#11, signing service): a command that "
                   "reads the message on stdin (or from the file {in}) and prints the raw signature (or writes it to "
                   "{out}); needs --public-key")
    p.add_argument("--public-key", metavar="PEM", help="public key of the external signer's key")


def build_parser() -> argparse.ArgumentParser:
    """The ``ota-build`` argument parser."""
    parser = Parser(prog="ota-build", description="Create, sign, verify and ship OTA images (hub_update.bin).",
                     epilog=EXIT_CODES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only errors")
    parser.add_argument("--debug", action="store_true", help="show a traceback on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True

    p = sub.add_parser("record", help="create the OTA record (full_ota_record.json)",
                       description="Create full_ota_record.json from the partner config and a build number. "
                                   "Without -s or -o it goes to BitBake's TMPDIR, as the original tool does. "
                                   "id and versionNumber are derived locally (docs/record.md).")
    p.add_argument("-c", "--conf", default=DEFAULT_CONFIG_NAME, help=f"config file (default: ./{DEFAULT_CONFIG_NAME})")
    p.add_argument("-n", "--buildNum", metavar="N", help="build number (e.g. Jenkins' BUILD_NUMBER); required "
                   "unless --from is given")
    p.add_argument("-d", "--debug-build", action="store_true", help="debug build: append 'd' to the version")
    where = p.add_mutually_exclusive_group()
    where.add_argument("-s", action="store_true", help="write to the current directory instead of BitBake's TMPDIR")
    where.add_argument("-o", "--output", metavar="PATH", help="write the record to PATH (a file, or a directory)")
    p.add_argument("--version-number", metavar="N", help="set versionNumber explicitly (digits) instead of deriving it")
    p.add_argument("--credentials", metavar="FILE", help="JSON file with username/userpw/auth-string (also OTA_CREDENTIALS_FILE)")
    p.add_argument("--force", action="store_true", help="replace an existing record")
    p.add_argument("--from", dest="from_record", metavar="RECORD",
                   help="use this existing record (e.g. from partner-ota-hub-uploader --createOTARecord): "
                        "validate it and write it to the output unchanged; -c, -n, -d and --version-number are ignored")
    p.set_defaults(func=cmd_record)

    p = sub.add_parser("keygen", help="generate a signing key pair",
                       description="Generate a PEM key pair: the private key (mode 0600) signs, the public key is "
                                   "installed on devices to verify.")
    p.add_argument("-a", "--algorithm", choices=KEYGEN_ALGORITHMS, default="ed25519", help="key type (default: ed25519)")
    p.add_argument("-o", "--output", default="ota-signing", metavar="PREFIX",
                   help="write PREFIX.key.pem and PREFIX.pub.pem (default: ota-signing)")
    p.add_argument("--private", metavar="PATH", help="private key path (overrides PREFIX)")
    p.add_argument("--public", metavar="PATH", help="public key path (overrides PREFIX)")
    p.add_argument("--rsa-bits", type=int, default=3072, help="RSA modulus size (default: 3072)")
    add_backend_option(p, "generate")
    p.add_argument("--force", action="store_true", help="overwrite existing key files")
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser("pubkey", help="write the public key of a signing key",
                       description="Write the PEM public key of a private signing key (the key devices verify with).")
    p.add_argument("-k", "--key", required=True, metavar="PEM", help="private signing key (PEM); an encrypted key's "
                   "password is read from OTA_KEY_PASSWORD")
    p.add_argument("-o", "--output", metavar="PATH", help="write the public key to PATH (default: standard output)")
    add_backend_option(p, "read the key")
    p.set_defaults(func=cmd_pubkey)

    p = sub.add_parser("package", help="wrap an image into a signed hub_update.bin",
                       description="Wrap any file (the seed uses the rootfs .tar.gz) into hub_update.bin: a signed "
                                   "header (docs/hub_update.bin.md) followed by the unchanged image, in one streaming pass.")
    p.add_argument("image", help="the image to wrap (e.g. core-image-minimal-<machine>.rootfs.tar.gz)")
    p.add_argument("-o", "--output", default="hub_update.bin", help="output file (default: hub_update.bin)")
    p.add_argument("-r", "--record", metavar="FILE", help="OTA record giving versionNumber and type")
    p.add_argument("--version-number", metavar="N", help="versionNumber (overrides the record's)")
    p.add_argument("-t", "--type", type=int, metavar="T", help="OTA type byte (default: the record's, else 5 = HUB)")
    p.add_argument("--embed-record", action="store_true", help="also embed the record in the header "
                   "(makes the header longer than the 216 bytes Afero's device scripts expect)")
    p.add_argument("--fsync", action="store_true", help="fsync the output (and its directory) before it gets its "
                   "name, so it survives a power cut; off by default: the output is always written atomically "
                   "(temporary file + rename), and a build artefact is rebuilt after a crash")
    add_signing_options(p)
    p.set_defaults(func=cmd_package)

    p = sub.add_parser("verify", help="verify a hub_update.bin as a device does",
                       description="Check magic, lengths, the signature against trusted keys, type, minimum "
                                   "versionNumber and the payload digest. With --extract, write the payload only "
                                   "after every check passed.", epilog=EXIT_CODES_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", help="the hub_update.bin to verify")
    add_trusted_keys_option(p)
    p.add_argument("-t", "--type", type=int, metavar="T", help="expected OTA type (e.g. 5)")
    p.add_argument("--min-version-number", metavar="N", help="refuse versionNumbers below N (downgrade)")
    p.add_argument("-x", "--extract", metavar="OUT", help="write the payload (without header) to OUT, atomically")
    add_backend_option(p, "verify")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("inspect", help="print the header of a hub_update.bin",
                       description="Print the header fields. Does not verify the signature or the payload.")
    p.add_argument("file", help="the hub_update.bin to inspect")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("agent-config", help="write a device agent configuration (ota-agent.json)",
                       description="Write /etc/ota-agent.json for an image (used by meta-ota's ota-agent recipe). "
                                   "Two --slot options select the A/B installer, else --command is the installer.")
    p.add_argument("--server", required=True, help="OTA service base URL (http:// or https://)")
    p.add_argument("--device-type", help="deviceTypeId of the devices running this image (default: the config's)")
    p.add_argument("-c", "--conf", metavar="JSON", help="partner config whose deviceTypeId is the default --device-type")
    p.add_argument("--public-key", action="append", required=True, metavar="PATH",
                   help="verification key path on the device (repeatable)")
    p.add_argument("-t", "--type", type=int, default=5, help="OTA type (default: 5)")
    p.add_argument("--slot", action="append", metavar="NAME=DEVICE", help="A/B slot, e.g. a=/dev/mmcblk0p2 (give two)")
    p.add_argument("--boot-variable", default="ota_slot", help="U-Boot variable that selects the slot (default: ota_slot)")
    p.add_argument("--boot-value", action="append", metavar="NAME=VALUE",
                   help="value of the boot variable for a slot, e.g. a=0:2 (default: the slot name)")
    p.add_argument("--command", help="command installer, {image} is the payload path (e.g. '/sbin/sysupgrade {image}')")
    p.add_argument("--payload-fstype", default="",
                   help="the image's payload type (OTA_PAYLOAD_FSTYPE): with slots, tar.gz selects the archive installer "
                        "(fresh filesystem, unpack), anything else the raw-image A/B installer")
    p.add_argument("--boot-limit", type=int, default=3,
                   help="boot attempts of a new slot before the boot script falls back (1-9, default: 3)")
    p.add_argument("--boot-env-file", default="", metavar="PATH",
                   help="with slots: keep the boot state in this KEY=value file on the device, the boot script's "
                        "file mode (e.g. /uboot/ota-env.txt), instead of U-Boot's environment via fw_setenv "
                        "(default: fw_setenv)")
    p.add_argument("--health-check", default="",
                   help="command run after the first boot of a new slot; exit 0 commits it (default: the agent "
                        "reached the server)")
    p.add_argument("--reboot-command", default="", metavar="COMMAND",
                   help="with slots: command the agent runs to reboot after switching to the new slot and after a "
                        "failed health check, so the boot script commits or falls back without anyone at the device "
                        "(the layer's default: reboot; default here: none, the agent only reports pending-reboot)")
    p.add_argument("--poll-interval", type=int, default=300, help="seconds between checks (default: 300)")
    p.add_argument("--local-port", type=int, default=5000, help="local API port on loopback (default: 5000)")
    p.add_argument("--state-dir", default="/var/lib/ota-agent", metavar="DIR",
                   help="the agent's state on the device (default: /var/lib/ota-agent); with slots, a directory both "
                        "slots mount keeps one state for both (each slot's own works too: docs/agent.md)")
    p.add_argument("--device-dir", default="/etc/ota", metavar="DIR",
                   help="where the device's provisioned device-id and device-token files are (default: /etc/ota); "
                        "with slots it must be a partition both slots mount (e.g. /data/ota): an update writes a "
                        "rootfs without them")
    p.add_argument("--description", default="", help="device description")
    p.add_argument("-o", "--output", default="ota-agent.json", help="output file (default: ota-agent.json)")
    p.set_defaults(func=cmd_agent_config)

    from ota_build.partner import bootscript as bs

    p = sub.add_parser("boot-script", help="write the A/B U-Boot boot script (boot.cmd)",
                       description="Write the U-Boot script that boots the first slot of BOOT_ORDER, counts the "
                                   "attempts of an uncommitted slot and rolls back after them (docs/boot.md). Used by "
                                   "meta-ota's ota-boot recipe; compile the result with 'mkimage -A arm -T script "
                                   "-C none -d boot.cmd boot.scr'. U-Boot ${...} references are written as given.")
    p.add_argument("--slot", action="append", metavar="NAME=DEVICE", required=True,
                   help="A/B slot and its root device in Linux, e.g. a=/dev/mmcblk0p2 (two or more, in order)")
    p.add_argument("--boot-variable", default="ota_slot",
                   help="U-Boot variable the board's boot commands read (default: ota_slot)")
    p.add_argument("--boot-value", action="append", metavar="NAME=VALUE",
                   help="value of the boot variable for a slot, e.g. a=0:2 (default: the slot name)")
    p.add_argument("--env-storage", choices=bs.STORAGE_MODES, default="saveenv",
                   help="where the boot state is kept: saveenv (U-Boot's environment) or file (a text file "
                        "on the boot partition, env import/export -t) (default: saveenv)")
    p.add_argument("--env-file", default=bs.DEFAULT_ENV_FILE,
                   help=f"file mode: the file on the boot partition (default: {bs.DEFAULT_ENV_FILE})")
    p.add_argument("--env-device", default=bs.DEFAULT_ENV_DEVICE,
                   help="file mode: U-Boot interface and dev:part of the boot partition "
                        "(default: the script's own, '${devtype} ${devnum}:${distro_bootpart}')")
    p.add_argument("--env-addr", default=bs.DEFAULT_ENV_ADDR,
                   help="file mode: RAM address for the file (default: ${kernel_addr_r})")
    p.add_argument("--bootargs", default=bs.DEFAULT_BOOTARGS,
                   help="appended to bootargs before ota.slot=<slot>; ${ota_boot_root} is the slot's device "
                        f"(default: '{bs.DEFAULT_BOOTARGS}')")
    p.add_argument("--boot-commands", default="",
                   help="one line of U-Boot commands that load and boot the kernel of the slot "
                        "(${ota_boot_slot}, ${ota_boot_root} and the boot variable are set) (default: none)")
    p.add_argument("--on-failure", default=bs.DEFAULT_ON_FAILURE,
                   help="run when the boot commands return, i.e. the slot did not boot "
                        f"(default: {bs.DEFAULT_ON_FAILURE}: the next boot counts another attempt)")
    p.add_argument("-o", "--output", default="boot.cmd", help="output file (default: boot.cmd)")
    p.set_defaults(func=cmd_boot_script)

    p = sub.add_parser("demo", help="run the whole journey on a generated sample image",
                       description="Sample rootfs, development key, record, hub_update.bin, verify; then an OTA "
                                   "server on 127.0.0.1 (embedded SQLite), upload, list, deploy to a simulated "
                                   "device (agent with file-backed A/B slots) that installs and reports; then seed 000's "
                                   "file packager (upload, pack, download with curl, packager-verify). Prints "
                                   "each step, the commands, and where the files are.")
    p.add_argument("--workdir", default="demo-output", help="where to put the files (default: ./demo-output)")
    p.add_argument("--offline", action="store_true", help="only the build side: no server, no device")
    p.set_defaults(func=cmd_demo)

    from ota_build.cli.packager import add_packager_commands
    from ota_build.cli.service import add_server_commands

    add_server_commands(sub)
    add_packager_commands(sub)
    from ota_build.cli.publishing import add_publishing_commands

    add_publishing_commands(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``ota-build``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose, args.quiet)
    return run_main(lambda: args.func(args), "ota-build", args.debug)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
