"""meta-ota built by real BitBake, offline, on the Yocto release trees (tests/yocto.py).

One real image build per release (module fixture ``build``), then incremental rebuilds.
The image is tests/bitbake/meta-ota-test's ota-test-image: a real core-image whose rootfs
holds only our packages, made by Debian's dpkg/apt under Debian's pseudo (see that layer's
conf/ota-test-build.conf). About a minute per release on 2 cores once the tree is unpacked.

    OTA_BITBAKE_RELEASES   releases to build (default "kirkstone scarthgap wrynose"; "" skips all)
    OTA_BITBAKE_BUILD_DIR  parent of the build directories (default /tmp/ota-bitbake-<user>)
    OTA_BITBAKE_KEEP       "1": reuse the build directory of an earlier run (incremental) and keep
                           it; by default each run starts from an empty one and removes it
                           (a CI machine that keeps /tmp must not test against an older layer's state)
    OTA_YOCTO_SHARED, OTA_YOCTO_TREES, OTA_BITBAKE_USER: see tests/yocto.py
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pwd
import re
import shlex
import shutil
import subprocess
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from ota_build.core.package import verify_file
from ota_build.core.signing import Keyring, generate_key

from .yocto import LAYER, ROOT, bitbake_user, readable_by, release_tree

TEST_LAYER = ROOT / "tests" / "bitbake" / "meta-ota-test"
RELEASES = os.environ.get("OTA_BITBAKE_RELEASES", "kirkstone scarthgap wrynose").split()
IMAGE = "ota-test-image"
# Test secrets: each must never be written anywhere under TMPDIR, the sstate cache or the parse cache.
SECRETS = {
    "OTA_KEY_PASSWORD": "pw-5f1c0e9a-key-password",
    "OTA_USERNAME": "user-2b7d41c3@example.com",
    "OTA_USERPW": "userpw-9e84d0f2-secret",
    "OTA_AUTH_STRING": "auth-71c2ae5b-secret-string",
}

pytestmark = [pytest.mark.bitbake, pytest.mark.skipif(not shutil.which("openssl"), reason="needs openssl")]

LOCAL_CONF = """\
require {layer}/conf/ota-test-build.conf
TMPDIR = "${{TOPDIR}}/tmp"
include ${{TOPDIR}}/conf/ota-settings.conf
"""


@dataclass
class Run:
    returncode: int
    output: str
    seconds: float
    tasks: List[str] = field(default_factory=list)          # "recipe:task" that ran

    @property
    def summary(self) -> Optional[re.Match]:
        return re.search(r"Tasks Summary: Attempted (\d+) tasks of which (\d+) didn't need to be rerun", self.output)


@dataclass
class Build:
    release: str
    tree: Path
    dir: Path
    user: Optional[str]
    key: Path
    config: Path
    timings: Dict[str, float] = field(default_factory=dict)

    @property
    def tmpdir(self) -> Path:
        return self.dir / "tmp"

    @property
    def deploy(self) -> Path:
        return self.tmpdir / "deploy" / "images" / "qemux86-64"

    def own(self, *paths: Path):
        if self.user:
            for path in paths:
                shutil.chown(path, self.user, self.user)

    def settings(self, inherit: bool = True, **values: str):
        """Write conf/ota-settings.conf (included by local.conf)."""
        values = {"OTA_SIGNING_KEY": str(self.key), "OTA_CONFIG": str(self.config), **values}
        path = self.dir / "conf" / "ota-settings.conf"
        path.write_text(('INHERIT += "ota"\n' if inherit else "")
                        + "".join(f'{name} = "{value}"\n' for name, value in values.items()))
        self.own(path)

    def bitbake(self, command: str, timeout: int = 3600, env: Optional[Dict[str, str]] = None) -> Run:
        home = pwd.getpwnam(self.user).pw_dir if self.user else os.environ.get("HOME", "/tmp")
        script = (f"export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "
                  f"LANG=en_US.UTF-8 LC_ALL=en_US.UTF-8 HOME={shlex.quote(home)}; "
                  "unset PYTHONPATH VIRTUAL_ENV PYENV_VERSION PYTHONDONTWRITEBYTECODE; "
                  f"cd {shlex.quote(str(self.tree))} && . ./oe-init-build-env {shlex.quote(str(self.dir))} >/dev/null && "
                  + command)
        argv = ["su", self.user, "-s", "/bin/bash", "-c", script] if self.user else ["bash", "-c", script]
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("OTA_", "BB_"))}
        # As documented: secrets in BitBake's environment only (read from BB_ORIGENV at task
        # time), not in BB_ENV_PASSTHROUGH_ADDITIONS, which would make them datastore variables.
        full_env.update(SECRETS)
        full_env.update(env or {})
        start = time.monotonic()
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, env=full_env)
        output = proc.stdout + proc.stderr
        tasks = re.findall(r"NOTE: recipe ([\w.+-]+?)-[^-\s]+-r\d+: task (do_\w+): Started", output)
        return Run(proc.returncode, output, time.monotonic() - start, [f"{r}:{t}" for r, t in tasks])

    def build(self, label: str) -> Run:
        run = self.bitbake(f"bitbake {IMAGE}")
        self.timings[label] = run.seconds
        assert run.returncode == 0, run.output[-5000:]
        return run

    # --- what the build made --------------------------------------------------
    @property
    def rootfs_tar(self) -> Path:
        """The deployed rootfs (IMAGE_LINK_NAME: "<image>-<machine>.rootfs" from scarthgap on, without ".rootfs" before)."""
        for name in (f"{IMAGE}-qemux86-64.rootfs.tar.gz", f"{IMAGE}-qemux86-64.tar.gz"):
            if (self.deploy / name).exists():
                return self.deploy / name
        raise AssertionError(f"no rootfs tar.gz in {self.deploy}")

    def rootfs_file(self, name: str) -> bytes:
        with tarfile.open(self.rootfs_tar) as tar:
            member = tar.extractfile("./" + name)
            assert member is not None, name
            return member.read()

    def deployed(self, name: str) -> Path:
        return self.deploy / name


def problems(run: Run) -> List[str]:
    return [line for line in run.output.splitlines() if line.startswith(("WARNING", "ERROR"))]


def make_key(path: Path, password: str):
    """An Ed25519 key pair, the private key encrypted with ``password`` (as a release key would be)."""
    plain = path.with_suffix(".plain")
    generate_key("ed25519", str(plain), str(path.with_suffix(".pub")), backend="openssl", overwrite=True)
    subprocess.run(["openssl", "pkey", "-in", str(plain), "-out", str(path), "-aes256", "-passout", "env:PW"],
                   check=True, env={**os.environ, "PW": password})
    plain.unlink()


@pytest.fixture(scope="module", params=RELEASES)
def build(request, tmp_path_factory) -> Build:
    release = request.param
    user = bitbake_user()
    tree = release_tree(release, owner=user)
    for path in (LAYER / "conf" / "layer.conf", TEST_LAYER / "conf" / "layer.conf", ROOT / "ota_build" / "__init__.py"):
        if not readable_by(user, path):
            pytest.skip(f"user {user} cannot read {path} (clone the repository somewhere it can)")
    base = Path(os.environ.get("OTA_BITBAKE_BUILD_DIR") or f"/tmp/ota-bitbake-{user or os.getuid()}")
    tag = hashlib.sha1(str(ROOT).encode()).hexdigest()[:8]
    build_dir = base / f"{release}-{tag}"
    keep = os.environ.get("OTA_BITBAKE_KEEP") == "1"
    if not keep:
        shutil.rmtree(build_dir, ignore_errors=True)
    (build_dir / "conf").mkdir(parents=True, exist_ok=True)
    (build_dir / "keys").mkdir(exist_ok=True)
    b = Build(release, tree, build_dir, user, build_dir / "keys" / "release.key.pem", build_dir / "keys" / "ota-conf.json")
    make_key(b.key, SECRETS["OTA_KEY_PASSWORD"])
    shutil.copyfile(LAYER / "files" / "partner-ota-conf.json", b.config)
    (build_dir / "conf" / "bblayers.conf").write_text(
        'BBPATH = "${TOPDIR}"\nBBFILES ?= ""\n'
        f'BBLAYERS = "{tree}/meta {LAYER} {TEST_LAYER}"\n')
    local = LOCAL_CONF.format(layer=TEST_LAYER)
    if release in ("kirkstone", "scarthgap"):
        local += 'TCLIBCAPPEND = ""\n'                  # TMPDIR without "-glibc" (the variable is gone in wrynose)
    (build_dir / "conf" / "local.conf").write_text(local)
    template = tree / "meta" / "conf" / "templates" / "default"                   # kirkstone: meta/conf
    (build_dir / "conf" / "templateconf.cfg").write_text(f"{template if template.is_dir() else tree / 'meta' / 'conf'}\n")
    b.settings()
    if user:
        subprocess.run(["chown", "-R", f"{user}:{user}", str(build_dir)], check=True)
        build_dir.parent.chmod(0o755)
    run = b.build("first build")
    assert not problems(run), problems(run)
    yield b
    print(f"\n{release}: " + ", ".join(f"{k} {v:.0f} s" for k, v in b.timings.items()))
    if not keep:
        shutil.rmtree(build_dir, ignore_errors=True)


def check_release(b: Build, public_pem: bytes):
    """The deployed hub_update.bin verifies with the key in the rootfs, which is ``public_pem``;
    the payload is the deployed rootfs; the deployed record is the rootfs's record."""
    installed = b.rootfs_file("etc/ota/ota-signing.pub.pem")
    assert installed.strip() == public_pem.strip()
    keyfile = b.dir / "keys" / "from-rootfs.pub.pem"
    keyfile.write_bytes(installed)
    payload = b.dir / "keys" / "payload.tar.gz"
    result = verify_file(str(b.deployed("hub_update.bin")), Keyring.from_files([str(keyfile)]), expected_type=5,
                         extract_to=str(payload))
    assert payload.read_bytes() == b.rootfs_tar.read_bytes()
    record = json.loads(b.rootfs_file("etc/full_ota_record.json"))
    assert json.loads(b.deployed("full_ota_record.json").read_bytes()) == record
    return result, record


