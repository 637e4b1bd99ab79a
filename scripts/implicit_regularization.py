"""Implicit-regularization reproductions with dlnsim's Python API (issue 12, section 4).

    python scripts/implicit_regularization.py razin-cohen [--out results/showcase]
    python scripts/implicit_regularization.py arora [--size 30 --rank 2 --seeds 2]

razin-cohen: Razin & Cohen (NeurIPS 2020, arXiv 2005.06398), 2 x 2 completion with w12 = w21 = 1,
    w22 = 0 observed, depth 3, balanced start X(0) = alpha I (det > 0), gradient flow (adaptive DOPRI5):
    |w11| and every norm grow without bound while the effective rank tends to 1 and det X stays > 0.
    The minimum nuclear norm completion (x = 0, ||X||_* = 2) is drawn for contrast.
arora: Arora, Cohen, Hu & Luo (NeurIPS 2019, arXiv 1905.13655), reconstruction error of a rank-r
    d x d matrix against the number of observed entries, for depth 2, 3, 4 (gradient descent from a
    small Gaussian init, one random mask per trajectory: the whole sweep is one ensemble per depth)
    and the minimum nuclear norm solution (ADMM, dlnsim.baselines). Their setting is 100 x 100, rank 5,
    init std 1e-3; the default here is smaller for the 2-core CI machine (stated on the figure).

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

from dlnsim.baselines import min_nuclear_norm_completion  # noqa: E402
from dlnsim.dynamics import GradientDescent, GradientFlow  # noqa: E402
from dlnsim.energies import MatrixCompletion  # noqa: E402
from dlnsim.metrics import (  # noqa: E402
    completion_errors,
    effective_rank,
    frobenius_norm,
    nuclear_norm,
    spectral_norm,
)
from dlnsim.network import DeepLinearNetwork, balanced_weights  # noqa: E402
from dlnsim.problems import low_rank_target, random_mask  # noqa: E402

DTYPE = torch.float64


def razin_cohen(out: Path, t_end: float = 300.0, alpha: float = 1e-2) -> dict:
    obs = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=DTYPE)
    M = torch.tensor([[0.0, 1.0], [1.0, 1.0]], dtype=DTYPE)
    E = MatrixCompletion(obs, M)
    X0 = alpha * torch.eye(2, dtype=DTYPE).expand(1, 2, 2)
    ws = balanced_weights(X0, 3, torch.Generator().manual_seed(0))
    h = 0.5
    scheme = GradientFlow(E, h, 3, method="dopri5", rtol=1e-8, atol=1e-12)
    state = scheme.init_state(ws)
    rec = {k: [] for k in ("t", "w11", "loss", "erank", "nuclear", "frobenius", "spectral", "det")}
    t0 = time.perf_counter()
    n = int(round(t_end / h))
    for k in range(n + 1):
        if k:
            state = scheme.step(state)
        X = state.end_to_end()
        for key, v in (("t", state.t), ("w11", X[0, 0, 0].abs()), ("loss", E.value(X)[0]), ("erank", effective_rank(X)[0]),
                       ("nuclear", nuclear_norm(X)[0]), ("frobenius", frobenius_norm(X)[0]),
                       ("spectral", spectral_norm(X)[0]), ("det", torch.linalg.det(X)[0])):
            rec[key].append(float(v))
    wall = time.perf_counter() - t0
    base = min_nuclear_norm_completion(obs, M, tol=1e-12)

    fig, ax = plt.subplots(1, 3, figsize=(14, 4.2))
    t = rec["t"][1:]
    for key, lab in (("w11", "|w11|"), ("nuclear", "nuclear norm"), ("frobenius", "Frobenius norm"), ("spectral", "spectral norm")):
        ax[0].loglog(t, rec[key][1:], label=lab)
    ax[0].axhline(float(base.nuclear_norm), color="k", ls=":", label="min nuclear norm completion (= 2, w11 = 0)")
    ax[0].set_xlabel("t")
    ax[0].set_title("norms grow without bound")
    ax[0].legend(fontsize=8, loc="upper left")
    ax[1].semilogx(t, [e - 1 for e in rec["erank"][1:]])
    ax[1].set_yscale("log")
    ax[1].set_xlabel("t")
    ax[1].set_title("effective rank - 1 -> 0")
    ax[2].loglog(t, rec["loss"][1:], label="loss E")
    ax[2].loglog(t, rec["det"][1:], label="det X (> 0 throughout)")
    ax[2].set_xlabel("t")
    ax[2].legend(fontsize=8)
    ax[2].set_title("loss -> 0 only as |w11| -> infinity")
    fig.suptitle(
        f"Razin & Cohen 2x2 completion (w12 = w21 = 1, w22 = 0 observed): depth 3, balanced X(0) = {alpha:g} I (det > 0),\n"
        "gradient flow (DOPRI5, rtol 1e-8). No closed form applies; dotted: the nuclear-norm baseline.", fontsize=9)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "razin_cohen.png", dpi=110)
    plt.close(fig)
    res = {k: rec[k][-1] for k in rec}
    res["wall_s"] = wall
    return res


def arora(out: Path, size: int = 30, rank: int = 2, seeds: int = 2, counts=None, std: float = 5e-3,
          step: float = 0.25, steps: int = 30000, depths=(2, 3, 4)) -> dict:
    d = size
    counts = counts or [int(f * d * d) for f in (0.12, 0.16, 0.2, 0.25, 0.3, 0.4, 0.5)]
    Phi = low_rank_target((d, d), rank, "ones", seed=0)
    B = len(counts) * seeds
    masks = torch.cat([random_mask((d, d), count=c, batch=seeds, seed=100 + i) for i, c in enumerate(counts)])
    E = MatrixCompletion(Phi * masks, masks)
    t0 = time.perf_counter()
    results = {}
    for N in depths:
        net = DeepLinearNetwork([d] * (N + 1), batch=B, init="gaussian", std=std, generator=torch.Generator().manual_seed(N))
        gd = GradientDescent(E, step, N)
        st = gd.init_state([W.detach() for W in net.weights])
        for _ in range(steps):
            st = gd.step(st)
        X = st.end_to_end()
        err = completion_errors(X, Phi, masks)["reconstruction_error_rel"].reshape(len(counts), seeds)
        results[f"depth {N}"] = (err, effective_rank(X).reshape(len(counts), seeds), E.value(X).reshape(len(counts), seeds))
    t_gd = time.perf_counter() - t0
    nn = min_nuclear_norm_completion(Phi * masks, masks, tol=1e-5, max_iter=20000)
    err = completion_errors(nn.X, Phi, masks)["reconstruction_error_rel"].reshape(len(counts), seeds)
    results["min nuclear norm"] = (err, effective_rank(nn.X).reshape(len(counts), seeds), None)
    wall = time.perf_counter() - t0

    fig, ax = plt.subplots(1, 2, figsize=(11, 4.2))
    for lab, (err, er, _) in results.items():
        ls = "k--" if lab.startswith("min") else "-o"
        ax[0].semilogy(counts, err.mean(1), ls, label=lab)
        ax[1].plot(counts, er.mean(1), ls, label=lab)
    ax[0].set_xlabel("observed entries")
    ax[0].set_ylabel("reconstruction error ||X - Phi||_F / ||Phi||_F")
    ax[1].set_xlabel("observed entries")
    ax[1].set_ylabel("effective rank of the solution")
    ax[1].axhline(rank, color="gray", ls=":")
    ax[0].legend(fontsize=8)
    fig.suptitle(
        f"Arora, Cohen, Hu & Luo 2019 setting at reduced size (paper: 100x100, rank 5, std 1e-3): {d}x{d}, rank {rank} "
        f"(unit singular values), mean of {seeds} masks per count\nGD h={step}, {steps} steps, Gaussian init std {std} "
        f"(one mask per trajectory); dashed: min nuclear norm (ADMM, tol 1e-5). No closed form applies.", fontsize=9)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "arora_completion.png", dpi=110)
    plt.close(fig)
    return {"counts": counts, "results": results, "wall_s": wall, "wall_gd_s": t_gd, "admm_iterations": nn.iterations,
            "admm_converged": nn.converged}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=("razin-cohen", "arora"))
    ap.add_argument("--out", default="results/showcase")
    ap.add_argument("--size", type=int, default=30)
    ap.add_argument("--rank", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30000)
    ap.add_argument("--std", type=float, default=5e-3)
    ap.add_argument("--t-end", type=float, default=300.0)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(a.out)
    if a.what == "razin-cohen":
        r = razin_cohen(out, t_end=a.t_end)
        print("t      |w11|     loss       erank-1    nuclear   det       wall_s")
        print(f"{r['t']:<6g} {r['w11']:<9.4g} {r['loss']:<10.3g} {r['erank'] - 1:<10.3g} {r['nuclear']:<9.4g} {r['det']:<9.3g} {r['wall_s']:.1f}")
    else:
        r = arora(out, size=a.size, rank=a.rank, seeds=a.seeds, steps=a.steps, std=a.std)
        print("observed  " + "  ".join(f"{k:>16}" for k in r["results"]))
        for i, c in enumerate(r["counts"]):
            print(f"{c:<9d} " + "  ".join(f"{float(v[0][i].mean()):9.2e} er{float(v[1][i].mean()):4.2f}" for v in r["results"].values()))
        for k, v in r["results"].items():
            if v[2] is not None:
                print(f"{k}: max final train loss {float(v[2].max()):.2e}")
        print(f"wall {r['wall_s']:.1f} s (GD {r['wall_gd_s']:.1f} s); ADMM {r['admm_iterations']} its, converged {r['admm_converged']}")


if __name__ == "__main__":
    main()
