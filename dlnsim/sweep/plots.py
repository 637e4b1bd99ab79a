"""Summary figures of a sweep folder: simulation against theory across the sweep's axes.

- gibbs.png: for runs that sample the Gibbs law exp(-beta E + S) dvol_g (Langevin on M, the RLE), for
  any energy, stationary E||X||^2 and mean entropy S(X) against beta, one line per other axis value,
  with the Gibbs reference of the energy used (`dlnsim.run_theory.gibbs_reference`; a curve over beta
  from `SingularValueLaw` for E = alpha/2 ||X||^2, d <= 3) and +-2 standard errors over trajectories;
- saxe.png: for aligned matrix-regression gradient runs swept over depth, the time to learn each
  mode against depth with the closed form (`dlnsim.theory.saxe_time`);
- completion.png: for matrix-completion runs with random masks that record completion_error, the final
  reconstruction error and effective rank against the number of observed entries, one line per other
  axis value (e.g. depth), next to the minimum nuclear norm completion of the same masks
  (`dlnsim.baselines`, ADMM): the plot of Arora, Cohen, Hu & Luo (2019);
- overview.png: the final loss across the axes, for every sweep, one line per batched beta (runs with
  batch_axes hold several betas), floored at the roundoff level.
Numbers behind the figures are written next to them as CSV.
"""
from __future__ import annotations

import csv
import io
import math
import os
import shutil

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter  # noqa: E402

from .. import results as R  # noqa: E402
from .._io import atomic_write  # noqa: E402
from ..entropy import entropy_from_singular_values  # noqa: E402
from ..gibbs import SingularValueLaw  # noqa: E402
from ..plotting import COLORS, STYLE  # noqa: E402
from ..theory import saxe_time  # noqa: E402
from ..baselines import min_nuclear_norm_completion  # noqa: E402
from ..builders import build_energy  # noqa: E402
from ..energies import target_matrix  # noqa: E402
from ..metrics import completion_errors, effective_rank  # noqa: E402
from ..lifecycle import FINAL  # noqa: E402
from ..run_theory import energy_title, gibbs_reference, gibbs_setting, initial_spectrum, saxe_setting  # noqa: E402
from .points import read_manifest  # noqa: E402
from .spec import AXIS_SYMBOLS, FIGURES, SWEEP_FILE, load_sweep, short_names  # noqa: E402

__all__ = ["plot_sweep"]


def _legend(keys, values, short: dict) -> str:
    return ", ".join(f"{AXIS_SYMBOLS.get(k, short[k])}={v}" for k, v in zip(keys, values))


def _plain_ticks(ax, which: str = "both") -> None:
    """Log axes with plain numbers (0.5, 1, 2) rather than 10^x."""
    for axis in ((ax.xaxis, ax.yaxis) if which == "both" else ((ax.xaxis,) if which == "x" else (ax.yaxis,))):
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(NullFormatter())