def test_release_verifies_with_the_key_in_the_rootfs(build):
    result, record = check_release(build, build.key.with_suffix(".pub").read_bytes())
    config = json.loads(build.config.read_text())
    assert record["name"] == config["name"] and record["type"] == 5
    assert result.header.version_number == int(record["versionNumber"])


def test_image_type_deploys_through_image_bbclass(build):
    """hub_update.bin is an image type: do_image_hub_update writes <IMAGE_NAME>.hub_update.bin,
    image.bbclass makes <IMAGE_LINK_NAME>.hub_update.bin and deploys it with do_image_complete
    (its sstate manifest lists the files); the stable name hub_update.bin points at it."""
    link_name = build.rootfs_tar.name[:-len(".tar.gz")]             # IMAGE_LINK_NAME of this release
    link = build.deployed(f"{link_name}.hub_update.bin")
    assert link.is_symlink()
    versioned = build.deploy / os.readlink(link)
    assert versioned.is_file() and not versioned.is_symlink() and versioned.name.endswith(".hub_update.bin")
    assert os.readlink(build.deployed("hub_update.bin")) == versioned.name
    for name in ("full_ota_record.json", "ota-signing.pub.pem"):
        assert (build.deploy / os.readlink(build.deployed(f"{link_name}.{name}"))).is_file()
    manifests = list((build.tmpdir / "sstate-control").glob(f"manifest-*-{IMAGE}.image_complete"))
    assert len(manifests) == 1, manifests
    listed = manifests[0].read_text().split()
    for path in (versioned, link, build.deployed("hub_update.bin")):
        assert str(path) in listed, path
    assert not list((build.tmpdir / "sstate-control").glob(f"manifest-*-{IMAGE}.ota_package"))
    env = build.bitbake(f"bitbake -e {IMAGE}")
    assert re.search(r'^IMAGE_FSTYPES=".*\bhub_update\.bin\b', env.output, re.M)
    assert re.search(r"^do_image_hub_update\(\)", env.output, re.M)


