"""Seed 002: CoAP block-wise download of a slot by N concurrent clients, from our CoAP server (the one
``ota-build serve`` runs) next to libcoap's ``coap-server`` serving the same bytes (a resource created with PUT
in its dynamic mode, ``-d``), on the same machine in the same run. Clients are libcoap's ``coap-client``.

    .venv/bin/python benchmarks/bench_coap.py                 # 1 MiB x 20 clients, best of 3
    .venv/bin/python benchmarks/bench_coap.py --size-mib 2 --clients 10 --repeat 1

Prints MiB/s for each and the ratio (target: ours >= 0.5x libcoap's). Needs ``apt-get install libcoap3-bin``.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional

log = logging.getLogger("bench_coap")


def _tool(*names: str) -> str:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    sys.exit(f"none of {', '.join(names)} found: apt-get install libcoap3-bin")


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_get(client: str, uri: str, deadline: float = 30.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if subprocess.run([client, "-B", "2", "-m", "get", uri], capture_output=True).returncode == 0:
            return
        time.sleep(0.2)
    raise RuntimeError(f"{uri} did not answer")


def _round(client: str, uri: str, clients: int, expected: bytes, workdir: Path) -> float:
    """Seconds for ``clients`` concurrent downloads of ``uri``; every download is checked byte-exact."""
    outs = [workdir / f"out{i}" for i in range(clients)]
    start = time.perf_counter()
    procs = [subprocess.Popen([client, "-m", "get", "-o", str(o), uri], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for o in outs]
    for p in procs:
        p.wait()
    elapsed = time.perf_counter() - start
    for o in outs:
        if not o.exists() or o.read_bytes() != expected:
            raise RuntimeError(f"{uri}: a download was not byte-exact")
        o.unlink()
    return elapsed


def main(argv: Optional[List[str]] = None) -> int:
    """Run the benchmark; print the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=float, default=1.0)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    client = _tool("coap-client", "coap-client-notls", "coap-client-openssl")
    server = _tool("coap-server", "coap-server-notls", "coap-server-openssl")
    size = int(args.size_mib * 1024 * 1024)
    data = os.urandom(size)
    with tempfile.TemporaryDirectory(prefix="bench-coap-") as tmp:
        work = Path(tmp)
        (work / "slot.bin").write_bytes(data)
        ours_port, ref_port = _free_udp_port(), _free_udp_port()
        code = ("import sys, time\n"
                "from ota_build.server.publications import Publications\n"
                "from ota_build.server.coap import CoapServerThread\n"
                f"Publications({str(work / 'data')!r}).publish('bench', 'p', "
                f"{{'manifest': [b'm'], 'slot0': [open({str(work / 'slot.bin')!r}, 'rb').read()], 'slot1': [b's']}})\n"
                f"CoapServerThread({str(work / 'data')!r}, '127.0.0.1', {ours_port}).start_and_wait()\n"
                "time.sleep(1e9)\n")
        ours = subprocess.Popen([sys.executable, "-c", code])
        ref = subprocess.Popen([server, "-A", "127.0.0.1", "-p", str(ref_port), "-d", "10"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            ours_uri = f"coap://127.0.0.1:{ours_port}/bench/slot0"
            ref_uri = f"coap://127.0.0.1:{ref_port}/slot0"
            _wait_get(client, ours_uri)
            time.sleep(0.5)
            subprocess.run([client, "-m", "put", "-f", str(work / "slot.bin"), ref_uri], check=True, capture_output=True)
            times = {"ours": [], "libcoap": []}  # type: dict
            for _ in range(args.repeat):  # interleaved rounds: load from other jobs hits both alike
                times["ours"].append(_round(client, ours_uri, args.clients, data, work))
                times["libcoap"].append(_round(client, ref_uri, args.clients, data, work))
        finally:
            for proc in (ours, ref):
                proc.terminate()
                proc.wait(10)
    mib = size * args.clients / (1024 * 1024)
    best = {k: min(v) for k, v in times.items()}
    log.info("%d clients x %.1f MiB, best of %d (Block2, 1024-byte blocks, coap-client)", args.clients, args.size_mib,
             args.repeat)
    for name in ("ours", "libcoap"):
        log.info("  %-8s %6.2f s  %6.2f MiB/s   (rounds: %s)", name, best[name], mib / best[name],
                 ", ".join(f"{t:.2f}" for t in times[name]))
    log.info("  ratio ours/libcoap throughput: %.2f (target >= 0.5)", best["libcoap"] / best["ours"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
