#!/usr/bin/env python3
"""OTA server benchmark (loopback only; not part of the test-suite).

1. Downloads: N concurrent device downloads (curl, through the device API with
   device tokens) of a signed hub_update.bin of SIZE MiB from ``ota-build serve``,
   next to Debian's nginx (sendfile) serving the same file in the same run.
   Target: >= 70% of nginx's throughput.
2. ``/latestVersion`` latency with RECORDS package versions under C concurrent
   keep-alive clients, each asking for a random one of 100 package/branch pairs.
   The load comes from Debian's ``wrk`` (C, closed loop: each client sends its
   next request when the previous answer arrives) when installed, else from a
   small asyncio client (which needs much of a core itself). Measured with the
   server's default cache and, on a second server over the same database, with
   ``--latest-cache-ttl 0`` (every request queries the database).
   Target: p99 < 50 ms.

    .venv/bin/python benchmarks/bench_server.py [--size-mib 256] [--clients 50]
        [--records 10000] [--concurrency 100] [--duration 15] [--workers 2]
        [--database-url URL] [--skip-downloads] [--skip-latency]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            requests.get(url, timeout=1)
            return
        except requests.ConnectionError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


def start_server(data: Path, workers: int, extra: List[str]) -> Tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([str(BIN / "ota-build"), "serve", "--data-dir", str(data), "--port", str(port),
                             "--workers", str(workers)] + extra, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=open(data.parent / f"server-{port}.log", "wb"))
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/test")
    return proc, url


def stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)


def start_nginx(root: Path, work: Path, workers: int) -> Tuple[subprocess.Popen, str]:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    port = free_port()
    conf = work / "nginx.conf"
    user = "user root root;" if os.geteuid() == 0 else ""
    conf.write_text(f"""
{user}
worker_processes {workers};
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  sendfile on; tcp_nopush on;
  client_body_temp_path {work}/nx-body; proxy_temp_path {work}/nx-proxy;
  fastcgi_temp_path {work}/nx-fcgi; uwsgi_temp_path {work}/nx-uwsgi; scgi_temp_path {work}/nx-scgi;
  server {{ listen 127.0.0.1:{port}; root {root}; }}
}}
""")
    proc = subprocess.Popen([nginx, "-c", str(conf), "-p", str(work)], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/")
    return proc, url


def peak_rss_mib(pid: int) -> float:
    """Highest VmHWM (peak resident set, file-backed pages included) of pid and its descendants."""
    peak = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            peak = max(peak, int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))))
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, StopIteration):
            continue
    return peak / 1024


def parallel_curl(urls_headers: List[Tuple[str, List[str]]]) -> Tuple[float, int]:
    """Run one curl per (url, headers) at once; (wall seconds, total bytes)."""
    start = time.monotonic()
    procs = []
    for url, headers in urls_headers:
        cmd = ["curl", "-s", "-o", "/dev/null", "-w", "%{size_download} %{http_code}", url]
        for h in headers:
            cmd += ["-H", h]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True))
    total = 0
    for p in procs:
        out, _ = p.communicate()
        size, code = out.split()
        if code != "200":
            raise RuntimeError(f"download answered HTTP {code}")
        total += int(size)
    return time.monotonic() - start, total


def setup_image(work: Path, data: Path, url: str, size_mib: int, clients: int,
                database_url: Optional[str]) -> Tuple[List[Tuple[str, str]], Path, str]:
    from ota_build.partner.client import OtaClient
    from ota_build.core.config import Credentials, OtaConfig
    from ota_build.core.package import package_image
    from ota_build.server import admin
    from ota_build.server.db import open_database
    from ota_build.core.signing import generate_key, make_signer

    db = open_database(str(data), database_url)
    creds = admin.create_partner(db, "bench@example.com", partner_id="bench")
    admin.add_device_type(db, "bench", "bench-type")
    devices = [(f"dev-{i}", admin.device_token(db, "bench", "bench-type", f"dev-{i}", "fleet")["token"])
               for i in range(clients)]
    db.dispose()
    cfg = OtaConfig(path="(bench)", name="bench", version="1.0", description="bench", device_type_id="bench-type",
                    partner_id="bench", server=url,
                    credentials=Credentials(creds["username"], creds["userpw"], creds["auth-string"]))
    client = OtaClient(cfg)
    rec = client.create_record("bench", "bench", "1.0.1", 5)
    payload = work / "rootfs.bin"
    with open(payload, "wb") as fh:
        block = os.urandom(1024 * 1024)
        for _ in range(size_mib):
            fh.write(block)
    generate_key("ed25519", str(work / "k.pem"), str(work / "k.pub"), backend="cryptography")
    image = work / "hub_update.bin"
    package_image(str(payload), str(image), make_signer(str(work / "k.pem")), 5, int(rec["versionNumber"]))
    payload.unlink()
    sha = client.upload_binary(str(image), show_progress=False)
    rec["url"] = client.move_to_repository(sha)
    client.update_record(rec)
    img = client.associate("bench-type", rec)
    client.push("bench-type", img["id"], [], group="fleet")
    image.unlink()
    return [(d, t) for d, t in devices], data / "blobs" / sha, img["id"]


async def _latency_worker(host: str, port: int, paths: List[str], lat: List[float], until: float) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        i = 0
        while time.monotonic() < until:
            path = paths[i % len(paths)]
            i += 1
            t0 = time.perf_counter()
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            lat.append(time.perf_counter() - t0)
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(head.split(b"\r\n")[0].decode())
    finally:
        writer.close()


def latest_paths(names: List[Tuple[str, str]], count: int, seed: int) -> List[str]:
    rnd = random.Random(seed)
    return [f"/latestVersion?package={pkg}&branch={branch}" for pkg, branch in (rnd.choice(names) for _ in range(count))]


async def _latency_python(url: str, concurrency: int, seconds: float, names: List[Tuple[str, str]]) -> List[float]:
    host, port = url[7:].split(":")
    lat: List[float] = []
    until = time.monotonic() + seconds
    await asyncio.gather(*(_latency_worker(host, int(port), latest_paths(names, 500, i), lat, until)
                           for i in range(concurrency)))
    return lat


def latency_python(url: str, concurrency: int, seconds: float, names: List[Tuple[str, str]]) -> Dict[str, float]:
    """p50/p99/requests per second with the asyncio client."""
    lat = sorted(asyncio.run(_latency_python(url, concurrency, seconds, names)))
    return {"p50": lat[len(lat) // 2] * 1000, "p99": lat[int(len(lat) * 0.99)] * 1000,
            "max": lat[-1] * 1000, "rps": len(lat) / seconds, "requests": len(lat)}


WRK_SCRIPT = """
local paths = {%s}
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", paths[(i %% #paths) + 1])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %%d %%d %%d %%d %%d\\n", latency:percentile(50), latency:percentile(99),
    latency.max, summary.requests, e.connect + e.read + e.write + e.status + e.timeout))
