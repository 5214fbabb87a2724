"""core.files: atomic (and, on request, durable) writes; the one whole-file SHA-256."""

from __future__ import annotations

import hashlib
import io
import os

import pytest

from ota_build.core import files
from ota_build.core.files import atomic_open, atomic_write_bytes, file_sha256, replace_without_flush


@pytest.mark.parametrize("durable", [False, True])
def test_atomic_write_replaces_and_leaves_no_temporary_file(tmp_path, monkeypatch, durable):
    synced = []
    monkeypatch.setattr(files.os, "fsync", lambda fd: synced.append(fd))
    target = tmp_path / "out.bin"
    atomic_write_bytes(target, b"old")
    atomic_write_bytes(target, b"new", durable=durable)
    assert target.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["out.bin"]
    assert bool(synced) == durable  # fsync only when asked


def test_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "out.bin"
    atomic_write_bytes(target, b"old")
    with pytest.raises(RuntimeError):
        with atomic_open(target) as fh:
            fh.write(b"half")
            raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["out.bin"]


def test_replace_without_flush_behaves_as_os_replace(tmp_path):
    (tmp_path / "new").write_bytes(b"new")
    replace_without_flush(tmp_path / "new", tmp_path / "fresh")  # no target yet
    assert (tmp_path / "fresh").read_bytes() == b"new" and not (tmp_path / "new").exists()
    (tmp_path / "new").write_bytes(b"newer")
    replace_without_flush(tmp_path / "new", tmp_path / "fresh")  # over a file
    assert (tmp_path / "fresh").read_bytes() == b"newer" and sorted(os.listdir(tmp_path)) == ["fresh"]
    (tmp_path / "d").mkdir()
    (tmp_path / "new").write_bytes(b"x")
    with pytest.raises(OSError):
        replace_without_flush(tmp_path / "new", tmp_path / "d")  # never swaps a directory away
    assert (tmp_path / "d").is_dir() and (tmp_path / "new").read_bytes() == b"x"


def test_file_sha256_of_a_path_and_of_an_open_file(tmp_path):
    data = os.urandom(files.HASH_CHUNK + 12345)
    path = tmp_path / "f"
    path.write_bytes(data)
    assert file_sha256(path) == file_sha256(str(path)) == hashlib.sha256(data).hexdigest()
    stream = io.BytesIO(b"head" + data)
    stream.seek(4)
    assert file_sha256(stream) == hashlib.sha256(data).hexdigest()  # from where it stands
