"""Detail figures for the infinite-depth limit and the balancing flows, drawn with the Python API.

The config-driven showcase figures are configs/infinite_depth.yaml and configs/balancing.yaml
(results/showcase/infinite_depth.png, balancing.png); this script adds what a run's arrays do not
hold (the learning/regularizing split of the velocity, GD's imbalance from a balanced start).

    PYTHONPATH=. python scripts/showcase_depth_balancing.py [--out results/showcase] [--only depth|balancing]

infinite_depth_detail.png: the end-to-end flow and the free-energy flow of X (time in units of N) at
N = 2, 4, 16, 64 and N = inf, and the distance of each finite-N trajectory to the N = inf one
against N (rate 1/N).
balancing_detail.png: the balancing flows on the fiber of a Gaussian start (||G(t)|| against the exact
e^{-2t} law of the induced flow and the linearized rate of the group flow; the orbit volume against
S(X)), and gradient descent with weight decay from the same start (balancedness against
e^{-2 lam t}, exact for the flow; the split of the velocity into the learning flow and the
regularizing flow on the fibers). About 30 s on one core.
"""
from __future__ import annotations

import argparse
import math
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from dlnsim.dynamics.balancing import (  # noqa: E402
    BalancingFlow,
    WeightDecayDescent,
    balancing_rate,
    training_decomposition,
)
from dlnsim.dynamics.gradient import EndToEndFlow  # noqa: E402
from dlnsim.dynamics.infinite_depth import InfiniteDepthFlow  # noqa: E402
from dlnsim.energies import MatrixRegression  # noqa: E402
from dlnsim.entropy import entropy, orbit_log_volume  # noqa: E402
from dlnsim.network import balancedness, end_to_end, random_orthogonal  # noqa: E402

DT = torch.float64
DEPTHS = [2, 4, 16, 64]


def _orth(d, g):
    return random_orthogonal((), d, DT, None, g)


def depth_problem(seed=3):
    g = torch.Generator().manual_seed(seed)
    d = 3
    Phi = (_orth(d, g) * torch.tensor([3.0, 1.5, 0.5], dtype=DT)) @ _orth(d, g).mT
    X0 = (_orth(d, g) * torch.tensor([0.3, 0.2, 0.1], dtype=DT)) @ _orth(d, g).mT
    return MatrixRegression(Phi), X0.unsqueeze(0), Phi


def run_flow(scheme, X0, n, every):
    st = scheme.init_state(X=X0)
    ts, Xs = [0.0], [st.X.clone()]
    for k in range(n):
        st = scheme.step(st)
        if (k + 1) % every == 0:
            ts.append(st.t)
            Xs.append(st.X.clone())
    return np.array(ts), torch.cat(Xs)


