"""Long versions of tests/test_langevin_manifold.py: Langevin on the balanced manifold, with tables.

    python scripts/langevin_manifold_long.py [--sections gibbs,bias,rle,contrast,timing] [--scale 1.0]

Sections (each prints a table; --scale multiplies ensemble sizes):
  gibbs     MetropolisLangevin vs SingularValueLaw for E = alpha/2 |X|^2, d in {1, 2}, N in {2, 3}:
            moments (z from independent chains), KS p of s_max and s_min, the same for the wrong law
            (entropy=False; for d = 1 volume="lebesgue"), acceptance and failure rates.
  bias      ProjectedLangevin: bias of E|X|^2 at h = 0.1, 0.05, 0.025 (d = 2, N = 2), the ratios and
            the fit b(h) = c1 h + c2 h^2.
  rle       ensemble means of |X|^2 and s_max from a single balanced start vs the RLE, E = 1/2 |X - Phi|^2,
            at t = 0.25, 0.5, 1 for two step sizes (d = 2, N = 2 and 3).
  contrast  sum_p |G_p|^2 along UnprojectedLangevin vs max_p |G_p| along ProjectedLangevin.
  timing    ms per step at d = 8, N = 4, B = 256 (and d = 2, N = 3, B = 1000) against GradientDescent.
"""
from __future__ import annotations

import argparse
import math
import time

import torch

from dlnsim.dynamics.gradient import GradientDescent
from dlnsim.dynamics.langevin import MetropolisLangevin, ProjectedLangevin, UnprojectedLangevin
from dlnsim.dynamics.rle import RiemannianLangevin
from dlnsim.energies import MatrixRegression, WeightDecay
from dlnsim.gibbs import SingularValueLaw
from dlnsim.network import balanced_weights, balancedness, random_orthogonal
from dlnsim.problems import OBSERVABLE_NAMES, balanced_start, law_moments, singular_value_observables
from dlnsim.stats import independent_chain_stderr, ks_test

DT = torch.float64
OBS = OBSERVABLE_NAMES
observables = singular_value_observables


def gen(seed):
    return torch.Generator().manual_seed(seed)


def section_gibbs(scale):
    print("\n== gibbs: MetropolisLangevin vs SingularValueLaw, E = |X|^2/2, beta = 1, h = 0.1 ==")
    B, burn, rec = int(2000 * scale), 100, 300
    print(f"B = {B} chains, burn-in {burn}, {rec} recorded steps; z = (mean - law) / s.e.(independent chains)")
    print(f"{'d':>2} {'N':>2} {'obs':>8} {'mean':>9} {'law':>9} {'s.e.':>8} {'z':>6} {'z wrong':>8}")
    for d, N in ((1, 2), (1, 3), (2, 2), (2, 3)):
        g = gen(1000 + 10 * d + N)
        scheme = MetropolisLangevin(WeightDecay(1.0), 0.1, N, 1.0, generator=g)
        state = scheme.init_state(weights=balanced_start(d, N, B, g))
        vals = []
        t0 = time.perf_counter()
        for i in range(burn + rec):
            state = scheme.step(state)
            if i >= burn:
                vals.append(observables(state.end_to_end()))
        ms = (time.perf_counter() - t0) / (burn + rec) * 1e3
        v = torch.stack(vals)
        law = SingularValueLaw(N, 1.0, 1.0, d)
        wrong = SingularValueLaw(N, 1.0, 1.0, d, entropy=False, volume="metric" if d > 1 else "lebesgue")
        mean, se = v.mean((0, 1)), independent_chain_stderr(v)
        z, zw = (mean - law_moments(law)) / se, (mean - law_moments(wrong)) / se
        for k in range(4):
            print(f"{d:>2} {N:>2} {OBS[k]:>8} {float(mean[k]):9.5f} {float(law_moments(law)[k]):9.5f} {float(se[k]):8.5f} {float(z[k]):6.2f} {float(zw[k]):8.1f}")
        final = v[-1]
        ks = [ks_test(final[:, j], f)[1] for j, f in ((0, law.cdf_max), (1, law.cdf_min), (0, wrong.cdf_max), (1, wrong.cdf_min))]
        st = state.stats
        P = st["proposals"].sum()
        print(f"      KS p: s_max {ks[0]:.3g}, s_min {ks[1]:.3g}; wrong law: s_max {ks[2]:.3g}, s_min {ks[3]:.3g}")
        print(f"      acceptance {float(st['accepted'].sum() / P):.4f}, projection failures {float(st['projection_failures'].sum() / P):.2e}, "
              f"reverse failures {float(st['reverse_failures'].sum() / P):.2e}, safeguard {float(st['safeguard_rejections'].sum() / P):.2e}, "
              f"Newton updates/proposal {float(st['newton_iterations'].sum() / P):.2f}, {ms:.1f} ms/step")


