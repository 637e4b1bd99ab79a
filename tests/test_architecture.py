"""The module graph of dlnsim: no import cycles, no upward imports, registries complete.

Imports are read from the source (ast), all of them: module-level and function-local, so an import
moved into a function to dodge a cycle still counts. Layers (docs/architecture.md), lowest first;
a module may import its own layer or lower ones only:

    0 foundation   _version, _io, _checks, options, lifecycle, safe_io, safe_paths, runlock, resources,
                   _guard, _children, record_store
    1 kernels      spectral, stats, small_svd
    2 mathematics  geometry, entropy, network, theory, gibbs, manifold.* (constraint_map, block_solvers,
                   exact, singular_frame, functions), reference, depth_limit, fields, field_network,
                   field_geometry, entropy_fields (the DLN over R, C, H), metrics, baselines,
                   tasks (targets, masks, data of implicit-regularization studies)
    3 energies     energies, field_energies
    4 dynamics     dynamics.*
    5 measuring    observe, simulation, run_theory, problems (reference problems of tests and scripts), field_observe,
                   gradient_noise
    6 run inputs   config, results, builders, field_runs
    7 run outputs  plotting.*, runner, bias_check
    8 sweeps       sweep.*, sweep_plots, loaders (load_run, load_sweep)
    9 interface    cli, __main__, the package itself (dlnsim/__init__.py)

A new module must be placed in a layer here: the test fails on a module it does not know.
A package's modules share its layer (and may import one another, without cycles). No module
grows past MAX_LINES (issue 11: "the largest module under ~500 lines").
"""
from __future__ import annotations

import ast
import inspect
import os

import pytest

PKG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "dlnsim")

LAYERS = [
    ["_version", "_io", "_checks", "options", "lifecycle", "safe_io", "safe_paths", "runlock", "resources",
     "_guard", "_children", "record_store", "_device"],
    ["spectral", "stats", "small_svd"],
    ["geometry", "entropy", "network", "theory", "gibbs", "manifold", "reference", "depth_limit",
     "fields", "field_network", "field_geometry", "entropy_fields", "metrics", "baselines", "tasks"],
    ["energies", "field_energies"],
    ["dynamics"],
    ["observe", "simulation", "run_theory", "problems", "field_observe", "gradient_noise"],
    ["config", "results", "builders", "field_runs"],
    ["plotting", "runner", "bias_check"],
    ["sweep", "sweep_plots", "loaders"],
    ["cli", "__main__", "__init__"],
]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}
# ~500 lines with a margin: measured 2026-11-30, the largest modules are config (523 lines) and
# reference (553, issue 10); dlnsim/manifold.py (1055 lines) was split into a package for this.
MAX_LINES = 600


def _modules() -> dict[str, str]:
    """dotted name (relative to dlnsim, '' for the package) -> file path."""
    out = {}
    for root, _, files in os.walk(PKG):
        for f in files:
            if not f.endswith(".py"):
                continue
            rel = os.path.relpath(os.path.join(root, f), PKG)[:-3].replace(os.sep, ".")
            name = rel[: -len(".__init__")] if rel.endswith(".__init__") else ("" if rel == "__init__" else rel)
            out[name] = os.path.join(root, f)
    return out


def _rank(name: str) -> int:
    top = name.split(".")[0] if name else "__init__"
    if top not in RANK:
        raise AssertionError(f"module dlnsim.{name} is in no layer of tests/test_architecture.py; place it in one")
    return RANK[top]


def _imports(name: str, path: str, modules: dict) -> set[str]:
    """Modules of dlnsim that `name` imports (anywhere in the file)."""
    is_pkg = path.endswith("__init__.py")
    package = name if is_pkg else name.rpartition(".")[0]
    out = set()
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0:
                if not (node.module or "").startswith("dlnsim"):
                    continue
                base = node.module[len("dlnsim"):].lstrip(".")
            else:
                parts = package.split(".") if package else []
                parts = parts[: len(parts) - (node.level - 1)] if node.level > 1 else parts
                base = ".".join(parts + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}" if base else alias.name
                out.add(sub if sub in modules else base)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "dlnsim" or alias.name.startswith("dlnsim."):
                    out.add(alias.name[len("dlnsim"):].lstrip("."))
    out.discard(name)
    return {m for m in out if m in modules}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_every_module_is_in_a_layer():
    for name in _modules():
        _rank(name)


def test_modules_stay_small():
    long = {}
    for name, path in _modules().items():
        with open(path, encoding="utf-8") as f:
            n = sum(1 for _ in f)
        if n > MAX_LINES:
            long[f"dlnsim.{name or '__init__'}"] = n
    assert not long, f"modules over {MAX_LINES} lines (split them along their concepts): {long}"


def upward_edges(graph: dict[str, set[str]]) -> list[str]:
    return [f"dlnsim.{a or '__init__'} (layer {_rank(a)}) imports dlnsim.{b} (layer {_rank(b)})"
            for a, deps in graph.items() for b in deps if _rank(b) > _rank(a)]


def find_cycles(graph: dict[str, set[str]]) -> list[str]:
    """Every back edge of a depth-first search, as the cycle it closes ('a -> b -> a')."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    cycles: list[str] = []

    def visit(node, stack):
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return cycles


def test_no_upward_imports():
    bad = upward_edges(_graph())
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    cycles = find_cycles(_graph())
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_checks_can_fail():
    """On the graph of the code before issue 11 (config -> runner -> plotting -> runner, sweep <->
    sweep_plots), both checks fire."""
    old = {"config": {"runner"}, "runner": {"config", "plotting"}, "plotting": {"runner"},
           "sweep": {"sweep_plots", "config"}, "sweep_plots": {"sweep", "plotting", "runner"}}
    assert len(find_cycles(old)) == 3
    assert upward_edges(old) == ["dlnsim.config (layer 6) imports dlnsim.runner (layer 7)"]


def test_registries_are_complete():
    """Every scheme and energy class the config offers is in its registry with the data the run layer reads."""
    from dlnsim.config import SCHEMA
    from dlnsim.dynamics import SCHEMES
    from dlnsim.energies import ENERGIES
    from dlnsim.observe import OBSERVABLES

    assert SCHEMA["dynamics"]["scheme"].check.values == tuple(SCHEMES)
    assert SCHEMA["energy"]["type"].check.values == tuple(ENERGIES)
    assert SCHEMA["observers"]["include"].check.values == tuple(OBSERVABLES)
    for name, cls in SCHEMES.items():
        assert cls.name == name and cls.space in ("parameters", "end_to_end"), name
        # stochastic schemes draw their noise from the run's generator (SGD is stochastic without a
        # temperature: its noise is the minibatches)
        takes_generator = any("generator" in inspect.signature(k.__init__).parameters for k in cls.__mro__ if "__init__" in vars(k))
        assert not cls.stochastic or takes_generator, name
    for name, cls in ENERGIES.items():
        assert cls.name == name and "batch_free" in vars(cls), name
        for key in cls.config_keys:
            assert key in SCHEMA["energy"], (name, key)


@pytest.mark.parametrize("module", ["config", "sweep.spec"])
def test_long_functions_are_split(module):
    """_resolve and load_sweep stay short (issue 11: each under ~50 lines)."""
    with open(_modules()[module], encoding="utf-8") as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name in ("_resolve", "load_sweep"):
            assert node.end_lineno - node.lineno + 1 <= 50, (node.name, node.end_lineno - node.lineno + 1)
