"""The package's import graph points one way: no cycle among swin_jax's modules, counting the imports
inside functions too (so none of them can be there to break one), and every module imports alone."""

import ast
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "swin_jax"


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(path: pathlib.Path) -> set[str]:
    """The swin_jax modules a file imports, at the top or inside a function: `from swin_jax.x import y`
    counts as swin_jax.x.y where that is a module, else as swin_jax.x."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in MODULES else node.module)
    return {name for name in found if name in MODULES and name != "swin_jax"}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph as a list of nodes (first == last), or None."""
    state = {}  # node -> "open" while on the depth-first path, "done" after

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt, path + [nxt])
                if cycle:
                    return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start, [start])
            if cycle:
                return cycle
    return None


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_the_import_graph_has_no_cycle():
    """The graph of every swin_jax import statement, those inside functions included. A package's
    __init__ is a node of its own (importing swin_jax.x.y runs swin_jax.x first, which Python handles
    whatever it imports), so the package root, which re-exports the public names, is left out."""
    graph = {name: imported_modules(path) for name, path in MODULES.items() if name != "swin_jax"}
    assert len(graph) > 40 and "swin_jax.convert.fitting" in graph["swin_jax.convert.segmenter"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_convert_kinds_import_only_the_core():
    """Each kind of converter (classifier, segmenter, masked_image) imports the core and the models,
    never a sibling nor the dispatcher; the core imports no kind."""
    core = {"swin_jax.convert.reader", "swin_jax.convert.layouts", "swin_jax.convert.resample",
            "swin_jax.convert.fitting"}
    kinds = {"swin_jax.convert.classifier", "swin_jax.convert.segmenter", "swin_jax.convert.masked_image",
             "swin_jax.convert.detector"}
    for name in core | kinds:
        ours = {m for m in imported_modules(MODULES[name]) if not m.startswith("swin_jax.models")}
        allowed = core - {name}
        assert ours <= allowed, f"{name} imports {sorted(ours - allowed)}"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="forks a child per module")
def test_every_module_imports_alone():
    """Each module imported first, in a child process that has imported none of ours (the heavy
    third-party libraries are imported once, before forking, to keep this quick)."""
    script = f"""
import os, sys, traceback
import jax, flax.linen, numpy, optax, ml_collections, tensorflow  # noqa: F401
failures = []
for name in {sorted(MODULES)!r}:
    pid = os.fork()
    if pid == 0:
        try:
            __import__(name)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    if os.waitpid(pid, 0)[1]:
        failures.append(name)
print("FAILED:", failures)
sys.exit(1 if failures else 0)
"""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
