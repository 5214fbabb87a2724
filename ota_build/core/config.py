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
``server`` key; ``OtaConfig.server_url`` checks it (http or https, a host)
when a command is about to use it.

The HTTP client's timeouts and retries come from the environment
(``OTA_CONNECT_TIMEOUT``, ``OTA_READ_TIMEOUT``, ``OTA_RETRIES``):
``NetworkSettings.from_env``; ``NETWORK_HELP`` is their --help text.
"""

from __future__ import annotations

import logging
import math
import os
import stat
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Union
from urllib.parse import urlsplit

from ota_build.core.errors import ConfigError
from ota_build.core.schema import load_validated, parse_json_file

log = logging.getLogger(__name__)

DEFAULT_CONFIG_NAME = "partner-ota-conf.json"
DEFAULT_OTA_TYPE = 5  # HUB (attribute 2005, type 5) in the Afero service
SECRET_FIELDS = ("username", "userpw", "auth-string")
ENV_FOR_SECRET = {"username": "OTA_USERNAME", "userpw": "OTA_USERPW", "auth-string": "OTA_AUTH_STRING"}
MAIN_SLOTS = ("A", "a")
SERVER_SCHEMES = ("http", "https")


def check_server_url(url: str, setting: str) -> str:
    """Return ``url`` if it can be an OTA server's base URL, else raise ConfigError.

    A base URL is ``http(s)://host[:port][/path]``: a scheme, a host, no
    user:password (it would end up in messages), no query or fragment.
    ``setting`` names where the value came from (``OTA_SERVER``, or the config
    file and its field); the error line shows it and the value.
    """
    problem = ""
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError on a port that is not a number in 0-65535
    except ValueError:
        problem = "not a valid URL (bad host or port)"
        parts = None
    if parts is None:
        pass
    elif "://" not in url:
        problem = "no scheme (expected http:// or https://)"
    elif parts.scheme.lower() not in SERVER_SCHEMES:
        problem = f"unsupported scheme '{parts.scheme}' (expected http:// or https://)"
    elif not parts.hostname:
        problem = "no host"
    elif any(ch.isspace() or ord(ch) < 32 for ch in url):
        problem = "contains spaces or control characters"
    elif parts.username is not None or parts.password is not None:
        problem = "has a user name or password in it (give them as OTA_USERNAME/OTA_USERPW or in the credentials file)"
        url = url.replace(parts.netloc, "***@" + parts.netloc.rpartition("@")[2], 1)
    elif parts.query or parts.fragment:
        problem = "has a query or fragment"
    if problem:
        raise ConfigError(f"{setting}: {url!r} is not a server URL: {problem}")
    return url


def _env_number(env: Mapping[str, str], name: str, default: Union[int, float],
                kind: Callable[[str], Union[int, float]]) -> Any:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = -1
    if kind is int and value >= 0:
        return value
    if kind is float and math.isfinite(value) and value > 0:
        return value
    wanted = "a whole number, 0 or more" if kind is int else "a number of seconds above 0"
    raise ConfigError(f"{name}: {raw!r} is not {wanted}")


@dataclass(frozen=True)
class NetworkSettings:
    """Timeouts and retries of the HTTP client (``OtaClient``).

    Each attempt waits at most ``connect_timeout`` for the TCP (and TLS)
    connection and ``read_timeout`` for each part of the answer. Failed
    attempts are retried up to ``retries`` times, after ``backoff``, then
    twice that, and so on (at most 30 s).
    """

    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    retries: int = 3
    backoff: float = 1.0

    @classmethod
    def from_env(cls, env: Optional[Mapping[str, str]] = None) -> "NetworkSettings":
        """The settings from ``OTA_CONNECT_TIMEOUT``, ``OTA_READ_TIMEOUT``, ``OTA_RETRIES`` (defaults if unset).

        Raises ConfigError naming the variable when a value is not a number in range.
        """
        env = os.environ if env is None else env
        return cls(connect_timeout=_env_number(env, "OTA_CONNECT_TIMEOUT", cls.connect_timeout, float),
                   read_timeout=_env_number(env, "OTA_READ_TIMEOUT", cls.read_timeout, float),
                   retries=_env_number(env, "OTA_RETRIES", cls.retries, int))

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt + 1``."""
        return min(self.backoff * 2 ** attempt, 30.0)

    def worst_case(self, per_attempt: float) -> float:
        """Longest time a call takes when every attempt waits ``per_attempt`` seconds and then fails."""
        return (self.retries + 1) * per_attempt + sum(self.delay(n) for n in range(self.retries))


_DEFAULTS = NetworkSettings()
_HANG = _DEFAULTS.worst_case(_DEFAULTS.read_timeout)
_UNREACHABLE = _DEFAULTS.worst_case(_DEFAULTS.connect_timeout)
_WAITS = " s, ".join(f"{_DEFAULTS.delay(n):g}" for n in range(3))

NETWORK_HELP = f"""OTA server connection (environment):
  OTA_SERVER           server base URL, http(s)://host[:port] (overrides the config's 'server')
  OTA_USERNAME, OTA_USERPW, OTA_AUTH_STRING
                       the account's secrets (override a credentials file and the config)
  OTA_CREDENTIALS_FILE JSON file with username, userpw, auth-string (mode 0600; written by
                       'ota-build admin partner --credentials-out')
  OTA_CONNECT_TIMEOUT  seconds to wait for a connection (default: {_DEFAULTS.connect_timeout:g})
  OTA_READ_TIMEOUT     seconds to wait for the server's answer (default: {_DEFAULTS.read_timeout:g})
  OTA_RETRIES          how often a failed call is retried (default: {_DEFAULTS.retries}); the waits between
                       attempts are {_WAITS} s... (at most 30 s), and each retry
                       prints one WARNING line. Calls that change something (POST) are
                       retried only when they cannot have reached the server (connection
                       refused, connect timeout). With the defaults, a server that accepts
                       connections but never answers fails a call after {_HANG:.0f} s, an
                       address where nothing answers (packets dropped) after {_UNREACHABLE:.0f} s.
"""


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
    server_setting: str = "server"  # where ``server`` came from: "OTA_SERVER" or "<path>: field 'server'"

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

    def server_url(self) -> str:
        """The server base URL, checked (``check_server_url``); ConfigError naming its setting if empty or bad."""
        self.require("server")
        return check_server_url(self.server, self.server_setting)


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

    raw_server = env.get("OTA_SERVER") or doc.get("server", "")
    server = raw_server.rstrip("/")  # unless that leaves no "://": check_server_url shows the value as given
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
        server=server if "://" in server else raw_server,
        credentials=Credentials(secret("username"), secret("userpw"), secret("auth-string")),
        server_setting="OTA_SERVER" if env.get("OTA_SERVER") else f"{path}: field 'server'",
    )
