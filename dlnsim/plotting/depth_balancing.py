"""Study figures of the infinite-depth limit and of the balancing flows (study.figure: infinite_depth, balancing).

infinite_depth: variants of end-to-end schemes (end_to_end_flow, free_energy_flow) at several depths
N and at network.depth: inf, all with time_scale: depth; trajectories of the singular values per
scheme, and the distance sup_t ||X_N(t) - X_inf(t)|| / sup_t ||X_inf(t)|| against N (needs X in
observers.include) with the derived rate 1/N (docs/theory_depth_balancing.md, 1.1-1.4).
balancing: variants of balancing_flow (metric induced or group) and weight_decay_descent from one
unbalanced start; ||G(t)|| with the laws that apply to each variant (e^{-2t} exact for the induced
flow; the linearized rate 4 s_min^{2/N}(1 - cos(pi/N)) of the group flow, late times; e^{-2 lam t}
exact for the weight-decay flow (method rk4), and for gradient descent the flow's law, which GD
follows up to the O(h^2)-per-step imbalance it adds), the orbit-volume gap |S_measured - S(X)|,
and the loss.
"""
from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np

from .common import COLORS

__all__ = ["fig_infinite_depth", "fig_balancing"]

_SHOWN_DEPTHS = (2, 4, 16, 64)


def _flow_key(cfg) -> str:
    dyn = cfg["dynamics"]
    beta = dyn["beta"]
    return dyn["scheme"] + ("" if beta is None else f", beta = {beta}")


def fig_infinite_depth(vs):
    groups: dict[str, list] = {}
    for lb, c, a in vs:
        groups.setdefault(_flow_key(c), []).append((c["network"]["depth"], lb, a))
    n = len(groups)
    fig, axes = plt.subplots(1, n + 1, figsize=(5.0 * (n + 1), 4.0), squeeze=False)
    axes = axes[0]
    finite = sorted({N for g in groups.values() for N, _, _ in g if N != math.inf})
    cmap = plt.cm.viridis(np.linspace(0.05, 0.85, max(len(_SHOWN_DEPTHS), 1)))
    for k, (key, g) in enumerate(groups.items()):
        ax = axes[k]
        inf = [(lb, a) for N, lb, a in g if N == math.inf]
        for N, lb, a in sorted(g, key=lambda r: r[0]):
            s = a["singular_values"][:, 0, :]
            if N == math.inf:
                ax.plot(a["t"], s, "k--", lw=1.6, label=["N = inf (log-mean kernel)"] + [None] * (s.shape[1] - 1))
            elif N in _SHOWN_DEPTHS:
                col = cmap[_SHOWN_DEPTHS.index(N)]
                ax.plot(a["t"], s, color=col, lw=1.2, label=[f"N = {N}"] + [None] * (s.shape[1] - 1))
        ax.set_xlabel("t (time_scale: depth)")
        ax.set_ylabel("singular values of X (trajectory 0)")
        ax.set_title(key, fontsize=9)
        ax.legend(fontsize=7)
        if inf and "X" in inf[0][1]:
            Xi = inf[0][1]["X"]
            rows = []
            for N, lb, a in sorted(g, key=lambda r: r[0]):
                if N == math.inf or "X" not in a or a["X"].shape != Xi.shape:
                    continue
                diff = np.linalg.norm((a["X"] - Xi).reshape(*Xi.shape[:2], -1), axis=-1)
                rows.append((N, float(diff.max() / np.linalg.norm(Xi.reshape(*Xi.shape[:2], -1), axis=-1).max())))
            if rows:
                Ns, errs = np.array([r[0] for r in rows], float), np.array([r[1] for r in rows])
                fit = Ns >= 16
                lab = key
                if fit.sum() >= 2:
                    lab += f": slope {np.polyfit(np.log(Ns[fit]), np.log(errs[fit]), 1)[0]:.2f} (N >= 16)"
                axes[n].loglog(Ns, errs, "o-", color=COLORS[k % len(COLORS)], label=lab)
                axes[n].loglog(Ns, errs[-1] * Ns[-1] / Ns, ":", color=COLORS[k % len(COLORS)])
    axes[n].set_xlabel("depth N")
    axes[n].set_ylabel("sup_t ||X_N(t) - X_inf(t)|| / sup_t ||X_inf(t)||")
    axes[n].set_title("convergence to depth inf (dotted: the derived rate 1/N)", fontsize=9)
    if axes[n].has_data():
        axes[n].legend(fontsize=7)
    else:
        axes[n].text(0.5, 0.5, "no N = inf variant with X recorded\n(observers.include: X)", ha="center",
                     transform=axes[n].transAxes)
    fig.suptitle(f"Infinite-depth limit (Cohen, Menon & Veraszto): depths {finite} and inf, time in units of N",
                 fontsize=10)
    fig.tight_layout()
    return fig