def test_image_fstypes_per_image(build):
    """OTA_AUTO_FSTYPES = "" and IMAGE_FSTYPES += "hub_update.bin" for one image only: that image
    is an OTA release (record in its rootfs, its own hub_update.bin); the other has no
    hub_update.bin task and no ota-record."""
    settings = {"OTA_AUTO_FSTYPES": "", "IMAGE_FSTYPES:append:pn-ota-test-image-b": " hub_update.bin"}
    try:
        build.settings(**settings)
        env = build.bitbake(f"bitbake -e {IMAGE}")
        assert env.returncode == 0, env.output[-3000:]
        assert "hub_update.bin" not in re.search(r'^IMAGE_FSTYPES="(.*)"', env.output, re.M).group(1).split()
        assert "ota-record" not in re.search(r'^IMAGE_INSTALL="(.*)"', env.output, re.M).group(1).split()
        assert not re.search(r"^do_image_hub_update\(\)", env.output, re.M)
        assert build.bitbake(f"bitbake -c clean {IMAGE}-b").returncode == 0
        run = build.bitbake(f"bitbake {IMAGE}-b")
        build.timings["per-image type"] = run.seconds
        assert run.returncode == 0 and not problems(run), run.output[-5000:]
        assert f"{IMAGE}-b:do_image_hub_update" in run.tasks and not any(t.startswith(f"{IMAGE}:") for t in run.tasks)
        links = [p for p in build.deploy.glob(f"{IMAGE}-b-qemux86-64*.hub_update.bin") if p.is_symlink()]
        assert len(links) == 1, links
        verify_file(str(links[0]), Keyring.from_files([str(build.key.with_suffix(".pub"))]), expected_type=5)
    finally:
        build.settings()
        assert build.bitbake(f"bitbake -c clean {IMAGE}-b").returncode == 0