def section_bias(scale):
    print("\n== bias: ProjectedLangevin, E|X|^2 at stationarity, d = 2, N = 2, alpha = beta = 1 ==")
    d, N, B = 2, 2, int(8000 * scale)
    truth = float(SingularValueLaw(N, 1.0, 1.0, d).moment(lambda s: (s * s).sum(-1)))
    rows = []
    for h in (0.1, 0.05, 0.025):
        g = gen(2000)
        scheme = ProjectedLangevin(WeightDecay(1.0), h, N, 1.0, generator=g)
        state = scheme.init_state(weights=balanced_start(d, N, B, g, scale=0.8))
        nb, nr = int(round(2.0 / h)), int(round(8.0 / h))
        rec = []
        for i in range(nb + nr):
            state = scheme.step(state)
            if i >= nb:
                rec.append((state.end_to_end() ** 2).sum((-2, -1)))
        v = torch.stack(rec)
        b, se = float(v.mean()) - truth, float(independent_chain_stderr(v))
        rej = float((state.stats["projection_failures"] + state.stats["safeguard_rejections"]).sum() / state.stats["steps"].sum())
        rows.append((h, b, se))
        print(f"h = {h:6.3f}: E|X|^2 = {truth + b:.5f} (law {truth:.5f}), bias {b:+.5f} +- {se:.5f} ({b / truth:+.2%}), rejected steps {rej:.1e}")
    for (h1, b1, s1), (h2, b2, s2) in zip(rows, rows[1:]):
        r = b1 / b2
        print(f"ratio b({h1})/b({h2}) = {r:.3f} +- {r * math.hypot(s1 / b1, s2 / b2):.3f}")
    A = torch.tensor([[h, h * h] for h, _, _ in rows], dtype=DT)
    c = torch.linalg.lstsq(A, torch.tensor([b for _, b, _ in rows], dtype=DT).unsqueeze(-1)).solution.squeeze(-1)
    print(f"fit b(h) = c1 h + c2 h^2: c1 = {float(c[0]):.3f}, c2 = {float(c[1]):.3f} (c2/c1 = {float(c[1] / c[0]):.2f})")


def section_rle(scale):
    print("\n== rle: ensemble means from one balanced start, E = 1/2 |X - Phi|^2, beta = 4 ==")
    B, beta, times = int(4000 * scale), 4.0, (0.25, 0.5, 1.0)
    for N in (2, 3):
        d = 2
        g = gen(5000)
        U, V = random_orthogonal((), d, generator=g), random_orthogonal((), d, generator=g)
        energy = MatrixRegression((U * torch.tensor([2.0, 0.5], dtype=DT)) @ V.mT)
        X0 = torch.diag(torch.tensor([0.6, 0.2], dtype=DT))
        W0 = [w.expand(B, d, d).clone() for w in balanced_weights(X0.unsqueeze(0), N, generator=g)]

        def run(scheme, **init):
            state = scheme.init_state(**init)
            marks = {int(round(t / scheme.step_size)): t for t in times}
            out = {}
            for i in range(1, max(marks) + 1):
                state = scheme.step(state)
                if i in marks:
                    out[marks[i]] = observables(state.end_to_end())[:, [2, 0]]
            return out

        res = {}
        for h in (0.005, 0.0025):
            res[f"rle h={h}"] = run(RiemannianLangevin(energy, h / 2, N, beta, generator=gen(5001)), X=X0.expand(B, d, d).clone())
            res[f"proj h={h}"] = run(ProjectedLangevin(energy, h, N, beta, generator=gen(5002)), weights=W0)
            res[f"mh h={h}"] = run(MetropolisLangevin(energy, h, N, beta, generator=gen(5003)), weights=W0)
        ref = res["rle h=0.0025"]
        print(f"N = {N}: means (|X|^2, s_max) and two-sample z against 'rle h=0.0025' (RLE steps are h/2)")
        for t in times:
            for name, out in res.items():
                a, b = out[t], ref[t]
                z = (a.mean(0) - b.mean(0)) / torch.sqrt(a.var(0) / B + b.var(0) / B)
                print(f"  t = {t:4.2f} {name:>15}: |X|^2 {float(a[:, 0].mean()):.4f}  s_max {float(a[:, 1].mean()):.4f}   z = ({float(z[0]):+.2f}, {float(z[1]):+.2f})")


