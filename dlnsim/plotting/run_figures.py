"""Figures of one run folder, drawn from the folder alone (config.yaml, arrays.npz).

`RUN_FIGURES` is the registry: figure name -> (draw(cfg, arrays) -> Figure, applies(cfg, arrays)).
An observable names the figure that draws it (dlnsim.observe.Observable.figure). Theory curves come
from the arrays (saxe_singular_values, reference_singular_values: dlnsim.run_theory decided which
apply when the run was made) and from run_theory (the Gibbs law), never decided here.

- singular_values: s_i(t) with the Saxe closed form or the end-to-end reference flow;
- loss; balancedness: max_p ||G_p(t) - G_p(0)||_F (log scale); entropy: S_formula(X) against
  S_measured(W); thermodynamics: S, E and F = E - S/beta over time;
- stationary: for runs that sample the Gibbs law (any energy), histograms of s_max and s_min against the
  Gibbs reference of dlnsim.reference for the energy the run used (quadrature line, or MCMC histogram
  with its +-2 s.e. band), P(det X > 0), and "no reference: <why>" where none can be computed; the
  z-scores of the headline moments go to figures/stationary.csv.
- implicit_regularization: norms, effective rank, loss and completion errors against log time
  (runs recording the norms / effective_rank / completion_error observables).
Ensembles are drawn as the median and a 10-90% quantile band (individual lines when B <= 4); runs
with a list of betas are drawn one colour per beta.
"""
from __future__ import annotations

import os
from typing import Callable, NamedTuple

import matplotlib.pyplot as plt
import numpy as np
import torch

from .. import results as R
from .. import _io

from ..entropy import entropy_from_singular_values
from ..run_theory import energy_title, gibbs_reference, gibbs_setting, run_energy, stationary_rows
from .common import COLORS, STYLE, band, finish_time_plot, beta_groups, positive_or_nan, save_figure, run_title

__all__ = ["RUN_FIGURES", "RunFigure", "plot_run", "hist_panels", "stationary_means", "write_stationary_csv"]


def _fig_singular_values(cfg, a, ax=None):
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(5.2, 3.6))
    t, S = a["t"], a["singular_values"]
    groups = beta_groups(a)
    r = S.shape[2]
    many = len(groups) == 1 and r > 8  # beyond 8 colours repeat: a colour map and a colour bar instead
    cmap = plt.get_cmap("viridis")
    for gi, (glabel, idx) in enumerate(groups):
        for i in range(r):
            color = cmap(i / max(r - 1, 1)) if many else COLORS[(i if len(groups) == 1 else gi) % len(COLORS)]
            if many:
                lab = "simulation" if i == 0 else None
            else:
                lab = (rf"$s_{{{i + 1}}}$ simulation" if len(groups) == 1 else (glabel if i == 0 else None))
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
    if many:
        sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(1, r))
        ax.figure.colorbar(sm, ax=ax, label="index $i$ of $s_i$ (1 = largest)")
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


def stationary_means(cfg, beta):
    """Gibbs-reference means of E, S and F = E - S/beta for the run's energy, or None (dict by array name)."""
    ref, _ = gibbs_reference(cfg, beta)
    if ref is None:
        return None
    energy = run_energy(cfg["energy"], cfg["network"]["widths"])
    N = cfg["network"]["depth"]
    E = float(ref.expect(lambda X: energy.value(X)))
    S = float(ref.expect_spectral(lambda s: entropy_from_singular_values(s, N)))
    return {"loss": E, "entropy_formula": S, "free_energy": E - S / beta}


def _fig_thermo(cfg, a):
    keys = [("loss", "energy $E$"), ("entropy_formula", "entropy $S$")]
    if "free_energy" in a:
        keys.append(("free_energy", r"free energy $F = E - S/\beta$"))
    fig, axes = plt.subplots(1, len(keys), figsize=(3.3 * len(keys), 3.2), squeeze=False)
    betas = np.atleast_1d(a["beta"]) if "beta" in a else None
    drawn_ref = False
    for ax, (k, lab) in zip(axes[0], keys):
        for gi, (glabel, idx) in enumerate(beta_groups(a)):
            c = COLORS[gi % len(COLORS)]
            band(ax, a["t"], a[k][:, idx], c, glabel or "simulation")
            if gibbs_setting(cfg) and betas is not None:
                # the stationary value the run should relax to: the mean under the Gibbs reference
                m = stationary_means(cfg, float(betas[idx[0]]))
                if m is not None:
                    ax.axhline(m[k], color=c, ls="--", lw=0.9,
                               label="Gibbs-law mean (reference)" if (gi == 0 and not drawn_ref) else None)
                    drawn_ref = True
        ax.set_xlabel("time $t$")
        ax.set_ylabel(lab)
    if len(beta_groups(a)) > 1 or drawn_ref or a["loss"].shape[1] > 4:
        axes[0][0].legend(fontsize=6.5)
    fig.suptitle(f"{energy_title(cfg)}; " + run_title(cfg), fontsize=8)
    fig.tight_layout()
    return fig


def _pooled(a, idx, frac: float = 0.5):
    """Singular values (samples, d) of trajectories idx over the last `frac` of the save points."""
    S = a["singular_values"]
    start = int(len(a["t"]) * (1 - frac))
    out = S[start:, idx, :].reshape(-1, S.shape[2])
    return out[np.all(np.isfinite(out), axis=1)]


