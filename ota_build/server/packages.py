"""Seed 001's package API: ``/test``, ``/latestVersion``, ``/getVersion``, ``PUT /upload``
and the files under ``/otafiles/`` (the document) and ``/ota-files/`` (the original code).

Bodies keep the original's ``status`` field (and ``content.json`` as a JSON
string); unlike the original the HTTP status matches it. "Latest" is by
version order (0.0.10 > 0.0.9), not text order.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any, Dict, List, Optional

from fastapi import APIRouter, Depends, File, Form, Path, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from sqlalchemy import bindparam, select
from sqlalchemy.exc import IntegrityError

from .auth import Principal, authenticate, require_partner
from .models import Package
from .storage import TooLarge, check_name, discard

log = logging.getLogger(__name__)
router = APIRouter(tags=["packages (seed 001)"])

REQUIRED_KEYS = ("package", "version", "branch", "local", "remote", "sha256", "BeforeUpdate", "AfterUpdate",
                 "dependencies")


def version_key(version: str) -> str:
    """A string that sorts like the version: numbers numerically, 0.0.10 after 0.0.9."""
    parts = []
    for token in re.findall(r"\d+|[A-Za-z]+", version):
        parts.append("n" + token.lstrip("0").zfill(12) if token.isdigit() else "a" + token.lower())
    return ".".join(parts)[:400]


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
    with db.engine.connect() as conn:
        return conn.execute(_LATEST, {"package": package, "branch": branch}).scalar()


def latest_answer(db, package: Optional[str], branch: Optional[str]) -> "tuple[int, Dict[str, Any]]":  # noqa: ANN001
    """(HTTP status, body) of ``/latestVersion``; shared by the route and the ASGI fast path."""
    if not package or not branch:
        return 400, {"status": 400, "message": "parameters 'package' and 'branch' are required"}
    if len(package) > 100 or len(branch) > 100:
        return 400, {"status": 400, "message": "parameters 'package' and 'branch' are at most 100 characters"}
    content = latest_content(db, package, branch)
    if content is None:
        return 404, {"status": 404, "message": f"no version of {package} on branch {branch}"}
    return 200, {"status": 200, "content.json": content}


@router.get("/latestVersion")
def latest_version(request: Request, package: Optional[str] = Query(None, max_length=100),
                   branch: Optional[str] = Query(None, max_length=100)) -> JSONResponse:
    """The highest version's ``content.json`` (as a JSON string, like the original).

    Served by ``LatestVersionFastPath`` (app.py) before routing; this route
    documents it in the OpenAPI description and answers identically."""
    status, doc = latest_answer(request.app.state.db, package, branch)
    return JSONResponse(doc, status_code=status)


class LatestVersionFastPath:
    """ASGI wrapper answering ``GET /latestVersion`` without the framework's routing and validation.

    It is the hottest read (devices poll it); this cuts its cost to one parse of
    the query string and one indexed query."""

    def __init__(self, app: Any, db: Any):
        self.app = app
        self.db = db

    async def __call__(self, scope: Dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/latestVersion" or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        from urllib.parse import parse_qs

        try:
            query = parse_qs(scope.get("query_string", b"").decode("utf-8"), max_num_fields=20)
        except (UnicodeDecodeError, ValueError):
            query = {}
        status, doc = latest_answer(self.db, (query.get("package") or [None])[0], (query.get("branch") or [None])[0])
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
    q = select(Package).where(Package.name == package)
    if branch:
        q = q.where(Package.branch == branch)
    if version:
        q = q.where(Package.version == version)
    with request.app.state.db.session() as s:
        rows = s.scalars(q.order_by(Package.branch, Package.version_key)).all()
        items: List[Dict[str, Any]] = [{"name": p.name, "branch": p.branch, "version": p.version,
                                        "content": p.content, "size": p.size, "sha256": p.sha256} for p in rows]
    return body(200, list=items)


def store_package(request: Request, content_text: str, upload: Any, overwrite: bool) -> JSONResponse:
    """Validate, check and store one package (shared by ``PUT /upload`` and the web form)."""
    storage = request.app.state.storage
    try:
        content = json.loads(content_text)
    except ValueError:
        return body(400, message="JSONDecodeError: field 'content' is not JSON")
    if not isinstance(content, dict):
        return body(400, message="Json Content Error: field 'content' must be a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in content]
    if missing:
        return body(400, message=f"Json Content Error: field '{missing[0]}' is missing")
    try:
        pkg = check_name(content["package"], "package")
        branch = check_name(content["branch"], "branch")
        version = check_name(content["version"], "version")
        final = storage.package_path(pkg, branch, version)
    except (ValueError, TypeError) as exc:
        return body(400, message=str(exc))
    sha_claimed = str(content["sha256"]).lower()
    db = request.app.state.db
    with db.session() as s:
        row = s.scalar(select(Package).where(Package.name == pkg, Package.branch == branch,
                                             Package.version == version))
    if final.exists() and not overwrite:
        return body(409, message="File exists", TIP="add overwrite=1 (or force=1) to the URL to replace it")
    if row is not None and not overwrite:
        return body(409, message="Version exists", TIP="add overwrite=1 (or force=1) to the URL to replace it")
    try:
        tmp, sha, size = storage.copy_in(iter(lambda: upload.read(1024 * 1024), b""))
    except TooLarge as exc:
        return body(413, message=str(exc))
    try:
        if sha != sha_claimed:
            return body(400, message=f"SHA256 Error: field 'sha256' is {sha_claimed}, the file's is {sha}")
        with db.session() as s:
            row = s.scalar(select(Package).where(Package.name == pkg, Package.branch == branch,
                                                 Package.version == version))
            if row is None:
                s.add(Package(name=pkg, branch=branch, version=version, version_key=version_key(version),
                              content=content_text, sha256=sha, size=size))
            elif overwrite:
                row.content, row.sha256, row.size = content_text, sha, size
            else:
                return body(409, message="Version exists")
            try:
                s.flush()  # takes the row lock / unique check before the file appears
            except IntegrityError:
                s.rollback()
                return body(409, message="Version exists")
            storage.publish(tmp, final)
            s.commit()
    finally:
        discard(tmp)
    log.info("package %s %s %s stored (%d bytes)", pkg, branch, version, size)
    return body(200, message="OK", sha256=sha, size=size,
                url=f"/otafiles/{pkg}/{branch}/{pkg}-{branch}-{version}.zip")


@router.put("/upload")
async def upload(request: Request, file: Optional[UploadFile] = File(None), content: Optional[str] = Form(None),
                 force: Optional[str] = Query(None, max_length=8), overwrite: Optional[str] = Query(None, max_length=8),
                 principal: Principal = Depends(authenticate)) -> JSONResponse:
    """Upload a package: multipart ``file`` plus ``content`` (its content.json, a form field).
    The sha256 is recomputed; an existing version is refused unless ``overwrite=1`` (or ``force=1``)."""
    require_partner(principal)
    if file is None or content is None:
        return body(400, message="No file or content: multipart fields 'file' and 'content' are required")
    replace = (force or "").lower() in ("1", "true") or (overwrite or "").lower() in ("1", "true")
    return await run_in_threadpool(store_package, request, content, file.file, replace)


def _send(request: Request, package: str, branch: str, filename: str) -> Response:
    from .app import RangeFileResponse

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




@router.get("/otafiles/{package}/{branch}/{filename}", response_class=Response,
            responses={200: {"content": {"application/zip": {}}}})
def otafiles(request: Request, package: str = Path(..., max_length=100), branch: str = Path(..., max_length=100),
            filename: str = Path(..., max_length=100)) -> Response:
    """A package file, at the path the seed document gives."""
    return _send(request, package, branch, filename)


@router.get("/ota-files/{package}/{branch}/{filename}", response_class=Response,
            responses={200: {"content": {"application/zip": {}}}})
def ota_files(request: Request, package: str = Path(..., max_length=100), branch: str = Path(..., max_length=100),
            filename: str = Path(..., max_length=100)) -> Response:
    """The same file at the path the original code served."""
    return _send(request, package, branch, filename)
