"""Adaptive Dormand-Prince 5(4) (`dopri5_advance`) and the flows' method="dopri5" option: exact
solutions of linear ODEs, tolerance proportionality, Saxe modes, parameter flow = end-to-end flow,
per-trajectory independence, substep counters, and option errors (API and config)."""
import math

import pytest
import torch

from dlnsim import CustomEnergy, EndToEndFlow, GradientFlow, MatrixRegression, saxe_mode
from dlnsim.config import ConfigError, load_config
from dlnsim.dynamics.base import dopri5_advance
from dlnsim.network import balanced_weights
from dlnsim.runner import build_energy, build_scheme

from conftest import DTYPE, make_generator, random_orthogonal, rel_err


def _run(scheme, n, **start):
    state = scheme.init_state(**start)
    for _ in range(n):
        state = scheme.step(state)
    return state


LAM = torch.tensor([-1.0, 0.5, 1.5], dtype=DTYPE)  # decay, slow and fast growth: three step-size histories
Y0 = torch.tensor([1.0, -2.0, 0.3], dtype=DTYPE)


def _linear_error(rtol, T=1.0):
    y, n, r = dopri5_advance(lambda y: LAM * y, Y0, T, None, rtol, 1e-16)
    exact = Y0 * torch.exp(LAM * T)
    return ((y - exact) / exact).abs(), n, r


# --------------------------------------------------------------------------- dopri5_advance on y' = lam y


def test_linear_ode_matches_exact_solution():
    # Per-step error control keeps each local error <= rtol |y|; the 5th-order solution carried
    # forward is more accurate than the 4th-order estimate, and over T = 1 with |lam| <= 1.5 the
    # propagated error stays within a few rtol (measured 9e-11 .. 2.9e-10 at rtol 1e-9). 10 rtol
    # is the bound; landing exactly on T is part of the check (an overshoot of 1e-9 in time would
    # already show at lam = 1.5).
    err, n, r = _linear_error(1e-9)
    assert float(err.max()) < 1e-8, err
    assert n.dtype == torch.long and n.shape == (3,) and r.shape == (3,)
    assert bool((n > 1).all())
    # a list of tensors is advanced like the tensor (here a 2-component system of one trajectory each)
    ys, n2, _ = dopri5_advance(lambda v: [LAM * v[0], -v[1]], [Y0, Y0.clone()], 1.0, None, 1e-9, 1e-16)
    assert rel_err(ys[1], Y0 * math.exp(-1.0)) < 1e-8


def test_global_error_scales_with_rtol():
    # The embedded 4th-order estimate C h^5 is held at ~rtol, so h ~ rtol^(1/5); the propagated
    # 5th-order solution has local error ~h^6 ~ rtol^(6/5) over ~rtol^(-1/5) steps: global error
    # proportional to rtol. A factor 1e3 in rtol should give ~1e3 in the error (measured 790);
    # [1e2, 1e4] allows an effective exponent between 2/3 and 4/3 (pre-asymptotic controller effects).
    e6, n6, _ = _linear_error(1e-6)
    e9, n9, _ = _linear_error(1e-9)
    ratio = float(e6.max() / e9.max())
    assert 1e2 <= ratio <= 1e4, ratio
    # more substeps for the tighter tolerance, roughly by 1e3^(1/5) ~ 4
    assert bool((n9 > n6).all())


def test_failure_is_a_value_error():
    with pytest.raises(ValueError, match="too tight"):
        dopri5_advance(lambda y: LAM * y, Y0, 1.0, 1e-3, 1e-12, 1e-16, max_substeps=3)
    # y' = y^2 blows up at t = 1: the flow diverges before t = 2
    with pytest.raises(ValueError, match="diverged"):
        dopri5_advance(lambda y: y * y, torch.ones(2, dtype=DTYPE), 2.0, None, 1e-8, 1e-12, max_substeps=2000)


# --------------------------------------------------------------------------- the flows with method="dopri5"


def _saxe_setup(N, g):
    d = 3
    U, V = random_orthogonal(d, (), g), random_orthogonal(d, (), g)
    lam = torch.tensor([2.0, 1.0, 0.5], dtype=DTYPE)
    u0 = torch.tensor([0.1, 0.3, 1.2], dtype=DTYPE)  # a slow plateau, a rise, a decay onto the target
    energy = MatrixRegression((U * lam) @ V.T)
    W0 = balanced_weights(((U * u0) @ V.T).unsqueeze(0), N, generator=g)
    return U, V, lam, u0, energy, W0


