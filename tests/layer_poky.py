"""meta-ota on a full oe-core (every recipe parsed), on the Yocto release trees (tests/yocto.py).

The checks of one release share one build directory and its parse cache: BitBake keeps one
cache per configuration (``tmp/cache/bb_cache.dat.<config hash>``), so each configuration is
parsed once per session and every later command of that configuration loads the cache.
The configurations (a full parse each, 2-4 min on 2 cores):

    plain     the layer added as yocto-check-layer adds it (``BBLAYERS += "<layer>"`` appended
              to the template's bblayers.conf), no INHERIT; local.conf sets BB_SIGNATURE_HANDLER
              to the OEBasicHash yocto-check-layer forces, so its own parses with the layer
              (test_parse, test_world, test_signatures) find this cache instead of re-parsing
              (parsed with -S none, so the cache holds what its bitbake -S needs)
    inherit   plain + ``INHERIT += "ota"`` (``-R inherit.conf``): -p, -e, -g, parse-time errors
    extras    inherit + OTA_UPLOAD = "1" + OTA_AGENT = "1" (one parse for both graphs)
    yocto-check-layer's own: without the layer, and with INHERIT = "yocto-check-layer"

One test file per release (test_layer_poky_<release>.py), so pytest-xdist's ``--dist loadfile``
runs the releases on different workers. The build directory is new for each session (a warm
parse cache would hide the warnings of the first parse) and removed afterwards.

    OTA_POKY_RELEASES          releases to check (default "kirkstone scarthgap wrynose"; "" skips all)
    OTA_POKY_SKIP_CHECK_LAYER  "1": no yocto-check-layer; or release names ("kirkstone"): not on those
    OTA_POKY_KEEP              "1": keep the build directories (their paths are printed)
    OTA_YOCTO_SHARED, OTA_YOCTO_TREES, OTA_BITBAKE_USER: see tests/yocto.py
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from .yocto import LAYER, bitbake_user, readable_by, release_tree

RELEASES = os.environ.get("OTA_POKY_RELEASES", "kirkstone scarthgap wrynose").split()
# "1": no yocto-check-layer; or release names: not on those (kirkstone's costs most: its bitbake -S none world)
SKIP_CHECK_LAYER = os.environ.get("OTA_POKY_SKIP_CHECK_LAYER", "").split()

LOCAL_CONF = """
CONNECTIVITY_CHECK_URIS = ""
BB_NO_NETWORK = "1"
SANITY_TESTED_DISTROS = ""
# yocto-check-layer runs its signature parses with BB_SIGNATURE_HANDLER=OEBasicHash: the same value
# here makes its parses with the layer the configuration the checks below already parsed.
BB_SIGNATURE_HANDLER = "OEBasicHash"
"""
INHERIT_CONF = 'INHERIT += "ota"\n'
EXTRAS_CONF = ('OTA_UPLOAD = "1"\nOTA_AGENT = "1"\nOTA_AGENT_SLOTS = "a=/dev/mmcblk0p2 b=/dev/mmcblk0p3"\n'
               'OTA_AGENT_SERVER = "https://ota.example.com"\n')


@dataclass
class Run:
    returncode: int
    output: str
    seconds: float

    @property
    def problems(self) -> List[str]:
        return [line for line in self.output.splitlines() if line.startswith(("ERROR", "WARNING"))]


@dataclass
class OECore:
    """One release's tree and build directory; ``runs`` keeps what each command cost."""
    release: str
    tree: Path
    dir: Path
    user: Optional[str]
    timings: Dict[str, float] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.dir / "conf"

    def write(self, path: Path, text: str) -> Path:
        path.write_text(text)
        path.chmod(0o644)
        if self.user:
            shutil.chown(path, self.user, self.user)
        return path

    def bitbake(self, command: str, label: str, timeout: int = 3600, cwd: Optional[Path] = None) -> Run:
        """Run ``command`` in the initialised build environment (as the BitBake user when root)."""
        home = pwd.getpwnam(self.user).pw_dir if self.user else os.environ.get("HOME", "/tmp")
        script = (f"export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "
                  f"LANG=en_US.UTF-8 LC_ALL=en_US.UTF-8 HOME={shlex.quote(home)}; "
                  "unset PYTHONPATH VIRTUAL_ENV PYENV_VERSION PYTHONDONTWRITEBYTECODE; "
                  f"cd {shlex.quote(str(self.tree))} && . ./oe-init-build-env {shlex.quote(str(self.dir))} >/dev/null && "
                  + (f"cd {shlex.quote(str(cwd))} && " if cwd else "") + command)
        argv = ["su", self.user, "-s", "/bin/bash", "-c", script] if self.user else ["bash", "-c", script]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTA_", "BB_", "PYTEST_", "PYTHON"))}
        start = time.monotonic()
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, env=env)
        seconds = time.monotonic() - start
        self.timings[label] = self.timings.get(label, 0.0) + seconds
        return Run(proc.returncode, proc.stdout + proc.stderr, seconds)

    def scratch(self, name: str) -> Path:
        """A directory of the build directory the BitBake user writes (bitbake -g writes into its cwd)."""
        path = self.dir / name
        path.mkdir(exist_ok=True)
        if self.user:
            shutil.chown(path, self.user, self.user)
        return path

    def layer_added(self, added: bool):
        """bblayers.conf as the template made it, or with the layer appended as yocto-check-layer appends it."""
        base = (self.conf / "bblayers.conf.template").read_text()
        self.write(self.conf / "bblayers.conf", base + (f'\nBBLAYERS += "{LAYER}"\n' if added else ""))


