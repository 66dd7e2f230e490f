"""Who may import whom (docs/architecture.md, "Packages and who may import whom"), kept by parsing
every module's imports (ast, lazy ones inside functions included), not just written down.

- No device package (gpu_worker, fpga_worker, the toy decoder tests/toy_decoder) imports another.
- The layers below the devices import only downward: services <- kv_plane <- decode_contract.
- No import cycle between packages, nor between modules.
- No test file imports another test file (shared test code lives in helper modules).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("glitches.services", "glitches.kv_plane", "glitches.decode_contract", "glitches.gpu_worker",
            "glitches.fpga_worker", "tests.toy_decoder", "glitches.scheduler", "glitches.sim", "glitches")
DEVICES = ("glitches.gpu_worker", "glitches.fpga_worker", "tests.toy_decoder")
# what each package below the devices may import of the project's (itself aside)
BELOW_DEVICES = {"glitches.services": set(), "glitches.kv_plane": {"glitches.services"},
                 "glitches.decode_contract": {"glitches.services", "glitches.kv_plane"}}


def _module_name(path: Path) -> str:
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    return name.removesuffix(".__init__")


def _modules() -> dict[str, Path]:
    """Every project module, by dotted name; generated stubs and the toy decoder's own test are left out."""
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package.replace(".", "/")).rglob("*.py"):
            if "stubs" in path.parts or path.name.startswith("test_"):
                continue
            found[_module_name(path)] = path
    return found


def _package(module: str) -> str:
    return next(p for p in sorted(PACKAGES, key=len, reverse=True) if module == p or module.startswith(p + "."))


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules `path` imports; `from pkg import sub` counts as importing pkg.sub when sub is a module."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            submodules = {f"{node.module}.{alias.name}" for alias in node.names} & modules.keys()
            found |= submodules or {node.module}
    return {name for name in found if name in modules}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def _package_edges(graph: dict[str, set[str]]) -> dict[str, set[tuple[str, str]]]:
    """(importer package, imported package) -> the module pairs behind it."""
    edges: dict = {}
    for module, imported in graph.items():
        for other in imported:
            if _package(other) != _package(module):
                edges.setdefault((_package(module), _package(other)), set()).add((module, other))
    return edges


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_device_package_imports_another(graph):
    edges = _package_edges(graph)
    bad = {pair: sorted(mods) for pair, mods in edges.items() if pair[0] in DEVICES and pair[1] in DEVICES}
    assert not bad, f"a device package imports another (move the shared part to glitches/kv_plane/decode_contract): {bad}"


def test_the_toy_decoder_needs_no_fpga_or_gpu_worker(graph):
    used = {_package(o) for m, imported in graph.items() if _package(m) == "tests.toy_decoder" for o in imported}
    assert not used & {"glitches.fpga_worker", "glitches.gpu_worker"}, used


def test_the_layers_below_the_devices_import_only_downward(graph):
    edges = _package_edges(graph)
    bad = {pair: sorted(mods) for pair, mods in edges.items()
           if pair[0] in BELOW_DEVICES and pair[1] not in BELOW_DEVICES[pair[0]]}
    assert not bad, f"an upward import: {bad}"


def test_no_import_cycle_between_packages(graph):
    packages = {}
    for importer, imported in _package_edges(graph):
        packages.setdefault(importer, set()).add(imported)
    assert _cycles(packages) == []


def test_no_import_cycle_between_modules(graph):
    assert _cycles(graph) == []


def test_the_rules_see_real_imports(graph):
    """The parser finds what is there (a rule over an empty graph would pass vacuously)."""
    assert "glitches.kv_plane.kv_layout" in graph["glitches.decode_contract.emu_kv"]
    assert "glitches.decode_contract.kv_receiver" in graph["tests.toy_decoder.servicer"]
    assert ("glitches.fpga_worker", "glitches.decode_contract") in _package_edges(graph)
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


def test_no_test_file_imports_another_test_file():
    """Shared test code lives in helper modules (tests/worker_helpers.py, tests/gateway_helpers.py,
    tests/e2e/conftest.py, ...), never in another test file: importing one runs its module-level setup and
    couples two tests' private names."""
    offenders = []
    for path in (ROOT / "tests").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            offenders += [f"{path.relative_to(ROOT)}: {name}" for name in names
                          if name.startswith("tests.") and name.rsplit(".", 1)[-1].startswith("test_")]
    assert not offenders, offenders
