"""Comparison figures of a study folder (study.figure): one figure over all variants' runs.

`STUDY_FIGURES` is the registry: study.figure kind -> draw(variants) -> Figure, variants being
[(label, config, arrays)]. Kinds: saxe_modes, flows, entropy_init, stationary, free_energy,
completion, fields, overlay (auto), infinite_depth, balancing, sgd_comparison (plotting.sgd_comparison).
A study figure that draws the end-to-end reference flow is declared
in dlnsim.run_theory.STUDY_FIGURES_USING_REFERENCE, so that the runner integrates the flow for it.
"""
from __future__ import annotations

import os

import matplotlib
import matplotlib.pyplot as plt
import matplotlib.ticker  # noqa: F401
import numpy as np
import torch
from matplotlib.lines import Line2D

from .. import results as R
from ..energies import target_matrix
from ..entropy import entropy_from_singular_values
from ..geometry import SVDFactors
from .common import COLORS, STYLE, band, positive_or_nan, save_figure
from ..run_theory import energy_title, saxe_setting
from .depth_balancing import fig_balancing, fig_infinite_depth
from .sgd_comparison import fig_sgd_comparison
from .run_figures import hist_panels, stationary_means

__all__ = ["STUDY_FIGURES", "plot_study"]


def _variants(study_dir):
    out = []
    for v in R.read_config(study_dir)["study"]["variants"]:
        d = os.path.join(study_dir, R.RUNS, v["label"])
        if os.path.exists(os.path.join(d, R.ARRAYS)):
            out.append((v["label"], R.read_config(d), R.read_arrays(d)))
    return out


def _describe(cfg) -> str:
    """Scheme, start and energy of one run, for panel titles."""
    net, dyn = cfg["network"], cfg["dynamics"]
    start = net["init"] + (" aligned with $\\Phi$" if net["init"] == "balanced" and net.get("target") == "aligned" else "")
    return f"{dyn['scheme']}, h = {dyn['step_size']:g}\n{start} start"


