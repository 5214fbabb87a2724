"""The FastAPI application: settings, error format and the routers.

``create_app(settings)`` builds an app; ``app_from_env()`` is the factory
uvicorn workers call (settings from ``OTA_DATA_DIR``, ``OTA_DATABASE_URL``,
``OTA_MAX_UPLOAD_BYTES``, ``OTA_PACKAGER_KEY``). Debug mode does not exist.
"""

from __future__ import annotations

import errno
import logging
import os
import tempfile
from dataclasses import dataclass
from typing import Any, Optional, Tuple

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ota_build import __version__
from ota_build.server.auth import LoginThrottle
from ota_build.server.db import open_database
from ota_build.server.guard import BodyGuard
from ota_build.server.publications import DEFAULT_NOTIFY_ALLOW, parse_networks
from ota_build.server.responses import STATUS_OF_KIND, error_response
from ota_build.server.services import ServiceError
from ota_build.server.storage import Storage

log = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD = 4 * 1024 ** 3


@dataclass(frozen=True)
class Settings:
    """Server settings."""

    data_dir: str
    database_url: Optional[str] = None
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD
    run_migrations: bool = True
    latest_cache_ttl: float = 1.0
    packager_key: Optional[str] = None  # seed 000's signing key; None: <data-dir>/packager/signing-key.pem
    #: seed 002: the CoAP host and port put into notifications, the address ranges notify may reach, its timeout
    coap_host: str = "::1"
    coap_port: int = 5683
    coap_notify_allow: Tuple[Any, ...] = ()
    coap_notify_timeout: float = 5.0


def settings_from_env() -> Settings:
    """Settings from the environment (set by ``ota-build serve`` for its workers)."""
    return Settings(data_dir=os.environ.get("OTA_DATA_DIR", "ota-data"),
                    database_url=os.environ.get("OTA_DATABASE_URL") or None,
                    max_upload_bytes=int(os.environ.get("OTA_MAX_UPLOAD_BYTES", DEFAULT_MAX_UPLOAD)),
                    run_migrations=os.environ.get("OTA_SKIP_MIGRATIONS") != "1",
                    latest_cache_ttl=float(os.environ.get("OTA_LATEST_CACHE_TTL", "1.0")),
                    packager_key=os.environ.get("OTA_PACKAGER_KEY") or None,
                    coap_host=os.environ.get("OTA_COAP_HOST", "::1"),
                    coap_port=int(os.environ.get("OTA_COAP_PORT", "5683")),
                    coap_notify_allow=tuple(parse_networks(
                        [v for v in os.environ.get("OTA_COAP_NOTIFY_ALLOW", ",".join(DEFAULT_NOTIFY_ALLOW)).split(",") if v])),
                    coap_notify_timeout=float(os.environ.get("OTA_COAP_NOTIFY_TIMEOUT", "5.0")))


def _error(status: int, message: str, path: str) -> JSONResponse:
    return error_response(status, message, path)


def create_app(settings: Settings) -> FastAPI:
    """Build the application over ``settings`` (opens the DB, applies migrations)."""
    from ota_build.server import afero, device, packager, packages, publish, web
    from ota_build.server.packager_store import PackagerStore

    app = FastAPI(title="meta-ota OTA service", version=__version__, debug=False,
                  description="Afero-compatible partner OTA API, device API and seed-001 package API. "
                              "See docs/server.md.")
    app.state.settings = settings
    app.state.db = open_database(settings.data_dir, settings.database_url, run_migrations=settings.run_migrations)
    app.state.storage = Storage(settings.data_dir, settings.max_upload_bytes)
    app.state.latest = packages.LatestVersions(app.state.db, settings.latest_cache_ttl)
    app.state.packager = PackagerStore(settings.data_dir, settings.packager_key, settings.max_upload_bytes)
    app.state.login_throttle = LoginThrottle()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        resp = _error(exc.status_code, str(exc.detail), request.url.path)
        for key, value in (getattr(exc, "headers", None) or {}).items():
            resp.headers[key] = value
        return resp

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return _error(STATUS_OF_KIND[exc.kind], exc.message, request.url.path)

    @app.exception_handler(OSError)
    async def _os_error(request: Request, exc: OSError) -> JSONResponse:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):  # the write failed before anything was published
            log.error("%s %s: storage full: %s", request.method, request.url.path, exc)
            return _error(507, "the server's storage is full; nothing was stored, try again later", request.url.path)
        log.exception("%s %s: %s", request.method, request.url.path, exc)
        return _error(500, "internal error", request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first: Any = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "header", "form"))
        return _error(400, f"field '{where}': {first.get('msg', 'invalid')}", request.url.path)

    app.include_router(afero.router)
    app.include_router(device.router)
    app.include_router(packages.router)
    app.include_router(packager.router)
    app.include_router(publish.router)
    app.include_router(web.router)
    app.add_middleware(BodyGuard, db=app.state.db, max_upload_bytes=settings.max_upload_bytes)
    return app


def asgi_app(settings: Settings) -> Any:
    """The application as served: ``create_app`` plus the ``/latestVersion`` fast path."""
    from ota_build.server.packages import LatestVersionFastPath

    app = create_app(settings)
    # Multipart files beyond 1 MiB roll over from memory into tempfile's directory: the data
    # directory's tmp/ in the served process, never the system /tmp (unnamed files: nothing is left).
    tempfile.tempdir = str(app.state.storage.tmp_dir)
    return LatestVersionFastPath(app, app.state.latest)


def app_from_env() -> Any:
    """uvicorn factory: ``uvicorn --factory ota_build.server.app:app_from_env``."""
    return asgi_app(settings_from_env())


__all__ = ["create_app", "app_from_env", "Settings", "HTTPException"]
