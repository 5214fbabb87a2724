"""The one safety check of a package zip (seed 001's ``<pkg>-<branch>-<version>.zip``), made by the
server when a package is uploaded and by the device before it extracts one.

``check_zip`` reads only the archive's central directory (no entry is decompressed), so it is cheap
for any size. It refuses what would make an extraction write outside its directory or fill the disk.
The sizes it checks are the ones the archive declares: an extractor must still stop writing an
entry past its declared ``file_size`` (``safe_members`` gives the entries with those sizes).
"""

from __future__ import annotations

import os
import re
import stat
import zipfile
from typing import List

from ota_build.core.errors import OtaError

#: total uncompressed size of a package's entries (bytes)
MAX_TOTAL = 4 * 1024 ** 3
#: uncompressed / compressed, per entry and for the whole archive (deflate's own ceiling is about 1030)
MAX_RATIO = 200
#: entries this small may compress better than MAX_RATIO (a file of zeros): their ratio is not checked
RATIO_FLOOR = 1024 * 1024
MAX_ENTRIES = 100_000

_DRIVE = re.compile(r"[A-Za-z]:")


class UnsafeZipError(OtaError):
    """A zip that must not be stored or extracted (one-line message naming the problem)."""


def check_entry_name(name: str) -> None:
    """Raise UnsafeZipError unless ``name`` is a relative path that stays inside the extraction directory."""
    if not name or "\x00" in name:
        raise UnsafeZipError(f"zip entry {name!r}: empty or contains NUL")
    if "\\" in name:
        raise UnsafeZipError(f"zip entry {name!r}: backslash in the name")
    if name.startswith("/") or _DRIVE.match(name):
        raise UnsafeZipError(f"zip entry {name!r}: absolute path")
    if ".." in name.split("/"):
        raise UnsafeZipError(f"zip entry {name!r}: '..' in the path")


def safe_members(path: str, max_total: int = MAX_TOTAL, max_ratio: float = MAX_RATIO) -> List[zipfile.ZipInfo]:
    """The entries of the zip at ``path`` once it passed every check (see ``check_zip``)."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as exc:
        raise UnsafeZipError(f"not a zip archive ({exc})") from None
    if not infos:
        raise UnsafeZipError("the zip archive has no entries")
    if len(infos) > MAX_ENTRIES:
        raise UnsafeZipError(f"the zip archive has {len(infos)} entries (at most {MAX_ENTRIES})")
    seen = set()
    total = 0
    for info in infos:
        check_entry_name(info.filename)
        if info.filename in seen:
            raise UnsafeZipError(f"zip entry {info.filename!r}: appears twice")
        seen.add(info.filename)
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise UnsafeZipError(f"zip entry {info.filename!r}: a symbolic link")
        if info.file_size > RATIO_FLOOR and info.file_size > max_ratio * max(info.compress_size, 1):
            raise UnsafeZipError(f"zip entry {info.filename!r}: expands {info.compress_size} to {info.file_size} "
                                 f"bytes (more than {max_ratio:g} times)")
        total += info.file_size
    if total > max_total:
        raise UnsafeZipError(f"the zip archive expands to {total} bytes (at most {max_total})")
    archive = os.path.getsize(path)
    if total > RATIO_FLOOR and total > max_ratio * max(archive, 1):
        raise UnsafeZipError(f"the zip archive of {archive} bytes expands to {total} bytes "
                             f"(more than {max_ratio:g} times)")
    return infos


def check_zip(path: str, max_total: int = MAX_TOTAL, max_ratio: float = MAX_RATIO) -> int:
    """Check the zip at ``path``; its total uncompressed size. Raises UnsafeZipError (one line) when it is
    not a zip, has no entries (a bare end-of-archive record), has an entry named absolutely, with ``..``,
    a backslash or a drive letter, a duplicate or a symbolic link, or expands past ``max_total`` bytes or
    more than ``max_ratio`` times (an entry, or the whole archive)."""
    return sum(info.file_size for info in safe_members(path, max_total, max_ratio))
