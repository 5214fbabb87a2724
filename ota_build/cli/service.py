"""``ota-build`` subcommands that talk to (or are) the OTA service:
``serve``, ``admin``, ``upload``, ``list``, ``deploy``, ``devices``, ``pack``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from ota_build.core.config import DEFAULT_CONFIG_NAME, NETWORK_HELP, OtaConfig, check_server_url
from ota_build.core.errors import OtaError, UsageError

DEFAULT_NOTIFY_ALLOW = ("127.0.0.0/8", "::1/128")  # as server.publications (which needs the server extra)


def _print_json(doc: Any) -> None:
    print(json.dumps(doc, indent=2, sort_keys=False))


def _server_cfg(args: argparse.Namespace) -> OtaConfig:
    """The config of ``--conf``/``--credentials`` for a command that talks to the server (ServerError if none)."""
    from ota_build.partner.flows import load_server_config  # requests only when a command talks to a server

    return load_server_config(args.conf, getattr(args, "credentials", None))


def _open_db(args: argparse.Namespace, create: bool = True):  # noqa: ANN202
    """The server's database, migrated; every way it can fail is one line naming the setting (exit 2).

    ``create=False``: an embedded SQLite database must already exist (so a
    mistyped ``--data-dir`` is not silently a new, empty service)."""
    try:
        from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

        from ota_build.server.db import default_database_url, open_database
    except ImportError as exc:  # pragma: no cover - the server extra is missing
        raise UsageError(f"the server needs the 'server' extra: pip install 'ota_build[server]' ({exc})") from None
    where = f"--data-dir {args.data_dir}"
    if args.database_url:
        try:
            from sqlalchemy.engine import make_url

            where = "--database-url " + make_url(args.database_url).render_as_string(hide_password=True)
        except ArgumentError:
            where = "--database-url"
    if os.path.exists(args.data_dir) and not os.path.isdir(args.data_dir):
        raise UsageError(f"--data-dir: {args.data_dir} is not a directory")
    if not create and not args.database_url:
        sqlite_file = default_database_url(args.data_dir)[len("sqlite:///"):]
        if not os.path.exists(sqlite_file):
            raise UsageError(f"--data-dir: no OTA database in {args.data_dir} (create it with 'ota-build serve' "
                             "or 'ota-build admin partner', or give the right --data-dir / --database-url)")
    try:
        return open_database(args.data_dir, args.database_url)
    except (ArgumentError, NoSuchModuleError) as exc:
        raise UsageError(f"--database-url: not a usable SQLAlchemy URL ({str(exc).splitlines()[0]})") from None
    except ImportError as exc:  # a driver that is not installed, e.g. psycopg for postgresql+psycopg://
        raise UsageError(f"--database-url: the database driver is not installed ({exc}); for PostgreSQL: "
                         "pip install 'ota_build[postgres]'") from None
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        raise UsageError(f"{where}: cannot open the database: {reason}") from None
    except OSError as exc:
        raise UsageError(f"--data-dir: {args.data_dir}: {exc.strerror or exc}") from None


# --------------------------------------------------------------------------- commands

def _check_port_free(host: str, port: int) -> None:
    """Fail with one line (exit 1) when host:port cannot be bound, before anything starts."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UsageError(f"--host: {host}: {exc.strerror}") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind(addr)
        except OSError as exc:
            raise OtaError(f"--port: cannot listen on {host}:{port}: {exc.strerror}") from None


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _check_coap_options(args: argparse.Namespace) -> None:
    """One line (exit 2) for a bad --coap-port, --coap-workers or --coap-notify-allow."""
    from ota_build.server.publications import parse_networks

    if not 0 < args.coap_port < 65536:
        raise UsageError(f"--coap-port: {args.coap_port} is not a UDP port (1-65535)")
    if not 1 <= args.coap_workers <= 64:
        raise UsageError(f"--coap-workers: {args.coap_workers} must be between 1 and 64")
    try:
        parse_networks(args.coap_notify_allow or [])
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the server (migrations first, then uvicorn)."""
    try:
        import uvicorn
    except ImportError as exc:  # pragma: no cover
        raise UsageError(f"the server needs the 'server' extra: pip install 'ota_build[server]' ({exc})") from None
    if not 0 < args.port < 65536:
        raise UsageError(f"--port: {args.port} is not a TCP port (1-65535)")
    if args.workers < 1:
        raise UsageError(f"--workers: {args.workers} must be at least 1")
    if not 0 <= args.latest_cache_ttl <= 3600:
        raise UsageError(f"--latest-cache-ttl: {args.latest_cache_ttl} must be between 0 and 3600 seconds")
    if args.max_upload_bytes < 1:
        raise UsageError(f"--max-upload-bytes: {args.max_upload_bytes} must be at least 1")
    _check_port_free(args.host, args.port)
    coap_host = args.coap_host or args.host
    _check_coap_options(args)
    db = _open_db(args)
    where = db.engine.url.render_as_string(hide_password=True)
    db.dispose()
    from ota_build.server.storage import Storage

    Storage(args.data_dir, args.max_upload_bytes).sweep_tmp(0)  # no worker runs yet: whatever is in tmp/ is stale
    os.environ["OTA_DATA_DIR"] = os.path.abspath(args.data_dir)
    if args.database_url:
        os.environ["OTA_DATABASE_URL"] = args.database_url
    os.environ["OTA_MAX_UPLOAD_BYTES"] = str(args.max_upload_bytes)
    os.environ["OTA_LATEST_CACHE_TTL"] = str(args.latest_cache_ttl)
    os.environ["OTA_SKIP_MIGRATIONS"] = "1"
    if args.packager_key:
        from ota_build.core.signing import make_signer

        make_signer(args.packager_key)  # a bad key fails here, in one line, not in every worker
        os.environ["OTA_PACKAGER_KEY"] = os.path.abspath(args.packager_key)
    os.environ["OTA_COAP_HOST"] = args.coap_advertise_host or coap_host
    os.environ["OTA_COAP_PORT"] = str(args.coap_port)
    os.environ["OTA_COAP_NOTIFY_ALLOW"] = ",".join(args.coap_notify_allow or DEFAULT_NOTIFY_ALLOW)
    coap = None
    if not args.no_coap:
        from ota_build.server.coap import CoapServers

        coap = CoapServers(os.path.abspath(args.data_dir), coap_host, args.coap_port, args.coap_workers)
        try:
            coap.start()
        except OSError as exc:
            raise OtaError(f"--coap-host/--coap-port: {exc}") from None
        print(f"ota-build serve: coap://{_bracket(coap_host)}:{args.coap_port} (seed 002: manifests and slots, "
              f"{args.coap_workers} process(es); notify reaches {', '.join(args.coap_notify_allow or DEFAULT_NOTIFY_ALLOW)})",
              file=sys.stderr, flush=True)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"ota-build serve: http://{host}:{args.port} ({args.workers} worker(s); database {where}; "
          f"files in {os.path.abspath(args.data_dir)}); Ctrl-C stops it", file=sys.stderr, flush=True)
    if args.host not in ("127.0.0.1", "::1", "localhost"):
        print(f"ota-build serve: listening on {args.host}: put TLS (a reverse proxy) in front of it",
              file=sys.stderr)
    try:
        uvicorn.run("ota_build.server.app:app_from_env", factory=True, host=args.host, port=args.port,
                    workers=args.workers, log_level="warning" if not args.access_log else "info",
                    access_log=args.access_log, proxy_headers=False)
    finally:
        if coap is not None:
            coap.stop()
    return 0


def cmd_admin(args: argparse.Namespace) -> int:
    """Partner accounts, device types, device tokens, keys."""
    from ota_build.server import admin

    password = None
    if args.admin_command == "partner":
        if args.password_stdin:
            password = sys.stdin.readline().rstrip("\n")
            if not password:
                raise UsageError("--password-stdin: no password on standard input")
        if args.credentials_out and os.path.exists(args.credentials_out):
            raise UsageError(f"--credentials-out: {args.credentials_out} exists; it is never overwritten")
    db = _open_db(args, create=args.admin_command == "partner")
    doc: Any
    try:
        if args.admin_command == "partner":
            doc = admin.create_partner(db, args.username, password, args.partner_id)
            if args.server_url:
                doc["server"] = args.server_url
            if args.credentials_out:
                from ota_build.core.files import atomic_write_text

                secrets = {k: doc.pop(k) for k in ("username", "userpw", "auth-string")}
                atomic_write_text(args.credentials_out, json.dumps(secrets, indent=2) + "\n", mode=0o600)
                doc = {"credentialsFile": os.path.abspath(args.credentials_out), "username": secrets["username"],
                       **doc}
        elif args.admin_command == "device-type":
            doc = admin.add_device_type(db, args.partner, args.device_type_id)
        elif args.admin_command == "device-token":
            doc = admin.device_token(db, args.partner, args.device_type, args.device, args.group)
        elif args.admin_command == "api-token":
            doc = admin.api_token(db, args.partner)
        elif args.admin_command == "partner-key":
            try:
                with open(args.pem, encoding="ascii") as fh:
                    pem = fh.read()
            except (OSError, UnicodeDecodeError) as exc:
                raise UsageError(f"{args.pem}: cannot read public key: {exc}") from None
            doc = admin.add_partner_key(db, args.partner, pem)
        else:
            doc = admin.list_partners(db)
    finally:
        db.dispose()
    _print_json(doc)
    return 0


def cmd_upload(args: argparse.Namespace) -> int:
    """Upload, publish and associate an image (``--uploadOTAImage`` with explicit paths)."""
    from ota_build.partner.flows import locate_record, resolve_image, upload_image

    cfg = _server_cfg(args)
    result = upload_image(cfg, locate_record(args.record), resolve_image(cfg, args.image),
                          show_progress=not args.no_progress)
    print(result.summary())
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """List the device type's images (every page)."""
    from ota_build.partner.client import OtaClient
    from ota_build.partner.flows import format_table

    cfg = _server_cfg(args)
    cfg.require("deviceTypeId")
    images = OtaClient(cfg).list_images(cfg.device_type_id, cfg.ota_type)
    if args.json:
        _print_json(images)
    else:
        print(format_table(images))
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    """Push an image to devices and/or a group."""
    from ota_build.partner.flows import deploy

    if not args.device and not args.group:
        raise UsageError("give at least one -d DEVICE or -g GROUP")
    cfg = _server_cfg(args)
    count = deploy(cfg, args.image_id, args.device or [], args.group)
    print(f"Request accepted for processing ({count} device(s))")
    return 0


