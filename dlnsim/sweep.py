"""Sweeps: many ordinary runs from one file, run by a local process pool or handed to a cluster engine.

A sweep is a base config and axes over dotted config keys. Every point of the grid is an ordinary
run folder (dlnsim.runner.run) under one sweep folder; dlnsim does not schedule anything itself:
points run in a local process pool (default), or as a SLURM job array through `submitit`
(`pip install dlnsim[slurm]`), whose local executor is how the cluster path is tested.

Sweep file (YAML):

    name: gibbs                       # optional (default: the file's stem); names the sweep folder
    base: langevin_base.yaml          # a config file (relative to this file) or an inline mapping
    axes:                             # the grid: every combination, first axis slowest
      network.depth: [2, 3]
      dynamics.beta: [0.5, 1, 2, 4]
    zip:                              # optional: groups of equal-length lists varied together;
      - {dynamics.step_size: [0.02, 0.01], dynamics.steps: [500, 1000]}   # each group is one axis
    batch_axes: [dynamics.beta]       # optional: fold these axes into each run's batch (far cheaper)
    executor:                         # defaults; the command line overrides kind and workers
      kind: local                     # local | slurm | submitit-local
      workers: null                   # local pool size / submitit-local concurrency (null: CPU cores)
      partition: null                 # slurm: --partition
      time: 60                        # slurm: minutes per point (or "H:MM:SS", "D-HH:MM:SS")
      cpus_per_task: 1                # also torch's thread count inside each job
      gpus_per_node: 0
      mem_gb: null
      array_parallelism: 64           # slurm: at most this many array tasks at once (--array=...%k)
      setup: []                       # slurm: shell lines before the job (module load, venv activate)
      slurm_additional_parameters: {} # slurm: any other sbatch option, e.g. {account: abc, qos: low}
    showcase: null                    # optional: copy the headline summary PNG to this path

Only dynamics.beta can be batched (the runner runs a list of betas side by side, trajectory b at
beta[b // ensemble]); every other axis changes what a run is and gives separate runs.

Sweep folder:

    sweep.yaml      the sweep with its base inlined (self-contained: `dlnsim sweep DIR` reruns it)
    manifest.csv    one row per point: index, run, <axis values>, status, wall_s, attempts, job, error
    runs/<point>/   ordinary run folders (config.yaml, meta.json, arrays.npz, ...)
    points/<point>.json   the sweep's record of each point (status, attempts, job id, error)
    figures/        dlnsim.sweep_plots.plot_sweep: summary across the axes (PNG + PDF); summary.csv: its numbers
    submitit/       job scripts and logs of the cluster executors

Statuses: pending, submitted (queued on the cluster), running, and the runner's completed,
interrupted, diverged, failed. Re-running a sweep into the same folder skips completed and
diverged points, resumes interrupted ones from their checkpoint and reruns failed ones; a failed
point is recorded with its one-line error and never stops the others. The manifest is rewritten
atomically (temporary file + rename) each time a point finishes.

Exit codes of `dlnsim sweep`: 0 every point completed or diverged; 1 some point failed; 2 a user
error (malformed sweep, one line); 128 + signal when interrupted (SIGINT 130, SIGTERM 143).
"""
from __future__ import annotations

import copy
import csv
import io
import itertools
import json
import math
import os
import re
import shutil
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field

import yaml

from .config import ConfigError, _did_you_mean, _fail, _show, absolutize_paths, load_config, read_yaml, set_key

__all__ = [
    "Sweep",
    "Point",
    "load_sweep",
    "run_sweep",
    "read_manifest",
    "run_point",
    "add_arguments",
    "main",
    "EXECUTORS",
    "BATCHABLE",
]

EXECUTORS = ("local", "slurm", "submitit-local")
# Config keys the runner can batch inside one run (a list of values run side by side).
BATCHABLE = ("dynamics.beta",)
TOP_KEYS = ("name", "base", "axes", "zip", "batch_axes", "executor", "showcase")
EXECUTOR_DEFAULTS = {
    "kind": "local",
    "workers": None,
    "partition": None,
    "time": 60,
    "cpus_per_task": 1,
    "gpus_per_node": 0,
    "mem_gb": None,
    "array_parallelism": 64,
    "setup": [],
    "slurm_additional_parameters": {},
}
SWEEP_FILE, MANIFEST, RUNS, POINTS, FIGURES, SUBMITIT = (
    "sweep.yaml", "manifest.csv", "runs", "points", "figures", "submitit",
)
FINAL = ("completed", "diverged")  # a rerun skips these
SLURM_LIVE = ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING")


# ---------------------------------------------------------------------------------------------
# the sweep file
# ---------------------------------------------------------------------------------------------


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

    def spec(self) -> dict:
        """What defines the points (compared when rerunning into an existing sweep folder)."""
        return {"base": self.base, "axes": self.axes, "zip": self.zip, "batch_axes": self.batch_axes}

    def to_yaml(self) -> str:
        body = {"name": self.name, **self.spec(), "executor": self.executor, "showcase": self.showcase}
        origin = "" if not self.source or os.path.basename(self.source) == SWEEP_FILE else f", from {self.source}"
        head = f"# dlnsim sweep '{self.name}'{origin}; base inlined. Rerun (skips finished points): dlnsim sweep <this folder>\n"
        return head + yaml.safe_dump(body, sort_keys=False, default_flow_style=None)

    @property
    def axis_keys(self) -> list[str]:
        return list(self.axes) + [k for g in self.zip for k in g]


