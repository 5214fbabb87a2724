"""Seed 001's package API: ``/test``, ``/latestVersion``, ``/getVersion``, ``PUT /upload``
and the files under ``/otafiles/`` (the document) and ``/ota-files/`` (the original code).

Bodies keep the original's ``status`` field (and ``content.json`` as a JSON
string); unlike the original the HTTP status matches it. "Latest" is by
version order (0.0.10 > 0.0.9), not text order.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from typing import IO, Any, Dict, List, Optional, Tuple

from fastapi import APIRouter, Depends, File, Form, Path, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from sqlalchemy import bindparam, select

from ota_build.core.names import check_name
from ota_build.server import services
from ota_build.server.auth import Principal, authenticate_or_basic, require_partner
from ota_build.server.models import Package
from ota_build.server.responses import STATUS_OF_KIND, RangeFileResponse
from ota_build.server.services import ServiceError
from ota_build.server.services import version_key as version_key  # re-exported: benchmarks/bench_server.py uses it

log = logging.getLogger(__name__)
router = APIRouter(tags=["packages (seed 001)"])

def body(status: int, **fields: Any) -> JSONResponse:
    """The original's body (``status`` field) with the matching HTTP status."""
    return JSONResponse({"status": status, **fields}, status_code=status)


@router.get("/test")
def test() -> Dict[str, int]:
    """Liveness check of the original API."""
    return {"status": 200}


_LATEST = (select(Package.content).where(Package.name == bindparam("package"), Package.branch == bindparam("branch"))
           .order_by(Package.version_key.desc()).limit(1))  # built once: parameters bound per call


def latest_content(db, package: str, branch: str) -> Optional[str]:  # noqa: ANN001
    """content.json of the highest version of package/branch, or None (one indexed query)."""
    with db.reader.connect() as conn:
        return conn.execute(_LATEST, {"package": package, "branch": branch}).scalar()


class LatestVersions:
    """``/latestVersion`` answers: the indexed query behind a small per-process cache.

    Devices poll this endpoint, so every worker keeps the answer for each
    (package, branch) for at most ``ttl`` seconds. A package stored through
    this process invalidates its entry at once; other worker processes see it
    within ``ttl`` (default 1 s, ``ota-build serve --latest-cache-ttl``; 0
    turns the cache off). At most ``max_entries`` answers are kept (least
    recently used dropped), so random names cannot grow memory. A miss that
    races with an invalidation is not cached (generation check).

    On the request path a miss is read on the event loop itself (about 0.1 ms
    on SQLite, 0.3 ms on PostgreSQL; the reader's statement timeout bounds a
    stall), so when an entry expires under load the first request refreshes it
    and the others find it fresh. Handing the query to the thread pool made
    the p99 under load four times worse (GIL hand-over between the loop and
    the worker thread; benchmarks/README.md).
    """

    def __init__(self, db: Any, ttl: float = 1.0, max_entries: int = 10_000):
        self.db = db
        self.ttl = max(0.0, float(ttl))
        self.max_entries = max_entries
        self._entries: "OrderedDict[Tuple[str, str], Tuple[float, Optional[str]]]" = OrderedDict()
        self._lock = threading.Lock()
        self._generation = 0

    def cached(self, package: str, branch: str) -> Tuple[bool, Optional[str]]:
        """(True, answer) when a fresh answer is cached, else (False, None); never touches the database."""
        if self.ttl <= 0:
            return False, None
        key = (package, branch)
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None and hit[0] > time.monotonic():
                self._entries.move_to_end(key)
                return True, hit[1]
        return False, None

    def content(self, package: str, branch: str) -> Optional[str]:
        """content.json of the highest version of package/branch, or None; cached for ``ttl``."""
        hit, value = self.cached(package, branch)
        if hit:
            return value
        if self.ttl <= 0:
            return latest_content(self.db, package, branch)
        key = (package, branch)
        now = time.monotonic()
        with self._lock:
            generation = self._generation
        value = latest_content(self.db, package, branch)
        with self._lock:
            if generation == self._generation:
                self._entries[key] = (now + self.ttl, value)
                self._entries.move_to_end(key)
                while len(self._entries) > self.max_entries:
                    self._entries.popitem(last=False)
        return value

    def invalidate(self, package: str, branch: str) -> None:
        """Forget the cached answer for package/branch (called after a package is stored)."""
        with self._lock:
            self._generation += 1
            self._entries.pop((package, branch), None)


def latest_answer(latest: LatestVersions, package: Optional[str],
                  branch: Optional[str]) -> "tuple[int, Dict[str, Any]]":
    """(HTTP status, body) of ``/latestVersion``; shared by the route and the ASGI fast path
    (both call it on the event loop: see ``LatestVersions``)."""
    if not package or not branch:
        return 400, {"status": 400, "message": "parameters 'package' and 'branch' are required"}
    if len(package) > 100 or len(branch) > 100:
        return 400, {"status": 400, "message": "parameters 'package' and 'branch' are at most 100 characters"}
    content = latest.content(package, branch)
    if content is None:
        return 404, {"status": 404, "message": f"no version of {package} on branch {branch}"}
    return 200, {"status": 200, "content.json": content}


