"""Gradient-noise diagnostics (dlnsim.gradient_noise): covariance by exhaustive enumeration of the
minibatches, the horizontal/fiber split against dense autograd projectors, the one-step balancedness drift."""
import itertools
import math

import pytest
import torch

from dlnsim.dynamics.sgd import SGD, Minibatch
from dlnsim.energies import LinearRegression, MatrixCompletion
from dlnsim.geometry import horizontal_lift
from dlnsim.gradient_noise import (
    expected_balancedness_change,
    flatten_params,
    horizontal_projection,
    lift,
    noise_factor,
    noise_summary,
    orbit_tangent_matrix,
    unflatten_params,
)
from dlnsim.network import balanced_weights, end_to_end
from dlnsim.tasks import completion_problem, regression_problem

DTYPE = torch.float64


def _completion():
    # 3 x 3, 6 observed entries (n = 6): small enough to enumerate every minibatch
    prob = completion_problem((3, 3), 1, count=6, target_seed=1, mask_seed=2)
    return MatrixCompletion(prob.observed, prob.mask)


def _regression():
    prob = regression_problem(3, 3, 5, 2, seed=3)
    return LinearRegression(prob.inputs, prob.outputs)


def _ws(seed, widths=(3, 3, 3, 3)):
    g = torch.Generator().manual_seed(seed)
    return [0.8 * torch.randn(widths[p], widths[p - 1], dtype=DTYPE, generator=g) for p in range(1, len(widths))]


def _enumerate(sampler, replacement, b):
    """All minibatches of the population with their probabilities (uniform sampling)."""
    n = sampler.population(torch.zeros(3, 3, dtype=DTYPE))[0].shape[0]
    if replacement:
        batches = list(itertools.product(range(n), repeat=b))
    else:
        batches = list(itertools.combinations(range(n), b))
    return batches, 1.0 / len(batches)


@pytest.mark.parametrize("energy_fn,replacement,b", [(_completion, True, 2), (_completion, False, 3), (_regression, False, 2), (_regression, True, 3)])
def test_covariance_against_enumeration(energy_fn, replacement, b):
    # exact mean and covariance of the parameter-space minibatch gradient, from every minibatch
    # pushed through the scheme's own estimator (sampler.grad) and lifted; vs the closed form
    ws = _ws(0)
    E = energy_fn()
    sampler = SGD(E, 0.1, 3, batch_size=b, replacement=replacement).sampler
    batches, prob = _enumerate(sampler, replacement, b)
    X = end_to_end(ws)
    if hasattr(E, "mask"):  # completion: population index -> flat entry index
        obs = E.mask.flatten().nonzero().squeeze(-1)
        idx = obs[torch.tensor(batches)]
    else:
        idx = torch.tensor(batches)
    K = idx.shape[0]
    G = sampler.grad(X.expand(K, -1, -1), Minibatch(idx, None))
    P = lift(ws, G)  # (K, D)
    mean = P.mean(0)
    cov = (P - mean).T @ (P - mean) * prob
    g, F = noise_factor(ws, sampler)
    scale = float(cov.abs().max())
    assert torch.allclose(g, lift(ws, E.grad(X)), atol=1e-13)  # unbiased
    assert torch.allclose(mean, g, atol=1e-13)
    # sums of K <= 216 O(1) terms: roundoff ~1e-14 relative (measured ~3e-16)
    assert float((F @ F.T - cov).abs().max()) < 1e-12 * scale


def test_label_noise_covariance_monte_carlo():
    # with label noise the covariance has a Gaussian part: compare E||g_hat - g||^2 = tr C with the
    # mean over K = 40000 draws; standard error from the sample spread (z < 4)
    ws = _ws(1)
    for E in (_completion(), _regression()):
        sgd = SGD(E, 0.1, 3, batch_size=2, replacement=True, label_noise=0.4, generator=torch.Generator().manual_seed(5))
        g, F = noise_factor(ws, sgd.sampler)
        X = end_to_end(ws)
        K = 40000
        XK = X.expand(K, -1, -1)
        P = lift(ws, sgd.sampler.grad(XK, sgd.sampler.draw(K, sgd.generator, XK)))
        sq = ((P - g) ** 2).sum(-1)
        z = (float(sq.mean()) - float((F * F).sum())) / (float(sq.std()) / math.sqrt(K))
        assert abs(z) < 4


def _dense_jacobian(ws):
    """d vec(phi(W)) / d vec(W): (d_N d_0, D) by autograd."""
    flat = flatten_params(ws)
    return torch.autograd.functional.jacobian(lambda v: end_to_end(unflatten_params(v, ws)).flatten(), flat)


