"""The package's floors, read from its source (``ast``): which layer may import which, and no import cycles.

Floors, bottom to top (README "Where things live"):

* **core**: masks, anchors, policies, cache, generation, models, config, ... — every module not named below. It
  imports only the core (and third-party libraries other than gradio and plotly).
* **library layers**: ``anllm.evaluation``, ``anllm.train``, ``anllm.bench``, ``anllm.ablations``,
  ``anllm.attention_maps``, ``anllm.explorer``, ``anllm.plots``. They import the core and each other, never the
  CLI (``anllm.commands``, ``anllm.cli``) or the app (``anllm.ui``).
* **outer layers**: ``anllm.ui`` (the Gradio app), ``anllm.serving`` (the vLLM plugin) and the CLI. Neither the app
  nor the plugin imports the CLI; the CLI may start the app and export for the plugin.

Figures are made in ``anllm.plots`` only (the one module that imports plotly); gradio is imported only in
``anllm.ui``, vllm only in ``anllm.serving``. A new module is core unless it is added to a layer here, so it
starts on the strictest floor.

The cache owns its state: no module but ``anllm.cache`` touches a private attribute of ``PolicyCache`` or assigns
one of its state fields (the metadata and counters).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import anllm

pytestmark = pytest.mark.core

PACKAGE = Path(anllm.__file__).resolve().parent
LIBRARY = ("anllm.evaluation", "anllm.train", "anllm.bench", "anllm.ablations", "anllm.attention_maps")
LIBRARY += ("anllm.explorer", "anllm.plots")
CLI = ("anllm.commands", "anllm.cli", "anllm.__main__")
UI = ("anllm.ui",)
SERVING = ("anllm.serving",)  # the vLLM plugin (docs/serving.md): an outer layer, the only place vllm is imported
# call-time imports that close a cycle, each with its reason; module-level cycles are never allowed
LAZY_CYCLE_EDGES: set[tuple[str, str]] = set()


def _in(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def layer(module: str) -> str:
    if _in(module, CLI):
        return "cli"
    if _in(module, UI):
        return "ui"
    if _in(module, SERVING):
        return "serving"
    return "library" if _in(module, LIBRARY) else "core"


def _module_names() -> dict[str, Path]:
    names = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ("anllm", *path.relative_to(PACKAGE).with_suffix("").parts)
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


MODULES = _module_names()


def _imports(module: str, path: Path) -> list[tuple[str, bool]]:
    """``(imported name, at module level)`` for every import in ``module``: ``from p import x`` names ``p.x``
    when that is a module of the package, else ``p``; relative imports are resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    top = {id(node) for node in tree.body}
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((sub if sub in MODULES else base, id(node) in top))
    return found


# module -> [(imported module, at module level)], every import, lazy ones (inside functions) included
GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def _root(name: str) -> str:
    return name.split(".")[0]


def test_the_walk_sees_the_package():
    assert {"anllm.cache", "anllm.ui.runtime", "anllm.train.loop", "anllm.commands.app"} <= set(MODULES)
    assert ("anllm.train.config", True) in GRAPH["anllm.train.loop"]
    assert ("anllm.train.checkpoint", False) in GRAPH["anllm.train.loop"]  # `from anllm.train import checkpoint`
    assert layer("anllm.masks") == "core" and layer("anllm.train.data") == "library" and layer("anllm.ui") == "ui"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if layer(m) == "core"))
def test_core_imports_only_the_core(module):
    bad = sorted({n for n, _ in GRAPH[module] if _root(n) == "anllm" and layer(n) != "core"})
    bad += sorted({n for n, _ in GRAPH[module] if _root(n) in ("gradio", "plotly", "vllm")})
    assert not bad, f"core module {module} imports {bad}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if layer(m) == "library"))
def test_library_layers_import_neither_cli_nor_ui(module):
    bad = sorted({n for n, _ in GRAPH[module] if _in(n, CLI + UI + SERVING) or _root(n) in ("gradio", "vllm")})
    assert not bad, f"library module {module} imports {bad}"


def test_the_serving_plugin_imports_neither_cli_nor_app_and_only_it_imports_vllm():
    bad = {(m, n) for m in MODULES if layer(m) == "serving" for n, _ in GRAPH[m] if _in(n, CLI + UI)}
    assert not bad, bad
    vllm = sorted({m for m in MODULES for n, _ in GRAPH[m] if _root(n) == "vllm"})
    assert vllm and all(layer(m) == "serving" for m in vllm), vllm


