"""Seed 001's developer side: zip a folder, write its ``content.json`` with the
real SHA-256 of the zip, and upload both to ``PUT /upload``.

As in the original, ``content.json`` is written next to the zip (by default both
in the working directory) and sent as a form field; it is not part of the zip.
When the zip is written inside the folder being zipped, pack's own outputs
(the zip, its temporary files, earlier ``<package>-<branch>-<version>.zip`` and
their ``content.json``) are left out of it.

The original ``pack.py`` reused the previous version's sha256 (so every upload
failed) and sent ``content`` as a file part; here the digest is computed and
``content`` is a form field, as the server reads it.
"""

from __future__ import annotations

import json
import logging
import os
import zipfile
from typing import Any, Dict, List, Optional, Set

from ota_build.core.config import NetworkSettings
from ota_build.core.errors import ServerError, UsageError
from ota_build.core.names import check_name
from ota_build.core.files import file_sha256, atomic_open, atomic_write_text
from ota_build.partner.client import VERIFY_BYTES_PER_SECOND
from ota_build.partner.http import OtaSession

log = logging.getLogger(__name__)


CONTENT_NAME = "content.json"
"""The file ``pack`` writes next to the zip (the original ``pack.py`` wrote it next to its zip, in the
working directory); it is sent as the ``content`` form field, never put inside the zip."""

NO_SERVER = ("no OTA server configured: pass --server or set OTA_PACKAGE_SERVER or OTA_SERVER "
             "(or use --no-upload to only write the zip and content.json)")
NO_TOKEN = ("no API token to upload with: set OTA_TOKEN to the token or pass --token-file FILE "
            "(or use --no-upload to only write the zip and content.json)")


def _temp_of(name: str) -> Optional[str]:
    """The final name an ``atomic_open`` temporary file ``.<name>.<random>.tmp`` belongs to, else None."""
    if not (name.startswith(".") and name.endswith(".tmp")):
        return None
    parts = name[1:].rsplit(".", 2)
    return parts[0] if len(parts) == 3 and parts[0] else None


class OwnOutputs:
    """Decides which files under the folder being zipped are ``pack``'s own outputs.

    Those are: the zip being written (``output``) and its temporary files, and the ``content.json`` written
    next to it; when ``package`` and ``branch`` are given, also files named like a zip of them
    (``<package>-<branch>-<version>.zip``, any version: earlier runs' outputs), their temporary files, and a
    ``content.json`` beside such a zip.
    """

    def __init__(self, output: str, package: Optional[str] = None, branch: Optional[str] = None) -> None:
        self.output_dir, self.output_name = os.path.split(os.path.realpath(output))
        self.prefix = f"{package}-{branch}-" if package and branch else None

    def is_pack_zip(self, name: Optional[str]) -> bool:
        """Whether ``name`` is ``<package>-<branch>-<version>.zip`` with a valid version."""

        if not (self.prefix and name and name.startswith(self.prefix) and name.endswith(".zip")):
            return False
        try:
            check_name(name[len(self.prefix):-len(".zip")], "version")
        except ValueError:
            return False
        return True

    def excluded(self, directory: str, names: List[str]) -> Set[str]:
        """The members of ``names`` (the files in ``directory``) that are pack's outputs."""
        is_output_dir = os.path.realpath(directory) == self.output_dir
        beside_zip = is_output_dir or any(self.is_pack_zip(n) for n in names)
        out: Set[str] = set()
        for name in names:
            final = _temp_of(name)
            if self.is_pack_zip(name) or self.is_pack_zip(final):
                out.add(name)
            elif is_output_dir and self.output_name in (name, final):
                out.add(name)
            elif beside_zip and CONTENT_NAME in (name, final):
                out.add(name)
        return out


def zip_folder(folder: str, output: str, own: Optional[OwnOutputs] = None) -> str:
    """Zip ``folder`` (relative arcnames, deterministic order) atomically into ``output``; returns its sha256.

    Files ``own`` marks as pack's outputs are left out (by default ``output``, its temporary files and the
    content.json beside it: see OwnOutputs).
    """
    if not os.path.isdir(folder):
        raise UsageError(f"{folder}: not a directory")
    own = own or OwnOutputs(output)
    with atomic_open(output) as fh:
        with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for root, dirs, files in os.walk(folder):
                dirs.sort()
                skip = own.excluded(root, files)
                for name in sorted(files):
                    full = os.path.join(root, name)
                    if name in skip:
                        log.info("%s: left out of the zip (an output of pack)", full)
                        continue
                    zf.write(full, os.path.relpath(full, folder))
    return file_sha256(output)


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
                   settings: Optional[NetworkSettings] = None) -> Dict[str, Any]:
    """``PUT /upload`` (multipart: form field ``content``, file ``file``); raises ServerError on refusal.

    Sent through the partner transport (``ota_build.partner.http``: timeouts and retries from
    ``OTA_CONNECT_TIMEOUT``, ``OTA_READ_TIMEOUT``, ``OTA_RETRIES`` unless ``settings`` is given). The read
    timeout grows with the zip, as the server checks its sha256 before it answers. Without ``overwrite``
    the upload creates a version, so once it may have reached the server it is not sent again (a second
    one would only be refused as "Version exists")."""
    path = "/upload" + ("?overwrite=1" if overwrite else "")
    with OtaSession(server, settings) as session, open(zip_path, "rb") as fh:
        resp = session.call("PUT", path, what="PUT /upload", retry_safe=overwrite,
                            headers={"Authorization": f"Bearer {token}"}, data={"content": json.dumps(content)},
                            files={"file": (os.path.basename(zip_path), fh, "application/zip")},
                            timeout=session.timeout(os.path.getsize(zip_path) / VERIFY_BYTES_PER_SECOND))
    try:
        doc = resp.json()
    except ValueError:
        doc = {}
    if resp.status_code != 200 or doc.get("status") != 200:
        raise ServerError(f"PUT /upload: HTTP {resp.status_code}: {doc.get('message') or resp.reason}")
    return doc


def pack(folder: str, package: str, branch: str, version: str, output: Optional[str] = None,
         server: Optional[str] = None, token: Optional[str] = None, overwrite: bool = False,
         description: str = "", upload: bool = True) -> Dict[str, Any]:
    """Zip ``folder``, write content.json next to the zip and, if ``upload``, ``PUT /upload`` both to ``server``.

    With ``upload``, a missing ``server`` (ServerError, exit 3) or ``token`` (UsageError, exit 2) is refused
    before anything is written. ``server`` also fills content.json's ``remote``.
    """

    for value, field in ((package, "--package"), (branch, "--branch"), (version, "--version")):
        try:
            check_name(value, field)
        except ValueError as exc:
            raise UsageError(str(exc).replace("field ", "")) from None
    if upload and not server:
        raise ServerError(NO_SERVER)
    if upload and not token:
        raise UsageError(NO_TOKEN)
    output = output or f"{package}-{branch}-{version}.zip"
    sha = zip_folder(folder, output, OwnOutputs(output, package, branch))
    content = make_content(package, branch, version, sha, server or "", description)
    content_path = os.path.join(os.path.dirname(os.path.abspath(output)), CONTENT_NAME)
    atomic_write_text(content_path, json.dumps(content, indent=4, ensure_ascii=False) + "\n")
    result: Dict[str, Any] = {"zip": output, "content": content_path, "sha256": sha}
    if upload and server and token:
        result["server"] = upload_package(server, token, output, content, overwrite)
    return result
