"""Seed 002's CoAP side (aiocoap): the server that RIOT devices fetch manifests and slots from, and the
client that sends notifications.

* ``GET /<publish_id>/manifest|slot0|slot1``: 2.05 with the bytes; anything larger than one block goes
  block-wise (Block2, RFC 7959; the client's block size up to 1024 bytes), each block read from the file at its
  offset (no whole-file copy per block); Size2 tells the total. 4.04 with a message when missing.
* ``GET /.well-known/core``: the resources as RFC 6690 link format.
* ``notify``: a CoAP PUT per device with the original's payload, each with its outcome.

``ota-build serve`` runs the server in processes of its own (``CoapServers``, ``--coap-workers``), not in
uvicorn's: its workers do not each bind the UDP port, and the CoAP server shares no GIL or garbage collector
with the HTTP server.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import stat
from typing import Any, Dict, List, Sequence

from ota_build.server.publications import PARTS, Publications

log = logging.getLogger(__name__)

MAX_SZX = 6  # 1024-byte blocks, the largest a UDP block may be (szx 7 is BERT, TCP only)
CT_LINK_FORMAT = 40
CT_OCTET_STREAM = 42


def _aiocoap() -> Any:
    import aiocoap

    return aiocoap


def link_format(publications: Publications) -> str:
    """``/.well-known/core``: one link per published file (RFC 6690)."""
    links = ['</.well-known/core>;ct=40']
    for pub in publications.list():
        for part in PARTS:
            links.append(f'</{pub.publish_id}/{part}>;ct={CT_OCTET_STREAM};sz={pub.sizes.get(part, 0)}')
    return ",".join(links)


class PublicationResource:
    """The root of the CoAP site: every path is looked up in the publications when the request comes."""

    def __init__(self, publications: Publications):
        from aiocoap import Code, Message, resource
        from aiocoap.optiontypes import BlockOption

        class _Root(resource.Resource):  # type: ignore[misc]
            async def needs_blockwise_assembly(self, request: Any) -> bool:
                return False  # Block2 is answered here, one slice per request

            async def render(self, request: Any) -> Any:
                return outer.render(request)

        outer = self
        self.publications = publications
        self.resource = _Root()
        self._message, self._code, self._block = Message, Code, BlockOption.BlockwiseTuple

    def render(self, request: Any) -> Any:
        """The response to one request."""
        Message, Code = self._message, self._code
        path = tuple(request.opt.uri_path)
        if request.code != Code.GET:
            return Message(code=Code.METHOD_NOT_ALLOWED, payload=b"only GET is served here")
        if path == (".well-known", "core"):
            resp = Message(code=Code.CONTENT, payload=link_format(self.publications).encode("utf-8"))
            resp.opt.content_format = CT_LINK_FORMAT
            return resp
        file_path = self.publications.file_name(path[0], path[1]) if len(path) == 2 else None
        resp = self._file(request, file_path) if file_path is not None else None
        if resp is None:
            return Message(code=Code.NOT_FOUND, payload=f"File {'/'.join(path)} not found on server".encode())
        return resp

    def _file(self, request: Any, file_path: str) -> Any:
        """The block the request asks for (the whole file when it fits one block), or None if there is no such
        file. One open, fstat and pread per block: nothing is cached, so a republish is seen at once."""
        Message, Code = self._message, self._code
        try:
            fd = os.open(file_path, os.O_RDONLY)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return None
            total = st.st_size
            block2 = request.opt.block2
            if block2 is None and total <= 1 << (MAX_SZX + 4):
                resp = Message(code=Code.CONTENT, payload=os.pread(fd, total, 0))
                resp.opt.content_format = CT_OCTET_STREAM
                return resp
            number, szx = (block2.block_number, min(block2.size_exponent, MAX_SZX)) if block2 else (0, MAX_SZX)
            size = 1 << (szx + 4)
            offset = number * size
            if offset >= total and not (offset == 0 and total == 0):
                return Message(code=Code.BAD_OPTION, payload=b"Block2 beyond the end of the resource")
            chunk = os.pread(fd, size, offset)
        finally:
            os.close(fd)
        resp = Message(code=Code.CONTENT, payload=chunk)
        resp.opt.content_format = CT_OCTET_STREAM
        resp.opt.block2 = self._block(number, offset + len(chunk) < total, szx)
        if number == 0:
            resp.opt.size2 = total
        return resp


def server_transports(host: str) -> List[str]:
    """UDP only (aiocoap's default would also open TCP, TLS and WebSocket ports): ``simplesocketserver`` on one
    address (measured ~15 % faster per block), ``udp6`` on a wildcard (it answers from the address asked)."""
    return ["udp6"] if host in ("", "::", "0.0.0.0") else ["simplesocketserver"]


async def start_server(publications: Publications, host: str, port: int) -> Any:
    """An aiocoap server context on UDP (host, port) serving ``publications``."""
    aiocoap = _aiocoap()
    root = PublicationResource(publications)
    return await aiocoap.Context.create_server_context(root.resource, bind=(host, port),
                                                       transports=server_transports(host))


def _event_loop(host: str) -> asyncio.AbstractEventLoop:
    """uvloop for the single-address transport when installed (about a fifth less CPU per block, measured), else the
    standard loop. ``udp6`` (wildcard binds) keeps the standard loop: it reads ancillary data and ICMP errors
    from its socket itself, and aiocoap's UDP client lost answers on uvloop (``notify_devices_blocking``)."""
    if server_transports(host) == ["simplesocketserver"]:
        try:
            import uvloop

            return uvloop.new_event_loop()  # type: ignore[no-any-return]
        except ImportError:
            pass
    return asyncio.new_event_loop()


#: garbage-collector thresholds of a CoAP worker process. aiocoap keeps every response of a confirmable request
#: for EXCHANGE_LIFETIME (247 s) to answer duplicates: ~30 tracked objects per 1 KiB block, so the default
#: thresholds (700, 10, 10) spent 2.9 s of 4.5 s CPU in collections scanning them during a 20 x 1 MiB download
GC_THRESHOLDS = (50_000, 20, 100)


def serve_process(data_dir: str, host: str, port: int, ready: Any) -> None:
    """Body of one CoAP worker process: bind (SO_REUSEPORT: aiocoap sets it, so workers share the port and the
    kernel keeps each client on one of them), tell ``ready`` ("ok" or the error), serve until the parent is gone.

    Ctrl-C reaches the whole process group: the worker ignores SIGINT and ends with its parent (``CoapServers``
    terminates it, and it checks every second that its parent still runs)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()
    loop = _event_loop(host)
    asyncio.set_event_loop(loop)
    try:
        context = loop.run_until_complete(start_server(Publications(data_dir), host, port))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which prints one line
        ready.send(f"{type(exc).__name__}: {exc}")
        return
    ready.send("ok")
    ready.close()
    gc.collect()
    gc.freeze()  # the imported modules' objects are never garbage: out of every later collection
    gc.set_threshold(*GC_THRESHOLDS)

    def watch() -> None:
        if os.getppid() != parent:
            loop.stop()
        else:
            loop.call_later(1.0, watch)

    loop.call_later(1.0, watch)
    try:
        loop.run_forever()
    finally:
        loop.run_until_complete(context.shutdown())


class CoapServers:
    """``workers`` CoAP server processes sharing one UDP port (not threads of the HTTP server: the GIL, the
    garbage collector and the event loop are theirs alone). ``start`` raises OSError if one cannot bind."""

    def __init__(self, data_dir: str, host: str, port: int, workers: int = 1):
        self.data_dir, self.host, self.port, self.workers = data_dir, host, port, workers
        self.processes: List[Any] = []

    def start(self, timeout: float = 60) -> None:
        """Start the workers; return when every one serves."""
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")  # nothing of the parent's (threads, sockets, loop) is inherited
        for i in range(self.workers):
            receiver, sender = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=serve_process, name=f"coap-server-{i}", daemon=True,
                               args=(self.data_dir, self.host, self.port, sender))
            proc.start()
            sender.close()
            self.processes.append(proc)
            answer = receiver.recv() if receiver.poll(timeout) else f"no answer within {timeout:g} s"
            receiver.close()
            if answer != "ok":
                self.stop()
                raise OSError(f"cannot listen on UDP {self.host}:{self.port}: {answer}")
        log.info("CoAP server on UDP %s:%d, %d process(es)", self.host, self.port, self.workers)

    def stop(self) -> None:
        """Terminate the workers and wait for them."""
        for proc in self.processes:
            if proc.is_alive():
                proc.terminate()
        for proc in self.processes:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join()
        self.processes = []


# --------------------------------------------------------------------------- notify

async def notify_devices(uris: Sequence[str], payload: bytes, timeout: float = 5.0) -> List[Dict[str, Any]]:
    """A CoAP PUT of ``payload`` to each URI, concurrently, each from a client context of its own (an ICMP error
    from one device must not touch another's exchange); each device's outcome: ``acknowledged`` (a 2.xx
    answer), ``error`` (another answer, or a network error) or ``timeout``."""
    aiocoap = _aiocoap()

    async def one(uri: str) -> Dict[str, Any]:
        ctx = await aiocoap.Context.create_client_context()
        try:
            request = aiocoap.Message(code=aiocoap.Code.PUT, uri=uri, payload=payload)
            response = await asyncio.wait_for(ctx.request(request).response, timeout)
        except asyncio.TimeoutError:
            return {"device": uri, "outcome": "timeout", "detail": f"no answer within {timeout:g} s"}
        except Exception as exc:  # aiocoap raises network and protocol errors of several types
            return {"device": uri, "outcome": "error", "detail": str(exc) or type(exc).__name__}
        finally:
            await ctx.shutdown()
        outcome = "acknowledged" if response.code.is_successful() else "error"
        return {"device": uri, "outcome": outcome, "code": str(response.code),
                "detail": response.payload.decode("utf-8", "replace")[:200]}

    return list(await asyncio.gather(*(one(u) for u in uris)))


def notify_devices_blocking(uris: Sequence[str], payload: bytes, timeout: float = 5.0) -> List[Dict[str, Any]]:
    """``notify_devices`` on a standard-library event loop of its own (call it from a worker thread).

    aiocoap's UDP client is not meant for uvloop (uvicorn's loop): with one shared client context on uvloop, 8 of 40
    answers were lost when another device's port was closed; on its own standard loop with a context per device,
    0 of 80."""
    loop = asyncio.SelectorEventLoop()
    try:
        return loop.run_until_complete(notify_devices(uris, payload, timeout))
    finally:
        loop.close()
