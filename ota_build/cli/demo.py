"""``ota-build demo``: the whole journey on this machine, every step printed.

Build side: a sample rootfs tarball, a development key, the OTA record,
``hub_update.bin``, verified. Then (unless ``--offline``) the service side:
an OTA server on 127.0.0.1 with its embedded SQLite database, a partner
account, the seed's ``--createOTARecord``/``--uploadOTAImage``/``--list``/
``-d -i`` commands, and a simulated device (the agent with file-backed A/B
slots) that downloads, verifies, installs and reports. The commands are the
ones a user would type; each is printed before it runs.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Any, Dict, Optional, Tuple

from ota_build.core.errors import OtaError
from ota_build.core.files import atomic_write_text
from ota_build.core.record import new_record, write_record
from ota_build.cli.sample import make_sample_rootfs
from ota_build.core.files import ensure_dir

SAMPLE_CONFIG = {
    "Comments": "Sample configuration written by 'ota-build demo' (secrets are in credentials.json)",
    "description": "meta-ota demo image",
    "name": "Potenco-demo",
    "version": "1.0",
    "url": "dummy",
    "imageFiles": {"A": "hub_update.bin"},
}


class DemoError(OtaError):
    """A demo step failed."""


class Demo:
    """Runs the journey in ``workdir``."""

    def __init__(self, workdir: str):
        self.workdir = os.path.abspath(workdir)
        self.bindir = os.path.dirname(os.path.abspath(sys.argv[0])) if sys.argv and sys.argv[0] else ""
        self.env = dict(os.environ)
        self.env.pop("OTA_SERVER", None)
        self.n = 0
        self.server: Optional[subprocess.Popen] = None

    def tool(self, name: str) -> str:
        """Path of one of our console scripts, next to the running one when possible."""
        candidate = os.path.join(self.bindir, name)
        return candidate if os.path.exists(candidate) else name

    def step(self, text: str) -> None:
        self.n += 1
        print(f"\n[{self.n}] {text}", flush=True)

    def run(self, *argv: str, cwd: Optional[str] = None, show: bool = True, ok: Tuple[int, ...] = (0,)) -> str:
        """Run a command as a user would, echoing it; DemoError with its one-line error if it exits with a code
        not in ``ok``."""
        cmd = [self.tool(argv[0])] + list(argv[1:])
        if show:
            print("    $ " + " ".join(shlex.quote(a) for a in [argv[0], *argv[1:]]), flush=True)
        proc = subprocess.run(cmd, cwd=cwd or self.workdir, env=self.env, capture_output=True, text=True,
                              timeout=600, check=False)
        if show and proc.stdout.strip():
            for line in proc.stdout.rstrip().splitlines():
                print("      " + line)
        if proc.returncode not in ok:
            err = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
            raise DemoError(f"'{argv[0]} {argv[1] if len(argv) > 1 else ''}' failed: {err}")
        return proc.stdout

    # ------------------------------------------------------------------ build side
    def build_side(self) -> Dict[str, str]:
        w = self.workdir
        conf = os.path.join(w, "partner-ota-conf.json")
        files = {"conf": conf, "key": os.path.join(w, "dev-signing.key.pem"),
                 "pub": os.path.join(w, "dev-signing.pub.pem"), "record": os.path.join(w, "full_ota_record.json"),
                 "bin": os.path.join(w, "hub_update.bin")}
        self.step("a sample root filesystem tarball (what bitbake core-image-minimal leaves in DEPLOY_DIR_IMAGE)")
        files["rootfs"] = make_sample_rootfs(os.path.join(w, "core-image-minimal-sample.rootfs.tar.gz"),
                                             {"etc/issue": b"meta-ota demo 1.0.2d\n"})
        print(f"      {files['rootfs']} ({os.path.getsize(files['rootfs'])} bytes)")
        self.step("a development signing key pair (Ed25519)")
        self.run("ota-build", "keygen", "-o", os.path.join(w, "dev-signing"), "--force")
        return files

    def package_and_verify(self, files: Dict[str, str]) -> None:
        self.step("the signed hub_update.bin: a 216-byte header (type, versionNumber, sha256, signature) + the rootfs")
        self.run("ota-build", "package", files["rootfs"], "-r", files["record"], "-k", files["key"], "-o", files["bin"])
        self.step("verify it as the device will (and extract the payload)")
        self.run("ota-build", "verify", files["bin"], "-k", files["pub"], "-t", "5", "-x",
                 os.path.join(self.workdir, "ota_type_5.img"))

    # ------------------------------------------------------------------ server
    def start_server(self) -> str:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        data = os.path.join(self.workdir, "server-data")
        url = f"http://127.0.0.1:{port}"
        self.step(f"start the OTA server on {url} (embedded SQLite in {data})")
        print(f"    $ ota-build serve --port {port} --data-dir {data} &")
        log = open(os.path.join(self.workdir, "server.log"), "wb")
        self.server = subprocess.Popen([self.tool("ota-build"), "serve", "--port", str(port), "--data-dir", data],
                                       stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.server.poll() is not None:
                raise DemoError(f"the server exited ({self.server.returncode}); see {log.name}")
            try:
                with urllib.request.urlopen(url + "/test", timeout=1):  # noqa: S310 (loopback)
                    return url
            except OSError:
                time.sleep(0.2)
        raise DemoError("the server did not answer within 60 s")

    def stop_server(self) -> None:
        if self.server and self.server.poll() is None:
            os.killpg(self.server.pid, signal.SIGTERM)
            try:
                self.server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.server.pid, signal.SIGKILL)

    def admin(self, *args: str) -> Dict[str, Any]:
        data = os.path.join(self.workdir, "server-data")
        out = self.run("ota-build", "admin", "--data-dir", data, *args, show=False)
        print("    $ ota-build admin --data-dir server-data " + " ".join(shlex.quote(a) for a in args))
        return json.loads(out)

    # ------------------------------------------------------------------ device
    def make_device(self, url: str, device_type: str, token: str, pub: str, conf: str) -> str:
        root = os.path.join(self.workdir, "device")
        os.makedirs(os.path.join(root, "etc"), exist_ok=True)
        from ota_build.core.config import load_config

        factory = new_record(load_config(conf, env={}), 1, version_number=0)
        write_record(factory, os.path.join(root, "etc", "full_ota_record.json"))
        with open(pub, "rb") as src, open(os.path.join(root, "etc", "ota-signing.pub.pem"), "wb") as dst:
            dst.write(src.read())
        with open(os.path.join(root, "slot-a.img"), "wb") as fh:  # two 1 MiB "partitions"
            fh.write(b"factory rootfs (running)\n" * 64)
            fh.truncate(1 << 20)
        with open(os.path.join(root, "slot-b.img"), "wb") as fh:
            fh.truncate(1 << 20)
        atomic_write_text(os.path.join(root, "uboot-env.txt"), "ota_slot=a\n")
        atomic_write_text(os.path.join(root, "cmdline"), "console=ttyS0,115200 ota.slot=a\n")
        atomic_write_text(os.path.join(root, "boot_id"), os.urandom(16).hex() + "\n")
        # The health check after a reboot: the application of a broken image does not start (here: its
        # rootfs says BROKEN). Real devices check their own services (docs/agent.md).
        health = ("slot=$(sed -n 's/.*ota.slot=\\([A-Za-z0-9]*\\).*/\\1/p' cmdline); "
                  "if zcat slot-$slot.img | grep -q BROKEN; then echo 'the application did not start' >&2; exit 1; fi")
        agent_conf = {
            "Comments": "Simulated device: file-backed A/B slots and a file standing in for U-Boot's environment",
            "device": "012359551bf18eba", "description": "simulated SAMA5D2", "server": url,
            "deviceToken": token, "deviceTypeId": device_type, "publicKeys": ["etc/ota-signing.pub.pem"],
            "record": "etc/full_ota_record.json", "stateDir": "var/lib/ota-agent",
            "cmdline": "cmdline", "bootIdFile": "boot_id", "healthCheck": ["sh", "-c", f"cd {root} && {health}"],
            "flask": {"host": "127.0.0.1", "port": 0}, "token": "demo-local-token",
            "installer": {"type": "ab", "slots": {"a": os.path.join(root, "slot-a.img"),
                                                  "b": os.path.join(root, "slot-b.img")},
                          "bootEnv": {"tool": "file", "file": os.path.join(root, "uboot-env.txt")}},
        }
        path = os.path.join(root, "ota-agent.json")
        atomic_write_text(path, json.dumps(agent_conf, indent=2) + "\n")
        return path

    # ------------------------------------------------------------------ the journey
    def journey(self) -> int:
        ensure_dir(self.workdir, "--workdir")
        files = self.build_side()
        url = self.start_server()
        try:
            self.step("create a partner account, a device type and a device token (prints the config values)")
            partner = self.admin("partner", "--username", "demo@example.com", "--server-url", url)
            pid = partner["partnerId"]
            dtype = self.admin("device-type", "--partner", pid)["deviceTypeId"]
            token = self.admin("device-token", "--partner", pid, "--device-type", dtype,
                               "--device", "012359551bf18eba")["token"]
            conf = dict(SAMPLE_CONFIG, partnerId=pid, deviceTypeId=dtype, server=url)
            atomic_write_text(files["conf"], json.dumps(conf, indent=4) + "\n")
            creds = os.path.join(self.workdir, "credentials.json")
            atomic_write_text(creds, json.dumps({k: partner[k] for k in ("username", "userpw", "auth-string")}) + "\n",
                              mode=0o600)
            self.env["OTA_CREDENTIALS_FILE"] = creds
            print(f"      config: {files['conf']} (no secrets); secrets: {creds} (mode 0600, OTA_CREDENTIALS_FILE)")

            self.step("create the OTA record before the build (the server assigns id and versionNumber)")
            if os.path.exists(files["record"]):
                os.unlink(files["record"])
            self.run("partner-ota-hub-uploader", "-c", files["conf"], "-s", "-n", "2", "-d", "--createOTARecord")
            with open(files["record"], encoding="utf-8") as fh:
                record = json.load(fh)
            print("      " + json.dumps(record, sort_keys=True))
            self.package_and_verify(files)

            self.step("upload hub_update.bin and register it (resumable, verified by the server)")
            self.run("partner-ota-hub-uploader", "-c", files["conf"], "-s", "-n", "2", "-d", "--uploadOTAImage")
            self.step("list the images")
            listing = self.run("partner-ota-hub-deploy", "-c", files["conf"], "--list")
            image_id = next(line.split()[0] for line in listing.splitlines() if record["version"] in line.split())

            device_conf = self.make_device(url, dtype, token, files["pub"], files["conf"])
            self.step(f"a simulated device (agent config {device_conf}) running versionNumber 0 from slot a")
            self.run("ota-agent", "-c", device_conf, "once")
            self.step(f"deploy image {image_id} to the device")
            self.run("partner-ota-hub-deploy", "-c", files["conf"], "-d", "012359551bf18eba", "-i", image_id)
            self.step("the device checks, verifies the header, streams the image into slot b while hashing it, "
                      "switches the boot slot and reports")
            self.run("ota-agent", "-c", device_conf, "once")
            self.run("ota-build", "devices", "-c", files["conf"])
            root = os.path.dirname(device_conf)
            with open(os.path.join(root, "slot-b.img"), "rb") as a, open(files["rootfs"], "rb") as b:
                new = b.read()
                same = a.read(len(new)) == new
            print(f"      slot b holds the new rootfs: {'yes' if same else 'NO'}")
            self.reboot(root)
            self.step("after the reboot: the health check passes, the agent commits and reports installed")
            self.run("ota-agent", "-c", device_conf, "once")
            self.step("final state, as the server shows it")
            self.run("ota-build", "devices", "-c", files["conf"])
            boot = self.boot_env(root)
            print(f"      device boot environment: {' '.join(f'{k}={v}' for k, v in boot.items())}")
            if not same or boot.get("ota_slot") != "b" or boot.get("upgrade_available") != "0":
                raise DemoError("the device did not end up on the new image")
            self.broken_image(files, device_conf, root)
            self.file_packager(url, pid)
        finally:
            self.stop_server()
        self.summary(files)
        return 0

    # ------------------------------------------------------------------ reboots (the boot script's model)
    @staticmethod
    def boot_env(root: str) -> Dict[str, str]:
        """The simulated device's boot environment (a KEY=value file standing in for U-Boot's)."""
        from ota_build.core.bootenv import parse_env_text

        with open(os.path.join(root, "uboot-env.txt"), "rb") as fh:
            return parse_env_text(fh.read())

    def reboot(self, root: str) -> str:
        """A simulated power cycle: bootsim (the boot script's rules) picks the slot and updates the environment."""
        from ota_build.core.bootenv import UPGRADE_AVAILABLE, left_variable
        from ota_build.device.bootsim import boot

        env = self.boot_env(root)
        slot, saved, volatile = boot(env, ["a", "b"])
        if saved != env:
            atomic_write_text(os.path.join(root, "uboot-env.txt"), "".join(f"{k}={v}\n" for k, v in saved.items()))
        atomic_write_text(os.path.join(root, "cmdline"), f"console=ttyS0,115200 {volatile['bootargs']}\n")
        atomic_write_text(os.path.join(root, "boot_id"), os.urandom(16).hex() + "\n")
        left = left_variable(slot)
        tries = f", {left}={saved.get(left)}" if saved.get(UPGRADE_AVAILABLE) == "1" else ""
        back = " (the boot script fell back: the new slot used up its attempts)" if \
            env.get(UPGRADE_AVAILABLE) == "1" and saved.get(UPGRADE_AVAILABLE) == "0" else ""
        self.step(f"simulated reboot (the boot script's rules, ota_build.device.bootsim): boots slot {slot}{tries}{back}")
        return slot

    def broken_image(self, files: Dict[str, str], device_conf: str, root: str) -> None:
        """A second image whose application never starts: booted bootLimit times without a commit, rolled back."""
        self.step("a second, broken image (its application does not start): record, package, upload, deploy")
        kept = {name: files[name] + ".good" for name in ("record", "bin")}  # the summary lists the good image
        for name, copy in kept.items():
            os.replace(files[name], copy)
        self.run("partner-ota-hub-uploader", "-c", files["conf"], "-s", "-n", "3", "-d", "--createOTARecord")
        with open(files["record"], encoding="utf-8") as fh:
            record = json.load(fh)
        broken = make_sample_rootfs(os.path.join(self.workdir, "core-image-minimal-broken.rootfs.tar.gz"),
                                    {"etc/issue": b"meta-ota demo BROKEN build\n"})
        broken_bin = os.path.join(self.workdir, "hub_update-broken.bin")
        self.run("ota-build", "package", broken, "-r", files["record"], "-k", files["key"], "-o", broken_bin)
        shutil.copy(broken_bin, files["bin"])  # the uploader sends imageFiles.A (hub_update.bin)
        self.run("partner-ota-hub-uploader", "-c", files["conf"], "-s", "-n", "3", "-d", "--uploadOTAImage")
        listing = self.run("partner-ota-hub-deploy", "-c", files["conf"], "--list", show=False)
        image_id = next(line.split()[0] for line in listing.splitlines() if record["version"] in line.split())
        self.run("partner-ota-hub-deploy", "-c", files["conf"], "-d", "012359551bf18eba", "-i", image_id)
        for name, copy in kept.items():
            os.replace(copy, files[name])
        self.step("the device installs it into slot a (the inactive one now) and switches")
        self.run("ota-agent", "-c", device_conf, "once")
        while self.reboot(root) == "a":
            self.run("ota-agent", "-c", device_conf, "once", ok=(1,))
        self.step("back on slot b: the agent reports rolled-back with the failed versionNumber")
        self.run("ota-agent", "-c", device_conf, "once", ok=(1,))
        self.run("ota-build", "devices", "-c", files["conf"])
        self.step("the server still offers it, but the device does not install a rolled-back version again")
        self.run("ota-agent", "-c", device_conf, "once")
        env = self.boot_env(root)
        if env.get("BOOT_ORDER", "").split()[:1] != ["b"] or env.get("upgrade_available") != "0":
            raise DemoError("the device did not fall back to slot b")

    def seed_curl(self, command: str, cwd: str, host: str) -> str:
        """One of seed 000's curl commands, run by ``sh`` with ``HOST`` in the environment (the token is not echoed)."""
        print(f"    $ {command}", flush=True)
        proc = subprocess.run(["sh", "-c", command], cwd=cwd, env={**self.env, "HOST": host}, capture_output=True,
                              text=True, timeout=120, check=False)
        if proc.stdout.strip():
            print("      " + proc.stdout.strip())
        if proc.returncode != 0:
            raise DemoError(f"'{command}' failed: {(proc.stderr.strip().splitlines() or ['exit %d' % proc.returncode])[-1]}")
        return proc.stdout

    def file_packager(self, url: str, partner_id: str) -> None:
        """Seed 000: upload model.pkl and model.bat, pack, download and verify the signed model.zip."""
        work = os.path.join(self.workdir, "packager")
        os.makedirs(work, exist_ok=True)
        with open(os.path.join(work, "model.pkl"), "wb") as fh:
            fh.write(b"demo model weights\n" * 4096)
        with open(os.path.join(work, "model.bat"), "wb") as fh:
            fh.write(b"python predict.py model.pkl\r\n")
        if shutil.which("curl") is None:
            print("\n(seed 000's file packager skipped: no curl on PATH)")
            return
        self.step("seed 000's file packager: an API token, then the seed's curl commands with "
                  "HOST=token:KEY@127.0.0.1:PORT/packager")
        key = self.admin("api-token", "--partner", partner_id)["token"]
        host = f"token:{key}@{url.removeprefix('http://')}/packager"
        print("    $ export HOST=token:$KEY@" + url.removeprefix("http://") + "/packager")
        for command in ("curl -sS -X POST -F file=@model.pkl http://${HOST}/upload",
                        "curl -sS -X POST -F file=@model.bat http://${HOST}/upload",
                        "curl -sS http://${HOST}/pack/",
                        "curl -sS -o model.zip http://${HOST}/download/",
                        f"curl -sS -o packager.pub.pem {url}/packager/key"):
            self.seed_curl(command, work, host)
        self.step("verify model.zip as a device does (signed manifest, sizes, SHA-256) and extract the two files")
        self.run("ota-build", "packager-verify", "model.zip", "-k", "packager.pub.pem", "-x", "extracted", cwd=work)

    def offline(self) -> int:
        ensure_dir(self.workdir, "--workdir")
        files = self.build_side()
        atomic_write_text(files["conf"], json.dumps(dict(SAMPLE_CONFIG, partnerId="demo"), indent=4) + "\n")
        self.step("create the OTA record offline (id and versionNumber derived locally)")
        self.run("ota-build", "record", "-c", files["conf"], "-n", "2", "-d", "-o", files["record"], "--force")
        self.package_and_verify(files)
        self.summary(files)
        return 0

    def summary(self, files: Dict[str, str]) -> None:
        print(f"\nDone. Everything is in {self.workdir}:")
        for name in ("conf", "record", "bin", "pub"):
            print(f"  {files[name]}")
        print("\nThe same with a real build: add meta-ota to bblayers.conf, INHERIT += \"ota\" in local.conf and run\n"
              "'bitbake core-image-minimal': DEPLOY_DIR_IMAGE then holds hub_update.bin, full_ota_record.json and the\n"
              "public key, and the rootfs has /etc/full_ota_record.json. Upload it with\n"
              "'partner-ota-hub-uploader -c partner-ota-conf.json -n $BUILD_NUMBER --uploadOTAImage' (see README.md).")


def run_demo(workdir: str, offline: bool = False) -> int:
    """Run the demo; 0 on success."""
    demo = Demo(workdir)
    return demo.offline() if offline else demo.journey()