def _reference_panel(ax, cfg, beta, which, hi, N, style="-", many_betas=False):
    """The Gibbs reference for the run's energy on one histogram panel, or the reason there is none."""
    ref, why = gibbs_reference(cfg, beta)
    tag = rf" $\beta={beta:g}$" if many_betas else ""
    if ref is None:
        ax.text(0.5, 0.5, why.replace(": ", ":\n", 1), transform=ax.transAxes, ha="center", va="center", fontsize=7,
                color="0.3", wrap=True)
        return
    x = np.linspace(1e-6, hi * 1.05 + 1e-9, 80)  # a smooth curve; each point is a slice quadrature
    pdf = ref.pdf_layer(which, torch.tensor(x))
    if pdf is not None:
        ax.plot(x, pdf.numpy(), color="k", ls=style, lw=1.1,
                label=r"Gibbs law $e^{-\beta E + S}\,d\mathrm{vol}_g$ (quadrature)" + tag)
        return
    edges = np.linspace(0, hi * 1.05 + 1e-9, 31)
    k = 0 if which == "max" else -1
    dens, se = ref.histogram(lambda X: torch.linalg.svdvals(X)[:, k] ** (1.0 / N), torch.tensor(edges))
    dens, se = dens.numpy(), se.numpy()
    ax.stairs(dens, edges, color="k", ls=style, lw=1.0,
              label=r"Gibbs law $e^{-\beta E + S}\,d\mathrm{vol}_g$ (MCMC; band $\pm 2$ s.e.)" + tag)
    ax.fill_between(edges[:-1], dens - 2 * se, dens + 2 * se, step="post", color="k", alpha=0.15, lw=0)


def hist_panels(axes, runs, cfg_theory, betas):
    """Histograms of s_max (and s_min) for runs [(label, cfg, arrays, idx)] against the Gibbs reference(s)
    of the energy cfg_theory's runs used (dlnsim.run_theory.gibbs_reference), one per beta.

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
        for bi, beta in enumerate(betas):
            _reference_panel(ax, cfg_theory, float(beta), which, hi, N, "-" if bi == 0 else ":", len(betas) > 1)
        sym = rf"s_{{\{which}}}" if d > 1 else "s"
        ax.set_xlabel(rf"${sym}^{{1/N}}$ (N = {N})")
        ax.set_ylabel("density")
        ax.legend(loc="upper right", fontsize=6.5)
        if d == 1:
            break


def _det_text(rows) -> str:
    r = [x for x in rows if x.get("observable") == "P(det X > 0)"]
    return "\n".join(rf"$P(\det X>0)$: {x['simulation']:.3f} $\pm$ {x['stderr']:.3f}, reference {x['reference']:.3f} (z = {x['z']:+.1f})"
                     for x in r)


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
    if "test_error" in a or "train_error" in a:
        if cfg["energy"]["type"] == "linear_regression":
            panels.append(("relative error $\\|XA-Y\\|/\\|Y\\|$", [(k, lab) for k, lab in (("test_error", "held-out (test)"), ("train_error", "train")) if k in a]))
        else:
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
    fig, axes = plt.subplots(len(groups), 1 if d == 1 else 2, figsize=(3.8 * (1 if d == 1 else 2), 3.2 * len(groups)),
                             squeeze=False)
    betas = np.atleast_1d(a["beta"]) if "beta" in a else np.full(a["loss"].shape[1], cfg["dynamics"]["beta"])
    rows = stationary_rows(cfg, a)
    for gi, (glabel, idx) in enumerate(groups):
        b = float(betas[idx[0]])
        hist_panels(axes[gi], [(f"{cfg['dynamics']['scheme']} {glabel}", cfg, a, idx)], cfg, [b])
        txt = _det_text([r for r in rows if r["beta"] == b])
        if txt:
            axes[gi][0].text(0.02, 0.98, txt, transform=axes[gi][0].transAxes, va="top", fontsize=6.5)
    fig.suptitle(f"{energy_title(cfg)}; " + run_title(cfg)
                 + "\nstationary law of the singular values (last half of the run) against the Gibbs law", fontsize=8)
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
        if RUN_FIGURES["stationary"].applies(cfg, a):
            out.append(write_stationary_csv(os.path.join(run_dir, R.FIGURES, "stationary.csv"), stationary_rows(cfg, a)))
        return out


STATIONARY_COLUMNS = ("beta", "observable", "simulation", "stderr", "reference", "reference_stderr", "z",
                      "reference_method", "reason")


def write_stationary_csv(path: str, rows: list[dict]) -> str:
    """figures/stationary.csv: the headline moments of a run against its Gibbs reference, with z-scores."""
    lines = [",".join(STATIONARY_COLUMNS)]
    for r in rows:
        lines.append(",".join('"' + str(r.get(k, "")).replace('"', "'") + '"' if k == "reason" else str(r.get(k, ""))
                              for k in STATIONARY_COLUMNS))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    _io.atomic_write(path, "\n".join(lines) + "\n")
    return path


def with_warnings(fig, warnings: list[str]):
    """The run's warnings (meta.json `warnings`: failing projections, frozen chains) in the figure's
    title, in red: a figure of a run whose numerics failed must not look like a clean result."""
    if warnings:
        old = fig._suptitle.get_text() if getattr(fig, "_suptitle", None) is not None else ""
        short = "; ".join(w.split(":")[0] for w in warnings)
        fig.suptitle((old + "\n" if old else "") + "WARNING: " + short, fontsize=9, color="C3")
    return fig