def _base_from_file(path: str) -> dict:
    raw = read_yaml(path, "base config")
    return absolutize_paths(raw, os.path.dirname(os.path.abspath(path)))


def _axis_list(key: str, values, path: str) -> list:
    if not isinstance(key, str) or not key:
        _fail(path, f"axis names must be dotted config keys like dynamics.beta, got {_show(key)}")
    if not isinstance(values, list):
        _fail(f"{path}.{key}", f"must be a list of values, e.g. [0.5, 1, 2], got {_show(values)}")
    if not values:
        _fail(f"{path}.{key}", "is empty; give at least one value")
    return values


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
            _fail(str(k), f"unknown sweep key; {_did_you_mean(k, TOP_KEYS)}")

    name = data.get("name") or stem
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.=+\-]+", name):
        _fail("name", f"use letters, digits and _.=+- only (it names a folder), got {_show(name)}")

    if "base" not in data or data["base"] is None:
        _fail("base", "missing; give a config file (relative to the sweep file) or an inline config mapping")
    base = data["base"]
    if isinstance(base, str):
        base = _base_from_file(base if os.path.isabs(base) else os.path.join(here, base))
    elif not isinstance(base, dict):
        _fail("base", f"must be a config file path or a mapping of config sections, got {_show(base)}")
    base = copy.deepcopy(base)
    if ((base.get("study") or {}).get("variants")):
        _fail("base", "a sweep's base cannot be a study (study.variants); make the variants a sweep axis")

    axes = data.get("axes") or {}
    if not isinstance(axes, dict):
        _fail("axes", f"must be a mapping of dotted config keys to lists, got {_show(axes)}")
    axes = {k: _axis_list(k, v, "axes") for k, v in axes.items()}

    groups = data.get("zip") or []
    if isinstance(groups, dict):
        groups = [groups]
    if not isinstance(groups, list):
        _fail("zip", f"must be a list of groups {{key: [...], key: [...]}} of equal-length lists, got {_show(groups)}")
    zips = []
    for gi, g in enumerate(groups):
        p = f"zip[{gi}]"
        if not isinstance(g, dict) or not g:
            _fail(p, f"must be a mapping of dotted config keys to equal-length lists, got {_show(g)}")
        g = {k: _axis_list(k, v, p) for k, v in g.items()}
        lengths = {k: len(v) for k, v in g.items()}
        if len(set(lengths.values())) > 1:
            _fail(p, "lists of a zip group must have equal lengths, got " + ", ".join(f"{k}: {n}" for k, n in lengths.items()))
        zips.append(g)

    keys = list(axes) + [k for g in zips for k in g]
    if not keys:
        _fail("axes", "the sweep has no axes; give axes: {dotted.key: [values]} (and/or zip: groups)")
    seen = set()
    for k in keys:
        if k in seen:
            _fail(k, "appears on two axes; each config key can be swept once")
        seen.add(k)
        try:
            set_key({}, k, None)  # validates the key path (did-you-mean on a typo)
        except ConfigError as e:
            where = "axes" if k in axes else "zip"
            raise ConfigError(f"{where}.{e}") from None
        if k.split(".")[0] == "study":
            _fail(k, "a sweep cannot vary the study section")

    batch = data.get("batch_axes") or []
    if isinstance(batch, str):
        batch = [batch]
    if not isinstance(batch, list):
        _fail("batch_axes", f"must be a list of axis keys, got {_show(batch)}")
    for k in batch:
        if k not in BATCHABLE:
            _fail("batch_axes", f"{_show(k)} cannot be batched inside one run; batchable keys: {', '.join(BATCHABLE)}")
        if k not in axes:
            _fail("batch_axes", f"{k} must be one of the grid axes (axes:), not a zip key or a missing axis")

    executor = _check_executor(data.get("executor"))
    showcase = data.get("showcase")
    if showcase is not None and (not isinstance(showcase, str) or not showcase.endswith(".png")):
        _fail("showcase", f"must be a .png path (the summary figure is copied there), got {_show(showcase)}")

    sweep = Sweep(name, base, axes, zips, list(batch), executor, showcase, source)
    if validate:
        sweep.points = expand(sweep)
    return sweep


