#!/usr/bin/env python3
"""Package and verify a generated image; compare with the floor in the same run.

Prints wall time and peak memory (max RSS) of:

* the floor for packaging: ``openssl dgst -sha256 IMAGE`` + ``cat IMAGE > copy``;
* ``ota-build package`` (Ed25519);
* ``openssl dgst -sha256`` alone, the floor for verifying;
* ``ota-build verify`` (and ``verify --extract``);
* ``mender-artifact write rootfs-image`` when it is installed.

Targets: package within 1.15x of its floor, verify within 1.15x of
``openssl dgst -sha256``, peak memory under 64 MiB (flat: the same for any
image size). The commands run in ``--repeat`` interleaved rounds (one run of
each per round, so load from other processes hits all of them alike) with a
warm page cache; the best wall time is reported, and the CPU time (user +
system, all threads) of that run, which is what a loaded machine cannot hide.
``ota-build package --fsync`` is compared with the durable floor (cat + sync).

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
from typing import Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
TARGET = 1.15


def tool(name: str) -> List[str]:
    exe = os.path.join(os.path.dirname(sys.executable), name)
    return [exe] if os.path.exists(exe) else [shutil.which(name) or name]


Result = Tuple[float, float, float]  # wall s, CPU s, peak RSS MiB


def measure(cmd: List[str], stdout_path: Optional[str] = None) -> Result:
    """Run ``cmd``; return (wall seconds, CPU seconds, peak RSS MiB) of that one process."""
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
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024.0


def rounds(commands: Dict[str, Tuple[List[str], Optional[str]]], repeat: int) -> Dict[str, Result]:
    """Run every command once per round, ``repeat`` rounds; per command the best wall time (its CPU), max RSS."""
    runs: Dict[str, List[Result]] = {name: [] for name in commands}
    for _ in range(repeat):
        for name, (cmd, stdout_path) in commands.items():
            runs[name].append(measure(cmd, stdout_path))
    result = {}
    for name, results in runs.items():
        fastest = min(results)
        result[name] = (fastest[0], fastest[1], max(r[2] for r in results))
    return result


def add(a: Result, b: Result) -> Result:
    """Two commands run one after the other."""
    return a[0] + b[0], a[1] + b[1], max(a[2], b[2])


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
        subprocess.run(tool("ota-build") + ["package", image, "-o", out, "--version-number", "1", "-k", key],
                       check=True, stdout=subprocess.DEVNULL)  # the file verify reads, before the first round

        ota = tool("ota-build")
        package = ota + ["package", image, "-o", out, "--version-number", "1", "-k", key]
        commands: Dict[str, Tuple[List[str], Optional[str]]] = {
            "dgst": (["openssl", "dgst", "-sha256", image], None),
            "cat": (["cat", image], copy),
            "catsync": (["sh", "-c", f"cat '{image}' > '{copy}' && sync '{copy}'"], None),
            "package": (package, None),
            "package-fsync": (package + ["--fsync"], None),
            "verify": (ota + ["verify", out, "-k", pub, "-t", "5"], None),
            "extract": (ota + ["verify", out, "-k", pub, "-t", "5", "-x", extracted], None),
        }
        mender = shutil.which("mender-artifact")
        if mender:
            commands["mender"] = ([mender, "write", "rootfs-image", "-t", "bench", "-n", "bench-1", "-f", image,
                                   "-o", os.path.join(work, "bench.mender")], None)
        res = rounds(commands, args.repeat)
        floor = add(res["dgst"], res["cat"])
        # --fsync syncs the output as cat + sync does; the plain package (atomic, not durable) compares with cat.
        durable = add(res["dgst"], res["catsync"])
        rows: List[Tuple[str, Optional[Result]]] = [
            ("floor: openssl dgst -sha256 + cat", floor),
            ("ota-build package (ed25519)", res["package"]),
            ("durable floor: dgst + cat + sync", durable),
            ("ota-build package --fsync", res["package-fsync"]),
            ("floor: openssl dgst -sha256", res["dgst"]),
            ("ota-build verify", res["verify"]),
            ("ota-build verify --extract", res["extract"]),
            ("mender-artifact write rootfs-image", res.get("mender")),
        ]

        size_mb = args.size_mib * 1.048576
        print(f"\nimage: {args.size_mib} MiB in {work}, best of {args.repeat} interleaved rounds, warm page cache\n")
        print(f"{'command':40} {'wall s':>8} {'MB/s':>8} {'CPU s':>7} {'peak MiB':>9}")
        for name, row in rows:
            if row is None:
                print(f"{name:40} {'(not installed)':>35}")
            else:
                print(f"{name:40} {row[0]:8.2f} {size_mb / row[0]:8.0f} {row[1]:7.2f} {row[2]:9.1f}")
        pkg, ver = res["package"], res["verify"]
        peak = max(pkg[2], ver[2], res["extract"][2], res["package-fsync"][2])
        print()
        for label, mine, ref in (("package / floor", pkg, floor), ("package --fsync / durable", res["package-fsync"], durable),
                                 ("verify / dgst", ver, res["dgst"])):
            ratio = mine[0] / ref[0]
            print(f"{label:26} = {ratio:.2f}x wall ({mine[1] / ref[1]:.2f}x CPU)  (target <= {TARGET:.2f}x)  "
                  f"{'PASS' if ratio <= TARGET else 'MISS'}")
        print(f"{'peak memory':26} = {peak:.1f} MiB  (target < 64 MiB)  {'PASS' if peak < 64 else 'MISS'}")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
