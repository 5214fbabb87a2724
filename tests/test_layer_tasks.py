"""The layer's task code, run outside BitBake.

The shell tasks (ota-record's do_compile, IMAGE_CMD:hub_update) are extracted from the
metadata and run by the shell with their variables filled in and the tools that
ota-build-native's do_install makes (the host's python and openssl, this repository's
ota_build); the python functions (the parse-time checks, the secrets) run against a minimal
``d``/``bb`` stand-in. The real builds are in tests/test_layer_bitbake.py.
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
from typing import Optional

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


def install_native_tools(prefix: Path) -> Path:
    """ota-build-native's do_install, run by the shell as BitBake would; returns its bindir."""
    import subprocess
    text = next(LAYER.glob("recipes-ota/ota-build/ota-build-native_*.bb")).read_text()
    body = re.search(r"^do_install\(\) \{\n(.*?)^\}$", text, re.M | re.S).group(1)
    values = {"D": str(prefix), "S": str(ROOT / "ota_build"), "datadir": "/usr/share", "bindir": "/usr/bin"}
    script = re.sub(r"\$\{(D|S|datadir|bindir)\}", lambda m: values[m.group(1)], body)
    subprocess.run(["bash", "-euc", script], check=True)
    return prefix / "usr" / "bin"


@pytest.fixture
def native(tmp_path):
    """The native sysroot's bin: ota-build (as ota-build-native installs it), openssl."""
    bindir = install_native_tools(tmp_path / "recipe-sysroot-native")
    (bindir / "openssl").symlink_to(shutil.which("openssl"))
    return bindir


def shell_function(path: Path, name: str) -> str:
    text = path.read_text()
    match = re.search(rf"^{re.escape(name)} ?\(\) \{{\n(.*?)^\}}$", text, re.M | re.S)
    assert match, f"{path.name}: no {name}"
    return match.group(1)


def run_shell_task(path: Path, name: str, values: dict, bindir: Path, env: Optional[dict] = None):
    """Run the shell function ``name`` of ``path`` as BitBake would (sh -e), with ota_tool and
    bbnote/bbwarn/bbfatal, ${VAR} replaced from ``values`` (a missing one fails the test)."""
    import subprocess
    def expand(text):
        return re.sub(r"\$\{([A-Za-z0-9_]+)\}", lambda m: str(values[m.group(1)]), text)
    script = ("bbnote() { echo \"NOTE: $*\"; }\nbbwarn() { echo \"WARNING: $*\"; }\n"
              "bbfatal() { echo \"ERROR: $*\"; exit 1; }\n"
              f"ota_tool() {{\n{expand(shell_function(COMMON, 'ota_tool'))}}}\n"
              f"task() {{\n{expand(shell_function(path, name))}}}\ntask\n")
    run_env = {"PATH": f"{bindir}:{os.environ['PATH']}", "OTA_PYTHON": sys.executable, "HOME": str(values["T"])}
    run_env.update(env or {})
    return subprocess.run(["sh", "-e", "-c", script], capture_output=True, text=True, env=run_env, check=False)


def record_values(tmp_path, **changes):
    values = {
        "B": tmp_path / "build", "T": tmp_path / "temp", "OTA_CONFIG": LAYER / "files" / "partner-ota-conf.json",
        "OTA_BUILD_NUMBER": "7", "OTA_RECORD_ARGS": "-d", "OTA_SIGNING_KEY_FILE": LAYER / "files" / "dev-keys" / "ota-dev.key.pem",
        "OTA_PUBLIC_KEY_FILE": LAYER / "files" / "dev-keys" / "ota-dev.pub.pem",
        "OTA_RECORD_PREMADE": tmp_path / "tmp" / "full_ota_record.json", "OTA_RECORD_TIMESTAMP": "1700000000",
    }
    values.update(changes)
    for key in ("B", "T"):
        Path(values[key]).mkdir(parents=True, exist_ok=True)
    return values


