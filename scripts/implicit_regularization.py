"""Implicit regularization: what the configs cannot do (issue 12, sections 3 and 4).

    python scripts/implicit_regularization.py temperature configs/sgd_noise_comparison.yaml
    python scripts/implicit_regularization.py varre

(Razin & Cohen's 2 x 2 example is a config, `dlnsim run configs/razin_cohen.yaml`, the Arora et al.
completion study a sweep, `dlnsim sweep configs/sweep_arora.yaml`, and the comparison of gradient
descent, minibatch SGD, label-noise SGD and the RLE a study, `dlnsim run configs/sgd_noise_comparison.yaml`.)

temperature: the effective inverse temperature 1/beta_eff = h tr(C_H) / (2 dim H) of an SGD variant of
    a comparison study at the final state of its gradient-descent variant: the number that study's
    RLE variant is run at (its config says how it was matched and gives the number).

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
from dlnsim.energies import LinearRegression  # noqa: E402
from dlnsim.metrics import (  # noqa: E402
    regression_errors,
    effective_rank,
)
from dlnsim.network import DeepLinearNetwork  # noqa: E402

DTYPE = torch.float64


def temperature(config: str, matched: str = "label_noise_sgd", at: str = "gd", trajectory: int = 0) -> dict:
    """The effective inverse temperature of study variant `matched` (an sgd scheme) at the final state of
    variant `at` (trajectory `trajectory`), for the RLE variant of a comparison study such as
    configs/sgd_noise_comparison.yaml:

        1/beta_eff = h tr(C_H) / (2 dim H)     (dlnsim.gradient_noise.noise_summary)

    C_H: the covariance of the stochastic gradient on the horizontal space H at that point (SGD noise
    lies in H exactly), h: the step size of the matched variant. Runs variant `at` with the config's
    own builders (same energy, start and steps as `dlnsim run`), no result folder."""
    from dlnsim.builders import build_energy, build_simulation
    from dlnsim.config import load_config, variant_configs
    from dlnsim.dynamics import SGD
    from dlnsim.gradient_noise import noise_summary

    cfg = load_config(config)
    vs = dict(variant_configs(cfg))
    for name in (matched, at):
        if name not in vs:
            raise SystemExit(f"temperature: {config} has no study variant {name!r} (variants: {', '.join(vs)})")
    ref, noisy = vs[at], vs[matched]
    if noisy["dynamics"]["scheme"] != "sgd":
        raise SystemExit(f"temperature: variant {matched!r} runs {noisy['dynamics']['scheme']}, not sgd")
    t0 = time.perf_counter()
    sim, _ = build_simulation(ref)
    sim.run(ref["dynamics"]["steps"])
    ws = [W[trajectory] for W in sim.state.weights]
    opts = {k: v for k, v in noisy["dynamics"]["options"].items() if k in ("batch_size", "replacement", "label_noise")}
    h = noisy["dynamics"]["step_size"]
    sgd = SGD(build_energy(noisy), h, noisy["network"]["depth"], **opts)
    summ = noise_summary(ws, sgd.sampler, step_size=h, trajectory=trajectory)
    rle = [(lb, c["dynamics"]["beta"]) for lb, c in vs.items() if c["dynamics"]["scheme"] == "rle"]
    return {"summary": summ, "t": sim.state.t, "h": h, "rle": rle, "wall_s": time.perf_counter() - t0}


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
    sub = ap.add_subparsers(dest="what", required=True)
    t = sub.add_parser("temperature", help="beta_eff of an SGD variant of a comparison study at another variant's final state")
    t.add_argument("config", help="a study config, e.g. configs/sgd_noise_comparison.yaml")
    t.add_argument("--matched", default="label_noise_sgd", help="the sgd variant whose temperature is matched")
    t.add_argument("--at", default="gd", help="the variant whose final state (trajectory 0) is the evaluation point")
    v = sub.add_parser("varre", help="Varre, Sagitova & Flammarion (2024): GD vs label-noise SGD in a two-layer regression")
    v.add_argument("--out", default="results/showcase")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    if a.what == "temperature":
        r = temperature(a.config, a.matched, a.at)
        s = r["summary"]
        print(f"{a.matched} at the final state of {a.at} (t = {r['t']:g}, trajectory 0):")
        print(f"  tr C = {s['trace']:.6g}, tr C_H = {s['trace_horizontal']:.6g} (vertical fraction {s['vertical_fraction']:.1e}), "
              f"dim H = {s['dim_horizontal']}, h = {r['h']:g}")
        print(f"  1/beta_eff = h tr C_H / (2 dim H) = {s['inverse_temperature']:.6g};  beta_eff = {s['beta_eff']:.6g}")
        for lb, beta in r["rle"]:
            print(f"  RLE variant {lb}: dynamics.beta = {beta}  (ratio to beta_eff {float(beta[0] if isinstance(beta, list) else beta) / s['beta_eff']:.3f})")
        print(f"wall {r['wall_s']:.1f} s")
    elif a.what == "varre":
        r = varre(Path(a.out))
        print(f"{'scheme':<36} {'t':>6} {'erank W1':>9} {'erank W2':>9} {'erank X':>8} {'|W|^2':>7} {'||G||':>8} {'test':>9}")
        for k, v in r["final"].items():
            print(f"{k:<36} {v[0]:6g} {v[1]:9.3f} {v[2]:9.3f} {v[3]:8.3f} {v[4]:7.3f} {v[5]:8.3f} {v[6]:9.2e}")
        print(f"wall {r['wall_s']:.1f} s")


if __name__ == "__main__":
    main()
