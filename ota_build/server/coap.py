"""Seed 002's CoAP side (aiocoap): the server that RIOT devices fetch manifests and slots from, and the
client that sends notifications.

* ``GET /<publish_id>/manifest|slot0|slot1``: 2.05 with the bytes; anything larger than one block goes
  block-wise (Block2, RFC 7959; the client's block size up to 1024 bytes), each block read from the file at its
  offset (no whole-file copy per block); Size2 tells the total. 4.04 with a message when missing.
* ``GET /.well-known/core``: the resources as RFC 6690 link format.
* ``notify``: a CoAP PUT per device with the original's payload, each with its outcome.

``ota-build serve`` runs the server in processes of its own (``CoapServers``, ``--coap-workers``), not in
uvicorn's: its workers do not each bind the UDP port, and the CoAP server shares no GIL or garbage collector
with the HTTP server. A worker answers with ``StatelessGetServer`` (aiocoap's message codec, no per-exchange state,
a bounded block cache: decision 82) in a blocking socket loop; on a wildcard bind each answer leaves from the
address its request was sent to (IP_PKTINFO / IPV6_PKTINFO).
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import ipaddress
import logging
import os
import signal
import socket
import stat
import struct
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ota_build.server.publications import PARTS, Publications

log = logging.getLogger(__name__)

MAX_SZX = 6  # 1024-byte blocks, the largest a UDP block may be (szx 7 is BERT, TCP only)
URI_PATH, ACCEPT, BLOCK2 = 11, 17, 23  # option numbers (RFC 7252, RFC 7959)
PROXY_OPTIONS = (35, 39)  # Proxy-Uri, Proxy-Scheme
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
        from aiocoap import Code, Message
        from aiocoap.optiontypes import BlockOption

        self.publications = publications
        self._message, self._code, self._block = Message, Code, BlockOption.BlockwiseTuple
        self._paths: Dict[Tuple[str, str], str] = {}

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
        resp = self._file(request, file_path)[0] if file_path is not None else None
        if resp is None:
            return Message(code=Code.NOT_FOUND, payload=f"File {'/'.join(path)} not found on server".encode())
        return resp

    def block_key(self, request: Any, path: Sequence[str], block: Any) -> Optional[Tuple[Any, ...]]:
        """For a GET of a published file (Uri-Path ``path``, Block2 ``block`` or None), what names the bytes of its
        response: the file's path and identity (device, inode, modification time, size: one ``stat`` through the
        publication's link, so a republish, which swaps the link, changes it) and the block asked for; None for any
        other request."""
        if request.code != self._code.GET or len(path) != 2:
            return None
        names = (path[0], path[1])
        file_path = self._paths.get(names)
        if file_path is None:
            file_path = self.publications.file_name(*names)
            if file_path is None:
                return None
            if len(self._paths) >= 1024:  # valid names only, and a bounded number of them
                self._paths.clear()
            self._paths[names] = file_path
        try:
            st = os.stat(file_path)
        except OSError:
            return None
        block = (block.block_number, block.size_exponent) if block is not None else None
        return (file_path, (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size), block)

    def _file(self, request: Any, file_path: str) -> Tuple[Any, Optional[Tuple[int, int, int, int]]]:
        """The block the request asks for (the whole file when it fits one block) and the identity of the file read
        (as in ``block_key``), or (None, None) if there is no such file. One open, fstat and pread per block."""
        Message, Code = self._message, self._code
        try:
            fd = os.open(file_path, os.O_RDONLY)
        except OSError:
            return None, None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return None, None
            identity = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
            etag = hashlib.blake2b(repr(identity).encode(), digest_size=8).digest()
            total = st.st_size
            block2 = request.opt.block2
            if block2 is None and total <= 1 << (MAX_SZX + 4):
                resp = Message(code=Code.CONTENT, payload=os.pread(fd, total, 0))
                resp.opt.content_format = CT_OCTET_STREAM
                resp.opt.etag = etag
                return resp, identity
            number, szx = (block2.block_number, min(block2.size_exponent, MAX_SZX)) if block2 else (0, MAX_SZX)
            size = 1 << (szx + 4)
            offset = number * size
            if offset >= total and not (offset == 0 and total == 0):
                return Message(code=Code.BAD_OPTION, payload=b"Block2 beyond the end of the resource"), identity
            chunk = os.pread(fd, size, offset)
        finally:
            os.close(fd)
        resp = Message(code=Code.CONTENT, payload=chunk)
        resp.opt.content_format = CT_OCTET_STREAM
        resp.opt.etag = etag  # the same on every block of one file, another after a republish (RFC 7959 2.4)
        resp.opt.block2 = self._block(number, offset + len(chunk) < total, szx)
        if number == 0:
            resp.opt.size2 = total
        return resp, identity

    def render_block(self, request: Any, key: Optional[Tuple[Any, ...]]) -> Tuple[Any, Optional[Tuple[Any, ...]]]:
        """The response to one request whose ``block_key`` is ``key``, and ``key`` again if the response may be reused
        under it (None when it may not: anything but a block of a file, or a file replaced between the ``stat``
        and the read)."""
        if key is None:
            return self.render(request), None
        resp, identity = self._file(request, key[0])
        if resp is None:
            return self.render(request), None
        return resp, (key if identity == key[1] else None)


class StatelessGetServer:
    """The CoAP message layer for a site that serves only GET on files, without aiocoap's per-exchange state.

    Messages are decoded and encoded by aiocoap (``Message.decode``/``encode``); the responses come from
    ``PublicationResource`` (the same answers as through aiocoap's stack). This class is the message layer of
    RFC 7252 section 4 for such a server:

    * a Confirmable request gets its response piggybacked on the ACK (same Message ID and token); a
      Non-confirmable one a NON response with a Message ID of ours;
    * an empty Confirmable message (a CoAP ping) gets a Reset; a Confirmable message that is no request gets a
      Reset; ACKs, Resets and anything unparsable are dropped (aiocoap drops unparsable datagrams too);
    * a request with a critical option this site does not process gets 4.02 (section 5.4.1), one for a proxy 5.05,
      an Accept other than the resource's content-format 4.06;
    * duplicates are answered again rather than from a per-exchange cache: every request served here is a GET,
      which section 4.5 lets a server process again. aiocoap's server keeps each response for EXCHANGE_LIFETIME
      (247 s) instead, which was most of its CPU per block and grew its memory with traffic (decision 82).

    Blocks of files are kept in a bounded cache (``cache_blocks`` responses, about 2.4 KiB each with their objects,
    oldest out) keyed by the file's identity from a ``stat`` per request: 20 devices fetching one slot read it from
    disk once, and a republished file (its link swapped: a new identity) is served at once. Each file response
    carries an ETag from that identity, so a client can tell a republish in the middle of a block-wise transfer.
    """

    #: critical options processed here (Uri-Host 3, Uri-Port 7, Uri-Path 11, Uri-Query 15, Accept 17: 4.06 unless
    #: it names the resource's content-format, Block2 23); Proxy-Uri and Proxy-Scheme get 5.05, any other
    #: odd-numbered option 4.02
    PROCESSED_CRITICAL = frozenset({3, 7, URI_PATH, 15, ACCEPT, BLOCK2})

    def __init__(self, site: PublicationResource, cache_blocks: int = 4096):
        from aiocoap import ACK, CON, NON, RST, Code, Message
        from aiocoap.error import UnparsableMessage

        self.site, self.cache_blocks = site, cache_blocks
        self._cache: Dict[Tuple[Any, ...], Any] = {}
        self._message, self._code, self._unparsable = Message, Code, UnparsableMessage
        self._con, self._non, self._ack, self._rst = CON, NON, ACK, RST
        self._mid = int.from_bytes(os.urandom(2), "big")

    def answer(self, data: bytes) -> Optional[bytes]:
        """The datagram that answers ``data``, or None when it gets no answer."""
        try:
            request = self._message.decode(data)
        except (self._unparsable, ValueError):  # a text option that is not UTF-8 raises UnicodeDecodeError
            log.debug("CoAP: dropping an unparsable datagram")
            return None
        mtype = request.mtype
        if mtype is self._ack or mtype is self._rst:
            return None
        code = request.code
        if code == self._code.EMPTY or not code.is_request():
            if mtype is self._con:
                return self._encode(self._message(code=self._code.EMPTY), self._rst, request.mid, b"")
            return None
        try:
            response = self._respond(request)
        except Exception:  # noqa: BLE001 - one request's failure must not end the server
            log.exception("CoAP: answering %s failed", "/".join(request.opt.uri_path))
            response = self._message(code=self._code.INTERNAL_SERVER_ERROR)
        if mtype is self._con:
            return self._encode(response, self._ack, request.mid, request.token)
        self._mid = (self._mid + 1) & 0xFFFF
        return self._encode(response, self._non, self._mid, request.token)

    def _respond(self, request: Any) -> Any:
        path: List[str] = []
        block = accept = None
        for option in request.opt.option_list():  # one pass: the path, the block, no unknown critical option
            number = option.number
            if number == URI_PATH:
                path.append(option.value)
            elif number == BLOCK2:
                if block is not None:  # not repeatable: an unrecognised option (RFC 7252 5.4.5)
                    return self._refuse(self._code.BAD_OPTION, "Block2 given twice")
                block = option.value
            elif number == ACCEPT:
                accept = option.value
            elif number in PROXY_OPTIONS:
                return self._refuse(self._code.PROXYING_NOT_SUPPORTED, "this server is no proxy")
            elif number & 1 and number not in self.PROCESSED_CRITICAL:
                return self._refuse(self._code.BAD_OPTION, f"critical option {int(number)} is not supported")
        key = self.site.block_key(request, path, block)
        response = self._cache.get(key) if key is not None else None
        if response is None:
            response, key = self.site.render_block(request, key)
            if key is not None and self.cache_blocks > 0:
                if len(self._cache) >= self.cache_blocks:
                    del self._cache[next(iter(self._cache))]  # the oldest: clients of a file move through it together
                self._cache[key] = response
        if accept is not None and response.code == self._code.CONTENT and response.opt.content_format != accept:
            return self._refuse(self._code.NOT_ACCEPTABLE, f"this resource is content-format {response.opt.content_format}")
        return response

    def _refuse(self, code: Any, text: str) -> Any:
        return self._message(code=code, payload=text.encode())

    @staticmethod
    def _encode(message: Any, mtype: Any, mid: int, token: bytes) -> bytes:
        message.mtype, message.mid, message.token = mtype, mid, token
        return message.encode()  # type: ignore[no-any-return]


def is_wildcard(host: str) -> bool:
    """Whether ``host`` binds every address (then replies must come from the address each request was sent to)."""
    if host == "":
        return True
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:  # a name
        return False


#: Linux's IP_PKTINFO (``socket`` has IPV6_PKTINFO but not this one)
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)


def bind_socket(host: str, port: int) -> socket.socket:
    """A UDP socket bound to (host, port) with SO_REUSEPORT (workers share the port; the kernel keeps each client
    on one of them), whose blocking reads return every second (SO_RCVTIMEO) so the loop can look around.

    A wildcard gets the destination address of each datagram (IP_PKTINFO, IPV6_RECVPKTINFO) so that the answer
    leaves from the address the client asked: ``::`` (or "") is dual-stack (IPv4 clients as v4-mapped addresses),
    ``0.0.0.0`` IPv4 only."""
    addr: Any
    if host in ("", "::"):
        family, addr = socket.AF_INET6, ("::", port)
    else:
        family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    wildcard = is_wildcard(addr[0])
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if wildcard and family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
        elif wildcard:
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        sock.bind(addr)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 1, 0))
    except BaseException:
        sock.close()
        raise
    return sock


_V4_MAPPED = bytes(10) + b"\xff\xff"


def reply_pktinfo(cmsgs: Sequence[Tuple[int, int, bytes]]) -> Optional[Tuple[int, int, bytes]]:
    """The ancillary data that makes an answer leave from the address a datagram was sent to, from the datagram's
    IP(V6)_PKTINFO; None for a datagram not to be answered: sent to a multicast group or a broadcast address (RFC
    7252 8: no answer may leave from such an address, and we serve no group) or without packet info.

    in6_pktinfo is the address then the interface index; in_pktinfo the index, the local address (ipi_spec_dst)
    and the header's destination, which differ for a broadcast. The index is sent back as 0, so the answer takes
    the routing table's way out (as unbound does), not necessarily the interface the request came in on."""
    for level, kind, data in cmsgs:
        if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO and len(data) >= 20:
            address = data[:16]
            if address[0] == 0xFF or (address[:12] == _V4_MAPPED and address[12] >= 224):
                return None  # ff00::/8; a v4-mapped multicast or limited broadcast
            return (level, kind, address + bytes(4))
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= 12:
            if data[8:12] != data[4:8] or data[8] >= 224:
                return None  # a broadcast (destination is not the local address), a multicast group
            return (level, kind, bytes(4) + data[4:12])
    return None


def serve_socket(sock: socket.socket, server: StatelessGetServer, keep_going: Any, wildcard: bool = False) -> None:
    """Answer datagrams on ``sock`` until ``keep_going()`` (asked every second, busy or idle) is false: one blocking
    receive and at most one send per request, nothing else (no event loop: this process serves one socket). On a
    wildcard socket (``bind_socket`` of a wildcard) each answer carries the request's own IP(V6)_PKTINFO back, so it
    leaves from the address the client sent to. A send error (the client's route is gone) is logged and the next
    datagram served; no datagram can end the loop."""
    buffer = bytearray(65536)  # the largest UDP payload: a datagram is never cut short
    view = memoryview(buffer)
    clock = time.monotonic
    next_look = clock() + 1.0
    ancillary = socket.CMSG_SPACE(32) if wildcard else 0
    while True:
        if clock() >= next_look:
            if not keep_going():
                return
            next_look = clock() + 1.0
        try:
            if wildcard:
                size, cmsgs, _, addr = sock.recvmsg_into([buffer], ancillary)
            else:
                size, addr = sock.recvfrom_into(buffer)
        except (BlockingIOError, InterruptedError):  # SO_RCVTIMEO ran out
            continue
        except OSError as exc:  # nothing a datagram can cause; logged, and the loop goes on
            log.warning("CoAP: receiving failed: %s", exc)
            time.sleep(0.01)
            continue
        pktinfo = reply_pktinfo(cmsgs) if wildcard else None
        if wildcard and pktinfo is None:
            continue
        try:
            reply = server.answer(bytes(view[:size]))
        except Exception:  # noqa: BLE001 - no datagram may end the worker
            log.exception("CoAP: answering a datagram from %s failed", addr)
            continue
        if reply is None:
            continue
        try:
            if wildcard and pktinfo is not None:
                sock.sendmsg([reply], [pktinfo], 0, addr)
            else:
                sock.sendto(reply, addr)
        except OSError as exc:
            log.debug("CoAP: cannot answer %s: %s", addr, exc)


def serve_process(data_dir: str, host: str, port: int, ready: Any) -> None:
    """Body of one CoAP worker process: bind, tell ``ready`` ("ok" or the error), serve with
    ``StatelessGetServer`` until the parent is gone.

    Ctrl-C reaches the whole process group: the worker ignores SIGINT and ends with its parent (``CoapServers``
    terminates it, and it checks every second that its parent still runs)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()
    try:
        sock = bind_socket(host, port)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which prints one line
        ready.send(f"{type(exc).__name__}: {exc}")
        return
    ready.send("ok")
    ready.close()
    gc.collect()
    gc.freeze()  # the imported modules' objects are never garbage: out of every later collection
    with sock:
        serve_socket(sock, StatelessGetServer(PublicationResource(Publications(data_dir))),
                     lambda: os.getppid() == parent, wildcard=is_wildcard(sock.getsockname()[0]))


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
            try:
                answer = receiver.recv() if receiver.poll(timeout) else f"no answer within {timeout:g} s"
            except EOFError:  # it died before answering
                proc.join(5)
                answer = f"the worker exited (code {proc.exitcode})"
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
