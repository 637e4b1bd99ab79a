"""The sweep file: its schema, validation, and the expansion into points (one resolved config each).

    name: gibbs                       # optional (default: the file's stem); names the sweep folder
    base: langevin_base.yaml          # a config file (relative to this file) or an inline mapping
    axes: {network.depth: [2, 3], dynamics.beta: [0.5, 1, 2, 4]}   # the grid, first axis slowest
    zip: [{dynamics.step_size: [0.02, 0.01], dynamics.steps: [500, 1000]}]   # varied together
    batch_axes: [dynamics.beta]       # fold these axes into each run's batch (far cheaper)
    executor: {...}                   # EXECUTOR_SCHEMA below; the command line overrides kind and workers
    showcase: null                    # optional: copy the headline summary PNG to this path

The executor section is declared with the same Option/checker machinery as the run schema
(dlnsim.options). Only dynamics.beta can be batched (the runner runs a list of betas side by side,
trajectory b at beta[b // ensemble]); every other axis changes what a run is and gives separate runs.
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import os
import re
from dataclasses import dataclass, field

import yaml

from ..config import absolutize_paths, load_config, read_yaml, set_key
from ..safe_paths import check_name
from ..options import ConfigError, Choice, Int, Mapping, Num, Option, Str, check_options, did_you_mean, fail, show

__all__ = [
    "Sweep", "Point", "load_sweep", "expand", "EXECUTORS", "BATCHABLE", "EXECUTOR_SCHEMA", "TOP_KEYS",
    "SWEEP_FILE", "MANIFEST", "RUNS", "POINTS", "FIGURES", "SUBMITIT", "fmt", "short_names", "AXIS_SYMBOLS", "minutes",
]

EXECUTORS = ("local", "slurm", "submitit-local")
# Config keys the runner can batch inside one run (a list of values run side by side).
BATCHABLE = ("dynamics.beta",)
TOP_KEYS = ("name", "base", "axes", "zip", "batch_axes", "executor", "showcase", "seed_mode")
SEED_MODES = ("derived", "common")
MAX_POINTS = 10_000
SWEEP_FILE, MANIFEST, RUNS, POINTS, FIGURES, SUBMITIT = (
    "sweep.yaml", "manifest.csv", "runs", "points", "figures", "submitit",
)
# How common axes are named in figure legends (math symbols of docs/theory.md).
AXIS_SYMBOLS = {"network.depth": "N", "network.width": "d", "dynamics.beta": r"$\beta$", "dynamics.step_size": "h",
                "energy.alpha": r"$\alpha$", "dynamics.seed": "seed"}
_NAME = re.compile(r"[A-Za-z0-9_.=+\-]+")


def minutes(v, path: str = "executor.time") -> int:
    """executor.time -> minutes: a number of minutes, or an sbatch --time string
    (MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS)."""
    if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0:
        return max(1, math.ceil(v))
    m = re.fullmatch(r"(?:(\d+)-)?(\d+(?::\d+){0,2})", v.strip()) if isinstance(v, str) else None
    if m:
        days, parts = int(m.group(1) or 0), [int(x) for x in m.group(2).split(":")]
        if m.group(1):
            h, mi, sec = (parts + [0, 0])[:3]
        else:
            h, mi, sec = ([0] * (3 - len(parts)) + parts) if len(parts) == 3 else (0, parts[0], parts[1] if len(parts) == 2 else 0)
        total = days * 1440 + h * 60 + mi + math.ceil(sec / 60)
        if total > 0:
            return total
    fail(path, f"must be minutes (e.g. 90) or an sbatch time 'H:MM:SS' / 'D-HH:MM:SS', got {show(v)}")


def _shell_lines(v, path):
    v = [v] if isinstance(v, str) else v
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        fail(path, f"must be a list of shell lines, got {show(v)}")
    return list(v)


def _sbatch_options(v, path):
    if not isinstance(v, dict) or not all(isinstance(k, str) for k in v):
        fail(path, f"must be a mapping of sbatch options, e.g. {{account: abc}}, got {show(v)}")
    return Mapping()(v, path)


O = Option
EXECUTOR_SCHEMA: dict[str, Option] = {
    "kind": O("local", "local | slurm | submitit-local", Choice(EXECUTORS, noun="executor")),
    "workers": O(None, "local pool size / submitit-local concurrency (null: CPU cores)", Int(ge=1, nullable=True)),
    "partition": O(None, "slurm: --partition", Str(nullable=True)),
    "time": O(60, "slurm: minutes per point (or 'H:MM:SS', 'D-HH:MM:SS')", minutes),
    "cpus_per_task": O(1, "also torch's thread count inside each job", Int(ge=1)),
    "gpus_per_node": O(0, "GPUs per job", Int(ge=0)),
    "mem_gb": O(None, "memory per job in GB (null: the cluster's default)", Num(gt=0, nullable=True)),
    "array_parallelism": O(64, "slurm: at most this many array tasks at once (--array=...%k)", Int(ge=1)),
    "setup": O([], "slurm: shell lines before the job (module load, venv activate)", _shell_lines),
    "slurm_additional_parameters": O({}, "slurm: any other sbatch option, e.g. {account: abc, qos: low}", _sbatch_options),
}
del O
# null means "the default" for these keys; for the others null is a value of its own
_NULL_IS_DEFAULT = tuple(k for k, o in EXECUTOR_SCHEMA.items() if o.default is not None)


@dataclass
class Point:
    """One run of a sweep: its axis values (dotted key -> value; batched axes hold their list)."""
    index: int
    name: str
    values: dict
    config: dict  # resolved (dlnsim.config.load_config)


@dataclass
class Sweep:
    name: str
    base: dict  # the raw base config (unresolved), file paths in it absolute
    axes: dict  # dotted key -> list (grid axes)
    zip: list  # [ {dotted key -> list}, ... ] (equal lengths within a group)
    batch_axes: list
    executor: dict
    showcase: str | None = None
    source: str | None = None  # the file it was read from
    points: list = field(default_factory=list)
    seed_mode: str = "derived"

    def spec(self) -> dict:
        """What defines the points (compared when rerunning into an existing sweep folder)."""
        return {"base": self.base, "axes": self.axes, "zip": self.zip, "batch_axes": self.batch_axes,
                "seed_mode": self.seed_mode}

    def to_yaml(self) -> str:
        body = {"name": self.name, **self.spec(), "executor": self.executor, "showcase": self.showcase}
        origin = "" if not self.source or os.path.basename(self.source) == SWEEP_FILE else f", from {self.source}"
        head = f"# dlnsim sweep '{self.name}'{origin}; base inlined. Rerun (skips finished points): dlnsim sweep <this folder>\n"
        return head + yaml.safe_dump(body, sort_keys=False, default_flow_style=None)

    @property
    def axis_keys(self) -> list[str]:
        return list(self.axes) + [k for g in self.zip for k in g]


# ---------------------------------------------------------------------------------------------
# reading a sweep file
# ---------------------------------------------------------------------------------------------


def load_sweep(path_or_dict, *, validate: bool = True) -> Sweep:
    """Read and validate a sweep file (or dict); expands and validates every point (Sweep.points).

    Raises ConfigError with one line: the key of the sweep file, or the first bad point with its
    axis values and the config error.
    """
    if isinstance(path_or_dict, dict):
        data, here, stem, source = copy.deepcopy(path_or_dict), os.getcwd(), "sweep", None
    else:
        source = os.fspath(path_or_dict)
        data = read_yaml(source, "sweep file")
        here = os.path.dirname(os.path.abspath(source))
        stem = os.path.splitext(os.path.basename(source))[0]
    for k in data:
        if k not in TOP_KEYS:
            fail(str(k), f"unknown sweep key; {did_you_mean(k, TOP_KEYS)}")
    name = data.get("name") or stem
    try:
        check_name("name", name)  # it names a folder: one safe path component
    except ValueError as e:
        raise ConfigError(str(e)) from None
    seed_mode = data.get("seed_mode", "derived")
    if seed_mode not in SEED_MODES:
        fail("seed_mode", f"must be one of {', '.join(SEED_MODES)} (derived: a distinct seed per point from dynamics.seed "
                          f"and the point's axis values; common: every point uses dynamics.seed), got {show(seed_mode)}")
    base = _base(data, here)
    axes = data.get("axes") or {}
    if not isinstance(axes, dict):
        fail("axes", f"must be a mapping of dotted config keys to lists, got {show(axes)}")
    axes = {k: _axis_list(k, v, "axes") for k, v in axes.items()}
    zips = _zip_groups(data.get("zip") or [])
    _check_axis_keys(axes, zips)
    batch = _batch_axes(data.get("batch_axes"), axes)
    executor = check_executor(data.get("executor"))
    showcase = data.get("showcase")
    if showcase is not None and (not isinstance(showcase, str) or not showcase.endswith(".png")):
        fail("showcase", f"must be a .png path (the summary figure is copied there), got {show(showcase)}")
    sweep = Sweep(name, base, axes, zips, batch, executor, showcase, source, seed_mode=seed_mode)
    n_points = math.prod(len(v) for k, v in axes.items() if k not in batch) * math.prod(len(next(iter(g.values()))) for g in zips)
    if n_points > MAX_POINTS:  # before expanding: each point is a validated config
        fail("axes", f"{n_points} points, more than {MAX_POINTS} in one sweep; split it, or batch an axis (batch_axes)")
    if validate:
        sweep.points = expand(sweep)
    return sweep


def _base(data: dict, here: str) -> dict:
    """The base config, inlined: a file path (relative to the sweep file) read, or a mapping."""
    if "base" not in data or data["base"] is None:
        fail("base", "missing; give a config file (relative to the sweep file) or an inline config mapping")
    base = data["base"]
    if isinstance(base, str):
        path = base if os.path.isabs(base) else os.path.join(here, base)
        base = absolutize_paths(read_yaml(path, "base config"), os.path.dirname(os.path.abspath(path)))
    elif not isinstance(base, dict):
        fail("base", f"must be a config file path or a mapping of config sections, got {show(base)}")
    base = copy.deepcopy(base)
    if (base.get("study") or {}).get("variants"):
        fail("base", "a sweep's base cannot be a study (study.variants); make the variants a sweep axis")
    return base


def _axis_list(key: str, values, path: str) -> list:
    if not isinstance(key, str) or not key:
        fail(path, f"axis names must be dotted config keys like dynamics.beta, got {show(key)}")
    if not isinstance(values, list):
        fail(f"{path}.{key}", f"must be a list of values, e.g. [0.5, 1, 2], got {show(values)}")
    if not values:
        fail(f"{path}.{key}", "is empty; give at least one value")
    return values


def _zip_groups(groups) -> list[dict]:
    if isinstance(groups, dict):
        groups = [groups]
    if not isinstance(groups, list):
        fail("zip", f"must be a list of groups {{key: [...], key: [...]}} of equal-length lists, got {show(groups)}")
    zips = []
    for gi, g in enumerate(groups):
        p = f"zip[{gi}]"
        if not isinstance(g, dict) or not g:
            fail(p, f"must be a mapping of dotted config keys to equal-length lists, got {show(g)}")
        g = {k: _axis_list(k, v, p) for k, v in g.items()}
        lengths = {k: len(v) for k, v in g.items()}
        if len(set(lengths.values())) > 1:
            fail(p, "lists of a zip group must have equal lengths, got " + ", ".join(f"{k}: {n}" for k, n in lengths.items()))
        zips.append(g)
    return zips


def _check_axis_keys(axes: dict, zips: list[dict]) -> None:
    keys = list(axes) + [k for g in zips for k in g]
    if not keys:
        fail("axes", "the sweep has no axes; give axes: {dotted.key: [values]} (and/or zip: groups)")
    seen = set()
    for k in keys:
        if k in seen:
            fail(k, "appears on two axes; each config key can be swept once")
        seen.add(k)
        try:
            set_key({}, k, None)  # validates the key path (did-you-mean on a typo)
        except ConfigError as e:
            raise ConfigError(f"{'axes' if k in axes else 'zip'}.{e}") from None
        if k.split(".")[0] == "study":
            fail(k, "a sweep cannot vary the study section")


def _batch_axes(batch, axes: dict) -> list[str]:
    batch = [batch] if isinstance(batch, str) else (batch or [])
    if not isinstance(batch, list):
        fail("batch_axes", f"must be a list of axis keys, got {show(batch)}")
    for k in batch:
        if k not in BATCHABLE:
            fail("batch_axes", f"{show(k)} cannot be batched inside one run; batchable keys: {', '.join(BATCHABLE)}")
        if k not in axes:
            fail("batch_axes", f"{k} must be one of the grid axes (axes:), not a zip key or a missing axis")
    return list(batch)


def check_executor(ex) -> dict:
    """The executor section against EXECUTOR_SCHEMA, defaults filled (time in minutes)."""
    if ex is None:
        ex = {}
    if not isinstance(ex, dict):
        fail("executor", f"must be a mapping of executor options, got {show(ex)}")
    given = {k: v for k, v in ex.items() if v is not None or k not in _NULL_IS_DEFAULT}
    out = {k: copy.deepcopy(o.default) for k, o in EXECUTOR_SCHEMA.items()}
    out.update(check_options(given, EXECUTOR_SCHEMA, "executor"))
    out["time"] = minutes(out["time"])
    return out


# ---------------------------------------------------------------------------------------------
# points
# ---------------------------------------------------------------------------------------------


def fmt(v) -> str:
    """A value as it appears in point names and the manifest."""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple, dict)) and not v:
        return "none"
    if isinstance(v, (list, tuple)):
        return "|".join(fmt(x) for x in v)
    if isinstance(v, dict):
        return ";".join(f"{k}:{fmt(x)}" for k, x in v.items())
    return str(v)


def short_names(keys: list[str]) -> dict[str, str]:
    """dynamics.beta -> beta, unless two axes end the same (then the full key, dots as '-')."""
    last = [k.split(".")[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k.replace(".", "-")) for k, s in zip(keys, last)}


def _point_name(index: int, values: dict, short: dict, batch: list) -> str:
    parts = [f"{short[k]}={fmt(v)}" for k, v in values.items() if k not in batch]
    name = f"{index:03d}" + ("_" + "_".join(parts) if parts else "")
    name = re.sub(r"[^A-Za-z0-9_.=+,\-]", "-", name)
    return name[:100]  # output.name's limit (dlnsim.safe_paths.MAX_NAME)


def point_seed(base_seed: int, values: dict) -> int:
    """A distinct, reproducible dynamics.seed for the point with these axis values: a hash of the
    base seed and the values (not of the point's index), so adding points to a sweep leaves the
    seeds of the existing ones unchanged. 63 bits."""
    text = json.dumps([int(base_seed), sorted((k, v) for k, v in values.items())], sort_keys=True, default=str)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


def expand(sweep: Sweep) -> list[Point]:
    """The points of a sweep (grid over axes x zip groups; batch axes folded in), each validated."""
    grid_keys = [k for k in sweep.axes if k not in sweep.batch_axes]
    factors = [[{k: v} for v in sweep.axes[k]] for k in grid_keys]
    factors += [[{k: g[k][i] for k in g} for i in range(len(next(iter(g.values()))))] for g in sweep.zip]
    folded = {k: list(sweep.axes[k]) for k in sweep.batch_axes}
    short = short_names(sweep.axis_keys)
    base_seed = (sweep.base.get("dynamics") or {}).get("seed") or 0
    if isinstance(base_seed, bool) or not isinstance(base_seed, int):
        base_seed = 0  # load_config reports a malformed seed for the first point
    points = []
    for i, combo in enumerate(itertools.product(*factors)):
        values = {}
        for part in combo:
            values.update(part)
        values.update(folded)
        # keep the file's axis order in names and manifest columns
        values = {k: values[k] for k in sweep.axis_keys}
        name = _point_name(i, values, short, sweep.batch_axes)
        overrides = list(values.items()) + [("output.name", name), ("output.showcase", None)]
        if sweep.seed_mode == "derived" and "dynamics.seed" not in values:
            # independent Monte-Carlo noise per point (common random numbers: seed_mode: common)
            overrides.append(("dynamics.seed", point_seed(base_seed, values)))
        try:
            cfg = load_config(sweep.base, overrides)
        except ConfigError as e:
            shown = ", ".join(f"{k}={fmt(v)}" for k, v in values.items())
            raise ConfigError(f"sweep point {i} ({shown}): {e}") from None
        points.append(Point(i, name, values, cfg))
    return points