def test_two_clean_tmpdirs_give_a_byte_identical_release(build):
    """A build from a clean TMPDIR and an empty sstate cache makes the same hub_update.bin, byte
    for byte, as the test build (Ed25519 is deterministic; the record's time is SOURCE_DATE_EPOCH).
    Only on wrynose: on kirkstone and scarthgap oe-core's IMAGE_CMD:tar writes each file's
    atime/ctime into pax headers, so the payload differs (see the clean test)."""
    if build.release != "wrynose":
        pytest.skip("oe-core's tar image is reproducible from wrynose on (IMAGE_CMD:tar pax atime/ctime before)")
    assert build.build("before the clean TMPDIR").returncode == 0
    link = build.rootfs_tar.name[:-len(".tar.gz")] + ".hub_update.bin"       # <IMAGE_LINK_NAME>.hub_update.bin
    first = build.deployed(link).read_bytes()
    other_tmp, other_sstate = build.dir / "tmp-repro", build.dir / "sstate-repro"
    try:
        for path in (other_tmp, other_sstate):
            shutil.rmtree(path, ignore_errors=True)
        build.settings(TMPDIR="${TOPDIR}/tmp-repro", SSTATE_DIR="${TOPDIR}/sstate-repro")
        run = build.build("clean TMPDIR and sstate")
        assert "ota-record:do_compile" in run.tasks and f"{IMAGE}:do_image_hub_update" in run.tasks, run.tasks
        second = (other_tmp / "deploy" / "images" / "qemux86-64" / link).read_bytes()
        assert second == first
    finally:
        build.settings()
        for path in (other_tmp, other_sstate):
            shutil.rmtree(path, ignore_errors=True)


def test_parse_without_warnings_with_and_without_inherit(build):
    """The layer parses without a warning: added alone (no recipe changes) and with INHERIT += "ota"."""
    try:
        for inherit in (False, True):
            build.settings(inherit=inherit)
            for cache in (build.tmpdir / "cache").rglob("bb_cache.dat*"):
                cache.unlink()                                 # a real parse, with its warnings
            run = build.bitbake("bitbake -p")
            assert run.returncode == 0 and not problems(run), run.output[-3000:]
            assert re.search(r"Parsing of \d+ \.bb files complete.* 0 errors", run.output), run.output[-3000:]
            env = build.bitbake(f"bitbake -e {IMAGE}")
            assert env.returncode == 0, env.output[-3000:]
            assert ("ota-image" in re.search(r'^IMAGE_CLASSES="(.*)"', env.output, re.M).group(1).split()) == inherit
    finally:
        build.settings()


def test_rebuild_with_nothing_changed_runs_no_task(build):
    run = build.build("no-op rebuild")
    attempted, not_rerun = run.summary.groups()
    assert attempted == not_rerun and not run.tasks, run.tasks