def _finite_mean_se(per_traj) -> tuple[float, float, int]:

    x = np.asarray(per_traj, dtype=float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return float("nan"), float("nan"), 0
    se = float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else float("nan")
    return float(x.mean()), se, int(x.size)


def _load_points(sweep_dir: str):
    """[(row, config, arrays)] of the finished points of a sweep folder."""
    out = []
    for row in read_manifest(sweep_dir):
        run_dir = os.path.join(sweep_dir, row["run"])
        if row["status"] not in FINAL or not os.path.exists(os.path.join(run_dir, R.ARRAYS)):
            continue
        out.append((row, R.read_config(run_dir), R.read_arrays(run_dir)))
    return out


def _gibbs_summary(points, axis_keys: list[str]):
    """Per (point, beta): stationary E||X||^2 and E S (last half of the run; standard errors from
    the spread of per-trajectory time averages, trajectories being independent) against the Gibbs
    reference of the energy the run used (its own Monte-Carlo error added to the z-score)."""
    rows = []
    for row, cfg, a in points:
        if not gibbs_setting(cfg) or "singular_values" not in a or len(a["t"]) < 4:
            continue
        N, d = cfg["network"]["depth"], cfg["network"]["widths"][0]
        S = a["singular_values"]
        start = len(a["t"]) // 2
        betas = np.atleast_1d(a["beta"]) if "beta" in a else np.full(S.shape[1], float(cfg["dynamics"]["beta"]))
        x2 = (S[start:] ** 2).sum(-1).mean(0)  # (B,) time averages
        ent = a["entropy_formula"][start:].mean(0) if "entropy_formula" in a else np.full(S.shape[1], np.nan)
        for beta in np.unique(betas):
            idx = betas == beta
            m_x2, se_x2, n = _finite_mean_se(x2[idx])
            m_s, se_s, _ = _finite_mean_se(ent[idx])
            ref, why = gibbs_reference(cfg, float(beta))
            if ref is not None:
                th_x2, tse_x2 = (float(v[0]) for v in ref.headline())
                th_s = float(ref.expect_spectral(lambda s: entropy_from_singular_values(s, N)))
                tse_s = float(ref.stderr(lambda X: entropy_from_singular_values(torch.linalg.svdvals(X), N))) \
                    if ref.method == "mcmc" else 0.0
            else:
                th_x2 = tse_x2 = th_s = tse_s = float("nan")
            z = lambda m, se, th, tse: (m - th) / math.sqrt(se**2 + tse**2) if se > 0 else float("nan")  # noqa: E731
            rows.append({"run": row["run"], **{k: row[k] for k in axis_keys}, "beta": float(beta), "depth": N, "d": d,
                         "energy": cfg["energy"]["type"], "alpha": cfg["energy"].get("alpha"), "n_traj": n,
                         "sq_norm_sim": m_x2, "sq_norm_se": se_x2, "sq_norm_theory": th_x2, "sq_norm_theory_se": tse_x2,
                         "sq_norm_z": z(m_x2, se_x2, th_x2, tse_x2),
                         "entropy_sim": m_s, "entropy_se": se_s, "entropy_theory": th_s, "entropy_theory_se": tse_s,
                         "entropy_z": z(m_s, se_s, th_s, tse_s), "reference": ref.method if ref is not None else why,
                         "_cfg": cfg})
    return rows


def _fig_gibbs(rows, group_keys: list[str], short: dict):


    groups: dict = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in group_keys) + (r["depth"], r["d"], r["energy"], r["alpha"]), []).append(r)
    fig, axes = plt.subplots(1, 2, figsize=(7.2, 3.0))
    for gi, (key, rs) in enumerate(sorted(groups.items(), key=lambda kv: tuple(map(str, kv[0])))):
        rs = sorted(rs, key=lambda r: r["beta"])
        color = COLORS[gi % len(COLORS)]
        N, d, energy, alpha = key[-4:]
        label = _legend(group_keys, key, short) or f"N={N}"
        b = np.array([r["beta"] for r in rs])
        for ax, sim, se in ((axes[0], "sq_norm_sim", "sq_norm_se"), (axes[1], "entropy_sim", "entropy_se")):
            ax.errorbar(b, [r[sim] for r in rs], yerr=[2 * r[se] for r in rs], fmt="o", ms=3.5, color=color,
                        capsize=2, label=f"{label} simulation" if ax is axes[0] else None)
        if energy == "weight_decay" and d <= 3:
            # a curve over beta: SingularValueLaw is cheap (the same law as the reference, by 2-D quadrature)
            grid = np.geomspace(b.min(), b.max(), 25) if b.max() > b.min() else b
            laws = [SingularValueLaw(N, float(x), float(alpha), d) for x in grid]
            th_x2 = [float(law.moment(lambda s: (s * s).sum(-1))) for law in laws]
            th_s = [float(law.moment(lambda s: entropy_from_singular_values(s, N))) for law in laws]
            for ax, th in ((axes[0], th_x2), (axes[1], th_s)):
                ax.plot(grid, th, color=color, lw=1.1, ls="--", label=f"{label} Gibbs law" if ax is axes[0] else None)
        else:
            # the reference at the simulated betas, with its +-2 s.e. (zero for quadrature)
            for ax, th, tse in ((axes[0], "sq_norm_theory", "sq_norm_theory_se"), (axes[1], "entropy_theory", "entropy_theory_se")):
                ax.errorbar(b, [r[th] for r in rs], yerr=[2 * r[tse] for r in rs], fmt="x", ms=5, color=color,
                            capsize=2, label=f"{label} Gibbs reference" if ax is axes[0] else None)
    betas = sorted({r["beta"] for r in rows})
    for ax, ylab in ((axes[0], r"stationary $\mathbb{E}\,\|X\|_F^2$"), (axes[1], r"stationary $\mathbb{E}\,S(X)$")):
        ax.set_xscale("log")
        ax.set_xticks(betas)
        ax.set_xlabel(r"inverse temperature $\beta$")
        ax.set_ylabel(ylab)
    axes[0].set_yscale("log")
    _plain_ticks(axes[0])
    _plain_ticks(axes[1], "x")
    axes[0].legend()
    energies = sorted({energy_title(r["_cfg"]) for r in rows})
    schemes = sorted({r["_cfg"]["dynamics"]["scheme"] for r in rows})
    fig.suptitle(r"Gibbs law $e^{-\beta E(X) + S(X)}\,d\mathrm{vol}_{g^N}$, " + "; ".join(energies)
                 + f" ({', '.join(schemes)}): simulation (mean $\\pm$ 2 s.e.) vs reference", fontsize=8)
    fig.tight_layout()
    return fig


