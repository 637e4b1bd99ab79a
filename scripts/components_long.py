"""Long version of tests/test_components.py: the law each scheme samples for E = 1/2 ||X - Phi||^2, both components.

For d = 1 (Phi = 1/2) and d = 2 (Phi = [[1, .3], [-.2, .5]]), N = 2, 3, 4, beta = 2, prints for each
scheme P(det X > 0), <X> entries and <||X||^2> with their z-scores against the quadrature reference
(dlnsim.reference), standard errors from independent chains. Schemes: MetropolisLangevin (default:
reflection move at even N), MetropolisLangevin keep_component (against the restricted law, and the
full-law z that shows the power), the RLE (layer chart, h = 0.005) with and without keep_component,
ProjectedLangevin extrapolated in h (2 m(h/2) - m(h)). Manifold chains start at X = Phi (one
component); RLE chains start from draws of the law (the sign relaxes slowly through rank deficiency).

    python scripts/components_long.py            # ~10 min on one core
    python scripts/components_long.py --d 1 --chains 400
"""
from __future__ import annotations

import argparse
import time

import torch

from dlnsim.dynamics.langevin import MetropolisLangevin, ProjectedLangevin
from dlnsim.dynamics.rle import RiemannianLangevin
from dlnsim.energies import MatrixRegression
from dlnsim.network import balanced_weights
from dlnsim.reference import gibbs_reference
from dlnsim.stats import independent_chain_stderr

PHI = {1: torch.tensor([[0.5]], dtype=torch.float64), 2: torch.tensor([[1.0, 0.3], [-0.2, 0.5]], dtype=torch.float64)}


def obs(X):
    pos = (torch.linalg.det(X) > 0).to(X.dtype)
    return torch.cat([pos[:, None], X.flatten(1), (X * X).sum((-2, -1))[:, None]], dim=-1)


def sample(scheme, state, burn, record, every):
    out = []
    for i in range(burn + record):
        state = scheme.step(state)
        if i >= burn and (i - burn) % every == every - 1:
            out.append(obs(state.end_to_end()))
    return torch.stack(out)


def fmt(name, v, truth, se=None):
    m = v.mean((0, 1)) if se is None else v
    se = independent_chain_stderr(v) if se is None else se
    z = (m - truth) / se
    print(f"  {name:34s} P(det>0) {float(m[0]):.3f} (law {float(truth[0]):.3f}, z {float(z[0]):+5.1f})   "
          f"max|z| entries {float(z[1:-1].abs().max()):4.1f}   <|X|^2> z {float(z[-1]):+5.1f}", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--d", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--N", type=int, nargs="*", default=[2, 3, 4])
    ap.add_argument("--chains", type=int, default=400)
    ap.add_argument("--beta", type=float, default=2.0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    for d in args.d:
        E = MatrixRegression(PHI[d])
        for N in args.N:
            t0 = time.time()
            g = torch.Generator().manual_seed(100 * d + N)
            full = gibbs_reference(E, d, N, args.beta)
            plus = gibbs_reference(E, d, N, args.beta, component=1)
            tf, tp = full.expect(obs), plus.expect(obs)
            print(f"d = {d}, N = {N}: P(det X > 0) = {float(tf[0]):.4f}")
            B = args.chains
            W0 = lambda: balanced_weights(PHI[d].expand(B, d, d).clone(), N, generator=g)  # noqa: E731
            s = MetropolisLangevin(E, 0.05, N, args.beta, generator=g)
            fmt("metropolis (default)", sample(s, s.init_state(weights=W0()), 100, 400, 4), tf)
            s = MetropolisLangevin(E, 0.05, N, args.beta, generator=g, keep_component=True)
            v = sample(s, s.init_state(weights=W0()), 100, 400, 4)
            fmt("metropolis keep_component vs +law", v, tp)
            fmt("metropolis keep_component vs full", v, tf)
            r = RiemannianLangevin(E, 0.005, N, args.beta, generator=g)
            fmt("rle layer h=0.005", sample(r, r.init_state(X=full.sample(B, g)), 200, 1200, 20), tf)
            r = RiemannianLangevin(E, 0.005, N, args.beta, generator=g, keep_component=True)
            fmt("rle keep_component vs +law", sample(r, r.init_state(X=plus.sample(B, g)), 200, 1200, 20), tp)
            ms, ses = [], []
            for h in (0.05, 0.025):
                n = round(0.05 / h)
                s = ProjectedLangevin(E, h, N, args.beta, generator=g)
                v = sample(s, s.init_state(weights=W0()), 100 * n, 400 * n, 4 * n)
                ms.append(v.mean((0, 1)))
                ses.append(independent_chain_stderr(v))
            fmt("projected, Richardson h=.05/.025", 2 * ms[1] - ms[0], tf, torch.sqrt(4 * ses[1] ** 2 + ses[0] ** 2))
            print(f"  ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