def test_new_key_re_signs(build):
    """Regression (issue 10, defect 1): the key file replaced in place (same path, so only
    its content, through [file-checksums], can re-run the tasks)."""
    old = build.key.read_bytes(), build.key.with_suffix(".pub").read_bytes()
    make_key(build.key, SECRETS["OTA_KEY_PASSWORD"])
    build.own(build.key, build.key.with_suffix(".pub"))
    try:
        run = build.build("new key")
        assert "ota-record:do_compile" in run.tasks and f"{IMAGE}:do_image_hub_update" in run.tasks, run.tasks
        check_release(build, build.key.with_suffix(".pub").read_bytes())
        assert build.key.with_suffix(".pub").read_bytes() != old[1]
    finally:
        build.key.write_bytes(old[0])
        build.key.with_suffix(".pub").write_bytes(old[1])
    build.build("old key again")
    check_release(build, old[1])


def test_config_edit_reaches_the_record(build):
    original = build.config.read_text()
    config = json.loads(original)
    config["description"] = "edited by test_config_edit_reaches_the_record"
    build.config.write_text(json.dumps(config, indent=4))
    try:
        run = build.build("config edit")
        assert "ota-record:do_compile" in run.tasks, run.tasks
        _, record = check_release(build, build.key.with_suffix(".pub").read_bytes())
        assert record["description"] == config["description"]
    finally:
        build.config.write_text(original)
    build.build("config restored")
    _, record = check_release(build, build.key.with_suffix(".pub").read_bytes())
    assert record["description"] == json.loads(original)["description"]


def test_build_number_from_the_environment_and_debug_reach_record_and_header(build):
    """Jenkins' BUILD_NUMBER (passed through, as the README says) and OTA_DEBUG = "1"."""
    config = json.loads(build.config.read_text())
    try:
        build.settings(OTA_DEBUG="1")
        run = build.bitbake(f"bitbake {IMAGE}", env={"BUILD_NUMBER": "42", "BB_ENV_PASSTHROUGH_ADDITIONS": "BUILD_NUMBER"})
        build.timings["build number + debug"] = run.seconds
        assert run.returncode == 0, run.output[-5000:]
        assert "ota-record:do_compile" in run.tasks, run.tasks
        result, record = check_release(build, build.key.with_suffix(".pub").read_bytes())
        assert record["version"] == f"{config['version']}.42d", record["version"]
        assert result.header.version_number == int(record["versionNumber"])
    finally:
        build.settings()
    build.build("build number and debug off")
    _, record = check_release(build, build.key.with_suffix(".pub").read_bytes())
    assert record["version"] == f"{config['version']}.0"


def test_upgrade_from_a_build_directory_of_the_layer_before_the_image_type(build):
    """Before the image type, do_ota_package deployed the same names under its own sstate manifest;
    in such a build directory image.bbclass refused to install them ("trying to install files into
    a shared area": what a reused CI machine showed). The class removes that task's files and
    manifest before do_image_complete installs, and the build succeeds."""
    complete = next((build.tmpdir / "sstate-control").glob(f"manifest-*-{IMAGE}.image_complete"))
    legacy = complete.with_name(complete.name[:-len(".image_complete")] + ".ota_package")
    old_release = build.deploy / f"{IMAGE}-qemux86-64-20261101000000.hub_update.bin"
    old_release.write_bytes(b"an earlier layer's release")
    listed = [old_release] + [build.deployed(name) for name in ("hub_update.bin", "full_ota_record.json",
                                                                 "ota-signing.pub.pem")]
    legacy.write_text("".join(f"{path}\n" for path in listed))
    build.own(old_release, legacy)
    try:
        build.settings(OTA_DEBUG="1")                                   # a new release: do_image_complete runs
        run = build.bitbake(f"bitbake {IMAGE}")
        assert run.returncode == 0 and not problems(run), run.output[-5000:]
        assert f"{IMAGE}:do_image_complete" in run.tasks, run.tasks
        assert not legacy.exists() and not old_release.exists()
        check_release(build, build.key.with_suffix(".pub").read_bytes())
    finally:
        build.settings()
        legacy.unlink(missing_ok=True)
        old_release.unlink(missing_ok=True)
    build.build("debug off again")