def test_record_task_makes_the_record_and_the_public_key(tmp_path, native):
    run = run_shell_task(RECORD, "do_compile", record_values(tmp_path), native)
    assert run.returncode == 0, run.stdout + run.stderr
    record = json.loads((tmp_path / "build" / "full_ota_record.json").read_text())
    assert record["version"] == "0.1.7d" and record["createdTimestamp"] == 1700000000000
    assert record["versionNumber"] == str(((0 * 1000 + 1) * 1000 + 0) * 10**7 + 7)
    dev_pub = LAYER / "files" / "dev-keys" / "ota-dev.pub.pem"
    assert (tmp_path / "build" / "public.pem").read_bytes().strip() == dev_pub.read_bytes().strip()
    assert "NOTE: Running: ota-build record -c" in run.stdout


def test_the_development_key_is_a_declared_input_of_the_layer():
    """No key is made into TOPDIR: the development key pair is a file of the layer, the
    default of OTA_SIGNING_KEY_FILE (so its content is in the signatures)."""
    common = COMMON.read_text()
    assert 'OTA_DEV_KEY ??= "${OTA_LAYERDIR}/files/dev-keys/ota-dev.key.pem"' in common
    assert "keygen" not in common + RECORD.read_text() + IMAGE.read_text() and "TOPDIR}/" not in common
    key = LAYER / "files" / "dev-keys" / "ota-dev.key.pem"
    keyring = Keyring.from_files([str(key.with_name("ota-dev.pub.pem"))])
    assert keyring is not None


def test_record_task_uses_a_premade_record(tmp_path, native):
    premade = {"createdTimestamp": 1572280052532, "description": "OTA description", "id": "11561",
               "name": "Potenco-test", "partnerId": "p", "tags": [], "type": 5,
               "updatedTimestamp": 1572280052532, "url": "", "version": "1.0.2d", "versionNumber": "7112"}
    (tmp_path / "tmp").mkdir()
    (tmp_path / "tmp" / "full_ota_record.json").write_text(json.dumps(premade))
    run = run_shell_task(RECORD, "do_compile", record_values(tmp_path), native)
    assert run.returncode == 0, run.stdout + run.stderr
    assert json.loads((tmp_path / "build" / "full_ota_record.json").read_text()) == premade
    assert "NOTE: Using the OTA record made before the build" in run.stdout


def test_record_task_rejects_a_public_key_that_does_not_match(tmp_path, native):
    generate_key("ed25519", str(tmp_path / "a.key.pem"), str(tmp_path / "a.pub.pem"), backend="openssl")
    generate_key("ed25519", str(tmp_path / "b.key.pem"), str(tmp_path / "b.pub.pem"), backend="openssl")
    values = record_values(tmp_path, OTA_SIGNING_KEY_FILE=tmp_path / "a.key.pem", OTA_PUBLIC_KEY_FILE=tmp_path / "b.pub.pem")
    run = run_shell_task(RECORD, "do_compile", values, native)
    assert run.returncode != 0
    assert re.search(r"^ERROR: OTA_SIGNING_PUBLIC_KEY: .*b\.pub\.pem is not the public key of", run.stdout, re.M), run.stdout


def test_record_task_failure_is_one_line_naming_the_variable(tmp_path, native):
    run = run_shell_task(RECORD, "do_compile", record_values(tmp_path, OTA_RECORD_ARGS="--version-number 12x"), native)
    errors = [line for line in run.stdout.splitlines() if line.startswith("ERROR")]
    assert run.returncode != 0 and len(errors) == 1 and errors[0].startswith("ERROR: OTA_CONFIG: "), run.stdout


def test_record_task_reads_an_encrypted_key_with_the_password_from_the_environment(tmp_path, native):
    import subprocess
    generate_key("ed25519", str(tmp_path / "p.key.pem"), str(tmp_path / "p.pub.pem"), backend="openssl")
    subprocess.run(["openssl", "pkey", "-in", str(tmp_path / "p.key.pem"), "-out", str(tmp_path / "e.key.pem"),
                    "-aes256", "-passout", "pass:pw-123"], check=True)
    values = record_values(tmp_path, OTA_SIGNING_KEY_FILE=tmp_path / "e.key.pem", OTA_PUBLIC_KEY_FILE="")
    run = run_shell_task(RECORD, "do_compile", values, native, env={"OTA_KEY_PASSWORD": "pw-123"})
    assert run.returncode == 0, run.stdout + run.stderr
    assert "pw-123" not in run.stdout + run.stderr
    assert (tmp_path / "build" / "public.pem").read_bytes().strip() == (tmp_path / "p.pub.pem").read_bytes().strip()