def _check_executor(ex) -> dict:
    if ex is None:
        ex = {}
    if not isinstance(ex, dict):
        _fail("executor", f"must be a mapping of executor options, got {_show(ex)}")
    for k in ex:
        if k not in EXECUTOR_DEFAULTS:
            _fail(f"executor.{k}", f"unknown option; {_did_you_mean(k, EXECUTOR_DEFAULTS)}")
    out = {**copy.deepcopy(EXECUTOR_DEFAULTS), **{k: v for k, v in ex.items() if v is not None or k in ("workers", "partition", "mem_gb")}}
    if out["kind"] not in EXECUTORS:
        _fail("executor.kind", f"unknown executor {_show(out['kind'])}; {_did_you_mean(out['kind'], EXECUTORS)}")
    for k in ("workers",):
        if out[k] is not None and (isinstance(out[k], bool) or not isinstance(out[k], int) or out[k] < 1):
            _fail(f"executor.{k}", f"must be a positive integer or null, got {_show(out[k])}")
    for k in ("cpus_per_task", "array_parallelism"):
        if isinstance(out[k], bool) or not isinstance(out[k], int) or out[k] < 1:
            _fail(f"executor.{k}", f"must be a positive integer, got {_show(out[k])}")
    if isinstance(out["gpus_per_node"], bool) or not isinstance(out["gpus_per_node"], int) or out["gpus_per_node"] < 0:
        _fail("executor.gpus_per_node", f"must be an integer >= 0, got {_show(out['gpus_per_node'])}")
    if out["mem_gb"] is not None and (isinstance(out["mem_gb"], bool) or not isinstance(out["mem_gb"], (int, float)) or out["mem_gb"] <= 0):
        _fail("executor.mem_gb", f"must be a positive number of GB or null, got {_show(out['mem_gb'])}")
    if out["partition"] is not None and not isinstance(out["partition"], str):
        _fail("executor.partition", f"must be a partition name, got {_show(out['partition'])}")
    out["time"] = _minutes(out["time"])
    if isinstance(out["setup"], str):
        out["setup"] = [out["setup"]]
    if not isinstance(out["setup"], list) or not all(isinstance(s, str) for s in out["setup"]):
        _fail("executor.setup", f"must be a list of shell lines, got {_show(out['setup'])}")
    extra = out["slurm_additional_parameters"]
    if not isinstance(extra, dict) or not all(isinstance(k, str) for k in extra):
        _fail("executor.slurm_additional_parameters", f"must be a mapping of sbatch options, e.g. {{account: abc}}, got {_show(extra)}")
    return out


def _minutes(v) -> int:
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
    _fail("executor.time", f"must be minutes (e.g. 90) or an sbatch time 'H:MM:SS' / 'D-HH:MM:SS', got {_show(v)}")


def _fmt(v) -> str:
    """A value as it appears in point names and the manifest."""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple, dict)) and not v:
        return "none"
    if isinstance(v, (list, tuple)):
        return "|".join(_fmt(x) for x in v)
    if isinstance(v, dict):
        return ";".join(f"{k}:{_fmt(x)}" for k, x in v.items())
    return str(v)


def _short_names(keys: list[str]) -> dict[str, str]:
    """dynamics.beta -> beta, unless two axes end the same (then the full key, dots as '-')."""
    last = [k.split(".")[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k.replace(".", "-")) for k, s in zip(keys, last)}


# How common axes are named in figure legends (math symbols of THEORY.md).
_SYMBOLS = {"network.depth": "N", "network.width": "d", "dynamics.beta": r"$\beta$", "dynamics.step_size": "h",
            "energy.alpha": r"$\alpha$", "dynamics.seed": "seed"}


def _point_name(index: int, values: dict, short: dict, batch: list) -> str:
    parts = [f"{short[k]}={_fmt(v)}" for k, v in values.items() if k not in batch]
    name = f"{index:03d}" + ("_" + "_".join(parts) if parts else "")
    name = re.sub(r"[^A-Za-z0-9_.=+\-]", "-", name)
    return name[:120]


def expand(sweep: Sweep) -> list[Point]:
    """The points of a sweep (grid over axes x zip groups; batch axes folded in), each validated."""
    grid_keys = [k for k in sweep.axes if k not in sweep.batch_axes]
    factors = [[{k: v} for v in sweep.axes[k]] for k in grid_keys]
    factors += [[{k: g[k][i] for k in g} for i in range(len(next(iter(g.values()))))] for g in sweep.zip]
    folded = {k: list(sweep.axes[k]) for k in sweep.batch_axes}
    short = _short_names(sweep.axis_keys)
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
        try:
            cfg = load_config(sweep.base, overrides)
        except ConfigError as e:
            shown = ", ".join(f"{k}={_fmt(v)}" for k, v in values.items())
            raise ConfigError(f"sweep point {i} ({shown}): {e}") from None
        points.append(Point(i, name, values, cfg))
    return points


# ---------------------------------------------------------------------------------------------
# point records and the manifest
# ---------------------------------------------------------------------------------------------


def _atomic_write(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}-{threading.get_ident()}"
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _record_path(sweep_dir: str, name: str) -> str:
    return os.path.join(sweep_dir, POINTS, f"{name}.json")