def cmd_devices(args: argparse.Namespace) -> int:
    """The partner's devices and their last reported state."""
    from ota_build.partner.client import OtaClient

    devices = OtaClient(_server_cfg(args)).devices()
    if args.json:
        _print_json(devices)
        return 0
    print(f"{'Device':<24} {'Group':<12} {'State':<14} {'versionNumber':<14} Message")
    for d in devices:
        print(f"{d['deviceId']:<24} {d.get('group') or '':<12} {d.get('state') or '-':<14} "
              f"{d.get('versionNumber') or '':<14} {d.get('message') or ''}")
    return 0


def cmd_pack(args: argparse.Namespace) -> int:
    """Zip a folder, write content.json with the real sha256, upload (seed 001) unless --no-upload."""
    from ota_build.partner.pack import pack

    server = args.server or os.environ.get("OTA_PACKAGE_SERVER") or os.environ.get("OTA_SERVER")
    if server and not args.no_upload:
        setting = "--server" if args.server else "OTA_PACKAGE_SERVER" if os.environ.get("OTA_PACKAGE_SERVER") \
            else "OTA_SERVER"
        check_server_url(server, setting)
    token = os.environ.get("OTA_TOKEN")
    if args.token_file:
        try:
            with open(args.token_file, encoding="utf-8") as fh:
                token = fh.read().strip()
        except OSError as exc:
            raise UsageError(f"--token-file: {args.token_file}: cannot read: {exc.strerror}") from None
        if not token:
            raise UsageError(f"--token-file: {args.token_file} is empty")
    result = pack(args.folder, args.package, args.branch, args.version, args.output,
                  server, token, args.overwrite, args.description, upload=not args.no_upload)
    print(f"{result['zip']}: sha256 {result['sha256']}; {result['content']}")
    if "server" in result:
        print(f"uploaded to {server}{result['server'].get('url', '')}")
    return 0


