"""The agent's local info/operation API (seed 001), bound to loopback.

``GET /test``, ``GET /getInfo`` and ``POST /startUpdate`` (runs one check in the
background). Every request needs ``Authorization: Bearer <token>``; the
responses keep seed 001's ``status`` body field and send the same HTTP status.
Built on the standard library's ``http.server``.
"""

from __future__ import annotations

import hmac
import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, Tuple

from ota_build.core.errors import ConfigError, OtaError
from ota_build.device.agent import Agent

log = logging.getLogger(__name__)
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class _Server4(ThreadingHTTPServer):
    daemon_threads = True


class _Server6(ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True


def bind_loopback(host: str, port: int, handler: Any) -> ThreadingHTTPServer:
    """A threading HTTP server on ``host``:``port`` (IPv4 or IPv6 loopback); ConfigError in one line when it cannot listen."""
    server_class = _Server6 if ":" in host else _Server4
    try:
        return server_class((host, port), handler)
    except OSError as exc:  # socket.gaierror (no such address here), EADDRINUSE, EADDRNOTAVAIL (no IPv6) ...
        reason = exc.strerror or str(exc)
        raise ConfigError(f"local API: cannot listen on {host!r} port {port}: {reason} (field 'flask.host'/'flask.port')") from None


class LocalApi:
    """Serves the local API for ``agent`` until ``shutdown``."""

    def __init__(self, agent: Agent, host: str = "127.0.0.1", port: int = 0):
        if host not in LOOPBACK:
            raise ConfigError(f"local API host {host!r}: must be a loopback address")
        if not agent.config.local_token:
            raise ConfigError(f"{agent.config.path}: field 'token': is missing (the local API needs a token)")
        self.agent = agent
        self.lock = threading.Lock()
        self.worker: threading.Thread = threading.Thread()
        api = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "ota-agent"

            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug("local api: " + fmt, *args)

            def _send(self, status: int, body: Dict[str, Any]) -> None:
                data = json.dumps({"status": status, **body}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorised(self) -> bool:
                given = self.headers.get("Authorization", "")
                expected = f"Bearer {api.agent.config.local_token}"
                if hmac.compare_digest(given.encode(), expected.encode()):
                    return True
                self._send(401, {"error": "missing or wrong token"})
                return False

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                if not self._authorised():
                    return
                status, body = api.get(self.path)
                self._send(status, body)

            def do_POST(self) -> None:  # noqa: N802
                if not self._authorised():
                    return
                status, body = api.post(self.path)
                self._send(status, body)

        self.httpd = bind_loopback(host, port, Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def get(self, path: str) -> Tuple[int, Dict[str, Any]]:
        """Route a GET."""
        if path == "/test":
            return 200, {}
        if path == "/getInfo":
            try:
                return 200, {"info": self.agent.info(), "busy": self.worker.is_alive()}
            except OtaError as exc:
                return 500, {"error": str(exc)}
        return 404, {"error": "not found"}

    def post(self, path: str) -> Tuple[int, Dict[str, Any]]:
        """Route a POST."""
        if path != "/startUpdate":
            return 404, {"error": "not found"}
        with self.lock:
            if self.worker.is_alive():
                return 409, {"error": "an update check is already running"}
            self.worker = threading.Thread(target=self._check, daemon=True)
            self.worker.start()
        return 202, {"message": "update check started"}

    def _check(self) -> None:
        try:
            self.agent.check_once()
        except OtaError as exc:
            log.error("update check failed: %s", exc)

    def start(self) -> "LocalApi":
        """Serve in a background thread."""
        self.thread.start()
        return self

    def shutdown(self) -> None:
        """Stop serving."""
        self.httpd.shutdown()
        self.httpd.server_close()
