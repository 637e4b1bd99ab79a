"""Study figure `sgd_comparison`: gradient descent, SGD variants and Langevin/RLE variants on one problem.

Four panels against t, one curve (median and 10-90% band over the ensemble) per variant: the
balancedness max_p ||G_p(t) - G_p(0)||_F (parameter-space schemes; the end-to-end RLE has no weights:
it lives on the balanced manifold by construction), the effective rank of X, the entropy S(X)
(square X) and the relative test error on the unobserved entries (matrix completion). The legend
names each variant's scheme and its noise (batch size, label noise, beta); the title names the
energy of the runs (dlnsim.run_theory.energy_title) and how the temperatures compare:

- a variant with a beta (RLE, Langevin) runs at that inverse temperature;
- a full-batch label-noise SGD variant has the effective inverse temperature
  1/beta_eff = h tr C_H / (2 dim H) of dlnsim.gradient_noise, evaluated here at the final X of the
  gradient-descent variant (recorded with observers.include: X), where the weights of gradient
  descent from a balanced start are balanced up to the drawn ||G_p|| (label_noise_inverse_temperature
  is exact on the balanced manifold). The figure prints both numbers, so a reader sees whether they match.

No closed form or stationary law is drawn: none applies to gradient descent or SGD, and the Gibbs
law exp(-beta E + S) dvol of a Langevin/RLE variant is not drawn here (the stationary figures do
that); the figure says so.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch

from ..gradient_noise import label_noise_inverse_temperature
from ..run_theory import energy_title, run_energy
from .common import COLORS, band, positive_or_nan

__all__ = ["fig_sgd_comparison", "describe_scheme", "matched_temperature"]


def describe_scheme(cfg) -> str:
    """The scheme of a run and its noise, for a legend: 'label-noise SGD (sigma = 0.3), h = 0.05'."""
    dyn = cfg["dynamics"]
    name, opts, h = dyn["scheme"], dyn["options"] or {}, dyn["step_size"]
    if name == "sgd":
        b, sigma = opts.get("batch_size"), opts.get("label_noise") or 0.0
        what = ("label-noise SGD" if sigma > 0 else "minibatch SGD" if b is not None else "SGD (full batch, no noise)")
        parts = [f"b = {b}" if b is not None else "full batch"] + ([f"$\\sigma$ = {sigma:g}"] if sigma > 0 else [])
        for key, sym in (("weight_decay", "$\\lambda$"), ("momentum", "$\\mu$")):
            if opts.get(key):
                parts.append(f"{sym} = {opts[key]:g}")
        desc = f"{what} ({', '.join(parts)})"
    elif name == "gradient_descent":
        desc = "gradient descent"
    elif name == "rle":
        desc = "RLE on X (Riemannian Langevin, end to end)"
    else:
        desc = name.replace("_", " ")
    beta = dyn["beta"]
    if beta is not None:
        desc += f", $\\beta$ = {beta if isinstance(beta, (int, float)) else beta[0]:g}"
    return f"{desc}, h = {h:g}"


def matched_temperature(vs) -> list[tuple[str, float]]:
    """[(label, beta_eff)] of the full-batch label-noise SGD variants at the final X of the first
    gradient-descent variant (median over its trajectories), or [] when the study has no such pair
    or did not record X. Exact on the balanced manifold (dlnsim.gradient_noise.label_noise_inverse_temperature)."""
    gd = [(c, a) for _, c, a in vs if c["dynamics"]["scheme"] == "gradient_descent" and "X" in a]
    if not gd:
        return []
    cfg, a = gd[0]
    w = cfg["network"]["widths"]
    if cfg["energy"]["type"] != "matrix_completion" or w[0] != w[-1]:
        return []
    energy = run_energy(cfg["energy"], w, batch=a["X"].shape[1])  # per-trajectory masks need the batch
    term = next(t for t in getattr(energy, "terms", (energy,)) if getattr(type(t), "name", None) == "matrix_completion")
    out = []
    X = torch.as_tensor(a["X"][-1], dtype=torch.float64)
    for lb, c, _ in vs:
        opts = c["dynamics"]["options"] or {}
        if c["dynamics"]["scheme"] == "sgd" and opts.get("batch_size") is None and (opts.get("label_noise") or 0) > 0:
            inv = label_noise_inverse_temperature(X, term.mask, opts["label_noise"], c["network"]["depth"], c["dynamics"]["step_size"])
            out.append((lb, float(np.median(1.0 / inv.numpy()))))
    return out


_PANELS = (
    ("balancedness", r"$\max_p \|G_p(t) - G_p(0)\|_F$", "log"),
    ("effective_rank", "effective rank", "linear"),
    ("entropy_formula", "entropy $S(X)$", "linear"),
    ("test_error", "relative test error (unobserved entries)", "log"),
    ("loss", "loss $E(X)$ (training)", "log"),
)
_WHY = {"balancedness": "end to end: no weights (on the balanced manifold by construction)",
        "entropy_formula": "not recorded", "test_error": "not recorded", "effective_rank": "not recorded"}
_LAYER_STYLES = ("--", ":", "-.", (0, (5, 1, 1, 1)))


def _panels(vs):
    """The panels with data for some variant; the loss only where no test error is recorded."""
    keys = [k for k in _PANELS if any(k[0] in a or (k[0] == "effective_rank" and "layer_effective_rank" in a) for _, _, a in vs)]
    if any(k[0] == "test_error" for k in keys):
        keys = [k for k in keys if k[0] != "loss"]
    return keys


def fig_sgd_comparison(vs):
    panels = _panels(vs)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.0 * len(panels), 4.6), squeeze=False)
    axes = axes[0]
    handles = []
    n_layers = 0
    for k, (lb, c, a) in enumerate(vs):
        col, t = COLORS[k % len(COLORS)], a["t"]
        later = t > 0  # log time axis (and G_p(0) - G_p(0) = 0)
        for ax, (key, _, scale) in zip(axes, panels):
            if key == "effective_rank" and "layer_effective_rank" in a:
                L = a["layer_effective_rank"]
                n_layers = max(n_layers, L.shape[2])
                for p in range(L.shape[2]):
                    band(ax, t[later], L[later][:, :, p], col, ls=_LAYER_STYLES[p % len(_LAYER_STYLES)], lw=1.0)
            if key not in a:
                continue
            Y = a[key].max(axis=2) if key == "balancedness" else a[key]
            band(ax, t[later], positive_or_nan(Y[later]) if scale == "log" else Y[later], col)
        handles.append(plt.Line2D([], [], color=col, label=f"{lb}: {describe_scheme(c)}"))
    kinds = {c["energy"]["type"] for _, c, _ in vs}
    for ax, (key, ylabel, scale) in zip(axes, panels):
        if key == "test_error" and kinds != {"matrix_completion"}:  # regression: held-out data (regression_error)
            ylabel = "relative test error (held-out data)" if kinds == {"linear_regression"} else "relative test error"
        ax.set_xlabel("time $t$")
        ax.set_xscale("log")
        ax.set_ylabel(ylabel)
        ax.set_yscale(scale)
        if key == "effective_rank" and n_layers:
            ax.legend(handles=[plt.Line2D([], [], color="0.3", label="$X$")]
                      + [plt.Line2D([], [], color="0.3", ls=_LAYER_STYLES[p % len(_LAYER_STYLES)], lw=1.0, label=f"$W_{p + 1}$")
                         for p in range(n_layers)], fontsize=7, loc="best")
        missing = [lb for lb, _, a in vs if key not in a and not (key == "effective_rank" and "layer_effective_rank" in a)]
        if missing and key in _WHY:
            why = _WHY[key]
            if key == "entropy_formula":
                why = "X not square (S undefined) or not recorded"
            elif key == "test_error":
                why = "no test entries / held-out data, or not recorded"
            ax.text(0.02, 0.02, f"not drawn for {', '.join(missing)}: {why}", transform=ax.transAxes, fontsize=6.5, color="0.3")
    fig.legend(handles=handles, loc="lower center", ncol=2 if len(panels) > 2 else 1, fontsize=7.5,
               title="variant: scheme (curves: median over the trajectories, band: 10-90%)", title_fontsize=7.5)
    cfg0 = vs[0][1]
    widths, N, B = cfg0["network"]["widths"], cfg0["network"]["depth"], cfg0["dynamics"]["ensemble"]
    energies = {energy_title(c) for _, c, _ in vs}
    en = energies.pop() if len(energies) == 1 else "energy per variant (see configs)"
    lines = [f"{en}, widths {widths} (depth {N}), {cfg0['network']['init']} start, {B} trajectories per variant"]
    betas = [(lb, c["dynamics"]["beta"]) for lb, c, _ in vs if c["dynamics"]["beta"] is not None]
    matched = matched_temperature(vs)
    if betas or matched:
        parts = [f"{lb} runs at $\\beta$ = {b if isinstance(b, (int, float)) else b[0]:g}" for lb, b in betas]
        parts += [f"{lb}: $\\beta_{{eff}}$ = {b:.4g} at the final X of gradient descent (median over trajectories; "
                  r"$1/\beta_{eff} = h\,\mathrm{tr}\,C_H / (2 \dim H)$, dlnsim.gradient_noise)" for lb, b in matched]
        lines.append("temperatures: " + "; ".join(parts))
    lines.append("No closed form or stationary law drawn: none applies to gradient descent or SGD here"
                 + (", and this figure does not draw the Gibbs law exp(-$\\beta$E + S) of the Langevin/RLE variants" if betas else ""))
    fig.suptitle("\n".join(lines), fontsize=8.5)
    fig.tight_layout(rect=(0, 0.13, 1, 1))
    return fig