# --------------------------------------------------------------------------- parsers

def _db_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=os.environ.get("OTA_DATA_DIR", "ota-data"),
                   help="data directory: files and the default SQLite database (default: $OTA_DATA_DIR or "
                        "./ota-data)")
    p.add_argument("--database-url", default=os.environ.get("OTA_DATABASE_URL"),
                   help="SQLAlchemy database URL, e.g. postgresql+psycopg://user@/ota?host=/var/run/postgresql "
                        "(default: $OTA_DATABASE_URL, else SQLite in the data directory)")


def _conf_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--conf", default=DEFAULT_CONFIG_NAME,
                   help=f"partner config with server, partnerId, deviceTypeId (default: ./{DEFAULT_CONFIG_NAME}); "
                        "secrets from OTA_USERNAME/OTA_USERPW/OTA_AUTH_STRING or --credentials")
    p.add_argument("--credentials", metavar="FILE", help="JSON file with username/userpw/auth-string")


def add_server_commands(sub: Any) -> None:
    """Register the server and client subcommands on ``ota-build``'s subparsers."""
    p = sub.add_parser("serve", help="run the OTA service",
                       description="Run the OTA service (Afero-compatible partner API, device API, seed-001 "
                                   "package API, web page at /, OpenAPI at /openapi.json). Applies database "
                                   "migrations first. Binds 127.0.0.1 unless told otherwise.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="TCP port (default: 8080)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default: 1)")
    p.add_argument("--max-upload-bytes", type=int, default=4 * 1024 ** 3,
                   help="largest accepted upload in bytes (default: 4 GiB)")
    p.add_argument("--latest-cache-ttl", type=float, default=1.0, metavar="SECONDS",
                   help="how long each worker may reuse a /latestVersion answer; an upload through the same "
                        "worker refreshes it at once, other workers within SECONDS (default: 1.0; 0 = no cache)")
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.add_argument("--packager-key", metavar="PEM", default=os.environ.get("OTA_PACKAGER_KEY"),
                   help="private key that signs the file packager's packages (seed 000, /packager/...; default: "
                        "$OTA_PACKAGER_KEY, else DATA_DIR/packager/signing-key.pem, generated as Ed25519 at its first use)")
    _db_options(p)
    p.add_argument("--coap-host", help="seed 002: address the CoAP server binds (default: --host); on a wildcard "
                                        "(:: dual-stack, 0.0.0.0 IPv4) each answer leaves from the address its request "
                                        "was sent to; requests to a multicast group are not answered")
    p.add_argument("--coap-port", type=int, default=5683, help="seed 002: UDP port of the CoAP server (default: 5683)")
    p.add_argument("--coap-advertise-host", metavar="HOST",
                   help="seed 002: host put into notifications, coap://[HOST]:PORT/<id>/manifest (default: --coap-host)")
    p.add_argument("--coap-notify-allow", action="append", metavar="CIDR",
                   help="seed 002: an address range PUT /notify may send CoAP to (repeatable; default: "
                        f"{' and '.join(DEFAULT_NOTIFY_ALLOW)}, loopback only)")
    p.add_argument("--coap-workers", type=int, default=1, metavar="N",
                   help="seed 002: CoAP server processes, sharing the UDP port (SO_REUSEPORT; each client stays on "
                        "one); more than 1 uses more cores for many concurrent block-wise downloads (default: 1)")
    p.add_argument("--no-coap", action="store_true", help="seed 002: do not start the CoAP server")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("admin", help="manage partner accounts, device types and tokens",
                       description="Create partner accounts, device types, device tokens, API tokens and trusted "
                                   "keys in the server's database. Prints JSON; the secrets are shown only here.")
    _db_options(p)
    asub = p.add_subparsers(dest="admin_command", metavar="ACTION", help="what to create or show")
    asub.required = True
    a = asub.add_parser("partner", help="create a partner account (prints the config values)",
                        description="Create a partner; prints username, userpw, auth-string and partnerId to put "
                                    "in partner-ota-conf.json (or the credentials file).")
    a.add_argument("--username", required=True, help="the partner's login (config 'username')")
    a.add_argument("--password-stdin", action="store_true", help="read the password from stdin (default: generate)")
    a.add_argument("--partner-id", help="partnerId (default: a new UUID)")
    a.add_argument("--server-url", help="also print this as the config's 'server'")
    a.add_argument("--credentials-out", metavar="FILE",
                   help="write username, userpw and auth-string to FILE (mode 0600, never overwritten) for "
                        "OTA_CREDENTIALS_FILE, and print only the non-secret values")
    a = asub.add_parser("device-type", help="register a device type", description="Register a device type.")
    a.add_argument("--partner", required=True, help="partnerId")
    a.add_argument("--device-type-id", help="deviceTypeId (default: a new UUID)")
    a = asub.add_parser("device-token", help="register a device and issue its token",
                        description="Register a device (or re-use it) and print a new device token for it.")
    a.add_argument("--partner", required=True, help="partnerId")
    a.add_argument("--device-type", required=True, help="deviceTypeId of the device")
    a.add_argument("--device", required=True, help="deviceId")
    a.add_argument("--group", help="put the device in this deploy group")
    a = asub.add_parser("api-token", help="issue a long-lived partner token (for pack / PUT /upload)",
                        description="Issue a long-lived partner bearer token.")
    a.add_argument("--partner", required=True, help="partnerId")
    a = asub.add_parser("partner-key", help="trust a public key for a partner's uploads",
                        description="Trust a PEM public key; the partner's uploads must then be signed by one of "
                                    "its trusted keys.")
    a.add_argument("--partner", required=True, help="partnerId")
    a.add_argument("pem", help="public key (PEM)")
    asub.add_parser("list", help="list partners and device types", description="List partners (no secrets).")
    p.set_defaults(func=cmd_admin)

    p = sub.add_parser("upload", help="upload and register an image on the OTA server",
                       description="Upload hub_update.bin (resumable, with retries), publish it, set the record's "
                                   "url and associate it with the config's device type.",
                       epilog=NETWORK_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    _conf_option(p)
    p.add_argument("-r", "--record", default=".", help="the OTA record file or its directory (default: .)")
    p.add_argument("-i", "--image", help="image to upload (default: the config's imageFiles A)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_upload)

    p = sub.add_parser("list", help="list the images on the OTA server",
                       description="List the config's device type's images (all pages).",
                       epilog=NETWORK_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    _conf_option(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("deploy", help="push an image to devices or a group",
                       description="Push an image (id from 'list') to one or more devices and/or a group.",
                       epilog=NETWORK_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    _conf_option(p)
    p.add_argument("-i", "--image-id", required=True, help="image id (from 'ota-build list')")
    p.add_argument("-d", "--device", action="append", help="deviceId (repeatable)")
    p.add_argument("-g", "--group", help="deploy group")
    p.set_defaults(func=cmd_deploy)

    p = sub.add_parser("devices", help="show devices and their update state",
                       description="Show the partner's devices and the last state each reported.",
                       epilog=NETWORK_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    _conf_option(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_devices)

    p = sub.add_parser("pack", help="zip a folder into a package and upload it (seed 001)",
                       description="Zip FOLDER, write content.json with the zip's real sha256 next to the zip, and "
                                   "upload both to the server's PUT /upload. The server comes from --server, "
                                   "OTA_PACKAGE_SERVER or OTA_SERVER; without one pack fails (exit 3) unless "
                                   "--no-upload is given. The token comes from OTA_TOKEN (the token itself) or "
                                   "--token-file. pack's own outputs (the zip, its temporary files, earlier "
                                   "<package>-<branch>-<version>.zip files and their content.json) are never put "
                                   "into the zip, so the output may lie inside FOLDER.")
    p.add_argument("folder", help="folder to package")
    p.add_argument("--package", required=True, help="package name")
    p.add_argument("--branch", required=True, help="branch")
    p.add_argument("--version", required=True, help="version (e.g. 0.1.0)")
    p.add_argument("--description", default="", help="description for content.json")
    p.add_argument("-o", "--output", help="zip path (default: <package>-<branch>-<version>.zip); content.json is "
                                          "written in the same directory")
    p.add_argument("--server", help="server base URL (default: $OTA_PACKAGE_SERVER or $OTA_SERVER; required "
                                    "unless --no-upload)")
    p.add_argument("--token-file", metavar="FILE",
                   help="file holding the partner API token (instead of $OTA_TOKEN, which holds the token itself)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing version (overwrite=1)")
    p.add_argument("--no-upload", action="store_true",
                   help="only write the zip and content.json (no server or token needed)")
    p.set_defaults(func=cmd_pack)
