"""The packages depend on each other one way only, and the policy package never on the drivers.

A GPU inference machine runs the policy node or the remote server with ``molmoact2_policy`` and
``molmoact2_common`` alone: neither the driver package (CAN, serial, robot SDKs) nor the bringup.
Checked three ways: what each package.xml declares, every import statement in the sources
(including the lazy ones inside functions, which importing a module does not run), and importing
every module of the policy package in a fresh interpreter where the other packages cannot be
imported at all. Import cycles inside a package are refused too: they make the import order
matter and hide which module is the base.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src"

#: Which suite packages each Python package may import (its own name aside).
ALLOWED = {
    "molmoact2_common": set(),
    "molmoact2_policy": {"molmoact2_common", "molmoact2_msgs"},
    "hw_drivers": {"molmoact2_common", "molmoact2_msgs"},
    "molmoact2": {"molmoact2_common", "molmoact2_msgs", "molmoact2_policy", "hw_drivers"},
}
SUITE = set(ALLOWED) | {"molmoact2_msgs"}


def _top_level(name: str) -> str:
    return name.split(".", 1)[0]


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in ``path``, at any depth of the code (a lazy
    import inside a function, or one behind ``except ImportError``, is a dependency too)."""
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [(node.lineno, name) for name in names]
    return found


def _sources(package: str) -> list[Path]:
    return sorted((SRC / package / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_xml_declares_only_the_allowed_suite_packages(package):
    root = ET.parse(SRC / package / "package.xml").getroot()
    suite_deps = {e.text for e in root if e.tag.endswith("depend") and e.text in SUITE}
    assert suite_deps <= ALLOWED[package], (
        f"{package}/package.xml names {sorted(suite_deps - ALLOWED[package])}"
    )


def test_the_policy_package_xml_names_neither_drivers_nor_bringup():
    text = (SRC / "molmoact2_policy" / "package.xml").read_text()
    assert "hw_drivers" not in text
    root = ET.parse(SRC / "molmoact2_policy" / "package.xml").getroot()
    assert "molmoact2_common" in {e.text for e in root.iter("exec_depend")}


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_sources_import_only_the_allowed_suite_packages(package):
    bad = [
        f"{path.relative_to(REPO)}:{line}: {module}"
        for path in _sources(package)
        for line, module in _imports(path)
        if _top_level(module) in SUITE - {package} - ALLOWED[package]
    ]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_every_suite_package_a_source_imports_is_declared_in_package_xml(package):
    root = ET.parse(SRC / package / "package.xml").getroot()
    declared = {e.text for e in root if e.tag.endswith("depend")}
    imported = {
        _top_level(module)
        for path in _sources(package)
        for _, module in _imports(path)
        if _top_level(module) in SUITE - {package}
    }
    undeclared = imported - declared
    assert not undeclared, f"{package} imports {sorted(undeclared)} without an exec_depend"


def test_the_policy_package_does_not_even_mention_the_driver_package():
    """Docstrings included: a reader must not be sent to hw_drivers for the policy's helpers."""
    mentions = [
        str(path.relative_to(REPO))
        for path in _sources("molmoact2_policy")
        if "hw_drivers" in path.read_text()
    ]
    assert not mentions


def _module_name(path: Path, package: str) -> str:
    parts = list(path.relative_to(SRC / package).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a path that starts and ends at the same module."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for dep in sorted(graph[module]):
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state and (found := visit(dep)):
                return found
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (found := visit(module)):
            return found
    return None


def test_cycle_finder_finds_a_lazy_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_no_import_cycles_inside_a_package(package):
    modules = {_module_name(path, package): path for path in _sources(package)}
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                # ``from pkg import module`` imports the submodule, not only the package.
                deps |= {
                    f"{node.module}.{alias.name}"
                    if f"{node.module}.{alias.name}" in modules
                    else node.module
                    for alias in node.names
                }
            elif isinstance(node, ast.Import):
                deps |= {alias.name for alias in node.names}
        # A package's __init__ is imported before its modules; that edge is no cycle.
        graph[name] = {d for d in deps if d in modules and d != name}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


BLOCKED_IMPORT = textwrap.dedent(
    """
    import importlib, importlib.abc, pkgutil, sys

    BLOCKED = ("hw_drivers", "molmoact2")  # the driver package and the bringup

    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".", 1)[0] in BLOCKED:
                raise ModuleNotFoundError(f"blocked for this test: {name}", name=name)
            return None

    sys.meta_path.insert(0, Refuse())
    for blocked in BLOCKED:
        try:
            importlib.import_module(blocked)
        except ModuleNotFoundError:
            pass
        else:
            raise SystemExit(f"the block does not work: {blocked} imported")

    import molmoact2_policy

    names = [m.name for m in pkgutil.walk_packages(molmoact2_policy.__path__, "molmoact2_policy.")]
    for name in names:
        importlib.import_module(name)
    print("imported", len(names))
    """
)


def test_every_policy_module_imports_without_the_drivers_and_the_bringup():
    result = subprocess.run(
        [sys.executable, "-c", BLOCKED_IMPORT],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    count = int(result.stdout.split("imported", 1)[1])
    # policy_node, depth_cache_node, remote.server, model.loader, ...: all of them, not a few.
    assert count == len(_sources("molmoact2_policy")) - 1  # the top-level __init__ is not listed