def make_oecore(release: str):
    """The module's build directory for ``release``: initialised, the layer added; removed after."""
    if release not in RELEASES:
        pytest.skip(f"{release} not in OTA_POKY_RELEASES")
    user = bitbake_user()
    tree = release_tree(release, owner=user)
    if not readable_by(user, LAYER / "conf" / "layer.conf"):
        pytest.skip(f"user {user} cannot read {LAYER} (clone the repository somewhere it can)")
    path = Path(tempfile.mkdtemp(prefix=f"ota-poky-{release}-"))
    path.chmod(0o755)
    if user:
        shutil.chown(path, user, user)
    oe = OECore(release, tree, path, user)
    run = oe.bitbake("true", "init")                                  # oe-init-build-env writes conf/ from the template
    assert run.returncode == 0, run.output[-3000:]
    with (oe.conf / "local.conf").open("a") as f:
        f.write(LOCAL_CONF)
    oe.write(oe.conf / "bblayers.conf.template", (oe.conf / "bblayers.conf").read_text())
    oe.write(oe.conf / "inherit.conf", INHERIT_CONF)
    oe.write(oe.conf / "extras.conf", EXTRAS_CONF)
    oe.layer_added(True)
    return oe


def finish(oe: OECore):
    print(f"\n{oe.release} ({oe.dir}): " + ", ".join(f"{k} {v:.0f} s" for k, v in oe.timings.items())
          + f"; total {sum(oe.timings.values()):.0f} s")
    if os.environ.get("OTA_POKY_KEEP") != "1":
        shutil.rmtree(oe.dir, ignore_errors=True)


def assert_parsed_cleanly(run: Run):
    assert run.returncode == 0, run.output[-3000:]
    assert not run.problems, run.problems
    assert re.search(r"Parsing of \d+ \.bb files complete.* 0 errors", run.output), run.output[-3000:]


def check_layer_results(output: str) -> Dict[str, str]:
    """{test name: result} from yocto-check-layer's log ("ok", "skipped ...", "FAIL", ...)."""
    results: Dict[str, str] = {}
    current = None
    for line in output.splitlines():
        m = re.match(r"INFO: (test_\w+) \(", line)
        if m:
            current = m.group(1)
            continue
        m = re.match(r"INFO:\s+\.\.\. (.+)$", line)
        if m and current:
            results[current] = m.group(1).strip()
            current = None
    return results


