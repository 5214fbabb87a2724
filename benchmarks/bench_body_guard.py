#!/usr/bin/env python3
"""Issue 11 item 1: the server's memory around an unauthenticated body declared as SIZE MiB (loopback only;
not part of the test-suite, which runs a bounded version in tests/test_server_hardening.py).

Starts ``ota-build serve`` (the one of this checkout, or of ``PYTHONPATH`` when set, to measure an older
version), sends ``POST /v1/ota/partners/P/pool`` without a token and with ``Content-Length: SIZE MiB``,
streaming zeros 1 MiB at a time until the server answers or the whole body went out, and prints the
server's VmRSS before, its peak while the body was sent, and after; the bytes sent; the answer; and the
files left in the data directory.

    .venv/bin/python benchmarks/bench_body_guard.py [--size-mib 1024] [--path /v1/ota/partners/P/pool]
"""

from __future__ import annotations

import argparse
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("bench_body_guard")
MIB = 1024 * 1024


def rss_mib(pid: int) -> float:
    """VmRSS of ``pid`` in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def free_port() -> int:
    """A free loopback port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> int:
    """Run the measurement; 0."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--path", default="/v1/ota/partners/P/pool")
    args = parser.parse_args()
    exe = Path(sys.executable).parent / "ota-build"
    with tempfile.TemporaryDirectory(prefix="bench-guard-") as tmp:
        data = Path(tmp) / "data"
        port = free_port()
        proc = subprocess.Popen([str(exe), "serve", "--port", str(port), "--data-dir", str(data)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.1)
            time.sleep(0.5)
            before = peak = rss_mib(proc.pid)
            sent, answer, started = 0, b"", time.monotonic()
            with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
                sock.sendall((f"POST {args.path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                              f"Content-Length: {args.size_mib * MIB}\r\n\r\n").encode())
                chunk = b"\0" * MIB
                try:
                    while sent < args.size_mib * MIB:
                        if select.select([sock], [], [], 0.2 if sent == 0 else 0)[0]:
                            break
                        sock.sendall(chunk)
                        sent += MIB
                        if sent % (16 * MIB) == 0:
                            peak = max(peak, rss_mib(proc.pid))
                except (BrokenPipeError, ConnectionResetError):
                    pass
                try:
                    answer = sock.recv(4096)
                except (ConnectionResetError, socket.timeout):
                    pass
            elapsed = time.monotonic() - started
            peak = max(peak, rss_mib(proc.pid))
            time.sleep(1)
            after = rss_mib(proc.pid)
            left = [str(p.relative_to(data)) for p in data.rglob("*") if p.is_file() and "ota.sqlite3" not in p.name]
            log.info("body declared %d MiB, sent %d MiB in %.1f s; answer: %s", args.size_mib, sent // MIB, elapsed,
                     answer.split(b"\r\n", 1)[0].decode(errors="replace") or "(none)")
            log.info("server VmRSS: before %.0f MiB, peak %.0f MiB, after %.0f MiB; files left: %s",
                     before, peak, after, left or "none")
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