def _saxe_summary(points, axis_keys: list[str]):
    """Per (point, mode): time for s_i to reach half its target, simulated (first crossing, linear
    interpolation, mean over trajectories) and closed form (dlnsim.theory.saxe_time)."""


    rows = []
    for row, cfg, a in points:
        if not saxe_setting(cfg) or "singular_values" not in a:
            continue
        net = cfg["network"]
        N = net["depth"]
        lam = torch.linalg.svdvals(target_matrix(cfg["energy"], net["widths"]))
        u0 = initial_spectrum(cfg)
        scale = float(N) if cfg["dynamics"]["time_scale"] == "depth" else 1.0
        t, S = a["t"], a["singular_values"]
        # pair modes with targets by order: X stays aligned, s sorted descending like lam
        for i in range(min(S.shape[-1], lam.numel())):
            li, ui = float(lam[i]), float(u0[i])
            if not (li > 0 and 0 < ui < li / 2):
                continue
            th = float(saxe_time(li / 2, li, ui, N)) * scale
            crossings = []
            for b in range(S.shape[1]):
                y = S[:, b, i]
                k = np.nonzero(y >= li / 2)[0]
                if k.size == 0 or k[0] == 0:
                    crossings.append(np.nan)
                    continue
                k = k[0]
                crossings.append(t[k - 1] + (li / 2 - y[k - 1]) * (t[k] - t[k - 1]) / (y[k] - y[k - 1]))
            m, se, n = _finite_mean_se(crossings)
            rows.append({"run": row["run"], **{kk: row[kk] for kk in axis_keys}, "depth": N, "mode": i + 1,
                         "lambda": li, "u0": ui, "time_scale": cfg["dynamics"]["time_scale"], "time_sim": m, "time_theory": th,
                         "rel_err": (m - th) / th if math.isfinite(m) else float("nan")})
    return rows


def _fig_saxe(rows, group_keys: list[str], short: dict):


    fig, ax = plt.subplots(figsize=(4.2, 3.2))
    groups: dict = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in group_keys) + (r["time_scale"], r["mode"], r["lambda"], r["u0"]), []).append(r)
    markers = "osD^v"
    for gi, (key, rs) in enumerate(sorted(groups.items(), key=lambda kv: kv[0])):
        rs = sorted(rs, key=lambda r: r["depth"])
        time_scale, mode, lam, u0 = key[-4:]
        color = COLORS[(mode - 1) % len(COLORS)]
        other = _legend(group_keys, key[:-4], short)
        Ns = np.array([r["depth"] for r in rs])
        grid = np.arange(Ns.min(), Ns.max() + 1)
        th = [float(saxe_time(lam / 2, lam, u0, int(n))) * (n if time_scale == "depth" else 1) for n in grid]
        ax.plot(grid, th, color=color, ls="--", lw=1.1, label=rf"closed form, $\lambda_{mode}={lam:g}$" + (f" ({other})" if other else ""))
        ax.plot(Ns, [r["time_sim"] for r in rs], markers[gi % len(markers)], color=color, ms=4,
                label=f"simulation, mode {mode}" + (f" ({other})" if other else ""))
    ax.set_xlabel("depth $N$")
    ax.set_ylabel(r"time to learn a mode, $s_i(t) = \lambda_i / 2$")
    ax.set_yscale("log")
    _plain_ticks(ax, "y")
    ax.set_xticks(sorted({r["depth"] for r in rows}))
    ax.legend()
    ax.set_title("Saxe modes: time to learn each mode against depth", fontsize=9)
    fig.tight_layout()
    return fig


LOSS_FLOOR = 1e-15  # final losses below this are roundoff: drawn at the floor, marked


