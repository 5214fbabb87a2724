"""meta-ota, checked without BitBake: layer.conf, lint, and the rules the classes keep.

The datastore and checksum checks below use BitBake's own code (lib/bb from a release tree,
tests/yocto.py); real builds are in test_layer_bitbake.py and test_layer_poky_<release>.py.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import ota_build
from ota_build.core.config import load_config

from .yocto import bitbake_lib, release_tree

ROOT = Path(__file__).resolve().parent.parent
LAYER = ROOT / "meta-ota"
CLASSES = sorted((LAYER / "classes").glob("*.bbclass"))
RECIPES = sorted(LAYER.glob("recipes-*/*/*.bb"))
METADATA = CLASSES + RECIPES + [LAYER / "conf" / "layer.conf"]
SECRETS = ("OTA_KEY_PASSWORD", "OTA_USERNAME", "OTA_USERPW", "OTA_AUTH_STRING", "OTA_SERVER")


def assignments(path: Path) -> dict:
    """Simple ``VAR = "value"`` assignments of a conf/bbclass file (continuation lines joined)."""
    text = path.read_text().replace("\\\n", " ")
    return {m.group(1): m.group(3) for m in re.finditer(r'^([A-Za-z0-9_:\-\[\]\.]+)\s*(\?\?=|\?=|:=|\+=|=)\s*"(.*)"\s*$',
                                                      text, re.M)}


def test_layer_conf():
    conf = assignments(LAYER / "conf" / "layer.conf")
    assert conf["BBFILE_COLLECTIONS"].split() == ["ota"]
    assert conf["BBFILE_PATTERN_ota"] == "^${LAYERDIR}/"
    assert conf["LAYERDEPENDS_ota"].split() == ["core"]
    assert conf["LAYERSERIES_COMPAT_ota"].split() == ["kirkstone", "scarthgap", "wrynose"]
    assert "recipes-*/*/*.bb" in conf["BBFILES"]
    # Adding the layer must change nothing: no global INHERIT, no class enabled from layer.conf.
    text = "\n".join(line for line in (LAYER / "conf" / "layer.conf").read_text().splitlines()
                     if not line.startswith("#"))
    assert "INHERIT" not in text and "IMAGE_CLASSES" not in text


def test_readme_and_security_for_yocto_check_layer():
    readme = (LAYER / "README.md").read_text()
    for word in ("maintainer", "patch"):
        assert word in readme.lower()
    assert re.match(r"[^@]+@[^@]+", readme)
    assert (LAYER / "SECURITY.md").stat().st_size > 0


@pytest.mark.parametrize("path", METADATA, ids=lambda p: p.name)
def test_new_override_syntax_only(path):
    old = re.compile(r"^[A-Za-z0-9_${}]+_(append|prepend|remove)(_[a-z0-9-]+)?\s*[+.]?="
                     r"|^(RDEPENDS|FILES|RRECOMMENDS|pkg_postinst)_\$\{PN\}", re.M)
    assert not old.search(path.read_text()), f"{path.name}: old override syntax"


def test_oelint_adv_reports_no_errors():
    exe = Path(sys.executable).parent / "oelint-adv"
    exe = str(exe) if exe.exists() else shutil.which("oelint-adv")
    if not exe:
        pytest.skip("oelint-adv is not installed (pip install '.[test]')")
    files = [str(p) for p in CLASSES + RECIPES]
    # .oelint-constants.json: the layer's own variables, so that real misspellings still show
    proc = subprocess.run([exe, "--quiet", "--release", "scarthgap", "--constantmods=+.oelint-constants.json",
                           "--suppress", "oelint.vars.homepageping", *files],           # no network in CI
                          capture_output=True, text=True, cwd=LAYER, timeout=600)
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if ":error:" in line]
    assert not errors, "\n".join(errors)


def test_classes_run_only_the_library():
    """No OTA logic in the metadata: no signing, hashing or HTTP; every command is an ota_build tool."""
    for path in CLASSES + RECIPES:
        text = path.read_text()
        for forbidden in ("import hashlib", "import requests", "import cryptography", "import jsonschema",
                          "openssl dgst", "openssl pkeyutl", "openssl genpkey", "json.dump", "import urllib"):
            assert forbidden not in text, f"{path.name}: {forbidden}"
        if path.name != "ota-agent_1.0.bb":                    # (its /usr/bin/ota-agent script imports it, on the device)
            assert not re.search(r"^\s*(import|from) ota_build", text, re.M), f"{path.name}: imports ota_build"
        if path.name != "ota-common.bbclass":
            assert "subprocess" not in text, f"{path.name}: run the tools with ota_tool"
    common = (LAYER / "classes" / "ota-common.bbclass").read_text()
    # the one subprocess: the parse-time check, in a Python of its own (nothing imported into the parser)
    assert common.count("subprocess.run(") == 1
    assert '[python, "-I", "-B", "-c", code]' in common
    assert "from ota_build.core.bbenv import layer_settings_problem" in common
    # the tasks are shell: ota_tool runs ota-build from ota-build-native
    for path in (LAYER / "classes" / "ota-image.bbclass", LAYER / "recipes-ota" / "ota-record" / "ota-record_1.0.bb"):
        assert not re.search(r"^python do_", path.read_text(), re.M), path.name
        assert "ota_tool " in path.read_text()


def test_every_ota_task_keeps_secrets_out_of_signatures_and_scripts():
    common = (LAYER / "classes" / "ota-common.bbclass").read_text()
    secret_list = assignments(LAYER / "classes" / "ota-common.bbclass")["OTA_SECRET_ENV_VARS"].split()
    assert set(SECRETS) <= set(secret_list)
    assert 'ota_secret_env[vardepsexclude] = "BB_ORIGENV ${OTA_SECRET_ENV_VARS}"' in common
    assert 'ota_export_secrets[vardepsexclude] = "BB_ORIGENV BB_CURRENTTASK ${OTA_SECRET_ENV_VARS}"' in common
    for path in CLASSES + RECIPES:
        text = path.read_text()
        for task in re.findall(r"^(do_[a-z_]+)\[prefuncs\] \+= \"ota_export_secrets\"", text, re.M):
            assert re.search(rf"^{task}\[ota-secrets\] = ", text, re.M), f"{path.name}: {task} names no secret"
        for secret in SECRETS:
            # never exported (it would be written into the task's run script), never read by name
            assert not re.search(rf"^export {secret}|getVar\([\"']{secret}|\$\{{{secret}\}}", text, re.M), \
                f"{path.name}: {secret}"
    image = (LAYER / "classes" / "ota-image.bbclass").read_text()
    assert 'do_image_hub_update[ota-secrets] = "OTA_KEY_PASSWORD"' in image
    assert 'do_ota_upload[ota-secrets] = "${OTA_SECRET_ENV_VARS}"' in image
    assert 'do_ota_upload[network] = "1"' in image
    assert 'do_ota_upload[vardepsexclude] += "${OTA_PATH_VARS} ${OTA_SECRET_ENV_VARS} BB_ORIGENV"' in image


def test_key_config_and_record_changes_rerun_the_ota_tasks():
    common = assignments(LAYER / "classes" / "ota-common.bbclass")
    for name in ("OTA_CONFIG", "OTA_SIGNING_KEY_FILE", "OTA_PUBLIC_KEY_FILE", "OTA_RECORD_PREMADE"):
        assert name in common["OTA_CHECKSUM_FILE_VARS"].split()
    for name in ("OTA_BUILD_NUMBER", "OTA_DEBUG", "OTA_VERSION_NUMBER", "OTA_TYPE"):
        assert name in common["OTA_VALUE_VARS"].split()
    record = (LAYER / "recipes-ota" / "ota-record" / "ota-record_1.0.bb").read_text()
    assert 'do_compile[file-checksums] += "${OTA_FILE_CHECKSUMS}"' in record
    assert 'do_compile[vardeps] += "${OTA_VALUE_VARS}' in record
    image = (LAYER / "classes" / "ota-image.bbclass").read_text()
    assert 'do_image_hub_update[file-checksums] += "${OTA_KEY_CHECKSUMS}"' in image
    # BitBake skips every "path:False" entry: a literal ":False" would checksum nothing
    # (test_bitbake_checksums_the_key_config_and_record runs BitBake's own code on them).
    for path in METADATA:
        assert not re.search(r"\[file-checksums\].*:False", path.read_text()), f"{path.name}: an entry BitBake skips"
    # a build number from the environment is a value: it must reach the signature
    assert 'OTA_BUILD_NUMBER[vardepvalue] = "${OTA_BUILD_NUMBER}"' in (LAYER / "classes" / "ota-common.bbclass").read_text()


def test_build_path_needs_no_toolchain():
    """ota-build-native is copied, not built; the upload's packages are unpacked wheels: nothing
    the layer names pulls rust-native (oe-core's python3-requests-native does, on kirkstone and
    scarthgap, through urllib3's and requests' runtime dependencies)."""
    native = next(LAYER.glob("recipes-ota/ota-build/ota-build-native_*.bb"))
    assert native.name == f"ota-build-native_{ota_build.__version__}.bb"
    heavy = ("python3-cryptography-native", "python3-jsonschema-native", "python3-requests-native",
             "python3-urllib3-native", "rust-native", "cargo-native", "setuptools3", "python_pep517",
             "python_setuptools_build_meta", "go-native", "cargo")
    for path in RECIPES + CLASSES:
        text = "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))
        for name in heavy:
            assert not re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text), f"{path.name}: {name}"
    image = (LAYER / "classes" / "ota-image.bbclass").read_text()
    assert 'OTA_UPLOAD_NATIVE_DEPENDS ??= "ota-upload-deps-native:do_populate_sysroot"' in image
    assert 'd.appendVarFlag("do_ota_upload", "depends"' in image
    deps = (LAYER / "recipes-ota" / "ota-upload-deps" / "ota-upload-deps-native_1.0.bb").read_text()
    assert re.search(r"^inherit native$", deps, re.M) and 'DEPENDS = "python3-native"' in deps
    wheels = re.findall(r"/([\w.-]+\.whl);name=(\w+)", deps)
    assert len(wheels) == 5 and all(w.endswith("-py3-none-any.whl") for w, _ in wheels)
    for _, name in wheels:
        assert re.search(rf'^SRC_URI\[{name}\.sha256sum\] = "[0-9a-f]{{64}}"$', deps, re.M), name


def test_every_variable_has_a_doc_flag():
    """Every OTA_* variable the layer sets has a [doc] flag (as meta-rauc's classes document theirs)."""
    texts = {path: path.read_text().replace("\\\n", " ") for path in METADATA}
    documented = set()
    for text in texts.values():
        documented |= set(re.findall(r"^(OTA_[A-Z0-9_]+)\[doc\] = \"[^\"]+", text, re.M))
    missing = []
    for path, text in texts.items():
        for name in re.findall(r"^(OTA_[A-Z0-9_]+)\s*(?:\?\?=|\?=|:=|\+=|=)", text, re.M):
            if name not in documented:
                missing.append(f"{path.name}: {name}")
    assert len(documented) > 30 and not missing, missing


def test_default_config_is_valid():
    cfg = load_config(str(LAYER / "files" / "partner-ota-conf.json"), env={})
    assert cfg.image_file == "hub_update.bin" and cfg.ota_type == 5
    assert not any((cfg.credentials.username, cfg.credentials.password, cfg.credentials.auth_string))


def test_readme_documents_every_setting():
    readme = (ROOT / "README.md").read_text()
    settings = [m.group(1) for m in re.finditer(r"^(OTA_[A-Z_]+) \?\?=", (LAYER / "classes" / "ota-common.bbclass")
                                                .read_text(), re.M)]
    settings += ["OTA_UPLOAD_NATIVE_DEPENDS", "OTA_AUTO_FSTYPES"]
    assert len(settings) > 10
    for name in settings:
        assert f"`{name}`" in readme, f"README does not document {name}"
    assert "OTA_POKY_RELEASES" in readme


def bitbake_datastore(bb, tree: Path, metadata: Path, **values):
    """A real BitBake datastore holding ``metadata`` (a class or recipe of the layer, parsed
    as an include: no anonymous functions), the layer and oe-core's meta on BBPATH."""
    d = bb.data.init()
    d.setVar("BBPATH", f"{LAYER}:{tree}/meta")
    d.setVar("__bbclasstype", "recipe")
    d.setVar("OTA_LAYERDIR", str(LAYER))
    d.setVar("OTA_SOURCE_DIR", str(ROOT))
    d.setVar("SOURCE_DATE_EPOCH", "0")
    for name, value in values.items():
        d.setVar(name, str(value))
    bb.parse.handle(str(metadata), d, True)
    return d


def test_bitbake_checksums_the_key_config_and_record(tmp_path):
    """Regression (issue 10, defect 1): the OTA tasks' [file-checksums] were "path:False",
    which BitBake skips, so a new key or an edited config re-ran nothing. Expanded by a real
    BitBake datastore and checksummed by BitBake's own FileChecksumCache."""
    bb = bitbake_lib("scarthgap")
    tree = release_tree("scarthgap")
    key, pub, config, premade = (tmp_path / n for n in ("k.pem", "k.pub.pem", "c.json", "record.json"))
    for path in (key, pub, config, premade):
        path.write_text(path.name)
    values = dict(TOPDIR=tmp_path, TMPDIR=tmp_path / "tmp", OTA_SIGNING_KEY=key, OTA_SIGNING_PUBLIC_KEY=pub,
                  OTA_CONFIG=config, OTA_RECORD_PREMADE=premade)
    cache = bb.checksum.FileChecksumCache()
    cache.init_cache(str(tmp_path / "cache"))

    def checksummed(flags):
        return {Path(path).name: value for path, value in cache.get_checksums(flags, "ota", [])}

    record = bitbake_datastore(bb, tree, LAYER / "recipes-ota" / "ota-record" / "ota-record_1.0.bb", **values)
    sums = checksummed(record.getVarFlag("do_compile", "file-checksums"))
    assert set(sums) == {"k.pem", "k.pub.pem", "c.json", "record.json"}, sums
    image = bitbake_datastore(bb, tree, LAYER / "classes" / "ota-image.bbclass", **values)
    assert set(checksummed(image.getVarFlag("do_image_hub_update", "file-checksums"))) == {"k.pem"}
    assert set(checksummed(image.getVarFlag("do_ota_upload", "file-checksums"))) == {"c.json"}
    agent = bitbake_datastore(bb, tree, LAYER / "recipes-ota" / "ota-agent" / "ota-agent_1.0.bb", **values)
    assert set(checksummed(agent.getVarFlag("do_compile", "file-checksums"))) == {"c.json"}
    # a file that is not there is skipped ("path:False"), without a warning
    premade.unlink()
    record = bitbake_datastore(bb, tree, LAYER / "recipes-ota" / "ota-record" / "ota-record_1.0.bb", **values)
    assert f"{premade}:False" in record.getVarFlag("do_compile", "file-checksums")
    assert "record.json" not in checksummed(record.getVarFlag("do_compile", "file-checksums"))


def test_sources_exclude_bytecode_caches(tmp_path):
    """Regression (issue 10, defect 2): SRC_URI = "file://ota_build/" made the fetcher checksum
    ota_build/__pycache__, which any Python run in the repository writes: spurious rebuilds."""
    bb = bitbake_lib("scarthgap")
    tree = release_tree("scarthgap")
    src = tmp_path / "repo"
    shutil.copytree(ROOT / "ota_build", src / "ota_build",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    d = bitbake_datastore(bb, tree, LAYER / "recipes-ota" / "ota-agent" / "ota-agent_1.0.bb",
                          TOPDIR=tmp_path, TMPDIR=tmp_path / "tmp")
    d.setVar("OTA_SOURCE_DIR", str(src))
    d.setVar("FILESPATH", f"{src}:{LAYER}/recipes-ota/ota-agent/files")

    def fetched():
        return sorted(entry for entry in bb.fetch2.get_checksum_file_list(d).split() if "/ota_build/" in entry)

    before = fetched()
    assert f"{src}/ota_build/core/config.py:True" in before
    assert f"{src}/ota_build/device/agent.py:True" in before
    assert not any("/server/" in e or "/cli/" in e or "/partner/" in e for e in before)   # device parts only
    for cache in (src / "ota_build" / "__pycache__", src / "ota_build" / "core" / "__pycache__"):
        cache.mkdir()
        (cache / "config.cpython-311.pyc").write_bytes(b"\0")
    (src / "ota_build" / "core" / "stray.pyc").write_bytes(b"\0")
    assert fetched() == before
    native = next(LAYER.glob("recipes-ota/ota-build/ota-build-native_*.bb")).read_text()
    assert 'SRC_URI = "${@ota_source_uris(d)}"' in native and "file://ota_build/" not in native


def test_parse_time_check_imports_nothing_into_the_parser(tmp_path):
    """Regression (issue 10, defect 2): the parse-time import of ota_build wrote
    ota_build/__pycache__ into the layer's repository. The check now runs the library in a
    Python of its own (-I -B): run by BitBake's datastore in a fresh Python, as the parser
    does, it reports a bad config in one line, and leaves no ota_build module in the parser,
    no change to sys.dont_write_bytecode and no bytecode in the repository."""
    tree = release_tree("scarthgap")
    src = tmp_path / "repo"
    shutil.copytree(ROOT / "ota_build", src / "ota_build",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    bad = tmp_path / "bad.json"
    bad.write_text('{"name": "x", "version": "1.0", "imageFiles": {"A": "a/b"}}')
    script = f"""
import sys
sys.path.insert(0, {str(tree / "bitbake" / "lib")!r})
sys.dont_write_bytecode = True          # nothing into the release tree (BitBake's user owns it)
import bb, bb.data, bb.parse
sys.dont_write_bytecode = False         # as in BitBake's parser: bytecode on
d = bb.data.init()
d.setVar("BBPATH", {str(LAYER)!r})
d.setVar("__bbclasstype", "recipe")
d.setVar("OTA_LAYERDIR", {str(LAYER)!r})
d.setVar("TOPDIR", {str(tmp_path)!r})
d.setVar("TMPDIR", {str(tmp_path / "tmp")!r})
bb.parse.handle({str(LAYER / "classes" / "ota-common.bbclass")!r}, d, True)
d.setVar("OTA_SOURCE_DIR", {str(src)!r})
print(d.expand("${{@ota_settings_problem(d)}}"))
d.setVar("OTA_CONFIG", {str(bad)!r})
print(d.expand("${{@ota_settings_problem(d)}}"))
print(sorted(m for m in sys.modules if m.startswith("ota_build")), sys.dont_write_bytecode)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": ""})
    assert proc.returncode == 0, proc.stderr[-2000:]
    ok, problem, state = proc.stdout.splitlines()
    assert ok == "None"
    assert problem.startswith(f"OTA_CONFIG: {bad}: field 'imageFiles.A'"), problem
    assert state == "[] False"
    assert not list(src.rglob("__pycache__")) and not list(src.rglob("*.pyc"))


# --- the boot side (recipes-bsp/ota-boot, files/wic; docs/boot.md) -------------------------------
BOOT_RECIPE = LAYER / "recipes-bsp" / "ota-boot" / "ota-boot_1.0.bb"
WKS = {"ota-ab-beaglebone.wks": "mmcblk0", "ota-ab-sama5d2-sd.wks": "mmcblk1"}


def test_boot_settings_are_documented():
    common = (LAYER / "classes" / "ota-common.bbclass").read_text()
    names = re.findall(r"^(OTA_BOOT_[A-Z_]+) \?\?=", common, re.M)
    assert len(names) >= 8, names
    for name in names + ["OTA_BOOT_SCRIPT_NAME"]:
        assert re.search(rf"^{name}\[doc\] = \"[^\"]+\"$", common + BOOT_RECIPE.read_text(), re.M), f"{name}: no [doc]"
        assert f"`{name}`" in (ROOT / "README.md").read_text() + (ROOT / "docs" / "boot.md").read_text(), name
    # every setting reaches the signature of the task that uses it
    compile_vardeps = re.search(r'do_compile\[vardeps\] \+= "(.*?)"', BOOT_RECIPE.read_text().replace("\\\n", " "), re.S)
    assert compile_vardeps and set(names) <= set(compile_vardeps.group(1).split()), names
    for name in ("OTA_AGENT_SLOTS", "OTA_AGENT_BOOT_VARIABLE", "OTA_AGENT_BOOT_VALUES"):
        assert name in compile_vardeps.group(1).split()


@pytest.mark.parametrize("kernel, boot", [("zImage", "bootz"), ("Image", "booti"), ("uImage", "bootm")])
def test_boot_defaults_keep_uboot_references(tmp_path, kernel, boot):
    """Expanded by a real BitBake datastore: U-Boot's ${...} stay as written, BitBake's own are filled in."""
    bb = bitbake_lib("scarthgap")
    tree = release_tree("scarthgap")
    d = bitbake_datastore(bb, tree, BOOT_RECIPE, TOPDIR=tmp_path, TMPDIR=tmp_path / "tmp", KERNEL_IMAGETYPE=kernel,
                          OTA_AGENT_SLOTS="a=/dev/mmcblk0p2 b=/dev/mmcblk0p3", OTA_AGENT_BOOT_VARIABLE="bootpart")
    assert d.getVar("OTA_BOOT_COMMANDS") == (
        f"load mmc ${{bootpart}} ${{kernel_addr_r}} /boot/{kernel} && load mmc ${{bootpart}} "
        f"${{fdt_addr_r}} /boot/${{fdtfile}} && {boot} ${{kernel_addr_r}} - ${{fdt_addr_r}}")
    assert d.getVar("OTA_BOOT_ARGS") == "root=${ota_boot_root} rootwait"
    assert d.getVar("OTA_BOOT_ENV_DEVICE") == "${devtype} ${devnum}:${distro_bootpart}"     # values are slot names
    d.setVar("OTA_AGENT_BOOT_VALUES", "a=1:2 b=1:3")
    assert d.getVar("OTA_BOOT_ENV_DEVICE") == "mmc 1:1"
    d.setVar("OTA_BOOT_DEVTYPE", "virtio")
    assert d.getVar("OTA_BOOT_ENV_DEVICE") == "virtio 1:1" and d.getVar("OTA_BOOT_COMMANDS").startswith("load virtio ${bootpart}")
    assert d.getVar("OTA_BOOT_FW_ENV_CONFIG") == "/uboot/uboot.env 0x0000 0x20000"
    d.setVar("UBOOT_ENV_SIZE", "0x4000")                          # meta-atmel's SAMA5D2 SD machines
    assert d.getVar("OTA_BOOT_FW_ENV_CONFIG") == "/uboot/uboot.env 0x0000 0x4000"
    assert "u-boot-tools-native" in d.getVar("DEPENDS").split()
    assert d.getVar("PACKAGE_ARCH", False) == "${MACHINE_ARCH}"


WKS_PARSE = """
import json, sys
sys.path[:0] = [sys.argv[1] + "/scripts/lib", sys.argv[1] + "/bitbake/lib"]
from wic.ksparser import KickStart
parts = KickStart(sys.argv[2]).partitions
print(json.dumps([dict(mountpoint=p.mountpoint, source=p.source, fstype=p.fstype, label=p.label, disk=p.disk,
                       active=bool(p.active), no_fstab_update=bool(p.no_fstab_update)) for p in parts]))
"""


@pytest.mark.parametrize("release", ["kirkstone", "scarthgap"])
@pytest.mark.parametrize("wks", sorted(WKS))
def test_wks_layouts_parse_and_match_their_slot_settings(release, wks):
    """Parsed by the release's own wic (wrynose's oe-core no longer carries wic); the partition
    numbers of the two slots are those the file's "Matching settings" name."""
    import json

    tree = release_tree(release)
    path = LAYER / "files" / "wic" / wks
    proc = subprocess.run([sys.executable, "-c", WKS_PARSE, str(tree), str(path)], capture_output=True, text=True,
                          check=False, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    parts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [(p["mountpoint"], p["source"], p["fstype"]) for p in parts] == [
        ("/uboot", "bootimg-partition", "vfat"), ("/", "rootfs", "ext4"), (None, "rootfs", "ext4"), ("/data", None, "ext4")]
    assert parts[0]["active"] and {p["disk"] for p in parts} == {WKS[wks]}
    text = path.read_text()
    slots = dict(s.split("=") for s in re.search(r'OTA_AGENT_SLOTS = "([^"]+)"', text).group(1).split())
    values = dict(s.split("=") for s in re.search(r'OTA_AGENT_BOOT_VALUES = "([^"]+)"', text).group(1).split())
    assert slots == {"a": f"/dev/{WKS[wks]}p2", "b": f"/dev/{WKS[wks]}p3"}
    assert values == {"a": f"{WKS[wks][-1]}:2", "b": f"{WKS[wks][-1]}:3"}
    assert (parts[1]["label"], parts[2]["label"]) == ("root_a", "root_b")
    # wic writes nothing into the slots: they are the payload's rootfs, whose own fstab mounts /uboot and /data
    assert [p["no_fstab_update"] for p in parts if p["source"] == "rootfs"] == [True, True]
    data = re.search(r'OTA_FSTAB_DATA_DEVICE = "([^"]+)"', text).group(1)
    assert data == f"/dev/{WKS[wks]}p4" and parts[3]["mountpoint"] == "/data"


def test_agent_recipe_passes_the_reboot_command_with_slots_only(tmp_path):
    """OTA_AGENT_REBOOT_COMMAND (default "reboot") reaches ota-build agent-config only for the A/B
    installers (the command installer's program reboots itself), and is in do_compile's signature."""
    bb = bitbake_lib("scarthgap")
    tree = release_tree("scarthgap")
    recipe = LAYER / "recipes-ota" / "ota-agent" / "ota-agent_1.0.bb"
    d = bitbake_datastore(bb, tree, recipe, TOPDIR=tmp_path, TMPDIR=tmp_path / "tmp")
    assert d.getVar("OTA_AGENT_REBOOT_COMMAND") == "reboot"
    assert "--reboot-command" not in d.getVar("do_compile")
    d.setVar("OTA_AGENT_SLOTS", "a=/dev/mmcblk0p2 b=/dev/mmcblk0p3")
    assert '--reboot-command "reboot"' in d.getVar("do_compile")
    d.setVar("OTA_AGENT_REBOOT_COMMAND", "systemctl reboot")
    assert '--reboot-command "systemctl reboot"' in d.getVar("do_compile")
    d.setVar("OTA_AGENT_REBOOT_COMMAND", "")
    assert "--reboot-command" not in d.getVar("do_compile")
    assert "OTA_AGENT_REBOOT_COMMAND" in d.getVarFlag("do_compile", "vardeps").split()


@pytest.mark.parametrize("slots, device", [("a=/dev/mmcblk0p2 b=/dev/mmcblk0p3", "/dev/mmcblk0p1"),
                                           ("a=/dev/mmcblk1p2 b=/dev/mmcblk1p3", "/dev/mmcblk1p1"),
                                           ("a=/dev/sda2 b=/dev/sda3", "/dev/sda1"), ("", "")])
def test_ab_images_mount_the_boot_partition_from_their_own_fstab(tmp_path, slots, device):
    """Expanded by a real BitBake datastore: with OTA_AGENT_SLOTS the image's rootfs post-process adds
    the boot partition (partition 1 of the slots' disk) to /etc/fstab; without slots, nothing."""
    bb = bitbake_lib("scarthgap")
    tree = release_tree("scarthgap")
    d = bitbake_datastore(bb, tree, LAYER / "classes" / "ota-image.bbclass", TOPDIR=tmp_path, TMPDIR=tmp_path / "tmp",
                          OTA_AGENT_SLOTS=slots, IMAGE_FSTYPES="tar.gz hub_update.bin")
    assert d.getVar("OTA_FSTAB_BOOT_DEVICE") == device
    assert ("ota_rootfs_fstab;" in (d.getVar("ROOTFS_POSTPROCESS_COMMAND") or "")) == bool(slots)
    d.setVar("IMAGE_FSTYPES", "tar.gz")                        # not an OTA image: its rootfs is left alone
    d.setVar("OTA_AUTO_FSTYPES", "")
    assert "ota_rootfs_fstab" not in (d.getVar("ROOTFS_POSTPROCESS_COMMAND") or "")


def test_ab_agent_keeps_identity_and_state_where_both_slots_mount_them(tmp_path):
    """An update writes a rootfs without the device's provisioned id and token: with slots and a data
    partition the agent's configuration names that partition for them and for the state."""
    bb = bitbake_lib("scarthgap")
    tree = release_tree("scarthgap")
    recipe = LAYER / "recipes-ota" / "ota-agent" / "ota-agent_1.0.bb"
    d = bitbake_datastore(bb, tree, recipe, TOPDIR=tmp_path, TMPDIR=tmp_path / "tmp", localstatedir="/var",
                          sysconfdir="/etc")
    assert (d.getVar("OTA_AGENT_STATE_DIR"), d.getVar("OTA_AGENT_DEVICE_DIR")) == ("/var/lib/ota-agent", "/etc/ota")
    d.setVar("OTA_AGENT_SLOTS", "a=/dev/mmcblk0p2 b=/dev/mmcblk0p3")
    d.setVar("OTA_FSTAB_DATA_DEVICE", "/dev/mmcblk0p4")
    assert (d.getVar("OTA_AGENT_STATE_DIR"), d.getVar("OTA_AGENT_DEVICE_DIR")) == ("/data/ota-agent", "/data/ota")
    assert '--state-dir "/data/ota-agent" --device-dir "/data/ota"' in d.getVar("do_compile")
    assert {"OTA_AGENT_STATE_DIR", "OTA_AGENT_DEVICE_DIR"} <= set(d.getVarFlag("do_compile", "vardeps").split())