def _fig_saxe_modes(vs):
    """One column per variant: singular values (median and 10-90% band over the ensemble, or every
    trajectory for B <= 4) with the Saxe closed form where it applies (run_theory.saxe_setting), the
    entropy below. Titles name each variant's scheme and start; the suptitle says what all share."""
    n = len(vs)
    fig, axes = plt.subplots(2, n, figsize=(3.0 * n, 5.2), squeeze=False, sharex="col")
    for j, (label, cfg, a) in enumerate(vs):
        t, N = a["t"], cfg["network"]["depth"]
        ax = axes[0][j]
        S = a["singular_values"]
        closed = "saxe_singular_values" in a and saxe_setting(cfg)
        for i in range(S.shape[2]):
            c = COLORS[i % len(COLORS)]
            band(ax, t, S[:, :, i], c, "simulation" if i == 0 else None)
            if closed:
                ax.plot(t, a["saxe_singular_values"][:, i], color="k", ls="--", lw=0.9,
                        label="Saxe closed form" if i == 0 else None)
        if not closed:
            ax.text(0.5, 0.5, "no closed form applies\n(needs gradient flow from a balanced\nstart aligned with $\\Phi$)",
                    transform=ax.transAxes, ha="center", va="center", fontsize=6.5, color="0.3")
        ax.set_title(f"{label}: N = {N}\n{_describe(cfg)}", fontsize=7)
        if N == 1:
            axes[1][j].text(0.5, 0.6, "N = 1: the orbit is a point, S = 0", transform=axes[1][j].transAxes,
                            ha="center", fontsize=7.5)
        if j == 0:
            ax.set_ylabel("singular values $s_i(X(t))$")
        ax.legend(loc="lower right", fontsize=6)
        ax = axes[1][j]
        band(ax, t, a["entropy_formula"], "C3", r"$S_{formula}(X)$")
        if "entropy_measured" in a:
            sub = max(1, len(t) // 30)
            ax.plot(t[::sub], np.median(a["entropy_measured"][::sub], axis=1), "s", color="k", ms=3, mfc="none",
                    label=r"$S_{measured}(W)$ (median)")
        ax.set_xlabel("time $t$")
        if j == 0:
            ax.set_ylabel("entropy $S$")
        ax.legend(loc="best", fontsize=6)
    cfg0 = vs[0][1]
    same = all(saxe_setting(c) for _, c, _ in vs)
    what = ("gradient flow from a balanced start aligned with $\\Phi$" if same
            else "variants as titled (the closed form is drawn only where it applies)")
    fig.suptitle(f"{energy_title(cfg0)}, d = {cfg0['network']['widths'][0]}: {what}", fontsize=9)
    fig.tight_layout()
    return fig


def _fig_flows(vs):
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.3))
    gd = [(lb, c, a) for lb, c, a in vs if c["dynamics"]["scheme"] == "gradient_descent"]
    other = [(lb, c, a) for lb, c, a in vs if c["dynamics"]["scheme"] != "gradient_descent"]
    ax = axes[0]
    for k, (lb, c, a) in enumerate(other):
        S = np.median(a["singular_values"], axis=1)
        sub = max(1, len(a["t"]) // 30)
        for i in range(S.shape[1]):
            ax.plot(a["t"][::sub], S[::sub, i], "o", ms=3, mfc="none", color=COLORS[i],
                    label=f"{lb} (parameters)" if i == 0 else None)
            if "reference_singular_values" in a:
                ax.plot(a["t"], np.median(a["reference_singular_values"][:, :, i], axis=1), color=COLORS[i], lw=1,
                        label="end-to-end flow $-A_{N,X}(\\nabla E)$" if i == 0 else None)
    for k, (lb, c, a) in enumerate(gd):
        S = np.median(a["singular_values"], axis=1)
        for i in range(S.shape[1]):
            ax.plot(a["t"], S[:, i], color="0.5", lw=0.6, ls=":", label="gradient descent" if k == 0 and i == 0 else None)
    ax.set_xlabel("time $t$")
    ax.set_ylabel("singular values $s_i(X)$")
    ax.legend()
    ax = axes[1]
    for k, (lb, c, a) in enumerate(gd + other):
        if "balancedness" not in a:
            continue
        band(ax, a["t"][1:], positive_or_nan(a["balancedness"].max(axis=2)[1:]), COLORS[k % len(COLORS)],
             f"{c['dynamics']['scheme'].replace('_', ' ')} h={c['dynamics']['step_size']:g}")
    ax.set_yscale("log")
    ax.set_xlabel("time $t$")
    ax.set_ylabel(r"$\max_p \|G_p(t) - G_p(0)\|_F$")
    ax.legend()
    ax = axes[2]
    if gd:
        h = np.array([c["dynamics"]["step_size"] for _, c, _ in gd])
        final = np.array([np.median(a["balancedness"].max(axis=2)[-1]) for _, _, a in gd])
        ax.loglog(h, final, "o-", color="C0", label="gradient descent at $t = T$")
        ok = final > 0
        if ok.sum() >= 2:
            slope = np.polyfit(np.log(h[ok]), np.log(final[ok]), 1)[0]
            ax.loglog(h, final[ok][0] * (h / h[ok][0]), "k--", lw=0.8, label=f"slope 1 (O(h^2) per step); fit {slope:.2f}")
        ax.set_xticks(h, [f"{x:g}" for x in h], minor=False)
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xlabel("step size $h$")
        ax.set_ylabel(r"drift $\max_p \|G_p(T) - G_p(0)\|_F$")
        ax.legend()
    fig.suptitle("Parameter gradient flow vs the end-to-end flow; balancedness drift of gradient descent", fontsize=9)
    fig.tight_layout()
    return fig


def _fig_entropy_init(vs):
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.3))
    for k, (lb, c, a) in enumerate(vs):
        col = COLORS[k % len(COLORS)]
        band(axes[0], a["t"], a["entropy_formula"], col, rf"{lb}: $S_{{formula}}(X)$")
        if "entropy_measured" in a:
            band(axes[0], a["t"], a["entropy_measured"], col, rf"{lb}: $S_{{measured}}(W)$", ls="--")
            gap = np.abs(a["entropy_measured"] - a["entropy_formula"])
            band(axes[1], a["t"], positive_or_nan(gap), col, lb)
    axes[0].set_xlabel("time $t$")
    axes[0].set_ylabel("entropy $S$")
    axes[0].legend()
    axes[1].set_yscale("log")
    axes[1].set_xlabel("time $t$")
    axes[1].set_ylabel(r"$|S_{measured}(W) - S_{formula}(\phi(W))|$")
    axes[1].legend()
    fig.suptitle("Entropy along training: balanced vs unbalanced initialisation (gradient flow)", fontsize=9)
    fig.tight_layout()
    return fig


