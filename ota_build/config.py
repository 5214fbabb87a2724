"""The partner OTA configuration file (``partner-ota-conf.json``).

The seed's file is accepted as is, ``Comments`` key included. Secrets may live
elsewhere so that a configuration committed to a BSP repository holds none.
Precedence for each of ``username``, ``userpw`` and ``auth-string`` (first hit
wins):

1. environment variables ``OTA_USERNAME``, ``OTA_USERPW``, ``OTA_AUTH_STRING``;
2. a credentials file (JSON with the same three keys) named by ``--credentials``
   or by the environment variable ``OTA_CREDENTIALS_FILE``;
3. the configuration file itself.

The server base URL follows the same order: ``OTA_SERVER`` then the config's
``server`` key.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

from .errors import ConfigError
from .schema import load_validated, parse_json_file

log = logging.getLogger(__name__)

DEFAULT_CONFIG_NAME = "partner-ota-conf.json"
DEFAULT_OTA_TYPE = 5  # HUB (attribute 2005, type 5) in the Afero service
SECRET_FIELDS = ("username", "userpw", "auth-string")
ENV_FOR_SECRET = {"username": "OTA_USERNAME", "userpw": "OTA_USERPW", "auth-string": "OTA_AUTH_STRING"}
MAIN_SLOTS = ("A", "a")


@dataclass(frozen=True)
class Credentials:
    """Account secrets. ``repr`` never shows them."""

    username: str = ""
    password: str = field(default="", repr=False)
    auth_string: str = field(default="", repr=False)

    def __repr__(self) -> str:  # pragma: no cover - trivial
        return f"Credentials(username={self.username!r}, password=***, auth_string=***)"

    def missing(self) -> List[str]:
        """Names (config spelling) of the secrets that are empty."""
        names = []
        if not self.username:
            names.append("username")
        if not self.password:
            names.append("userpw")
        if not self.auth_string:
            names.append("auth-string")
        return names


@dataclass(frozen=True)
class OtaConfig:
    """A validated configuration, secrets resolved."""

    path: str
    name: str
    version: str
    description: str = ""
    url: str = ""
    device_type_id: str = ""
    partner_id: str = ""
    image_files: Mapping[str, str] = field(default_factory=dict)
    tags: List[str] = field(default_factory=list)
    ota_type: int = DEFAULT_OTA_TYPE
    server: str = ""
    credentials: Credentials = field(default_factory=Credentials)

    @property
    def image_file(self) -> str:
        """The main slot's image file name (``A`` in the document, ``a`` in the original code)."""
        for slot in MAIN_SLOTS:
            if slot in self.image_files:
                return self.image_files[slot]
        return "hub_update.bin"

    def require(self, *names: str) -> None:
        """Raise ConfigError naming the first empty field among ``names`` (config spelling)."""
        values = {
            "partnerId": self.partner_id,
            "deviceTypeId": self.device_type_id,
            "server": self.server,
            "username": self.credentials.username,
            "userpw": self.credentials.password,
            "auth-string": self.credentials.auth_string,
        }
        for name in names:
            if not values.get(name):
                hint = ""
                if name in ENV_FOR_SECRET:
                    hint = f" (set {ENV_FOR_SECRET[name]} or put it in the credentials file)"
                elif name == "server":
                    hint = " (set OTA_SERVER or the config's 'server' key)"
                raise ConfigError(f"{self.path}: field '{name}': is missing or empty{hint}")


def _read_credentials_file(path: str) -> Dict[str, Any]:
    try:
        doc = parse_json_file(path)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read credentials file: {exc.strerror}") from None
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: credentials file must be a JSON object")
    for key, value in doc.items():
        if key not in SECRET_FIELDS:
            raise ConfigError(f"{path}: field '{key}': is not a known field (expected {', '.join(SECRET_FIELDS)})")
        if not isinstance(value, str):
            raise ConfigError(f"{path}: field '{key}': must be of type string")
    try:
        mode = os.stat(path).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("%s: credentials file is readable by other users; chmod 600 it", path)
    except OSError:
        pass
    return doc


def load_config(path: str, credentials_path: Optional[str] = None,
                env: Optional[Mapping[str, str]] = None, schema_backend: Optional[str] = None) -> OtaConfig:
    """Load, validate and resolve a partner OTA configuration.

    Raises ConfigError with one line naming the file and the field.
    """
    env = os.environ if env is None else env
    doc = load_validated(path, "partner-ota-conf", "configuration file", ConfigError, schema_backend)

    cred_file = credentials_path or env.get("OTA_CREDENTIALS_FILE") or ""
    from_file = _read_credentials_file(cred_file) if cred_file else {}

    def secret(name: str) -> str:
        return env.get(ENV_FOR_SECRET[name]) or from_file.get(name) or doc.get(name, "")

    return OtaConfig(
        path=path,
        name=doc["name"],
        version=doc["version"],
        description=doc.get("description", ""),
        url=doc.get("url", ""),
        device_type_id=doc.get("deviceTypeId", ""),
        partner_id=doc.get("partnerId", ""),
        image_files=dict(doc.get("imageFiles", {})),
        tags=list(doc.get("tags", [])),
        ota_type=int(doc.get("type", DEFAULT_OTA_TYPE)),
        server=(env.get("OTA_SERVER") or doc.get("server", "")).rstrip("/"),
        credentials=Credentials(secret("username"), secret("userpw"), secret("auth-string")),
    )