def _dense_orbit(ws):
    """Orbit tangents by autograd: d/dt of W_p -> exp(t A_p) W_p exp(-t A_{p-1}) at t = 0, A_p in so(d_p)."""
    N = len(ws)
    dims = [ws[q - 1].shape[0] for q in range(1, N)]
    sizes = [d * (d - 1) // 2 for d in dims]

    def act(c):
        As, i = [None], 0
        for d, m in zip(dims, sizes):
            A = torch.zeros(d, d, dtype=DTYPE)
            iu = torch.triu_indices(d, d, 1)
            A = A.index_put((iu[0], iu[1]), c[i : i + m] / math.sqrt(2))
            As.append(torch.linalg.matrix_exp(A - A.T))
            i += m
        As.append(None)
        out = []
        for p in range(1, N + 1):
            W = ws[p - 1]
            if As[p] is not None:
                W = As[p] @ W
            if As[p - 1] is not None:
                W = W @ As[p - 1].T
            out.append(W)
        return flatten_params(out)

    return torch.autograd.functional.jacobian(act, torch.zeros(sum(sizes), dtype=DTYPE))


@pytest.mark.parametrize("balanced", [False, True])
def test_split_against_dense_projectors(balanced):
    ws = _ws(2)
    if balanced:
        ws = balanced_weights(end_to_end(ws), 3, torch.Generator().manual_seed(0))
    E = _completion()
    sgd = SGD(E, 0.05, 3, batch_size=2, label_noise=0.3)
    summ = noise_summary(ws, sgd.sampler, top=3, step_size=0.05)
    _, F = noise_factor(ws, sgd.sampler)
    C = F @ F.T
    J = _dense_jacobian(ws)
    PH = torch.linalg.pinv(J) @ J
    T = _dense_orbit(ws)
    assert torch.allclose(T, orbit_tangent_matrix(ws), atol=1e-13)  # the structured orbit map
    PO = T @ torch.linalg.pinv(T)
    ev = torch.linalg.eigvalsh(C).flip(0)
    tr = float(C.trace())
    # dense and structured sides: roundoff on O(1) traces (measured <= 1e-14 relative)
    assert abs(summ["trace"] - tr) < 1e-12 * tr
    assert torch.allclose(summ["top_eigenvalues"], ev[:3], rtol=1e-10, atol=1e-12 * tr)
    assert abs(summ["trace_horizontal"] - float((PH @ C).trace())) < 1e-10 * tr
    assert abs(summ["trace_orbit"] - float((PO @ C).trace())) < 1e-10 * tr
    # the theorem: minibatch and label noise of a loss of X have no fiber component
    assert summ["vertical_fraction"] < 1e-10 and summ["trace_orbit"] < 1e-10 * tr
    assert summ["dim_horizontal"] == 9
    assert abs(summ["inverse_temperature"] - 0.05 * summ["trace_horizontal"] / 18) < 1e-15
    # the projector itself, on vectors that are not horizontal: against the dense P_H
    V = torch.randn(4, J.shape[1], dtype=DTYPE, generator=torch.Generator().manual_seed(9))
    PV, _ = horizontal_projection(ws, V)
    assert torch.allclose(PV, V @ PH.T, atol=1e-10)
    if balanced:  # on M the projector is V -> horizontal_lift(W, Dphi V) (THEORY.md section 3)
        Z = (J @ V[0]).reshape(3, 3)
        assert torch.allclose(PV[0], flatten_params(horizontal_lift(ws, Z)), atol=1e-10)


def test_orbit_map_rectangular_and_weight_decay_noise_free():
    ws = _ws(4, widths=(3, 4, 2, 3))
    T = orbit_tangent_matrix(ws)
    assert T.shape == (sum(W.numel() for W in ws), 6 + 1)
    assert torch.allclose(T, _dense_orbit(ws), atol=1e-13)
    assert torch.allclose(_dense_jacobian(ws) @ T, torch.zeros(9, 7, dtype=DTYPE), atol=1e-13)  # orbits are in the fiber


def test_drift_expectation_enumeration_and_order():
    # E G_p(W') over every minibatch (b = 2 with replacement: 36 equally likely pairs), weight decay on
    ws = _ws(5)
    E = _completion()
    h, lam = 0.07, 0.02
    sgd = SGD(E, h, 3, batch_size=2, replacement=True, weight_decay=lam, generator=torch.Generator().manual_seed(1))
    batches, prob = _enumerate(sgd.sampler, True, 2)
    obs = E.mask.flatten().nonzero().squeeze(-1)
    idx = obs[torch.tensor(batches)]
    K = idx.shape[0]
    state = sgd.init_state([W.expand(K, -1, -1) for W in ws])
    X = end_to_end(state.weights)
    from dlnsim.network import gradient_from_end_to_end, prefix_products
    grads = gradient_from_end_to_end(state.weights, sgd.sampler.grad(X, Minibatch(idx, None)), prefix_products(state.weights))
    new = [W - h * (g + lam * W) for W, g in zip(state.weights, grads)]
    G = lambda w: [w[p].mT @ w[p] - w[p - 1] @ w[p - 1].mT for p in range(1, len(w))]  # noqa: E731
    exact = [(a - b).mean(0) for a, b in zip(G(new), G(state.weights))]
    pred = expected_balancedness_change(ws, sgd.sampler, h, lam)
    for a, b in zip(exact, pred):
        assert float((a - b).abs().max()) < 1e-13  # measured ~1e-17 on entries ~1e-2
    # without weight decay the change is exactly h^2 (no first-order term: G_p is conserved by the flow)
    d1 = expected_balancedness_change(ws, sgd.sampler, 0.1)
    d2 = expected_balancedness_change(ws, sgd.sampler, 0.05)
    for a, b in zip(d1, d2):
        assert torch.allclose(a, 4 * b, rtol=1e-10, atol=1e-15)


def test_drift_with_label_noise_monte_carlo():
    # one step of the SGD scheme from a common start for K trajectories: the mean change of G_p
    # against the closed form; per-entry z-scores with the sample spread (18 entries, |z| < 4.5)
    ws = _ws(6)
    E = _regression()
    h, K = 0.05, 40000
    sgd = SGD(E, h, 3, batch_size=2, replacement=False, label_noise=0.5, generator=torch.Generator().manual_seed(2))
    state = sgd.init_state([W.expand(K, -1, -1) for W in ws])
    state = sgd.step(state)
    G = lambda w: [w[p].mT @ w[p] - w[p - 1] @ w[p - 1].mT for p in range(1, len(w))]  # noqa: E731
    pred = expected_balancedness_change(ws, sgd.sampler, h)
    for new, old, pr in zip(G(state.weights), G(ws), pred):
        d = new - old
        z = (d.mean(0) - pr) / (d.std(0) / math.sqrt(K))
        assert float(z.abs().max()) < 4.5
