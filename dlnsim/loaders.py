"""Working with results: load a run folder or a sweep folder as arrays, config, meta and a tidy table.

    run = dlnsim.load_run("results/saxe_modes-20260101-120000")
    run.arrays["singular_values"]        # (T, B, r) numpy; run["loss"] is the same as run.arrays["loss"]
    run.config, run.meta, run.status     # the resolved config.yaml, meta.json, meta["status"]
    run.table()                          # one row per save point x trajectory (pandas.DataFrame if
                                         # pandas is installed, else a dict of numpy columns)
    sweep = dlnsim.load_sweep("results/sweeps/depth-20260101-120000")
    sweep.points                         # [Point(index, name, values, status, run)], run None if unfinished
    sweep.table()                        # every finished point's rows, with its axis values as columns

Nothing is unpickled: arrays.npz is read with allow_pickle=False (an object array is refused),
YAML with the strict safe loader (dlnsim.safe_io), JSON and CSV as text. The table has the
columns of a full metrics.csv (dlnsim.results.metric_columns), whatever output.metrics wrote.
A study folder (study.variants) holds one run folder per variant under runs/<label>/.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field

import numpy as np

from . import results as R
from .safe_io import load_yaml_file
from .sweep.spec import MANIFEST, SWEEP_FILE

__all__ = ["load_run", "load_sweep", "Run", "Sweep", "Point"]

# manifest.csv columns that are not axis values
_MANIFEST_BOOKKEEPING = ("index", "run", "seed", "status", "wall_s", "attempts", "job", "error")


def _frame(columns: dict[str, np.ndarray], as_dataframe: bool | None):
    """A pandas DataFrame of the columns when pandas is installed (or as_dataframe is True), else the dict."""
    if as_dataframe is False:
        return columns
    try:
        import pandas as pd
    except ImportError:
        if as_dataframe:
            raise ImportError("table(as_dataframe=True) needs pandas; install it, or call table() for a dict of columns") from None
        return columns
    return pd.DataFrame(columns)


def _read_arrays(run_dir: str) -> dict[str, np.ndarray]:
    path = os.path.join(run_dir, R.ARRAYS)
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except ValueError as e:  # an object array: np.load refuses to unpickle it
        raise ValueError(f"{path}: holds pickled (object) arrays, which dlnsim never loads ({str(e).splitlines()[0]})") from None
    except (OSError, EOFError) as e:
        raise ValueError(f"{path}: not a readable .npz ({e})") from None


@dataclass
class Run:
    """One run folder: arrays (arrays.npz), config (config.yaml), meta (meta.json)."""
    path: str
    config: dict
    meta: dict
    arrays: dict[str, np.ndarray]

    @property
    def status(self) -> str | None:
        return self.meta.get("status")

    def __getitem__(self, key: str) -> np.ndarray:
        return self.arrays[key]

    def keys(self):
        return self.arrays.keys()

    def columns(self) -> dict[str, np.ndarray]:
        """The tidy columns (one entry per save point x trajectory) as a dict of numpy arrays."""
        if not self.arrays or "t" not in self.arrays or self.arrays["t"].shape[0] == 0:
            return {}
        return dict(R.metric_columns(self.arrays))

    def table(self, as_dataframe: bool | None = None):
        """One row per save point x trajectory: step, t, traj, [beta], every scalar observable, each
        entry of small vector observables, theory curves. A pandas DataFrame when pandas is installed
        (as_dataframe None), else a dict of numpy columns; as_dataframe False: always the dict."""
        return _frame(self.columns(), as_dataframe)


def load_run(run_dir: str) -> Run:
    """The run folder `run_dir` (written by `dlnsim run`, a study variant, or a sweep point)."""
    run_dir = os.fspath(run_dir)
    if not os.path.isfile(os.path.join(run_dir, R.META)):
        raise ValueError(f"{run_dir}: not a dlnsim result folder (no meta.json)")
    meta = R.read_meta(run_dir)
    if meta.get("study"):
        raise ValueError(f"{run_dir}: a study folder; load one of its variants: load_run('{os.path.join(run_dir, R.RUNS)}/<label>')")
    config = R.read_config(run_dir)
    if not os.path.exists(os.path.join(run_dir, R.ARRAYS)):
        raise ValueError(f"{run_dir}: no {R.ARRAYS} (status {meta.get('status')}): the run recorded nothing yet")
    return Run(run_dir, config, meta, _read_arrays(run_dir))


@dataclass
class Point:
    """A sweep point: its index, folder name, axis values, status, and its Run (None if it has no arrays)."""
    index: int
    name: str
    values: dict
    status: str
    run: Run | None = None


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text, text)


@dataclass
class Sweep:
    """A sweep folder: spec (sweep.yaml), points (manifest.csv order), axes (names of the axis columns)."""
    path: str
    spec: dict
    axes: list[str]
    points: list[Point] = field(default_factory=list)

    @property
    def runs(self) -> dict[str, Run]:
        """The points that have arrays, by folder name."""
        return {p.name: p.run for p in self.points if p.run is not None}

    def columns(self) -> dict[str, np.ndarray]:
        """The tidy columns of every point with arrays, stacked, led by point and the axis values."""
        parts = []
        for p in self.points:
            if p.run is None:
                continue
            cols = p.run.columns()
            if not cols:
                continue
            n = len(next(iter(cols.values())))
            lead = {"point": np.full(n, p.name, dtype=object)}
            lead.update({a: np.full(n, p.values.get(a)) for a in self.axes})
            parts.append({**lead, **cols})
        if not parts:
            return {}
        names = list(dict.fromkeys(k for part in parts for k in part))  # union, first-seen order
        out = {}
        for k in names:
            chunks = []
            for part in parts:
                n = len(part["point"])
                chunks.append(part[k] if k in part else np.full(n, np.nan))
            out[k] = np.concatenate(chunks) if all(c.dtype != object for c in chunks) else np.concatenate([c.astype(object) for c in chunks])
        return out

    def table(self, as_dataframe: bool | None = None):
        """All finished points' rows (Run.table) with columns point and one per axis first; a column
        a point does not have (e.g. beta) is NaN there. DataFrame with pandas, else a dict of columns."""
        return _frame(self.columns(), as_dataframe)


def load_sweep(sweep_dir: str) -> Sweep:
    """The sweep folder `sweep_dir` (written by `dlnsim sweep`): every point of its manifest, each
    finished one (completed, diverged, interrupted with arrays) loaded with load_run."""
    sweep_dir = os.fspath(sweep_dir)
    path = os.path.join(sweep_dir, MANIFEST)
    if not os.path.isfile(path):
        raise ValueError(f"{sweep_dir}: not a sweep folder (no {MANIFEST})")
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    spec = load_yaml_file(os.path.join(sweep_dir, SWEEP_FILE), "sweep file") if os.path.exists(os.path.join(sweep_dir, SWEEP_FILE)) else {}
    axes = [k for k in (rows[0] if rows else {}) if k not in _MANIFEST_BOOKKEEPING]
    points = []
    for row in rows:
        run_dir = os.path.join(sweep_dir, row["run"])
        if os.path.commonpath([os.path.realpath(run_dir), os.path.realpath(sweep_dir)]) != os.path.realpath(sweep_dir):
            raise ValueError(f"{path}: point {row.get('index')} names a folder outside the sweep ({row['run']!r})")
        run = None
        if os.path.exists(os.path.join(run_dir, R.ARRAYS)) and os.path.exists(os.path.join(run_dir, R.META)):
            run = load_run(run_dir)
        points.append(Point(int(row["index"]), os.path.basename(row["run"]), {a: _value(row[a]) for a in axes},
                            row.get("status", ""), run))
    return Sweep(sweep_dir, spec if isinstance(spec, dict) else {}, axes, points)
