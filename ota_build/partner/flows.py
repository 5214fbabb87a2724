"""The partner-side flows over ``OtaClient``: register a record, upload and
associate an image, list images, deploy. Shared by ``partner-ota-hub-uploader``,
``partner-ota-hub-deploy`` and ``ota-build upload/list/deploy``."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from ota_build.partner.client import OtaClient
from ota_build.core.config import OtaConfig, load_config
from ota_build.core.errors import RecordError, ServerError, UsageError
from ota_build.core.package import inspect_file
from ota_build.core.record import load_record, write_record
from ota_build.core.record import locate_record as _locate_record
from ota_build.core.version import parse_build_number, version_string

log = logging.getLogger(__name__)


def load_server_config(conf: str, credentials: Optional[str] = None) -> OtaConfig:
    """The configuration at ``conf`` (secrets from ``credentials`` or as ``load_config`` finds them) for a
    command that talks to the server; ServerError (exit 3) when it names no server."""
    cfg = load_config(conf, credentials)
    if not cfg.server:
        raise ServerError(f"no OTA server configured: set OTA_SERVER or the 'server' key in {conf}")
    return cfg


def register_record(cfg: OtaConfig, build_number: str, debug: bool, path: str,
                    client: Optional[OtaClient] = None) -> Dict[str, Any]:
    """Create the record on the server (it assigns id and versionNumber) and write it to ``path``."""
    client = client or OtaClient(cfg)
    version = version_string(cfg.version, parse_build_number(build_number), debug)
    if client.record_exists(cfg.name, version, cfg.ota_type):
        raise ServerError(f"version {version} of {cfg.name} is already registered on {cfg.server}; "
                          f"use another build number")
    record = client.create_record(cfg.name, cfg.description, version, cfg.ota_type, cfg.tags)
    record.setdefault("tags", list(cfg.tags))
    write_record(record, path)
    log.info("registered %s %s: id %s, versionNumber %s", cfg.name, version, record.get("id"),
             record.get("versionNumber"))
    return record


def locate_record(path_or_dir: str) -> str:
    """The record file at ``path_or_dir`` (a file, or a directory holding one) for an upload."""
    return _locate_record(path_or_dir, "run --createOTARecord first")


def resolve_image(cfg: OtaConfig, image: Optional[str] = None) -> str:
    """The image to upload: ``image``, else the config's imageFiles A/a (cwd, then the config's directory)."""
    name = image or cfg.image_file
    for candidate in (name, os.path.join(os.path.dirname(os.path.abspath(cfg.path)), name)):
        if os.path.isfile(candidate):
            return candidate
    raise UsageError(f"{cfg.path}: field 'imageFiles': image file {name!r} not found")


@dataclass
class UploadResult:
    """What an upload did."""

    record: Dict[str, Any]
    sha256: str
    url: str
    image: Optional[Dict[str, Any]]
    already: bool = False

    def summary(self) -> str:
        """One line for the user: what was uploaded and its image id."""
        rec = self.record
        if self.already:
            return f"versionNumber {rec['versionNumber']} is already uploaded"
        image_id = self.image["id"] if self.image else "(already associated)"
        return (f"uploaded {rec['name']} {rec['version']} (versionNumber {rec['versionNumber']}, "
                f"sha256 {self.sha256}); image id {image_id}")


def upload_image(cfg: OtaConfig, record_path: str, image_path: str, client: Optional[OtaClient] = None,
                 show_progress: bool = True, expected_version: Optional[str] = None) -> UploadResult:
    """Upload the image, move it to the repository, set the record's url and associate it.

    ``expected_version``: the version the caller's options give (``-n``/``-d``
    of the seed's uploader, which must match those of ``--createOTARecord``);
    a record of another version is refused before anything is sent."""
    cfg.require("deviceTypeId")
    record = load_record(record_path)
    if expected_version is not None and record["version"] != expected_version:
        raise RecordError(f"{record_path}: the record is version {record['version']}, but these options give "
                          f"{expected_version}: use the same -n/-d as for --createOTARecord")
    if record["version"] != cfg.version and not str(record["version"]).startswith(cfg.version + "."):
        raise RecordError(f"{record_path}: version {record['version']} is not a build of the config's "
                          f"version {cfg.version}")
    header = inspect_file(image_path)
    if header.version_number != record["versionNumber"]:
        raise UsageError(f"{image_path}: header versionNumber {header.version_number} differs from the record's "
                         f"{record['versionNumber']} (package the image with this record)")
    client = client or OtaClient(cfg)
    if not client.record_exists(record["name"], record["version"], int(record["type"])):
        # A record made offline (the BitBake layer, or no server at --createOTARecord time): register it
        # with the versionNumber the image was built with; the server accepts it if above its latest.
        created = client.create_record(record["name"], record.get("description", ""), record["version"],
                                       int(record["type"]), record.get("tags"), record["versionNumber"])
        record["id"] = created["id"]
        log.info("registered the offline record %s %s (versionNumber %s) on the server", record["name"],
                 record["version"], record["versionNumber"])
    if client.is_associated(cfg.device_type_id, int(record["type"]), record["versionNumber"]):
        log.info("versionNumber %s is already uploaded and associated; nothing to do", record["versionNumber"])
        return UploadResult(record, "", record.get("url", ""), None, already=True)
    sha = client.upload_binary(image_path, show_progress=show_progress)
    url = client.move_to_repository(sha)
    record["url"] = url
    client.update_record(record)
    write_record(record, record_path)
    try:
        image = client.associate(cfg.device_type_id, record)
    except ServerError as exc:
        if "HTTP 409" not in str(exc):
            raise
        image = None
    return UploadResult(record, sha, url, image)


def format_table(images: List[Dict[str, Any]], partner_id: Optional[str] = None,
                 device_type_id: Optional[str] = None, ota_type: int = 5) -> str:
    """The seed's list table (Image Id, Version, Name, Description, a dashed rule); with ``partner_id``
    and ``device_type_id`` also the seed's heading and image count (``partner-ota-hub-deploy --list``)."""
    name_width = max([21] + [len(str(img.get("name", ""))) for img in images])
    row = "{:<10}  {:<15}  {:<%d}  {}" % name_width
    lines = [row.format("Image Id", "Version", "Name", "Description").rstrip(),
             row.format("-" * 10, "-" * 15, "-" * name_width, "-" * 30)]
    for img in images:
        lines.append(row.format(str(img.get("id", "")), str(img.get("version", "")), str(img.get("name", "")),
                                img.get("description", "") or "").rstrip())
    if partner_id is None:
        return "\n".join(lines)
    kind = "HUB" if ota_type == 5 else "DEVICE"
    return "\n".join([f"----  List of {kind} FULL OTA images ----", "", f"partnerId   : {partner_id}",
                      f"deviceTypeId: {device_type_id}", "", f"Total Number of Images: {len(images)}"] + lines)


def deploy(cfg: OtaConfig, image_id: str, devices: List[str], group: Optional[str] = None,
           client: Optional[OtaClient] = None) -> int:
    """Push ``image_id`` to devices and/or a group."""
    cfg.require("deviceTypeId")
    if not image_id.isdigit():
        raise UsageError(f"-i/--imageId: {image_id!r} is not an image id (digits, see --list)")
    client = client or OtaClient(cfg)
    return client.push(cfg.device_type_id, image_id, devices, group)
