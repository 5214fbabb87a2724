#!/usr/bin/env python3
"""Package and verify a generated image; compare with the floor in the same run.

Prints wall time and peak memory (max RSS) of:

* the floor for packaging: ``openssl dgst -sha256 IMAGE`` + ``cat IMAGE > copy``;
* ``ota-build package`` (Ed25519);
* ``openssl dgst -sha256`` alone, the floor for verifying;
* ``ota-build verify`` (and ``verify --extract``);
* ``mender-artifact write rootfs-image`` when it is installed.

Targets (issue #2): package within 1.3x of its floor, verify within 1.3x of
``openssl dgst -sha256``, peak memory under 64 MiB. Each command runs
``--repeat`` times with a warm page cache; the best time is reported.

Usage: python benchmarks/bench_package.py [--size-mib 1024] [--workdir DIR] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))


def tool(name: str) -> List[str]:
    exe = os.path.join(os.path.dirname(sys.executable), name)
    return [exe] if os.path.exists(exe) else [shutil.which(name) or name]


def measure(cmd: List[str], stdout_path: Optional[str] = None) -> Tuple[float, float]:
    """Run ``cmd``; return (wall seconds, peak RSS MiB) of that one process."""
    out = open(stdout_path, "wb") if stdout_path else subprocess.DEVNULL
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if stdout_path:
        out.close()
    if os.waitstatus_to_exitcode(status) != 0:
        err = proc.stderr.read().decode() if proc.stderr else ""
        raise SystemExit(f"benchmark command failed: {' '.join(cmd)}\n{err}")
    return wall, usage.ru_maxrss / 1024.0


def best(cmd: List[str], repeat: int, stdout_path: Optional[str] = None) -> Tuple[float, float]:
    runs = [measure(cmd, stdout_path) for _ in range(repeat)]
    return min(r[0] for r in runs), max(r[1] for r in runs)


def make_image(path: str, size_mib: int) -> None:
    """Incompressible data, written in 1 MiB blocks (memory stays flat)."""
    block = os.urandom(1 << 20)
    with open(path, "wb") as fh:
        for i in range(size_mib):
            fh.write(i.to_bytes(8, "big") + block[8:])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024, help="image size in MiB (default 1024 = 1 GiB)")
    ap.add_argument("--workdir", help="where to put the files (default: a temporary directory on /var/tmp)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per command; best time is kept (default 3)")
    args = ap.parse_args()

    work = args.workdir or tempfile.mkdtemp(prefix="ota-bench-", dir="/var/tmp")
    os.makedirs(work, exist_ok=True)
    image, out, copy, extracted = (os.path.join(work, n) for n in ("image.tar.gz", "hub_update.bin", "copy", "extracted"))
    key, pub = os.path.join(work, "bench.key.pem"), os.path.join(work, "bench.pub.pem")
    try:
        print(f"generating a {args.size_mib} MiB image in {work} ...", flush=True)
        make_image(image, args.size_mib)
        subprocess.run(tool("ota-build") + ["keygen", "-o", os.path.join(work, "bench"), "--force"], check=True,
                       stdout=subprocess.DEVNULL)
        measure(["cat", image], os.devnull)  # warm the page cache

        dgst = best(["openssl", "dgst", "-sha256", image], args.repeat)
        cat = best(["cat", image], args.repeat, copy)
        floor = (dgst[0] + cat[0], max(dgst[1], cat[1]))
        # ota-build writes atomically (temp file, fsync, rename); cat does not sync.
        # The durable floor adds what syncing the copy costs, measured the same way.
        catsync = best(["sh", "-c", f"cat '{image}' > '{copy}' && sync '{copy}'"], args.repeat)
        durable = (dgst[0] + catsync[0], max(dgst[1], catsync[1]))
        pkg = best(tool("ota-build") + ["package", image, "-o", out, "--version-number", "1", "-k", key], args.repeat)
        ver = best(tool("ota-build") + ["verify", out, "-k", pub, "-t", "5"], args.repeat)
        ext = best(tool("ota-build") + ["verify", out, "-k", pub, "-t", "5", "-x", extracted], args.repeat)
        rows = [
            ("floor: openssl dgst -sha256 + cat", floor),
            ("durable floor: dgst + cat + sync", durable),
            ("ota-build package (ed25519)", pkg),
            ("floor: openssl dgst -sha256", dgst),
            ("ota-build verify", ver),
            ("ota-build verify --extract", ext),
        ]
        mender = shutil.which("mender-artifact")
        if mender:
            rows.append(("mender-artifact write rootfs-image", best(
                [mender, "write", "rootfs-image", "-t", "bench", "-n", "bench-1", "-f", image,
                 "-o", os.path.join(work, "bench.mender")], args.repeat)))
        else:
            rows.append(("mender-artifact write rootfs-image", None))

        size_mb = args.size_mib * 1.048576
        print(f"\nimage: {args.size_mib} MiB, best of {args.repeat}, warm page cache\n")
        print(f"{'command':40} {'wall s':>8} {'MB/s':>8} {'peak MiB':>9}")
        for name, res in rows:
            if res is None:
                print(f"{name:40} {'(not installed)':>27}")
            else:
                print(f"{name:40} {res[0]:8.2f} {size_mb / res[0]:8.0f} {res[1]:9.1f}")
        pkg_ratio, ver_ratio = pkg[0] / floor[0], ver[0] / dgst[0]
        peak = max(pkg[1], ver[1], ext[1])
        print()
        print(f"package / floor      = {pkg_ratio:.2f}x  (target <= 1.30x)  {'PASS' if pkg_ratio <= 1.3 else 'MISS'}")
        print(f"package / durable    = {pkg[0] / durable[0]:.2f}x  (same floor, but fsync'd as ota-build's output is)")
        print(f"verify  / dgst       = {ver_ratio:.2f}x  (target <= 1.30x)  {'PASS' if ver_ratio <= 1.3 else 'MISS'}")
        print(f"peak memory          = {peak:.1f} MiB  (target < 64 MiB)  {'PASS' if peak < 64 else 'MISS'}")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