def _fig_stationary_study(vs):
    cfg0 = vs[0][1]
    d = cfg0["network"]["widths"][0]
    fig, axes = plt.subplots(1, 1 if d == 1 else 2, figsize=(4.0 * (1 if d == 1 else 2), 3.4), squeeze=False)
    runs = [(lb, c, a, np.arange(a["loss"].shape[1])) for lb, c, a in vs]
    beta = cfg0["dynamics"]["beta"]
    b0 = beta[0] if isinstance(beta, list) else beta
    hist_panels(axes[0], runs, cfg0, [b0])
    schemes = ", ".join(f"{lb} = {c['dynamics']['scheme']} (h = {c['dynamics']['step_size']:g})" for lb, c, _ in vs)
    fig.suptitle(
        f"Stationary singular values, {energy_title(cfg0)}, N = {cfg0['network']['depth']}, d = {d}, "
        rf"$\beta$ = {b0:g}" + "\n" + schemes, fontsize=8)
    fig.tight_layout()
    return fig


def _fig_free_energy(vs):
    """One colour per beta; the first stochastic variant as median + band, further ones as median
    lines (dotted), the deterministic free-energy flow dashed."""
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    betas = sorted({float(b) for _, _, a in vs if "beta" in a for b in np.unique(a["beta"])})
    cmap = {b: COLORS[i % len(COLORS)] for i, b in enumerate(betas)}
    keys = [("loss", "energy $E$"), ("entropy_formula", "entropy $S$"), ("free_energy", r"free energy $F = E - S/\beta$")]
    n_stoch = 0
    styles = []
    for lb, c, a in vs:
        flow = c["dynamics"]["scheme"] == "free_energy_flow"
        style = "--" if flow else ("-" if n_stoch == 0 else ":")
        styles.append((lb, style, c["dynamics"]["scheme"]))
        for b in np.unique(a["beta"]):
            idx = np.flatnonzero(a["beta"] == b)
            for ax, (k, ylab) in zip(axes, keys):
                if k not in a:
                    continue
                if not flow and n_stoch == 0:
                    band(ax, a["t"], a[k][:, idx], cmap[float(b)], None, lines_below=1)
                else:
                    ax.plot(a["t"], np.median(a[k][:, idx], axis=1), color=cmap[float(b)], ls=style, lw=1.2)
                ax.set_xlabel("time $t$")
                ax.set_ylabel(ylab)
        n_stoch += not flow

    # Known stationary values: the means of E, S, F under the Gibbs reference of the run's energy.
    stoch = next((c for _, c, _ in vs if c["dynamics"]["scheme"] != "free_energy_flow"), None)
    ref_drawn = False
    for b in betas:
        m = stationary_means(stoch, b) if stoch is not None else None
        if m is None:
            continue
        ref_drawn = True
        for ax, (k, _) in zip(axes, keys):
            ax.axhline(m[k], color=cmap[b], ls="-.", lw=0.8)
    handles = [Line2D([], [], color=cmap[b], lw=2, label=rf"$\beta = {b:g}$") for b in betas]
    if ref_drawn:
        handles.append(Line2D([], [], color="0.3", ls="-.", lw=0.8, label="stationary mean (Gibbs reference)"))
    handles += [Line2D([], [], color="0.3", ls=st, label=f"{lb} ({sch})") for lb, st, sch in styles]
    axes[2].legend(handles=handles, fontsize=6.5, loc="best")
    fig.suptitle("Free energy along Langevin runs (median; 10-90% band for the first) and the noise-free "
                 "free-energy flow (dashed), from the same X(0)", fontsize=9)
    fig.tight_layout()
    return fig


def _solution_plane(depth, x11, x22, lim, n=241):
    """On the plane X = [[x11, a], [b, x22]], a, b in [-lim, lim] (the solutions when the diagonal is
    observed): the grid g, the entropy S(X) and the log-volume density of the plane in the metric g^N,
    1/2 log det [g^N(E_a, E_b)]_{a,b in {12, 21}}, g^N(Z, Z') = tr(Z^T A^{-1}(Z')). Both (n, n), rows b."""
    g = np.linspace(-lim, lim, n)
    A, Bm = np.meshgrid(g, g, indexing="xy")
    X = torch.zeros(n, n, 2, 2, dtype=torch.float64)
    X[..., 0, 0], X[..., 1, 1] = x11, x22
    X[..., 0, 1], X[..., 1, 0] = torch.tensor(A), torch.tensor(Bm)
    S = entropy_from_singular_values(torch.linalg.svdvals(X), depth).numpy()
    frame = SVDFactors.of(X, depth)
    E = torch.zeros(2, 1, 1, 2, 2, dtype=torch.float64)
    E[0, ..., 0, 1] = 1.0
    E[1, ..., 1, 0] = 1.0
    with np.errstate(all="ignore"):
        AinvE = torch.stack([frame.apply(E[k].expand(n, n, 2, 2), -1.0) for k in range(2)])  # (2, n, n, 2, 2)
        G = torch.einsum("anmij,bnmij->nmab", E.expand(2, n, n, 2, 2), AinvE)
        logvol = 0.5 * torch.logdet(G).numpy()
    return g, S, logvol


