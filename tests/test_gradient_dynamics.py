"""Gradient dynamics against theory (docs/theory.md sections 2-4): the parameter flow vs the
end-to-end Riemannian flow, balancedness conservation orders, aligned modes vs saxe_mode, and the
shapes of recorded observables."""
import math

import pytest
import torch

import dlnsim
from dlnsim import (
    CustomEnergy,
    EndToEndFlow,
    GradientDescent,
    GradientFlow,
    MatrixRegression,
    Observer,
    Simulation,
    saxe_mode,
    simulate,
)
from dlnsim.dynamics import parameter_gradient
from dlnsim.network import balanced_weights, balancedness

from conftest import DTYPE, make_generator, random_orthogonal, rel_err


def _run(scheme, n, **start):
    state = scheme.init_state(**start)
    for _ in range(n):
        state = scheme.step(state)
    return state


def _problem(seed, d=3, N=3, B=2):
    g = make_generator(seed)
    Phi = 0.6 * torch.randn(d, d, dtype=DTYPE, generator=g) + torch.eye(d, dtype=DTYPE)
    X0 = 0.3 * torch.randn(B, d, d, dtype=DTYPE, generator=g) + 0.5 * torch.eye(d, dtype=DTYPE)
    return Phi, X0, balanced_weights(X0, N, generator=g)


# --------------------------------------------------------------------------- parameter flow = end-to-end flow


@pytest.mark.parametrize("kind", ["quadratic", "quartic"])
def test_parameter_flow_matches_end_to_end_flow(kind):
    # On the balanced manifold X = phi(W(t)) solves dX/dt = -A_{N,X}(grad E). Both sides are RK4
    # with h = 2e-3 over T = 1: each has global error C h^4; measured differences at h = 1e-2, 5e-3,
    # 2.5e-3 fall by ~16 per halving (1.4e-8, 8.6e-10, 5.2e-11 quadratic; 1.8e-7, 1.1e-8, 6.6e-10
    # quartic), so at 2e-3 they are ~2e-11 and ~3e-10: below 1e-9 as the issue requires.
    N, h, T = 3, 2e-3, 1.0
    Phi, X0, W0 = _problem(1, N=N)
    if kind == "quadratic":
        energy = MatrixRegression(Phi)
    else:
        energy = CustomEnergy(lambda X: 0.25 * ((X - Phi) ** 4).sum(dim=(-2, -1)))
    n = round(T / h)
    X_param = _run(GradientFlow(energy, h, N), n, weights=W0).end_to_end()
    X_e2e = _run(EndToEndFlow(energy, h, N), n, X=X0).X
    assert float((X_param - X0).norm()) > 0.5  # a real trajectory, not a fixed point
    assert rel_err(X_param, X_e2e) < 1e-9


def test_end_to_end_flow_depth_time_scale():
    # time_scale="depth" is dX/dt = -A/N (grad E): the same path run N times slower.
    N = 4
    Phi, X0, _ = _problem(2, N=N)
    energy = MatrixRegression(Phi)
    a = _run(EndToEndFlow(energy, 0.01, N), 20, X=X0).X
    b = _run(EndToEndFlow(energy, 0.01 * N, N, time_scale="depth"), 20, X=X0).X
    assert rel_err(a, b) < 1e-13
    with pytest.raises(ValueError, match="time_scale"):
        EndToEndFlow(energy, 0.01, N, time_scale="log")


def test_end_to_end_free_energy_velocity():
    # With beta: dX/dt = -A(grad E) + A(grad S)/beta (noise-free free-energy flow), grad S from
    # entropy_grad; each ensemble member may have its own beta.
    N = 3
    Phi, X0, _ = _problem(6, N=N)
    energy = MatrixRegression(Phi)
    beta = torch.tensor([0.5, 4.0], dtype=DTYPE)
    v = EndToEndFlow(energy, 0.01, N, beta=beta).velocity(X0)
    P = -energy.grad(X0) + dlnsim.entropy_grad(X0, N) / beta.reshape(-1, 1, 1)
    assert rel_err(v, dlnsim.metric_operator(X0, P, N)) < 1e-13
    with pytest.raises(ValueError, match="beta must be positive"):
        EndToEndFlow(energy, 0.01, N, beta=0.0)


