"""The layer's task code, run outside BitBake against a fake datastore.

The python functions and tasks of meta-ota's classes and recipes are extracted
from the metadata and executed with a minimal ``d``/``bb`` stand-in and a fake
native sysroot (the host's python and openssl, this repository's ota_build).
This exercises what a real build runs in ota-record:do_compile,
image:do_ota_package and image:do_ota_upload, which CI cannot build.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import textwrap
import types
from pathlib import Path

import pytest

from ota_build.core.package import verify_file
from ota_build.core.signing import Keyring, generate_key

ROOT = Path(__file__).resolve().parent.parent
LAYER = ROOT / "meta-ota"
COMMON = LAYER / "classes" / "ota-common.bbclass"
IMAGE = LAYER / "classes" / "ota-image.bbclass"
RECORD = LAYER / "recipes-ota" / "ota-record" / "ota-record_1.0.bb"

pytestmark = pytest.mark.skipif(not shutil.which("openssl"), reason="needs the openssl command")


class Fatal(Exception):
    pass


class FakeBB:
    def __init__(self):
        self.notes, self.warnings = [], []
        self.utils = types.SimpleNamespace(mkdirhier=lambda p: os.makedirs(p, exist_ok=True))
        self.parse = types.SimpleNamespace(mark_dependency=lambda d, f: None)

    def note(self, *msg):
        self.notes.append(" ".join(msg))

    def warn(self, *msg):
        self.warnings.append(" ".join(msg))

    def fatal(self, *msg):
        raise Fatal(" ".join(msg))


class FakeData:
    """getVar with ${VAR} expansion; enough for the functions under test."""

    def __init__(self, values):
        self.values = dict(values)

    def getVar(self, name, expand=True):
        value = self.values.get(name)
        if isinstance(value, str) and expand:
            for _ in range(10):
                value = re.sub(r"\$\{([A-Za-z0-9_]+)\}", lambda m: str(self.getVar(m.group(1)) or ""), value)
        return value

    def setVar(self, name, value):
        self.values[name] = value


def python_code(path: Path) -> str:
    """The ``def`` functions and ``python do_x() {}`` tasks of a metadata file, as Python."""
    lines = path.read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("def "):
            out.append(line)
            i += 1
            while i < len(lines) and (not lines[i] or lines[i].startswith((" ", "\t"))):
                out.append(lines[i])
                i += 1
            continue
        m = re.match(r"^python (do_[a-z_]+)\(\) \{$", line)
        if m:
            body = []
            i += 1
            while lines[i] != "}":
                body.append(lines[i])
                i += 1
            out.append(f"def {m.group(1)}(d):")
            out.append(textwrap.indent(textwrap.dedent("\n".join(body)), "    ") or "    pass")
        i += 1
    return "\n".join(out) + "\n"


def load(*paths: Path):
    bb = FakeBB()
    namespace = {"bb": bb}
    for path in paths:
        exec(compile(python_code(path), str(path), "exec"), namespace)
    return types.SimpleNamespace(bb=bb, **{k: v for k, v in namespace.items() if callable(v)})


@pytest.fixture
def native(tmp_path):
    """A fake native sysroot: python3-native/python3, openssl, and ota_build in share/ota-build."""
    bindir = tmp_path / "recipe-sysroot-native" / "usr" / "bin"
    (bindir / "python3-native").mkdir(parents=True)
    (bindir / "python3-native" / "python3").symlink_to(sys.executable)
    (bindir / "openssl").symlink_to(shutil.which("openssl"))
    share = tmp_path / "recipe-sysroot-native" / "usr" / "share" / "ota-build"
    share.mkdir(parents=True)
    (share / "ota_build").symlink_to(ROOT / "ota_build")
    return {"STAGING_BINDIR_NATIVE": str(bindir), "STAGING_DATADIR_NATIVE": str(share.parent)}


def record_vars(tmp_path, native, **changes):
    values = {
        "B": str(tmp_path / "build"), "TOPDIR": str(tmp_path), "TMPDIR": str(tmp_path / "tmp"),
        "OTA_CONFIG": str(LAYER / "files" / "partner-ota-conf.json"), "OTA_BUILD_NUMBER": "7", "OTA_DEBUG": "1",
        "OTA_VERSION_NUMBER": "", "OTA_TYPE": "5", "OTA_SIGNING_KEY": "", "OTA_SIGNING_PUBLIC_KEY": "",
        "OTA_DEV_KEY_DIR": "${TOPDIR}/ota-dev-keys", "OTA_DEV_KEY_ALGORITHM": "ed25519",
        "OTA_RECORD_PREMADE": "${TMPDIR}/full_ota_record.json", "OTA_RECORD_TIMESTAMP": "1700000000",
        "OTA_SECRET_ENV_VARS": "OTA_KEY_PASSWORD OTA_USERNAME OTA_USERPW OTA_AUTH_STRING OTA_CREDENTIALS_FILE OTA_SERVER",
        "OTA_UPLOAD": "0", "OTA_AGENT": "0", "OTA_CREDENTIALS_FILE": "", "BB_ORIGENV": None, "OTA_SOURCE_DIR": str(ROOT),
        "OTA_LAYERDIR": str(LAYER), "OTA_CHECKSUM_FILE_VARS": "OTA_CONFIG OTA_SIGNING_KEY_FILE OTA_PUBLIC_KEY_FILE",
        "OTA_PASSTHROUGH_SECRETS": "OTA_KEY_PASSWORD OTA_USERNAME OTA_USERPW OTA_AUTH_STRING",
        **native,
    }
    values.update(changes)
    d = FakeData(values)
    # the two derived variables, as ota-common.bbclass computes them
    d.setVar("OTA_SIGNING_KEY_FILE", d.getVar("OTA_SIGNING_KEY") or d.getVar("OTA_DEV_KEY_DIR") + "/ota-signing.key.pem")
    d.setVar("OTA_PUBLIC_KEY_FILE", d.getVar("OTA_SIGNING_PUBLIC_KEY")
             or ("" if d.getVar("OTA_SIGNING_KEY") else d.getVar("OTA_DEV_KEY_DIR") + "/ota-signing.pub.pem"))
    os.makedirs(d.getVar("B"), exist_ok=True)
    return d


def test_record_task_makes_dev_key_once_and_the_record(tmp_path, native):
    ns = load(COMMON, RECORD)
    d = record_vars(tmp_path, native)
    ns.do_compile(d)
    keys = tmp_path / "ota-dev-keys"
    assert (keys / "ota-signing.key.pem").exists() and (keys / "ota-signing.pub.pem").exists()
    assert oct((keys / "ota-signing.key.pem").stat().st_mode & 0o777) == "0o600"
    assert len(ns.bb.warnings) == 1 and "OTA_SIGNING_KEY is not set" in ns.bb.warnings[0]
    record = json.loads((tmp_path / "build" / "full_ota_record.json").read_text())
    assert record["version"] == "0.1.7d" and record["createdTimestamp"] == 1700000000000
    assert record["versionNumber"] == str(((0 * 1000 + 1) * 1000 + 0) * 10**7 + 7)
    assert (tmp_path / "build" / "public.pem").read_bytes().strip() == (keys / "ota-signing.pub.pem").read_bytes().strip()
    ns2 = load(COMMON, RECORD)
    ns2.do_compile(record_vars(tmp_path, native))          # the key exists now: reused, no second warning
    assert ns2.bb.warnings == []
    assert (tmp_path / "build" / "public.pem").read_bytes().strip() == (keys / "ota-signing.pub.pem").read_bytes().strip()


def test_record_task_uses_a_premade_record(tmp_path, native):
    premade = {"createdTimestamp": 1572280052532, "description": "OTA description", "id": "11561",
               "name": "Potenco-test", "partnerId": "p", "tags": [], "type": 5,
               "updatedTimestamp": 1572280052532, "url": "", "version": "1.0.2d", "versionNumber": "7112"}
    (tmp_path / "tmp").mkdir()
    (tmp_path / "tmp" / "full_ota_record.json").write_text(json.dumps(premade))
    ns = load(COMMON, RECORD)
    ns.do_compile(record_vars(tmp_path, native))
    assert json.loads((tmp_path / "build" / "full_ota_record.json").read_text()) == premade


def test_record_task_rejects_a_public_key_that_does_not_match(tmp_path, native):
    generate_key("ed25519", str(tmp_path / "a.key.pem"), str(tmp_path / "a.pub.pem"), backend="openssl")
    generate_key("ed25519", str(tmp_path / "b.key.pem"), str(tmp_path / "b.pub.pem"), backend="openssl")
    ns = load(COMMON, RECORD)
    d = record_vars(tmp_path, native, OTA_SIGNING_KEY=str(tmp_path / "a.key.pem"),
                    OTA_SIGNING_PUBLIC_KEY=str(tmp_path / "b.pub.pem"))
    with pytest.raises(Fatal, match=r"^OTA_SIGNING_PUBLIC_KEY: .*b\.pub\.pem is not the public key of"):
        ns.do_compile(d)


def test_record_task_failure_is_one_line_naming_the_variable(tmp_path, native):
    ns = load(COMMON, RECORD)
    d = record_vars(tmp_path, native, OTA_VERSION_NUMBER="12x")
    with pytest.raises(Fatal) as exc:
        ns.do_compile(d)
    assert str(exc.value).startswith("OTA_CONFIG: ") and "\n" not in str(exc.value)


@pytest.fixture
def image(tmp_path, native):
    """ota-record's outputs in the image's sysroot, and a deployed rootfs tarball."""
    ns = load(COMMON, RECORD)
    d = record_vars(tmp_path, native)
    ns.do_compile(d)
    sysroot = tmp_path / "recipe-sysroot"
    (sysroot / "etc" / "ota").mkdir(parents=True)
    shutil.copy(tmp_path / "build" / "full_ota_record.json", sysroot / "etc" / "full_ota_record.json")
    shutil.copy(tmp_path / "build" / "public.pem", sysroot / "etc" / "ota" / "ota-signing.pub.pem")
    deploy = tmp_path / "deploy"
    deploy.mkdir()
    (deploy / "core-image-minimal-qemux86-64.rootfs-20260101.tar.gz").write_bytes(os.urandom(200_000))
    (deploy / "core-image-minimal-qemux86-64.rootfs.tar.gz").symlink_to("core-image-minimal-qemux86-64.rootfs-20260101.tar.gz")
    values = dict(d.values)
    values.update({
        "DEPLOY_DIR_IMAGE": str(deploy), "RECIPE_SYSROOT": str(sysroot), "sysconfdir": "/etc",
        "OTA_DEVICE_KEY_PATH": "/etc/ota/ota-signing.pub.pem", "OTA_PAYLOAD_FSTYPE": "tar.gz",
        "IMAGE_LINK_NAME": "core-image-minimal-qemux86-64.rootfs", "IMAGE_NAME": "core-image-minimal-qemux86-64.rootfs-20260101",
        "IMAGE_NAME_SUFFIX": "", "OTA_IMAGE_FILE": "hub_update.bin", "OTA_DEPLOYDIR": str(tmp_path / "deploy-ota"),
        "OTA_UPLOADDIR": str(tmp_path / "ota-upload"),
    })
    (tmp_path / "deploy-ota").mkdir()
    (tmp_path / "ota-upload").mkdir()
    return FakeData(values)


def test_package_task_signs_verifies_and_deploys(tmp_path, image):
    ns = load(COMMON, IMAGE)
    ns.do_ota_package(image)
    out = tmp_path / "deploy-ota"
    versioned = out / "core-image-minimal-qemux86-64.rootfs-20260101.hub_update.bin"
    assert versioned.is_file()
    for link in ("hub_update.bin", "core-image-minimal-qemux86-64.rootfs.hub_update.bin"):
        assert os.readlink(out / link) == versioned.name
    assert os.readlink(out / "full_ota_record.json") == "core-image-minimal-qemux86-64.rootfs-20260101.full_ota_record.json"
    assert os.readlink(out / "ota-signing.pub.pem") == "core-image-minimal-qemux86-64.rootfs-20260101.ota-signing.pub.pem"
    keyring = Keyring.from_files([str(tmp_path / "recipe-sysroot" / "etc" / "ota" / "ota-signing.pub.pem")])
    result = verify_file(str(versioned), keyring, expected_type=5, extract_to=str(tmp_path / "payload"))
    record = json.loads((tmp_path / "recipe-sysroot" / "etc" / "full_ota_record.json").read_text())
    assert result.header.version_number == int(record["versionNumber"])
    rootfs = tmp_path / "deploy" / "core-image-minimal-qemux86-64.rootfs-20260101.tar.gz"
    assert (tmp_path / "payload").read_bytes() == rootfs.read_bytes()
    assert any("development key" in w for w in ns.bb.warnings)


def test_package_task_refuses_a_key_the_image_does_not_trust(tmp_path, image):
    generate_key("ed25519", str(tmp_path / "other.key.pem"), str(tmp_path / "other.pub.pem"), backend="openssl")
    image.setVar("OTA_SIGNING_KEY", str(tmp_path / "other.key.pem"))
    image.setVar("OTA_SIGNING_KEY_FILE", str(tmp_path / "other.key.pem"))
    ns = load(COMMON, IMAGE)
    with pytest.raises(Fatal, match=r"^OTA_SIGNING_PUBLIC_KEY: .*unknown-key"):
        ns.do_ota_package(image)


def test_package_task_without_payload_names_the_variable(tmp_path, image):
    image.setVar("OTA_PAYLOAD_FSTYPE", "ext4")
    ns = load(COMMON, IMAGE)
    with pytest.raises(Fatal, match=r"^OTA_PAYLOAD_FSTYPE: no ext4 image"):
        ns.do_ota_package(image)


def test_upload_task_keeps_secrets_out_of_the_log(tmp_path, image):
    ns = load(COMMON, IMAGE)
    ns.do_ota_package(image)
    deploy = Path(image.getVar("DEPLOY_DIR_IMAGE"))
    for p in (tmp_path / "deploy-ota").iterdir():
        target = deploy / p.name
        if p.is_symlink():
            target.symlink_to(os.readlink(p))
        else:
            shutil.copy(p, target)
    image.setVar("BB_ORIGENV", FakeData({"OTA_USERPW": "s3cret-pw", "OTA_USERNAME": "ci@example.org"}))
    ns = load(COMMON, IMAGE)
    with pytest.raises(Fatal) as exc:                   # no OTA server configured: one line, named
        ns.do_ota_upload(image)
    assert str(exc.value).startswith("OTA_UPLOAD: ") and "\n" not in str(exc.value)
    assert sorted(os.listdir(tmp_path / "ota-upload")) == ["full_ota_record.json", "hub_update.bin"]
    logged = "\n".join(ns.bb.notes + ns.bb.warnings) + str(exc.value)
    assert "s3cret-pw" not in logged and "--uploadOTAImage" in logged


def test_secret_env_comes_from_the_original_environment(tmp_path, image):
    ns = load(COMMON)
    image.setVar("BB_ORIGENV", FakeData({"OTA_KEY_PASSWORD": "pw", "HOME": "/root"}))
    assert ns.ota_secret_env(image) == {"OTA_KEY_PASSWORD": "pw"}


@pytest.mark.parametrize("changes, message", [
    ({"OTA_DEBUG": "yes"}, "OTA_DEBUG = 'yes': must be 0 or 1"),
    ({"OTA_TYPE": "300"}, "OTA_TYPE = '300'"),
    ({"OTA_TYPE": "3"}, "OTA_TYPE = '3' but field 'type' of OTA_CONFIG"),
    ({"OTA_BUILD_NUMBER": "x"}, "OTA_BUILD_NUMBER: build number: 'x'"),
    ({"OTA_VERSION_NUMBER": "12x"}, "OTA_VERSION_NUMBER: "),
    ({"OTA_SIGNING_KEY": "/nonexistent/k.pem"}, "OTA_SIGNING_KEY: /nonexistent/k.pem: file not found"),
    ({"OTA_CONFIG": "/nonexistent/c.json"}, "OTA_CONFIG: /nonexistent/c.json: configuration file not found"),
    ({"OTA_CREDENTIALS_FILE": str(LAYER / "files" / "partner-ota-conf.json")}, "OTA_CREDENTIALS_FILE: "),
])
def test_parse_time_checks_name_the_variable(tmp_path, native, changes, message):
    ns = load(COMMON)
    d = record_vars(tmp_path, native, **changes)
    cfg, problem = ns.ota_settings_problem(d)
    assert cfg is None and problem.startswith(message), problem


def test_parse_time_check_of_a_bad_config_names_the_field(tmp_path, native):
    bad = tmp_path / "c.json"
    bad.write_text('{"name": "x", "version": "1.0", "imageFiles": {"A": "a/b"}}')
    ns = load(COMMON)
    cfg, problem = ns.ota_settings_problem(record_vars(tmp_path, native, OTA_CONFIG=str(bad)))
    assert problem.startswith("OTA_CONFIG: ") and "imageFiles.A" in problem
    cfg, problem = ns.ota_settings_problem(record_vars(tmp_path, native))
    assert problem is None and cfg.image_file == "hub_update.bin"


def test_native_recipe_install_gives_working_tools(tmp_path):
    """ota-build-native's do_install, run by the shell as BitBake would, installs tools that run."""
    import subprocess
    text = next(LAYER.glob("recipes-ota/ota-build/ota-build-native_*.bb")).read_text()
    body = re.search(r"^do_install\(\) \{\n(.*?)^\}$", text, re.M | re.S).group(1)
    prefix = tmp_path / "image"
    values = {"D": str(prefix), "S": str(ROOT / "ota_build"), "datadir": "/usr/share", "bindir": "/usr/bin"}
    script = re.sub(r"\$\{(D|S|datadir|bindir)\}", lambda m: values[m.group(1)], body)
    subprocess.run(["bash", "-euc", script], check=True)
    installed = prefix / "usr" / "share" / "ota-build" / "ota_build"
    assert (installed / "cli" / "build.py").is_file() and (installed / "core" / "schemas").is_dir()
    assert not list(installed.rglob("__pycache__")) and not list(installed.rglob("*.pyc"))
    env = {"PATH": os.environ["PATH"], "OTA_PYTHON": sys.executable, "PYTHONNOUSERSITE": "1"}
    for tool in ("ota-build", "partner-ota-hub-uploader", "partner-ota-hub-deploy"):
        proc = subprocess.run([str(prefix / "usr" / "bin" / tool), "--help"], capture_output=True, text=True, env=env,
                              cwd=tmp_path, check=False)
        assert proc.returncode == 0 and f"usage: {tool}" in proc.stdout, proc.stderr
    proc = subprocess.run([str(prefix / "usr" / "bin" / "ota-build"), "record", "-c",
                           str(LAYER / "files" / "partner-ota-conf.json"), "-n", "3", "-o", str(tmp_path / "r.json")],
                          capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "r.json").read_text())["version"] == "0.1.3"


