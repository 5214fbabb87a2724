"""Seed 002's publications without HTTP or CoAP: where a publish id's manifest and slots live, who owns it,
which device URLs a notification may reach.

Layout under ``<data_dir>/coap/``: ``<publish_id>`` is a symlink to ``.v/<publish_id>.<random>/`` holding
``manifest``, ``slot0``, ``slot1`` and ``meta.json`` (owner partner, time, sizes). A new publish writes a new
version directory, fsyncs it and swaps the symlink with one ``rename``, so a CoAP reader sees the old or the new
files, never a mix. Names are checked with ``core.names.check_name`` (no ``.``/``..``, no slashes).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import logging
import os
import secrets
import shutil
import socket
from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from ota_build.core.files import fsync_dir
from ota_build.core.names import check_name
from ota_build.server.errors import Kind, ServiceError

log = logging.getLogger(__name__)

#: the files of a publication, in the order the original's form lists them
PARTS = ("manifest", "slot0", "slot1")
#: notify reaches these networks unless the operator configures others (--coap-notify-allow)
DEFAULT_NOTIFY_ALLOW = ("127.0.0.0/8", "::1/128")

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


def check_publish_id(value: Optional[str]) -> str:
    """The publish id if it is a safe single path component, else ServiceError (400)."""
    if value is None or value == "":
        raise ServiceError(Kind.INVALID, "Missing publish_id")
    try:
        return check_name(value, "publish_id")
    except ValueError as exc:
        raise ServiceError(Kind.INVALID, str(exc)) from None


@dataclass(frozen=True)
class Publication:
    """One publication as listed."""

    publish_id: str
    partner_id: str
    created: str
    sizes: Dict[str, int]


class Publications:
    """The publications in ``<data_dir>/coap``."""

    def __init__(self, data_dir: str):
        self.root = os.path.join(data_dir, "coap")
        self.versions = os.path.join(self.root, ".v")

    def file_name(self, publish_id: str, part: str) -> Optional[str]:
        """Where ``part`` of ``publish_id`` would be (it may not exist), or None for a name that is not valid."""
        try:
            check_name(publish_id, "publish_id")
        except ValueError:
            return None
        return os.path.join(self.root, publish_id, part) if part in PARTS else None

    def meta(self, publish_id: str) -> Optional[Publication]:
        """The publication's metadata, or None."""
        try:
            with open(os.path.join(self.root, publish_id, "meta.json"), encoding="utf-8") as f:
                doc = json.load(f)
        except (OSError, ValueError):
            return None
        return Publication(publish_id, doc.get("partnerId", ""), doc.get("created", ""), doc.get("sizes", {}))

    def list(self) -> List[Publication]:
        """Every publication, newest first."""
        try:
            names = [n for n in os.listdir(self.root) if not n.startswith(".")]
        except FileNotFoundError:
            return []
        found = [m for m in (self.meta(n) for n in names) if m is not None]
        return sorted(found, key=lambda p: p.created, reverse=True)

    def check_owner(self, publish_id: str, partner_id: str) -> Optional[Publication]:
        """The existing publication (None if new); ServiceError (403) if another partner owns it."""
        existing = self.meta(publish_id)
        if existing is not None and existing.partner_id != partner_id:
            raise ServiceError(Kind.FORBIDDEN, f"publish_id '{publish_id}' belongs to another partner")
        return existing

    def publish(self, publish_id: str, partner_id: str, parts: Mapping[str, Iterable[bytes]]) -> Publication:
        """Store the three parts (iterables of chunks) as ``publish_id``, replacing an older version atomically."""
        check_publish_id(publish_id)
        self.check_owner(publish_id, partner_id)
        os.makedirs(self.versions, exist_ok=True)
        version = os.path.join(self.versions, f"{publish_id}.{secrets.token_hex(6)}")
        os.mkdir(version)
        sizes: Dict[str, int] = {}
        try:
            for name in PARTS:
                size = 0
                with open(os.path.join(version, name), "wb") as out:
                    for chunk in parts[name]:
                        out.write(chunk)
                        size += len(chunk)
                    out.flush()
                    os.fsync(out.fileno())
                sizes[name] = size
            created = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            with open(os.path.join(version, "meta.json"), "w", encoding="utf-8") as out:
                json.dump({"publishId": publish_id, "partnerId": partner_id, "created": created, "sizes": sizes}, out)
                out.flush()
                os.fsync(out.fileno())
            fsync_dir(version)
            link = os.path.join(self.root, publish_id)
            old = os.path.realpath(link) if os.path.islink(link) else None
            tmp_link = os.path.join(self.root, f".{publish_id}.{secrets.token_hex(6)}.lnk")
            os.symlink(os.path.join(".v", os.path.basename(version)), tmp_link)
            os.replace(tmp_link, link)
            fsync_dir(self.root)
        except BaseException:
            shutil.rmtree(version, ignore_errors=True)
            raise
        if old and os.path.dirname(old) == os.path.realpath(self.versions):
            shutil.rmtree(old, ignore_errors=True)  # a reader that has a file open keeps reading it
        log.info("published %s for %s (%s)", publish_id, partner_id, sizes)
        return Publication(publish_id, partner_id, created, sizes)


