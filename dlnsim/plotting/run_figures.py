"""Figures of one run folder, drawn from the folder alone (config.yaml, arrays.npz).

`RUN_FIGURES` is the registry: figure name -> (draw(cfg, arrays) -> Figure, applies(cfg, arrays)).
An observable names the figure that draws it (dlnsim.observe.Observable.figure). Theory curves come
from the arrays (saxe_singular_values, reference_singular_values: dlnsim.run_theory decided which
apply when the run was made) and from run_theory (the Gibbs law), never decided here.

- singular_values: s_i(t) with the Saxe closed form or the end-to-end reference flow;
- loss; balancedness: max_p ||G_p(t) - G_p(0)||_F (log scale); entropy: S_formula(X) against
  S_measured(W); thermodynamics: S, E and F = E - S/beta over time;
- stationary: for runs in the Gibbs setting, histograms of s_max and s_min against the Gibbs law;
- implicit_regularization: norms, effective rank, loss and completion errors against log time
  (runs recording the norms / effective_rank / completion_error observables).
Ensembles are drawn as the median and a 10-90% quantile band (individual lines when B <= 4); runs
with a list of betas are drawn one colour per beta.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import matplotlib.pyplot as plt
import numpy as np
import torch

from .. import results as R
from ..run_theory import gibbs_law, gibbs_setting
from .common import COLORS, STYLE, band, finish_time_plot, beta_groups, positive_or_nan, save_figure, run_title

__all__ = ["RUN_FIGURES", "RunFigure", "plot_run", "hist_panels"]


def _fig_singular_values(cfg, a, ax=None):
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(5.2, 3.6))
    t, S = a["t"], a["singular_values"]
    groups = beta_groups(a)
    for gi, (glabel, idx) in enumerate(groups):
        for i in range(S.shape[2]):
            color = COLORS[(i if len(groups) == 1 else gi) % len(COLORS)]
            lab = (rf"$s_{i + 1}$ simulation" if len(groups) == 1 else (glabel if i == 0 else None))
            band(ax, t, S[:, idx, i], color, lab)
            if "reference_singular_values" in a and "saxe_singular_values" not in a:
                ref = np.median(a["reference_singular_values"][:, idx, i], axis=1)
                ax.plot(t, ref, color="k", ls="--", lw=0.9, label="end-to-end flow" if (i == 0 and gi == 0) else None)
    if "saxe_singular_values" in a:
        for i in range(a["saxe_singular_values"].shape[1]):
            ax.plot(t, a["saxe_singular_values"][:, i], color="k", ls="--", lw=0.9,
                    label="Saxe closed form" if i == 0 else None)
    ax.set_xlabel("time $t$")
    ax.set_ylabel("singular values $s_i(X)$")
    ax.legend()
    if own:
        ax.set_title(run_title(cfg))
        return fig


def _fig_loss(cfg, a):
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    for gi, (glabel, idx) in enumerate(beta_groups(a)):
        band(ax, a["t"], a["loss"][:, idx], COLORS[gi % len(COLORS)], glabel or "$E(X(t))$")
    if np.all(a["loss"] > 0):
        ax.set_yscale("log")
    return finish_time_plot(fig, ax, cfg, "loss $E(X)$")


def _fig_balancedness(cfg, a):
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    drift = a["balancedness"].max(axis=2)
    for gi, (glabel, idx) in enumerate(beta_groups(a)):
        band(ax, a["t"][1:], positive_or_nan(drift[1:, idx]), COLORS[gi % len(COLORS)], glabel or r"$\max_p\|G_p(t)-G_p(0)\|_F$")
    ax.set_yscale("log")
    return finish_time_plot(fig, ax, cfg, r"balancedness drift $\max_p \|G_p(t) - G_p(0)\|_F$")


def _fig_entropy(cfg, a):
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    for gi, (glabel, idx) in enumerate(beta_groups(a)):
        c = COLORS[gi % len(COLORS)]
        band(ax, a["t"], a["entropy_formula"][:, idx], c, rf"$S_{{formula}}(X)$ {glabel}")
        if "entropy_measured" in a:
            sub = max(1, len(a["t"]) // 25)
            med = np.nanmedian(np.where(np.isfinite(a["entropy_measured"]), a["entropy_measured"], np.nan)[:, idx], axis=1)
            ax.plot(a["t"][::sub], med[::sub], "o", color=c, mfc="none", ms=4, label=rf"$S_{{measured}}(W)$ {glabel}")
    return finish_time_plot(fig, ax, cfg, "entropy $S$ (log-volume of the orbit)")


def _fig_thermo(cfg, a):
    keys = [("loss", "energy $E$"), ("entropy_formula", "entropy $S$")]
    if "free_energy" in a:
        keys.append(("free_energy", r"free energy $F = E - S/\beta$"))
    fig, axes = plt.subplots(1, len(keys), figsize=(3.3 * len(keys), 3.2), squeeze=False)
    for ax, (k, lab) in zip(axes[0], keys):
        for gi, (glabel, idx) in enumerate(beta_groups(a)):
            band(ax, a["t"], a[k][:, idx], COLORS[gi % len(COLORS)], glabel or None)
        ax.set_xlabel("time $t$")
        ax.set_ylabel(lab)
    if len(beta_groups(a)) > 1:
        axes[0][0].legend()
    fig.suptitle(run_title(cfg), fontsize=9)
    fig.tight_layout()
    return fig


def _pooled(a, idx, frac: float = 0.5):
    """Singular values (samples, d) of trajectories idx over the last `frac` of the save points."""
    S = a["singular_values"]
    start = int(len(a["t"]) * (1 - frac))
    out = S[start:, idx, :].reshape(-1, S.shape[2])
    return out[np.all(np.isfinite(out), axis=1)]


def hist_panels(axes, runs, cfg_theory, betas):
    """Histograms of s_max (and s_min) for runs [(label, cfg, arrays, idx)] against the Gibbs law(s).

    Drawn in the layer variable u = s^{1/N} (the singular values of each W_p on the balanced
    manifold): the density of s has an integrable s^{-(N-1)/N} singularity at 0 that dwarfs the
    rest of the curve, while that of u is bounded, p_u(u) = p_s(u^N) N u^{N-1}.
    """
    d, N = cfg_theory["network"]["widths"][0], cfg_theory["network"]["depth"]
    for which, ax in zip(("max", "min"), axes):
        hi = 0.0
        for k, (label, cfg, a, idx) in enumerate(runs):
            u = _pooled(a, idx)[:, 0 if which == "max" else -1] ** (1.0 / N)
            hi = max(hi, np.quantile(u, 0.999)) if u.size else hi
            ax.hist(u, bins=40, density=True, histtype="step",
                    color=COLORS[k % len(COLORS)], lw=1.2, label=f"{label} ({u.size} samples)")
        x = np.linspace(1e-6, hi * 1.05 + 1e-9, 300)
        for bi, beta in enumerate(betas):
            law = gibbs_law(cfg_theory, beta)
            pdf_s = (law.pdf_max if which == "max" else law.pdf_min)(torch.tensor(x**N)).numpy()
            ax.plot(x, pdf_s * N * x ** (N - 1), color="k", ls="-" if bi == 0 else ":", lw=1.1,
                    label=r"Gibbs law $e^{-\beta E + S}\,d\mathrm{vol}_g$" + (rf" $\beta={beta:g}$" if len(betas) > 1 else ""))
        sym = rf"s_{{\{which}}}" if d > 1 else "s"
        ax.set_xlabel(rf"${sym}^{{1/N}}$ (N = {N})")
        ax.set_ylabel("density")
        ax.legend()
        if d == 1:
            break


def _fig_implicit_regularization(cfg, a):
    """Norms, effective rank, loss and (completion) test error over time, log-log: the picture of
    implicit-regularization studies (Razin & Cohen 2020; Arora et al. 2019). No theory curve applies."""
    panels = []
    if "nuclear_norm" in a:
        panels.append(("norms of $X$", [("nuclear_norm", "nuclear"), ("frobenius_norm", "Frobenius"), ("spectral_norm", "spectral")]))
    if "effective_rank" in a:
        r = min(cfg["network"]["widths"][0], cfg["network"]["widths"][-1])
        panels.append((f"effective rank (of at most {r})", [("effective_rank", None)]))
    panels.append(("loss $E(X)$", [("loss", None)]))
    if "test_error" in a:
        panels.append(("relative error on entries", [("test_error", "unobserved (test)"), ("train_error", "observed (train)")]))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3.3), squeeze=False)
    t = a["t"]
    later = t > 0  # log time axis
    for ax, (ylabel, keys) in zip(axes[0], panels):
        for k, (key, lab) in enumerate(keys):
            for gi, (glabel, idx) in enumerate(beta_groups(a)):
                Y = a[key][later][:, idx]
                band(ax, t[later], positive_or_nan(Y) if key != "effective_rank" else Y,
                     COLORS[(k if len(keys) > 1 else gi) % len(COLORS)], lab if gi == 0 else None)
        ax.set_xscale("log")
        if key != "effective_rank" and np.nanmin(np.where(np.isfinite(a[keys[0][0]]), a[keys[0][0]], np.nan)) > 0:
            ax.set_yscale("log")
        ax.set_xlabel("time $t$")
        ax.set_ylabel(ylabel)
        if any(lab for _, lab in keys):
            ax.legend()
    fig.suptitle(run_title(cfg) + f"; energy {cfg['energy']['type']} (no closed form applies)", fontsize=9)
    fig.tight_layout()
    return fig


def _fig_stationary(cfg, a):
    d = cfg["network"]["widths"][0]
    groups = beta_groups(a)
    fig, axes = plt.subplots(len(groups), 1 if d == 1 else 2, figsize=(3.4 * (1 if d == 1 else 2), 3.0 * len(groups)),
                             squeeze=False)
    betas = np.atleast_1d(a["beta"])
    for gi, (glabel, idx) in enumerate(groups):
        hist_panels(axes[gi], [(f"{cfg['dynamics']['scheme']} {glabel}", cfg, a, idx)], cfg, [float(betas[idx[0]])])
    fig.suptitle(run_title(cfg) + "\nstationary law of the singular values (last half of the run)", fontsize=9)
    fig.tight_layout()
    return fig



class RunFigure(NamedTuple):
    draw: Callable  # (cfg, arrays) -> Figure
    applies: Callable  # (cfg, arrays) -> bool


RUN_FIGURES: dict[str, RunFigure] = {
    # first: when a run records these, its headline (output.showcase) is this figure
    "implicit_regularization": RunFigure(_fig_implicit_regularization,
                                         lambda cfg, a: "effective_rank" in a or "nuclear_norm" in a),
    "singular_values": RunFigure(_fig_singular_values, lambda cfg, a: "singular_values" in a),
    "loss": RunFigure(_fig_loss, lambda cfg, a: True),
    "balancedness": RunFigure(_fig_balancedness,
                              lambda cfg, a: "balancedness" in a and a["balancedness"].shape[-1] > 0 and len(a["t"]) > 1),
    "entropy": RunFigure(_fig_entropy, lambda cfg, a: "entropy_formula" in a),
    "thermodynamics": RunFigure(_fig_thermo, lambda cfg, a: "entropy_formula" in a),
    "stationary": RunFigure(_fig_stationary, lambda cfg, a: gibbs_setting(cfg) and "singular_values" in a),
}


def plot_run(run_dir: str, formats=("png", "pdf")) -> list[str]:
    """Draw every figure of RUN_FIGURES that applies to the run in run_dir; returns the written paths."""
    with plt.rc_context(STYLE):
        cfg, a = R.read_config(run_dir), R.read_arrays(run_dir)
        if len(a["t"]) == 0 or "loss" not in a:
            return []
        warnings = R.read_meta(run_dir).get("warnings") or []
        out = []
        for name, fig in RUN_FIGURES.items():
            if fig.applies(cfg, a):
                out += save_figure(with_warnings(fig.draw(cfg, a), warnings), run_dir, name, formats)
        return out


def with_warnings(fig, warnings: list[str]):
    """The run's warnings (meta.json `warnings`: failing projections, frozen chains) in the figure's
    title, in red: a figure of a run whose numerics failed must not look like a clean result."""
    if warnings:
        old = fig._suptitle.get_text() if getattr(fig, "_suptitle", None) is not None else ""
        short = "; ".join(w.split(":")[0] for w in warnings)
        fig.suptitle((old + "\n" if old else "") + "WARNING: " + short, fontsize=9, color="C3")
    return fig
