"""Seed 001's developer side: zip a folder, write its ``content.json`` with the
real SHA-256 of the zip, and upload both to ``PUT /upload``.

The original ``pack.py`` reused the previous version's sha256 (so every upload
failed) and sent ``content`` as a file part; here the digest is computed and
``content`` is a form field, as the server reads it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from typing import Any, Dict, Optional

import requests

from .errors import ServerError, UsageError
from .fsutil import atomic_open, atomic_write_text

log = logging.getLogger(__name__)


def zip_folder(folder: str, output: str) -> str:
    """Zip ``folder`` (relative arcnames, deterministic order) atomically into ``output``; returns its sha256."""
    if not os.path.isdir(folder):
        raise UsageError(f"{folder}: not a directory")
    with atomic_open(output) as fh:
        with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for root, dirs, files in os.walk(folder):
                dirs.sort()
                for name in sorted(files):
                    full = os.path.join(root, name)
                    if os.path.abspath(full) == os.path.abspath(output):
                        continue
                    zf.write(full, os.path.relpath(full, folder))
    digest = hashlib.sha256()
    with open(output, "rb") as fh:
        for chunk in iter(lambda: fh.read(1024 * 1024), b""):
            digest.update(chunk)
    return digest.hexdigest()


def make_content(package: str, branch: str, version: str, sha256: str, server: str = "",
                 description: str = "", update_info: str = "", local: str = "", before: str = "",
                 after: str = "", base: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """content.json of the seed's table (keys in its order), starting from ``base`` if given."""
    content: Dict[str, Any] = dict(base or {})
    content.update({"package": package, "description": description or content.get("description", ""),
                    "updateInfo": update_info or content.get("updateInfo", ""), "version": version,
                    "branch": branch, "local": local or content.get("local", ""),
                    "remote": server or content.get("remote", ""), "sha256": sha256,
                    "BeforeUpdate": before or content.get("BeforeUpdate", ""),
                    "AfterUpdate": after or content.get("AfterUpdate", ""),
                    "dependencies": content.get("dependencies", {})})
    return content


def upload_package(server: str, token: str, zip_path: str, content: Dict[str, Any], overwrite: bool = False,
                   timeout: float = 300.0) -> Dict[str, Any]:
    """``PUT /upload`` (multipart: form field ``content``, file ``file``); raises ServerError on refusal."""
    url = server.rstrip("/") + "/upload" + ("?overwrite=1" if overwrite else "")
    try:
        with open(zip_path, "rb") as fh:
            resp = requests.put(url, headers={"Authorization": f"Bearer {token}"},
                                data={"content": json.dumps(content)},
                                files={"file": (os.path.basename(zip_path), fh, "application/zip")},
                                timeout=timeout)
    except requests.RequestException as exc:
        raise ServerError(f"PUT /upload: cannot reach {server}: {type(exc).__name__}") from None
    try:
        doc = resp.json()
    except ValueError:
        doc = {}
    if resp.status_code != 200 or doc.get("status") != 200:
        raise ServerError(f"PUT /upload: HTTP {resp.status_code}: {doc.get('message') or resp.reason}")
    return doc


def pack(folder: str, package: str, branch: str, version: str, output: Optional[str] = None,
         server: Optional[str] = None, token: Optional[str] = None, overwrite: bool = False,
         description: str = "") -> Dict[str, Any]:
    """Zip, write content.json next to the zip, and upload when ``server`` is given."""
    from .server.storage import check_name

    for value, field in ((package, "--package"), (branch, "--branch"), (version, "--version")):
        try:
            check_name(value, field)
        except ValueError as exc:
            raise UsageError(str(exc).replace("field ", "")) from None
    output = output or f"{package}-{branch}-{version}.zip"
    sha = zip_folder(folder, output)
    content = make_content(package, branch, version, sha, server or "", description)
    content_path = os.path.join(os.path.dirname(os.path.abspath(output)), "content.json")
    atomic_write_text(content_path, json.dumps(content, indent=4, ensure_ascii=False) + "\n")
    result: Dict[str, Any] = {"zip": output, "content": content_path, "sha256": sha}
    if server:
        if not token:
            raise UsageError("--token (or OTA_TOKEN) is required to upload")
        result["server"] = upload_package(server, token, output, content, overwrite)
    return result