# --------------------------------------------------------------------------- notify

def parse_networks(values: Sequence[str]) -> List[Network]:
    """CIDR strings (``--coap-notify-allow``) as networks; ValueError naming the bad one."""
    nets: List[Network] = []
    for value in values:
        try:
            nets.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(f"--coap-notify-allow: {value!r} is not an address range (e.g. 10.0.0.0/8)") from None
    return nets


def split_device_url(url: str) -> Tuple[str, Optional[int], str]:
    """``host[:port]/path`` (host may be ``[v6]``) as (host, port or None, path); ValueError when malformed."""
    url = url.strip()
    if "://" in url:
        raise ValueError(f"device url {url!r}: give host[:port]/path without a scheme")
    hostport, _, path = url.partition("/")
    if hostport.startswith("["):
        host, sep, rest = hostport[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"device url {url!r}: bad [IPv6] host")
        port_text = rest[1:] if rest else ""
    else:
        host, _, port_text = hostport.partition(":") if hostport.count(":") <= 1 else (hostport, "", "")
    if not host:
        raise ValueError(f"device url {url!r}: no host")
    port: Optional[int] = None
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"device url {url!r}: bad port")
        port = int(port_text)
    return host, port, path


def resolve_device(url: str, allow: Sequence[Network]) -> str:
    """The CoAP URI to notify for ``url``, with the host replaced by its checked IP address.

    Every address the host resolves to must be inside ``allow`` (ServiceError 403 otherwise): notify is no open
    CoAP relay. The checked address is the one used, so a DNS answer cannot change between check and send."""
    try:
        host, port, path = split_device_url(url)
    except ValueError as exc:
        raise ServiceError(Kind.INVALID, str(exc)) from None
    try:
        infos = socket.getaddrinfo(host, port or 5683, type=socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise ServiceError(Kind.INVALID, f"device url {url!r}: cannot resolve {host}: {exc.strerror}") from None
    addrs = sorted({str(info[4][0]) for info in infos})
    for addr in addrs:
        ip = ipaddress.ip_address(addr.split("%")[0])
        if not any(ip in net for net in allow):
            raise ServiceError(Kind.FORBIDDEN, f"device url {url!r}: {addr} is outside the address ranges this server "
                                            f"notifies (--coap-notify-allow)")
    addr = addrs[0]
    literal = f"[{addr}]" if ":" in addr else addr
    return f"coap://{literal}{':' + str(port) if port else ''}/{path}"


def notification_payload(coap_host: str, coap_port: int, publish_id: str) -> bytes:
    """Exactly the original's payload: ``coap://[<coap_host>]:<coap_port>/<publish_id>/manifest``."""
    return f"coap://[{coap_host}]:{coap_port}/{publish_id}/manifest".encode("ascii")