@pytest.mark.parametrize("N", [2, 3])
def test_dopri5_gradient_flow_follows_saxe(N):
    # Balanced aligned start: U^T X(t) V = diag(saxe_mode(t)). Saves every h = 0.1 to T = 2; the
    # relative error of each mode is the integrator's, bounded by ~10 rtol (measured 1.5e-10 for
    # N = 2, 4.3e-10 for N = 3 at rtol 1e-9).
    rtol, h, T = 1e-9, 0.1, 2.0
    U, V, lam, u0, energy, W0 = _saxe_setup(N, make_generator(3))
    scheme = GradientFlow(energy, h, N, method="dopri5", rtol=rtol)
    assert scheme.stat_names == ("substeps", "rejected_substeps")
    assert GradientFlow.stat_names == () and GradientFlow(energy, h, N).stat_names == ()
    state = _run(scheme, round(T / h), weights=W0)
    assert state.t == pytest.approx(T, abs=1e-12)
    M = U.T @ state.end_to_end()[0] @ V
    theory = saxe_mode(T, lam, u0, N)
    assert float((M - torch.diag(torch.diagonal(M))).abs().max()) < 1e-12
    assert float(((torch.diagonal(M) - theory) / theory).abs().max()) < 10 * rtol
    # the adaptive run needs several substeps per save interval at this tolerance
    assert float(state.stats["substeps"][0]) > round(T / h)


def test_dopri5_parameter_flow_matches_end_to_end_flow():
    # Off the Saxe setting, with a non-quadratic energy: on the balanced manifold phi(W(t)) solves
    # dX/dt = -A_{N,X}(grad E). Both integrated by dopri5 at rtol 1e-10: each has global error a
    # few rtol relative (measured difference 8e-12), below the 1e-8 required.
    N, h, d = 3, 0.1, 3
    g = make_generator(1)
    Phi = 0.6 * torch.randn(d, d, dtype=DTYPE, generator=g) + torch.eye(d, dtype=DTYPE)
    X0 = 0.3 * torch.randn(2, d, d, dtype=DTYPE, generator=g) + 0.5 * torch.eye(d, dtype=DTYPE)
    W0 = balanced_weights(X0, N, generator=g)
    energy = CustomEnergy(lambda X: 0.25 * ((X - Phi) ** 4).sum(dim=(-2, -1)))
    a = _run(GradientFlow(energy, h, N, method="dopri5", rtol=1e-10), 10, weights=W0)
    b = _run(EndToEndFlow(energy, h, N, method="dopri5", rtol=1e-10), 10, X=X0)
    assert float((b.X - X0).norm()) > 0.5  # a real trajectory
    assert rel_err(a.end_to_end(), b.X) < 1e-9  # 10 rtol: each flow has global error ~ rtol (measured 8e-12)
    assert set(b.stats) == {"substeps", "rejected_substeps"}


def test_trajectories_are_independent():
    # Each trajectory has its own step sizes and accept/reject decisions, and finished ones are
    # frozen: a trajectory's result and counters do not depend on its batch mates (to roundoff
    # of batched matmuls; the substep counts exactly).
    N, d = 3, 3
    g = make_generator(5)
    Phi = torch.randn(d, d, dtype=DTYPE, generator=g)
    scales = torch.tensor([0.05, 0.5, 2.0], dtype=DTYPE).reshape(-1, 1, 1)  # very different stiffness / plateaus
    X0 = scales * random_orthogonal(d, (3,), g)
    W0 = balanced_weights(X0, N, generator=g)
    energy = MatrixRegression(Phi)
    batch = _run(GradientFlow(energy, 0.2, N, method="dopri5", rtol=1e-8), 5, weights=W0)
    assert len(set(batch.stats["substeps"].tolist())) > 1  # the trajectories did take different steps
    for b in range(3):
        alone = _run(GradientFlow(energy, 0.2, N, method="dopri5", rtol=1e-8), 5, weights=[W[b : b + 1] for W in W0])
        assert rel_err(alone.end_to_end(), batch.end_to_end()[b : b + 1]) < 1e-13
        for k in ("substeps", "rejected_substeps"):
            assert float(alone.stats[k][0]) == float(batch.stats[k][b])


