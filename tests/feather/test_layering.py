"""The package's import structure, read with ``ast`` (nothing imported):

- no import cycle among the modules of src/feather, counting what Python runs at import time:
  the module-level imports (in ``if`` / ``try`` / class bodies too, not in functions, not under
  ``TYPE_CHECKING``) and the package ``__init__`` each import runs first;
- the core (modules directly in src/feather/, and manifest/, hf/, reference/, grounding/) imports
  nothing from the wings (export, runtime, serve, eval, calibration, bench, build), at module
  level or inside a function.

Both scans are shown to catch a planted case in a temporary tree.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "src"
WINGS = ("export", "runtime", "serve", "eval", "calibration", "bench", "build")
CORE_PACKAGES = ("manifest", "hf", "reference", "grounding")


def _modules(root: Path) -> dict[str, tuple[Path, bool]]:
    """Dotted name -> (file, is a package) for every module under ``root/feather``."""
    out = {}
    for path in sorted((root / "feather").rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if package else parts)] = (path, package)
    return out


def _at_import_time(body: list[ast.stmt]):
    """The import statements Python runs when the module is imported."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            if not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
                yield from _at_import_time(node.body)
            yield from _at_import_time(node.orelse)
        elif isinstance(node, (ast.Try, ast.With, ast.ClassDef)):
            for block in ("body", "orelse", "finalbody"):
                yield from _at_import_time(getattr(node, block, []))
            for handler in getattr(node, "handlers", []):
                yield from _at_import_time(handler.body)


def _targets(node, name: str, package: bool, modules) -> list[str]:
    """The package modules one import statement names (``from P import m``: the module P.m when
    m is one, else P itself)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:  # relative: from the importer's package
        anchor = name.split(".") if package else name.split(".")[:-1]
        base = ".".join(anchor[: len(anchor) - node.level + 1] + ([base] if base else []))
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]


def _edges(name: str, package: bool, targets: list[str], modules) -> set[str]:
    """The modules an import of ``targets`` runs: each target and, before it, every package above it
    that is not already being imported around ``name``."""
    mine = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 2)} if package else {
        ".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
    out = set()
    for target in targets:
        parts = target.split(".")
        for i in range(1, len(parts) + 1):
            mod = ".".join(parts[:i])
            if mod in modules and (mod == target or mod not in mine) and mod != name:
                out.add(mod)
    return out


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package modules importing it runs (module-level imports only)."""
    modules = _modules(root)
    graph = {}
    for name, (path, package) in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        targets = [t for node in _at_import_time(tree.body) for t in _targets(node, name, package, modules)]
        graph[name] = _edges(name, package, targets, modules)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as err:
        return err.args[1]
    return None


def test_the_package_has_no_import_cycle():
    graph = import_graph(ROOT)
    assert len(graph) > 80 and "feather.manifest.schema" in graph["feather.manifest.checks"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_the_cycle_scan_catches_a_planted_cycle(tmp_path):
    base = {"feather/__init__.py": "", "feather/a.py": "from feather.pkg.b import X\n",
            "feather/pkg/b.py": "X = 1\n", "feather/c.py": "def f():\n    from feather import a\n"}
    assert find_cycle(import_graph(_write(tmp_path / "ok", {**base, "feather/pkg/__init__.py": ""}))) is None
    # through a package __init__: importing pkg.b runs pkg/__init__.py first, which imports a
    planted = _write(tmp_path / "bad", {**base, "feather/pkg/__init__.py": "from feather import a\n"})
    assert set(find_cycle(import_graph(planted))) == {"feather.a", "feather.pkg"}
    # a module-level import in a try block counts; the lazy one in c.f does not
    lazy = _write(tmp_path / "lazy", {**base, "feather/pkg/__init__.py": "", "feather/pkg/b.py":
                                      "try:\n    from feather.c import f\nexcept ImportError:\n    pass\n"})
    assert find_cycle(import_graph(lazy)) is None
    looped = _write(tmp_path / "loop", {**base, "feather/pkg/__init__.py": "", "feather/pkg/b.py":
                                        "try:\n    from feather.a import Y\nexcept ImportError:\n    pass\n"})
    assert set(find_cycle(import_graph(looped))) == {"feather.a", "feather.pkg.b"}


def _core_reaches_wings(root: Path) -> list[str]:
    """'file:line imports feather.<wing>...' for every import, at any depth, from a core module."""
    bad, modules = [], _modules(root)
    for path in sorted((root / "feather").rglob("*.py")):
        parts = path.relative_to(root / "feather").parts
        if len(parts) > 1 and parts[0] not in CORE_PACKAGES:
            continue
        name = ".".join(["feather", *Path(*parts).with_suffix("").parts]).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _targets(node, name, path.name == "__init__.py", modules):
                    if target.split(".")[:2] in [["feather", wing] for wing in WINGS]:
                        bad.append(f"{path.relative_to(root)}:{node.lineno} imports {target}")
    return bad


def test_the_core_imports_nothing_from_the_wings():
    bad = _core_reaches_wings(ROOT)
    assert not bad, "\n".join(bad)


def test_the_wing_scan_catches_an_import_in_a_function(tmp_path):
    root = _write(tmp_path, {"feather/__init__.py": "", "feather/runtime/__init__.py": "",
                             "feather/manifest/__init__.py": "",
                             "feather/manifest/x.py": "def f():\n    from feather.runtime import y\n",
                             "feather/z.py": "import feather.export.api\n",
                             "feather/runtime/ok.py": "from feather.manifest import x\n"})
    assert _core_reaches_wings(root) == ["feather/manifest/x.py:2 imports feather.runtime",
                                         "feather/z.py:1 imports feather.export.api"]
