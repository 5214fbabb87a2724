"""The agent's configuration file (``/etc/ota-agent.json``).

Seed 001's daemon config (``device``, ``description``, ``flask`` host/port/debug,
``token``, ``packages``) plus what the full-image flow needs. The local API
must bind to loopback and ``debug`` is ignored (the seed's original ran
Flask's debugger on 0.0.0.0). Secrets may come from the environment:
``OTA_DEVICE_TOKEN`` (server) and ``OTA_AGENT_LOCAL_TOKEN`` (local API).
"""

from __future__ import annotations

import logging
import os
import re
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence

from ota_build.core import bootenv
from ota_build.core.errors import ConfigError
from ota_build.core.schema import load_schema, load_validated, validate

log = logging.getLogger(__name__)

DEFAULT_RECORD = "/etc/full_ota_record.json"
DEFAULT_STATE_DIR = "/var/lib/ota-agent"
DEFAULT_CMDLINE = "/proc/cmdline"
DEFAULT_BOOT_ID = "/proc/sys/kernel/random/boot_id"
DEFAULT_BOOT_LIMIT = bootenv.DEFAULT_BOOTLIMIT


@dataclass(frozen=True)
class AgentConfig:
    """A validated agent configuration."""

    path: str
    device: str
    server: str
    device_type_id: str
    public_keys: List[str]
    installer: Dict[str, Any]
    description: str = ""
    device_token: str = field(default="", repr=False)
    local_host: str = "127.0.0.1"
    local_port: int = 0
    local_token: str = field(default="", repr=False)
    packages: List[Dict[str, Any]] = field(default_factory=list)
    ota_type: int = 5
    record: str = DEFAULT_RECORD
    state_dir: str = DEFAULT_STATE_DIR
    allow_downgrade: bool = False
    poll_interval: int = 300
    verify_backend: str = "auto"
    download_origins: List[str] = field(default_factory=list)
    health_check: List[str] = field(default_factory=list)
    reboot_command: List[str] = field(default_factory=list)
    boot_limit: int = DEFAULT_BOOT_LIMIT
    cmdline: str = DEFAULT_CMDLINE
    boot_id_file: str = DEFAULT_BOOT_ID

    def package_for(self, name: str) -> Optional[Dict[str, Any]]:
        """The installed package entry (content.json) whose ``package`` is ``name``, else the only one."""
        for pkg in self.packages:
            if pkg.get("package") == name:
                return pkg
        return self.packages[0] if len(self.packages) == 1 else None


def _read_secret_file(path: str, field_name: str, name: str) -> str:
    """The stripped content of a per-device file named by ``field_name``."""
    full = os.path.join(os.path.dirname(os.path.abspath(path)), name)
    try:
        with open(full, encoding="utf-8") as fh:
            return fh.read().strip()
    except OSError as exc:
        raise ConfigError(f"{path}: field '{field_name}': cannot read {full}: {exc.strerror}") from None


def load_agent_config(path: str, env: Optional[Mapping[str, str]] = None) -> AgentConfig:
    """Load and validate the agent config; ConfigError names the file and field."""
    env = os.environ if env is None else env
    doc = load_validated(path, "ota-agent", "agent configuration", ConfigError)
    installer = doc["installer"]
    if installer["type"] == "command" and not installer.get("command"):
        raise ConfigError(f"{path}: field 'installer.command': is missing (needed by the command installer)")
    if installer["type"] in ("ab", "archive") and not installer.get("slots"):
        raise ConfigError(f"{path}: field 'installer.slots': is missing (needed by the A/B installer)")
    for name in installer.get("slots", {}):
        if not re.fullmatch(r"[A-Za-z0-9]+", name):
            raise ConfigError(f"{path}: field 'installer.slots': slot name {name!r} is not letters and digits")
    token = env.get("OTA_DEVICE_TOKEN") or doc.get("deviceToken", "")
    if not token and doc.get("deviceTokenFile"):
        token = _read_secret_file(path, "deviceTokenFile", doc["deviceTokenFile"])
    device = env.get("OTA_DEVICE_ID") or doc.get("device", "")
    if not device and doc.get("deviceFile"):
        device = _read_secret_file(path, "deviceFile", doc["deviceFile"])
    if not device:
        raise ConfigError(f"{path}: field 'device': is missing (set it, OTA_DEVICE_ID, or deviceFile)")
    if not re.match(r"^[A-Za-z0-9._-]{1,128}$", device):
        raise ConfigError(f"{path}: field 'device': {device!r} is not a valid device id")
    flask = doc.get("flask", {})
    if flask.get("debug"):
        log.warning("%s: flask.debug is ignored: the local API never runs a debugger", path)
    for name, url in [("server", doc["server"])] + [("downloadOrigins", o) for o in doc.get("downloadOrigins", [])]:
        parts = urllib.parse.urlsplit(url)
        try:
            parts.port  # noqa: B018 (raises ValueError for a bad port)
        except ValueError:
            parts = parts._replace(netloc="")
        if not parts.hostname or (name == "downloadOrigins" and parts.path not in ("", "/")):
            raise ConfigError(f"{path}: field '{name}': {url!r} is not an http(s) "
                              + ("URL with a host" if name == "server" else "origin (scheme://host[:port])"))
    base = os.path.dirname(os.path.abspath(path))
    return AgentConfig(
        path=path,
        device=device,
        server=doc["server"].rstrip("/"),
        device_type_id=doc["deviceTypeId"],
        public_keys=[os.path.join(base, p) for p in doc["publicKeys"]],
        installer=installer,
        description=doc.get("description", ""),
        device_token=token,
        local_host=flask.get("host", "127.0.0.1"),
        local_port=int(flask.get("port", 0)),
        local_token=env.get("OTA_AGENT_LOCAL_TOKEN") or doc.get("token", ""),
        packages=list(doc.get("packages", doc.get("package", []))),
        ota_type=int(doc.get("otaType", 5)),
        record=os.path.join(base, doc.get("record", DEFAULT_RECORD)),
        state_dir=os.path.join(base, doc.get("stateDir", DEFAULT_STATE_DIR)),
        allow_downgrade=bool(doc.get("allowDowngrade", False)),
        poll_interval=int(doc.get("pollInterval", 300)),
        verify_backend=doc.get("verifyBackend", "auto"),
        download_origins=list(doc.get("downloadOrigins", [])),
        health_check=list(doc.get("healthCheck", [])),
        reboot_command=list(doc.get("rebootCommand", [])),
        boot_limit=int(doc.get("bootLimit", DEFAULT_BOOT_LIMIT)),
        cmdline=os.path.join(base, doc.get("cmdline", DEFAULT_CMDLINE)),
        boot_id_file=os.path.join(base, doc.get("bootIdFile", DEFAULT_BOOT_ID)),
    )