class PokyChecks:
    """The checks, run by one class per release (``release``) in tests/test_layer_poky_<release>.py."""

    release = ""

    @pytest.fixture(scope="class")
    @classmethod
    def oe(cls):
        oe = make_oecore(cls.release)
        yield oe
        finish(oe)

    def test_parse_without_inherit_has_no_warning(self, oe):
        """The layer added alone: a cold parse of every recipe, no error, no warning.
        ``-S none`` (with -p: parse only) makes BitBake (scarthgap on) also write the signature
        cache (bb_cache_SiggenRecipeInfo.dat) that yocto-check-layer's ``bitbake -S`` needs: without
        it that command finds the cache incomplete and parses everything again."""
        assert_parsed_cleanly(oe.bitbake("bitbake -S none -p", "parse (layer)"))

    def test_parse_with_inherit_has_no_warning(self, oe):
        assert_parsed_cleanly(oe.bitbake(f"bitbake -R {oe.conf}/inherit.conf -p", "parse (INHERIT)"))

    def test_environment_shows_the_settings(self, oe):
        run = oe.bitbake(f"bitbake -R {oe.conf}/inherit.conf -e core-image-minimal", "-e")
        assert run.returncode == 0, run.output[-3000:]
        env = dict(re.findall(r'^([A-Z_]+)="(.*)"$', run.output, re.M))
        assert env["OTA_CONFIG"].endswith("meta-ota/files/partner-ota-conf.json")
        assert env["OTA_PAYLOAD_FSTYPE"] == "tar.gz" and "hub_update.bin" in env["IMAGE_FSTYPES"].split()
        assert "ota-record" in env["IMAGE_INSTALL"].split()
        assert "ota-image" in env["IMAGE_CLASSES"].split()
        assert env["OTA_IMAGE_FILE"] == "hub_update.bin"
        assert env["OTA_TYPE"] == "5" and env["OTA_UPLOAD"] == "0" and env["OTA_BUILD_NUMBER"] == "0"
        assert env["OTA_SIGNING_KEY_FILE"].endswith("meta-ota/files/dev-keys/ota-dev.key.pem")

    def test_task_graph(self, oe):
        out = oe.scratch("graph")
        run = oe.bitbake(f"bitbake -R {oe.conf}/inherit.conf -g core-image-minimal", "-g", cwd=out)
        assert run.returncode == 0, run.output[-3000:]
        dot = (out / "task-depends.dot").read_text()
        for edge in ('"core-image-minimal.do_image_complete" -> "core-image-minimal.do_image_hub_update"',
                     '"core-image-minimal.do_image_hub_update" -> "core-image-minimal.do_image_tar"',
                     '"core-image-minimal.do_image_hub_update" -> "ota-build-native.do_populate_sysroot"'):
            assert edge in dot, edge
        assert re.search(r'"core-image-minimal\.do_rootfs" -> "ota-record\.do_package_write_(rpm|ipk|deb)"', dot)
        assert "do_ota_upload" not in dot                                   # OTA_UPLOAD is off by default
        recipes = set((out / "pn-buildlist").read_text().split())
        assert {"ota-build-native", "ota-record"} <= recipes
        assert not recipes & {"rust-native", "cargo-native", "go-native", "python3-cryptography-native",
                              "python3-jsonschema-native", "python3-requests-native", "ota-agent"}

    def test_upload_and_agent_graph(self, oe):
        """OTA_UPLOAD = "1" adds do_ota_upload (with the wheels of ota-upload-deps-native); OTA_AGENT = "1" the agent."""
        out = oe.scratch("graph-extras")
        run = oe.bitbake(f"bitbake -R {oe.conf}/inherit.conf -R {oe.conf}/extras.conf -g core-image-minimal",
                         "parse + -g (OTA_UPLOAD, OTA_AGENT)", cwd=out)
        assert run.returncode == 0, run.output[-3000:]
        assert not run.problems, run.problems
        dot = (out / "task-depends.dot").read_text()
        assert '"core-image-minimal.do_ota_upload" -> "core-image-minimal.do_image_complete"' in dot
        assert '"core-image-minimal.do_build" -> "core-image-minimal.do_ota_upload"' in dot
        assert '"core-image-minimal.do_ota_upload" -> "ota-upload-deps-native.do_populate_sysroot"' in dot
        recipes = set((out / "pn-buildlist").read_text().split())
        assert "ota-upload-deps-native" in recipes                               # no toolchain with the upload
        assert not recipes & {"rust-native", "cargo-native", "go-native", "python3-requests-native"}
        assert re.search(r'"core-image-minimal\.do_rootfs" -> "ota-agent\.do_package_write_(rpm|ipk|deb)"', dot)
        assert '"ota-agent.do_prepare_recipe_sysroot" -> "ota-build-native.do_populate_sysroot"' in dot
        run = oe.bitbake(f"bitbake -R {oe.conf}/inherit.conf -R {oe.conf}/extras.conf -e ota-agent", "-e ota-agent")
        assert run.returncode == 0, run.output[-3000:]
        env = dict(re.findall(r'^([A-Za-z0-9_:${}-]+)="(.*)"$', run.output, re.M))
        assert "libubootenv-bin" in env["RDEPENDS:ota-agent"] and "ota-record" in env["RDEPENDS:ota-agent"]
        assert env["SYSTEMD_SERVICE:ota-agent"] == "ota-agent.service"

    def test_misconfiguration_is_one_line_at_parse_time(self, oe):
        bad = oe.scratch("bad")
        oe.write(bad / "conf.json", '{"name": "x", "version": "1.0", "imageFiles": {"A": "a/b"}}')
        oe.write(bad / "bad.conf", f'OTA_CONFIG = "{bad}/conf.json"\n')
        oe.write(bad / "badkey.conf", f'OTA_SIGNING_KEY = "{bad}/missing.key.pem"\n')
        recipe = oe.tree / "meta" / "recipes-core" / "images" / "core-image-minimal.bb"
        for conf, expected in (("bad.conf", "ERROR: OTA_CONFIG: "), ("badkey.conf", "ERROR: OTA_SIGNING_KEY: ")):
            run = oe.bitbake(f"bitbake -R {oe.conf}/inherit.conf -R {bad}/{conf} -e -b {recipe}", "-e -b (errors)")
            assert run.returncode != 0
            first = next(line for line in run.output.splitlines() if line.startswith("ERROR"))
            assert first.startswith(expected), first
            if conf == "bad.conf":
                assert "imageFiles.A" in first

    def test_yocto_check_layer(self, oe):
        """yocto-check-layer on the same build directory: its parses with the layer load the cache
        test_parse_without_inherit_has_no_warning made (same configuration)."""
        if "1" in SKIP_CHECK_LAYER or oe.release in SKIP_CHECK_LAYER:
            pytest.skip(f"OTA_POKY_SKIP_CHECK_LAYER={' '.join(SKIP_CHECK_LAYER)}")
        oe.layer_added(False)                                          # it adds the layer itself
        try:
            run = oe.bitbake(f"yocto-check-layer {shlex.quote(str(LAYER))}", "yocto-check-layer", timeout=7200)
        finally:
            oe.layer_added(True)
        results = check_layer_results(run.output)
        assert {"test_parse", "test_readme", "test_signatures", "test_world"} <= set(results), run.output[-3000:]
        for test, result in results.items():
            if test == "test_patches_upstream_status" and result == "unexpected success":
                # scarthgap and later mark this test expectedFailure, so a layer without malformed
                # patches "unexpectedly succeeds" and yocto-check-layer prints FAIL (meta-skeleton too).
                continue
            assert result == "ok" or result.startswith("skipped"), f"{test}: {result}\n{run.output[-3000:]}"
        if "test_patches_upstream_status" not in results:              # kirkstone: the overall verdict is reliable
            assert run.returncode == 0 and re.search(r"meta-ota\s+(\.\.\.\s+)?PASS", run.output), run.output[-3000:]
