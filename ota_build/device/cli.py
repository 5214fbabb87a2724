"""``ota-agent``: the device agent's command line.

``ota-agent [-c CONFIG] once``    one check: ask, download, verify, install, report
``ota-agent [-c CONFIG] run``     poll every pollInterval and serve the local API
``ota-agent [-c CONFIG] info``    print what is installed

Exit codes of ``once``: 0 installed, pending-reboot or no update, 1 install failed, a health check
failed (not committed) or the device rolled back (``rolled-back``), 3 server
unreachable/refused, a malformed offer or a URL off the allowed origins, 10-15
the image was refused (as ``ota-build verify``; 10 also for an offer/header
versionNumber mismatch and an empty payload).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from typing import Optional, Sequence

from ota_build.core.cliutil import EXIT_CODES_HELP, Parser, run_main, setup_logging
from ota_build.device.agent import Agent
from ota_build.device.config import load_agent_config
from ota_build.device.localapi import LocalApi

DEFAULT_CONFIG = "/etc/ota-agent.json"
log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """The ``ota-agent`` parser."""
    p = Parser(prog="ota-agent", description="Device OTA agent: checks the OTA service for an update, downloads it "
                "(resuming), verifies the signed header, installs it (command or A/B slots) and reports.",
                epilog=EXIT_CODES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=f"agent configuration (default: {DEFAULT_CONFIG})")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    sub.add_parser("once", help="check once and install an update if there is one")
    sub.add_parser("run", help="poll forever and serve the local API on loopback")
    sub.add_parser("info", help="print the installed version and the agent's last state (JSON)")
    c = sub.add_parser("coap", help="seed 002: a CoAP device: notified by PUT, fetches and verifies a SUIT manifest, "
                                    "downloads its inactive slot (needs aiocoap)")
    c.add_argument("--state-dir", default="/var/lib/ota-agent/coap", help="state.json and slot0/1.bin (default: %(default)s)")
    c.add_argument("--trusted-key", action="append", metavar="PEM", help="public key that signs manifests (repeatable)")
    c.add_argument("--host", default="::", help="address to listen on (default: ::)")
    c.add_argument("--port", type=int, default=5683, help="UDP port (default: 5683)")
    c.add_argument("--resource", default="notify", help="path of the notify resource (default: notify)")
    c.add_argument("--vendor", help="expected vendor name (with --class: the manifest's ids must match)")
    c.add_argument("--class", dest="device_class", help="expected device class name")
    c.add_argument("--timeout", type=float, default=60.0, help="seconds per CoAP download (default: 60)")
    c.add_argument("--once", action="store_true", help="exit after the first notification (its exit code)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``ota-agent``."""
    args = build_parser().parse_args(argv)
    setup_logging(max(args.verbose, 1))

    def run() -> int:
        if args.command == "coap":
            from ota_build.device.coapdev import run_coap_device

            return run_coap_device(args.state_dir, args.trusted_key or [], args.host, args.port, args.resource, args.once,
                                   args.vendor, args.device_class, args.timeout)
        agent = Agent(load_agent_config(args.config))
        if args.command == "info":
            print(json.dumps(agent.info(), indent=2, sort_keys=True))
            return 0
        if args.command == "once":
            outcome = agent.check_once()
            print(f"{outcome.state}: versionNumber {outcome.version_number} {outcome.message}".rstrip())
            return outcome.exit_code
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        api = None
        if agent.config.local_token:
            api = LocalApi(agent, agent.config.local_host, agent.config.local_port).start()
        else:
            log.warning("local API disabled: no token (set 'token' or OTA_AGENT_LOCAL_TOKEN)")
        try:
            agent.run(stop)
        finally:
            if api is not None:
                api.shutdown()
        return 0

    return run_main(run, "ota-agent")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
