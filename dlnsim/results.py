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
import re
import subprocess
import sys

import numpy as np
import yaml

from ._io import atomic_write
from ._version import __version__

__all__ = [
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
    """The folder's config.yaml, read as strict YAML (a user may have edited it); FileRefused (a
    ValueError, one line) if it is not a readable YAML mapping."""
    from .safe_io import FileRefused, load_yaml_file

    data = load_yaml_file(os.path.join(run_dir, CONFIG), "run config")
    if not isinstance(data, dict):
        raise FileRefused(f"{os.path.join(run_dir, CONFIG)}: must be a mapping of sections, got {type(data).__name__}")
    return data


def read_meta(run_dir: str) -> dict:
    """meta.json as a dict; ValueError (one line, naming the file) if it is not a JSON object."""
    path = os.path.join(run_dir, META)
    with open(path, encoding="utf-8") as f:
        try:
            meta = json.load(f)
        except ValueError as e:
            raise ValueError(f"{path}: not valid JSON ({str(e).splitlines()[0]})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: must be a JSON object, got {type(meta).__name__}")
    return meta


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
    """Write payload atomically as an .npz of tensors plus a JSON tree (dlnsim.safe_io.save_tree:
    no pickle, so loading it can run no code). payload["scheme_private"] (scheme caches) is dropped
    if it holds an object the format cannot store (a resumed run then recomputes the caches:
    correct, but not bit-identical)."""
    from .safe_io import save_tree

    path = os.path.join(run_dir, CHECKPOINT)

    def write(p):
        def w(f):
            save_tree(f, p)
            _test_enospc()
        return w

    try:
        _atomic(path, write(payload), mode="wb")
    except TypeError:
        if not payload.get("scheme_private"):
            raise
        _atomic(path, write(dict(payload, scheme_private={})), mode="wb")


_CHECKPOINTS_WRITTEN = [0]


def _test_enospc() -> None:
    """Test hook DLNSIM_TEST_ENOSPC_AFTER_CHECKPOINTS=k: checkpoint writes after the k-th fail as on a
    full disk (after their bytes went to the temporary file), for the suite's full-disk test."""
    k = os.environ.get("DLNSIM_TEST_ENOSPC_AFTER_CHECKPOINTS")
    if k is None:
        return
    _CHECKPOINTS_WRITTEN[0] += 1
    if _CHECKPOINTS_WRITTEN[0] > int(k):
        import errno

        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# Keys that do not change the numbers of a run: editing them between interrupt and resume is fine.
_VOLATILE = {"output": None, "device": ("threads", "max_memory_gb"), "study": None}


def run_identity(cfg: dict) -> dict:
    """What a checkpoint must match to be resumed: a hash of the resolved config (without the keys
    that do not change the numbers: output.*, device.threads, device.max_memory_gb) and the dlnsim
    version that wrote it."""
    import hashlib

    core = {}
    for sec, body in cfg.items():
        if sec in _VOLATILE and _VOLATILE[sec] is None:
            continue
        drop = _VOLATILE.get(sec) or ()
        core[sec] = {k: v for k, v in (body or {}).items() if k not in drop} if isinstance(body, dict) else body
    text = json.dumps(core, sort_keys=True, default=str, separators=(",", ":"))
    return {"config_sha256": hashlib.sha256(text.encode()).hexdigest(), "dlnsim": __version__}


_TEMP = re.compile(r".+\.tmp\d+(-\d+)?$")


def clean_temp_files(folder: str) -> list[str]:
    """Remove the temporary files of interrupted atomic writes (`<name>.tmp<pid>[-<thread>]`) in a
    run folder and its figures/; call it only while holding the folder's lock. Returns their names."""
    removed = []
    for sub in (folder, os.path.join(folder, FIGURES)):
        try:
            names = os.listdir(sub)
        except OSError:
            continue
        for n in names:
            if _TEMP.fullmatch(n):
                try:
                    os.remove(os.path.join(sub, n))
                    removed.append(n)
                except OSError:
                    pass
    return removed


def load_checkpoint(run_dir: str) -> dict | None:
    """The payload saved by save_checkpoint, or None; a file that is not a dlnsim checkpoint (a
    pickle included: never unpickled) raises safe_io.FileRefused (a ValueError, one line)."""
    from .safe_io import FileRefused, load_tree

    path = os.path.join(run_dir, CHECKPOINT)
    if not os.path.exists(path):
        return None
    tree = load_tree(path, "checkpoint")
    if not isinstance(tree, dict):
        raise FileRefused(f"{path}: not a dlnsim checkpoint (its top level is not a mapping)")
    return tree


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
