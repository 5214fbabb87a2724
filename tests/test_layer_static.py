"""meta-ota, checked without BitBake: layer.conf, lint, and the rules the classes keep.

Real-BitBake checks are in test_layer_poky.py (they need OTA_POKY_DIR).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import ota_build
from ota_build.core.config import load_config

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
    assert conf["LAYERSERIES_COMPAT_ota"].split() == ["kirkstone", "scarthgap", "walnascar"]
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
    """No OTA logic in the metadata: no signing, hashing or HTTP; every command is ota_build."""
    for path in CLASSES + RECIPES:
        text = path.read_text()
        for forbidden in ("import hashlib", "import requests", "import cryptography", "import jsonschema",
                          "openssl dgst", "openssl pkeyutl", "openssl genpkey", "json.dump", "urllib"):
            assert forbidden not in text, f"{path.name}: {forbidden}"
        if path.name != "ota-common.bbclass":
            assert "subprocess" not in text, f"{path.name}: run commands through ota_run()"
    common = (LAYER / "classes" / "ota-common.bbclass").read_text()
    assert common.count("subprocess.run(") == 1                       # in ota_run, which runs ota_build only
    assert '"-m", module]' in common


def test_every_ota_task_excludes_secrets_from_signatures():
    common = (LAYER / "classes" / "ota-common.bbclass").read_text()
    secret_list = assignments(LAYER / "classes" / "ota-common.bbclass")["OTA_SECRET_ENV_VARS"].split()
    assert set(SECRETS) <= set(secret_list)
    assert 'ota_secret_env[vardepsexclude] = "BB_ORIGENV ${OTA_SECRET_ENV_VARS}"' in common
    assert 'ota_run[vardepsexclude] = "${OTA_SECRET_ENV_VARS}"' in common
    for path in CLASSES + RECIPES:
        text = path.read_text()
        for task in re.findall(r"^python (do_[a-z_]+)\(\)", text, re.M):
            if task.endswith("_setscene"):
                continue
            assert re.search(rf"^{task}\[vardepsexclude\] \+= \".*\$\{{OTA_SECRET_ENV_VARS\}}.*BB_ORIGENV", text, re.M), \
                f"{path.name}: {task} must vardepsexclude the secrets"
        for secret in SECRETS:
            # never exported (it would be written into the task's run script) nor read by name
            assert not re.search(rf"^export {secret}|getVar\([\"']{secret}", text, re.M), f"{path.name}: {secret}"


def test_key_config_and_record_changes_rerun_the_ota_tasks():
    common = assignments(LAYER / "classes" / "ota-common.bbclass")
    for name in ("OTA_CONFIG", "OTA_SIGNING_KEY_FILE", "OTA_PUBLIC_KEY_FILE", "OTA_RECORD_PREMADE"):
        assert name in common["OTA_FILE_CHECKSUMS"]
    for name in ("OTA_BUILD_NUMBER", "OTA_DEBUG", "OTA_VERSION_NUMBER", "OTA_TYPE"):
        assert name in common["OTA_VALUE_VARS"].split()
    record = (LAYER / "recipes-ota" / "ota-record" / "ota-record_1.0.bb").read_text()
    assert 'do_compile[file-checksums] += "${OTA_FILE_CHECKSUMS}"' in record
    assert 'do_compile[vardeps] += "${OTA_VALUE_VARS}' in record
    image = (LAYER / "classes" / "ota-image.bbclass").read_text()
    assert 'do_ota_package[file-checksums] += "${OTA_SIGNING_KEY_FILE}:False"' in image
    # a build number from the environment is a value: it must reach the signature
    assert 'OTA_BUILD_NUMBER[vardepvalue] = "${OTA_BUILD_NUMBER}"' in (LAYER / "classes" / "ota-common.bbclass").read_text()


def test_build_path_needs_no_toolchain():
    """ota-build-native is copied, not built, and nothing on the build path pulls rust-native."""
    native = next(LAYER.glob("recipes-ota/ota-build/ota-build-native_*.bb"))
    assert native.name == f"ota-build-native_{ota_build.__version__}.bb"
    heavy = ("python3-cryptography-native", "python3-jsonschema-native", "python3-requests-native",
             "rust-native", "cargo-native", "setuptools3", "python_pep517")
    for path in [native, LAYER / "recipes-ota" / "ota-record" / "ota-record_1.0.bb"]:
        for name in heavy:
            assert name not in path.read_text(), f"{path.name}: {name}"
    image = (LAYER / "classes" / "ota-image.bbclass").read_text()
    # requests-native only for the upload task, and only when OTA_UPLOAD = "1"
    assert image.count("python3-requests-native") == 1
    assert 'OTA_UPLOAD_NATIVE_DEPENDS ??= "python3-requests-native:do_populate_sysroot"' in image
    assert 'd.appendVarFlag("do_ota_upload", "depends"' in image


def test_default_config_is_valid():
    cfg = load_config(str(LAYER / "files" / "partner-ota-conf.json"), env={})
    assert cfg.image_file == "hub_update.bin" and cfg.ota_type == 5
    assert not any((cfg.credentials.username, cfg.credentials.password, cfg.credentials.auth_string))


def test_readme_documents_every_setting():
    readme = (ROOT / "README.md").read_text()
    settings = [m.group(1) for m in re.finditer(r"^(OTA_[A-Z_]+) \?\?=", (LAYER / "classes" / "ota-common.bbclass")
                                                .read_text(), re.M)]
    settings.append("OTA_UPLOAD_NATIVE_DEPENDS")
    assert len(settings) > 10
    for name in settings:
        assert f"`{name}`" in readme, f"README does not document {name}"
    assert "OTA_POKY_DIR" in readme
