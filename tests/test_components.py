"""The det-sign components of GL_d: the reflection move, keep_component, sign_changes, and the law each
scheme samples for an energy that is NOT orthogonally invariant (E = 1/2 ||X - Phi||^2).

At even depth a balanced chain never changes the sign of det X by itself (a step through rank
deficiency multiplies det X by (-1)^N); the reflection move W_N -> H W_N connects the components.
References are the quadrature of dlnsim.reference (exact to ~1e-10). Statistical acceptance: |z| <= 4
with standard errors from independent chains (dlnsim.stats.independent_chain_stderr); each stationary
test is paired with a power check (the component-stuck chain is rejected). Long versions (d = 2,
more chains): scripts/components_long.py.
"""
import math

import pytest
import torch

from dlnsim.dynamics.langevin import MetropolisLangevin, ProjectedLangevin
from dlnsim.dynamics.reflection import det_sign, householder, reflection_move
from dlnsim.dynamics.rle import RiemannianLangevin
from dlnsim.energies import MatrixRegression, WeightDecay
from dlnsim.manifold import check_point_on_manifold
from dlnsim.network import balanced_weights, balancedness
from dlnsim.reference import gibbs_reference
from dlnsim.stats import independent_chain_stderr

from conftest import DTYPE, make_generator

PHI1 = torch.tensor([[0.5]], dtype=DTYPE)  # the reproduction of issue 10: beta = 2, start at x = +0.5
PHI2 = torch.tensor([[1.0, 0.3], [-0.2, 0.5]], dtype=DTYPE)
NAMES1 = ("P(det>0)", "<x>", "<x^2>")


def _obs(X: torch.Tensor) -> torch.Tensor:
    """(B, k): 1{det X > 0}, the entries of X, ||X||^2."""
    pos = (torch.linalg.det(X) > 0).to(X.dtype)
    return torch.cat([pos[:, None], X.flatten(1), (X * X).sum((-2, -1))[:, None]], dim=-1)


def _sample(scheme, state, burn: int, record: int, every: int):
    """Run burn steps, then record _obs every `every` steps: (T, B, k)."""
    out = []
    for i in range(burn + record):
        state = scheme.step(state)
        if i >= burn and (i - burn) % every == every - 1:
            out.append(_obs(state.end_to_end()))
    return torch.stack(out), state