def _fig_overview(points, axis_keys: list[str], short: dict):
    """Final ensemble-mean loss against the first numeric axis, one line per other combination and per
    batched beta (a point that runs several betas side by side is split by beta, never averaged)."""

    def num(v):
        try:
            return float(v)
        except (TypeError, ValueError):
            return None

    xkey = next((k for k in axis_keys if k != "dynamics.beta" and all(num(r[k]) is not None for r, _, _ in points)), None)
    xkey = xkey or next((k for k in axis_keys if all(num(r[k]) is not None for r, _, _ in points)), None)
    fig, ax = plt.subplots(figsize=(4.6, 3.2))
    others = [k for k in axis_keys if k != xkey]
    groups: dict = {}
    split = False
    for r, cfg, a in points:
        loss = np.asarray(a["loss"][-1], dtype=float)
        betas = np.atleast_1d(a["beta"]) if "beta" in a else None
        parts = [("", np.arange(loss.size))]
        if betas is not None and betas.size == loss.size and len(np.unique(betas)) > 1:
            parts = [(f"$\\beta$={b:g}", np.flatnonzero(betas == b)) for b in np.unique(betas)]
            split = True
        for tag, idx in parts:
            key = tuple(_legend([k], [r[k]], short) for k in others if not (tag and k == "dynamics.beta")) + ((tag,) if tag else ())
            y = float(np.nanmean(loss[idx])) if idx.size else np.nan
            groups.setdefault(key, []).append((num(r[xkey]) if xkey else int(r["index"]), y))
    floored = False
    for gi, (key, xs) in enumerate(sorted(groups.items())):
        xs.sort()
        ys = np.array([y for _, y in xs])
        floored |= bool(np.any(ys < LOSS_FLOOR))
        ax.plot([x for x, _ in xs], np.maximum(ys, LOSS_FLOOR), "o-", ms=3.5, color=COLORS[gi % len(COLORS)],
                label=", ".join(k for k in key if k) or None)
    ax.set_xlabel(xkey if xkey else "point")
    ax.set_ylabel(r"final mean loss $E(X(T))$ over trajectories")
    ys = [y for xs in groups.values() for _, y in xs if math.isfinite(y)]
    if ys and all(y > 0 for y in ys):
        ax.set_yscale("log")
        if floored:
            ax.axhline(LOSS_FLOOR, color="0.5", ls=":", lw=0.8, label=f"roundoff floor ({LOSS_FLOOR:g})")
    if others or split or floored:
        ax.legend(fontsize=6.5)
    ax.set_title("sweep overview" + (" (batched betas drawn separately)" if split else ""), fontsize=9)
    fig.tight_layout()
    return fig


def _completion_summary(points, axis_keys: list[str]):
    """Per point: observed entries, final reconstruction error and effective rank (mean over the
    trajectories), and the same for the minimum nuclear norm completion of the point's masks
    (ADMM to tol 1e-5, cached per distinct energy section)."""
    rows, cache = [], {}
    for r, cfg, a in points:
        en = cfg["energy"]
        if en["type"] != "matrix_completion" or en["mask"] != "random" or "reconstruction_error" not in a:
            continue
        energy = build_energy(cfg, "cpu", torch.float64)
        key = repr(sorted(en.items())) + repr(energy.mask.shape)
        if key not in cache:
            nn = min_nuclear_norm_completion(energy.target * energy.mask, energy.mask, tol=1e-5)
            err = completion_errors(nn.X, getattr(energy, "truth", energy.target), energy.mask)["reconstruction_error_rel"]
            cache[key] = (float(err.mean()), float(effective_rank(nn.X).mean()), bool(nn.converged))
        er = float(np.mean(a["effective_rank"][-1])) if "effective_rank" in a else float("nan")
        rows.append({**{k: r[k] for k in axis_keys}, "observed": int(energy.mask[0].sum() if energy.mask.dim() == 3 else energy.mask.sum()),
                     "depth": cfg["network"]["depth"], "reconstruction_error": float(np.mean(a["reconstruction_error"][-1])),
                     "effective_rank": er, "nuclear_norm_error": cache[key][0], "nuclear_norm_effective_rank": cache[key][1],
                     "nuclear_norm_converged": cache[key][2]})
    return rows


