"""The package's layers: who may import whom, no cycles, no lazy imports dodging one.

Walks every module's imports (top-level and inside functions) with ``ast``, so the
rules hold for the source as written, not for what one test run happened to import.
"""

from __future__ import annotations

import ast
import pathlib
import re

import numpy as np

import jaxal
from jaxal._deprecated import MOVED

PACKAGE = pathlib.Path(jaxal.__file__).parent
STRATEGIES = PACKAGE / "strategies"
# Layers below the strategies: they must never import strategies/, experiment/ or the CLI.
LOWER = ("jaxal.model", "jaxal.validation", "jaxal.ops", "jaxal.ntk", "jaxal.lookahead", "jaxal.training")
UPPER = ("jaxal.strategies", "jaxal.experiment", "jaxal.labeling", "jaxal.cli", "jaxal.__main__")
# Where a function-level jaxal import is allowed: the CLI and the program (the top;
# imports on demand keep `jaxal --help` free of work and let Ctrl-C be handled while
# JAX loads) and the package root's lazy attributes.
LAZY_OK = ("jaxal.cli", "jaxal.__main__", "jaxal")


def module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def is_module(name: str) -> bool:
    base = PACKAGE.parent / name.replace(".", "/")
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


def library_modules() -> dict[str, pathlib.Path]:
    """Every module of the package except the 0.1 shims (they only forward)."""
    mods = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {m: p for m, p in mods.items() if m not in MOVED}


def imports(path: pathlib.Path, name: str) -> list[tuple[str, bool]]:
    """``(imported jaxal module, at function level?)`` for every import in the file."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    nested_nodes = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                    for n in ast.walk(f) if n is not f}
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" if is_module(f"{base}.{a.name}") else base for a in node.names]
        nested = id(node) in nested_nodes
        found += [(t, nested) for t in targets if t == "jaxal" or t.startswith("jaxal.")]
    return found


def graph() -> dict[str, set[str]]:
    mods = library_modules()
    return {m: {t for t, _ in imports(p, m) if t != "jaxal" and t != m} for m, p in mods.items()}


def in_layer(name: str, layers: tuple[str, ...]) -> bool:
    return any(name == layer or name.startswith(layer + ".") for layer in layers)


def test_lower_layers_never_import_strategies_or_experiment():
    bad = [(m, t) for m, targets in graph().items() if in_layer(m, LOWER) for t in targets if in_layer(t, UPPER)]
    assert bad == []
    # the walk sees real edges (a broken walker would pass the check above vacuously)
    assert "jaxal.ntk.kernel" in graph()["jaxal.lookahead.from_model"]
    assert "jaxal.model" in graph()["jaxal.strategies.base"]


def test_no_import_cycles():
    g = graph()
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def strongconnect(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in g.get(v, ()):
            if w not in g:
                continue
            if w not in index:
                strongconnect(w)
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
                cycles.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            strongconnect(v)
    assert cycles == []


def test_no_lazy_imports_inside_the_library():
    lazy = [(m, t) for m, p in library_modules().items() if m not in LAZY_OK for t, nested in imports(p, m) if nested]
    assert lazy == []


def test_every_builtin_strategy_is_one_def_in_one_file():
    builtins = [n for n in jaxal.names()
                if (getattr(jaxal.strategies.get(n), "__module__", None) or "").startswith("jaxal.strategies.")]
    assert len(builtins) >= 15
    for name in builtins:
        files = [p.name for p in STRATEGIES.glob("*.py") if re.search(rf"^def {name}\(", p.read_text(), re.M)]
        assert len(files) == 1, (name, files)


def test_a_strategy_registered_outside_the_package_runs_through_jaxal_run(tmp_path, monkeypatch):
    from jaxal.cli import main
    from jaxal.experiment.records import load_records

    (tmp_path / "my_al_strategies.py").write_text(
        "import numpy as np\n"
        "import jaxal\n\n\n"
        "@jaxal.register('_outside_last_rows')\n"
        "def _outside_last_rows(key, ctx, budget, *, offset=0):\n"
        "    n = np.shape(ctx.x_pool)[0]\n"
        "    return np.arange(n - budget - offset, n - offset)\n"
    )
    monkeypatch.chdir(tmp_path)
    argv = ["run", "--import", "my_al_strategies", "--strategy", "_outside_last_rows", "--option", "offset=2",
            "--widths", "8", "--initial", "10", "--budget", "4", "--rounds", "1", "--epochs", "1",
            "--candidates", "30", "--out", str(tmp_path / "out"), "--quiet"]
    assert main(argv) == 0
    records = load_records(str(tmp_path / "out" / "_outside_last_rows" / "seed0"))
    assert [r["n_labeled"] for r in records] == [10, 14]
    assert len(set(records[-1]["chosen"])) == 4
    assert "_outside_last_rows" in jaxal.names()
    assert jaxal.strategies.option_names("_outside_last_rows") == ("offset",)
    # a module that does not exist is one clear error line, exit code 2
    assert main(argv[:1] + ["--import", "no_such_module_here"] + argv[3:]) == 2


def test_moved_modules_forward_with_a_deprecation_warning():
    import importlib
    import sys
    import warnings

    for old, new in MOVED.items():
        sys.modules.pop(old, None)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            mod = importlib.import_module(old)
        assert any(issubclass(w.category, DeprecationWarning) and old in str(w.message) for w in caught), old
        target = importlib.import_module(new[0])
        public = [k for k in vars(target) if not k.startswith("_") and callable(getattr(target, k))]
        assert public and all(getattr(mod, k) is getattr(target, k) for k in public), old
    assert np.all([in_layer(n, ("jaxal",)) for new in MOVED.values() for n in new])


def test_registering_a_taken_name_fails_but_rerunning_a_definition_replaces_it():
    import pytest

    source = "def _rerun_me(key, ctx, budget):\n    return list(range(budget))\n"
    first: dict = {"__name__": "notebook_cell"}
    exec(source, first)
    jaxal.register("_rerun_me")(first["_rerun_me"])
    again: dict = {"__name__": "notebook_cell"}
    exec(source, again)  # the same cell run a second time: a new function object, same origin
    jaxal.register("_rerun_me")(again["_rerun_me"])
    assert jaxal.strategies.get("_rerun_me") is again["_rerun_me"]
    with pytest.raises(ValueError, match="already registered"):
        jaxal.register("entropy")(again["_rerun_me"])
    assert jaxal.strategies.get("entropy").__module__ == "jaxal.strategies.uncertainty"
