"""``ota-agent coap``: a CoAP device of seed 002 (what a RIOT node does, for tests, demos and Linux gateways).

It serves a notify resource (PUT, as the original ``otatestnode``; the payload is the manifest's URL), fetches the
SUIT manifest (block-wise), verifies it (trusted key, sequence number above its current one, vendor/class when
configured), downloads the slot the manifest gives for its *inactive* slot (block by block into a file, never more
than the manifest's size, the ETag the same on every block), checks its size and digest, and only
then records the new sequence number and switches the active slot. Each refusal is one log line; ``GET /status``
reports the last outcome as JSON. ``aiocoap`` is imported only here, when the command runs.

State in ``--state-dir``: ``state.json`` (``sequence``, ``active``), ``slot0.bin``, ``slot1.bin``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
from typing import Any, AsyncIterator, Dict, Optional

from ota_build.core import suit
from ota_build.core.errors import CorruptError, OtaError, UsageError, VerifyError
from ota_build.core.files import atomic_open, atomic_write_bytes
from ota_build.core.signing.keys import Keyring

log = logging.getLogger(__name__)
#: the largest SUIT envelope a device takes (RIOT's default buffer is far smaller; ours are a few hundred bytes)
MAX_MANIFEST_BYTES = 64 * 1024
_BRACKETED_V4 = re.compile(r"^(coaps?://)\[(\d{1,3}(?:\.\d{1,3}){3})\]")


def normalize_url(url: str) -> str:
    """The original server brackets every host (``coap://[127.0.0.1]:5683/…``); an IPv4 address loses them."""
    return _BRACKETED_V4.sub(r"\1\2", url.strip())


class CoapDevice:
    """The update logic of a CoAP device over a state directory."""

    def __init__(self, state_dir: str, keyring: Keyring, vendor: Optional[str] = None,
                 device_class: Optional[str] = None, timeout: float = 60.0):
        self.state_dir = state_dir
        self.keyring = keyring
        self.vendor, self.device_class = vendor, device_class
        self.timeout = timeout
        self.last: Dict[str, Any] = {"outcome": "idle"}
        os.makedirs(state_dir, exist_ok=True)
        for name in os.listdir(state_dir):  # temporary files of a download a power cut or a kill interrupted
            if name.startswith(".") and name.endswith(".tmp"):  # atomic_open's names
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(state_dir, name))

    @property
    def state_path(self) -> str:
        """``state.json``."""
        return os.path.join(self.state_dir, "state.json")

    def state(self) -> Dict[str, int]:
        """The current sequence number (-1: none yet) and active slot."""
        try:
            with open(self.state_path, encoding="utf-8") as f:
                doc = json.load(f)
            return {"sequence": int(doc["sequence"]), "active": int(doc["active"])}
        except FileNotFoundError:
            return {"sequence": -1, "active": 0}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"{self.state_path}: unreadable device state ({exc})") from None

    async def blocks(self, ctx: Any, url: str, limit: int, what: str) -> AsyncIterator[bytes]:
        """The payload of ``url``, block by block (Block2, at the block size of the server's first answer): never
        more than one block in memory, never more than ``limit`` bytes (the first byte too many is a CorruptError
        naming ``what``, so a hostile or wrong server cannot fill the device). An ETag that changes between blocks
        (republished during the download), a block other than the one asked for or an error answer is an
        OtaError."""
        import aiocoap
        from aiocoap.optiontypes import BlockOption

        number, szx, received, etag = 0, None, 0, None
        while True:
            request = aiocoap.Message(code=aiocoap.GET, uri=url)
            if szx is not None:  # the first request has no Block2: the server picks (or needs none)
                request.opt.block2 = BlockOption.BlockwiseTuple(number, False, szx)
            response = await asyncio.wait_for(ctx.request(request, handle_blockwise=False).response, self.timeout)
            if not response.code.is_successful():
                raise OtaError(f"GET {url}: {response.code} {response.payload.decode('utf-8', 'replace')[:100]}")
            block = response.opt.block2
            tag = bytes(response.opt.etag) if response.opt.etag is not None else None
            if number and tag != etag:
                raise OtaError(f"GET {url}: the resource changed during the download (ETag); try again")
            etag = tag
            if block is None and number:
                raise OtaError(f"GET {url}: the server dropped Block2 in the middle of the download")
            if block is not None and (block.block_number << (block.size_exponent + 4)) != received:
                raise OtaError(f"GET {url}: the server answered block {block.block_number}, not the one at byte "
                               f"{received}")
            if block is not None and block.more and len(response.payload) != 1 << (block.size_exponent + 4):
                raise OtaError(f"GET {url}: block {block.block_number} has {len(response.payload)} bytes, not "
                               f"{1 << (block.size_exponent + 4)}")  # RFC 7959 2.2: only the last may be shorter
            received += len(response.payload)
            if received > limit:
                raise CorruptError(f"{what} is larger than {limit} bytes")
            yield bytes(response.payload)
            if block is None or not block.more:
                return
            szx = min(block.size_exponent, 6)
            number = received >> (szx + 4)

    async def update(self, manifest_url: str) -> Dict[str, Any]:
        """Fetch, verify, download into the inactive slot, check, switch. The outcome as a dict (also in ``last``)."""
        import aiocoap

        url = normalize_url(manifest_url)
        state = self.state()
        ctx = await aiocoap.Context.create_client_context()
        try:
            envelope = b"".join([b async for b in self.blocks(ctx, url, MAX_MANIFEST_BYTES, "the manifest")])
            info = suit.verify_manifest(envelope, self.keyring, state["sequence"], self.vendor, self.device_class)
            target = 1 - state["active"]
            slot = info.slots[target] if len(info.slots) > target else info.slots[0]
            if not slot.uri:
                raise suit.SuitError(f"manifest gives no URI for slot {target}")
            part = os.path.join(self.state_dir, f"slot{target}.bin.part")
            with atomic_open(part, durable=True) as out:  # a failed download leaves nothing behind
                async for chunk in self.blocks(ctx, normalize_url(slot.uri), slot.size, "slot image"):
                    out.write(chunk)
            try:
                suit.check_slot(slot, part)
            except VerifyError:
                os.unlink(part)
                raise
            os.replace(part, os.path.join(self.state_dir, f"slot{target}.bin"))
            atomic_write_bytes(self.state_path, json.dumps({"sequence": info.sequence_number, "active": target}).encode(),
                               durable=True)
            self.last = {"outcome": "installed", "sequence": info.sequence_number, "slot": target, "size": slot.size,
                         "manifest": url}
            log.info("installed: sequence number %d into slot %d (%d bytes)", info.sequence_number, target, slot.size)
        except VerifyError as exc:
            self.last = {"outcome": "refused", "reason": exc.reason, "message": str(exc), "exit": exc.exit_code,
                         "manifest": url}
            log.error("refused: %s", exc)
        except (OtaError, OSError, asyncio.TimeoutError, Exception) as exc:  # network errors of aiocoap too
            self.last = {"outcome": "error", "message": str(exc) or type(exc).__name__, "exit": 1, "manifest": url}
            log.error("error: %s", self.last["message"])
        finally:
            await ctx.shutdown()
        return self.last