@router.get("/latestVersion")
async def latest_version(request: Request, package: Optional[str] = Query(None, max_length=100),
                   branch: Optional[str] = Query(None, max_length=100)) -> JSONResponse:
    """The highest version's ``content.json`` (as a JSON string, like the original).

    Served by ``LatestVersionFastPath`` (app.py) before routing; this route
    documents it in the OpenAPI description and answers identically."""
    status, doc = latest_answer(request.app.state.latest, package, branch)
    return JSONResponse(doc, status_code=status)


class LatestVersionFastPath:
    """ASGI wrapper answering ``GET /latestVersion`` without the framework's routing and validation.

    It is the hottest read (devices poll it); this cuts its cost to one parse of
    the query string and one indexed query."""

    def __init__(self, app: Any, latest: LatestVersions):
        self.app = app
        self.latest = latest

    async def __call__(self, scope: Dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/latestVersion" or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        from urllib.parse import parse_qs

        try:
            query = parse_qs(scope.get("query_string", b"").decode("utf-8"), max_num_fields=20)
        except (UnicodeDecodeError, ValueError):
            query = {}
        status, doc = latest_answer(self.latest, (query.get("package") or [None])[0], (query.get("branch") or [None])[0])
        payload = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})


@router.get("/getVersion")
def get_version(request: Request, package: Optional[str] = Query(None, max_length=100),
                branch: Optional[str] = Query(None, max_length=100),
                version: Optional[str] = Query(None, max_length=100)) -> JSONResponse:
    """Every version matching the filters (``package`` required); an empty list when none."""
    if not package:
        return body(400, message="parameter 'package' is required")
    with request.app.state.db.session() as s:
        rows = services.package_versions(s, package, branch, version)
        items: List[Dict[str, Any]] = [{"name": p.name, "branch": p.branch, "version": p.version,
                                        "content": p.content, "size": p.size, "sha256": p.sha256} for p in rows]
    return body(200, list=items)


def store_package(request: Request, content_text: str, upload: IO[bytes], overwrite: bool,
                  principal: Principal) -> JSONResponse:
    """Store one package (``services.store_package``) and answer in the original's shape.

    The first partner to store a package name owns it; another partner's
    upload of that name is refused with 403 (``PackageOwner``)."""
    try:
        with request.app.state.db.session() as s:
            stored = services.store_package(s, request.app.state.storage, content_text, upload, overwrite,
                                            principal.partner_pk)
    except ServiceError as exc:
        return body(STATUS_OF_KIND[exc.kind], message=exc.message, **exc.details)
    request.app.state.latest.invalidate(stored.package, stored.branch)
    return body(200, message="OK", sha256=stored.sha256, size=stored.size, url=stored.url)


@router.put("/upload")
async def upload(request: Request, file: Optional[UploadFile] = File(None), content: Optional[str] = Form(None),
                 force: Optional[str] = Query(None, max_length=8), overwrite: Optional[str] = Query(None, max_length=8),
                 principal: Principal = Depends(authenticate_or_basic)) -> JSONResponse:
    """Upload a package: multipart ``file`` plus ``content`` (its content.json, a form field).
    The sha256 is recomputed; an existing version is refused unless ``overwrite=1`` (or ``force=1``)."""
    require_partner(principal)
    if file is None or content is None:
        return body(400, message="No file or content: multipart fields 'file' and 'content' are required")
    replace = (force or "").lower() in ("1", "true") or (overwrite or "").lower() in ("1", "true")
    return await run_in_threadpool(store_package, request, content, file.file, replace, principal)


def _send(request: Request, package: str, branch: str, filename: str) -> Response:

    try:
        check_name(package, "package")
        check_name(branch, "branch")
        check_name(filename, "filename")
    except ValueError as exc:
        return body(400, message=str(exc))
    path = request.app.state.storage.root / "otafiles" / package / branch / filename
    if not path.is_file():
        return body(404, message="file not found")
    return RangeFileResponse(path, media_type="application/zip")




@router.head("/otafiles/{package}/{branch}/{filename}", response_class=Response, include_in_schema=False)  # curl -I
@router.get("/otafiles/{package}/{branch}/{filename}", response_class=Response,
            responses={200: {"content": {"application/zip": {}}}})
def otafiles(request: Request, package: str = Path(..., max_length=100), branch: str = Path(..., max_length=100),
            filename: str = Path(..., max_length=100)) -> Response:
    """A package file, at the path the seed document gives."""
    return _send(request, package, branch, filename)


@router.head("/ota-files/{package}/{branch}/{filename}", response_class=Response, include_in_schema=False)  # curl -I
@router.get("/ota-files/{package}/{branch}/{filename}", response_class=Response,
            responses={200: {"content": {"application/zip": {}}}})
def ota_files(request: Request, package: str = Path(..., max_length=100), branch: str = Path(..., max_length=100),
            filename: str = Path(..., max_length=100)) -> Response:
    """The same file at the path the original code served."""
    return _send(request, package, branch, filename)
