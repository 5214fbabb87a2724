"""The OTA record (``full_ota_record.json``).

Written exactly as the original uploader writes it: keys sorted, indent 4,
``(',', ': ')`` separators, plus a final newline.

Inside the library a record's ``versionNumber`` is an ``int``; in the file (and
on the wire) it is a string of digits, as the seed writes it. The conversion
happens here only: ``record_from_json`` when a record is read, ``record_to_json``
when one is written (``dumps``, ``write_record``, the record embedded in a header). The original code and
Afero's recipe use ``full_ota_record.json`` (underscores); the document also
says ``full-ota-record.json``. We write the former and read either.
"""

from __future__ import annotations

import hashlib
import logging
import json
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from ota_build.core.config import OtaConfig, load_config
from ota_build.core.errors import RecordError, UsageError
from ota_build.core.files import atomic_write_text
from ota_build.core.schema import load_schema, load_validated, validate
from ota_build.core.version import parse_build_number, resolve_version_number, version_string

log = logging.getLogger(__name__)

RECORD_NAME = "full_ota_record.json"
RECORD_NAMES = (RECORD_NAME, "full-ota-record.json")

Record = Dict[str, Any]


def now_ms(env: Optional[Mapping[str, str]] = None) -> int:
    """Milliseconds since the epoch; ``SOURCE_DATE_EPOCH`` (seconds) wins when set."""
    env = os.environ if env is None else env
    sde = env.get("SOURCE_DATE_EPOCH", "").strip()
    if sde:
        if not sde.isdigit():
            raise RecordError(f"SOURCE_DATE_EPOCH: {sde!r} is not a number of seconds")
        return int(sde) * 1000
    return int(time.time() * 1000)


def local_record_id(partner_id: str, name: str, ota_type: int, version: str) -> str:
    """A reproducible decimal id for a record created without a server."""
    digest = hashlib.sha256(f"{partner_id}\0{name}\0{ota_type}\0{version}".encode()).digest()
    return str(int.from_bytes(digest[:6], "big"))


def new_record(cfg: OtaConfig, build_number: int, debug: bool = False,
               version_number: Optional[object] = None, timestamp_ms: Optional[int] = None,
               tags: Optional[List[str]] = None) -> Record:
    """Create the record of ``cfg`` build ``build_number`` without a server.

    ConfigError (exit 2) when the configuration has no ``partnerId``: the record carries it."""
    cfg.require("partnerId")
    version = version_string(cfg.version, build_number, debug)
    number = resolve_version_number(cfg.version, build_number, version_number)
    stamp = now_ms() if timestamp_ms is None else timestamp_ms
    record: Record = {
        "createdTimestamp": stamp,
        "description": cfg.description,
        "id": local_record_id(cfg.partner_id, cfg.name, cfg.ota_type, version),
        "name": cfg.name,
        "partnerId": cfg.partner_id,
        "tags": list(cfg.tags if tags is None else tags),
        "type": cfg.ota_type,
        "updatedTimestamp": stamp,
        "url": "",
        "version": version,
        "versionNumber": number,
    }
    check_record(record, "record")
    return record


def record_from_json(doc: Mapping[str, Any]) -> Record:
    """A record as read from JSON (``versionNumber`` a string of digits) with ``versionNumber`` as an int."""
    record = dict(doc)
    if isinstance(record.get("versionNumber"), str):
        record["versionNumber"] = int(record["versionNumber"])
    return record


def record_to_json(record: Mapping[str, Any]) -> Dict[str, Any]:
    """The JSON form of ``record``: ``versionNumber`` as the string of digits the file format has."""
    doc = dict(record)
    if isinstance(doc.get("versionNumber"), int) and not isinstance(doc["versionNumber"], bool):
        doc["versionNumber"] = str(doc["versionNumber"])
    return doc


def dumps(record: Mapping[str, Any]) -> str:
    """Serialise a record the way the original tool does (plus a final newline)."""
    return json.dumps(record_to_json(record), sort_keys=True, indent=4, separators=(",", ": "), ensure_ascii=False) + "\n"


def check_record(record: Mapping[str, Any], where: str) -> None:
    """Raise RecordError if ``record`` (``versionNumber`` an int) does not satisfy the record schema."""
    problem = validate(load_schema("full_ota_record"), record_to_json(record))
    if problem:
        raise RecordError(f"{where}: {problem}")


def write_record(record: Mapping[str, Any], path: str) -> None:
    """Validate and write ``record`` to ``path`` atomically."""
    check_record(record, str(path))
    atomic_write_text(path, dumps(record))


def find_record(directory: str) -> Optional[str]:
    """Path of an existing record in ``directory`` (either spelling), or None."""
    for name in RECORD_NAMES:
        candidate = Path(directory) / name
        if candidate.is_file():
            return str(candidate)
    return None


def locate_record(path_or_dir: str, hint: str = "") -> str:
    """The record file at ``path_or_dir``: the file itself, or the record (either spelling) in a directory.

    ``hint`` is appended to the error when there is none (e.g. "run --createOTARecord first")."""
    suffix = f": {hint}" if hint else ""
    if os.path.isdir(path_or_dir):
        found = find_record(path_or_dir)
        if not found:
            raise RecordError(f"{path_or_dir}: no {RECORD_NAME} (or full-ota-record.json) in this directory{suffix}")
        return found
    if not os.path.exists(path_or_dir):
        raise RecordError(f"{path_or_dir}: no OTA record{suffix}")
    return path_or_dir


def load_record(path: str) -> Record:
    """Read and validate a record file (a directory is searched for either name); ``versionNumber`` is an int."""
    if os.path.isdir(path):
        path = locate_record(path)
    return record_from_json(load_validated(path, "full_ota_record", "OTA record", RecordError))


def record_output_path(output: Optional[str], skip_tmpdir: bool) -> str:
    """Where a new record goes: -o PATH, -s (current directory) or BitBake's TMPDIR."""
    if output:
        return os.path.join(output, RECORD_NAME) if os.path.isdir(output) else output
    if skip_tmpdir:
        return os.path.join(os.getcwd(), RECORD_NAME)
    from ota_build.core.bbenv import find_tmpdir

    return os.path.join(find_tmpdir(), RECORD_NAME)


def create_record_file(conf: str, build_number: str, debug: bool, skip_tmpdir: bool,
                       output: Optional[str], version_number: Optional[str], credentials: Optional[str],
                       force: bool) -> str:
    """Shared by ``ota-build record`` and ``partner-ota-hub-uploader --createOTARecord``."""
    cfg = load_config(conf, credentials)
    number = parse_build_number(build_number)
    path = record_output_path(output, skip_tmpdir)
    existing = path if os.path.exists(path) else None
    if existing is None and os.path.basename(path) == RECORD_NAME:
        existing = find_record(os.path.dirname(path) or ".")
    if existing and not force:
        raise UsageError(f"{existing}: an OTA record already exists (remove it, or use --force to replace it)")
    record = new_record(cfg, number, debug, version_number=version_number)
    write_record(record, path)
    log.info("wrote %s (version %s, versionNumber %s)", path, record["version"], record["versionNumber"])
    return path
