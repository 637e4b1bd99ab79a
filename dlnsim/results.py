"""Result folders: one self-describing folder per run, written atomically, status last.

Layout of a run folder (`dlnsim run`):

    config.yaml     the fully resolved config (reproduces the run on its own)
    meta.json       versions, git commit, device, dtype, seed, times, command line, and `status`
                    (running -> completed | interrupted | diverged | failed), written LAST
    metrics.csv     tidy scalars (output.metrics): full, one row per save point x trajectory; summary,
                    one row per save point x quantity with ensemble n, mean, std, min, quantiles, max;
                    output.metrics_every k: only save points 0, k, 2k, ... and the last
    arrays.npz      t (T,), step (T,), observables (T, B, ...), beta (B,), theory curves
    checkpoint.pt   state, generator state and records so far (while a run can still be resumed)
    records/        only while a large run is under way or interrupted (output.records): the records
                    streamed to disk in .npy chunks (dlnsim.record_store); the checkpoint then
                    references them instead of holding them; folded into arrays.npz at the end
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
import warnings

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
    "write_arrays_streamed",
    "metric_columns",
    "metrics_mode",
    "thinned_saves",
    "save_checkpoint",
    "load_checkpoint",
    "environment",
    "now",
]

CONFIG, META, METRICS, ARRAYS, CHECKPOINT, FIGURES, RUNS, RECORDS = (
    "config.yaml", "meta.json", "metrics.csv", "arrays.npz", "checkpoint.pt", "figures", "runs", "records",
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
# output.metrics: auto writes one row per save point x trajectory up to this many rows (about 7 MB
# of CSV per scalar column set), the ensemble summary above it.
METRICS_FULL_MAX_ROWS = 100_000
SUMMARY_STATS = ("n", "mean", "std", "min", "q05", "q25", "median", "q75", "q95", "max")


def metric_columns(arrays: dict[str, np.ndarray], T: int | None = None) -> list[tuple[str, np.ndarray]]:
    """The tidy columns of a block of records: step, t, traj, [beta], then every (T, B) scalar and
    each entry of a small (T, B, k) vector (and balancedness_max), and theory curves (T, r) repeated
    for every trajectory; one row per save point x trajectory, save point major."""
    t, step = arrays["t"], arrays["step"]
    T = t.shape[0] if T is None else T
    B = next(v.shape[1] for k, v in arrays.items() if k not in ("t", "step", "beta") and v.ndim >= 2 and v.shape[0] == T)
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
    return cols


def metrics_mode(mode: str, T: int, B: int) -> str:
    """output.metrics resolved for a run of T save points x B trajectories: full | summary | off."""
    if mode != "auto":
        return mode
    return "full" if T * B <= METRICS_FULL_MAX_ROWS else "summary"


def _summary_lines(cols: list[tuple[str, np.ndarray]], T: int, B: int) -> list[str]:
    """Rows step, t, [beta], quantity, n, mean, std, min, q05, q25, median, q75, q95, max of a block:
    statistics over the trajectories (per beta when the batch holds several) of each column, at
    each save point; n counts the finite values the statistics are taken over."""
    by = dict(cols)
    step, t = by["step"].reshape(T, B)[:, 0], by["t"].reshape(T, B)[:, 0]
    beta = by["beta"].reshape(T, B)[0] if "beta" in by else None
    groups = [(None, np.ones(B, dtype=bool))] if beta is None else [(b, beta == b) for b in np.unique(beta)]
    lines = []
    for name, v in cols:
        if name in ("step", "t", "traj", "beta"):
            continue
        v = v.reshape(T, B).astype(np.float64)
        for b, sel in groups:
            x = np.where(np.isfinite(v[:, sel]), v[:, sel], np.nan)
            n = np.isfinite(x).sum(axis=1)
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: NaN statistics
                q = np.nanquantile(x, [0.05, 0.25, 0.5, 0.75, 0.95], axis=1)
                stats = [np.nanmean(x, axis=1), np.nanstd(x, axis=1, ddof=1) if x.shape[1] > 1 else np.full(T, np.nan),
                         np.nanmin(x, axis=1), q[0], q[1], q[2], q[3], q[4], np.nanmax(x, axis=1)]
            for i in range(T):
                head = [f"{int(step[i])}", f"{t[i]:.17g}"] + ([] if b is None else [f"{b:.17g}"])
                lines.append(",".join(head + [name, f"{int(n[i])}"] + [f"{s[i]:.10g}" for s in stats]))
    return lines


def _row_blocks(arrays: dict[str, np.ndarray], rows: int):
    """The records split into blocks of save points (every (T, ...) array sliced along its first axis)."""
    T = arrays["t"].shape[0]
    for a in range(0, max(T, 1), rows):
        yield {k: (v[a:a + rows] if k != "beta" and v.shape[:1] == (T,) else v) for k, v in arrays.items()}


def thinned_saves(T: int, every: int) -> np.ndarray:
    """Indices of the save points metrics.csv keeps with output.metrics_every = k: 0, k, 2k, ... and the last."""
    keep = np.arange(0, T, max(1, every))
    return keep if T == 0 or keep[-1] == T - 1 else np.append(keep, T - 1)


def _thin(block: dict[str, np.ndarray], offset: int, total: int, every: int) -> dict[str, np.ndarray]:
    """The rows of a block of save points (global indices offset..offset+T-1 of total) that thinning keeps."""
    T = block["t"].shape[0]
    g = np.arange(offset, offset + T)
    sel = (g % every == 0) | (g == total - 1)
    return {k: (v[sel] if k != "beta" and v.shape[:1] == (T,) else v) for k, v in block.items()}


def _block_rows(arrays: dict[str, np.ndarray]) -> int:
    """Save points per block: about 10^6 rows (save points x trajectories) at a time."""
    return max(1, 1_000_000 // max(1, next(v.shape[1] for k, v in arrays.items() if k not in ("t", "step", "beta") and v.ndim >= 2)))


def _thinned_blocks(blocks, total: int, every: int):
    offset = 0
    for block in blocks:
        T = block["t"].shape[0]
        yield _thin(block, offset, total, every)
        offset += T


def write_metrics(run_dir: str, arrays: dict[str, np.ndarray] | None = None, *, mode: str = "full", blocks=None,
                  every: int = 1, total: int | None = None) -> str | None:
    """metrics.csv (mode full: one row per save point x trajectory, columns of `metric_columns`;
    summary: one row per save point x quantity [x beta], the columns SUMMARY_STATS over the
    trajectories; off: no file). The records come as `arrays` or as an iterable of blocks of save
    points (`blocks`, e.g. from a record store, each a dict of arrays sliced along the save axis
    plus beta), written one block at a time. every = k > 1 (output.metrics_every) keeps the save
    points 0, k, 2k, ... and the last (`thinned_saves`; total: the number of save points, needed
    with blocks); arrays.npz always keeps them all. Returns the path written, or None."""
    path = os.path.join(run_dir, METRICS)
    if every > 1:
        if arrays is not None:
            total = arrays["t"].shape[0]
        if total is None:
            raise ValueError("write_metrics: thinning blocks needs total (the number of save points)")
        blocks = _thinned_blocks(blocks if blocks is not None else _row_blocks(arrays, _block_rows(arrays)), total, every)
        arrays = None
    if mode == "off":
        if os.path.exists(path):
            os.remove(path)
        return None
    if blocks is None:
        blocks = _row_blocks(arrays, _block_rows(arrays))

    def write(f):
        first = True
        for block in blocks:
            T = block["t"].shape[0]
            if T == 0:
                continue
            cols = metric_columns(block)
            B = cols[2][1].shape[0] // T
            if mode == "summary":
                if first:
                    f.write(",".join(["step", "t"] + (["beta"] if "beta" in block else []) + ["quantity", *SUMMARY_STATS]) + "\n")
                lines = _summary_lines(cols, T, B)
                if lines:
                    f.write("\n".join(lines) + "\n")
            else:
                data = np.column_stack([c[1].astype(np.float64) for c in cols])
                fmt = ["%d", "%.17g", "%d"] + ["%.10g"] * (len(cols) - 3)
                np.savetxt(f, data, fmt=fmt, delimiter=",", header=",".join(c[0] for c in cols) if first else "", comments="")
            first = False

    _atomic(path, write)
    return path


def write_arrays_streamed(run_dir: str, store, extra: dict[str, np.ndarray]) -> None:
    """arrays.npz from a record store (dlnsim.record_store) and small extra arrays (beta, theory
    curves), one chunk in memory at a time; read like any arrays.npz."""
    from .record_store import write_npz_streamed

    write_npz_streamed(os.path.join(run_dir, ARRAYS), store, extra, order=["t", "step"])


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
    for sub in (folder, os.path.join(folder, FIGURES), os.path.join(folder, RECORDS)):
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