end
"""


def latency_wrk(url: str, concurrency: int, seconds: float, names: List[Tuple[str, str]], work: Path,
                threads: int) -> Dict[str, float]:
    """p50/p99/requests per second with Debian's wrk (a random package/branch per request)."""
    script = work / "latest.lua"
    paths = latest_paths(names, 5000, 1)
    script.write_text(WRK_SCRIPT % ", ".join(f'"{p}"' for p in paths))
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{concurrency}", f"-d{seconds:.0f}s", "--timeout", "5s",
                          "-s", str(script), url], check=True, capture_output=True, text=True).stdout
    line = next(line for line in out.splitlines() if line.startswith("RESULT "))
    p50, p99, worst, count, errors = (int(x) for x in line.split()[1:])
    if errors:
        raise RuntimeError(f"wrk saw {errors} errors (non-2xx, timeouts or socket errors):\n{out}")
    return {"p50": p50 / 1000, "p99": p99 / 1000, "max": worst / 1000, "rps": count / seconds, "requests": count}


def fill_packages(data: Path, records: int, database_url: Optional[str]) -> List[Tuple[str, str]]:
    """``records`` package versions (100 per package/branch) straight into the database."""
    from ota_build.server.db import open_database
    from ota_build.server.models import Package
    from ota_build.server.packages import version_key

    db = open_database(str(data), database_url)
    names = []
    with db.session() as s:
        for i in range(records):
            pkg, branch, ver = f"pkg{i // 100}", "main", f"0.{(i % 100) // 10}.{i % 10 * 3}"
            if i % 100 == 0:
                names.append((pkg, branch))
            content = json.dumps({"package": pkg, "branch": branch, "version": ver, "sha256": "0" * 64})
            s.add(Package(name=pkg, branch=branch, version=ver, version_key=version_key(ver), content=content,
                          sha256="0" * 64, size=1))
        s.commit()
    db.dispose()
    return names