def test_fast_early_transient_takes_many_substeps():
    # E = 1/2||X - Phi||^2 with ||Phi|| ~ 50 from a unit X(0), N = 2: A_X(P) = (XX^T)^(1/2) P +
    # P (X^T X)^(1/2) has rate ~2 s(X), so X races to Phi and then relaxes at rate ~100 (time scale 1/100, far below
    # the save interval h = 0.25); near Phi the flow is stiff for an explicit method and stability
    # caps the steps. Measured: 191 substeps (22 rejected) for 4 saves. The end point is Phi (the
    # transient is over) to 10 rtol (measured 3e-9); the free-energy flow (beta given) runs too.
    N, d, h, n = 2, 2, 0.25, 4
    g = make_generator(7)
    Phi = 50.0 * random_orthogonal(d, (), g)
    X0 = random_orthogonal(d, (1,), g)
    energy = MatrixRegression(Phi)
    state = _run(EndToEndFlow(energy, h, N, method="dopri5", rtol=1e-8), n, X=X0)
    assert float(state.stats["substeps"][0]) > 10 * n
    assert rel_err(state.X, Phi.unsqueeze(0)) < 1e-7
    free = _run(EndToEndFlow(energy, h, N, beta=torch.tensor([10.0]), method="dopri5", rtol=1e-8), n, X=X0)
    assert float(free.stats["substeps"][0]) > 10 * n and bool(torch.isfinite(free.X).all())


def test_rk4_default_unchanged():
    # method="rk4" (the default) is the fixed-step RK4 of before: same numbers, no counters.
    N = 2
    U, V, lam, u0, energy, W0 = _saxe_setup(N, make_generator(3))
    a = _run(GradientFlow(energy, 0.01, N), 10, weights=W0)
    b = _run(GradientFlow(energy, 0.01, N, method="rk4"), 10, weights=W0)
    assert torch.equal(a.end_to_end(), b.end_to_end()) and a.stats == {}


def test_bad_options_are_value_errors():
    energy = MatrixRegression(torch.eye(2, dtype=DTYPE))
    for cls in (GradientFlow, EndToEndFlow):
        for kwargs, match in (
            ({"method": "rk45"}, "method must be one of"),
            ({"method": "dopri5", "rtol": 0.0}, "rtol must be a positive number"),
            ({"method": "dopri5", "atol": -1e-12}, "atol must be a positive number"),
            ({"method": "dopri5", "rtol": float("nan")}, "rtol must be a positive number"),
            ({"method": "dopri5", "max_substeps": 0}, "max_substeps must be a positive integer"),
            ({"rtol": 1e-6}, "apply to method='dopri5' only"),
        ):
            with pytest.raises(ValueError, match=match):
                cls(energy, 0.1, 2, **kwargs)


def test_config_options_build_the_adaptive_scheme():
    for scheme in ("gradient_flow", "end_to_end_flow", "free_energy_flow"):
        cfg = load_config({"dynamics": {"scheme": scheme, "beta": 5.0 if scheme == "free_energy_flow" else None, "steps": 3,
                                        "options": {"method": "dopri5", "rtol": "1e-7", "atol": 1e-10}}})
        s = build_scheme(cfg, build_energy(cfg))
        assert (s.method, s.rtol, s.atol) == ("dopri5", 1e-7, 1e-10)
        assert "substeps" in s.stat_names
    for opts, match in (
        ({"method": "rk45"}, r"dynamics\.options\.method: unknown value 'rk45'"),
        ({"rtl": 1e-6}, r"dynamics\.options\.rtl: unknown option of scheme 'gradient_flow'; did you mean"),
        ({"method": "dopri5", "rtol": 0}, r"dynamics\.options\.rtol: must be > 0"),
        ({"atol": 1e-6}, r"dynamics\.options: atol apply to method: dopri5 only"),
    ):
        with pytest.raises(ConfigError, match=match) as e:
            load_config({"dynamics": {"options": opts}})
        assert "\n" not in str(e.value)
