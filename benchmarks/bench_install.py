#!/usr/bin/env python3
"""Device install benchmark (loopback only; not part of the test-suite).

A signed hub_update.bin with a SIZE MiB payload is served by ``ota-build serve`` (the device API, a device
token); then, in interleaved rounds:

* ``ota-agent once``: a real agent process streams it into a file-backed slot (header verified first,
  payload hashed as written, fsync'd, boot environment switched), from a fresh state each round;
* the floor: ``curl -s URL | tee slot | sha256sum`` of the same bytes (no verification, no fsync), and the
  durable floor: the same followed by ``sync slot`` (the agent fsyncs the slot before it switches).

Reported: wall times (best and median), their ratio (target <= 1.3x), the agent's peak RSS (flat in the
payload size) and the peak extra disk in its state directory (target < 1 MiB: the header and a state file,
never the image).

    .venv/bin/python benchmarks/bench_install.py [--size-mib 1024] [--rounds 3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Tuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_server import free_port, peak_rss_mib, setup_image, wait_http  # noqa: E402

BIN = Path(sys.executable).parent


def make_device(work: Path, url: str, device: str, token: str) -> Path:
    """A simulated device: file-backed slots, a uEnv-style boot file, the record, the agent config."""
    from ota_build.core.config import OtaConfig
    from ota_build.core.record import new_record, write_record

    root = work / "device"
    (root / "etc").mkdir(parents=True, exist_ok=True)
    cfg = OtaConfig(path="(bench)", name="bench", version="1.0", description="bench", device_type_id="bench-type",
                    partner_id="bench", server=url)
    write_record(new_record(cfg, 1, version_number=0), str(root / "etc/full_ota_record.json"))
    shutil.copy(work / "k.pub", root / "etc/ota.pub.pem")
    (root / "slot-a.img").write_bytes(b"running system")
    conf = {"device": device, "server": url, "deviceToken": token, "deviceTypeId": "bench-type",
            "publicKeys": ["etc/ota.pub.pem"], "record": "etc/full_ota_record.json", "stateDir": "state",
            "cmdline": "cmdline", "bootIdFile": "boot_id",
            "installer": {"type": "ab", "slots": {"a": str(root / "slot-a.img"), "b": str(root / "slot-b.img")},
                          "bootEnv": {"tool": "file", "file": str(root / "uEnv.txt")}}}
    (root / "ota-agent.json").write_text(json.dumps(conf, indent=2))
    return root


def reset_device(root: Path) -> None:
    """A fresh state before a round: no state directory, boot file on slot a, an empty slot b."""
    shutil.rmtree(root / "state", ignore_errors=True)
    (root / "uEnv.txt").write_text("ota_slot=a\n")
    (root / "cmdline").write_text("ota.slot=a\n")
    (root / "boot_id").write_text(os.urandom(8).hex() + "\n")
    (root / "slot-b.img").write_bytes(b"")


def run_agent(root: Path) -> Tuple[float, float, int]:
    """One ``ota-agent once``: (wall seconds, peak RSS MiB, peak state-dir bytes).

    The RSS is the process's VmHWM, sampled until it exits (``ru_maxrss`` of a child would include what
    this large parent process had mapped when it forked)."""
    state = root / "state"
    peak = [0, 0.0]
    stop = threading.Event()
    proc = subprocess.Popen([str(BIN / "ota-agent"), "-c", str(root / "ota-agent.json"), "once"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    start = time.monotonic()

    def watch() -> None:
        while not stop.is_set():
            try:
                used = sum(os.lstat(p).st_blocks * 512 for p in state.iterdir()) if state.exists() else 0
                peak[0] = max(peak[0], used)
            except FileNotFoundError:
                pass
            peak[1] = max(peak[1], peak_rss_mib(proc.pid))
            time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    out, err = proc.communicate()
    wall = time.monotonic() - start
    stop.set()
    watcher.join()
    if proc.returncode != 0 or not out.decode().startswith("pending-reboot"):
        raise RuntimeError(f"ota-agent exited {proc.returncode}: {out.decode()} {err.decode()[-500:]}")
    return wall, peak[1], int(peak[0])


def run_curl(url: str, token: str, slot: Path, durable: bool = False) -> Tuple[float, str]:
    """``curl -s URL | tee slot | sha256sum`` (then ``sync slot`` when ``durable``): (wall seconds, digest)."""
    slot.write_bytes(b"")
    start = time.monotonic()
    script = 'curl -sf -H "Authorization: Bearer $T" "$U" | tee "$S" | sha256sum' + (' && sync "$S"' if durable else "")
    out = subprocess.run(["sh", "-c", script],
                         env={**os.environ, "T": token, "U": url, "S": str(slot)}, capture_output=True, text=True,
                         check=True).stdout
    return time.monotonic() - start, out.split()[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024, help="payload size in MiB (default: 1024)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default: 3)")
    ap.add_argument("--workdir", help="work directory (default: a temporary directory, removed afterwards)")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="ota-bench-install-"))
    work.mkdir(parents=True, exist_ok=True)
    data = work / "server-data"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([str(BIN / "ota-build"), "serve", "--port", str(port), "--data-dir", str(data),
                               "--no-coap"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        wait_http(url + "/test")
        print(f"preparing a signed image with a {args.size_mib} MiB payload ...", flush=True)
        devices, blob, image_id = setup_image(work, data, url, args.size_mib, 1, None)
        device, token = devices[0]
        expected = hashlib.sha256()
        with open(blob, "rb") as fh:
            while chunk := fh.read(1 << 20):
                expected.update(chunk)
        root = make_device(work, url, device, token)
        image_url = f"{url}/v1/devices/{device}/images/{image_id}"
        results: Dict[str, List[float]] = {"agent": [], "curl": [], "durable": []}
        rss: List[float] = []
        disk: List[int] = []
        for n in range(args.rounds):
            reset_device(root)
            wall, peak_rss, peak_disk = run_agent(root)
            results["agent"].append(wall)
            rss.append(peak_rss)
            disk.append(peak_disk)
            c_wall, digest = run_curl(image_url, token, work / "curl-slot.img")
            if digest != expected.hexdigest():
                raise RuntimeError("curl got other bytes than the server stores")
            results["curl"].append(c_wall)
            d_wall, _ = run_curl(image_url, token, work / "curl-slot.img", durable=True)
            results["durable"].append(d_wall)
            print(f"round {n + 1}: agent {wall:.2f} s (RSS {peak_rss:.0f} MiB, state dir {peak_disk} B), "
                  f"curl|tee|sha256sum {c_wall:.2f} s, + sync {d_wall:.2f} s", flush=True)
        best = {k: min(v) for k, v in results.items()}
        med = {k: statistics.median(v) for k, v in results.items()}
        print(f"\n{args.size_mib} MiB payload, {args.rounds} interleaved rounds")
        print(f"  ota-agent once (stream, verify, fsync, switch): best {best['agent']:.2f} s, median {med['agent']:.2f} s")
        print(f"  curl | tee slot | sha256sum:                    best {best['curl']:.2f} s, median {med['curl']:.2f} s")
        print(f"  curl | tee slot | sha256sum && sync slot:       best {best['durable']:.2f} s, median {med['durable']:.2f} s")
        print(f"  ratio (target <= 1.3x): best {best['agent'] / best['curl']:.2f}x, median {med['agent'] / med['curl']:.2f}x; "
              f"against the durable floor: best {best['agent'] / best['durable']:.2f}x, "
              f"median {med['agent'] / med['durable']:.2f}x")
        print(f"  agent peak RSS: {max(rss):.0f} MiB; peak extra disk in the state dir: {max(disk)} bytes "
              f"(target < {1 << 20})")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
