"""Result folders: one self-describing folder per run, written atomically, status last.

Layout of a run folder (`dlnsim run`):

    config.yaml     the fully resolved config (reproduces the run on its own)
    meta.json       versions, git commit, device, dtype, seed, times, command line, and `status`
                    (running -> completed | interrupted | diverged | failed), written LAST
    metrics.csv     tidy scalars: one row per save point x trajectory
    arrays.npz      t (T,), step (T,), observables (T, B, ...), beta (B,), theory curves
    checkpoint.pt   state, generator state and records so far (while a run can still be resumed)
    figures/        PNG and PDF

A study folder (a config with study.variants) holds config.yaml, meta.json (with "study": true
and the status of each variant), figures/ and runs/<label>/, each a run folder.

Every file is written to a temporary name and renamed, so an interrupted write never leaves a
truncated file under the final name.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys

import numpy as np
import yaml

from ._io import atomic_write
from ._version import __version__
from .lifecycle import Status

__all__ = [
    "STATUSES",
    "make_run_dir",
    "write_config",
    "read_config",
    "read_meta",
    "write_meta",
    "update_meta",
    "write_arrays",
    "read_arrays",
    "write_metrics",
    "save_checkpoint",
    "load_checkpoint",
    "environment",
    "now",
]

STATUSES = (Status.RUNNING, Status.COMPLETED, Status.INTERRUPTED, Status.DIVERGED, Status.FAILED)  # of a run folder
CONFIG, META, METRICS, ARRAYS, CHECKPOINT, FIGURES, RUNS = (
    "config.yaml", "meta.json", "metrics.csv", "arrays.npz", "checkpoint.pt", "figures", "runs",
)


def now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


# The one atomic writer (dlnsim._io); the short name is what the writers below call.
_atomic = atomic_write


def make_run_dir(parent: str, name: str) -> str:
    """Create and return <parent>/<name>-<YYYYmmdd-HHMMSS>, with -2, -3, ... if taken (never reused)."""
    os.makedirs(parent, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = os.path.join(parent, f"{name}-{stamp}")
    path, k = base, 1
    while True:
        try:
            os.makedirs(path)
            return path
        except FileExistsError:
            k += 1
            path = f"{base}-{k}"


def write_config(run_dir: str, cfg: dict) -> None:
    _atomic(os.path.join(run_dir, CONFIG), lambda f: yaml.safe_dump(cfg, f, sort_keys=False, default_flow_style=None))


def read_config(run_dir: str) -> dict:
    with open(os.path.join(run_dir, CONFIG), encoding="utf-8") as f:
        return yaml.safe_load(f)


def read_meta(run_dir: str) -> dict:
    with open(os.path.join(run_dir, META), encoding="utf-8") as f:
        return json.load(f)


def write_meta(run_dir: str, meta: dict) -> None:
    _atomic(os.path.join(run_dir, META), lambda f: json.dump(meta, f, indent=2, default=str))


def update_meta(run_dir: str, **fields) -> dict:
    """Merge `fields` into meta.json; `status`, if given, is written as the last key."""
    meta = read_meta(run_dir)
    status = fields.pop("status", None)
    meta.update(fields)
    if status is not None:
        meta.pop("status", None)
        meta["status"] = status
    write_meta(run_dir, meta)
    return meta


def write_arrays(run_dir: str, arrays: dict[str, np.ndarray]) -> None:
    _atomic(os.path.join(run_dir, ARRAYS), lambda f: np.savez(f, **arrays), mode="wb")


def read_arrays(run_dir: str) -> dict[str, np.ndarray]:
    with np.load(os.path.join(run_dir, ARRAYS)) as z:
        return {k: z[k] for k in z.files}


# Vector observables (T, B, k) with k up to this many entries get one column per entry.
_MAX_COLUMNS = 8


def write_metrics(run_dir: str, arrays: dict[str, np.ndarray]) -> None:
    """metrics.csv: columns step, t, traj, [beta], then every (T, B) scalar and small (T, B, k) vector."""
    t, step = arrays["t"], arrays["step"]
    T = t.shape[0]
    B = next(v.shape[1] for k, v in arrays.items() if v.ndim >= 2 and v.shape[0] == T)
    cols: list[tuple[str, np.ndarray]] = [
        ("step", np.repeat(step, B)),
        ("t", np.repeat(t, B)),
        ("traj", np.tile(np.arange(B), T)),
    ]
    if "beta" in arrays:
        cols.append(("beta", np.tile(arrays["beta"], T)))
    for k, v in arrays.items():
        if k in ("t", "step", "beta", "X") or v.shape[:1] != (T,):
            continue
        if v.ndim == 2 and v.shape[1] == B:
            cols.append((k, v.reshape(-1)))
        elif v.ndim == 3 and v.shape[1] == B and v.shape[2] <= _MAX_COLUMNS:
            if k == "balancedness":
                cols.append(("balancedness_max", v.max(axis=2, initial=0.0).reshape(-1)))
            cols += [(f"{k}_{i + 1}", v[:, :, i].reshape(-1)) for i in range(v.shape[2])]
        elif v.ndim == 2 and v.shape[1] <= _MAX_COLUMNS:  # theory curves (T, r): same for every traj
            cols += [(f"{k}_{i + 1}", np.repeat(v[:, i], B)) for i in range(v.shape[1])]
    names = [c[0] for c in cols]
    data = np.column_stack([c[1].astype(np.float64) for c in cols])
    fmt = ["%d", "%.17g", "%d"] + ["%.10g"] * (len(cols) - 3)

    def write(f):
        np.savetxt(f, data, fmt=fmt, delimiter=",", header=",".join(names), comments="")

    _atomic(os.path.join(run_dir, METRICS), write)


def save_checkpoint(run_dir: str, payload: dict) -> None:
    """torch.save(payload) atomically; payload["scheme_private"] (scheme caches) is dropped if it
    cannot be pickled (a resumed run then recomputes the caches: correct, but not bit-identical)."""
    import pickle

    import torch

    path = os.path.join(run_dir, CHECKPOINT)
    try:
        _atomic(path, lambda f: torch.save(payload, f), mode="wb")
    except (pickle.PicklingError, TypeError, AttributeError):
        if not payload.get("scheme_private"):
            raise
        _atomic(path, lambda f: torch.save(dict(payload, scheme_private={}), f), mode="wb")


def load_checkpoint(run_dir: str) -> dict | None:
    import torch

    path = os.path.join(run_dir, CHECKPOINT)
    if not os.path.exists(path):
        return None
    return torch.load(path, map_location="cpu", weights_only=False)


def _git_commit() -> str | None:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(
            ["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def _command() -> str | None:
    if not sys.argv or not sys.argv[0]:
        return None
    prog = sys.argv[0]
    if prog.endswith(os.path.join("dlnsim", "__main__.py")):
        prog = "python -m dlnsim"
    elif os.path.basename(prog) == "dlnsim":
        prog = "dlnsim"
    return " ".join([prog] + sys.argv[1:])


def environment() -> dict:
    """Versions and provenance for meta.json."""
    import torch

    return {
        "dlnsim": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": _git_commit(),
        "command": _command(),
    }
