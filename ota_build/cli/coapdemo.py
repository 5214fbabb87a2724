"""``ota-build coap-demo``: seed 002's journey on this machine, every command printed before it runs.

A SUIT signing key, two slot images, ``ota-build serve`` with its CoAP server on free 127.0.0.1 ports, a
partner token, a CoAP device (``ota-agent coap --once``), then ``ota-build publish``: it signs a SUIT manifest,
publishes the manifest and the slots and notifies the device, which fetches and verifies the manifest and
installs its inactive slot.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from typing import List

from ota_build.core.errors import OtaError
from ota_build.core.files import ensure_dir

log = logging.getLogger(__name__)


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tool(name: str) -> List[str]:
    exe = os.path.join(os.path.dirname(sys.executable), name)
    return [exe] if os.path.exists(exe) else [name]


def _show(cmd: List[str], secret: str = "", background: bool = False) -> None:
    text = " ".join(shlex.quote(os.path.basename(c) if i == 0 else c) for i, c in enumerate(cmd)) + (" &" if background else "")
    print("$ " + (text.replace(secret, "***") if secret else text), flush=True)


def _run(cmd: List[str], secret: str = "") -> str:
    _show(cmd, secret)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise OtaError(f"{os.path.basename(cmd[0])} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    return proc.stdout


def run_coap_demo(workdir: str) -> int:
    """Run the demo in ``workdir``; 0 when the device installed the update."""
    ensure_dir(workdir, "--workdir")
    wd = os.path.abspath(workdir)
    ob, agent = _tool("ota-build"), _tool("ota-agent")
    print("== seed 002: SUIT manifest, CoAP publish and notify, a CoAP device ==")
    if not os.path.exists(os.path.join(wd, "suit.key.pem")):
        _run(ob + ["keygen", "-a", "ecdsa-p256", "-o", os.path.join(wd, "suit")])
    for n in (0, 1):
        with open(os.path.join(wd, f"slot{n}.bin"), "wb") as f:
            f.write(bytes([n + 1]) * (256 * 1024) + os.urandom(1000))
    http, coap, dev = _free_port(socket.SOCK_STREAM), _free_port(socket.SOCK_DGRAM), _free_port(socket.SOCK_DGRAM)
    data = os.path.join(wd, "data")
    serve = ob + ["serve", "--data-dir", data, "--port", str(http), "--coap-port", str(coap)]
    _show(serve, background=True)
    with open(os.path.join(wd, "serve.log"), "wb") as serve_log:
        server = subprocess.Popen(serve, stdout=subprocess.DEVNULL, stderr=serve_log, start_new_session=True)
    device = None
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{http}/test", timeout=1).close()
                break
            except OSError:
                if server.poll() is not None:
                    raise OtaError(f"ota-build serve exited: see {wd}/serve.log") from None
                time.sleep(0.1)
        _run(ob + ["admin", "--data-dir", data, "partner", "--username", "demo@example.com", "--partner-id", "demo"])
        token = json.loads(_run(ob + ["admin", "--data-dir", data, "api-token", "--partner", "demo"]))["token"]
        state = os.path.join(wd, "device")
        shutil.rmtree(state, ignore_errors=True)
        dcmd = agent + ["coap", "--once", "--host", "127.0.0.1", "--port", str(dev), "--state-dir", state,
                        "--trusted-key", os.path.join(wd, "suit.pub.pem")]
        _show(dcmd, background=True)
        device = subprocess.Popen(dcmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(2.0)  # the device binds its UDP port
        out = _run(ob + ["publish", "--ota-host", f"token:{token}@127.0.0.1", "--ota-port", str(http),
                         "--slot0", os.path.join(wd, "slot0.bin"), "--slot1", os.path.join(wd, "slot1.bin"),
                         "-k", os.path.join(wd, "suit.key.pem"), "--coap-host", "127.0.0.1", "--coap-port", str(coap),
                         "version_1", f"127.0.0.1:{dev}/notify"], secret=token)
        doc = json.loads(out)
        for d in doc.get("notify", {}).get("devices", []):
            print(f"   notify {d['device']}: {d['outcome']}")
        _, err = device.communicate(timeout=120)
        for line in err.splitlines():
            if "installed:" in line or "refused:" in line or "error:" in line:
                print("   device: " + line.split(": ", 1)[-1] if "INFO" in line else "   device: " + line)
        ok = device.returncode == 0
        print(f"== device state: {open(os.path.join(state, 'state.json')).read() if ok else 'unchanged'}")
        print(f"   fetch yourself: coap-client -m get coap://127.0.0.1:{coap}/version_1/manifest  "
              f"(or aiocoap-client coap://127.0.0.1:{coap}/.well-known/core)")
        return 0 if ok else 1
    finally:
        if device is not None and device.poll() is None:
            device.kill()
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
