"""Seed 002: CoAP block-wise download of a slot by N concurrent clients, from our CoAP server (the one
``ota-build serve`` runs) next to libcoap's ``coap-server`` serving the same bytes (a resource created with PUT
in its dynamic mode, ``-d``), on the same machine in the same run. Clients are libcoap's ``coap-client``.

    .venv/bin/python benchmarks/bench_coap.py                 # 1 MiB x 20 clients, best of 3, 1 and 2 processes
    .venv/bin/python benchmarks/bench_coap.py --size-mib 2 --clients 10 --repeat 1 --workers 1

Ours runs as ``ota-build serve`` runs it (``CoapServers``: ``--coap-workers`` processes on one port), once per
``--workers`` value. Prints MiB/s for each and the ratio (target: ours >= 0.5x libcoap's), and each server's CPU
time per block (user + system, from /proc: what load from other processes cannot inflate much) and peak RSS (the
largest VmHWM among the server's processes: ours keeps a bounded block cache, so it must not grow with the slot).
Needs ``apt-get install libcoap3-bin``.
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
from typing import Dict, List, Optional

from ota_build.server.publications import Publications

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


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its reaped and living children (from /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for p in [pid] + _children(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(f) for f in fields[11:15]) / ticks  # utime stime cutime cstime
    return total


def _children(pid: int) -> List[int]:
    try:
        found = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    return found + [g for c in found for g in _children(c)]


def _peak_rss_mib(pid: int) -> float:
    """The largest peak resident set (VmHWM) among a process and its descendants, in MiB."""
    peak = 0
    for p in [pid] + _children(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
        except OSError:
            continue
    return peak / 1024


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
    ap.add_argument("--size-mib", type=float, default=1.0, help="size of the slot in MiB (default: %(default)s)")
    ap.add_argument("--clients", type=int, default=20, help="concurrent coap-client downloads (default: %(default)s)")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved rounds; the best counts (default: %(default)s)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="CoAP server processes of ours to measure")
    ap.add_argument("--bind", default="127.0.0.1",
                    help="address our server binds (clients use 127.0.0.1): 0.0.0.0 or :: measures the wildcard path "
                         "(packet info with every datagram) (default: %(default)s)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    client = _tool("coap-client", "coap-client-notls", "coap-client-openssl")
    server = _tool("coap-server", "coap-server-notls", "coap-server-openssl")
    size = int(args.size_mib * 1024 * 1024)
    data = os.urandom(size)
    with tempfile.TemporaryDirectory(prefix="bench-coap-") as tmp:
        work = Path(tmp)
        (work / "slot.bin").write_bytes(data)
        ref_port = _free_udp_port()
        Publications(str(work / "data")).publish("bench", "p", {"manifest": [b"m"], "slot0": [data], "slot1": [b"s"]})
        servers = {}  # name -> (process, uri)
        for n in args.workers:
            port = _free_udp_port()
            code = ("import signal, sys, time\n"
                    "from ota_build.server.coap import CoapServers\n"
                    "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
                    f"s = CoapServers({str(work / 'data')!r}, {args.bind!r}, {port}, {n})\n"
                    "s.start()\n"
                    "try:\n    time.sleep(1e9)\nfinally:\n    s.stop()\n")
            servers[f"ours x{n}"] = (subprocess.Popen([sys.executable, "-c", code]), f"coap://127.0.0.1:{port}/bench/slot0")
        ref = subprocess.Popen([server, "-A", "127.0.0.1", "-p", str(ref_port), "-d", "10"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        servers["libcoap"] = (ref, f"coap://127.0.0.1:{ref_port}/slot0")
        try:
            for name, (_, uri) in servers.items():
                if name != "libcoap":
                    _wait_get(client, uri)
            time.sleep(0.5)
            subprocess.run([client, "-m", "put", "-f", str(work / "slot.bin"), servers["libcoap"][1]], check=True,
                           capture_output=True)
            times: Dict[str, List[float]] = {name: [] for name in servers}
            cpu: Dict[str, List[float]] = {name: [] for name in servers}
            for _ in range(args.repeat):  # interleaved rounds: load from other jobs hits all alike
                for name, (proc, uri) in servers.items():
                    before = _cpu_seconds(proc.pid)
                    times[name].append(_round(client, uri, args.clients, data, work))
                    cpu[name].append(_cpu_seconds(proc.pid) - before)
            rss = {name: _peak_rss_mib(proc.pid) for name, (proc, _) in servers.items()}
        finally:
            for proc, _ in servers.values():
                proc.terminate()
                proc.wait(10)
    mib = size * args.clients / (1024 * 1024)
    blocks = args.clients * -(-size // 1024)
    best = {k: min(v) for k, v in times.items()}
    log.info("%d clients x %.1f MiB, best of %d (Block2, 1024-byte blocks, coap-client)", args.clients, args.size_mib,
             args.repeat)
    for name in servers:
        log.info("  %-9s %6.2f s  %6.2f MiB/s  server CPU %5.1f us/block  peak RSS %5.1f MiB  (rounds: %s)", name,
                 best[name], mib / best[name], 1e6 * min(cpu[name]) / blocks, rss[name],
                 ", ".join(f"{t:.2f}" for t in times[name]))
    for name in servers:
        if name != "libcoap":
            log.info("  ratio %s/libcoap throughput: %.2f (target >= 0.5)", name, best["libcoap"] / best[name])
    return 0


if __name__ == "__main__":
    sys.exit(main())