def test_agent_recipe_install_ships_only_the_device_side(tmp_path):
    """ota-agent's do_install, run by the shell as BitBake would: core/ and device/ only, and the agent runs."""
    import subprocess
    text = (LAYER / "recipes-ota" / "ota-agent" / "ota-agent_1.0.bb").read_text()
    body = re.search(r"^do_install\(\) \{\n(.*?)^\}$", text, re.M | re.S).group(1)
    parts = re.search(r'^OTA_DEVICE_PARTS = "([^"]*)"', text, re.M).group(1)
    src = tmp_path / "src"
    shutil.copytree(ROOT / "ota_build", src / "ota_build", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("ota-agent.service", "ota-agent.init"):
        shutil.copy(LAYER / "recipes-ota" / "ota-agent" / "files" / name, src / name)
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "ota-agent.json").write_text("{}\n")
    prefix = tmp_path / "image"
    values = {"D": str(prefix), "S": str(src), "B": str(tmp_path / "build"), "OTA_DEVICE_PARTS": parts,
              "PYTHON_SITEPACKAGES_DIR": "/usr/lib/python3/site-packages", "bindir": "/usr/bin", "sysconfdir": "/etc",
              "localstatedir": "/var", "systemd_system_unitdir": "/lib/systemd/system"}
    script = re.sub(r"\$\{(\w+)\}", lambda m: values[m.group(1)], body)
    subprocess.run(["bash", "-euc", script], check=True)
    site = prefix / "usr/lib/python3/site-packages"
    assert sorted(p.name for p in (site / "ota_build").iterdir()) == ["__init__.py", "core", "device"]
    assert not list(site.rglob("__pycache__"))
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(site), "PYTHONNOUSERSITE": "1"}
    proc = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(site)!r}); "
                           "import ota_build; assert ota_build.__file__.startswith(sys.path[0]); "
                           "from ota_build.device.cli import main; sys.argv = ['ota-agent', '--help']; main()"],
                          capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 0 and "usage: ota-agent" in proc.stdout, proc.stderr


def test_parse_warns_when_a_secret_is_a_bitbake_variable(tmp_path, native):
    """BB_ENV_PASSTHROUGH_ADDITIONS makes a secret a variable, which BitBake's event log writes
    under TMPDIR (found by tests/test_layer_bitbake.py): the parse says so, without the value."""
    ns = load(COMMON)
    ns.ota_check_settings(record_vars(tmp_path, native))
    assert ns.bb.warnings == []
    ns.ota_check_settings(record_vars(tmp_path, native, OTA_USERPW="s3cret-value"))
    assert len(ns.bb.warnings) == 1 and ns.bb.warnings[0].startswith("OTA_USERPW is a BitBake variable")
    assert "s3cret-value" not in ns.bb.warnings[0]
