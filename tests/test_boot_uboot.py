"""The A/B boot script in a real U-Boot (Debian's u-boot-qemu, qemu_arm) under QEMU.

Each boot is one QEMU run (``-no-reboot``: the script's ``reset`` after a slot that does
not boot ends it): U-Boot's distro boot finds ``boot.scr`` on the first partition of a
virtio disk (MBR: FAT boot partition with the script and the env file, two FAT slot
partitions) and runs it. The script is the one ``ota-build boot-script`` writes for the
layer's recipe, in file mode (``saveenv`` to QEMU's CFI flash fails), compiled with the
host's ``mkimage``. A slot's "kernel" is a file of a size that names the slot; it is not
a zImage, so ``bootz`` refuses it and the boot fails, as a broken image's would. After
each boot the test reads the serial console and the env file (mtools).

U-Boot's environment in flash holds the default environment with ``bootdelay=0`` and
``boot_targets=virtio0`` (dumped once from U-Boot itself): one boot takes about a second.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from ota_build.core.bootenv import parse_env_text, state_variables
from ota_build.core.signing import generate_key
from ota_build.device import bootsim
from ota_build.device.agent import Agent
from ota_build.device.config import load_agent_config
from ota_build.partner.bootscript import boot_script_settings, render_boot_script

UBOOT = Path("/usr/lib/u-boot/qemu_arm/u-boot.bin")
SEARCH = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"            # mkfs.vfat and sfdisk are in sbin
TOOLS = {t: shutil.which(t, path=SEARCH) for t in ("qemu-system-arm", "mkimage", "mkenvimage", "mkfs.vfat", "mcopy",
                                                   "mmd", "sfdisk")}
MISSING = [t for t, p in TOOLS.items() if not p] + ([] if UBOOT.exists() else [str(UBOOT)])
pytestmark = [pytest.mark.uboot,
              pytest.mark.skipif(bool(MISSING), reason=f"needs {', '.join(MISSING)} (Debian: qemu-system-arm "
                                                       "u-boot-qemu u-boot-tools dosfstools mtools fdisk)")]

MIB = 1024 * 1024
BOOT_START, PART_SIZE = 1 * MIB, 4 * MIB
SLOTS = {"a": "/dev/vda2", "b": "/dev/vda3"}
VALUES = {"a": "0:2", "b": "0:3"}
SLOTS3, VALUES3 = {**SLOTS, "c": "/dev/vda4"}, {**VALUES, "c": "0:4"}      # the disk has a third slot partition
KERNEL_SIZES = {"a": 1111, "b": 2222, "c": 3333}   # "<n> bytes read": which partition the slot's load read
ENV_FILE = "ota-env.txt"
BOOT_COMMANDS = "load ${devtype} ${bootpart} ${kernel_addr_r} /boot/zImage && bootz ${kernel_addr_r} - ${fdtcontroladdr}"


def run(argv, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([TOOLS.get(argv[0]) or argv[0]] + argv[1:], check=True, capture_output=True, **kw)


def fat_image(path: Path, files: Dict[str, bytes], label: str, size: int = PART_SIZE):
    with open(path, "wb") as fh:
        fh.truncate(size)
    run(["mkfs.vfat", "-n", label, str(path)])
    for folder in sorted({name.rsplit("/", 1)[0] for name in files if "/" in name}):
        run(["mmd", "-i", str(path), "::" + folder])
    for name, data in files.items():
        src = path.with_name(name.replace("/", "_"))
        src.write_bytes(data)
        run(["mcopy", "-i", str(path), str(src), "::" + name])


def qemu(flash0: Path, flash1: Path, disk: Path, timeout: int = 60) -> str:
    """One boot; the serial console."""
    proc = subprocess.run(
        [str(TOOLS["qemu-system-arm"]), "-M", "virt", "-cpu", "cortex-a15", "-m", "256", "-nographic", "-nic", "none",
         "-no-reboot", "-drive", f"if=pflash,format=raw,file={flash0}", "-drive", f"if=pflash,format=raw,file={flash1}",
         "-drive", f"if=none,file={disk},format=raw,id=d0", "-device", "virtio-blk-device,drive=d0"],
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    return proc.stdout.replace("\r", "")


@dataclass
class Machine:
    """A QEMU arm board with U-Boot and a disk: boot partition + slots a and b."""

    dir: Path
    flash0: Path
    flash1: Path

    @property
    def disk(self) -> Path:
        return self.dir / "disk.img"

    def make_disk(self, script: str, env: Optional[bytes], slot_files: Optional[Dict[str, Dict[str, bytes]]] = None):
        """Boot partition with the compiled ``script`` (and ``env`` as the env file), then a FAT
        partition per slot holding ``slot_files[slot]`` (default: a /boot/zImage of the slot's size)."""
        slot_files = slot_files or {slot: {"boot/zImage": slot.encode() * size} for slot, size in KERNEL_SIZES.items()}
        size = max([PART_SIZE] + [(sum(map(len, f.values())) // MIB + 3) * MIB for f in slot_files.values()])
        cmd, scr = self.dir / "boot.cmd", self.dir / "boot.scr"
        cmd.write_text(script)
        run(["mkimage", "-A", "arm", "-T", "script", "-C", "none", "-d", str(cmd), str(scr)])
        files = {"boot.scr": scr.read_bytes()}
        if env is not None:
            files[ENV_FILE] = env
        parts = [self.dir / "p1.vfat"]
        fat_image(parts[0], files, "BOOT", size)
        for slot, content in slot_files.items():
            parts.append(self.dir / f"p-{slot}.vfat")
            fat_image(parts[-1], content, f"ROOT{slot.upper()}", size)
        with open(self.disk, "wb") as fh:
            fh.truncate(BOOT_START + len(parts) * size + MIB)
        table = "label: dos\n" + "".join(f"{(BOOT_START + i * size) // 512},{size // 512},c\n" for i in range(len(parts)))
        run(["sfdisk", "-q", str(self.disk)], input=table.encode())
        for i, part in enumerate(parts):
            run(["dd", f"if={part}", f"of={self.disk}", "bs=1M", f"seek={(BOOT_START + i * size) // MIB}",
                 "conv=notrunc,sparse", "status=none"])

    def env_bytes(self) -> Optional[bytes]:
        proc = subprocess.run([str(TOOLS["mcopy"]), "-n", "-i", f"{self.disk}@@{BOOT_START}", "::" + ENV_FILE, "-"],
                              capture_output=True, check=False)
        return proc.stdout if proc.returncode == 0 else None

    def boot(self) -> "Boot":
        console = qemu(self.flash0, self.flash1, self.disk)
        chosen = re.findall(r"^ota: booting slot (\w+) \(bootpart=(\S*) root=(\S*)\)$", console, re.M)
        assert len(chosen) == 1, console[-3000:]
        slot, bootpart, root = chosen[0]
        read = re.search(r"^(\d+) bytes read.*\n(?:.*\n)*?ota: slot \w+ did not boot", console.split("ota: booting")[-1],
                         re.M)
        return Boot(slot, bootpart, root, console, int(read.group(1)) if read else None, self.env_bytes())


@dataclass
class Boot:
    slot: str
    bootpart: str
    root: str
    console: str
    kernel_bytes: Optional[int]
    env: Optional[bytes]

    @property
    def vars(self) -> Dict[str, str]:
        return parse_env_text(self.env or b"")


def check_slot(boot: Boot, slot: str):
    """The script chose ``slot``, set the boot variable, root and ota.slot for it, loaded from its partition."""
    assert boot.slot == slot, boot.console[-2000:]
    assert (boot.bootpart, boot.root) == (VALUES3[slot], SLOTS3[slot])
    assert boot.kernel_bytes == KERNEL_SIZES[slot], boot.console[-2000:]
    assert "zimage: Bad magic!" in boot.console                # bootz ran on the slot's "kernel", which failed
    assert f"ota: slot {slot} did not boot" in boot.console and "resetting ..." in boot.console


def env_text(**values: str) -> bytes:
    """An env file as the agent writes it: KEY=value lines."""
    return "".join(f"{k}={v}\n" for k, v in values.items()).encode()


@pytest.fixture(scope="module")
def firmware(tmp_path_factory):
    """Flash 0: U-Boot padded to 64 MiB; flash 1: its default environment with bootdelay=0, virtio only."""
    top = tmp_path_factory.mktemp("uboot")
    flash0, blank, flash1 = top / "flash0.img", top / "blank.img", top / "flash1.img"
    shutil.copyfile(UBOOT, flash0)
    for path in (flash0, blank, flash1):
        with open(path, "ab") as fh:
            fh.truncate(64 * MIB)
    dump = Machine(top / "dump", flash0, blank)
    dump.dir.mkdir()
    dump.make_disk("env export -t ${kernel_addr_r}\nfatwrite ${devtype} ${devnum}:${distro_bootpart} "
                   f"${{kernel_addr_r}} {ENV_FILE} ${{filesize}}\npoweroff\n", None)
    qemu(flash0, blank, dump.disk)
    default = parse_env_text(dump.env_bytes() or b"")
    assert default.get("bootcmd") and "distro_bootcmd" in default["bootcmd"], default
    default.update(bootdelay="0", boot_targets="virtio0")
    for name in ("filesize", "fileaddr"):
        default.pop(name, None)
    (top / "env.txt").write_text("".join(f"{k}={v}\n" for k, v in default.items()))
    run(["mkenvimage", "-s", "0x40000", "-o", str(top / "env.bin"), str(top / "env.txt")])
    with open(flash1, "r+b") as fh:
        fh.write((top / "env.bin").read_bytes())
    return flash0, flash1


@pytest.fixture
def machine(firmware, tmp_path) -> Machine:
    return Machine(tmp_path, *firmware)


def flash_env(machine: Machine, base: Path, **values: str) -> Path:
    """A copy of the environment flash ``base`` with ``values`` added (what fw_setenv would have written)."""
    default = base.parent / "env.txt"
    text = machine.dir / "env.txt"
    text.write_text(default.read_text() + "".join(f"{k}={v}\n" for k, v in values.items()))
    run(["mkenvimage", "-s", "0x40000", "-o", str(machine.dir / "env.bin"), str(text)])
    flash1 = machine.dir / f"flash1-{len(list(machine.dir.glob('flash1-*.img')))}.img"
    shutil.copyfile(base, flash1)
    with open(flash1, "r+b") as fh:
        fh.write((machine.dir / "env.bin").read_bytes())
    return flash1


def script(**kw) -> str:
    kw.setdefault("boot_commands", BOOT_COMMANDS)
    settings = boot_script_settings(SLOTS, boot_variable="bootpart", boot_values=VALUES, storage="file",
                                    env_file=ENV_FILE, **kw)
    return render_boot_script(settings)


def test_committed_system_boots_the_first_slot_and_writes_nothing(machine):
    # no env file at all (a fresh card): the configured order, nothing written
    machine.make_disk(script(), None)
    boot = machine.boot()
    check_slot(boot, "a")
    assert boot.env is None and "bytes written" not in boot.console
    # committed on b (an earlier update): b, and the file is not rewritten (it keeps a line the script would drop)
    committed = env_text(BOOT_ORDER="b a", BOOT_b_LEFT="3", upgrade_available="0", bootcount="0", bootlimit="3",
                         bootpart="0:3", keep="1")
    machine.make_disk(script(), committed)
    for _ in range(2):
        boot = machine.boot()
        check_slot(boot, "b")
        assert boot.env == committed and "bytes written" not in boot.console


def test_uncommitted_slot_rolls_back_after_bootlimit_failed_boots(machine):
    """The agent switched to b (BOOT_b_LEFT = bootlimit = 3) and b never commits: three
    attempts on b, then the script puts a first again, upgrade_available=0."""
    switched = env_text(BOOT_ORDER="b a", BOOT_a_LEFT="3", BOOT_b_LEFT="3", upgrade_available="1", bootcount="0",
                        bootlimit="3", bootpart="0:3")
    machine.make_disk(script(), switched)
    for attempt in (1, 2, 3):
        boot = machine.boot()
        check_slot(boot, "b")
        assert f"ota: slot b is not committed: attempt {attempt}, {3 - attempt} left" in boot.console
        assert boot.vars == {"BOOT_ORDER": "b a", "BOOT_a_LEFT": "3", "BOOT_b_LEFT": str(3 - attempt),
                             "upgrade_available": "1", "bootcount": str(attempt), "bootlimit": "3", "bootpart": "0:3"}
    boot = machine.boot()
    assert "ota: slot b used up its boot attempts: rolling back" in boot.console
    check_slot(boot, "a")
    assert boot.vars == {"BOOT_ORDER": "a b", "BOOT_a_LEFT": "3", "BOOT_b_LEFT": "0", "upgrade_available": "0",
                         "bootcount": "0", "bootlimit": "3", "bootpart": "0:2"}
    rolled_back = boot.env
    boot = machine.boot()                                   # back on a, committed: no more writes
    check_slot(boot, "a")
    assert boot.env == rolled_back and "bytes written" not in boot.console


def test_committed_new_slot_stays(machine):
    """Switch to b, one boot, the agent commits (upgrade_available=0, bootcount=0,
    BOOT_b_LEFT=bootlimit): b stays, boot after boot, past bootlimit."""
    machine.make_disk(script(), env_text(BOOT_ORDER="b a", BOOT_b_LEFT="3", upgrade_available="1", bootcount="0",
                                         bootlimit="3", bootpart="0:3"))
    boot = machine.boot()
    check_slot(boot, "b")
    assert boot.vars["BOOT_b_LEFT"] == "2" and boot.vars["upgrade_available"] == "1"
    committed = env_text(BOOT_ORDER="b a", BOOT_b_LEFT="3", upgrade_available="0", bootcount="0", bootlimit="3",
                         bootpart="0:3")
    machine.make_disk(script(), committed)
    for _ in range(4):
        boot = machine.boot()
        check_slot(boot, "b")
        assert boot.env == committed and "not committed" not in boot.console


def test_unknown_or_missing_counters(machine):
    """An uncommitted slot without a BOOT_<slot>_LEFT has no attempts: it rolls back at once;
    a BOOT_ORDER naming no known slot boots the first configured slot."""
    machine.make_disk(script(), env_text(BOOT_ORDER="b a", upgrade_available="1"))
    boot = machine.boot()
    assert "ota: slot b used up its boot attempts: rolling back" in boot.console
    check_slot(boot, "a")
    assert boot.vars["BOOT_ORDER"] == "a b" and boot.vars["upgrade_available"] == "0"
    machine.make_disk(script(), env_text(BOOT_ORDER="x y", upgrade_available="0"))
    check_slot(machine.boot(), "a")


def test_saveenv_mode_reads_the_environment_and_saves_only_an_uncommitted_slot(machine, firmware):
    """saveenv mode (real boards): the state comes from U-Boot's own environment, and saveenv
    runs only while upgrade_available=1. (QEMU's CFI flash fails U-Boot's write, "Flash buffer
    write timeout", so what persists across boots is shown in file mode above.)"""
    machine.make_disk(render_boot_script(boot_script_settings(SLOTS, boot_variable="bootpart", boot_values=VALUES,
                                                              boot_commands=BOOT_COMMANDS)), None)
    machine.flash1 = flash_env(machine, firmware[1], BOOT_ORDER="b a", BOOT_b_LEFT="0", upgrade_available="0", bootpart="0:2")
    boot = machine.boot()
    check_slot(boot, "b")
    assert "Loading Environment from Flash... OK" in boot.console and "Saving Environment" not in boot.console
    machine.flash1 = flash_env(machine, firmware[1], BOOT_ORDER="b a", BOOT_b_LEFT="3", upgrade_available="1", bootcount="0",
                               bootpart="0:3")
    boot = machine.boot()
    assert "ota: slot b is not committed: attempt 1, 2 left" in boot.console
    assert boot.console.index("Saving Environment to Flash") < boot.console.index("ota: booting slot b")
    check_slot(boot, "b")


def test_three_slots_rotate(machine):
    """The rule is not two-slot only: c fails its attempt, the order rotates to "a b c"."""
    machine.make_disk(render_boot_script(boot_script_settings(SLOTS3, boot_variable="bootpart", boot_values=VALUES3,
                                                              storage="file", env_file=ENV_FILE,
                                                              boot_commands=BOOT_COMMANDS)),
                      env_text(BOOT_ORDER="c a b", BOOT_c_LEFT="1", upgrade_available="1", bootcount="0"))
    check_slot(machine.boot(), "c")
    boot = machine.boot()
    assert "ota: slot c used up its boot attempts: rolling back" in boot.console
    check_slot(boot, "a")
    assert boot.vars["BOOT_ORDER"] == "a b c" and boot.vars["upgrade_available"] == "0"


LINUX_DEBS = Path(os.environ.get("OTA_TEST_LINUX_DEBS", "/var/cache/ota-test/armhf"))
INIT = """#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
echo "ota-test: /proc/cmdline: $(/bin/busybox cat /proc/cmdline)"
/bin/busybox poweroff -f
"""


def linux_files(tmp: Path) -> Dict[str, bytes]:
    """/boot/zImage (Debian's armmp kernel) and /boot/initrd (busybox; /init prints /proc/cmdline, powers off)."""
    kernel = sorted(LINUX_DEBS.glob("linux-image-*-armmp_*_armhf.deb"))
    busybox = sorted(LINUX_DEBS.glob("busybox-static_*_armhf.deb"))
    if not kernel or not busybox or not shutil.which("dpkg-deb") or not shutil.which("cpio"):
        pytest.skip(f"no Debian armhf kernel and busybox-static .debs in {LINUX_DEBS} (OTA_TEST_LINUX_DEBS; .ci/run "
                    "downloads them: dpkg --add-architecture armhf; apt-get download linux-image-<version>-armmp:armhf "
                    "busybox-static:armhf), or no dpkg-deb/cpio")
    root = tmp / "initrd"
    for deb in (kernel[-1], busybox[-1]):
        run(["dpkg-deb", "-x", str(deb), str(tmp / "debs")])
    (root / "bin").mkdir(parents=True)
    (root / "proc").mkdir()
    (root / "dev").mkdir()
    shutil.copy(tmp / "debs" / "bin" / "busybox", root / "bin" / "busybox")
    (root / "init").write_text(INIT)
    (root / "init").chmod(0o755)
    names = "\n".join(sorted(str(p.relative_to(root)) for p in root.rglob("*"))) + "\n"
    archive = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], input=names.encode(), cwd=root, check=True,
                             capture_output=True).stdout
    return {"boot/zImage": next((tmp / "debs" / "boot").glob("vmlinuz-*")).read_bytes(),
            "boot/initrd": gzip.compress(archive, 1)}


def test_linux_boots_the_chosen_slot_with_ota_slot_on_its_command_line(machine, tmp_path):
    """A real kernel from the slot: the uncommitted slot b is counted, its kernel and initramfs
    load from b's partition, and Linux's /proc/cmdline ends with ota.slot=b (the agent's source)."""
    files = linux_files(tmp_path)
    machine.make_disk(render_boot_script(boot_script_settings(
        SLOTS, boot_variable="bootpart", boot_values=VALUES, storage="file", env_file=ENV_FILE,
        bootargs="console=ttyAMA0 quiet root=${ota_boot_root} rootwait",
        boot_commands="load virtio ${bootpart} ${kernel_addr_r} /boot/zImage && load virtio ${bootpart} "
                      "${ramdisk_addr_r} /boot/initrd && bootz ${kernel_addr_r} ${ramdisk_addr_r}:${filesize} "
                      "${fdtcontroladdr}")),
        env_text(BOOT_ORDER="b a", BOOT_b_LEFT="3", upgrade_available="1", bootcount="0", bootlimit="3"),
        slot_files={"a": {"boot/zImage": b"not a kernel"}, "b": files})
    console = qemu(machine.flash0, machine.flash1, machine.disk, timeout=240)
    assert "ota: slot b is not committed: attempt 1, 2 left" in console, console[-3000:]
    cmdline = re.findall(r"^ota-test: /proc/cmdline: (.*)$", console, re.M)
    assert cmdline == ["console=ttyAMA0 quiet root=/dev/vda3 rootwait ota.slot=b"], console[-3000:]
    assert parse_env_text(machine.env_bytes() or b"")["BOOT_b_LEFT"] == "2"


def test_a_damaged_counter_still_counts_down(machine):
    """A counter that is not one number (a damaged file) is read as its leading number, never kept as is."""
    machine.make_disk(script(), env_text(BOOT_ORDER="b a", BOOT_b_LEFT="2 * 9", upgrade_available="1", bootcount="x"))
    boot = machine.boot()
    check_slot(boot, "b")
    assert boot.vars["BOOT_b_LEFT"] == "1"


# --- one contract across both halves: the boot script's model and the agent against the real script ----------

def put_env(machine: Machine, data: bytes) -> None:
    """Write ``data`` as the env file on the disk's FAT boot partition (mtools, as Linux would on /uboot)."""
    src = machine.dir / "env-upload.txt"
    src.write_bytes(data)
    run(["mcopy", "-o", "-i", f"{machine.disk}@@{BOOT_START}", str(src), "::" + ENV_FILE])


def cross_check(machine: Machine, slots: Dict[str, str], values: Dict[str, str], env: Optional[Dict[str, str]],
                boots: int) -> List[str]:
    """Boot ``boots`` times in U-Boot and in ``bootsim.boot``: the same slot, the same decision to save, the same
    saved state (the file holds the state variables and the boot variable: what the script exports)."""
    machine.make_disk(render_boot_script(boot_script_settings(slots, boot_variable="bootpart", boot_values=values,
                                                              storage="file", env_file=ENV_FILE,
                                                              boot_commands=BOOT_COMMANDS)),
                      None if env is None else env_text(**env))
    exported = state_variables(list(slots)) + ["bootpart"]
    current, chosen = dict(env or {}), []
    for _ in range(boots):
        slot, saved, volatile = bootsim.boot(current, list(slots), "bootpart", values)
        before = machine.env_bytes()
        boot = machine.boot()
        check_slot(boot, slot)
        assert boot.bootpart == volatile["bootpart"] and volatile["bootargs"].endswith(f"ota.slot={slot}")
        wrote = boot.env != before
        assert wrote == (saved != current), (current, saved, boot.console[-1500:])
        if wrote:
            assert boot.vars == {k: saved[k] for k in exported if k in saved}, (current, boot.console[-1500:])
            current = boot.vars
        chosen.append(slot)
    return chosen


SWITCHED = dict(BOOT_ORDER="b a", BOOT_a_LEFT="3", BOOT_b_LEFT="3", upgrade_available="1", bootcount="0",
                bootlimit="3", bootpart="0:3")


@pytest.mark.parametrize("slots, values, env, expected", [
    (SLOTS, VALUES, None, ["a"]),                                                       # fresh card, no file
    (SLOTS, VALUES, dict(BOOT_ORDER="b a", BOOT_b_LEFT="3", upgrade_available="0", bootcount="0", bootpart="0:3",
                         keep="1"), ["b", "b"]),                                        # committed
    (SLOTS, VALUES, SWITCHED, ["b", "b", "b", "a", "a"]),                               # counters 3, 2, 1, 0
    (SLOTS, VALUES, dict(BOOT_ORDER="b a", upgrade_available="1"), ["a", "a"]),         # missing counters
    (SLOTS, VALUES, dict(upgrade_available="1", BOOT_a_LEFT="1"), ["a", "b"]),          # no BOOT_ORDER
    (SLOTS, VALUES, dict(BOOT_ORDER="x b a", BOOT_b_LEFT="1", upgrade_available="1"), ["b", "a", "a"]),
    (SLOTS3, VALUES3, dict(BOOT_ORDER="c a b", BOOT_c_LEFT="1", upgrade_available="1", bootcount="0"),
     ["c", "a", "a"]),                                                                  # three slots
    (SLOTS, VALUES, dict(BOOT_ORDER="b a", BOOT_b_LEFT="2 * 9", upgrade_available="1", bootcount="x"),
     ["b", "b", "a"]),                                                                  # damaged counters
    (SLOTS, VALUES, dict(BOOT_ORDER="b a", BOOT_b_LEFT="12", upgrade_available="1"), ["b", "b", "b", "a"]),  # above 9
], ids=["fresh", "committed", "switched-3-2-1-0", "missing-counters", "no-order", "unknown-slot", "three-slots",
        "damaged", "above-9"])
def test_bootsim_and_the_real_script_agree(machine, slots, values, env, expected):
    assert cross_check(machine, slots, values, env, len(expected)) == expected


def agent_on(machine: Machine, health: List[str]) -> Agent:
    """The real agent for this machine: its boot state is a host copy of the FAT partition's env file (copied
    over with mtools), its kernel command line and boot id are files the test writes after each boot."""
    root = machine.dir / "device"
    (root / "etc").mkdir(parents=True)
    generate_key("ecdsa-p256", str(root / "k.pem"), str(root / "etc" / "k.pub.pem"), backend="cryptography")
    for slot in SLOTS:
        (root / f"slot-{slot}.img").write_bytes(b"")
    conf = {"device": "qemu-1", "server": "http://127.0.0.1:9", "deviceToken": "t", "deviceTypeId": "dt",
            "publicKeys": ["etc/k.pub.pem"], "record": "etc/full_ota_record.json", "stateDir": "state",
            "cmdline": "cmdline", "bootIdFile": "boot_id", "bootLimit": 3, "healthCheck": health,
            "flask": {"host": "127.0.0.1", "port": 0}, "token": "local",
            "installer": {"type": "ab", "slots": {s: str(root / f"slot-{s}.img") for s in SLOTS},
                          "bootEnv": {"tool": "file", "file": str(root / ENV_FILE), "variable": "bootpart",
                                      "values": VALUES}}}
    (root / "ota-agent.json").write_text(json.dumps(conf))
    return Agent(load_agent_config(str(root / "ota-agent.json")))


def booted(machine: Machine, agent: Agent) -> Boot:
    """One QEMU boot, then what Linux would see: /proc/cmdline (the bootargs the script printed), a new boot id,
    and the env file as U-Boot left it on the boot partition (with its NUL), copied to the agent's path."""
    boot = machine.boot()
    cmdline = re.findall(r"^ota-test: cmdline (.*)$", boot.console, re.M)
    assert len(cmdline) == 1, boot.console[-2000:]
    root = Path(agent.config.path).parent
    (root / "cmdline").write_text(cmdline[0] + "\n")
    (root / "boot_id").write_text(str(uuid.uuid4()) + "\n")
    if boot.env is not None:
        (root / ENV_FILE).write_bytes(boot.env)
    return boot


def switched_by_the_agent(machine: Machine, health: List[str]) -> Agent:
    """Slot a runs (a fresh card: no env file); the agent records the verified slot b as pending and switches
    (its own _switch, i.e. BootEnv.switch into the env file), which goes onto the boot partition."""
    machine.make_disk(script(boot_commands='echo "ota-test: cmdline ${bootargs}"; ' + BOOT_COMMANDS), None)
    agent = agent_on(machine, health)
    check_slot(booted(machine, agent), "a")
    assert agent.installer.active_slot() == "a"                  # from ota.slot= on the command line
    agent._save_state(pending={"slot": "b", "versionNumber": 7, "fromSlot": "a", "bootId": agent._boot_id(),
                               "switched": False})
    assert agent._switch("").state == "pending-reboot"
    written = Path(agent.config.installer["bootEnv"]["file"]).read_bytes()
    assert parse_env_text(written) == {"BOOT_ORDER": "b a", "BOOT_b_LEFT": "3", "upgrade_available": "1",
                                       "bootcount": "0", "bootpart": "0:3"}
    put_env(machine, written)
    return agent


def test_agent_switch_boot_and_commit_in_uboot(machine):
    """The agent's switch -> U-Boot boots b (attempt 1) -> the agent reads U-Boot's file back (NUL-terminated),
    health check passes, commits -> every later boot keeps b and writes nothing."""
    agent = switched_by_the_agent(machine, ["true"])
    boot = booted(machine, agent)
    check_slot(boot, "b")
    assert "ota: slot b is not committed: attempt 1, 2 left" in boot.console
    assert boot.env is not None and boot.env.endswith(b"\n\0")   # env export -t's NUL, read by the agent
    assert agent.installer.active_slot() == "b"
    outcome = agent.settle()
    assert outcome is not None and (outcome.state, outcome.version_number) == ("installed", 7), outcome
    committed = Path(agent.config.installer["bootEnv"]["file"]).read_bytes()
    assert b"\0" not in committed
    assert parse_env_text(committed) == {"BOOT_ORDER": "b a", "BOOT_b_LEFT": "3", "upgrade_available": "0",
                                         "bootcount": "0", "bootpart": "0:3"}
    put_env(machine, committed)
    for _ in range(4):                                            # past bootlimit
        boot = booted(machine, agent)
        check_slot(boot, "b")
        assert boot.env == committed and "bytes written" not in boot.console and "not committed" not in boot.console
    assert agent.settle() is None


def test_agent_switch_without_commit_rolls_back_in_uboot(machine):
    """The agent switches, b's health check fails on each of its bootlimit boots (no commit), U-Boot falls back
    to a; the agent, on a with a new boot id, reports rolled-back and never retries versionNumber 7."""
    agent = switched_by_the_agent(machine, ["sh", "-c", "echo app did not start >&2; exit 1"])
    for attempt in (1, 2, 3):
        boot = booted(machine, agent)
        check_slot(boot, "b")
        assert f"ota: slot b is not committed: attempt {attempt}, {3 - attempt} left" in boot.console
        outcome = agent.settle()
        assert outcome is not None and outcome.state == "failed" and "app did not start" in outcome.message
        assert agent.installer.boot_env.read_all()["upgrade_available"] == "1"
    boot = booted(machine, agent)
    assert "ota: slot b used up its boot attempts: rolling back" in boot.console
    check_slot(boot, "a")
    assert agent.installer.boot_env.read_all() == {"BOOT_ORDER": "a b", "BOOT_b_LEFT": "0", "upgrade_available": "0",
                                                    "bootcount": "0", "bootpart": "0:2"}
    outcome = agent.settle()
    assert outcome is not None and (outcome.state, outcome.version_number) == ("rolled-back", 7), outcome
    assert agent._state()["failedVersionNumbers"] == [7] and agent.settle() is None
    check_slot(booted(machine, agent), "a")                      # committed again: a stays
