"""The kas project files (kas/): structure, releases, machines, and what CI passes in.

Offline and cheap: each machine file is loaded with its includes merged as kas merges them
(depth-first, later files win, dictionaries merged key by key). The layers and machines of the
oe-core/poky repositories are looked up in the release trees of tests/yocto.py when they are there.
The real BSP parse (kas with meta-atmel and meta-openembedded) needs the network: docs/layer.md,
"kas project files".
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict

import pytest

from .yocto import ROOT, RELEASES, release_tree

yaml = pytest.importorskip("yaml")

KAS = ROOT / "kas"
# machine -> releases a file must exist for (meta-atmel's newest branch is kirkstone)
MACHINES = {
    "qemux86-64": RELEASES,
    "beaglebone-yocto": RELEASES,
    "sama5d2-xplained-sd": ("kirkstone",),
}
SECRETS = ("OTA_KEY_PASSWORD", "OTA_USERNAME", "OTA_USERPW", "OTA_AUTH_STRING")
# the layers of each upstream repository, and the BitBake branch of each release
UPSTREAM_LAYERS = {
    "poky": {"meta", "meta-poky", "meta-yocto-bsp"},
    "openembedded-core": {"meta"},
    "meta-yocto": {"meta-poky", "meta-yocto-bsp"},
}
BITBAKE_BRANCH = {"kirkstone": "2.0", "scarthgap": "2.8", "wrynose": "2.18"}


def load(path: Path) -> Dict[str, Any]:
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict) and isinstance(doc.get("header"), dict), f"{path.name}: no header"
    return doc


def merge(base: Dict[str, Any], top: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def resolved(path: Path) -> Dict[str, Any]:
    """The configuration kas builds from ``path``: includes (relative to the repository root) first."""
    doc = load(path)
    result: Dict[str, Any] = {}
    for include in doc["header"].get("includes", []):
        assert isinstance(include, str), f"{path.name}: include {include!r} (only files of this repository)"
        assert (ROOT / include).is_file(), f"{path.name}: include {include} not found"
        result = merge(result, resolved(ROOT / include))
    return merge(result, {k: v for k, v in doc.items() if k != "header"})


def machine_files():
    return sorted(p for p in KAS.glob("*.yml") if re.fullmatch(r"[a-z0-9-]+-(kirkstone|scarthgap|wrynose)\.yml", p.name)
                  and p.stem.rsplit("-", 1)[0] in MACHINES)


def test_every_machine_has_a_file_per_supported_release():
    names = {p.name for p in machine_files()}
    expected = {f"{machine}-{release}.yml" for machine, releases in MACHINES.items() for release in releases}
    assert names == expected
    assert set(p.name for p in KAS.glob("*.yml")) == expected | {"common.yml"} | {f"{r}.yml" for r in RELEASES}


@pytest.mark.parametrize("path", machine_files(), ids=lambda p: p.stem)
def test_machine_file(path: Path):
    machine, release = path.stem.rsplit("-", 1)
    for part in [path] + [ROOT / i for i in load(path)["header"].get("includes", [])]:
        version = load(part)["header"]["version"]
        assert isinstance(version, int) and version >= 14, f"{part.name}: header version {version} (branch: needs 14)"
    cfg = resolved(path)
    assert cfg["machine"] == machine
    assert cfg["distro"] == "poky" and cfg["target"] == "core-image-minimal"
    assert 'INHERIT += "ota"' in "\n".join(cfg["local_conf_header"].values())
    # CI passes these in; secrets never (a passthrough variable is a BitBake variable: event log, bitbake -e)
    env = cfg["env"]
    assert env["BUILD_NUMBER"] == "0" and env["OTA_UPLOAD"] == "0"
    assert "OTA_SIGNING_KEY" in env and env["OTA_SIGNING_KEY"] is None
    assert not set(SECRETS) & set(env), set(SECRETS) & set(env)

    repos = cfg["repos"]
    assert repos["meta-ota"] == {"layers": {"meta-ota": None}}        # this repository, its meta-ota/
    assert (ROOT / "meta-ota" / "conf" / "layer.conf").is_file()
    upstream = {name: repo for name, repo in repos.items() if name != "meta-ota"}
    for name, repo in upstream.items():
        assert repo["url"].startswith("https://"), name
        assert re.fullmatch(r"[0-9a-f]{40}", repo["commit"]), f"{name}: commit {repo.get('commit')!r}"
        assert repo["branch"] == (BITBAKE_BRANCH[release] if name == "bitbake" else release), f"{name}: {repo['branch']}"
    core = "poky" if release in ("kirkstone", "scarthgap") else "openembedded-core"
    assert core in upstream and ("bitbake" in upstream) == (core == "openembedded-core")
    layers = {name: {k for k, v in (repo.get("layers") or {}).items() if v != "disabled"} for name, repo in upstream.items()}
    for name, expected in UPSTREAM_LAYERS.items():
        if name in layers:
            assert layers[name] == expected, name
    if machine == "sama5d2-xplained-sd":
        assert "github.com/linux4sam/meta-atmel" in upstream["meta-atmel"]["url"] and layers["meta-atmel"] == set()
        assert layers["meta-openembedded"] == {"meta-oe", "meta-python", "meta-networking"}
        assert 'BBMASK += "meta-atmel/recipes-security/optee/"' in cfg["local_conf_header"]["meta-atmel"]
    else:
        assert set(upstream) <= {"poky", "bitbake", "openembedded-core", "meta-yocto"}


@pytest.mark.parametrize("path", [p for p in machine_files() if not p.name.startswith("sama5d2")], ids=lambda p: p.stem)
def test_layers_and_machine_exist_in_the_release_tree(path: Path):
    """The oe-core/poky layers a file lists, and its machine, are in the release tree it names
    (tests/yocto.py's trees are those commits: kas/<release>.yml pins them)."""
    machine, release = path.stem.rsplit("-", 1)
    tree = release_tree(release)
    cfg = resolved(path)
    found = []
    for name in ("poky", "openembedded-core", "meta-yocto"):
        for layer in (cfg["repos"].get(name) or {}).get("layers", {}):
            assert (tree / layer / "conf" / "layer.conf").is_file(), f"{name}: {layer} not in {tree}"
            found.append(tree / layer)
    assert any((layer / "conf" / "machine" / f"{machine}.conf").is_file() for layer in found), machine
    if release == "wrynose":
        assert (tree / "bitbake" / "bin" / "bitbake").is_file()


def kas_build_module():
    import importlib.machinery
    import importlib.util
    loader = importlib.machinery.SourceFileLoader("kas_build", str(ROOT / "ci" / "kas-build"))
    spec = importlib.util.spec_from_loader("kas_build", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_kas_build_hands_the_secrets_to_the_shell_on_stdin():
    """ci/kas-build's export lines, read by a real sh as kas shell's -c command reads them, give back
    each secret byte for byte (quotes, $, newlines), and only the secrets that are set."""
    import subprocess
    module = kas_build_module()
    secrets = {"OTA_KEY_PASSWORD": "p'w $HOME \"x\" `id` \\ end\nline2", "OTA_USERNAME": "ci@example.com", "OTA_USERPW": ""}
    text = module.exports({**secrets, "OTHER": "not a secret"})
    assert "OTHER" not in text and "OTA_USERPW" not in text and "OTA_AUTH_STRING" not in text
    for name in ("OTA_KEY_PASSWORD", "OTA_USERNAME"):
        out = subprocess.run(["sh", "-c", f'eval "$(cat)" && printf %s "${name}"'], input=text, capture_output=True,
                             text=True, check=True, env={"PATH": "/usr/bin:/bin"}).stdout
        assert out == secrets[name]
    assert module.main([]) == 2