def _fig_completion(rows, group_keys: list[str], short: dict):
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.4))
    groups: dict = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in group_keys), []).append(row)
    for gi, (key, rs) in enumerate(sorted(groups.items())):
        rs.sort(key=lambda q: q["observed"])
        x = [q["observed"] for q in rs]
        lab = _legend(group_keys, key, short) or "simulation"
        axes[0].semilogy(x, [q["reconstruction_error"] for q in rs], "o-", ms=3.5, color=COLORS[gi % len(COLORS)], label=lab)
        axes[1].plot(x, [q["effective_rank"] for q in rs], "o-", ms=3.5, color=COLORS[gi % len(COLORS)], label=lab)
    base = sorted({(q["observed"], q["nuclear_norm_error"], q["nuclear_norm_effective_rank"]) for q in rows})
    axes[0].semilogy([b[0] for b in base], [b[1] for b in base], "k--", label="min nuclear norm (ADMM)")
    axes[1].plot([b[0] for b in base], [b[2] for b in base], "k--", label="min nuclear norm (ADMM)")
    axes[0].set_ylabel(r"reconstruction error $\|X - \Phi\|_F / \|\Phi\|_F$")
    axes[1].set_ylabel("effective rank")
    for ax in axes:
        ax.set_xlabel("observed entries")
        ax.legend()
    fig.suptitle("matrix completion against the number of observations (Arora, Cohen, Hu & Luo 2019); "
                 "mean over trajectories (one mask each); no closed form applies", fontsize=9)
    fig.tight_layout()
    return fig


def _write_csv(path: str, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.10g}" if isinstance(v, float) else v) for k, v in r.items()})
    atomic_write(path, buf.getvalue())


def plot_sweep(sweep_dir: str, formats=("png", "pdf")) -> list[str]:
    """Summary figures of a sweep folder across its axes; returns the written paths.

    - gibbs.{png,pdf}: stationary E||X||^2 and mean entropy S against beta, one colour per other
      axis combination (e.g. depth), with the Gibbs reference of the energy used (a curve for
      E = alpha/2 ||X||^2, d <= 3; points with their band otherwise), for Langevin/RLE runs; numbers,
      reference errors and z-scores in gibbs.csv;
    - saxe.{png,pdf}: time for each mode to reach half its target against depth, with the closed
      form (dlnsim.theory.saxe_time), for aligned matrix-regression gradient runs; saxe.csv;
    - overview.{png,pdf}: the final mean loss across the axes (every sweep).
    Files go to <sweep_dir>/figures/; a `showcase:` path in sweep.yaml gets a copy of the headline PNG.
    """
    sweep = load_sweep(os.path.join(sweep_dir, SWEEP_FILE), validate=False)
    axis_keys = sweep.axis_keys
    short = short_names(axis_keys)
    points = _load_points(sweep_dir)
    if not points:
        return []
    fig_dir = os.path.join(sweep_dir, FIGURES)
    os.makedirs(fig_dir, exist_ok=True)
    written: list[str] = []

    def save(fig, name):
        for fmt in formats:
            path = os.path.join(fig_dir, f"{name}.{fmt}")
            fig.savefig(path)
            written.append(path)
        plt.close(fig)

    headline = None
    with plt.rc_context(STYLE):
        grows = _gibbs_summary(points, axis_keys)
        if grows:
            group_keys = [k for k in axis_keys if k != "dynamics.beta"]
            _write_csv(os.path.join(fig_dir, "gibbs.csv"), [{k: v for k, v in r.items() if k != "_cfg"} for r in grows])
            save(_fig_gibbs(grows, group_keys, short), "gibbs")
            headline = headline or "gibbs"
        srows = _saxe_summary(points, axis_keys)
        if srows and len({r["depth"] for r in srows}) > 1:
            group_keys = [k for k in axis_keys if k != "network.depth"]
            _write_csv(os.path.join(fig_dir, "saxe.csv"), srows)
            save(_fig_saxe(srows, group_keys, short), "saxe")
            headline = headline or "saxe"
        crows = _completion_summary(points, axis_keys)
        if crows and len({r["observed"] for r in crows}) > 1:
            group_keys = [k for k in axis_keys if not k.startswith("energy.mask")]
            _write_csv(os.path.join(fig_dir, "completion.csv"), crows)
            save(_fig_completion(crows, group_keys, short), "completion")
            headline = headline or "completion"
        save(_fig_overview(points, axis_keys, short), "overview")
        headline = headline or "overview"
    if sweep.showcase and "png" in formats:
        os.makedirs(os.path.dirname(os.path.abspath(sweep.showcase)), exist_ok=True)
        shutil.copyfile(os.path.join(fig_dir, f"{headline}.png"), sweep.showcase)
    return written