def _fig_completion(vs):
    two = [(lb, c, a) for lb, c, a in vs if c["network"]["widths"][0] == 2 and "X" in a]
    more = [(lb, c, a) for lb, c, a in vs if c["network"]["widths"][0] > 2 and "X" in a]
    n_panels = 2 * len(two) + len(more) + 1
    cols = min(n_panels, 2)
    rows = (n_panels + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.0 * cols, 3.9 * rows), squeeze=False)
    axes = list(axes.flat)
    k = 0
    for lb, c, a in two:
        N = c["network"]["depth"]
        Xf, loss = a["X"][-1], a["loss"][-1]  # outcomes (B, 2, 2), (B,)
        tgt = np.asarray(_target(c))
        lim = max(3.0, float(np.quantile(np.abs(Xf[:, [0, 1], [1, 0]]), 0.98)) * 1.2)
        g, S, logvol = _solution_plane(N, tgt[0, 0], tgt[1, 1], lim)
        p = tgt[0, 0] * tgt[1, 1]
        for field, name in ((S, rf"entropy $S(X)$, N = {N}"), (logvol, rf"log-volume density of the solution set, metric $g^N$ (N = {N})")):
            ax = axes[k]
            k += 1
            F = np.where(np.isfinite(field), field, np.nan)
            lo, hi = np.nanquantile(F, [0.01, 0.99])
            im = ax.pcolormesh(g, g, F, cmap="viridis", shading="auto", vmin=lo, vmax=hi, rasterized=True)
            fig.colorbar(im, ax=ax, label=name)
            xs = np.linspace(abs(p) / lim, lim, 200)
            for sgn in (1, -1):
                ax.plot(sgn * xs, sgn * p / xs, color="w", lw=1.0, ls="--",
                        label=rf"rank 1: $X_{{12}}X_{{21}} = {p:g}$" if sgn == 1 else None)
            ax.scatter(Xf[:, 0, 1], Xf[:, 1, 0], s=5, c="C3", alpha=0.7, lw=0,
                       label=f"{len(Xf)} outcomes (median loss {np.median(loss):.0e})")
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_xlabel("$X_{12}$")
            ax.set_ylabel("$X_{21}$")
            ax.set_title(f"{lb}: observed $X_{{11}} = {tgt[0, 0]:g}$, $X_{{22}} = {tgt[1, 1]:g}$; solutions = this plane")
            ax.legend(loc="upper right", fontsize=6.5)
    for lb, c, a in more:
        ax = axes[k]
        k += 1
        d = c["network"]["widths"][0]
        s = np.linalg.svd(a["X"][-1], compute_uv=False)
        r = s / s[:, :1]
        for i in range(1, d):
            ax.hist(np.log10(np.maximum(r[:, i], 1e-16)), bins=40, histtype="step", color=COLORS[i],
                    label=rf"$\log_{{10}} s_{i + 1}/s_1$")
        ax.set_xlabel(r"$\log_{10}$ normalised singular values of the outcome")
        ax.set_ylabel("runs")
        ax.set_title(f"{lb}: {len(r)} outcomes, median final loss {np.median(a['loss'][-1]):.0e}")
        ax.legend()
    ax = axes[k]
    k += 1
    for j, (lb, c, a) in enumerate(vs):
        band(ax, a["t"], np.where(np.isfinite(a["entropy_formula"]), a["entropy_formula"], np.nan),
             COLORS[j % len(COLORS)], lb)
    ax.set_xlabel("time $t$")
    ax.set_ylabel("entropy $S(X(t))$ (median, 10-90%)")
    ax.set_title("entropy along the runs")
    ax.legend()
    for ax in axes[k:]:
        ax.set_visible(False)
    fig.suptitle("Matrix completion by gradient flow from small balanced initialisations "
                 "(Cohen, Menon & Veraszto, arXiv 2210.12497)", fontsize=9)
    fig.tight_layout()
    return fig


def _target(cfg):
    return target_matrix(cfg["energy"], cfg["network"]["widths"]).numpy()


def _fig_overlay(vs):
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.3))
    for k, (lb, c, a) in enumerate(vs):
        col = COLORS[k % len(COLORS)]
        band(axes[0], a["t"], a["loss"], col, lb)
        if "singular_values" in a:
            for i in range(a["singular_values"].shape[2]):
                band(axes[1], a["t"], a["singular_values"][:, :, i], col, lb if i == 0 else None)
    if all(np.all(a["loss"] > 0) for _, _, a in vs):
        axes[0].set_yscale("log")
    axes[0].set_xlabel("time $t$")
    axes[0].set_ylabel("loss $E$")
    axes[1].set_xlabel("time $t$")
    axes[1].set_ylabel("singular values $s_i(X)$")
    axes[0].legend()
    fig.tight_layout()
    return fig