@pytest.fixture
def image(tmp_path, native):
    """A rootfs with ota-record's files and a payload in IMGDEPLOYDIR, as do_image_hub_update finds them."""
    run = run_shell_task(RECORD, "do_compile", record_values(tmp_path), native)
    assert run.returncode == 0, run.stdout + run.stderr
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc" / "ota").mkdir(parents=True)
    shutil.copy(tmp_path / "build" / "full_ota_record.json", rootfs / "etc" / "full_ota_record.json")
    shutil.copy(tmp_path / "build" / "public.pem", rootfs / "etc" / "ota" / "ota-signing.pub.pem")
    deploy = tmp_path / "deploy-image"
    deploy.mkdir()
    (deploy / "core-image-minimal-qemux86-64.rootfs-20260101.tar.gz").write_bytes(os.urandom(200_000))
    return {"IMAGE_NAME": "core-image-minimal-qemux86-64.rootfs-20260101", "OTA_IMAGE_NAME_SUFFIX": "",
            "IMGDEPLOYDIR": deploy, "OTA_PAYLOAD_FSTYPE": "tar.gz", "IMAGE_ROOTFS": rootfs, "sysconfdir": "/etc",
            "OTA_SIGNING_KEY_FILE": LAYER / "files" / "dev-keys" / "ota-dev.key.pem", "OTA_SIGNING_KEY": "",
            "OTA_DEVICE_KEY_PATH": "/etc/ota/ota-signing.pub.pem", "OTA_DEVICE_KEY_NAME": "ota-signing.pub.pem",
            "OTA_TYPE": "5", "IMAGE_LINK_NAME": "core-image-minimal-qemux86-64.rootfs", "OTA_IMAGE_FILE": "hub_update.bin",
            "T": tmp_path / "temp"}


def test_image_type_signs_verifies_and_deploys(tmp_path, image, native):
    run = run_shell_task(IMAGE, "IMAGE_CMD:hub_update", image, native)
    assert run.returncode == 0, run.stdout + run.stderr
    out = tmp_path / "deploy-image"
    # <IMAGE_NAME>.hub_update, which the conversion "bin" names <IMAGE_NAME>.hub_update.bin (links to it
    # dangle until then); <IMAGE_LINK_NAME>.hub_update.bin is image.bbclass's link
    versioned = out / "core-image-minimal-qemux86-64.rootfs-20260101.hub_update"
    assert versioned.is_file()
    assert os.readlink(out / "hub_update.bin") == versioned.name + ".bin"
    for name in ("full_ota_record.json", "ota-signing.pub.pem"):
        for link in (name, f"core-image-minimal-qemux86-64.rootfs.{name}"):
            assert os.readlink(out / link) == f"core-image-minimal-qemux86-64.rootfs-20260101.{name}"
    keyring = Keyring.from_files([str(tmp_path / "rootfs" / "etc" / "ota" / "ota-signing.pub.pem")])
    result = verify_file(str(versioned), keyring, expected_type=5, extract_to=str(tmp_path / "payload"))
    record = json.loads((tmp_path / "rootfs" / "etc" / "full_ota_record.json").read_text())
    assert result.header.version_number == int(record["versionNumber"])
    assert (tmp_path / "payload").read_bytes() == (out / "core-image-minimal-qemux86-64.rootfs-20260101.tar.gz").read_bytes()
    assert "WARNING: OTA_SIGNING_KEY is not set" in run.stdout