@pytest.mark.parametrize("widths,B", [([16, 16, 16, 16], 300), ([5, 7, 3, 4], 6), ([4, 6], 1)])
def test_gradient_descent_step_is_w_minus_h_grad(widths, B):
    # The scheme's (possibly fused, cache-blocked) update against the plain definition, for energies
    # whose data has no batch dim, a batched target, and an autograd energy. B = 300 at d = 16 is
    # large enough to be processed in several CPU blocks.
    g = make_generator(B + len(widths))
    W = [torch.randn(B, widths[p], widths[p - 1], dtype=DTYPE, generator=g) / widths[p - 1] ** 0.5
         for p in range(1, len(widths))]
    shape = (widths[-1], widths[0])
    energies = [
        MatrixRegression(torch.randn(*shape, dtype=DTYPE, generator=g)),
        MatrixRegression(torch.randn(B, *shape, dtype=DTYPE, generator=g)),
        MatrixRegression(torch.randn(*shape, dtype=DTYPE, generator=g)) + dlnsim.WeightDecay(0.1),
        CustomEnergy(lambda X: (X**4).sum(dim=(-2, -1))),
    ]
    h = 0.05
    for energy in energies:
        new = _run(GradientDescent(energy, h, len(W)), 1, weights=W).weights
        ref = [w - h * gw for w, gw in zip(W, parameter_gradient(W, energy))]
        for a, b in zip(new, ref):
            assert a.shape == b.shape
            assert float((a - b).abs().max()) < 1e-13 * max(1.0, float(b.abs().max()))


# --------------------------------------------------------------------------- balancedness


def _drift(scheme, W0, T):
    state = _run(scheme, round(T / scheme.step_size), weights=W0)
    return float((balancedness(state.weights) - balancedness(W0)).flatten(-3).norm(dim=-1).max())


def _drift_problem(N):
    """A balanced start (B = 2, d = 3) away from the target of a matrix regression."""
    g = make_generator(2)
    Phi = 2 * torch.randn(3, 3, dtype=DTYPE, generator=g)
    X0 = 0.3 * torch.randn(2, 3, 3, dtype=DTYPE, generator=g) + 0.5 * torch.eye(3, dtype=DTYPE)
    return balanced_weights(X0, N, generator=g), MatrixRegression(Phi)


def test_rk4_conserves_balancedness_to_fourth_order():
    # RK4 does not conserve quadratic invariants exactly: the global drift of G_p at fixed T is
    # O(h^4). Measured drift(h)/drift(h/2) = 17.5, 16.6 for h = 0.05, 0.025 (-> 16). Drifts are
    # 3e-5 .. 1e-7, far above roundoff (~1e-14), so the ratio is the method's, not noise.
    N, T = 3, 1.0
    W0, energy = _drift_problem(N)
    drifts = [_drift(GradientFlow(energy, h, N), W0, T) for h in (0.05, 0.025, 0.0125)]
    orders = [math.log2(a / b) for a, b in zip(drifts, drifts[1:])]
    assert all(3.8 < p < 4.2 for p in orders), (drifts, orders)


