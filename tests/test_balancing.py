"""Balancing flows on the fibers of phi (docs/theory_depth_balancing.md, part 2).

Independent references: the dense matrix of the orbit map J (built column by column) and a
least-squares projection for the fiber projection; the closed-form entropy S(X) for the orbit volume
at the limit; the linearization's prediction for the rate of the group-metric flow; exact identities
(G(t) = e^{-2t} G(0) for the induced flow, e^{-2 lam t} under weight decay, the one-step identity of
gradient descent with weight decay).
"""
import math

import numpy as np
import pytest
import torch

from dlnsim.dynamics.balancing import (
    BalancingFlow,
    WeightDecayDescent,
    balance,
    balancing_rate,
    balancing_velocity,
    fiber_adjoint,
    fiber_gram_solve,
    fiber_tangent,
    regularizer,
    training_decomposition,
)
from dlnsim.dynamics.gradient import parameter_gradient
from dlnsim.energies import MatrixRegression
from dlnsim.entropy import entropy, orbit_log_volume
from dlnsim.network import balanced_weights, balancedness, end_to_end

from conftest import DTYPE, make_generator, matrix_with_spectrum, rel_err


def _gaussian(B, d, N, seed):
    g = make_generator(seed)
    return [torch.randn(B, d, d, dtype=DTYPE, generator=g) / math.sqrt(d) for _ in range(N)]


def _dense_J(weights):
    """Columns vec(J(E_k)) over a basis E_k of gl(d)^{N-1}, one trajectory (B = 1)."""
    N, d = len(weights), weights[0].shape[-1]
    cols = []
    for k in range((N - 1) * d * d):
        A = torch.zeros(1, N - 1, d, d, dtype=DTYPE)
        A.view(-1)[k] = 1.0
        cols.append(torch.cat([v.reshape(-1) for v in fiber_tangent(weights, A)]))
    return torch.stack(cols, dim=-1)


def _Gnorm(weights):
    return balancedness(weights).flatten(-3).norm(dim=-1)


def test_fiber_maps_adjoint_and_moment_map():
    W = _gaussian(2, 3, 4, 1)
    g = make_generator(2)
    A = torch.randn(2, 3, 3, 3, dtype=DTYPE, generator=g)
    V = [torch.randn(2, 3, 3, dtype=DTYPE, generator=g) for _ in W]
    lhs = sum((a * b).sum() for a, b in zip(fiber_tangent(W, A), V))
    rhs = (A * fiber_adjoint(W, V)).sum()
    assert abs(float(lhs - rhs)) < 1e-13 * float(abs(lhs))
    assert fiber_adjoint(W, W).equal(-balancedness(W))  # J^* grad R = -G, term for term
    # X is constant along every fiber direction: d phi(J(A)) = 0 (telescoping sum)
    eps = 1e-7
    Xp = end_to_end([w + eps * v for w, v in zip(W, fiber_tangent(W, A))])
    assert rel_err(Xp, end_to_end(W)) < 1e-12  # O(eps^2) = 1e-14 relative: first order vanishes


def test_gram_solve_matches_dense():
    W = _gaussian(1, 2, 4, 3)
    J = _dense_J(W)
    g = make_generator(4)
    Y = torch.randn(1, 3, 2, 2, dtype=DTYPE, generator=g)
    ref = torch.linalg.solve(J.mT @ J, Y.reshape(-1)).reshape(Y.shape)
    # measured 1.5e-15; the dense Gram has condition ~1e2 here
    assert rel_err(fiber_gram_solve(W, Y), ref) < 1e-12


def test_induced_velocity_is_the_projection_of_minus_grad_R():
    W = _gaussian(1, 2, 3, 5)
    J = _dense_J(W)
    w = torch.cat([x.reshape(-1) for x in W])
    coef = torch.linalg.lstsq(J, w.unsqueeze(-1)).solution
    proj = (J @ coef).squeeze(-1)  # orthogonal projection of grad R = W onto the fiber's tangent space
    v = torch.cat([x.reshape(-1) for x in balancing_velocity(W, "induced")])
    assert float((v + proj).norm() / proj.norm()) < 1e-12  # measured 4e-16


def test_group_velocity_sign_decreases_R():
    # dR[J(G)] = <W, J(G)> = <J^* W, G> = -sum_p ||G_p||^2: the candidate flow's sign is the descent sign
    W = _gaussian(3, 3, 5, 6)
    v = balancing_velocity(W, "group")
    dR = sum((a * b).sum(dim=(-2, -1)) for a, b in zip(W, v))
    assert torch.allclose(dR, -balancedness(W).square().sum(dim=(-3, -2, -1)), rtol=1e-13, atol=0)


