"""`dlnsim run CONFIG --bias-check`: measure the discretisation bias of one's own run.

After the run at step h, the same config (same seed, so the same initial states) is run again at
h/2 over the same time span, into `<run folder>/bias_check_h2/`. For each headline moment m -- for
runs that sample a Gibbs law the stationary means over the last half of the run (E||X||^2, E s_max,
E s_min, P(det X > 0)), per beta; otherwise the ensemble means of the loss and s_max, s_min at the final
time -- it reports m(h), m(h/2), their difference and the Richardson extrapolation to h -> 0,

    m0 = m(h/2) + (m(h/2) - m(h)) / (2^p - 1),   se(m0) = sqrt((c se_{h/2})^2 + ((c-1) se_h)^2), c = 2^p/(2^p - 1),

with p the weak order of the scheme (1 for the Langevin schemes, the RLE and gradient descent; 4 for
the RK4 flows) and standard errors from independent trajectories (dlnsim.stats.richardson). Where a
Gibbs reference exists (dlnsim.run_theory.gibbs_reference), its value and the z-score of m0 against
it are added. Written to `<run folder>/bias_check.csv` and printed as a table.
"""
from __future__ import annotations

import copy
import math
import os

import numpy as np
import torch

from . import results as R
from ._io import atomic_write
from .config import validate
from .dynamics import SCHEMES
from .lifecycle import Status
from .reference import HEADLINE
from .run_theory import gibbs_reference, gibbs_setting
from .runner import run
from .stats import independent_chain_stderr, richardson

__all__ = ["bias_check", "moments", "format_table", "SUBFOLDER", "COLUMNS"]

SUBFOLDER = "bias_check_h2"
COLUMNS = ("beta", "observable", "value_h", "se_h", "value_h2", "se_h2", "difference", "extrapolated",
           "se_extrapolated", "order", "reference", "z_extrapolated")


def _order(cfg: dict) -> int:
    scheme = SCHEMES[cfg["dynamics"]["scheme"]]
    if scheme.stochastic or cfg["dynamics"]["scheme"] == "gradient_descent":
        return 1
    return 1 if cfg["dynamics"].get("options", {}) and cfg["dynamics"]["options"].get("method") == "dopri5" else 4


def moments(cfg: dict, a: dict) -> list[tuple[float | None, str, float, float]]:
    """[(beta, name, mean, stderr)]: the headline moments of a run's arrays (module docstring)."""
    out = []
    S = a["singular_values"]
    B = S.shape[1]
    betas = np.atleast_1d(a["beta"]) if "beta" in a else np.full(B, np.nan)
    stationary = gibbs_setting(cfg)
    start = len(a["t"]) // 2 if stationary else len(a["t"]) - 1
    cols = ([(S[start:] ** 2).sum(-1), S[start:, :, 0], S[start:, :, -1]]
            + ([(a["det_sign"][start:] > 0).astype(float)] if "det_sign" in a else []))
    names = list(HEADLINE[:len(cols)])
    if not stationary:
        cols = [a["loss"][start:], S[start:, :, 0], S[start:, :, -1]]
        names = ["E(X(T))", "s_max(T)", "s_min(T)"]
    V = torch.as_tensor(np.stack(cols, -1))  # (T, B, k)
    for b in np.unique(betas):
        idx = np.flatnonzero(betas == b) if not np.isnan(b) else np.arange(B)
        v = V[:, idx]
        v = v[:, torch.isfinite(v).all(0).all(-1)]
        mean = v.mean((0, 1))
        se = independent_chain_stderr(v) if v.shape[1] >= 2 else torch.full_like(mean, float("nan"))
        for k, name in enumerate(names):
            out.append((None if np.isnan(b) else float(b), name, float(mean[k]), float(se[k])))
        if np.isnan(b):
            break
    return out


def bias_check(cfg: dict, run_dir: str, *, quiet: bool = False) -> tuple[list[dict], str]:
    """Rerun cfg at h/2 into run_dir/bias_check_h2, compare with the run in run_dir; returns (rows, csv path)."""
    half = copy.deepcopy(cfg)
    dyn = half["dynamics"]
    dyn["step_size"] = cfg["dynamics"]["step_size"] / 2
    dyn["steps"], dyn["time"] = 2 * cfg["dynamics"]["steps"], None
    half["observers"]["every"] = 2 * cfg["observers"]["every"]
    half["output"]["figures"] = False
    half["output"]["showcase"] = None
    half["output"]["name"] = f"{cfg['output']['name']}-h2"
    half = validate(half)
    sub = os.path.join(run_dir, SUBFOLDER)
    out = run(half, sub, quiet=quiet)
    if out.status != Status.COMPLETED:
        raise ValueError(f"--bias-check: the rerun at h/2 ended {out.status} ({sub}); nothing to compare")
    a1, a2 = R.read_arrays(run_dir), R.read_arrays(sub)
    p = _order(cfg)
    rows = []
    for (b, name, m1, s1), (_, _, m2, s2) in zip(moments(cfg, a1), moments(half, a2)):
        m0, se0, diff = richardson(m1, s1, m2, s2, order=p)
        ref_val = float("nan")
        if b is not None and gibbs_setting(cfg) and name in HEADLINE:
            ref, _ = gibbs_reference(cfg, b)
            if ref is not None:
                ref_val = float(ref.headline()[0][HEADLINE.index(name)])
        z = (m0 - ref_val) / se0 if se0 > 0 and math.isfinite(ref_val) else float("nan")
        rows.append(dict(zip(COLUMNS, (b, name, m1, s1, m2, s2, diff, m0, se0, p, ref_val, z))))
    path = os.path.join(run_dir, "bias_check.csv")
    lines = [",".join(COLUMNS)] + [",".join("" if r[k] is None else f"{r[k]:.10g}" if isinstance(r[k], float) else str(r[k])
                                            for k in COLUMNS) for r in rows]
    atomic_write(path, "\n".join(lines) + "\n")
    return rows, path


def format_table(rows: list[dict]) -> str:
    """The rows as a text table for the terminal."""
    head = f"{'beta':>6} {'observable':<14} {'m(h)':>11} {'m(h/2)':>11} {'diff':>10} {'m0 (h->0)':>11} {'+-se':>9} {'reference':>10} {'z':>6}"
    out = [head]
    for r in rows:
        b = "" if r["beta"] is None else f"{r['beta']:g}"
        out.append(f"{b:>6} {r['observable']:<14} {r['value_h']:11.5g} {r['value_h2']:11.5g} {r['difference']:+10.3g} "
                   f"{r['extrapolated']:11.5g} {r['se_extrapolated']:9.2g} {r['reference']:10.5g} {r['z_extrapolated']:+6.1f}")
    return "\n".join(out)