def test_image_type_refuses_a_key_the_image_does_not_trust(tmp_path, image, native):
    generate_key("ed25519", str(tmp_path / "other.key.pem"), str(tmp_path / "other.pub.pem"), backend="openssl")
    image.update(OTA_SIGNING_KEY_FILE=tmp_path / "other.key.pem", OTA_SIGNING_KEY=tmp_path / "other.key.pem")
    run = run_shell_task(IMAGE, "IMAGE_CMD:hub_update", image, native)
    assert run.returncode != 0
    assert re.search(r"^ERROR: OTA_SIGNING_PUBLIC_KEY: .*unknown-key", run.stdout, re.M), run.stdout


def test_image_type_without_payload_names_the_variable(tmp_path, image, native):
    image["OTA_PAYLOAD_FSTYPE"] = "ext4"
    run = run_shell_task(IMAGE, "IMAGE_CMD:hub_update", image, native)
    assert run.returncode != 0 and re.search(r"^ERROR: OTA_SIGNING_KEY: .*ext4", run.stdout, re.M), run.stdout


def check_vars(tmp_path, **changes):
    """The datastore of the parse-time checks (ota-common's python functions)."""
    values = {
        "TOPDIR": str(tmp_path), "TMPDIR": str(tmp_path / "tmp"), "OTA_LAYERDIR": str(LAYER), "OTA_SOURCE_DIR": str(ROOT),
        "OTA_CONFIG": str(LAYER / "files" / "partner-ota-conf.json"), "OTA_BUILD_NUMBER": "7", "OTA_DEBUG": "1",
        "OTA_VERSION_NUMBER": "", "OTA_TYPE": "5", "OTA_SIGNING_KEY": "", "OTA_SIGNING_PUBLIC_KEY": "",
        "OTA_DEV_KEY": "${OTA_LAYERDIR}/files/dev-keys/ota-dev.key.pem", "OTA_SIGNING_KEY_FILE": "${OTA_DEV_KEY}",
        "OTA_PUBLIC_KEY_FILE": "", "OTA_RECORD_PREMADE": "${TMPDIR}/full_ota_record.json",
        "OTA_SECRET_ENV_VARS": "OTA_KEY_PASSWORD OTA_USERNAME OTA_USERPW OTA_AUTH_STRING OTA_CREDENTIALS_FILE OTA_SERVER",
        "OTA_UPLOAD": "0", "OTA_AGENT": "0", "OTA_CREDENTIALS_FILE": "", "BB_ORIGENV": None,
        "OTA_CHECKSUM_FILE_VARS": "OTA_CONFIG OTA_SIGNING_KEY_FILE OTA_PUBLIC_KEY_FILE",
        "OTA_PASSTHROUGH_SECRETS": "OTA_KEY_PASSWORD OTA_USERNAME OTA_USERPW OTA_AUTH_STRING",
    }
    values.update(changes)
    return FakeData(values)


def test_secret_env_comes_from_the_original_environment(tmp_path):
    ns = load(COMMON)
    d = check_vars(tmp_path, BB_ORIGENV=FakeData({"OTA_KEY_PASSWORD": "pw", "OTA_USERPW": "up", "HOME": "/root"}))
    assert ns.ota_secret_env(d, "OTA_KEY_PASSWORD") == {"OTA_KEY_PASSWORD": "pw"}
    assert ns.ota_secret_env(d, d.getVar("OTA_SECRET_ENV_VARS")) == {"OTA_KEY_PASSWORD": "pw", "OTA_USERPW": "up"}
    assert ns.ota_secret_env(d, "HOME") == {}                 # only the secrets the layer knows


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
def test_parse_time_checks_name_the_variable(tmp_path, changes, message):
    ns = load(COMMON)
    problem = ns.ota_settings_problem(check_vars(tmp_path, **changes))
    assert problem.startswith(message) and "\n" not in problem, problem


def test_parse_time_check_of_a_bad_config_names_the_field(tmp_path):
    bad = tmp_path / "c.json"
    bad.write_text('{"name": "x", "version": "1.0", "imageFiles": {"A": "a/b"}}')
    ns = load(COMMON)
    problem = ns.ota_settings_problem(check_vars(tmp_path, OTA_CONFIG=str(bad)))
    assert problem.startswith("OTA_CONFIG: ") and "imageFiles.A" in problem
    assert ns.ota_settings_problem(check_vars(tmp_path)) is None