def tar_members(path: Path) -> list:
    """(name, mode, uid, gid, mtime, content) of every member, without the pax atime/ctime."""
    with tarfile.open(path) as tar:
        return [(m.name, m.mode, m.uid, m.gid, m.mtime, tar.extractfile(m).read() if m.isfile() else m.linkname)
                for m in tar.getmembers()]


def test_clean_removes_the_release_and_a_rebuild_makes_the_same(build):
    """``bitbake -c clean`` removes what image.bbclass deployed (do_image_complete, sstate); the rebuild
    makes the same release: byte for byte where oe-core's image is reproducible (wrynose);
    before that, IMAGE_CMD:tar (kirkstone, scarthgap) writes the files' atime/ctime into pax
    headers, so only the tar's members and the record are the same."""
    before = {name: build.deployed(name).read_bytes() for name in ("hub_update.bin", "full_ota_record.json")}
    members = tar_members(build.rootfs_tar)
    run = build.bitbake(f"bitbake -c clean {IMAGE}")
    assert run.returncode == 0, run.output[-3000:]
    assert not build.deployed("hub_update.bin").exists() and not build.deployed("hub_update.bin").is_symlink()
    assert not list(build.deploy.glob(f"{IMAGE}-qemux86-64*.hub_update.bin"))
    build.build("rebuild after clean")
    check_release(build, build.key.with_suffix(".pub").read_bytes())
    assert build.deployed("full_ota_record.json").read_bytes() == before["full_ota_record.json"]
    assert tar_members(build.rootfs_tar) == members
    if build.release not in ("kirkstone", "scarthgap"):
        assert build.deployed("hub_update.bin").read_bytes() == before["hub_update.bin"]


def test_two_images_share_the_stable_links(build):
    """A second image: each keeps its own versioned release and <IMAGE_LINK_NAME> links; the
    stable names (hub_update.bin, the record, the key) all point at the last image made."""
    assert build.bitbake(f"bitbake -c clean {IMAGE}-b").returncode == 0      # no state from an earlier run
    run = build.bitbake(f"bitbake {IMAGE}-b")
    build.timings["second image"] = run.seconds
    assert run.returncode == 0 and not problems(run), run.output[-5000:]
    for image in (IMAGE, f"{IMAGE}-b"):
        links = sorted(build.deploy.glob(f"{image}-qemux86-64*.hub_update.bin"))
        links = [p for p in links if p.is_symlink()]
        assert len(links) == 1, links
        verify_file(str(links[0]), Keyring.from_files([str(build.key.with_suffix(".pub"))]), expected_type=5)
    stable = {name: os.readlink(build.deployed(name)) for name in ("hub_update.bin", "full_ota_record.json",
                                                                   "ota-signing.pub.pem")}
    assert all(target.startswith(f"{IMAGE}-b-qemux86-64") for target in stable.values()), stable
    assert build.bitbake(f"bitbake {IMAGE}").tasks == []                    # the first image is up to date
    assert build.bitbake(f"bitbake -c clean {IMAGE}-b").returncode == 0      # the next run starts without it


def test_no_secret_under_tmpdir_sstate_or_cache(build):
    """The key password (needed: the key is encrypted) and the upload credentials were in
    BitBake's environment for every build; none may be written out."""
    needles = {name: value.encode() for name, value in SECRETS.items()}
    found = []
    for top in (build.tmpdir, build.dir / "sstate-cache", build.dir / "cache"):
        for dirpath, _, files in os.walk(top):
            for name in files:
                path = Path(dirpath) / name
                if path.is_symlink() or not path.is_file():
                    continue
                data = path.read_bytes()
                found += [f"{secret} in {path}" for secret, value in needles.items() if value in data]
    assert not found, "\n".join(found[:20])


BOOT_RELEASE = RELEASES[-1] if RELEASES else ""
BOOT_SETTINGS = {"OTA_AGENT_SLOTS": "a=/dev/mmcblk0p2 b=/dev/mmcblk0p3", "OTA_AGENT_BOOT_VARIABLE": "bootpart",
                 "OTA_AGENT_BOOT_VALUES": "a=0:2 b=0:3", "OTA_BOOT_ENV_STORAGE": "file", "UBOOT_ENV_SIZE": "0x4000"}