_FIELD_STYLE = {"real": ("C0", "o", r"$\mathbb{R}$"), "complex": ("C1", "s", r"$\mathbb{C}$"),
                "quaternion": ("C2", "^", r"$\mathbb{H}$")}


def _fig_fields(vs):
    """DLNs over R, C, H (network.field): Saxe modes, S_beta closed form vs measured, and their gap.
    Balanced variants (init: balanced) are drawn solid, the others (theory does not apply) dashed."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for lb, c, a in vs:
        col, mk, sym = _FIELD_STYLE[c["network"].get("field", "real")]
        t, balanced = a["t"], c["network"]["init"] == "balanced"
        sub = max(1, len(t) // 25)
        if "saxe_singular_values" in a:
            S = a["singular_values"]
            for i in range(S.shape[2]):
                axes[0].plot(t[::sub], np.median(S[::sub, :, i], axis=1), mk, color=col, ms=3.5, mfc="none",
                             label=f"{lb}: singular values over {sym}" if i == 0 else None)
        if balanced:
            axes[1].plot(t, np.median(a["entropy_formula"], axis=1), color=col, lw=1.2, label=rf"{lb}: $S_\beta(X)$ closed form")
            if "entropy_measured" in a:
                axes[1].plot(t[::sub], np.median(a["entropy_measured"][::sub], axis=1), mk, color=col, ms=3.5, mfc="none",
                             label=f"{lb}: measured orbit log-volume")
        if "entropy_measured" in a:
            gap = np.abs(a["entropy_measured"] - a["entropy_formula"])
            band(axes[2], t, positive_or_nan(np.maximum(gap, 1e-16)), col,
                 f"{lb}" + ("" if balanced else " (unbalanced start: theory does not apply)"), ls="-" if balanced else "--")
    saxe = [a for _, _, a in vs if "saxe_singular_values" in a]
    if saxe:
        for i in range(saxe[0]["saxe_singular_values"].shape[1]):
            axes[0].plot(saxe[0]["t"], saxe[0]["saxe_singular_values"][:, i], "k-", lw=0.9,
                         label="Saxe closed form (same for every field)" if i == 0 else None)
    else:
        axes[0].text(0.5, 0.5, "no variant in the Saxe setting", transform=axes[0].transAxes, ha="center")
    axes[0].set(xlabel="time $t$", ylabel="singular values $s_i(X(t))$", title="aligned balanced start: Saxe modes")
    axes[1].set(xlabel="time $t$", ylabel="entropy", title=r"$S_\beta$ formula vs measured (balanced starts)")
    axes[2].set(xlabel="time $t$", ylabel=r"$|S_{measured}(W) - S_\beta(\phi(W))|$", yscale="log",
                title="agreement on the balanced manifold, departure off it")
    for ax in axes:
        ax.legend(fontsize=6.5)
    c0 = vs[0][1]
    fig.suptitle(r"DLN over $\mathbb{R}, \mathbb{C}, \mathbb{H}$ ($\beta$ = 1, 2, 4): $E=\frac{1}{2}\|X-\Phi\|^2$ (Re tr pairing), "
                 f"{c0['dynamics']['scheme']} (RK4, h = {c0['dynamics']['step_size']:g}), d = {c0['network']['widths'][0]}, "
                 f"N = {c0['network']['depth']}", fontsize=9)
    fig.tight_layout()
    return fig


STUDY_FIGURES = {
    "saxe_modes": _fig_saxe_modes,
    "flows": _fig_flows,
    "entropy_init": _fig_entropy_init,
    "stationary": _fig_stationary_study,
    "free_energy": _fig_free_energy,
    "completion": _fig_completion,
    "overlay": _fig_overlay,
    "fields": _fig_fields,
    "infinite_depth": fig_infinite_depth,
    "balancing": fig_balancing,
    "sgd_comparison": fig_sgd_comparison,
}


def plot_study(study_dir: str, formats=("png", "pdf")) -> list[str]:
    """Draw the comparison figure of a study folder (study.figure; auto: overlay)."""
    with plt.rc_context(STYLE):
        cfg = R.read_config(study_dir)
        kind = cfg["study"]["figure"]
        kind = "overlay" if kind == "auto" else kind
        vs = _variants(study_dir)
        if not vs:
            return []
        return save_figure(STUDY_FIGURES[kind](vs), study_dir, kind, formats)