def _G_total(a):
    """||G(t)||_F over all layers, (T, B)."""
    return np.sqrt((a["balancedness_norm"] ** 2).sum(axis=-1))


def _group_rate(c, a) -> float:
    """Linearized decay rate of ||G|| for the group-metric flow: 4 s_min^{2/N} (1 - cos(pi/N)) (X is fixed)."""
    N = c["network"]["depth"]
    s_min = a["singular_values"][0, :, -1]
    return 4.0 * s_min ** (2.0 / N) * (1 - math.cos(math.pi / N))


def fig_balancing(vs):
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
    for k, (lb, c, a) in enumerate(vs):
        col = COLORS[k % len(COLORS)]
        t = a["t"]
        if "balancedness_norm" in a:
            G = _G_total(a)
            axes[0].semilogy(t, np.median(G, axis=1), color=col, label=lb)
            G0 = np.median(G[0])
            dyn = c["dynamics"]
            opts = dyn["options"] or {}
            if dyn["scheme"] == "balancing_flow" and opts.get("metric", "induced") == "induced":
                axes[0].semilogy(t, G0 * np.exp(-2 * t), ":", color=col, lw=2, label="  e^{-2t} (exact)")
            elif dyn["scheme"] == "balancing_flow":
                r = float(np.median(_group_rate(c, a)))
                tail = t >= t[-1] / 2
                anchor = np.median(G[-1])
                axes[0].semilogy(t[tail], anchor * np.exp(-r * (t[tail] - t[-1])), ":", color=col, lw=2,
                                 label=f"  rate {r:.3f} (linearized, late t)")
            elif dyn["scheme"] == "weight_decay_descent":
                lam = float(opts.get("weight_decay", 0.0))
                exact = opts.get("method", "euler") == "rk4"
                axes[0].semilogy(t, G0 * np.exp(-2 * lam * t), ":", color=col, lw=2,
                                 label="  e^{-2 lam t}" + (" (exact)" if exact else " (flow; GD adds O(h^2)/step)"))
        if "entropy_measured" in a and c["dynamics"]["scheme"] == "balancing_flow":
            gap = np.abs(a["entropy_measured"] - a["entropy_formula"])
            axes[1].semilogy(t, np.maximum(np.median(gap, axis=1), 1e-16), color=col, label=lb)
        axes[2].plot(t, np.median(a["loss"], axis=1), color=col, label=lb)
    axes[0].set(xlabel="t", ylabel="||G(t)||_F (all layers, median over the ensemble)")
    axes[0].set_ylim(1e-16, None)  # below: roundoff of G = W^T W - W W^T
    axes[0].set_title("balancedness: fiber flows and training with weight decay\n"
                      "(weight decay lam contracts G at 2 lam: lam = 1 matches the induced fiber flow)", fontsize=9)
    axes[0].legend(fontsize=6.5)
    axes[1].set(xlabel="t", ylabel="|S_measured(W) - S(X)|")
    axes[1].set_title("orbit volume -> closed-form entropy along the fiber flows", fontsize=9)
    if axes[1].has_data():
        axes[1].legend(fontsize=7)
    axes[2].set(xlabel="t", ylabel="loss E(X) (median)")
    axes[2].set_yscale("log")
    axes[2].set_title("loss: constant on the fiber flows (X fixed); learning under weight decay", fontsize=9)
    axes[2].legend(fontsize=6.5)
    fig.suptitle("Balancing flows of R = 1/2 sum ||W_p||^2 on the fibers of phi (Lindsey & Menon) and gradient "
                 "descent with weight decay, from the same Gaussian start", fontsize=10)
    fig.tight_layout()
    return fig
