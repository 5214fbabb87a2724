"""The house rules of docs/architecture.md, checked on the source itself.

- the import graph of ``ota_build`` (every import, also those inside
  functions) has no circle, module by module;
- imports run one way: cli -> partner/server/device -> core;
- the device side (what the ota-agent recipe installs) imports nothing of the
  build host, the partner client or the server, and runs without ``requests``;
- every part of the tree is on the architecture page, and the exit codes of
  docs/exit-codes.md are the library's one table.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set

from ota_build.core.errors import EXIT_CODES

REPO = Path(__file__).resolve().parent.parent
PKG = REPO / "ota_build"

#: part -> the parts it may import (besides itself)
ALLOWED = {
    "core": set(),
    "partner": {"core"},
    "server": {"core"},
    "device": {"core"},
    "cli": {"core", "partner", "server", "device"},
}


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> Dict[str, Path]:
    return {module_name(p): p for p in PKG.rglob("*.py") if "migrations" not in p.parts}


def imports_of(path: Path, modules: Dict[str, Path]) -> Set[str]:
    """ota_build modules imported anywhere in ``path`` (absolute or relative)."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: List[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        for name in names:
            while name and name not in modules:  # an attribute of a module: its module
                name = name.rpartition(".")[0]
            if name and name != me and name != "ota_build":
                found.add(name)
    return found


def graph() -> Dict[str, Set[str]]:
    modules = all_modules()
    return {name: imports_of(path, modules) for name, path in modules.items()}


def part_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_module_belongs_to_a_part() -> None:
    loose = [m for m in all_modules() if m != "ota_build" and part_of(m) not in ALLOWED]
    assert not loose, f"modules outside core/partner/server/device/cli: {loose}"


def test_imports_run_one_way() -> None:
    wrong = []
    for module, targets in graph().items():
        for target in targets:
            src, dst = part_of(module), part_of(target)
            if src != dst and dst not in ALLOWED[src]:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports against the layering (docs/architecture.md):\n" + "\n".join(sorted(wrong))


def test_no_import_circle() -> None:
    g = graph()
    state: Dict[str, int] = {}
    stack: List[str] = []
    cycles: List[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(g.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(g):
        if node not in state:
            visit(node)
    assert not cycles, "import circles:\n" + "\n".join(cycles)


def test_core_imports_only_the_standard_library_at_import_time() -> None:
    """core runs in BitBake's python3-native and on the device: third-party imports only inside functions."""
    third_party = {"requests", "urllib3", "fastapi", "starlette", "sqlalchemy", "alembic", "jinja2", "jsonschema",
                   "tqdm", "cryptography", "uvicorn", "pydantic"}
    wrong = []
    for path in list((PKG / "core").rglob("*.py")) + list((PKG / "device").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module level only
            if isinstance(node, ast.Import):
                wrong += [f"{path.name}: {a.name}" for a in node.names if a.name.split(".")[0] in third_party]
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in third_party:
                wrong.append(f"{path.name}: {node.module}")
    assert not wrong, wrong


def recipe_device_parts() -> List[str]:
    recipe = (REPO / "meta-ota/recipes-ota/ota-agent/ota-agent_1.0.bb").read_text()
    match = re.search(r'^OTA_DEVICE_PARTS = "([^"]*)"', recipe, re.M)
    assert match, "OTA_DEVICE_PARTS not set in the ota-agent recipe"
    return match.group(1).split()


def test_agent_recipe_installs_exactly_the_device_side() -> None:
    assert sorted(recipe_device_parts()) == ["core", "device"]
    recipe = (REPO / "meta-ota/recipes-ota/ota-agent/ota-agent_1.0.bb").read_text()
    install = recipe[recipe.index("do_install() {"):]
    assert "cp -R --no-preserve=ownership ${S}/ota_build ${D}" not in install


def test_device_side_runs_alone_without_requests(tmp_path: Path) -> None:
    """Copy what the recipe installs; the agent imports and answers --help with requests & co. unimportable."""
    site = tmp_path / "site"
    (site / "ota_build").mkdir(parents=True)
    shutil.copy(PKG / "__init__.py", site / "ota_build")
    for part in recipe_device_parts():
        shutil.copytree(PKG / part, site / "ota_build" / part, ignore=shutil.ignore_patterns("__pycache__"))
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'requests', 'urllib3', 'fastapi', 'sqlalchemy', 'tqdm', 'jsonschema'}:\n"
        "            raise ImportError('not on the device: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n")
    modules = sorted(m for m in all_modules() if part_of(m) in recipe_device_parts())
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "bad = [m for m in sys.modules if m.split('.')[0] == 'ota_build' and len(m.split('.')) > 1 "
            f"and m.split('.')[1] not in {recipe_device_parts()!r}]\n"
            "assert not bad, bad\n"
            "from ota_build.device.cli import main\n"
            "sys.argv = ['ota-agent', '--help']\n"
            "main()\n")
    code = f"import ota_build; assert ota_build.__file__.startswith({str(site)!r}), ota_build.__file__\n" + code
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": f"{blocker}:{site}", "PYTHONNOUSERSITE": "1"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "usage: ota-agent" in proc.stdout


def test_architecture_page_names_every_part() -> None:
    page = (REPO / "docs/architecture.md").read_text()
    for part in ALLOWED:
        assert re.search(rf"^  {part}/ ", page, re.M), f"docs/architecture.md: no {part}/ in the tree"
    for path in sorted(PKG.rglob("*.py")):
        if "migrations" in path.parts or path.name in ("__init__.py", "__main__.py"):
            continue
        rel = path.relative_to(PKG).as_posix()
        assert path.stem in page, f"docs/architecture.md does not mention {rel}"


def test_exit_codes_page_matches_the_table() -> None:
    page = (REPO / "docs/exit-codes.md").read_text()
    documented = {int(m.group(1)) for m in re.finditer(r"^\|\s*`?(\d+)`?\s*\|", page, re.M)}
    assert documented == set(EXIT_CODES), (documented, set(EXIT_CODES))
