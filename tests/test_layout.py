"""The package's layering: no import cycle inside r2n/, every module imports alone.

Data flows one way: ``_checks`` and ``params`` at the bottom, the backends
and ``_backends`` above them, ``_api`` and ``_interop`` above those, the
package namespace, ``models`` and the command line (``r2n.cli``) on top.
A module never calls back up (the import graph, read from every ``import``
statement in every module, function-level ones included, has no cycle), and
every module imports alone, in a fresh set of r2n modules, in any order.
"""

from __future__ import annotations

import ast
import os
import pathlib
import subprocess
import sys

import pytest

import r2n

ROOT = pathlib.Path(r2n.__file__).parent

#: Cycles known today, each with the issue that removes it. Every other cycle
#: fails :func:`test_no_import_cycle_inside_r2n`; a known one that is gone makes
#: :func:`test_known_cycle_is_gone` pass, which (strict xfail) fails the run
#: until its entry here is deleted.
KNOWN_CYCLES: dict[frozenset[str], str] = {}


def module_names() -> dict[str, tuple[pathlib.Path, bool]]:
    """Dotted name -> (file, is a package) of every module under r2n/."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = ("r2n",) + path.relative_to(ROOT).with_suffix("").parts
        package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if package else parts)] = (path, package)
    return out


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_graph() -> dict[str, set[str]]:
    """module -> the r2n modules it imports (module-level and in functions).

    ``from X import name`` is an edge to ``X.name`` when that is a module, else
    to ``X``. Importing a module first runs its packages' ``__init__``, so an
    edge to ``a.b.c`` is also an edge to ``a.b`` and ``a`` unless the importer
    is inside them (a package's own modules run while it is being imported)."""
    modules = module_names()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, (path, package) in modules.items():
        here = name.split(".") if package else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = here[: len(here) - (node.level - 1)]
                    base = ".".join(up + ([node.module] if node.module else []))
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.append(sub if sub in modules else base)
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            for target in targets:
                if target not in modules:
                    continue  # not r2n's
                graph[name].add(target)
                mine = set(_ancestors(name))
                graph[name].update(a for a in _ancestors(target) if a not in mine)
        graph[name].discard(name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _describe(component: frozenset[str], graph) -> str:
    return "; ".join(
        f"{m} -> {', '.join(sorted(graph[m] & component))}" for m in sorted(component)
    )


def test_no_import_cycle_inside_r2n():
    graph = import_graph()
    assert len(graph) > 50 and "r2n.cli.bench" in graph["r2n.cli"]
    new = [c for c in cycles(graph) if c not in KNOWN_CYCLES]
    assert not new, "import cycles inside r2n/: " + " | ".join(_describe(c, graph) for c in new)


@pytest.mark.parametrize(
    "component",
    [
        pytest.param(c, marks=pytest.mark.xfail(strict=True, reason=why))
        for c, why in KNOWN_CYCLES.items()
    ],
    ids=["<->".join(sorted(c)) for c in KNOWN_CYCLES],
)
def test_known_cycle_is_gone(component):
    assert component not in cycles(import_graph())


def test_the_cycle_finder_finds_a_cycle_and_its_edges():
    """The finder itself: a planted cycle through a function-level import and a
    package's __init__ (a -> b.c, which first runs b/__init__.py, -> a)."""
    graph = {"r2n.a": {"r2n.b.c", "r2n.b"}, "r2n.b": {"r2n.a"}, "r2n.b.c": set(), "r2n": set()}
    assert cycles(graph) == [frozenset({"r2n.a", "r2n.b"})]
    assert cycles({"r2n.a": {"r2n.b"}, "r2n.b": set()}) == []
    real = import_graph()
    # A package's module importing a sibling does not depend on its own package...
    assert "r2n" not in real["r2n._api"] and "r2n._backends" in real["r2n._api"]
    # ...but reaching into another package runs that package's __init__ first.
    assert "r2n.models" in real["r2n"]  # r2n/__init__.py imports r2n.models._weights


_IMPORT_EACH_ALONE = """
import importlib, sys
package, failed = sys.argv[1], []
for name in sys.argv[2:]:
    for loaded in [m for m in sys.modules if m.split(".")[0] == package]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] == package:
            failed.append(f"{name}: {e!r}")
        # else an optional dependency this machine lacks: not a layering problem
    except Exception as e:
        failed.append(f"{name}: {type(e).__name__}: {e}")
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


def _import_each_alone(package: str, names, path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(path), *sys.path])}
    return subprocess.run(
        [sys.executable, "-c", _IMPORT_EACH_ALONE, package, *names],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def test_every_module_imports_alone():
    """Each module, imported first (no other r2n module loaded), in one fresh
    interpreter: an import-time cycle would leave a module half-initialised."""
    done = _import_each_alone("r2n", sorted(module_names()), ROOT.parent)
    assert done.returncode == 0, done.stdout + done.stderr


def test_importing_alone_catches_an_import_time_cycle(tmp_path):
    package = tmp_path / "cyclic"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from .b import B\nA = 1\n")
    (package / "b.py").write_text("from .a import A\nB = 2\n")
    done = _import_each_alone("cyclic", ["cyclic.a", "cyclic.b"], tmp_path)
    assert done.returncode == 1
    assert "cyclic.a: ImportError" in done.stdout and "cyclic.b: ImportError" in done.stdout


@pytest.mark.parametrize("activation", [None, "relu", "leaky_relu"])
def test_prepares_fallback_runs_the_backends_ops_not_the_public_ones(monkeypatch, activation):
    """r2n._backends sits below r2n._api: its prepare fallback (the reference
    backend has no PREPARE) must work with every public op broken, and give
    the public ops' result and errors."""
    import numpy as np

    from r2n import _api, _backends

    rng = np.random.default_rng(5)
    x, r = rng.standard_normal((1, 6, 7, 9)), rng.standard_normal((1, 4, 4, 5))
    w, b = rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    options = dict(stride=(2, 2), padding=(1, 1), dilation=(1, 1), groups=2)
    expected = _api.conv2d(x, w, b, **options) + r
    if activation == "relu":
        expected = np.maximum(expected, 0)
    elif activation == "leaky_relu":
        expected = np.where(expected > 0, expected, 0.2 * expected)
    for name in ("conv2d", "relu", "leaky_relu"):
        monkeypatch.setattr(_api, name, lambda *a, **k: pytest.fail("called r2n._api"))
    layer = _backends.prepare(
        "conv2d",
        "reference",
        "numpy",
        w,
        b,
        activation=activation,
        negative_slope=0.2,
        **options,
    )
    np.testing.assert_allclose(layer(x, residual=r), expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=r"r2n.conv2d: weight has 3 input channels per group"):
        layer(x[:, :4])
    with pytest.raises(TypeError, match="float32"):
        layer(x.astype(np.float32))
