"""Implicit regularization: what the configs cannot do (issue 12, sections 3 and 4).

    python scripts/implicit_regularization.py temperature configs/sgd_noise_comparison.yaml

Everything else is a config: Razin & Cohen's 2 x 2 example (`dlnsim run configs/razin_cohen.yaml`),
the Arora et al. completion study (`dlnsim sweep configs/sweep_arora.yaml`), Varre, Sagitova &
Flammarion's GD vs label-noise SGD (`dlnsim run configs/varre_label_noise.yaml`) and the comparison of
gradient descent, minibatch SGD, label-noise SGD and the RLE (`dlnsim run configs/sgd_noise_comparison.yaml`).

temperature: the effective inverse temperature 1/beta_eff = h tr(C_H) / (2 dim H) of an SGD variant of
    a comparison study at the final state of its gradient-descent variant: the number that study's
    RLE variant is run at (its config says how it was matched and gives the number).

Prints the traces, dim H, beta_eff, the RLE variants' beta and the wall time.
"""
from __future__ import annotations

import argparse
import time

import torch

from dlnsim.builders import build_energy, build_simulation
from dlnsim.config import load_config, variant_configs
from dlnsim.dynamics import SGD
from dlnsim.gradient_noise import noise_summary


def temperature(config: str, matched: str = "label_noise_sgd", at: str = "gd", trajectory: int = 0) -> dict:
    """The effective inverse temperature of study variant `matched` (an sgd scheme) at the final state of
    variant `at` (trajectory `trajectory`), for the RLE variant of a comparison study such as
    configs/sgd_noise_comparison.yaml:

        1/beta_eff = h tr(C_H) / (2 dim H)     (dlnsim.gradient_noise.noise_summary)

    C_H: the covariance of the stochastic gradient on the horizontal space H at that point (SGD noise
    lies in H exactly), h: the step size of the matched variant. Runs variant `at` with the config's
    own builders (same energy, start and steps as `dlnsim run`), no result folder."""
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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    t = sub.add_parser("temperature", help="beta_eff of an SGD variant of a comparison study at another variant's final state")
    t.add_argument("config", help="a study config, e.g. configs/sgd_noise_comparison.yaml")
    t.add_argument("--matched", default="label_noise_sgd", help="the sgd variant whose temperature is matched")
    t.add_argument("--at", default="gd", help="the variant whose final state (trajectory 0) is the evaluation point")
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


if __name__ == "__main__":
    main()
