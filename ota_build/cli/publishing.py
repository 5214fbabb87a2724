"""``ota-build publish`` and ``ota-build suit`` (seed 002: RIOT devices, CoAP, SUIT manifests).

``publish`` takes the original ``client/publish.py``'s flags (``--ota-host --ota-port --manifest --slot0 --slot1
--publish-id --notify-only device_urls...``) and the seed README's form with the publish id as the first
positional. Without ``--manifest`` it writes a signed SUIT manifest for the two slots (``--key``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from typing import Any, List, Optional, Tuple

from ota_build.core.cliutil import add_backend_option
from ota_build.core.errors import UsageError

log = logging.getLogger(__name__)


def _suit_options(p: argparse.ArgumentParser, key_required: bool) -> None:
    p.add_argument("-k", "--key", required=key_required, metavar="PEM",
                   help="private signing key (Ed25519 or ECDSA P-256, from 'ota-build keygen')")
    p.add_argument("--sequence-number", "--seqnr", type=int, metavar="N",
                   help="SUIT sequence number, monotonic (default: the current Unix time, as RIOT's APP_VER)")
    p.add_argument("--vendor", default="riot-os.org", help="vendor name; its UUID5 is the vendor id (default: riot-os.org)")
    p.add_argument("--class", dest="device_class", default="native",
                   help="device class name (RIOT: the board); UUID5 under the vendor id (default: native)")
    p.add_argument("--offsets", default="0x1000,0x2000", metavar="OFF0,OFF1",
                   help="the slots' flash offsets, which tell them apart in the manifest (default: 0x1000,0x2000)")
    add_backend_option(p)


def _offsets(text: str) -> Tuple[int, int]:
    try:
        a, b = (int(v, 0) for v in text.split(","))
    except ValueError:
        raise UsageError(f"--offsets: {text!r} is not two integers OFF0,OFF1") from None
    return a, b


def _write_suit(args: argparse.Namespace, slot0: str, slot1: str, uris: List[str]) -> Tuple[bytes, int]:
    from ota_build.core import suit
    from ota_build.core.signing import make_signer

    seq = args.sequence_number if args.sequence_number is not None else int(time.time())
    signer = make_signer(args.key, backend=args.backend)
    envelope = suit.write_manifest([slot0, slot1], uris, seq, signer, vendor=args.vendor,
                                   device_class=args.device_class, offsets=_offsets(args.offsets))
    return envelope, seq


def cmd_suit(args: argparse.Namespace) -> int:
    """Write a signed SUIT manifest, or verify one (``--verify``)."""
    from ota_build.core import suit
    from ota_build.core.files import atomic_write_bytes
    from ota_build.core.signing import Keyring

    if args.verify:
        if not args.trusted_key:
            raise UsageError("--verify needs --trusted-key")
        try:
            with open(args.verify, "rb") as f:
                envelope = f.read()
        except OSError as exc:
            raise UsageError(f"{args.verify}: {exc.strerror}") from None
        info = suit.verify_manifest(envelope, Keyring.trusted(args.trusted_key, "--trusted-key"), args.current_sequence,
                                    backend=args.backend)
        for i, path in enumerate((args.slot0, args.slot1)):
            if path:
                suit.check_slot(info.slots[i], path)
        print(json.dumps({"sequenceNumber": info.sequence_number, "vendorId": str(info.vendor_id),
                          "classId": str(info.class_id), "keyId": info.key_id.hex(),
                          "slots": [{"offset": s.offset, "size": s.size, "sha256": s.sha256.hex(), "uri": s.uri}
                                    for s in info.slots]}, indent=2))
        return 0
    if not (args.slot0 and args.slot1 and args.key and args.output):
        raise UsageError("writing a manifest needs --slot0, --slot1, --key and -o")
    base = args.uri_base.rstrip("/")
    envelope, seq = _write_suit(args, args.slot0, args.slot1, [f"{base}/slot0", f"{base}/slot1"])
    atomic_write_bytes(args.output, envelope)
    print(f"{args.output}: SUIT manifest ({len(envelope)} bytes), sequence number {seq}, slots {base}/slot0|1")
    return 0


def _split_positionals(args: argparse.Namespace) -> Tuple[Optional[str], List[str]]:
    """(publish id, device urls): the seed README puts the publish id first when --publish-id is absent."""
    urls = list(args.device_urls)
    publish_id = args.publish_id
    if publish_id is None and urls and "/" not in urls[0]:
        publish_id = urls.pop(0)
    return publish_id, urls


def cmd_publish(args: argparse.Namespace) -> int:
    """Publish (unless --notify-only), then notify the devices."""
    from ota_build.partner import publisher

    publish_id, urls = _split_positionals(args)
    if not publish_id:
        raise UsageError("no publish id: give --publish-id or the id as the first positional (publish ID URL...)")
    token = os.environ.get("OTA_API_TOKEN")
    if args.token_file:
        try:
            with open(args.token_file, encoding="utf-8") as f:
                token = f.read().strip()
        except OSError as exc:
            raise UsageError(f"--token-file: {args.token_file}: {exc.strerror}") from None
    ep = publisher.endpoint(args.ota_host, args.ota_port, token)
    results: dict = {}
    if not args.notify_only:
        if not (args.slot0 and args.slot1):
            raise UsageError("publishing needs --slot0 and --slot1 (or --notify-only)")
        manifest = args.manifest
        tmp: Optional[str] = None
        if manifest is None:
            if not args.key:
                raise UsageError("without --manifest, --key signs a SUIT manifest for the two slots")
            coap_host = args.coap_host or ep.host
            base = f"coap://[{coap_host}]:{args.coap_port}/{publish_id}"
            envelope, seq = _write_suit(args, args.slot0, args.slot1, [f"{base}/slot0", f"{base}/slot1"])
            fd, tmp = tempfile.mkstemp(prefix="suit-", suffix=".cbor")
            with os.fdopen(fd, "wb") as f:
                f.write(envelope)
            manifest = tmp
            log.info("signed SUIT manifest, sequence number %d", seq)
            results["sequenceNumber"] = seq
        try:
            results["publish"] = publisher.publish(ep, publish_id, manifest, args.slot0, args.slot1)
        finally:
            if tmp:
                os.unlink(tmp)
        print(f"200: published {publish_id}", file=sys.stderr)
    if urls:
        results["notify"] = publisher.notify(ep, publish_id, urls)
        for dev in results["notify"].get("devices", []):
            print(f"{dev.get('device')}: {dev.get('outcome')} {dev.get('code', '')} {dev.get('detail', '')}".rstrip(),
                  file=sys.stderr)
    elif args.notify_only:
        raise UsageError("--notify-only needs device urls")
    print(json.dumps(results, indent=2))
    failed = [d for d in results.get("notify", {}).get("devices", []) if d.get("outcome") != "acknowledged"]
    return 3 if failed else 0


def cmd_coap_demo(args: argparse.Namespace) -> int:
    """``ota-build coap-demo``."""
    from ota_build.cli.coapdemo import run_coap_demo

    return run_coap_demo(args.workdir)


def add_publishing_commands(sub: Any) -> None:
    """Register ``publish`` and ``suit`` on ``ota-build``'s subparsers."""
    p = sub.add_parser("publish", help="seed 002: publish a manifest and two slots, notify CoAP devices",
                       description="The original client/publish.py: POST /publish (manifest, slot0, slot1, "
                                   "publish_id), then PUT /notify for the device urls (host[:port]/path). Without "
                                   "--manifest a signed SUIT manifest is written for the slots (needs --key). "
                                   "The token: --ota-host token:KEY@host, $OTA_API_TOKEN or --token-file. Exit 3 "
                                   "when a device did not acknowledge.")
    p.add_argument("--ota-host", default="localhost", help="OTA server host, optionally token:KEY@host (default: localhost)")
    p.add_argument("--ota-port", type=int, default=8080, help="OTA server HTTP port (default: 8080)")
    p.add_argument("--manifest", help="manifest file to publish as is (default: write a signed SUIT manifest)")
    p.add_argument("--slot0", help="firmware for slot 0")
    p.add_argument("--slot1", help="firmware for slot 1")
    p.add_argument("--publish-id", help="publish id (default: the first positional when it has no '/')")
    p.add_argument("--notify-only", action="store_true", help="only notify the devices")
    p.add_argument("--token-file", metavar="FILE", help="file holding the API token")
    p.add_argument("--coap-host", help="CoAP host in the manifest's slot URIs (default: the --ota-host host)")
    p.add_argument("--coap-port", type=int, default=5683, help="CoAP port in the slot URIs (default: 5683)")
    _suit_options(p, key_required=False)
    p.add_argument("device_urls", nargs="*", help="[publish_id] device urls host[:port]/path")
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser("coap-demo", help="seed 002: publish + notify to a CoAP device on this machine, commands printed",
                       description="Key, slot images, ota-build serve with its CoAP server, a partner token, "
                                   "ota-agent coap, then ota-build publish (SUIT manifest, publish, notify); the "
                                   "device verifies and installs its inactive slot.")
    p.add_argument("--workdir", default="demo-output/coap", help="where to put the files (default: %(default)s)")
    p.set_defaults(func=cmd_coap_demo)

    p = sub.add_parser("suit", help="seed 002: write or verify a signed SUIT manifest for two slots",
                       description="Write a SUIT manifest (draft-ietf-suit-manifest-09 as RIOT's suit-tool, COSE_Sign1 "
                                   "ES256/EdDSA) for --slot0/--slot1, or --verify one as a device does: trusted key, "
                                   "sequence number above --current-sequence, and the slots' size and digest when given.")
    p.add_argument("--slot0", help="slot 0 image")
    p.add_argument("--slot1", help="slot 1 image")
    p.add_argument("--uri-base", default="coap://[::1]:5683/firmware",
                   help="slot URIs are <uri-base>/slot0 and /slot1 (default: coap://[::1]:5683/firmware)")
    p.add_argument("-o", "--output", help="manifest file to write")
    p.add_argument("--verify", metavar="MANIFEST", help="verify this manifest instead of writing one")
    p.add_argument("--trusted-key", action="append", metavar="PEM", help="public key to trust (repeatable)")
    p.add_argument("--current-sequence", type=int, default=-1, metavar="N",
                   help="the device's current sequence number: the manifest's must be above it (default: -1)")
    _suit_options(p, key_required=False)
    p.set_defaults(func=cmd_suit)