@pytest.mark.parametrize("metric,h", [("group", 0.005), ("induced", 0.01)])
def test_flow_conserves_X_and_decreases_R(metric, h):
    W = _gaussian(2, 3, 4, 7)
    X0 = end_to_end(W)
    sch = BalancingFlow(None, h, 4, metric=metric)
    st = sch.init_state(weights=W)
    R = [regularizer(st.weights)]
    for _ in range(round(3 / h)):
        st = sch.step(st)
        R.append(regularizer(st.weights))
    R = torch.stack(R)
    # RK4 over t = 3: X drifts by the integrator's error only, O(h^4): measured 8.2e-7 / 4.8e-8
    # (group, h = 0.01 / 0.005) and 3.4e-9 / 2.1e-10 (induced)
    assert rel_err(end_to_end(st.weights), X0) < 2e-7
    # monotone up to roundoff in R (|R| ~ 2)
    assert float((R[1:] - R[:-1]).max()) < 1e-13
    assert bool((R[-1] < R[0] - 1e-3).all())


def test_induced_flow_balancedness_is_exactly_exponential():
    # Along the induced flow dG/dt = -(J^*J A + (J^*J A)^T) = -2 G exactly (A = (J^*J)^{-1} G), from any start
    W = _gaussian(2, 3, 5, 8)
    G0 = balancedness(W)
    sch = BalancingFlow(None, 0.02, 5)
    st = sch.init_state(weights=W)
    for _ in range(100):
        st = sch.step(st)
    # measured 2.2e-9 (RK4 at h = 0.02, t = 2); the prediction is e^{-4} G(0) matrix for matrix
    assert rel_err(balancedness(st.weights), math.exp(-2 * st.t) * G0) < 1e-7
    assert torch.allclose(balancing_rate(end_to_end(W), 5), torch.tensor(2.0, dtype=DTYPE))


def test_group_flow_rate_matches_the_linearization():
    # Start near the balanced point on the fiber (W -> g W, g = exp(symmetric) per hidden layer); the
    # late-time slope of log ||G|| must equal 4 s_min^{2/N} (1 - cos(pi/N)).
    g = make_generator(9)
    N = 3
    X = matrix_with_spectrum(torch.tensor([[2.0, 1.0, 0.5]], dtype=DTYPE), g)
    W = balanced_weights(X, N, g)
    S = [0.1 * torch.randn(1, 3, 3, dtype=DTYPE, generator=g) for _ in range(N - 1)]
    gs = [torch.matrix_exp(s + s.mT) for s in S]
    gs_inv = [torch.linalg.inv(m) for m in gs]
    eye = torch.eye(3, dtype=DTYPE).unsqueeze(0)
    left = gs + [eye]
    right = [eye] + gs_inv
    W = [left[p] @ W[p] @ right[p] for p in range(N)]
    assert rel_err(end_to_end(W), X) < 1e-13
    sch = BalancingFlow(None, 0.02, N, metric="group")
    st = sch.init_state(weights=W)
    ts, Gs = [], []
    for k in range(800):
        st = sch.step(st)
        if k >= 400 and k % 50 == 0:
            ts.append(st.t)
            Gs.append(float(_Gnorm(st.weights)[0]))
    measured = -np.polyfit(ts, np.log(Gs), 1)[0]
    predicted = float(balancing_rate(X, N, "group")[0])  # 1.2599
    # measured 1.2599 vs 1.2599 (relative 3e-6: the next mode, 2 lambda_2, is gone by t = 8)
    assert abs(measured / predicted - 1) < 1e-3, (measured, predicted)


def test_orbit_volume_converges_to_entropy_along_the_flow():
    W = _gaussian(2, 3, 4, 10)
    # S of the current X: RK4 at h = 0.05 moves X by ~1e-6 (tested above), which would floor the gap
    gap = lambda ws: float((orbit_log_volume(ws) - entropy(end_to_end(ws), 4)).abs().max())  # noqa: E731
    sch = BalancingFlow(None, 0.05, 4)
    st = sch.init_state(weights=W)
    gaps = [gap(st.weights)]
    for _ in range(8):
        for _ in range(40):
            st = sch.step(st)
        gaps.append(gap(st.weights))
    # gaps measured every 2 time units: 4.8, 2.5e-2, 2.5e-4, 4.6e-6, 8.3e-8, 1.5e-9, 2.8e-11, 5.1e-13,
    # 1.4e-14: a factor ~e^{-4} per 2 units late on, i.e. the gap is first order in ||G|| ~ e^{-2t}
    assert gaps[-1] < 1e-12, gaps
    assert all(b < a for a, b in zip(gaps, gaps[1:])), gaps


