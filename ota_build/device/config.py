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
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

from ..errors import ConfigError
from ..schema import load_validated

log = logging.getLogger(__name__)

DEFAULT_RECORD = "/etc/full_ota_record.json"
DEFAULT_STATE_DIR = "/var/lib/ota-agent"


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
    if installer["type"] == "ab" and not installer.get("slots"):
        raise ConfigError(f"{path}: field 'installer.slots': is missing (needed by the A/B installer)")
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
    )
