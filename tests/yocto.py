"""The Yocto release trees the layer's tests run real BitBake from.

The trees are unmodified release tarballs beside a ``checkout`` script that unpacks one
(``../shared/yocto/`` next to the repository or next to the one it was cloned from, or OTA_YOCTO_SHARED). Unpacked once per
machine into OTA_YOCTO_TREES (default /tmp/ota-yocto/<release>). BitBake refuses to run as
root: as root, BitBake runs as OTA_BITBAKE_USER (default "otabuild", created by .ci/run).
"""

from __future__ import annotations

import fcntl
import os
import pwd
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYER = ROOT / "meta-ota"
RELEASES = ("kirkstone", "scarthgap", "wrynose")


def shared_dir() -> Path:
    """Where the release tarballs and their checkout script are."""
    env = os.environ.get("OTA_YOCTO_SHARED")
    if env:
        return Path(env)
    # a checkout next to shared/ (<work>/<checkout>/ and <work>/shared/yocto/), or a clone of such a
    # checkout made elsewhere (CI's fresh clone in a temporary directory): next to its origin
    candidates = [ROOT.parent / "shared" / "yocto"]
    try:
        origin = subprocess.run(["git", "-C", str(ROOT), "config", "--get", "remote.origin.url"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        origin = ""
    if origin.startswith("file://"):
        origin = origin[len("file://"):]
    if origin.startswith("/"):
        candidates.append(Path(origin).resolve().parent / "shared" / "yocto")
    for candidate in candidates:
        if (candidate / "checkout").exists():
            return candidate
    return candidates[0]


def bitbake_user() -> Optional[str]:
    """None when not root (BitBake runs as us), else the user BitBake runs as; skips if absent."""
    if os.geteuid() != 0:
        return None
    name = os.environ.get("OTA_BITBAKE_USER", "otabuild")
    try:
        pwd.getpwnam(name)
    except KeyError:
        pytest.skip(f"BitBake refuses to run as root and there is no user {name!r} "
                    "(.ci/run creates it; or set OTA_BITBAKE_USER)")
    return name


def release_tree(release: str, owner: Optional[str] = None) -> Path:
    """The unpacked tree of ``release`` (unpacked on first use); skips when there is none."""
    checkout = shared_dir() / "checkout"
    if not checkout.exists() or not (shared_dir() / f"{release}.tar.xz").exists():
        pytest.skip(f"no Yocto {release} tree: {shared_dir()}/{{checkout,{release}.tar.xz}} missing (set OTA_YOCTO_SHARED)")
    base = Path(os.environ.get("OTA_YOCTO_TREES", "/tmp/ota-yocto"))
    env = dict(os.environ)
    if owner:
        env["OWNER"] = owner
    else:
        env.pop("OWNER", None)
    base.mkdir(parents=True, exist_ok=True)
    # One unpacking at a time: the pytest-xdist workers (test_layer_bitbake, test_layer_poky_<release>,
    # test_kas) ask for the same tree, and the script removes a half-unpacked tree before unpacking.
    with open(base / f".{release}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        proc = subprocess.run(["sh", str(checkout), release, str(base / release)], capture_output=True, text=True,
                              env=env, check=False, timeout=900)
    if proc.returncode != 0:
        pytest.skip(f"cannot unpack the {release} tree: {proc.stderr.strip()}")
    return Path(proc.stdout.strip().splitlines()[-1])


def bitbake_lib(release: str):
    """Import ``bb`` from the release tree's bitbake/lib (once per process: the first release asked wins)."""
    tree = release_tree(release)
    lib = str(tree / "bitbake" / "lib")
    if "bb" in sys.modules:
        loaded = getattr(sys.modules["bb"], "__file__", "") or ""
        if not loaded.startswith(lib):
            pytest.skip(f"bb is already imported from {loaded}")
    else:
        sys.path.insert(0, lib)
    dont_write, sys.dont_write_bytecode = sys.dont_write_bytecode, True   # the tree belongs to BitBake's user
    try:
        import bb  # noqa: F401
        import bb.checksum  # noqa: F401
        import bb.data  # noqa: F401
        import bb.fetch2  # noqa: F401
        import bb.parse  # noqa: F401
    finally:
        sys.dont_write_bytecode = dont_write
    return sys.modules["bb"]


def readable_by(user: Optional[str], path: Path) -> bool:
    if user is None:
        return True
    return subprocess.run(["su", user, "-s", "/bin/sh", "-c", f"test -r {shlex.quote(str(path))}"],
                          check=False).returncode == 0
