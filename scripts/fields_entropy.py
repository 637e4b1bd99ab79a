"""The DLN over R, C, H (beta = 1, 2, 4) from the Python API: entropy along gradient flow, Saxe modes.

    PYTHONPATH=$PWD python scripts/fields_entropy.py [--out results/fields_entropy_api.png]

The committed showcase results/showcase/fields_entropy.png comes from the run layer
(`dlnsim run configs/fields_entropy.yaml`, network.field); this script is the same study written
against the library functions, with a non-aligned balanced start and the end-to-end flow.

Energy E = 1/2 ||X - Phi||_F^2 (Re tr pairing over F), d = 3, N = 3, Phi = U diag(3, 2, 1) V*.
(a) Parameter-space gradient flow (RK4, h = 0.005) from a balanced start: the closed form
    S_beta(X(t)) (lines) and the orbit log-volume measured from the weights (markers) — the
    theory applies (the flow stays on the balanced manifold).
(b) |S_measured - S_formula| along those runs (roundoff + RK4) and along runs from a Gaussian
    (unbalanced) start, where the closed form does not apply: the gap is the departure from M.
(c) End-to-end flow dX/dt = -A_{N,X}(grad E) (RK4) from a start aligned with Phi: the singular
    values over every F follow the same Saxe closed form du/dt = N u^{2(N-1)/N}(lambda - u).
Pure Python API (dlnsim.fields, dlnsim.field_network, dlnsim.field_geometry, dlnsim.entropy_fields).
"""
from __future__ import annotations

import argparse
import os

import torch

from dlnsim.entropy_fields import entropy_field, orbit_log_volume_field
from dlnsim.dynamics.field_flows import end_to_end_step, gradient_flow_step
from dlnsim.field_energies import FieldMatrixRegression
from dlnsim.field_network import balanced_weights, end_to_end
from dlnsim.fields import embed_diagonal, gaussian, get_field, random_group, singular_values
from dlnsim.theory import saxe_mode

FIELDS = ("real", "complex", "quaternion")
COLORS = {"real": "tab:blue", "complex": "tab:orange", "quaternion": "tab:green"}
LAM = (3.0, 2.0, 1.0)


def field_runs(field: str, depth: int = 3, h: float = 0.005, time: float = 3.0, every: int = 20, seed: int = 0):
    """The three runs of one field; returns a dict of time series (CPU tensors)."""
    F = get_field(field)
    gen = torch.Generator().manual_seed(seed)
    d = len(LAM)
    lam = torch.tensor(LAM, dtype=torch.float64)
    U, V = random_group((), d, F, generator=gen), random_group((), d, F, generator=gen)
    energy = FieldMatrixRegression(U @ embed_diagonal(lam, F) @ V.mH, F)
    scale = (F.beta * d) ** -0.5  # Gaussian entries of norm ~ 1/sqrt(d)
    # (a)/(b): balanced start over a random X0 (not aligned with Phi), and an unbalanced Gaussian start
    X0 = 0.5 * gaussian((1,), d, F, generator=gen) * scale
    W_bal = balanced_weights(X0, depth, F, generator=gen)
    W_gauss = [0.8 * gaussian((1,), d, F, generator=gen) * scale for _ in range(depth)]
    # (c): aligned start
    u0 = torch.tensor([0.05, 0.05, 0.05], dtype=torch.float64)
    X_al = (U @ embed_diagonal(u0, F) @ V.mH).unsqueeze(0)
    out = {k: [] for k in ("t", "S_formula", "S_measured", "S_formula_gauss", "S_measured_gauss", "modes")}
    steps = round(time / h)
    for k in range(steps + 1):
        if k % every == 0:
            out["t"].append(k * h)
            out["S_formula"].append(entropy_field(end_to_end(W_bal), depth, F)[0])
            out["S_measured"].append(orbit_log_volume_field(W_bal, F)[0])
            out["S_formula_gauss"].append(entropy_field(end_to_end(W_gauss), depth, F)[0])
            out["S_measured_gauss"].append(orbit_log_volume_field(W_gauss, F)[0])
            out["modes"].append(singular_values(X_al, F)[0])
        if k < steps:
            W_bal = gradient_flow_step(W_bal, energy, h)
            W_gauss = gradient_flow_step(W_gauss, energy, h)
            X_al = end_to_end_step(X_al, energy, depth, h)
    res = {k: torch.stack([torch.as_tensor(v) for v in vals]) for k, vals in out.items()}
    res["saxe"] = saxe_mode(res["t"].unsqueeze(-1), lam, u0, depth)
    return res


def plot(results: dict, path: str, depth: int, h: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    ax = axes[0]
    for f, r in results.items():
        b = get_field(f).beta
        ax.plot(r["t"], r["S_formula"], color=COLORS[f], label=f"{get_field(f).symbol} (beta={b}): S_beta(X) closed form")
        ax.plot(r["t"][::3], r["S_measured"][::3], "o", ms=4, mfc="none", color=COLORS[f], label=f"{get_field(f).symbol}: measured orbit log-volume")
    ax.set(xlabel="t", ylabel="entropy", title="(a) balanced start: S_formula vs S_measured")
    ax.legend(fontsize=7)
    ax = axes[1]
    for f, r in results.items():
        sym = get_field(f).symbol
        ax.semilogy(r["t"], (r["S_measured"] - r["S_formula"]).abs().clamp_min(1e-16), color=COLORS[f], label=f"{sym}: balanced start")
        ax.semilogy(r["t"], (r["S_measured_gauss"] - r["S_formula_gauss"]).abs(), "--", color=COLORS[f], label=f"{sym}: Gaussian start (theory does not apply)")
    ax.set(xlabel="t", ylabel="|S_measured - S_formula|", title="(b) agreement on M, departure off M")
    ax.legend(fontsize=7)
    ax = axes[2]
    markers = {"real": "o", "complex": "s", "quaternion": "^"}
    for f, r in results.items():
        for i in range(r["modes"].shape[1]):
            ax.plot(r["t"][::4], r["modes"][::4, i], markers[f], ms=4, mfc="none", color=COLORS[f],
                    label=f"{get_field(f).symbol}: singular values of X(t)" if i == 0 else None)
    r0 = next(iter(results.values()))
    for i in range(r0["saxe"].shape[1]):
        ax.plot(r0["t"], r0["saxe"][:, i], "k-", lw=1, label="Saxe closed form (all F)" if i == 0 else None)
    ax.set(xlabel="t", ylabel="singular value", title="(c) aligned start: end-to-end flow, Saxe modes")
    ax.legend(fontsize=7)
    fig.suptitle(f"DLN over R, C, H: E = 1/2 ||X - Phi||^2 (Re tr pairing), d = 3, N = {depth}, gradient flow by RK4, "
                 f"h = {h} ((a),(b) parameter space; (c) end-to-end)", fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results/fields_entropy_api.png")
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--step", type=float, default=0.005)
    args = ap.parse_args()
    torch.set_num_threads(1)
    results = {f: field_runs(f, args.depth, args.step) for f in FIELDS}
    for f, r in results.items():
        err = (r["S_measured"] - r["S_formula"]).abs().max().item()
        gap = (r["S_measured_gauss"] - r["S_formula_gauss"]).abs().max().item()
        mode = (r["modes"] - r["saxe"]).abs().max().item()
        print(f"{f:10s} max|S_meas - S_form| balanced {err:.2e}   Gaussian start {gap:.2e}   max|modes - Saxe| {mode:.2e}")
    plot(results, args.out, args.depth, args.step)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