def figure_depth(out):
    E, X0, Phi = depth_problem()
    h, T, beta = 0.01, 8.0, 4.0
    n, every = int(T / h), 5
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.3))
    colors = plt.cm.viridis(np.linspace(0.05, 0.85, len(DEPTHS)))
    errs = {None: [], beta: []}
    for ax, b, title in ((axes[0], None, "end-to-end flow  dX/dt = -(A_N/N)(grad E)"),
                         (axes[1], beta, f"free-energy flow  F = E - S/beta, beta = {beta:g}")):
        ts, Xi = run_flow(InfiniteDepthFlow(E, h, beta=b), X0, n, every)
        si = torch.linalg.svdvals(Xi).numpy()
        for N, c in zip(DEPTHS, colors):
            _, XN = run_flow(EndToEndFlow(E, h, N, time_scale="depth", beta=b), X0, n, every)
            sN = torch.linalg.svdvals(XN).numpy()
            for k in range(3):
                ax.plot(ts, sN[:, k], color=c, lw=1.2, label=f"N = {N}" if k == 0 else None)
            # sup over the saved times of ||X_N(t) - X_inf(t)|| / ||Phi||
            errs[b].append(float(((XN - Xi).flatten(-2).norm(dim=-1)).max() / Phi.norm()))
        for k in range(3):
            ax.plot(ts, si[:, k], "k--", lw=1.6, label="N = inf (log-mean kernel)" if k == 0 else None)
        for lam in (3.0, 1.5, 0.5):
            ax.axhline(lam, color="0.8", lw=0.8, zorder=0)
        ax.set_xlabel("t (time rescaled by N: time_scale = depth)")
        ax.set_ylabel("singular values of X")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8, loc="lower right")
    Ns = [4, 8, 16, 32, 64, 128]
    for b, mk, lab in ((None, "o", "end-to-end flow"), (beta, "s", f"free-energy flow (beta = {beta:g})")):
        ts_e = []
        for N in Ns:
            if N in DEPTHS:
                ts_e.append(errs[b][DEPTHS.index(N)])
            else:
                _, Xi = run_flow(InfiniteDepthFlow(E, h, beta=b), X0, n, every)
                _, XN = run_flow(EndToEndFlow(E, h, N, time_scale="depth", beta=b), X0, n, every)
                ts_e.append(float(((XN - Xi).flatten(-2).norm(dim=-1)).max() / Phi.norm()))
        slope = np.polyfit(np.log(Ns[2:]), np.log(ts_e[2:]), 1)[0]  # N >= 16
        axes[2].loglog(Ns, ts_e, mk + "-", label=f"{lab}: slope {slope:.2f} (N >= 16)")
    ref = np.array(Ns, dtype=float)
    axes[2].loglog(ref, errs[None][DEPTHS.index(16)] * 16 / ref, "k:", label="~ 1/N")
    axes[2].set_xlabel("depth N")
    axes[2].set_ylabel("sup_{t <= %g} ||X_N(t) - X_inf(t)|| / ||Phi||" % T)
    axes[2].set_title("convergence to the infinite-depth flow", fontsize=10)
    axes[2].legend(fontsize=8)
    fig.suptitle("Infinite-depth limit: E = 1/2 ||X - Phi||^2, d = 3, Phi spectrum (3, 1.5, 0.5), RK4 h = 0.01 "
                 "(Cohen, Menon & Veraszto time scale)", fontsize=10)
    fig.tight_layout()
    path = os.path.join(out, "infinite_depth_detail.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _fiber_flows(axes, W0, X0, N, h=0.01, T=8.0):
    """(a) ||G(t)|| along both balancing flows; (b) orbit-volume gap along the induced one."""
    B = X0.shape[0]
    G0 = balancedness(W0).flatten(-3).norm(dim=-1)
    for metric, ls in (("induced", "-"), ("group", "--")):
        sch = BalancingFlow(None, h, N, metric=metric)
        st = sch.init_state(weights=W0)
        ts, Gs, gaps = [0.0], [G0.numpy()], [(orbit_log_volume(W0) - entropy(X0, N)).abs().numpy()]
        for k in range(int(T / h)):
            st = sch.step(st)
            if (k + 1) % 10 == 0:
                ts.append(st.t)
                Gs.append(balancedness(st.weights).flatten(-3).norm(dim=-1).numpy())
                if metric == "induced":
                    gaps.append((orbit_log_volume(st.weights) - entropy(end_to_end(st.weights), N)).abs().numpy())
        Gs, ts = np.array(Gs), np.array(ts)
        for b in range(B):
            axes[0].semilogy(ts, Gs[:, b], ls, color=f"C{b}", lw=1.2, label=f"{metric} metric" if b == 0 else None)
            if metric == "induced":
                axes[1].semilogy(ts, np.maximum(np.array(gaps)[:, b], 1e-16), color=f"C{b}", lw=1.2)
    rates = balancing_rate(X0, N, "group").numpy()
    axes[0].text(0.02, 0.03, "group metric, linearized rates 4 s_min^{2/N}(1 - cos(pi/N)) = "
                 + ", ".join(f"{r:.3f}" for r in rates), transform=axes[0].transAxes, fontsize=7)
    axes[0].semilogy(ts, G0.numpy().max() * np.exp(-2 * ts), "k:", lw=2, label="e^{-2t} ||G(0)|| (exact for induced)")
    axes[0].set_ylim(1e-15, None)
    axes[0].set(xlabel="t", ylabel="||G(t)||_F  (all layers)")
    axes[0].set_title(f"(a) balancing flows of R on the fiber (X fixed)\nGaussian starts, d = {X0.shape[-1]}, N = {N}, RK4 h = {h:g}", fontsize=9)
    axes[0].legend(fontsize=8)
    axes[1].set(xlabel="t", ylabel="|orbit log-volume(W(t)) - S(X)|")
    axes[1].set_title("(b) measured orbit volume -> closed-form S(X)\n(induced flow, same starts)", fontsize=9)


def _weight_decay(axes, W0, E, N, T=40.0):
    """(c) ||G|| under GD + weight decay from a Gaussian start; (d) the velocity split; (e) the loss."""
    for j, lam in enumerate((0.01, 0.1, 1.0)):
        for hh, ls in ((0.01, "-"), (0.1, "--")):
            sch = WeightDecayDescent(E, hh, N, weight_decay=lam)
            st = sch.init_state(weights=W0)
            every = max(1, int(0.2 / hh))
            ts, Gs, loss, vh, vv = [0.0], [float(balancedness(W0).norm())], [float(E.value(end_to_end(W0)))], [], []
            for k in range(int(T / hh)):
                st = sch.step(st)
                if (k + 1) % every == 0:
                    ts.append(st.t)
                    Gs.append(float(balancedness(st.weights).norm()))
                    loss.append(float(E.value(end_to_end(st.weights))))
                    if hh == 0.01:
                        hz, vt = training_decomposition(st.weights, E, lam)
                        vh.append(float(sum(x.square().sum() for x in hz).sqrt()))
                        vv.append(float(sum(x.square().sum() for x in vt).sqrt()))
            ts = np.array(ts)
            axes[0].semilogy(ts, Gs, ls, color=f"C{j}", label=f"lam = {lam:g}, h = {hh:g}")
            axes[2].semilogy(ts, loss, ls, color=f"C{j}", label=f"lam = {lam:g}, h = {hh:g}")
            if hh == 0.01:
                axes[0].semilogy(ts, Gs[0] * np.exp(-2 * lam * ts), ":", color=f"C{j}", lw=2)
                axes[1].semilogy(ts[1:], np.maximum(vh, 1e-14), "-", color=f"C{j}", label=f"learning (horizontal), lam = {lam:g}")
                axes[1].semilogy(ts[1:], np.maximum(vv, 1e-14), "--", color=f"C{j}", label=f"regularizing (vertical), lam = {lam:g}")
    axes[0].set_ylim(1e-10, None)
    axes[0].set(xlabel="t = steps x h", ylabel="||G(t)||_F")
    axes[0].set_title("(c) GD with weight decay lam, Gaussian start: balancedness\n"
                      "dotted: e^{-2 lam t} ||G(0)|| (exact for the gradient flow)", fontsize=9)
    axes[0].legend(fontsize=7)
    axes[1].set(xlabel="t", ylabel="speed")
    axes[1].set_title("(d) -grad L - lam W = learning flow (moves X)\n+ lam x induced balancing flow (on the fiber), h = 0.01", fontsize=9)
    axes[1].legend(fontsize=6)
    axes[2].set(xlabel="t", ylabel="E(X(t))")
    axes[2].set_title("(e) loss: learning time vs balancing time 1/(2 lam)\n"
                      "(lam = 1: h = 0.1 and h = 0.01 end at different stationary points)", fontsize=9)
    axes[2].legend(fontsize=7)


def _gd_imbalance(ax, E, N, d, g, T=30.0):
    """(f) from a small balanced start: GD's O(h^2)-per-step imbalance against the 2 h lam contraction."""
    from dlnsim.network import balanced_weights

    X0 = (_orth(d, g) * torch.full((d,), 0.05, dtype=DT)) @ _orth(d, g).mT
    Wb = balanced_weights(X0.unsqueeze(0), N, g)
    for j, lam in enumerate((0.0, 0.1, 1.0)):
        for hh, ls in ((0.02, "-"), (0.1, "--")):
            sch = WeightDecayDescent(E, hh, N, weight_decay=lam)
            st = sch.init_state(weights=Wb)
            ts, Gs = [], []
            for k in range(int(T / hh)):
                st = sch.step(st)
                ts.append(st.t)
                Gs.append(float(balancedness(st.weights).norm()))
            ax.semilogy(ts, np.maximum(Gs, 1e-17), ls, color=f"C{j + 3}", label=f"lam = {lam:g}, h = {hh:g}")
    ax.set(xlabel="t = steps x h", ylabel="||G(t)||_F")
    ax.set_title("(f) GD, small balanced start: each step adds\nh^2 (g^T g - g g^T) (the flow keeps G = 0);"
                 " weight decay\ncontracts G by (1 - h lam)^2 per step", fontsize=9)
    ax.legend(fontsize=7)


def figure_balancing(out):
    g = torch.Generator().manual_seed(7)
    B, d, N = 4, 3, 4
    W0 = [torch.randn(B, d, d, dtype=DT, generator=g) / math.sqrt(d) for _ in range(N)]
    X0 = end_to_end(W0)
    fig, axes = plt.subplots(2, 3, figsize=(16, 9))
    _fiber_flows(axes[0, :2], W0, X0, N)
    Phi = (_orth(d, g) * torch.tensor([2.0, 1.0, 0.5], dtype=DT)) @ _orth(d, g).mT
    E = MatrixRegression(Phi)
    _weight_decay([axes[0, 2], axes[1, 0], axes[1, 1]], [W[:1] for W in W0], E, N)
    _gd_imbalance(axes[1, 2], E, N, d, g)
    fig.suptitle("Balancing flows (Lindsey & Menon): fiber gradient flows of R = 1/2 sum ||W_p||^2, and training with "
                 "weight decay on E = 1/2 ||X - Phi||^2, Phi spectrum (2, 1, 0.5), d = 3, N = 4", fontsize=10)
    fig.tight_layout()
    path = os.path.join(out, "balancing_detail.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="results/showcase")
    p.add_argument("--only", choices=("depth", "balancing"))
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    os.makedirs(a.out, exist_ok=True)
    if a.only in (None, "depth"):
        print(figure_depth(a.out))
    if a.only in (None, "balancing"):
        print(figure_balancing(a.out))


if __name__ == "__main__":
    sys.exit(main())
