"""RangeFileResponse (files sent from a memory map) over real HTTP: a real uvicorn on
127.0.0.1 serving real files, every byte compared, for whole files, ranges and HEAD."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
import requests
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse
from starlette.routing import Route

from ota_build.server.responses import RangeFileResponse

SIZES = {"empty": 0, "one": 1, "page": 4097, "chunks": 2 * RangeFileResponse.chunk_size + 12345}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    root = tmp_path_factory.mktemp("files")
    blobs = {}
    for name, size in SIZES.items():
        data = os.urandom(size)
        (root / name).write_bytes(data)
        blobs[name] = data

    async def get(request: Request) -> RangeFileResponse:
        return RangeFileResponse(root / request.path_params["name"], media_type="application/octet-stream")

    app = Starlette(routes=[Route("/f/{name}", get, methods=["GET", "HEAD"])])
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/f", blobs, root
    server.should_exit = True
    thread.join(10)


def test_the_mapped_path_is_the_one_used():
    # a Starlette upgrade that renamed these would silently fall back to read+copy
    for name in ("_handle_simple", "_handle_single_range"):
        assert hasattr(FileResponse, name)
        assert getattr(RangeFileResponse, name) is not getattr(FileResponse, name)


@pytest.mark.parametrize("name", sorted(SIZES))
def test_whole_file_and_head(served, name):  # noqa: ANN001
    url, blobs, _ = served
    resp = requests.get(f"{url}/{name}")
    assert resp.status_code == 200 and resp.content == blobs[name]
    head = requests.head(f"{url}/{name}")
    assert head.status_code == 200 and int(head.headers["content-length"]) == len(blobs[name])


@pytest.mark.parametrize("spec", ["0-0", "0-", "4096-", "-1", "-5000", "4000-4200", "CHUNK-", "1-CHUNK", "0-LAST"])
def test_single_ranges(served, spec):  # noqa: ANN001
    url, blobs, _ = served
    data = blobs["chunks"]
    spec = spec.replace("CHUNK", str(RangeFileResponse.chunk_size)).replace("LAST", str(len(data) - 1))
    first, _, last = spec.partition("-")
    if first == "":
        start, end = len(data) - int(last), len(data)
    else:
        start, end = int(first), (int(last) + 1 if last else len(data))
    resp = requests.get(f"{url}/chunks", headers={"Range": f"bytes={spec}"})
    assert resp.status_code == 206, resp.text
    assert resp.headers["content-range"] == f"bytes {start}-{end - 1}/{len(data)}"
    assert resp.content == data[start:end]


def test_resume_after_a_cut(served):  # noqa: ANN001
    url, blobs, _ = served
    data = blobs["chunks"]
    with requests.get(f"{url}/chunks", stream=True) as resp:
        got = resp.raw.read(RangeFileResponse.chunk_size + 100)  # then the connection is dropped
    rest = requests.get(f"{url}/chunks", headers={"Range": f"bytes={len(got)}-"})
    assert rest.status_code == 206 and got + rest.content == data


def test_other_range_answers(served):  # noqa: ANN001
    url, blobs, _ = served
    data = blobs["page"]
    multi = requests.get(f"{url}/page", headers={"Range": "bytes=0-9,100-109"})
    assert multi.status_code == 206 and data[0:10] in multi.content and data[100:110] in multi.content
    assert requests.get(f"{url}/page", headers={"Range": f"bytes={len(data)}-"}).status_code == 416
    stale = requests.get(f"{url}/page", headers={"Range": "bytes=0-9", "If-Range": '"not-the-etag"'})
    assert stale.status_code == 200 and stale.content == data
    assert requests.head(f"{url}/page", headers={"Range": "bytes=0-9"}).headers["content-length"] == "10"


def test_a_file_replaced_by_rename_is_served_whole(served):  # noqa: ANN001
    url, _, root = served
    path: Path = root / "swap"
    path.write_bytes(b"a" * 10000)
    with requests.get(f"{url}/swap", stream=True) as resp:
        first = resp.raw.read(100)
        tmp = root / "swap.tmp"
        tmp.write_bytes(b"b" * 20000)
        os.replace(tmp, path)  # how packages are overwritten (force=1): the old map stays valid
        rest = resp.raw.read()
    assert first + rest == b"a" * 10000
    assert requests.get(f"{url}/swap").content == b"b" * 20000