def test_the_app_does_not_import_the_cli():
    bad = {(m, n) for m in MODULES if layer(m) == "ui" for n, _ in GRAPH[m] if _in(n, CLI)}
    assert not bad, bad


def test_figures_only_in_plots_and_gradio_only_in_the_app():
    plotly = sorted(m for m in MODULES for n, _ in GRAPH[m] if _root(n) == "plotly")
    gradio = sorted({m for m in MODULES for n, _ in GRAPH[m] if _root(n) == "gradio"})
    assert set(plotly) == {"anllm.plots"}, plotly
    assert all(layer(m) == "ui" for m in gradio), gradio


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("lazy", [False, True], ids=["module-level", "with-lazy-imports"])
def test_no_import_cycles(lazy):
    edges = {m: {n for n, top in deps if n in MODULES and n != m and (top or lazy)} for m, deps in GRAPH.items()}
    for a, b in LAZY_CYCLE_EDGES:
        assert (b, False) in GRAPH[a] and (b, True) not in GRAPH[a], f"{a} -> {b} is no longer a lazy import"
        edges[a].discard(b)
    assert _cycles(edges) == []


@pytest.mark.parametrize(
    "statement, absent",
    [
        ("import anllm, anllm.cache, anllm.generation", ("gradio", "plotly")),
        ("import anllm.evaluation, anllm.train, anllm.bench, anllm.ablations, anllm.explorer", ("gradio", "plotly")),
        ("import anllm.cli; anllm.cli.build_parser()", ("gradio", "plotly")),
        ("import anllm.ui.runtime, anllm.ui.render", ("gradio",)),
    ],
)
def test_importing_leaves_out_the_optional_packages(statement, absent):
    code = f"{statement}\nimport sys\nprint(sorted(m for m in {absent!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr


# -- the cache owns its state ------------------------------------------------------------------------------------
def _policy_cache_names() -> tuple[set[str], set[str]]:
    """(private attribute names ``PolicyCache`` defines, public names of its state) read from anllm/cache.py."""
    tree = ast.parse(MODULES["anllm.cache"].read_text(encoding="utf-8"))
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    private = set()
    for node in ast.walk(classes["PolicyCache"]):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("_"):
            private.add(node.name)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
            private |= {node.attr} if node.attr.startswith("_") else set()
    private = {n for n in private if not (n.startswith("__") and n.endswith("__"))}
    state = {t.target.id for t in classes["CacheState"].body if isinstance(t, ast.AnnAssign)}
    return private, state


PRIVATE, STATE = _policy_cache_names()


def _outside_access(tree: ast.AST) -> list[str]:
    """``x._private`` reads on anything but ``self`` / ``cls``, and assignments ``x.<state field> = ...``."""
    found = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        for t in targets:
            for sub in ast.walk(t):
                if isinstance(sub, ast.Attribute) and sub.attr in STATE and ast.unparse(sub.value) not in ("self",):
                    found.append(f"line {sub.lineno}: assigns {ast.unparse(sub)}")
        if isinstance(node, ast.Attribute) and node.attr in PRIVATE:
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_the_state_check_sees_the_cache():
    assert {"_pending", "_run_after", "_state"} <= PRIVATE and {"meta", "n_seen", "n_evicted", "n_run"} <= STATE
    bad = ast.parse("cache._pending\nx = s.cache._state\ncache.n_seen = 0\nself._pending = 1\nself.n_seen += 1")
    assert sorted(_outside_access(bad)) == [
        "line 1: cache._pending",
        "line 2: s.cache._state",
        "line 3: assigns cache.n_seen",
    ]


OUTSIDE_CACHE = sorted(m for m in MODULES if m != "anllm.cache")
OUTSIDE_CACHE += [p.relative_to(PACKAGE.parent).as_posix() for p in sorted(PACKAGE.parent.glob("custom_generate/*.py"))]


@pytest.mark.parametrize("module", OUTSIDE_CACHE)
def test_only_the_cache_touches_its_state(module):
    path = MODULES[module] if module in MODULES else PACKAGE.parent / module
    bad = _outside_access(ast.parse(path.read_text(encoding="utf-8"), str(path)))
    assert not bad, f"{module} reaches into PolicyCache: {bad}"