@pytest.mark.parametrize("metric,seed", [("induced", 11), ("group", 25)])
def test_balance_from_gaussian(metric, seed):
    # group metric: a start whose linearized rate is not tiny (min 0.48 over the batch; seeds 21-30 range 0.02-0.48)
    W = _gaussian(3, 2, 3, seed)
    X = end_to_end(W)
    Wb, t = balance(W, metric=metric, tol=1e-10)
    # the stop rule, per trajectory: max_p ||G_p|| <= tol * max_p ||W_p||^2
    Gp = balancedness(Wb).flatten(-2).norm(dim=-1).amax(dim=-1)
    scale = torch.stack([w.flatten(-2).norm(dim=-1) ** 2 for w in Wb], dim=-1).amax(dim=-1)
    assert bool((Gp <= 1e-10 * scale).all())
    assert rel_err(end_to_end(Wb), X) < 1e-9  # dopri5 rtol 1e-10: measured 3e-11
    assert float((orbit_log_volume(Wb) - entropy(X, 3)).abs().max()) < 1e-8
    assert t > 0


def test_balance_from_gaussian_init():
    from dlnsim.dynamics.balancing import balance_from_gaussian
    from dlnsim.network import DeepLinearNetwork

    W = balance_from_gaussian(2, 3, batch=2, scale=1.0, generator=make_generator(20))
    ref = DeepLinearNetwork([2] * 4, 2, init="gaussian", generator=make_generator(20)).end_to_end().detach()
    assert rel_err(end_to_end(W), ref) < 1e-9  # the Gaussian X is kept (DOPRI5 rtol 1e-10)
    assert float(_Gnorm(W).max()) < 1e-9


def test_balance_refuses_rank_deficient():
    W = _gaussian(1, 2, 2, 12)
    W[0][..., 1, :] = 0.0  # X rank 1: the fiber has no balanced point
    with pytest.raises(ValueError, match="rank-deficient"):
        balance(W, max_time=5.0, chunk=1.0)


# --------------------------------------------------------------------------- training with weight decay


def test_training_decomposition():
    W = _gaussian(2, 3, 4, 13)
    g = make_generator(14)
    E = MatrixRegression(torch.randn(3, 3, dtype=DTYPE, generator=g))
    lam = 0.3
    horiz, vert = training_decomposition(W, E, lam)
    total = [-gr - lam * w for gr, w in zip(parameter_gradient(W, E), W)]
    assert max(rel_err(h + v, t) for h, v, t in zip(horiz, vert, total)) < 1e-14
    # horizontal = orthogonal to the fiber: J^* horiz = 0; vertical = along the fiber: d phi(vert) = 0
    assert float(fiber_adjoint(W, horiz).norm()) < 1e-12 * float(sum(h.norm() for h in horiz))
    eps = 1e-6
    X = end_to_end(W)
    dX_vert = (end_to_end([w + eps * v for w, v in zip(W, vert)]) - X) / eps
    assert float(dX_vert.norm()) < 1e-5 * float(X.norm())  # O(eps): measured 2e-7


def test_weight_decay_flow_contracts_balancedness_exactly():
    W = _gaussian(2, 3, 4, 15)
    g = make_generator(16)
    E = MatrixRegression(torch.randn(3, 3, dtype=DTYPE, generator=g))
    lam = 0.5
    sch = WeightDecayDescent(E, 0.005, 4, weight_decay=lam, method="rk4")
    st = sch.init_state(weights=W)
    G0 = balancedness(W)
    for _ in range(400):
        st = sch.step(st)
    # dG/dt = -2 lam G whatever E, t = 2. RK4 error O(h^4): measured 1.6e-5 / 9.1e-7 / 5.3e-8 at
    # h = 0.01 / 0.005 / 0.0025 (the fit of this Gaussian start to its target is fast at first)
    assert rel_err(balancedness(st.weights), math.exp(-2 * lam * st.t) * G0) < 3e-6


def test_weight_decay_descent_one_step_identity():
    # G' = (1 - h lam)^2 G + h^2 (g_{p+1}^T g_{p+1} - g_p g_p^T), g = dL/dW: exact for one GD step
    W = _gaussian(2, 3, 4, 17)
    g = make_generator(18)
    E = MatrixRegression(torch.randn(3, 3, dtype=DTYPE, generator=g))
    h, lam = 0.1, 0.7
    gr = parameter_gradient(W, E)
    st = WeightDecayDescent(E, h, 4, weight_decay=lam).step(WeightDecayDescent(E, h, 4, weight_decay=lam).init_state(weights=W))
    pred = (1 - h * lam) ** 2 * balancedness(W) + h**2 * balancedness(gr)
    assert rel_err(balancedness(st.weights), pred) < 1e-13


def test_validation():
    with pytest.raises(ValueError, match="metric"):
        BalancingFlow(None, 0.1, 3, metric="other")
    with pytest.raises(ValueError, match="weight_decay"):
        WeightDecayDescent(MatrixRegression(torch.eye(2, dtype=DTYPE)), 0.1, 2, weight_decay=-1.0)
    rect = [torch.zeros(1, 3, 2, dtype=DTYPE), torch.zeros(1, 2, 3, dtype=DTYPE)]
    with pytest.raises(ValueError, match="square"):
        BalancingFlow(None, 0.1, 2).init_state(weights=rect)