def parse_pairs(items: Sequence[str], what: str) -> Dict[str, str]:
    """``NAME=VALUE`` items (``a=/dev/mmcblk0p2``) as an ordered dict; ConfigError names the bad one."""
    out: Dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise ConfigError(f"{what}: {item!r} is not NAME=VALUE")
        out[name] = value
    return out


def build_agent_config(server: str, device_type: str, public_keys: List[str], ota_type: int = 5,
                       slots: Optional[List[str]] = None, boot_variable: str = "ota_slot",
                       boot_values: Optional[List[str]] = None, command: Optional[List[str]] = None,
                       poll_interval: int = 300, local_port: int = 5000, description: str = "",
                       record: str = DEFAULT_RECORD, state_dir: str = DEFAULT_STATE_DIR,
                       device_file: str = "/etc/ota/device-id",
                       device_token_file: str = "/etc/ota/device-token", boot_limit: int = DEFAULT_BOOT_LIMIT,
                       health_check: Optional[List[str]] = None, payload_fstype: str = "",
                       boot_env_file: str = "", reboot_command: Optional[List[str]] = None) -> Dict[str, Any]:
    """An agent configuration for an image (the ota-agent recipe's /etc/ota-agent.json).

    Two or more ``slots`` (``a=/dev/mmcblk0p2``) select the A/B installer with
    U-Boot's environment (``boot_values`` map slots to the variable's values):
    the archive installer when ``payload_fstype`` is ``tar.gz``, else the raw one;
    otherwise the command installer runs ``command``. ``boot_env_file`` (the boot
    script's file mode, e.g. ``/uboot/ota-env.txt``) makes the agent keep the boot
    state in that KEY=value file instead of ``fw_setenv``. ``reboot_command``
    (A/B only) is what the agent runs to reboot into a switched slot. Per-device values are
    read on the device from ``device_file`` and ``device_token_file``.
    Raises ConfigError naming the problem; the result validates against the schema.
    """
    slot_map = parse_pairs(slots or [], "slot")
    installer: Dict[str, Any]
    if slot_map:
        if len(slot_map) < 2:
            raise ConfigError("slots: the A/B installer needs at least two slots (a=/dev/... b=/dev/...)")
        installer = {"type": "archive" if payload_fstype == "tar.gz" else "ab", "slots": slot_map,
                     "bootEnv": {"tool": "fw_setenv", "variable": boot_variable,
                                 "values": parse_pairs(boot_values or [], "boot value")}}
        if boot_env_file:
            if not os.path.isabs(boot_env_file):
                raise ConfigError(f"boot env file: {boot_env_file!r} must be an absolute path on the device")
            installer["bootEnv"].update(tool="file", file=boot_env_file)
    else:
        if not command:
            raise ConfigError("command: the command installer needs a command (e.g. /sbin/sysupgrade {image})")
        installer = {"type": "command", "command": list(command)}
    doc: Dict[str, Any] = {
        "Comments": "Written by ota-build agent-config (meta-ota's ota-agent recipe); see docs/agent.md",
        "description": description, "server": server, "deviceTypeId": device_type,
        "deviceFile": device_file, "deviceTokenFile": device_token_file, "publicKeys": list(public_keys),
        "record": record, "stateDir": state_dir, "otaType": ota_type, "pollInterval": poll_interval,
        "flask": {"host": "127.0.0.1", "port": local_port}, "installer": installer,
    }
    if slot_map:
        doc["bootLimit"] = boot_limit
    if health_check:
        doc["healthCheck"] = list(health_check)
    if reboot_command:
        if not slot_map:
            raise ConfigError("reboot command: only the A/B installers reboot into a slot (give --slot)")
        doc["rebootCommand"] = list(reboot_command)
    problem = validate(load_schema("ota-agent"), doc)
    if problem:
        raise ConfigError(f"agent configuration: {problem}")
    return doc