def test_gradient_descent_balancedness_drift_is_second_order_per_step():
    # One explicit step changes G_p by exactly h^2 (g_{p+1}^T g_{p+1} - g_p g_p^T) (the O(h) terms
    # cancel: that is the conservation law of the flow). Over a fixed time T = n h the per-step
    # drifts accumulate to drift(T) ~ h^2 * (T/h) = O(h). So the quantity fitted is the drift PER
    # STEP, drift(T) / (T/h), whose log-log slope against h must be ~2 (equivalently drift(T) has
    # slope ~1). Measured slope 2.002.
    N, T = 3, 1.0
    W0, energy = _drift_problem(N)
    hs = [0.02, 0.01, 0.005, 0.0025]
    per_step = torch.tensor([_drift(GradientDescent(energy, h, N), W0, T) * h / T for h in hs], dtype=DTYPE)
    x, y = torch.log(torch.tensor(hs, dtype=DTYPE)), torch.log(per_step)
    slope = float(((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum())
    assert 1.9 < slope < 2.1, slope
    # The single-step identity, exactly (roundoff only).
    h = 0.1
    grads = parameter_gradient(W0, energy)
    W1 = _run(GradientDescent(energy, h, N), 1, weights=W0).weights
    predicted = torch.stack(
        [h**2 * (grads[p].mT @ grads[p] - grads[p - 1] @ grads[p - 1].mT) for p in range(1, N)], dim=-3
    )
    assert rel_err(balancedness(W1) - balancedness(W0), predicted) < 1e-10


# --------------------------------------------------------------------------- aligned modes vs Saxe


@pytest.mark.parametrize("N", [1, 2, 3, 5])
def test_aligned_modes_follow_saxe(N):
    # Balanced aligned start X(0) = U diag(u0) V^T, Phi = U diag(lam) V^T: U^T X(t) V stays diagonal
    # and its diagonal follows saxe_mode. The simulated error is RK4's: it must fall by ~16 when h
    # halves (measured orders 4.0-4.1) and be small at h = 0.005 (measured 3e-12 .. 6e-11).
    g = make_generator(3)
    d, T = 3, 2.0
    U, V = random_orthogonal(d, (), g), random_orthogonal(d, (), g)
    lam = torch.tensor([2.0, 1.0, 0.5], dtype=DTYPE)
    u0 = torch.tensor([0.1, 0.3, 1.2], dtype=DTYPE)  # the last mode decays onto its target
    energy = MatrixRegression((U * lam) @ V.T)
    W0 = balanced_weights(((U * u0) @ V.T).unsqueeze(0), N, generator=g)
    theory = saxe_mode(T, lam, u0, N)
    errors = []
    for h in (0.01, 0.005):
        X = _run(GradientFlow(energy, h, N), round(T / h), weights=W0).end_to_end()[0]
        M = U.T @ X @ V
        assert float((M - torch.diag(torch.diagonal(M))).abs().max()) < 1e-13  # stays aligned
        errors.append(float((torch.diagonal(M) - theory).abs().max()))
    assert errors[1] < 2e-10
    assert 3.6 < math.log2(errors[0] / errors[1]) < 4.4, errors


# --------------------------------------------------------------------------- observers and records


def test_simulate_records_shapes_and_values():
    N, B, d, h = 3, 2, 3, 0.01
    Phi, X0, W0 = _problem(4, d=d, N=N, B=B)
    energy = MatrixRegression(Phi)
    rec = simulate(
        GradientFlow(energy, h, N), 20, weights=W0, save_every=5, beta=2.0, reference=EndToEndFlow(energy, h, N)
    )
    T = 5  # t = 0, 5h, ..., 20h
    assert torch.allclose(rec["t"], h * torch.arange(0, 21, 5, dtype=DTYPE), rtol=1e-12)
    shapes = {
        "loss": (T, B),
        "singular_values": (T, B, d),
        "X": (T, B, d, d),
        "balancedness": (T, B, N - 1),
        "balancedness_norm": (T, B, N - 1),
        "balancedness_rel": (T, B),
        "entropy_formula": (T, B),
        "entropy_measured": (T, B),
        "free_energy": (T, B),
        "reference_distance": (T, B),
        "reference_singular_values": (T, B, d),
    }
    for k, shape in shapes.items():
        assert tuple(rec[k].shape) == shape, k
        assert rec[k].dtype == torch.float64, k
    # Values: loss = E(X), free energy = E - S/beta, on-manifold S_formula = S_measured, the run
    # tracks the theory trajectory (RK4, h = 0.01, 20 steps: ~1e-10), balancedness starts at 0.
    assert torch.allclose(rec["loss"], energy.value(rec["X"]), rtol=1e-14)
    assert torch.allclose(rec["free_energy"], rec["loss"] - rec["entropy_formula"] / 2.0, rtol=1e-14)
    assert float((rec["entropy_formula"] - rec["entropy_measured"]).abs().max()) < 1e-8
    assert float(rec["reference_distance"].max()) < 1e-8
    assert float(rec["balancedness"][0].abs().max()) == 0.0
    assert torch.allclose(rec["singular_values"], torch.linalg.svdvals(rec["X"]), rtol=1e-14)


def test_observer_rectangular_and_end_to_end_states():
    g = make_generator(5)
    net = dlnsim.DeepLinearNetwork([2, 3, 4, 3], batch=2, generator=g)
    W = [w.detach() for w in net.weights]
    energy = MatrixRegression(torch.randn(3, 2, dtype=DTYPE, generator=g))
    scheme = GradientDescent(energy, 0.01, 3)
    sim = Simulation(scheme, scheme.init_state(weights=W), Observer(energy, 3), save_every=2)
    rec = sim.run(4).records()
    # Non-square X: no entropy; hidden widths 3 and 4 differ: balancedness per layer still (T, B, N-1).
    assert rec["t"].shape == (3,) and rec["X"].shape == (3, 2, 3, 2)
    assert rec["singular_values"].shape == (3, 2, 2) and rec["balancedness"].shape == (3, 2, 2)
    assert "entropy_formula" not in rec and "entropy_measured" not in rec
    # An end-to-end state has no parameters: no balancedness, but the closed-form entropy.
    X0 = torch.randn(2, 3, 3, dtype=DTYPE, generator=g)
    rec = simulate(EndToEndFlow(MatrixRegression(X0[0]), 0.01, 2), 3, X=X0, include=["loss", "entropy_formula"])
    assert set(rec) == {"t", "loss", "entropy_formula"} and rec["loss"].shape == (4, 2)
    with pytest.raises(ValueError, match="unknown observables"):
        Observer(energy, 3, include=["energy"])
    with pytest.raises(ValueError, match="save_every"):
        Simulation(sim.scheme, sim.state, Observer(energy, 3), save_every=0)


def test_simulate_saves_the_last_step_and_continues_from_its_final_state():
    N, h = 3, 0.01
    Phi, X0, W0 = _problem(6)
    energy = MatrixRegression(Phi)
    rec = simulate(GradientFlow(energy, h, N), 7, weights=W0, save_every=3, include=["loss", "X"])
    # save points 0, 3, 6 and the last step 7 (not a multiple of save_every)
    assert torch.allclose(rec["t"], h * torch.tensor([0, 3, 6, 7], dtype=DTYPE), rtol=1e-12)
    assert rec.state.step == 7 and rec.diverged is None
    assert torch.equal(rec["X"][-1], rec.state.end_to_end())
    # chaining: 7 steps, then 5 more from the final state, is the 12-step run (same arithmetic: bit-identical)
    more = simulate(GradientFlow(energy, h, N), 5, state=rec.state, save_every=3, include=["X"])
    whole = simulate(GradientFlow(energy, h, N), 12, weights=W0, save_every=3, include=["X"])
    assert more.state.step == 12 and torch.equal(more.state.end_to_end(), whole.state.end_to_end())
    assert torch.allclose(more["t"], h * torch.tensor([9, 12], dtype=DTYPE), rtol=1e-12)


def test_simulate_stops_at_divergence_and_keeps_the_records():
    # Gradient descent on 1/2||X - Phi||^2 with h far above 2 / (curvature ~ N |W|^{2(N-1)}) blows up.
    Phi, X0, W0 = _problem(7)
    with pytest.warns(RuntimeWarning, match="diverged at step"):
        rec = simulate(GradientDescent(MatrixRegression(Phi), 5.0, 3), 200, weights=[10 * W for W in W0], save_every=1)
    assert rec.diverged is not None and rec.diverged.quantity in ("X (the end-to-end matrix)", "the loss E(X)")
    assert rec["loss"].shape[0] == len(rec["t"]) >= 1 and bool(torch.isfinite(rec["loss"]).all())
    assert rec.diverged.step < 200