def _z(v: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    return (v.mean((0, 1)) - truth) / independent_chain_stderr(v)


def _start(Phi, N, B, gen, sign=+1.0):
    """All chains at X = Phi (det X > 0 for both targets here), balanced; sign=-1 flips row 0 of X."""
    X = Phi.expand(B, *Phi.shape).clone()
    X[:, 0] *= sign
    return balanced_weights(X, N, generator=gen)


# --- the move itself ----------------------------------------------------------------------------------


@pytest.mark.parametrize("d,N", [(1, 2), (2, 2), (3, 3), (4, 2)])
def test_reflection_keeps_balance_flips_det_and_is_an_involution(d, N):
    g = make_generator(7 + d + N)
    W = balanced_weights(torch.randn(64, d, d, dtype=DTYPE, generator=g), N, generator=g)
    v = torch.randn(64, d, dtype=DTYPE, generator=g)
    H = householder(v)
    eye = torch.eye(d, dtype=DTYPE)
    # H is an orthogonal, symmetric involution with det -1 (roundoff: 1e-15).
    assert torch.allclose(H @ H, eye.expand_as(H), atol=1e-14) and torch.allclose(H, H.mT)
    assert torch.allclose(torch.linalg.det(H), -torch.ones(64, dtype=DTYPE), atol=1e-13)
    W2 = W[:-1] + [H @ W[-1]]
    # G_{N-1} = W_N^T W_N - W_{N-1} W_{N-1}^T is unchanged, so W stays on M (measured 4e-15 relative).
    scale = max(float(w.norm()) for w in W) ** 2
    assert float((balancedness(W2) - balancedness(W)).abs().max()) < 1e-13 * scale
    ok, reason = check_point_on_manifold(W2, atol=1e-9)
    assert ok, reason
    assert torch.equal(det_sign(W2), -det_sign(W))
    # Accepted always when E is invariant under X -> H X (weight decay): exp(-beta Delta L) = 1 up to roundoff.
    new, acc = reflection_move(W, WeightDecay(1.0), torch.tensor(2.0, dtype=DTYPE), g)
    assert float(acc.to(DTYPE).mean()) > 0.99
    assert torch.equal(det_sign(new), -det_sign(W))


def test_reflection_move_alone_is_exact_at_d1():
    # d = 1: the move is x -> -x accepted with min(1, p(-x)/p(x)). Iterated alone from a fixed |x| it must
    # give the two-point law P(+) = p(x)/(p(x) + p(-x)) (detailed balance), here with p = exp(-2 (x - 1/2)^2/2).
    B, x0, beta = 4000, 0.8, 2.0
    g = make_generator(11)
    E = MatrixRegression(PHI1)
    W = balanced_weights(torch.full((B, 1, 1), x0, dtype=DTYPE), 2, generator=g)
    pos = []
    for i in range(60):
        W, _ = reflection_move(W, E, torch.tensor(beta, dtype=DTYPE), g)
        if i >= 10:
            pos.append((det_sign(W) > 0).to(DTYPE))
    v = torch.stack(pos)
    lp, lm = -beta * (x0 - 0.5) ** 2 / 2, -beta * (-x0 - 0.5) ** 2 / 2
    truth = 1 / (1 + math.exp(lm - lp))
    z = (v.mean() - truth) / independent_chain_stderr(v)
    assert abs(float(z)) < 4, (float(v.mean()), truth)


# --- stationary laws at d = 1 for the non-invariant energy ---------------------------------------------


@pytest.fixture(scope="module")
def laws_d1():
    E = MatrixRegression(PHI1)
    return {(N, c): gibbs_reference(E, 1, N, 2.0, component=c) for N in (2, 3) for c in (None, 1)}


@pytest.fixture(scope="module")
def refs_d1(laws_d1):
    return {k: law.expect(_obs) for k, law in laws_d1.items()}


@pytest.mark.parametrize("N", [2, 3])
def test_metropolis_with_reflection_samples_both_components(N, refs_d1):
    """Issue 10 reproduction: the law gives P(x > 0) = 0.669 (N = 2), 0.625 (N = 3); chains start at +0.5."""
    B, beta, h = 200, 2.0, 0.05
    g = make_generator(200 + N)
    E = MatrixRegression(PHI1)
    scheme = MetropolisLangevin(E, h, N, beta, generator=g)
    v, state = _sample(scheme, scheme.init_state(weights=_start(PHI1, N, B, g)), 60, 240, 4)
    truth = refs_d1[(N, None)]
    z = _z(v, truth)
    assert bool((z.abs() <= 4).all()), dict(zip(NAMES1, z.tolist()))
    assert float(state.stats["sign_changes"].mean()) > 5  # measured ~25 per chain over 300 steps
    # Power: the chain stuck in its component (keep_component) gives P(det > 0) = 1, rejected by the same test.
    stuck = MetropolisLangevin(E, h, N, beta, generator=make_generator(300 + N), keep_component=True)
    vs, st = _sample(stuck, stuck.init_state(weights=_start(PHI1, N, B, g)), 20, 80, 4)
    assert float(st.stats["sign_changes"].sum()) == 0.0
    assert float(vs[..., 0].min()) == 1.0
    # standard error of the true P(det>0) over B independent chains: z = (1 - 0.669)/sqrt(p(1-p)/B) ~ 10
    se = math.sqrt(float(truth[0]) * (1 - float(truth[0])) / B)
    assert (1.0 - float(truth[0])) / se > 8


@pytest.mark.parametrize("N", [2, pytest.param(3, marks=pytest.mark.slow)])
def test_metropolis_keep_component_samples_the_restricted_law(N, refs_d1):
    B, beta, h = 200, 2.0, 0.05
    g = make_generator(400 + N)
    scheme = MetropolisLangevin(MatrixRegression(PHI1), h, N, beta, generator=g, keep_component=True)
    v, state = _sample(scheme, scheme.init_state(weights=_start(PHI1, N, B, g)), 60, 240, 4)
    truth = refs_d1[(N, 1)]
    assert float(v[..., 0].min()) == 1.0 and float(state.stats["sign_changes"].sum()) == 0.0
    z = _z(v[..., 1:], truth[1:])
    assert bool((z.abs() <= 4).all()), z.tolist()
    # Power: the restricted law differs from the full one (<x> 0.61 vs 0.41 at N = 2).
    z_full = _z(v[..., 1:2], refs_d1[(N, None)][1:2])
    assert float(z_full.abs().max()) > 8, z_full.tolist()


@pytest.mark.parametrize("N", [2, 3])
def test_rle_samples_both_components_and_keeps_one_on_request(N, refs_d1, laws_d1):
    # Layer chart, h = 0.01: O(h) bias below the s.e. here (results/bias). The sign of det X relaxes
    # slowly (the path must reach rank deficiency; from x = +0.5 the residue after 10 time units was
    # still z = 4): chains start from draws of the law (an invariance test; the Metropolis test above
    # covers the approach to equilibrium) and run 1 + 6 time units.
    B, beta, h = 1000, 2.0, 0.01
    E = MatrixRegression(PHI1)
    X0 = laws_d1[(N, None)].sample(B, make_generator(50 + N))
    rle = RiemannianLangevin(E, h, N, beta, generator=make_generator(500 + N))
    v, state = _sample(rle, rle.init_state(X=X0), 100, 600, 10)
    z = _z(v, refs_d1[(N, None)])
    assert bool((z.abs() <= 4).all()), dict(zip(NAMES1, z.tolist()))
    assert torch.equal(state.stats["sign_changes"], state.stats["rank_crossings"])
    kept = RiemannianLangevin(E, h, N, beta, generator=make_generator(600 + N), keep_component=True)
    X0 = laws_d1[(N, 1)].sample(B, make_generator(60 + N))
    vk, st = _sample(kept, kept.init_state(X=X0), 100, 600, 10)
    assert float(vk[..., 0].min()) == 1.0 and float(st.stats["sign_changes"].sum()) == 0.0
    assert float(st.stats["rank_crossings"].sum()) > 0  # the boundary was reached and reflected
    zk = _z(vk[..., 1:], refs_d1[(N, 1)][1:])
    assert bool((zk.abs() <= 4).all()), zk.tolist()
    assert float(_z(vk[..., 1:2], refs_d1[(N, None)][1:2]).abs()) > 8  # power: not the full law


@pytest.mark.parametrize("N", [2, pytest.param(3, marks=pytest.mark.slow)])
def test_projected_scheme_extrapolated_in_h(N, refs_d1):
    """Unadjusted (O(h) bias): Richardson 2 m(h/2) - m(h) against the law, s.e. sqrt(4 se_2^2 + se_1^2)."""
    B, beta = 200, 2.0
    E = MatrixRegression(PHI1)
    means, ses = [], []
    for k, h in enumerate((0.05, 0.025)):
        g = make_generator(700 + 10 * N + k)
        scheme = ProjectedLangevin(E, h, N, beta, generator=g)
        n = round(0.05 / h)
        v, _ = _sample(scheme, scheme.init_state(weights=_start(PHI1, N, B, g)), 60 * n, 240 * n, 4 * n)
        means.append(v.mean((0, 1)))
        ses.append(independent_chain_stderr(v))
    extrap = 2 * means[1] - means[0]
    se = torch.sqrt(4 * ses[1] ** 2 + ses[0] ** 2)
    z = (extrap - refs_d1[(N, None)]) / se
    assert bool((z.abs() <= 4).all()), dict(zip(NAMES1, z.tolist()))


# --- d = 2 (slow: CI keeps d = 1; scripts/components_long.py prints the table) -----------------------


@pytest.mark.slow
@pytest.mark.parametrize("N", [2, 3])
def test_d2_metropolis_and_rle_against_quadrature(N):
    B, beta = 200, 2.0
    E = MatrixRegression(PHI2)
    truth = gibbs_reference(E, 2, N, beta, n_quad=48, n_angle=16).expect(_obs)
    g = make_generator(800 + N)
    scheme = MetropolisLangevin(E, 0.05, N, beta, generator=g)
    v, _ = _sample(scheme, scheme.init_state(weights=_start(PHI2, N, B, g)), 100, 400, 5)
    z = _z(v, truth)
    assert bool((z.abs() <= 4).all()), z.tolist()
    rle = RiemannianLangevin(E, 0.005, N, beta, generator=make_generator(900 + N))
    v, _ = _sample(rle, rle.init_state(X=PHI2.expand(B, 2, 2).clone()), 300, 1500, 25)
    z = _z(v, truth)
    assert bool((z.abs() <= 4).all()), z.tolist()


def test_options_are_validated():
    E = MatrixRegression(PHI1)
    with pytest.raises(ValueError, match="keep_component"):
        MetropolisLangevin(E, 0.1, 2, 1.0, keep_component="yes")
    with pytest.raises(ValueError, match="reflect_every"):
        ProjectedLangevin(E, 0.1, 2, 1.0, reflect_every=-1)
    # Default: moves where the chains cannot change the sign of det X themselves (even depth) only.
    assert MetropolisLangevin(E, 0.1, 2, 1.0).reflect_every == 10
    assert MetropolisLangevin(E, 0.1, 3, 1.0).reflect_every == 0
    assert ProjectedLangevin(E, 0.1, 4, 1.0).reflect_every == 10
    with pytest.raises(ValueError, match="keep_component"):
        RiemannianLangevin(E, 0.1, 2, 1.0, keep_component=1)
