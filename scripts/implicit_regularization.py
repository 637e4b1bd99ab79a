"""Implicit-regularization reproductions with dlnsim's Python API (issue 12, section 4).

    python scripts/implicit_regularization.py noise
    python scripts/implicit_regularization.py varre

(Razin & Cohen's 2 x 2 example is a config, `dlnsim run configs/razin_cohen.yaml`, and the Arora et
al. completion study a sweep, `dlnsim sweep configs/sweep_arora.yaml`.)

noise: gradient descent, minibatch SGD, label-noise SGD and the RLE at the label-noise SGD's
    effective temperature on one small completion problem: balancedness, effective rank, entropy
    S(X) and test error over time (issue 12, section 3).

varre: Varre, Sagitova & Flammarion (NeurIPS 2024): in a wide two-layer linear regression, GD keeps
    the initial rank of the layers, label-noise SGD lowers it to the teacher's rank.

Prints a table of the headline numbers and the wall time, and writes the figure to --out.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from dlnsim.dynamics import GradientDescent  # noqa: E402
from dlnsim.energies import LinearRegression, MatrixCompletion  # noqa: E402
from dlnsim.metrics import (  # noqa: E402
    completion_errors,
    regression_errors,
    effective_rank,
)
from dlnsim.network import DeepLinearNetwork  # noqa: E402
from dlnsim.tasks import low_rank_target, random_mask  # noqa: E402

DTYPE = torch.float64


def noise_comparison(out: Path, d: int = 6, rank: int = 1, depth: int = 3, fraction: float = 0.6, h: float = 0.05,
                     steps: int = 20000, batch: int = 3, label_noise: float = 0.3, B: int = 8, saves: int = 100,
                     alpha: float = 1e-3, init_scale: float = 1e-3) -> dict:
    """GD, minibatch SGD, label-noise SGD and the RLE at the label-noise SGD's effective temperature.

    E = 1/2 ||M o (X - Phi)||^2 + alpha/2 ||X||^2 for every scheme: without the weak confinement alpha the
    Gibbs law exp(-beta E + S) of the RLE is not normalizable (E is flat along unobserved entries) and the
    RLE wanders off to |X| -> infinity (observed: Euler-Maruyama overflowed after ~6000 steps)."""
    from dlnsim.energies import WeightDecay
    from dlnsim.dynamics import SGD, RiemannianLangevin
    from dlnsim.entropy import entropy_from_singular_values
    from dlnsim.gradient_noise import noise_summary

    prob_truth = low_rank_target((d, d), rank, "ones", seed=0)
    seed = 1  # the first mask seed that observes >= rank + 1 entries in every row and column (else unrecoverable)
    while True:
        mask = random_mask((d, d), fraction=fraction, seed=seed)
        if min(float(mask.sum(0).min()), float(mask.sum(1).min())) >= rank + 1:
            break
        seed += 1
    E = MatrixCompletion(prob_truth * mask, mask) + WeightDecay(alpha)
    net = DeepLinearNetwork([d] * (depth + 1), batch=B, init="balanced", scale=init_scale, generator=torch.Generator().manual_seed(2))
    ws0 = [W.detach() for W in net.weights]
    # effective temperature of label-noise SGD where it lives: at the GD solution (trajectory 0)
    gd = GradientDescent(E, h, depth)
    st = gd.init_state(ws0)
    for _ in range(steps):
        st = gd.step(st)
    ln = SGD(E, h, depth, label_noise=label_noise)
    summ = noise_summary([W[0] for W in st.weights], ln.sampler, step_size=h)
    beta = summ["beta_eff"]
    schemes = {
        "gradient descent": GradientDescent(E, h, depth),
        f"minibatch SGD (b={batch})": SGD(E, h, depth, batch_size=batch, generator=torch.Generator().manual_seed(3)),
        f"label-noise SGD (sigma={label_noise})": SGD(E, h, depth, label_noise=label_noise, generator=torch.Generator().manual_seed(4)),
        f"RLE (beta_eff={beta:.3g})": RiemannianLangevin(E, h, depth, beta, generator=torch.Generator().manual_seed(5)),
    }
    every = steps // saves
    rec = {}
    t0 = time.perf_counter()
    for name, sch in schemes.items():
        st = sch.init_state(ws0)
        rows = []
        for k in range(steps + 1):
            if k:
                st = sch.step(st)
            if k % every == 0:
                X = st.end_to_end()
                s = torch.linalg.svdvals(X)
                S = entropy_from_singular_values(s, depth)
                bal = float("nan")
                if st.weights is not None:
                    bal = max(float(torch.linalg.matrix_norm(st.weights[p].mT @ st.weights[p] - st.weights[p - 1] @ st.weights[p - 1].mT).mean())
                              for p in range(1, depth))
                rows.append((st.t, bal, float(effective_rank(X).mean()), float(S.median()),
                             float(completion_errors(X, prob_truth, mask)["test_error_rel"].mean()), float(E.value(X).mean())))
        rec[name] = torch.tensor(rows, dtype=DTYPE)
    wall = time.perf_counter() - t0

    fig, ax = plt.subplots(1, 4, figsize=(17, 4.2))
    titles = ("balancedness ||G_p||_F (mean; RLE lives on M: 0)", "effective rank (mean)", "entropy S(X) (median)",
              "test error on unobserved entries (rel., mean)")
    for name, r in rec.items():
        for i in range(4):
            lo = 1 if i == 0 else 0  # G_p(0) = 0 exactly: no point on a log axis
            ax[i].plot(r[lo:, 0], r[lo:, i + 1], label=name)
    for i, ti in enumerate(titles):
        ax[i].set_title(ti, fontsize=9)
        ax[i].set_xlabel("t")
    ax[0].set_yscale("log")
    ax[3].set_yscale("log")
    ax[0].legend(fontsize=8)
    fig.suptitle(
        f"{d}x{d} rank-{rank} completion + {alpha:g}/2 ||X||^2, {int(mask.sum())} of {d * d} entries observed, depth {depth}, balanced init X(0) = {init_scale:g} U V^T, "
        f"B = {B} per scheme, h = {h}\nRLE at the inverse temperature matched to label-noise SGD at the GD solution, "
        f"1/beta = h tr C / (2 d^2) (dlnsim.gradient_noise); SGD noise is horizontal, so it moves G_p at order h^2 only. "
        "No closed form applies.", fontsize=9)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "sgd_noise_comparison.png", dpi=110)
    plt.close(fig)
    return {"beta_eff": beta, "mask_seed": seed, "summary": summ, "final": {k: r[-1].tolist() for k, r in rec.items()}, "wall_s": wall}


def varre(out: Path, d: int = 5, hidden: int = 10, teacher_rank: int = 2, n: int = 50, h: float = 0.05,
          steps: int = 40000, batch: int = 5, label_noise: float = 1.0, B: int = 8, saves: int = 200) -> dict:
    """Varre, Sagitova & Flammarion (NeurIPS 2024): in a wide two-layer linear regression, gradient descent
    keeps the rank of the layers it started with, label-noise SGD reduces it to the teacher's rank."""
    from dlnsim.dynamics import SGD
    from dlnsim.tasks import regression_problem

    prob = regression_problem(d, d, n, 200, teacher_rank=teacher_rank, seed=0)
    E = LinearRegression(prob.inputs, prob.outputs)
    net = DeepLinearNetwork([d, hidden, d], batch=B, init="gaussian", scale=1.0, generator=torch.Generator().manual_seed(1))
    ws0 = [W.detach() for W in net.weights]
    schemes = {"gradient descent": GradientDescent(E, h, 2),
               f"label-noise SGD (b={batch}, sigma={label_noise:g})": SGD(E, h, 2, batch_size=batch, label_noise=label_noise,
                                                                        generator=torch.Generator().manual_seed(2))}
    every = max(1, steps // saves)
    rec = {}
    t0 = time.perf_counter()
    for name, sch in schemes.items():
        st = sch.init_state(ws0)
        rows = []
        for k in range(steps + 1):
            if k:
                st = sch.step(st)
            if k % every == 0:
                W1, W2 = st.weights
                X = st.end_to_end()
                G = torch.linalg.matrix_norm(W2.mT @ W2 - W1 @ W1.mT).mean()
                rows.append((st.t, float(effective_rank(W1).mean()), float(effective_rank(W2).mean()), float(effective_rank(X).mean()),
                             float(sum(torch.linalg.matrix_norm(W) ** 2 for W in st.weights).mean()), float(G),
                             float(regression_errors(X, prob.test_inputs, prob.test_outputs)["rel_error"].mean())))
        rec[name] = torch.tensor(rows, dtype=DTYPE)
    wall = time.perf_counter() - t0
    fig, ax = plt.subplots(1, 3, figsize=(14, 4.2))
    for (name, r), c in zip(rec.items(), ("C0", "C3")):
        ax[0].semilogx(r[1:, 0], r[1:, 1], c, label=f"{name}: W_1")
        ax[0].semilogx(r[1:, 0], r[1:, 2], c, ls="--", label=f"{name}: W_2")
        ax[0].semilogx(r[1:, 0], r[1:, 3], c, ls=":", label=f"{name}: X")
        ax[1].semilogx(r[1:, 0], r[1:, 4], c, label=f"{name}: ||W_1||^2 + ||W_2||^2")
        ax[1].semilogx(r[1:, 0], r[1:, 5], c, ls="--", label=f"{name}: ||W_2^T W_2 - W_1 W_1^T||")
        ax[2].loglog(r[1:, 0], r[1:, 6], c, label=name)
    ax[0].axhline(teacher_rank, color="gray", lw=0.8)
    ax[0].set_title("effective rank (mean over the ensemble)", fontsize=9)
    ax[1].set_title("parameter norm and balancedness", fontsize=9)
    ax[2].set_title("held-out relative error ||X A - Y|| / ||Y||", fontsize=9)
    for a_ in ax:
        a_.set_xlabel("t")
        a_.legend(fontsize=7)
    fig.suptitle(
        f"Varre, Sagitova & Flammarion 2024 setting: linear regression d = {d}, teacher rank {teacher_rank}, n = {n} clean samples, "
        f"two layers [{d}, {hidden}, {d}], Gaussian init (std 1/sqrt(d_in)), h = {h}, B = {B}\nGD conserves W_2^T W_2 - W_1 W_1^T "
        "(so the layers keep their initial rank); label noise moves it at O(h^2) per step (dlnsim.gradient_noise). No closed form drawn.",
        fontsize=9)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "varre_label_noise.png", dpi=110)
    plt.close(fig)
    return {"final": {k: r[-1].tolist() for k, r in rec.items()}, "wall_s": wall}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=("noise", "varre"))
    ap.add_argument("--out", default="results/showcase")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(a.out)
    if a.what == "varre":
        r = varre(out)
        print(f"{'scheme':<36} {'t':>6} {'erank W1':>9} {'erank W2':>9} {'erank X':>8} {'|W|^2':>7} {'||G||':>8} {'test':>9}")
        for k, v in r["final"].items():
            print(f"{k:<36} {v[0]:6g} {v[1]:9.3f} {v[2]:9.3f} {v[3]:8.3f} {v[4]:7.3f} {v[5]:8.3f} {v[6]:9.2e}")
        print(f"wall {r['wall_s']:.1f} s")
    elif a.what == "noise":
        r = noise_comparison(out)
        print(f"mask seed {r['mask_seed']}; beta_eff = {r['beta_eff']:.4g} (noise trace {r['summary']['trace']:.3g}, vertical fraction {r['summary']['vertical_fraction']:.1e})")
        print(f"{'scheme':<32} {'t':>6} {'||G||':>9} {'erank':>7} {'S':>8} {'test':>9} {'loss':>9}")
        for k, v in r["final"].items():
            print(f"{k:<32} {v[0]:6g} {v[1]:9.2e} {v[2]:7.3f} {v[3]:8.3f} {v[4]:9.2e} {v[5]:9.2e}")
        print(f"wall {r['wall_s']:.1f} s")


if __name__ == "__main__":
    main()