def _read_json(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _write_record(sweep_dir: str, name: str, **fields) -> dict:
    path = _record_path(sweep_dir, name)
    rec = _read_json(path) or {}
    rec.update(fields)
    _atomic_write(path, json.dumps(rec, indent=1, default=str))
    return rec


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    line = text.splitlines()[0] if text else ""
    if not isinstance(e, ValueError) or not line:
        line = f"{type(e).__name__}: {line}" if line else type(e).__name__
    return line[:400]


def _state_on_disk(sweep_dir: str, name: str) -> dict:
    """{status, wall_s, attempts, job, error, checkpoint} of a point, from its run folder and record."""
    from . import results as R

    run_dir = os.path.join(sweep_dir, RUNS, name)
    rec = _read_json(_record_path(sweep_dir, name)) or {}
    meta = _read_json(os.path.join(run_dir, R.META))
    out = {"attempts": rec.get("attempts", 0), "job": rec.get("job", ""), "error": "", "wall_s": rec.get("wall_s")}
    if meta is not None and meta.get("status"):
        status = meta["status"]
        out["wall_s"] = meta.get("wall_time_s", out["wall_s"])
        if status in ("failed", "diverged", "interrupted"):
            out["error"] = meta.get("message", "") or rec.get("error", "")
        if status == "running" and rec.get("status") == "failed":  # the process died mid-run
            status, out["error"] = "failed", rec.get("error", "")
    else:
        status = rec.get("status", "pending")
        out["error"] = rec.get("error", "")
        if status in ("running", "interrupted", "completed", "diverged"):  # no run folder behind it
            status = "pending"
    out["status"] = status
    out["checkpoint"] = os.path.exists(os.path.join(run_dir, R.CHECKPOINT))
    return out


def _manifest_rows(sweep: Sweep, states: dict[int, dict]) -> list[dict]:
    rows = []
    for p in sweep.points:
        st = states[p.index]
        row = {"index": p.index, "run": f"{RUNS}/{p.name}"}
        row.update({k: _fmt(v) for k, v in p.values.items()})
        wall = st.get("wall_s")
        row.update(status=st["status"], wall_s="" if wall is None else f"{float(wall):.2f}",
                   attempts=st.get("attempts", 0), job=st.get("job", ""), error=st.get("error", ""))
        rows.append(row)
    return rows


def _write_manifest(sweep_dir: str, sweep: Sweep, states: dict[int, dict]) -> None:
    rows = _manifest_rows(sweep, states)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    _atomic_write(os.path.join(sweep_dir, MANIFEST), buf.getvalue())


def read_manifest(sweep_dir: str) -> list[dict]:
    """The rows of <sweep_dir>/manifest.csv as dicts of strings."""
    path = os.path.join(sweep_dir, MANIFEST)
    if not os.path.exists(path):
        raise ConfigError(f"{sweep_dir}: not a sweep folder (no {MANIFEST})")
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------------------------
# running one point (in a pool worker or a cluster job)
# ---------------------------------------------------------------------------------------------


def run_point(task: dict) -> dict:
    """Run or resume one point; never raises for a failing run. Returns its state (see _state_on_disk).

    task: {sweep_dir, name, config (resolved), threads (or None)}. What happens depends on the
    folder: completed/diverged -> nothing; interrupted with a checkpoint -> resume; otherwise
    (new, failed, killed before its first checkpoint) -> a fresh run in an emptied folder.
    """
    import torch

    from .runner import resume, run

    sweep_dir, name = task["sweep_dir"], task["name"]
    if task.get("threads"):
        torch.set_num_threads(int(task["threads"]))
    run_dir = os.path.join(sweep_dir, RUNS, name)
    before = _state_on_disk(sweep_dir, name)
    if before["status"] in FINAL:
        return before
    attempts = before["attempts"] + 1
    job = os.environ.get("SLURM_ARRAY_JOB_ID", "")
    job = f"{job}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}" if job else os.environ.get("SLURM_JOB_ID", before["job"])
    _write_record(sweep_dir, name, status="running", attempts=attempts, pid=os.getpid(), host=socket.gethostname(),
                  job=job, started=_now(), error="")
    t0 = time.time()
    error = ""
    try:
        if before["status"] in ("interrupted", "running") and before["checkpoint"]:
            resume(run_dir, quiet=True)
        else:
            if os.path.exists(run_dir):
                shutil.rmtree(run_dir)
            run(task["config"], run_dir, quiet=True)
    except Exception as e:  # noqa: BLE001 -- a failing point must not stop the sweep
        error = _one_line(e)
    wall = time.time() - t0
    fields = dict(finished=_now(), pid=None)
    if error:
        fields.update(status="failed", error=error, wall_s=round((before["wall_s"] or 0.0) + wall, 3))
    else:
        fields.update(status="done")
    _write_record(sweep_dir, name, **fields)
    return _state_on_disk(sweep_dir, name)


def _now() -> str:
    import datetime as _dt

    return _dt.datetime.now().astimezone().isoformat(timespec="microseconds")


_WORKER_STOP = False


def _worker_init() -> None:
    """Pool worker: one torch thread, own process group, SIGINT/SIGTERM handled by the runner.

    The worker leaves the terminal's process group so that Ctrl-C reaches only the parent, which
    forwards exactly one SIGTERM (a second signal makes the runner stop without its checkpoint).
    Between points the worker ignores SIGINT and only notes SIGTERM; during a run the runner's
    handlers take over (it restores these afterwards).
    """
    import torch

    torch.set_num_threads(1)
    try:
        os.setpgrp()
    except OSError:
        pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def note(signum, frame):
        global _WORKER_STOP
        _WORKER_STOP = True

    signal.signal(signal.SIGTERM, note)


def _pool_task(task: dict) -> dict:
    if _WORKER_STOP:  # asked to stop between points: leave this one as it is
        return dict(_state_on_disk(task["sweep_dir"], task["name"]), skipped=True)
    return run_point(task)


class _PointJob:
    """The callable a submitit job runs: one point, requeued on a SLURM timeout or preemption.

    SLURM signals the job (SIGUSR2) 90 s before its time limit or on preemption; submitit's handler
    would requeue and sys.exit at once, mid-step. This callable takes that signal first: it stops
    the runner the way SIGTERM does (finish the step, write the checkpoint, status interrupted),
    then hands over to submitit's handler, which calls `checkpoint` (the same task again) and
    requeues the job; the requeued job resumes the point from its checkpoint.
    """

    def __call__(self, task: dict) -> dict:
        usr = getattr(signal, "SIGUSR2", None)
        previous = signal.getsignal(usr) if usr is not None and threading.current_thread() is threading.main_thread() else None
        if not callable(previous):  # not inside a submitit job
            return run_point(task)
        caught: list[int] = []

        def on_usr(signum, frame):
            caught.append(signum)
            os.kill(os.getpid(), signal.SIGTERM)  # the runner's handler: stop after this step

        signal.signal(usr, on_usr)
        try:
            state = run_point(task)
        finally:
            signal.signal(usr, previous)
        if caught:
            previous(caught[0], None)  # submitit: checkpoint() and requeue (exits this process)
        return state

    def checkpoint(self, task: dict):
        """submitit's requeue hook: rerun the same task (run_point resumes from the folder)."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, task)


# ---------------------------------------------------------------------------------------------
# executors
# ---------------------------------------------------------------------------------------------


class _Stop:
    """The sweep process's SIGINT/SIGTERM handler: the first signal asks the executor to stop
    (points in flight get one SIGTERM and write their checkpoints); a second one stops at once."""

    def __init__(self):
        self.signum: int | None = None
        self.force = None  # called on a second signal (kills the workers)

    def handler(self, signum, frame):
        if self.signum is not None:
            if self.force is not None:
                self.force()
            raise KeyboardInterrupt
        self.signum = signum

    def install(self) -> dict:
        if threading.current_thread() is not threading.main_thread():
            return {}
        return {s: signal.signal(s, self.handler) for s in (signal.SIGINT, signal.SIGTERM)}


class _Progress:
    def __init__(self, total: int, quiet: bool):
        self.total, self.done, self.quiet = total, 0, quiet

    def point(self, name: str, st: dict) -> None:
        self.done += 1
        if self.quiet:
            return
        wall = st.get("wall_s")
        msg = f"[{self.done}/{self.total}] {name}: {st['status']}" + (f" ({float(wall):.1f} s)" if wall is not None else "")
        if st["status"] != "completed" and st.get("error"):
            msg += f": {st['error']}"
        print(msg, flush=True)


def _multiprocessing_context():
    import multiprocessing as mp

    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        # torch is imported once in the fork server, not once per worker
        ctx.set_forkserver_preload(["dlnsim.runner"])
        return ctx
    return mp.get_context("spawn")


def _run_local(tasks: list[dict], workers: int, on_done, progress, stop: _Stop) -> None:
    """Run tasks in a process pool with at most `workers` points in flight.

    Only as many points as workers are submitted at a time, so nothing queued starts after a
    signal. A worker that dies (out of memory, a native crash) breaks the whole pool: the points in
    flight then are rerun one at a time in a fresh one-worker pool, so that only the culprit is
    marked failed, and the others continue.
    """
    queue, suspects = list(tasks), []
    while (queue or suspects) and stop.signum is None:
        if suspects:
            batch, n, isolate = [suspects.pop(0)], 1, True
        else:
            batch, n, isolate, queue = queue, workers, False, []
        leftover, crashed = _pool_round(batch, n, on_done, progress, stop)
        queue = leftover + queue
        for task in crashed:
            if isolate:
                st = _crashed(task)
                on_done(task, st)
                progress.point(task["name"], st)
            else:
                suspects.append(task)


def _pool_round(batch: list[dict], n: int, on_done, progress, stop: _Stop):
    """One pool over `batch`; returns (tasks never started, tasks in flight when the pool broke)."""
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    pool = ProcessPoolExecutor(max_workers=max(1, min(n, len(batch))), mp_context=_multiprocessing_context(),
                               initializer=_worker_init)
    stop.force = lambda: [p.kill() for p in list(getattr(pool, "_processes", {}).values())]
    todo, inflight, crashed, signalled = list(batch), {}, [], False
    try:
        while todo or inflight:
            if stop.signum is not None and not signalled:
                _stop_pool(pool)
                signalled, todo = True, []
            while todo and len(inflight) < n and stop.signum is None:
                task = todo.pop(0)
                inflight[pool.submit(_pool_task, task)] = task
                on_done(task, dict(task["_state"], status="running"))
            if not inflight:
                break
            done, _ = wait(list(inflight), timeout=0.5, return_when=FIRST_COMPLETED)
            for fut in done:
                task = inflight.pop(fut)
                try:
                    st = fut.result()
                except BrokenProcessPool:
                    crashed.append(task)
                    continue
                on_done(task, st)
                if not st.get("skipped"):
                    progress.point(task["name"], st)
            if crashed:
                crashed += list(inflight.values())
                inflight = {}
                break
    finally:
        stop.force = None
        pool.shutdown(wait=True, cancel_futures=True)
    return todo, crashed


def _crashed(task: dict) -> dict:
    msg = "the worker process died while running this point (killed, out of memory, or a crash in native code)"
    _write_record(task["sweep_dir"], task["name"], status="failed", error=msg, finished=_now(), pid=None)
    return _state_on_disk(task["sweep_dir"], task["name"])


def _stop_pool(pool) -> None:
    """Send each worker one SIGTERM: a running point stops after its current step and writes its
    checkpoint (status interrupted); an idle worker notes it and starts nothing new."""
    for p in list(getattr(pool, "_processes", {}).values()):
        try:
            if p.is_alive():
                os.kill(p.pid, signal.SIGTERM)
        except (OSError, ValueError):
            pass


def _check_engine(kind: str) -> None:
    """Fail before anything is written if the chosen engine cannot run here."""
    if kind == "local":
        return
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise ConfigError(f"--executor {kind} needs submitit: pip install 'dlnsim[slurm]' (or pip install submitit)") from None
    if kind == "slurm" and shutil.which("srun") is None:
        raise ConfigError("--executor slurm: no srun on this machine; run the sweep on a SLURM login node "
                          "(or use --executor local / submitit-local here)")


def _submitit_executor(kind: str, sweep_dir: str, ex: dict, name: str):
    try:
        import submitit
    except ImportError:
        raise ConfigError(f"--executor {kind} needs submitit: pip install 'dlnsim[slurm]' (or pip install submitit)") from None
    folder = os.path.join(sweep_dir, SUBMITIT)
    cluster = "slurm" if kind == "slurm" else "local"
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    except RuntimeError as e:  # e.g. no srun on this machine
        raise ConfigError(f"--executor {kind}: {_one_line(e)} (run it on a SLURM login node, or use local / submitit-local)") from None
    executor.update_parameters(**_submitit_parameters(ex, name))
    return executor


def _submitit_parameters(ex: dict, name: str) -> dict:
    """executor: options -> submitit AutoExecutor.update_parameters keywords (slurm_* apply on SLURM only)."""
    params = {"name": f"dlnsim-{name}"[:64], "timeout_min": ex["time"], "cpus_per_task": ex["cpus_per_task"],
              "slurm_array_parallelism": ex["array_parallelism"]}
    if ex["gpus_per_node"]:
        params["gpus_per_node"] = ex["gpus_per_node"]
    if ex["mem_gb"] is not None:
        params["mem_gb"] = ex["mem_gb"]
    if ex["partition"]:
        params["slurm_partition"] = ex["partition"]
    if ex["setup"]:
        params["slurm_setup"] = list(ex["setup"])
    if ex["slurm_additional_parameters"]:
        params["slurm_additional_parameters"] = dict(ex["slurm_additional_parameters"])
    return params


def _job_error(job) -> str | None:
    """None if the submitit job returned, else one line on why the job itself failed."""
    try:
        job.result()
        return None
    except Exception as e:  # noqa: BLE001 -- killed by the scheduler, timed out without requeue, ...
        lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
        return f"job {job.job_id} failed: {lines[-1] if lines else type(e).__name__}"[:400]


def _run_submitit(kind: str, sweep: Sweep, sweep_dir: str, tasks: list[dict], ex: dict, workers: int,
                  on_done, progress, stop: _Stop, detach: bool, quiet: bool) -> bool:
    """Submit the points as submitit jobs (SLURM: one job array) and wait for them; False if detached.

    submitit-local keeps at most `workers` jobs running. On a signal, local jobs are cancelled
    (submitit sends SIGINT; the runner checkpoints); SLURM jobs keep running on the cluster.
    """
    executor = _submitit_executor(kind, sweep_dir, ex, sweep.name)
    fn = _PointJob()
    jobs: dict = {}  # job -> task
    live = _reattach(kind, sweep_dir, tasks)
    for job, task in live:
        jobs[job] = task
    queue = [t for t in tasks if all(t is not lt for _, lt in live)]

    def submit(batch):
        out = executor.map_array(fn, batch) if kind == "slurm" else [executor.submit(fn, t) for t in batch]
        for job, task in zip(out, batch):
            jobs[job] = task
            _write_record(sweep_dir, task["name"], status="submitted", job=str(job.job_id))
            on_done(task, dict(task["_state"], status="submitted", job=str(job.job_id)))
        return out

    if kind == "slurm" and queue:
        out = submit(queue)
        queue = []
        if not quiet:
            ids = sorted({str(j.job_id).split("_")[0] for j in out})
            print(f"submitted {len(out)} points as SLURM job array {', '.join(ids)} "
                  f"(logs: {os.path.join(sweep_dir, SUBMITIT)})", flush=True)
    if detach:
        if not quiet:
            print(f"detached; rerun the same command to wait for and collect the results in {sweep_dir}", flush=True)
        return False
    poll, cancelled, deadline = (10.0 if kind == "slurm" else 0.2), False, None
    while jobs or queue:
        if stop.signum is not None:
            if kind == "slurm":
                if not quiet:
                    print("stopped waiting; the SLURM jobs keep running (scancel to stop them); rerun the same "
                          "command to collect the results", file=sys.stderr, flush=True)
                return True
            queue = []
            if not cancelled:
                for job in jobs:
                    try:
                        job.cancel(check=False)  # SIGINT: the runner writes its checkpoint and stops
                    except Exception:  # noqa: BLE001
                        pass
                cancelled, deadline = True, time.time() + 60
            if time.time() > deadline:
                return True
        while queue and len(jobs) < workers:
            submit([queue.pop(0)])
        finished = [j for j in jobs if j.done()]
        for job in finished:
            task = jobs.pop(job)
            err = _job_error(job)
            st = _state_on_disk(sweep_dir, task["name"])
            if err and st["status"] not in FINAL + ("interrupted",):
                _write_record(sweep_dir, task["name"], status="failed", error=err, finished=_now(), pid=None)
                st = _state_on_disk(sweep_dir, task["name"])
            on_done(task, st)
            progress.point(task["name"], st)
        if not finished:
            time.sleep(poll)
    return True


def _reattach(kind: str, sweep_dir: str, tasks: list[dict]) -> list:
    """SLURM jobs of an earlier invocation that are still queued or running (not resubmitted)."""
    if kind != "slurm":
        return []
    import submitit

    out = []
    for task in tasks:
        rec = _read_json(_record_path(sweep_dir, task["name"])) or {}
        if rec.get("status") in ("submitted", "running") and rec.get("job"):
            job = submitit.SlurmJob(folder=os.path.join(sweep_dir, SUBMITIT), job_id=str(rec["job"]))
            try:
                state = str(job.state)
            except Exception:  # noqa: BLE001 -- sacct unavailable: treat as finished
                state = "UNKNOWN"
            if state.split(" ")[0] in SLURM_LIVE:
                out.append((job, task))
    return out


# ---------------------------------------------------------------------------------------------
# the sweep
# ---------------------------------------------------------------------------------------------


def _prepare_folder(sweep: Sweep, sweep_dir: str) -> None:
    stored_path = os.path.join(sweep_dir, SWEEP_FILE)
    if os.path.exists(stored_path):
        stored = load_sweep(stored_path, validate=False)
        if stored.spec() != sweep.spec():
            diff = [k for k in sweep.spec() if stored.spec()[k] != sweep.spec()[k]]
            raise ConfigError(f"--out {sweep_dir}: holds a different sweep ({', '.join(diff)} differ); choose another "
                              "--out, or rerun the folder itself: dlnsim sweep " + sweep_dir)
    elif os.path.exists(sweep_dir) and (not os.path.isdir(sweep_dir) or os.listdir(sweep_dir)):
        raise ConfigError(f"--out {sweep_dir}: exists and is not a sweep folder; choose a new folder")
    for sub in ("", RUNS, POINTS):
        os.makedirs(os.path.join(sweep_dir, sub), exist_ok=True)
    _atomic_write(stored_path, sweep.to_yaml())


def _states(sweep: Sweep, sweep_dir: str) -> dict[int, dict]:
    """Every point's state from disk; 'running'/'submitted' left by a stopped sweep become
    interrupted (with a checkpoint to resume from) or pending."""
    states = {p.index: _state_on_disk(sweep_dir, p.name) for p in sweep.points}
    for st in states.values():
        if st["status"] in ("running", "submitted"):
            st["status"] = "interrupted" if st["checkpoint"] else "pending"
    return states


def run_sweep(sweep: Sweep, sweep_dir: str, *, executor: str | None = None, workers: int | None = None,
              quiet: bool = False, detach: bool = False, plot: bool = True) -> tuple[str, dict[str, int]]:
    """Run every point of `sweep` not yet finished in `sweep_dir`; returns (outcome, counts by status).

    outcome: 'done' (every point completed or diverged), 'failed' (some point failed),
    'interrupted:<signum>' (SIGINT/SIGTERM stopped the sweep; points in flight were checkpointed),
    'detached' (slurm with detach=True: submitted, not waited for).
    """
    ex = dict(sweep.executor)
    kind = executor or ex["kind"]
    if kind not in EXECUTORS:
        raise ConfigError(f"--executor: unknown executor {kind!r}; {_did_you_mean(kind, EXECUTORS)}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ConfigError(f"--workers: must be a positive integer, got {workers}")
    _check_engine(kind)
    _prepare_folder(sweep, sweep_dir)
    states = _states(sweep, sweep_dir)
    todo = [p for p in sweep.points if states[p.index]["status"] not in FINAL]
    threads = ex["cpus_per_task"] if kind != "local" else None
    tasks = [{"sweep_dir": os.path.abspath(sweep_dir), "name": p.name, "config": p.config, "threads": threads,
              "index": p.index, "_state": states[p.index]} for p in todo]
    n_workers = workers or ex["workers"] or os.cpu_count() or 1
    lock = threading.Lock()

    def on_done(task, st):
        with lock:
            st = {k: v for k, v in st.items() if k != "skipped"}
            states[task["index"]] = task["_state"] = st
            _write_manifest(sweep_dir, sweep, states)

    if not quiet:
        where = {"local": f"a local pool of {min(n_workers, max(1, len(todo)))} workers", "slurm": "SLURM (submitit)",
                 "submitit-local": f"submitit's local executor ({n_workers} at a time)"}[kind]
        done_before = len(sweep.points) - len(todo)
        print(f"sweep {sweep.name}: {len(sweep.points)} points, {len(todo)} to run"
              + (f" ({done_before} already finished)" if done_before else "") + f", on {where} -> {sweep_dir}", flush=True)
    _write_manifest(sweep_dir, sweep, states)

    stop, progress, outcome = _Stop(), _Progress(len(todo), quiet), None
    old = stop.install()
    try:
        if tasks and kind == "local":
            _run_local(tasks, n_workers, on_done, progress, stop)
        elif tasks and not _run_submitit(kind, sweep, sweep_dir, tasks, ex, n_workers, on_done, progress, stop,
                                         detach, quiet):
            outcome = "detached"
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if stop.signum is not None:
        outcome = f"interrupted:{stop.signum}"
    if outcome != "detached":
        states = _states(sweep, sweep_dir)
        _write_manifest(sweep_dir, sweep, states)
    counts: dict[str, int] = {}
    for st in states.values():
        counts[st["status"]] = counts.get(st["status"], 0) + 1
    if outcome is None:
        outcome = "failed" if counts.get("failed") else "done"
        if plot and (counts.get("completed") or counts.get("diverged")):
            try:
                from .sweep_plots import plot_sweep

                figs = plot_sweep(sweep_dir)
            except Exception as e:  # noqa: BLE001 -- a figure must not lose a finished sweep
                figs = []
                print(f"dlnsim: warning: the summary figure failed: {_one_line(e)}", file=sys.stderr)
            if figs and not quiet:
                print("figures: " + ", ".join(f for f in figs if f.endswith(".png")), flush=True)
    if not quiet:
        summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        print(f"sweep {sweep.name}: {summary} (manifest: {os.path.join(sweep_dir, MANIFEST)})", flush=True)
    return outcome, counts


# ---------------------------------------------------------------------------------------------
# command line (wired by dlnsim.cli: `dlnsim sweep ...`)
# ---------------------------------------------------------------------------------------------


def add_arguments(parser) -> None:
    parser.add_argument("sweep", metavar="SWEEP", help="sweep YAML file, or a sweep folder to rerun (its sweep.yaml)")
    parser.add_argument("--out", metavar="DIR", help="sweep folder (default: results/sweeps/<name>); rerunning into it "
                        "skips finished points and resumes interrupted ones")
    parser.add_argument("--executor", choices=EXECUTORS, help="where points run (default: executor.kind of the sweep, else local)")
    parser.add_argument("--workers", type=int, metavar="K", help="points run at once locally (default: executor.workers, else CPU cores)")
    parser.add_argument("--detach", action="store_true", help="slurm: submit the job array and return without waiting")
    parser.add_argument("--dry-run", action="store_true", help="validate and list the points; run nothing")
    parser.add_argument("--no-plot", action="store_true", help="skip the summary figures at the end")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress lines")


def main(args) -> int:
    """`dlnsim sweep` with parsed arguments; returns the exit code (user errors raise ConfigError)."""
    path = args.sweep
    out = args.out
    if os.path.isdir(path):
        if not os.path.exists(os.path.join(path, SWEEP_FILE)):
            raise ConfigError(f"{path}: is a folder without {SWEEP_FILE}; give a sweep YAML file or a sweep folder")
        out = out or path
        path = os.path.join(path, SWEEP_FILE)
    sweep = load_sweep(path)
    out = out or os.path.join("results", "sweeps", sweep.name)
    if args.detach and (args.executor or sweep.executor["kind"]) != "slurm":
        raise ConfigError("--detach only applies to --executor slurm (local points run in this process's pool)")
    if args.dry_run:
        short = _short_names(sweep.axis_keys)
        print(f"ok: sweep {sweep.name}: {len(sweep.points)} points -> {out}")
        for p in sweep.points:
            c = p.config
            print(f"  {p.name}: " + ", ".join(f"{short[k]}={_fmt(v)}" for k, v in p.values.items())
                  + f"  [{c['dynamics']['scheme']}, widths {c['network']['widths']}, {c['dynamics']['steps']} steps]")
        kind = args.executor or sweep.executor["kind"]
        if kind != "local":
            print(f"  submitit parameters: {_submitit_parameters(sweep.executor, sweep.name)}")
        return 0
    outcome, counts = run_sweep(sweep, out, executor=args.executor, workers=args.workers, quiet=args.quiet,
                                detach=args.detach, plot=not args.no_plot)
    if outcome.startswith("interrupted"):
        signum = int(outcome.split(":")[1])
        if not args.quiet:
            print(f"dlnsim: sweep interrupted; rerun the same command to continue ({out})", file=sys.stderr)
        return 128 + signum
    if outcome == "failed":
        print(f"dlnsim: error: {counts.get('failed', 0)} point(s) failed; see {os.path.join(out, MANIFEST)}", file=sys.stderr)
        return 1
    return 0