async def serve(device: CoapDevice, host: str, port: int, resource: str = "notify", once: bool = False) -> int:
    """Serve ``PUT /<resource>`` and ``GET /status``; with ``once``, return after the first update's exit code."""
    import aiocoap
    from aiocoap import resource as res

    done: "asyncio.Future[int]" = asyncio.get_running_loop().create_future()
    tasks = set()
    lock = asyncio.Lock()

    class Notify(res.Resource):  # type: ignore[misc]
        async def render_put(self, request: Any) -> Any:
            try:
                url = request.payload.decode("ascii")
            except UnicodeDecodeError:
                return aiocoap.Message(code=aiocoap.BAD_REQUEST, payload=b"payload is not a URL")
            log.info("notified: %s", url)

            async def run() -> None:
                async with lock:  # one update at a time: two notifies must not write the same slot
                    result = await device.update(url)
                if once and not done.done():
                    done.set_result(int(result.get("exit", 0)))

            task = asyncio.ensure_future(run())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            return aiocoap.Message(code=aiocoap.CHANGED, payload=request.payload)

    class Status(res.Resource):  # type: ignore[misc]
        async def render_get(self, request: Any) -> Any:
            return aiocoap.Message(payload=json.dumps({**device.state(), **device.last}).encode("utf-8"))

    site = res.Site()
    site.add_resource([p for p in resource.split("/") if p], Notify())
    site.add_resource(["status"], Status())
    ctx = await aiocoap.Context.create_server_context(site, bind=(host, port), transports=["udp6"])
    log.info("listening on coap://%s:%d/%s", f"[{host}]" if ":" in host else host, port, resource.strip("/"))
    try:
        if once:
            return await done
        await asyncio.Event().wait()
        return 0
    finally:
        await ctx.shutdown()


def run_coap_device(state_dir: str, trusted_keys: list, host: str, port: int, resource: str, once: bool,
                    vendor: Optional[str], device_class: Optional[str], timeout: float) -> int:
    """``ota-agent coap``: build the device and serve until interrupted (or the first update with ``once``)."""
    try:
        import aiocoap  # noqa: F401
    except ImportError:
        raise UsageError("ota-agent coap needs aiocoap (pip install aiocoap)") from None
    if not trusted_keys:
        raise UsageError("--trusted-key: at least one public key (PEM) is needed to verify manifests")
    device = CoapDevice(state_dir, Keyring.from_files(trusted_keys), vendor, device_class, timeout)
    return asyncio.run(serve(device, host, port, resource, once))
