"""The web page (server-rendered, jinja2): firmware images, packages and an upload form.

The page is public, as seed 002's was, so it shows what devices may download
(names, versions, sizes, digests) and nothing about partners or devices:
device states are for their partner only (``ota-build devices``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from ota_build.core.files import file_sha256
from ota_build.server import services
from ota_build.server.auth import principal_for
from ota_build.server.publications import Publications
from ota_build.server.services import ServiceError

router = APIRouter(tags=["web"])
templates = Jinja2Templates(directory=str(Path(__file__).resolve().parent / "templates"))


def _page_data(request: Request) -> Dict[str, Any]:
    with request.app.state.db.session() as s:
        images: List[Dict[str, Any]] = [
            {"id": img.id, "name": rec.name, "version": rec.version, "versionNumber": img.version_number,
             "description": rec.description, "size": binary.size if binary else None,
             "sha256": binary.sha256 if binary else ""}
            for img, rec, binary in services.public_images(s)]
        packages = services.public_packages(s)
    publications = Publications(request.app.state.settings.data_dir).list()
    return {"images": images, "packages": packages, "publications": publications}


@router.get("/", response_class=HTMLResponse)
def index(request: Request, message: Optional[str] = None, error: Optional[str] = None) -> Response:
    """The overview page."""
    data = _page_data(request)
    return templates.TemplateResponse(request, "index.html",
                                      {**data, "message": (message or "")[:300], "error": (error or "")[:300]})


@router.post("/web/upload", response_class=HTMLResponse)
async def web_upload(request: Request, token: str = Form(..., max_length=200),
                     package: str = Form(..., max_length=100), branch: str = Form(..., max_length=100),
                     version: str = Form(..., max_length=100), description: str = Form("", max_length=500),
                     file: UploadFile = File(...)) -> Response:
    """The upload form: stores a package (content.json built here, with the file's real sha256)."""
    principal = await run_in_threadpool(principal_for, request.app.state.db, token.strip())
    if principal is None or principal.kind != "partner":
        return RedirectResponse("/?error=" + _q("a valid partner token is required"), status_code=303)

    def work() -> str:
        sha256 = file_sha256(file.file)
        file.file.seek(0)
        content = {"package": package, "description": description, "updateInfo": "", "version": version,
                   "branch": branch, "local": "", "remote": str(request.base_url), "sha256": sha256,
                   "BeforeUpdate": "", "AfterUpdate": "", "dependencies": {}}
        with request.app.state.db.session() as s:
            stored = services.store_package(s, request.app.state.storage, json.dumps(content), file.file, False,
                                            principal.partner_pk)
        request.app.state.latest.invalidate(stored.package, stored.branch)
        return f"stored {package} {branch} {version}"

    try:
        message = await run_in_threadpool(work)
    except ServiceError as exc:
        return RedirectResponse("/?error=" + _q(exc.message or "upload failed"), status_code=303)
    return RedirectResponse("/?message=" + _q(message), status_code=303)


def _q(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")