def test_parse_time_check_leaves_the_check_to_the_tasks_when_the_library_cannot_run(tmp_path):
    """A Python that cannot load the library (here: no library at OTA_SOURCE_DIR) is no parse error."""
    ns = load(COMMON)
    assert ns.ota_settings_problem(check_vars(tmp_path, OTA_SOURCE_DIR=str(tmp_path / "none"))) is None


def test_native_recipe_install_gives_working_tools(tmp_path):
    """ota-build-native's do_install, run by the shell as BitBake would, installs tools that run."""
    import subprocess
    prefix = tmp_path / "image"
    install_native_tools(prefix)
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


def test_parse_warns_when_a_secret_is_a_bitbake_variable(tmp_path):
    """BB_ENV_PASSTHROUGH_ADDITIONS makes a secret a variable, which BitBake's event log writes
    under TMPDIR (found by tests/test_layer_bitbake.py): the parse says so, without the value."""
    ns = load(COMMON)
    ns.ota_check_settings(check_vars(tmp_path))
    assert ns.bb.warnings == []
    ns.ota_check_settings(check_vars(tmp_path, OTA_USERPW="s3cret-value"))
    assert len(ns.bb.warnings) == 1 and ns.bb.warnings[0].startswith("OTA_USERPW is a BitBake variable")
    assert "s3cret-value" not in ns.bb.warnings[0]


def test_upload_task_uploads_with_only_the_packages_of_ota_upload_deps(tmp_path, native, partner):
    """do_ota_upload, run by the shell, uploads to our real server on loopback with nothing but the
    standard library and the five packages ota-upload-deps-native unpacks (here copied from this
    environment) beside ota_build: the interpreter runs with -S (no site-packages)."""
    import subprocess
    import requests
    share = native.parent / "share" / "ota-build"
    site = Path(requests.__file__).resolve().parent.parent
    for package in ("requests", "urllib3", "idna", "certifi", "charset_normalizer"):
        shutil.copytree(site / package, share / package, ignore=shutil.ignore_patterns("__pycache__"))
    python = tmp_path / "python-nosite"
    python.write_text(f"#!/bin/sh\nexec {getattr(sys, '_base_executable', sys.executable)} -S \"$@\"\n")
    python.chmod(0o755)
    deploy = tmp_path / "deploy"
    deploy.mkdir()
    key = LAYER / "files" / "dev-keys" / "ota-dev.key.pem"
    record, image = deploy / "img-qemux86-64.full_ota_record.json", deploy / "img-qemux86-64.hub_update.bin"
    (tmp_path / "payload.tar.gz").write_bytes(os.urandom(100_000))
    for args in (["record", "-c", str(partner.conf), "-n", "3", "-o", str(record)],
                 ["package", str(tmp_path / "payload.tar.gz"), "-r", str(record), "-k", str(key), "--backend",
                  "openssl", "-o", str(image)]):
        subprocess.run([str(native / "ota-build"), *args], check=True, capture_output=True,
                       env={"PATH": f"{native}:{os.environ['PATH']}", "OTA_PYTHON": sys.executable})
    deployed = record.read_bytes()
    values = {"OTA_CONFIG": partner.conf, "OTA_UPLOADDIR": tmp_path / "ota-upload", "DEPLOY_DIR_IMAGE": deploy,
              "IMAGE_LINK_NAME": "img-qemux86-64", "T": tmp_path / "temp"}
    for path in (values["OTA_UPLOADDIR"], values["T"]):
        path.mkdir()
    run = run_shell_task(IMAGE, "do_ota_upload", values, native, env={**partner.env, "OTA_PYTHON": str(python)})
    assert run.returncode == 0, run.stdout + run.stderr
    uploaded = json.loads((tmp_path / "ota-upload" / "full_ota_record.json").read_text())
    assert uploaded["url"] and uploaded["versionNumber"] == json.loads(deployed)["versionNumber"]
    assert record.read_bytes() == deployed                          # the deployed record is not written
    for secret in partner.secrets.values():
        assert str(secret) not in run.stdout + run.stderr