def section_contrast(scale):
    print("\n== contrast: balancedness along unprojected vs projected Langevin (d = 2, N = 3, h = 0.01, beta = 1) ==")
    d, N, B, h = 2, 3, int(500 * scale), 0.01
    energy = MatrixRegression(torch.tensor([[1.5, 0.3], [-0.2, 0.7]], dtype=DT))
    g = gen(3000)
    W0 = balanced_start(d, N, B, g, scale=0.7)
    free, proj = UnprojectedLangevin(energy, h, N, 1.0, generator=gen(3001)), ProjectedLangevin(energy, h, N, 1.0, generator=gen(3002))
    sf, sp = free.init_state(weights=W0), proj.init_state(weights=W0)
    print(f"{'t':>5} {'E sum_p |G_p|^2 (free)':>24} {'s.e.':>8} {'max |G_p| (projected)':>22}")
    worst = 0.0
    # Up to t = 4: beyond, the free run's weights random-walk along the (unconfined) fibres of phi
    # until explicit Euler at this h goes unstable (NaN near t ~ 5 for some trajectories).
    for i in range(1, 401):
        sf, sp = free.step(sf), proj.step(sp)
        worst = max(worst, float(balancedness(sp.weights).flatten(-2).norm(dim=-1).max()))
        if i % 50 == 0:
            g2 = (balancedness(sf.weights) ** 2).sum((-3, -2, -1))
            print(f"{i * h:5.1f} {float(g2.mean()):24.4f} {float(g2.std() / math.sqrt(B)):8.4f} {worst:22.2e}")


def section_timing(scale):
    print("\n== timing: ms per step against GradientDescent (1 thread) ==")
    for d, N, B, n in ((8, 4, 256, 3), (2, 3, 1000, 20)):
        g = gen(0)
        energy = MatrixRegression(torch.randn(d, d, dtype=DT, generator=g))
        W = balanced_weights(torch.randn(B, d, d, dtype=DT, generator=g) / math.sqrt(d), N, generator=g)

        def per_step(scheme, steps):
            state = scheme.step(scheme.init_state(weights=W))
            t0 = time.perf_counter()
            for _ in range(steps):
                state = scheme.step(state)
            return (time.perf_counter() - t0) / steps * 1e3, state

        h = 1e-3
        gd, _ = per_step(GradientDescent(energy, h, N), 100)
        print(f"d = {d}, N = {N}, B = {B}: GradientDescent {gd:.3f} ms")
        for name, scheme, steps in (
            ("UnprojectedLangevin", UnprojectedLangevin(energy, h, N, 1.0, generator=g), 100),
            ("ProjectedLangevin newton", ProjectedLangevin(energy, h, N, 1.0, generator=g), n),
            ("ProjectedLangevin chord", ProjectedLangevin(energy, h, N, 1.0, generator=g, method="chord"), n),
            ("ProjectedLangevin quasi", ProjectedLangevin(energy, h, N, 1.0, generator=g, method="quasi"), n),
            ("MetropolisLangevin newton", MetropolisLangevin(energy, h, N, 1.0, generator=g), n),
        ):
            ms, state = per_step(scheme, steps)
            it = float(state.stats["newton_iterations"].mean()) / (steps + 1) if "newton_iterations" in state.stats else 0.0
            print(f"  {name:>26}: {ms:9.2f} ms = {ms / gd:7.1f} x gradient step  (Newton updates/step {it:.2f})")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sections", default="gibbs,bias,rle,contrast,timing")
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies the ensemble sizes")
    args = ap.parse_args()
    torch.set_num_threads(1)
    for name in args.sections.split(","):
        globals()[f"section_{name.strip()}"](args.scale)


if __name__ == "__main__":
    main()