def test_ab_image_mounts_the_boot_partition_from_its_own_fstab(build):
    """With OTA_AGENT_SLOTS the image's /etc/fstab (from the rootfs, so in the payload an update writes
    into a slot) mounts the boot partition and the data partition (one release: the class is the same)."""
    if build.release != BOOT_RELEASE:
        pytest.skip(f"built on {BOOT_RELEASE} only")
    try:
        build.settings(**BOOT_SETTINGS, OTA_FSTAB_DATA_DEVICE="/dev/mmcblk0p4",
                       **{"IMAGE_INSTALL:append:pn-" + IMAGE: " ota-test-fstab"})
        run = build.bitbake(f"bitbake {IMAGE}")
        build.timings["A/B fstab"] = run.seconds
        assert run.returncode == 0 and not problems(run), run.output[-5000:]
        check_release(build, build.key.with_suffix(".pub").read_bytes())     # the payload is this rootfs
        assert build.rootfs_file("etc/fstab").decode().splitlines()[-2:] == [
            "/dev/mmcblk0p1\t/uboot\tvfat\tdefaults\t0\t0", "/dev/mmcblk0p4\t/data\tauto\tdefaults\t0\t0"]
        with tarfile.open(build.rootfs_tar) as tar:
            assert tar.getmember("./uboot").isdir() and tar.getmember("./data").isdir()
    finally:
        build.settings()
    build.build("without slots again")
    with tarfile.open(build.rootfs_tar) as tar:
        assert "./etc/fstab" not in tar.getnames()


def test_boot_script_recipe_deploys_the_generated_script(build):
    """ota-boot (one release: the boot side does not depend on it): the deployed boot.scr is
    mkimage's script image of exactly what ota_build's generator writes for the settings, and
    the package's /etc/fw_env.config has the environment's line; without slots it is skipped."""
    if build.release != BOOT_RELEASE:
        pytest.skip(f"ota-boot is built on {BOOT_RELEASE} only")
    from ota_build.partner.bootscript import boot_script_settings, render_boot_script

    run = build.bitbake("bitbake ota-boot")
    assert run.returncode != 0 and "OTA_AGENT_SLOTS must name two slots" in run.output, run.output[-3000:]
    try:
        build.settings(**BOOT_SETTINGS)
        run = build.bitbake("bitbake ota-boot")
        build.timings["ota-boot"] = run.seconds
        assert run.returncode == 0 and not problems(run), run.output[-5000:]
        assert {"ota-boot:do_deploy", "ota-boot:do_deploy_setscene"} & set(run.tasks), run.tasks   # built or from sstate
        expected = render_boot_script(boot_script_settings(
            {"a": "/dev/mmcblk0p2", "b": "/dev/mmcblk0p3"}, boot_variable="bootpart", boot_values={"a": "0:2", "b": "0:3"},
            storage="file", env_device="mmc 0:1",
            boot_commands="load mmc ${bootpart} ${kernel_addr_r} /boot/bzImage && load mmc ${bootpart} ${fdt_addr_r} "
                          "/boot/${fdtfile} && bootz ${kernel_addr_r} - ${fdt_addr_r}"))
        assert build.deployed("ota-boot.cmd").read_text() == expected
        scr = build.deployed("boot.scr").read_bytes()
        # legacy image header (64 bytes, type 6 = script), then the script's length table (length, 0)
        assert scr[:4] == b"\x27\x05\x19\x56" and scr[30] == 6, scr[:64]
        length = int.from_bytes(scr[64:68], "big")
        assert scr[72:72 + length].decode() == expected
        deb = next((build.tmpdir / "deploy" / "deb").glob("*/ota-boot_*.deb"))
        fsys = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True).stdout
        with tarfile.open(fileobj=io.BytesIO(fsys)) as tar:
            assert sorted(m.name for m in tar.getmembers() if m.isfile()) == ["./etc/fw_env.config"]
            config = tar.extractfile("./etc/fw_env.config").read().decode()
        assert config.splitlines()[-1] == "/uboot/uboot.env 0x0000 0x4000"
        assert build.bitbake("bitbake -c clean ota-boot").returncode == 0
    finally:
        build.settings()