def report_latency(label: str, r: Dict[str, float], records: int, concurrency: int, tool: str) -> None:
    print(f"/latestVersion ({label}): {records} records, {concurrency} concurrent clients ({tool}), "
          f"{r['requests']:.0f} requests, {r['rps']:,.0f} req/s: p50 {r['p50']:.1f} ms, p99 {r['p99']:.1f} ms, "
          f"max {r['max']:.1f} ms (target p99 < 50 ms: {'met' if r['p99'] < 50 else 'MISSED'})", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=256, help="image size (default 256)")
    ap.add_argument("--clients", type=int, default=50, help="concurrent downloads (default 50)")
    ap.add_argument("--records", type=int, default=10000, help="package versions in the DB (default 10000)")
    ap.add_argument("--concurrency", type=int, default=100, help="concurrent latency clients (default 100)")
    ap.add_argument("--duration", type=float, default=15, help="seconds of latency load per run (default 15)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="server (and nginx) workers")
    ap.add_argument("--repeat", type=int, default=2, help="download rounds, best kept (default 2)")
    ap.add_argument("--database-url", help="an empty PostgreSQL database instead of SQLite, "
                                           "e.g. postgresql+psycopg://postgres@/bench?host=/tmp/pg&port=5432")
    ap.add_argument("--skip-downloads", action="store_true", help="only the /latestVersion latency")
    ap.add_argument("--skip-latency", action="store_true", help="only the downloads")
    ap.add_argument("--python-client", action="store_true", help="use the asyncio client even if wrk is installed")
    args = ap.parse_args()
    use_wrk = shutil.which("wrk") is not None and not args.python_client
    tool = "wrk" if use_wrk else "asyncio client"

    work = Path(tempfile.mkdtemp(prefix="ota-bench-server-"))
    os.chmod(work, 0o755)
    data = work / "data"
    db_args = ["--database-url", args.database_url] if args.database_url else []
    procs: List[subprocess.Popen] = []
    try:
        server, url = start_server(data, args.workers, db_args)
        procs.append(server)
        print(f"server {url} ({args.workers} workers, {'PostgreSQL' if args.database_url else 'SQLite'})", flush=True)
        if not args.skip_downloads:
            print(f"preparing a {args.size_mib} MiB image and {args.clients} devices ...", flush=True)
            devices, blob, image_id = setup_image(work, data, url, args.size_mib, args.clients, args.database_url)
            www = work / "www"
            www.mkdir()
            os.link(blob, www / "hub_update.bin")
            os.chmod(www, 0o755)
            nginx, nurl = start_nginx(www, work, args.workers)
            procs.append(nginx)
            size = blob.stat().st_size
            setup_rss = peak_rss_mib(server.pid)

            best = {"ota": 0.0, "nginx": 0.0}
            for _ in range(args.repeat):
                secs, total = parallel_curl([(f"{nurl}/hub_update.bin", [])] * args.clients)
                assert total == size * args.clients
                best["nginx"] = max(best["nginx"], total / secs)
                secs, total = parallel_curl([(f"{url}/v1/devices/{d}/images/{image_id}",
                                              [f"Authorization: Bearer {t}"]) for d, t in devices])
                assert total == size * args.clients
                best["ota"] = max(best["ota"], total / secs)
            mib = 1024 * 1024
            print(f"downloads: {args.clients} x {size / mib:.0f} MiB: ota-build serve {best['ota'] / mib:,.0f} MiB/s, "
                  f"nginx {best['nginx'] / mib:,.0f} MiB/s -> {100 * best['ota'] / best['nginx']:.0f}% of nginx "
                  f"(target >= 70%); server worker peak RSS {setup_rss:.0f} MiB after the upload, "
                  f"{peak_rss_mib(server.pid):.0f} MiB after the downloads", flush=True)
            stop(nginx)
            procs.remove(nginx)

        if args.skip_latency:
            return 0
        names = fill_packages(data, args.records, args.database_url)
        uncached, uurl = start_server(data, args.workers, db_args + ["--latest-cache-ttl", "0"])
        procs.append(uncached)
        for label, target in (("default cache", url), ("--latest-cache-ttl 0", uurl)):
            if use_wrk:
                latency_wrk(target, args.concurrency, 2, names, work, min(args.workers, 2))  # warm-up
                result = latency_wrk(target, args.concurrency, args.duration, names, work, min(args.workers, 2))
            else:
                latency_python(target, args.concurrency, 2, names)  # warm-up
                result = latency_python(target, args.concurrency, args.duration, names)
            report_latency(label, result, args.records, args.concurrency, tool)
    finally:
        for proc in procs:
            stop(proc)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
