"""The archive installer (the seed's tar.gz payload): a fresh filesystem on the inactive slot, the tarball
unpacked as it streams, the boot slot switched only on a matching SHA-256. Real tarballs, a real ext4
(mkfs.ext4 + a loop mount as root) where the machine allows it, and the real server for the agent."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path
from typing import List, Tuple

import pytest

from ota_build.device.archive import ArchiveInstaller
from ota_build.device.installers import BootEnv, InstallError

from .test_device_agent import make_device, publish_with_seed_tools
from .test_device_ab import agent_for, deploy


def make_tarball(path: Path, members: List[Tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def entry(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", mode: int = 0o644, link: str = "") -> \
        Tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname, info.size = kind, mode, link, len(data) if kind == tarfile.REGTYPE else 0
    info.uid = info.gid = 0
    return info, data


def rootfs_members() -> List[Tuple[tarfile.TarInfo, bytes]]:
    busybox = os.urandom(300_000)
    return [
        entry("./", tarfile.DIRTYPE, mode=0o755),
        entry("./bin", tarfile.DIRTYPE, mode=0o755),
        entry("./bin/busybox", data=busybox, mode=0o4755),            # setuid kept (a root filesystem needs it)
        entry("./bin/sh", tarfile.SYMTYPE, link="/bin/busybox"),        # absolute link: resolved on the device
        entry("./bin/ls", tarfile.SYMTYPE, link="busybox"),
        entry("./bin/su", tarfile.LNKTYPE, link="./bin/busybox", mode=0o4755),  # a hard link in the tree
        entry("./etc", tarfile.DIRTYPE, mode=0o755),
        entry("./etc/version", data=b"1.0.2d\n"),
        entry("./etc/shadow", data=b"root:*:0:0:99999:7:::\n", mode=0o600),
        entry("./var/log/empty", tarfile.DIRTYPE, mode=0o755),
    ]


def assert_same_tree(tarball: Path, root: Path) -> None:
    """Every member of ``tarball`` is in ``root``: regular files byte-identical, modes, links."""
    with tarfile.open(tarball, "r:gz") as tar:
        for info in tar:
            path = root / info.name
            st = os.lstat(path)
            if info.isreg():
                assert path.read_bytes() == tar.extractfile(info).read(), info.name  # type: ignore[union-attr]
                assert stat.S_IMODE(st.st_mode) == info.mode, info.name
            elif info.issym():
                assert os.readlink(path) == info.linkname, info.name
            elif info.islnk():
                assert os.path.samefile(path, root / info.linkname), info.name
            elif info.isdir():
                assert stat.S_ISDIR(st.st_mode), info.name


def dir_slots(tmp_path: Path):
    a, b = tmp_path / "slot-a", tmp_path / "slot-b"
    a.mkdir()
    (a / "running").write_text("A")
    b.mkdir()
    (b / "stale-file").write_text("from the previous image")
    env = tmp_path / "uEnv.txt"
    env.write_text("bootpart=0:2\n")
    boot = BootEnv({"tool": "file", "file": str(env), "variable": "bootpart", "values": {"a": "0:2", "b": "0:3"}})
    return a, b, env, ArchiveInstaller({"a": str(a), "b": str(b)}, boot, cmdline=str(tmp_path / "no-cmdline"))


def sha(path: Path) -> bytes:
    return hashlib.sha256(path.read_bytes()).digest()


def test_tarball_unpacked_into_an_emptied_slot_and_switched(tmp_path):
    a, b, env, inst = dir_slots(tmp_path)
    tarball = make_tarball(tmp_path / "rootfs.tar.gz", rootfs_members())
    res = inst.install(str(tarball), sha(tarball))
    assert res.slot == "b"
    assert not (b / "stale-file").exists() and (a / "running").read_text() == "A"
    assert_same_tree(tarball, b)
    assert stat.S_IMODE(os.lstat(b / "bin/busybox").st_mode) == 0o4755
    assert env.read_text() == "bootpart=0:3\nBOOT_ORDER=b a\nBOOT_b_LEFT=3\nupgrade_available=1\nbootcount=0\n"


def test_hash_mismatch_does_not_switch(tmp_path):
    _, _, env, inst = dir_slots(tmp_path)
    tarball = make_tarball(tmp_path / "rootfs.tar.gz", rootfs_members())
    with pytest.raises(InstallError, match="different SHA-256"):
        inst.install(str(tarball), hashlib.sha256(b"another payload").digest())
    assert env.read_text() == "bootpart=0:2\n"


UNSAFE = {
    "dotdot": ([entry("../escaped", data=b"x")], "'..' path"),
    "absolute": ([entry("/escaped", data=b"x")], "absolute"),
    "through-symlink": ([entry("etc", tarfile.SYMTYPE, link="{outside}"), entry("etc/passwd", data=b"x")],
                        "symbolic link"),
    "hardlink-out": ([entry("pw", tarfile.LNKTYPE, link="../../etc/passwd")], "hard link"),
    "device": ([entry("dev/sda", tarfile.BLKTYPE)], "device node"),
}


@pytest.mark.parametrize("case", list(UNSAFE))
def test_unsafe_members_are_refused(case, tmp_path):
    _, b, env, inst = dir_slots(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    members, needle = UNSAFE[case]
    fixed = []
    for info, data in members:
        info.linkname = info.linkname.replace("{outside}", str(outside))
        fixed.append((info, data))
    tarball = make_tarball(tmp_path / f"{case}.tar.gz", fixed)
    with pytest.raises(InstallError, match=needle):
        inst.install(str(tarball), sha(tarball))
    assert env.read_text() == "bootpart=0:2\n"
    assert list(outside.iterdir()) == [] and not (tmp_path / "escaped").exists()


def _loop_mount_works(tmp_path: Path) -> bool:
    if os.geteuid() != 0 or not shutil.which("mkfs.ext4"):
        return False
    img, mnt = tmp_path / "probe.img", tmp_path / "probe"
    mnt.mkdir()
    with open(img, "wb") as fh:
        fh.truncate(8 << 20)
    subprocess.run(["mkfs.ext4", "-F", "-q", str(img)], check=True)
    if subprocess.run(["mount", str(img), str(mnt)], capture_output=True).returncode != 0:
        return False
    subprocess.run(["umount", str(mnt)], check=True)
    return True


def test_fresh_ext4_on_a_file_backed_slot(tmp_path):
    """The default commands: mkfs.ext4 -F -q {slot}, mount {slot} {mountpoint} (a loop mount), umount."""
    if not _loop_mount_works(tmp_path):
        pytest.skip("needs root and loop mounts (mkfs.ext4 + mount of a file)")
    a, b = tmp_path / "slot-a.img", tmp_path / "slot-b.img"
    for slot in (a, b):
        with open(slot, "wb") as fh:
            fh.truncate(32 << 20)
    subprocess.run(["mkfs.ext4", "-F", "-q", str(b)], check=True)
    env = tmp_path / "uEnv.txt"
    env.write_text("bootpart=0:2\n")
    mountpoint = tmp_path / "mnt"
    inst = ArchiveInstaller({"a": str(a), "b": str(b)}, BootEnv({"tool": "file", "file": str(env), "variable": "bootpart",
                                                                     "values": {"a": "0:2", "b": "0:3"}}),
                            cmdline=str(tmp_path / "no-cmdline"), spec={"mountpoint": str(mountpoint)})
    tarball = make_tarball(tmp_path / "rootfs.tar.gz", rootfs_members())
    inst.install(str(tarball), sha(tarball))
    assert "BOOT_ORDER=b a" in env.read_text()
    assert not os.path.ismount(mountpoint)                            # unmounted after the install
    out = subprocess.run(["debugfs", "-R", "cat /etc/version", str(b)], capture_output=True, check=True)
    assert out.stdout == b"1.0.2d\n"                                  # read by e2fsprogs, not through the mount
    subprocess.run(["mount", "-o", "ro", str(b), str(mountpoint)], check=True)
    try:
        assert_same_tree(tarball, mountpoint)
        assert sorted(os.listdir(mountpoint)) == ["bin", "etc", "lost+found", "var"]   # a fresh filesystem
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)


def test_agent_installs_the_seeds_tar_gz_from_the_server(server, partner, keys, tmp_path):
    key = keys["ed25519"]
    published = publish_with_seed_tools(partner, key["private"])        # the seed's default payload: rootfs.tar.gz
    conf = make_device(tmp_path, server.url, partner.device("dev-t"), key["public"], device_id="dev-t",
                       device_type=partner.device_type)
    root = conf.parent
    (root / "slot-a.img").unlink()
    (root / "slot-b.img").unlink()
    (root / "rootfs-a").mkdir()
    (root / "rootfs-b").mkdir()
    import json

    doc = json.loads(conf.read_text())
    doc["installer"] = {"type": "archive", "slots": {"a": str(root / "rootfs-a"), "b": str(root / "rootfs-b")},
                        "bootEnv": {"tool": "file", "file": str(root / "bootenv")}}
    conf.write_text(json.dumps(doc))
    deploy(partner, "dev-t", published["imageId"])
    outcome = agent_for(conf).check_once()
    assert outcome.state == "pending-reboot", outcome
    assert_same_tree(Path(published["rootfs"]), root / "rootfs-b")
    assert (root / "rootfs-b/etc/version").read_text() == published["record"]["version"]
    assert "BOOT_ORDER=b a" in (root / "bootenv").read_text()
    assert sorted(p.name for p in (root / "var/lib/ota-agent").iterdir()) == ["ota_type_5.hdr", "state.json"]
