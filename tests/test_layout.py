"""The package's layering rules, checked: import-linter's layers, no import cycle at all, no
jaxcls import inside a library function, no private name imported from another module, ruff."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "jaxcls"
# The entry layer may defer imports so that a bad input is reported before JAX loads.
ENTRY_MODULES = {"cli.py", "convert.py", "export.py", "__main__.py"}
ENTRY_PACKAGES = {"commands"}


def _tool(name: str) -> str:
    found = Path(sys.executable).with_name(name)
    return str(found) if found.exists() else (shutil.which(name) or pytest.skip(f"no {name}"))


def _library_modules() -> list[Path]:
    return sorted(
        p
        for p in PACKAGE.rglob("*.py")
        if p.name not in ENTRY_MODULES and p.relative_to(PACKAGE).parts[0] not in ENTRY_PACKAGES
    )


def test_import_linter_layers_are_kept():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [_tool("lint-imports")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_every_module_is_in_a_layer():
    """A new subpackage or top-level module must be placed in the layers contract."""
    text = (ROOT / "pyproject.toml").read_text()
    layers = text.split("[tool.importlinter]", 1)[1]
    tops = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in PACKAGE.iterdir()}
    tops -= {"__init__", "__main__", "__pycache__"}
    missing = sorted(name for name in tops if f'"jaxcls.{name}' not in layers
                     and f" jaxcls.{name}" not in layers)  # fmt: skip
    assert not missing, f"modules outside the layers contract: {missing}"


def _cycle(graph: grimp.ImportGraph) -> list[str] | None:
    """One import cycle among the modules of ``graph``, or None (iterative DFS)."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    for start in sorted(graph.modules):
        if state.get(start):
            continue
        stack = [(start, iter(sorted(graph.find_modules_directly_imported_by(start))))]
        path = [start]
        state[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(child) == 1:
                return path[path.index(child) :] + [child]
            elif not state.get(child):
                state[child] = 1
                path.append(child)
                stack.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
    return None


def test_no_import_cycle():
    sys.path.insert(0, str(ROOT))
    try:
        graph = grimp.build_graph("jaxcls")
    finally:
        sys.path.remove(str(ROOT))
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_cycle_finder_finds_a_cycle():
    graph = grimp.ImportGraph()
    for name in ("a", "b", "c"):
        graph.add_module(name)
    graph.add_import(importer="a", imported="b")
    graph.add_import(importer="b", imported="c")
    assert _cycle(graph) is None
    graph.add_import(importer="c", imported="a")
    assert _cycle(graph) == ["a", "b", "c", "a"]


def _function_imports(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for inner in ast.walk(node):
                if isinstance(inner, ast.ImportFrom) and (inner.module or "").startswith("jaxcls"):
                    found.append((inner.lineno, inner.module))
                elif isinstance(inner, ast.Import):
                    found += [
                        (inner.lineno, a.name) for a in inner.names if a.name.startswith("jaxcls")
                    ]
    return found


def test_no_jaxcls_import_inside_library_functions():
    offenders = []
    for path in _library_modules():
        for line, module in _function_imports(ast.parse(path.read_text())):
            offenders.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not offenders, "\n".join(offenders)


def test_no_private_name_imported_from_another_module():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("jaxcls"):
                private = [a.name for a in node.names if a.name.startswith("_")]
                offenders += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in private]
    assert not offenders, "\n".join(offenders)


def test_checks_catch_what_they_look_for():
    source = "def f():\n    from jaxcls.model import lora\n    import jaxcls.data\n"
    assert [m for _, m in _function_imports(ast.parse(source))] == ["jaxcls.model", "jaxcls.data"]


def test_ruff_is_clean():
    proc = subprocess.run(
        [_tool("ruff"), "check", "jaxcls", "tests", "benchmarks", "configs", "train.py",
         "eval.py", "predict.py"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:]


def jaxcls_modules_named_by(path: Path) -> set[str]:
    """The jaxcls modules a benchmark script or shell script imports (at any depth)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".py":
        names = set()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    else:
        names = set(re.findall(r"\bjaxcls(?:\.\w+)+", text))
    return {name for name in names if name.split(".")[0] == "jaxcls"}


def resolves(name: str) -> bool:
    """``name`` is an importable module, or a name defined in one (``jaxcls.x.function``)."""
    try:
        if importlib.util.find_spec(name) is not None:
            return True
    except ModuleNotFoundError:  # a parent of ``name`` is not a package
        pass
    parent, _, attr = name.rpartition(".")
    try:
        return bool(parent) and hasattr(importlib.import_module(parent), attr)
    except ModuleNotFoundError:
        return False


def test_benchmarks_import_modules_that_exist():
    """A module move leaves no benchmark importing the old path (benchmarks are mostly untested)."""
    scripts = [p for p in sorted((ROOT / "benchmarks").iterdir()) if p.suffix in (".py", ".sh")]
    missing = [
        f"{path.name}: {name}"
        for path in scripts
        for name in sorted(jaxcls_modules_named_by(path))
        if not resolves(name)
    ]
    assert not missing
    assert not resolves("jaxcls.steps") and resolves("jaxcls.train.steps.make_train_step")
