"""Seed 000's package format: our replacement for the closed ``otapackager-cli``.

A package is a **reproducible zip** (fixed timestamps, entries sorted by name,
fixed permissions, fixed compression level) holding:

* the two input files, ``model.pkl`` and ``model.bat`` (the boot file);
* ``PackageInfo.xml`` and ``Deploy.xml``, the descriptors ``otapackager-cli`` wrote
  (``/PackageDescription/BaseSettings/{PackageType,Version,OS,Arch}``,
  ``/PackageDescription/{Password,InstallerTool}``,
  ``/DeployDescription/DeploySetting/{DeployFileName,RebootFlag,ResultCheckScript}``);
* ``manifest.json``: the package name and version, the signing algorithm and key id,
  and every other entry's name, size and SHA-256 (canonical JSON: sorted keys, no spaces);
* ``manifest.sig``: the raw signature of the exact bytes of ``manifest.json``, made
  with our signing keys (``core.signing``), so a device verifies the package with
  the operator's public key (``verify_package``).

Two packs of the same inputs with the same options and an Ed25519 key are
byte-identical (Ed25519 signatures are deterministic; ECDSA and RSA-PSS
signatures are randomized, so with those keys only ``manifest.sig`` differs).

XML is written with ``xml.etree.ElementTree`` and zips with ``zipfile``: no
hand-built XML or zip structures. Standard library only.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import shutil
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Dict, List, Mapping, Union

from ota_build.core.errors import CorruptError, TruncatedError, UsageError
from ota_build.core.files import PathLike, atomic_open, sha256_of
from ota_build.core.header import SigAlg
from ota_build.core.signing import sign_message

log = logging.getLogger(__name__)

#: the input file names the original service accepts (exactly these)
MODEL_NAME = "model.pkl"
BATCH_NAME = "model.bat"
INPUT_NAMES = (MODEL_NAME, BATCH_NAME)
#: the package's name as the seed's README downloads it
PACKAGE_NAME = "model.zip"
DEPLOY_XML = "Deploy.xml"
PACKAGE_INFO_XML = "PackageInfo.xml"
MANIFEST = "manifest.json"
MANIFEST_SIG = "manifest.sig"
FORMAT = "meta-ota-packager/1"
#: manifest.json and manifest.sig are small; a bigger one is refused before it is read
MAX_MANIFEST_BYTES = 1 << 20

#: the zip's fixed entry time (the earliest a zip can hold) and permissions; entries are deflated at zlib's default level
ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)
ZIP_FILE_MODE = 0o100644
_CHUNK = 1 << 20

#: ``-v x.x.x.x`` of otapackager-cli; ``-n name(a-zA-Z0-9_)``
VERSION_RE = re.compile(r"[0-9]{1,9}(\.[0-9]{1,9}){3}")
NAME_RE = re.compile(r"[A-Za-z0-9_]{1,64}")

Source = Union[PathLike, IO[bytes]]


@dataclass(frozen=True)
class PackOptions:
    """The descriptor values (otapackager-cli's options, with its defaults)."""

    name: str = "model"                 # -n: also PackageType
    version: str = "1.0.0.0"            # -v x.x.x.x
    platform: str = ""                  # -p: Arch
    os: str = ""                        # -s: OS
    boot_file: str = BATCH_NAME         # -b: DeployFileName
    check_file: str = ""                # -c: ResultCheckScript
    reboot: bool = False                # -r: RebootFlag
    installer_tool: str = ""            # -t: InstallerTool

    def check(self) -> "PackOptions":
        """Return self if the values are valid, else raise UsageError naming the field."""
        if not NAME_RE.fullmatch(self.name):
            raise UsageError(f"name {self.name!r}: must be 1-64 characters of a-z A-Z 0-9 _")
        if not VERSION_RE.fullmatch(self.version):
            raise UsageError(f"version {self.version!r}: must be four dot-separated numbers (x.x.x.x)")
        if self.boot_file not in INPUT_NAMES:
            raise UsageError(f"boot file {self.boot_file!r}: must be one of {', '.join(INPUT_NAMES)}")
        if self.check_file and self.check_file not in INPUT_NAMES:
            raise UsageError(f"check file {self.check_file!r}: must be one of {', '.join(INPUT_NAMES)}")
        for label, value in (("platform", self.platform), ("os", self.os), ("installer tool", self.installer_tool)):
            if len(value) > 100 or any(ord(c) < 32 for c in value):
                raise UsageError(f"{label}: at most 100 printable characters")
        return self


@dataclass(frozen=True)
class PackResult:
    """What ``pack`` wrote: the manifest (parsed), the package's SHA-256 and size."""

    manifest: Dict[str, Any]
    sha256: str
    size: int


def _xml_bytes(root: ET.Element) -> bytes:
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def package_info_xml(options: PackOptions) -> bytes:
    """``PackageInfo.xml``: ``/PackageDescription/BaseSettings/{PackageType,Version,OS,Arch}``, ``Password``,
    ``InstallerTool``."""
    root = ET.Element("PackageDescription")
    base = ET.SubElement(root, "BaseSettings")
    for tag, value in (("PackageType", options.name), ("Version", options.version), ("OS", options.os),
                       ("Arch", options.platform)):
        ET.SubElement(base, tag).text = value
    ET.SubElement(root, "Password").text = ""
    ET.SubElement(root, "InstallerTool").text = options.installer_tool
    return _xml_bytes(root)


def deploy_xml(options: PackOptions) -> bytes:
    """``Deploy.xml``: ``/DeployDescription/DeploySetting/{DeployFileName,RebootFlag,ResultCheckScript}``."""
    root = ET.Element("DeployDescription")
    setting = ET.SubElement(root, "DeploySetting")
    for tag, value in (("DeployFileName", options.boot_file), ("RebootFlag", "1" if options.reboot else "0"),
                       ("ResultCheckScript", options.check_file)):
        ET.SubElement(setting, tag).text = value
    return _xml_bytes(root)


def canonical_json(doc: Mapping[str, Any]) -> bytes:
    """The one byte form of a manifest: sorted keys, no spaces, UTF-8."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _zipinfo(name: str, size: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=ZIP_DATE_TIME)
    info.create_system = 3  # Unix, so the permissions below mean the same everywhere
    info.external_attr = ZIP_FILE_MODE << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    info.file_size = size
    return info


def _open_source(src: Source) -> "tuple[IO[bytes], bool]":
    if hasattr(src, "read"):
        return src, False  # type: ignore[return-value]
    return open(src, "rb"), True  # type: ignore[arg-type]


def _hash_and_size(fh: IO[bytes]) -> "tuple[str, int]":
    """SHA-256 (hex) and size of ``fh`` from where it stands to its end; the position is kept."""
    start = fh.tell()
    digest, size = sha256_of(fh)
    fh.seek(start)
    return digest.hex(), size


def pack(inputs: Mapping[str, Source], out: IO[bytes], signer: Any, options: PackOptions = PackOptions()) -> PackResult:
    """Write the package of ``inputs`` (``{"model.pkl": path or binary file, "model.bat": ...}``) to ``out``.

    ``out`` must be seekable and readable (a file opened ``w+b``, a BytesIO). ``signer`` is a ``core.signing.Signer``.
    Open files are read from where they stand, so a caller that opened both inputs
    together packs that snapshot whatever is renamed over their names meanwhile.
    """
    options.check()
    missing = [n for n in INPUT_NAMES if n not in inputs]
    extra = sorted(set(inputs) - set(INPUT_NAMES))
    if missing or extra:
        raise UsageError(f"a package holds exactly {' and '.join(INPUT_NAMES)} (missing: {missing}, unexpected: {extra})")
    opened: Dict[str, IO[bytes]] = {}
    to_close: List[IO[bytes]] = []
    try:
        for name in INPUT_NAMES:
            fh, mine = _open_source(inputs[name])
            opened[name] = fh
            if mine:
                to_close.append(fh)
        generated = {PACKAGE_INFO_XML: package_info_xml(options), DEPLOY_XML: deploy_xml(options)}
        files: Dict[str, Dict[str, Any]] = {}
        for name, fh in opened.items():
            sha, size = _hash_and_size(fh)
            files[name] = {"name": name, "size": size, "sha256": sha}
        for name, data in generated.items():
            files[name] = {"name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        manifest: Dict[str, Any] = {
            "format": FORMAT, "name": options.name, "version": options.version, "bootFile": options.boot_file,
            "signature": {"algorithm": signer.algorithm.label, "keyId": signer.key_id.hex()},
            "files": [files[n] for n in sorted(files)],
        }
        manifest_bytes = canonical_json(manifest)
        signature = sign_message(signer, manifest_bytes)  # ECDSA: low-S, as every verify path wants
        generated[MANIFEST] = manifest_bytes
        generated[MANIFEST_SIG] = signature
        start = out.tell()
        with zipfile.ZipFile(out, "w") as zf:
            for name in sorted(set(generated) | set(opened)):
                if name in generated:
                    data = generated[name]
                    with zf.open(_zipinfo(name, len(data)), "w") as dst:
                        dst.write(data)
                else:
                    info = _zipinfo(name, files[name]["size"])
                    with zf.open(info, "w") as dst:
                        copied = _copy_checked(opened[name], dst)
                    if copied != (files[name]["sha256"], files[name]["size"]):
                        raise CorruptError(f"{name}: changed while it was being packed")
        out.flush()
        end = out.tell()
    finally:
        for fh in to_close:
            fh.close()
    out.seek(start)
    sha, size = _hash_and_size(out)
    out.seek(end)
    log.info("packed %s %s: %d bytes, sha256 %s", options.name, options.version, size, sha)
    return PackResult(manifest, sha, size)


def _copy_checked(src: IO[bytes], dst: IO[bytes]) -> "tuple[str, int]":
    """Copy ``src`` into a zip member while hashing it: (sha256 hex, size). (``core.package.copy_hashing``
    writes to a file descriptor; a zip member has none.)"""
    digest = hashlib.sha256()
    size = 0
    while True:
        chunk = src.read(_CHUNK)
        if not chunk:
            break
        digest.update(chunk)
        size += len(chunk)
        dst.write(chunk)
    return digest.hexdigest(), size


def pack_file(inputs: Mapping[str, Source], output: PathLike, signer: Any, options: PackOptions = PackOptions(),
              durable: bool = False) -> PackResult:
    """``pack`` into ``output`` atomically (a temporary file in the same directory renamed over it)."""
    with atomic_open(output, 0o644, durable) as fh:
        tmp = open(fh.fileno(), "w+b", closefd=False)  # the temp file, readable for the final hash
        with tmp:
            return pack(inputs, tmp, signer, options)


def _name_of(src: Source) -> str:
    """How an error names a package: its path, or the open file's name."""
    return str(getattr(src, "name", src)) if hasattr(src, "read") else str(src)


def read_manifest(path: Source) -> "tuple[Dict[str, Any], bytes, bytes]":
    """(manifest, its bytes, signature bytes) of a package; CorruptError when it is not one."""
    try:
        with zipfile.ZipFile(path) as zf:  # type: ignore[arg-type]
            return _manifest_of(zf)
    except zipfile.BadZipFile as exc:
        raise CorruptError(f"{_name_of(path)}: not a package zip: {exc}") from None


def _manifest_of(zf: zipfile.ZipFile) -> "tuple[Dict[str, Any], bytes, bytes]":
    names = zf.namelist()
    for need in (MANIFEST, MANIFEST_SIG):
        if need not in names:
            raise CorruptError(f"package has no {need}")
    for need in (MANIFEST, MANIFEST_SIG):
        if zf.getinfo(need).file_size > MAX_MANIFEST_BYTES:
            raise CorruptError(f"{need}: larger than {MAX_MANIFEST_BYTES} bytes")
    raw = zf.read(MANIFEST)
    sig = zf.read(MANIFEST_SIG)
    try:
        manifest = json.loads(raw.decode("utf-8"))
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise ValueError(f"format is not {FORMAT}")
        meta = manifest.get("signature")
        if not isinstance(meta, dict) or not all(isinstance(meta.get(k), str) for k in ("algorithm", "keyId")):
            raise ValueError("'signature' needs the strings 'algorithm' and 'keyId'")
        files = manifest.get("files")
        if not isinstance(files, list):
            raise ValueError("'files' is not a list")
        for entry in files:
            if not (isinstance(entry, dict) and isinstance(entry.get("name"), str)
                    and isinstance(entry.get("size"), int) and entry["size"] >= 0
                    and isinstance(entry.get("sha256"), str) and re.fullmatch(r"[0-9a-f]{64}", entry["sha256"])):
                raise ValueError(f"bad file entry {entry!r:.80}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptError(f"{MANIFEST}: malformed ({exc})") from None
    return manifest, raw, sig


def verify_package(path: Source, keyring: Any, backend: str = "auto") -> Dict[str, Any]:
    """Verify a package against ``keyring`` (a ``core.signing.Keyring`` of trusted public keys).

    Checks the signature of ``manifest.json`` (BadSignatureError; UnknownKeyError
    for an untrusted key), that the zip holds exactly the files the manifest lists
    plus the manifest and its signature (CorruptError), and each file's size
    (TruncatedError) and SHA-256 (CorruptError). Returns the manifest.
    """
    from ota_build.core.signing import verify_signature

    try:
        with zipfile.ZipFile(path) as zf:  # type: ignore[arg-type]
            manifest, raw, sig = _manifest_of(zf)
            meta = manifest["signature"]
            try:
                alg = SigAlg.from_label(meta["algorithm"])
                key_id = bytes.fromhex(meta["keyId"])
            except ValueError as exc:
                raise CorruptError(f"{MANIFEST}: {exc}") from None
            key = keyring.get(key_id)
            verify_signature(key, alg, raw, sig, backend=backend)
            listed = {e["name"]: e for e in manifest["files"]}
            present = [n for n in zf.namelist() if n not in (MANIFEST, MANIFEST_SIG)]
            if sorted(present) != sorted(listed) or len(present) != len(set(present)):
                raise CorruptError(f"package entries {sorted(present)} differ from the manifest's {sorted(listed)}")
            for name in sorted(listed):
                _check_entry(zf, name, listed[name])
    except zipfile.BadZipFile as exc:
        raise CorruptError(f"{_name_of(path)}: not a package zip: {exc}") from None
    return manifest


def _check_entry(zf: zipfile.ZipFile, name: str, entry: Mapping[str, Any]) -> None:
    try:
        with zf.open(name) as fh:
            digest, size = sha256_of(fh)
    except (zipfile.BadZipFile, EOFError, OSError) as exc:  # CRC error, truncated member
        raise CorruptError(f"{name}: unreadable ({exc})") from None
    if size != int(entry["size"]):
        raise TruncatedError(f"{name}: {size} bytes, the manifest says {entry['size']}")
    if digest.hex() != entry["sha256"]:
        raise CorruptError(f"{name}: SHA-256 differs from the manifest")


def extract(path: PathLike, directory: PathLike, keyring: Any) -> Dict[str, Any]:
    """Verify the package, then write its two input files into ``directory`` (atomically). Returns the manifest."""
    manifest = verify_package(path, keyring)
    with zipfile.ZipFile(path) as zf:
        for name in INPUT_NAMES:
            with zf.open(name) as src, atomic_open(Path(directory) / name) as dst:
                shutil.copyfileobj(src, dst, _CHUNK)
    return manifest


def pack_bytes(inputs: Mapping[str, bytes], signer: Any, options: PackOptions = PackOptions()) -> bytes:
    """``pack`` of in-memory inputs into bytes (tests, small tools)."""
    buf = io.BytesIO()
    pack({k: io.BytesIO(v) for k, v in inputs.items()}, buf, signer, options)
    return buf.getvalue()


__all__ = ["BATCH_NAME", "DEPLOY_XML", "FORMAT", "INPUT_NAMES", "MANIFEST", "MANIFEST_SIG", "MODEL_NAME",
           "PACKAGE_INFO_XML", "PACKAGE_NAME", "PackOptions", "PackResult", "canonical_json", "deploy_xml", "extract",
           "pack", "pack_bytes", "pack_file", "package_info_xml", "read_manifest", "verify_package"]
