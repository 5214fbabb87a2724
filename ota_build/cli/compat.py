"""The seed's two command-line tools, flag for flag.

``partner-ota-hub-uploader [-h] [-c CONF] [-d] [-s] -n N (--createOTARecord | --uploadOTAImage)``
``partner-ota-hub-deploy [-h] [-c CONF] (-l | -d DEVICE -i IMAGEID)``

They keep the original flags (including ``--buildNum``, ``--conf``,
``--device``, ``--imageId`` and, for the deploy tool, ``--image`` which the
original compared against) and fix the original's bugs (docs/decisions.md).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from ota_build.core.cliutil import EXIT_CODES_COMMON_HELP, Parser, run_main, setup_logging
from ota_build.core.record import create_record_file, record_output_path
from ota_build.core.config import DEFAULT_CONFIG_NAME, NETWORK_HELP, load_config
from ota_build.core.errors import UsageError
from ota_build.core.record import find_record


def uploader_parser() -> argparse.ArgumentParser:
    """Parser of ``partner-ota-hub-uploader``."""
    p = Parser(prog="partner-ota-hub-uploader",
                description="Create the OTA record before the build (--createOTARecord), then upload the "
                            "packaged image after it (--uploadOTAImage). Use the same options for both calls.",
                epilog=EXIT_CODES_COMMON_HELP + "\n" + NETWORK_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--conf", default=DEFAULT_CONFIG_NAME, metavar="CONFIG_FILE",
                   help=f"configuration file (default: ./{DEFAULT_CONFIG_NAME})")
    p.add_argument("-d", "--debug", action="store_true", help="debug build: append 'd' to the version string")
    p.add_argument("-s", action="store_true",
                   help="skip the search for BitBake's TMPDIR: keep the record in the current directory")
    p.add_argument("-n", "--buildNum", required=True, metavar="BUILD_NUMBER",
                   help="build number from the build server; appended to the config version")
    p.add_argument("--createOTARecord", action="store_true", help="create full_ota_record.json")
    p.add_argument("--uploadOTAImage", action="store_true",
                   help="upload the image named by the config's imageFiles and register it")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    return p


def uploader_main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``partner-ota-hub-uploader``."""
    args = uploader_parser().parse_args(argv)
    setup_logging(args.verbose)

    def run() -> int:
        if args.createOTARecord:  # as in the original, create wins when both are given
            cfg = load_config(args.conf)
            if not cfg.server:  # offline: id and versionNumber derived locally (docs/record.md)
                path = create_record_file(args.conf, args.buildNum, args.debug, args.s, None, None, None, False)
                from ota_build.core.record import load_record

                number = load_record(path)["versionNumber"]
                print(f"OTA record written to {path} (offline: no server configured; versionNumber {number} "
                      "derived from the version and build number, registered by --uploadOTAImage)")
                return 0
            from ota_build.partner.flows import register_record

            path = record_output_path(None, args.s)
            existing = path if os.path.exists(path) else find_record(os.path.dirname(path) or ".")
            if existing:
                raise UsageError(f"{existing}: an OTA record already exists (remove it first)")
            record = register_record(cfg, args.buildNum, args.debug, path)
            print(f"OTA record written to {path} (id {record['id']}, versionNumber {record['versionNumber']})")
            return 0
        if args.uploadOTAImage:
            from ota_build.partner.flows import load_server_config, locate_record, resolve_image, upload_image

            from ota_build.core.version import parse_build_number, version_string

            cfg = load_server_config(args.conf)
            expected = version_string(cfg.version, parse_build_number(args.buildNum), args.debug)
            record_path = locate_record(record_output_path(None, args.s))
            print(upload_image(cfg, record_path, resolve_image(cfg), expected_version=expected).summary())
            return 0
        raise UsageError("nothing to do: give --createOTARecord or --uploadOTAImage")

    return run_main(run, "partner-ota-hub-uploader")


def deploy_parser() -> argparse.ArgumentParser:
    """Parser of ``partner-ota-hub-deploy``."""
    p = Parser(prog="partner-ota-hub-deploy",
                description="List the OTA images of the config's partner and device type (--list), or push "
                            "one image to a device (-d DEVICE -i IMAGEID).",
                epilog=EXIT_CODES_COMMON_HELP + "\n" + NETWORK_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--conf", default=DEFAULT_CONFIG_NAME, metavar="CONFIG_FILE",
                   help=f"configuration file (default: ./{DEFAULT_CONFIG_NAME})")
    p.add_argument("-l", "--list", action="store_true", help="list the uploaded OTA images; deploys nothing")
    p.add_argument("-d", "--device", action="append", metavar="DEVICE_ID",
                   help="device to deploy to (repeatable)")
    p.add_argument("-g", "--group", metavar="GROUP",
                   help="deploy to every device of this group (set with 'ota-build admin device-token --group')")
    p.add_argument("-i", "--imageId", "--image", dest="image_id", metavar="IMAGE_ID",
                   help="the image id shown by --list")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    return p


def deploy_main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``partner-ota-hub-deploy``."""
    args = deploy_parser().parse_args(argv)
    setup_logging(args.verbose)

    def run() -> int:
        if not args.list and not ((args.device or args.group) and args.image_id):
            raise UsageError("give --list, or -d DEVICE (or -g GROUP) and -i IMAGEID")
        from ota_build.partner.flows import deploy, format_table, load_server_config

        cfg = load_server_config(args.conf)

        if args.list:
            from ota_build.partner.client import OtaClient

            cfg.require("deviceTypeId")
            print(format_table(OtaClient(cfg).list_images(cfg.device_type_id, cfg.ota_type), cfg.partner_id,
                               cfg.device_type_id, cfg.ota_type))
            return 0
        deploy(cfg, args.image_id, args.device or [], args.group)
        print("Request accepted for processing")
        return 0

    return run_main(run, "partner-ota-hub-deploy")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(uploader_main())