def fstab_values(tmp_path, **changes):
    values = {"IMAGE_ROOTFS": tmp_path / "rootfs", "sysconfdir": "/etc", "OTA_BOOT_MOUNT": "/uboot",
              "OTA_FSTAB_BOOT_DEVICE": "/dev/mmcblk0p1", "OTA_FSTAB_DATA_DEVICE": "/dev/mmcblk0p4",
              "OTA_FSTAB_DATA_MOUNT": "/data", "T": tmp_path / "temp"}
    values.update(changes)
    Path(values["T"]).mkdir(parents=True, exist_ok=True)
    return values


BASE_FSTAB = "# stock fstab (base-files)\n/dev/root  /  auto  defaults  1  1\nproc  /proc  proc  defaults  0  0\n"


def test_rootfs_fstab_mounts_the_boot_and_data_partitions_in_every_slot(tmp_path, native):
    """A/B: the rootfs's own /etc/fstab (so also a slot an update wrote from the payload) mounts the
    boot partition, where the boot state is, and the data partition; twice run, still one line each."""
    values = fstab_values(tmp_path)
    fstab = tmp_path / "rootfs" / "etc" / "fstab"
    fstab.parent.mkdir(parents=True)
    fstab.write_text(BASE_FSTAB + "#/dev/mmcblk0p1 /uboot vfat defaults 0 0\n")    # a comment does not count
    for _ in range(2):
        run = run_shell_task(IMAGE, "ota_rootfs_fstab", values, native)
        assert run.returncode == 0 and "WARNING" not in run.stdout, run.stdout + run.stderr
    assert fstab.read_text() == (BASE_FSTAB + "#/dev/mmcblk0p1 /uboot vfat defaults 0 0\n"
                                 "/dev/mmcblk0p1\t/uboot\tvfat\tdefaults\t0\t0\n"
                                 "/dev/mmcblk0p4\t/data\tauto\tdefaults\t0\t0\n")
    assert (tmp_path / "rootfs" / "uboot").is_dir() and (tmp_path / "rootfs" / "data").is_dir()


def test_rootfs_fstab_keeps_a_mount_the_user_made_and_skips_an_unset_data_partition(tmp_path, native):
    values = fstab_values(tmp_path, OTA_FSTAB_DATA_DEVICE="")
    fstab = tmp_path / "rootfs" / "etc" / "fstab"
    fstab.parent.mkdir(parents=True)
    fstab.write_text(BASE_FSTAB + "LABEL=boot /uboot vfat ro 0 0\n")
    run = run_shell_task(IMAGE, "ota_rootfs_fstab", values, native)
    assert run.returncode == 0 and "WARNING" not in run.stdout, run.stdout + run.stderr
    assert fstab.read_text() == BASE_FSTAB + "LABEL=boot /uboot vfat ro 0 0\n"
    assert not (tmp_path / "rootfs" / "data").exists()


def test_rootfs_fstab_without_fstab_or_boot_device_warns_and_writes_nothing(tmp_path, native):
    (tmp_path / "rootfs" / "etc").mkdir(parents=True)
    run = run_shell_task(IMAGE, "ota_rootfs_fstab", fstab_values(tmp_path), native)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip() == ("WARNING: the rootfs has no /etc/fstab: nothing mounts /uboot, where the A/B boot "
                                  "state is (install base-files, or mount it yourself)")
    assert os.listdir(tmp_path / "rootfs") == ["etc"] and not os.listdir(tmp_path / "rootfs" / "etc")
    (tmp_path / "rootfs" / "etc" / "fstab").write_text(BASE_FSTAB)
    run = run_shell_task(IMAGE, "ota_rootfs_fstab", fstab_values(tmp_path, OTA_FSTAB_BOOT_DEVICE=""), native)
    assert run.returncode == 0 and "OTA_FSTAB_BOOT_DEVICE is empty" in run.stdout, run.stdout + run.stderr
    assert (tmp_path / "rootfs" / "etc" / "fstab").read_text() == BASE_FSTAB + "/dev/mmcblk0p4\t/data\tauto\tdefaults\t0\t0\n"
