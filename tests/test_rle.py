"""Tests of the Riemannian Langevin equation for X (dlnsim.dynamics.rle).

1. The closed-form drift equals the general form -A grad E + (div A + A grad log rho)/beta with
   div A and grad log rho by automatic differentiation (eigh-based A, log det of the d^2 x d^2
   matrix of A): this also settles which pairs enter log rho.
2. The layer-chart coefficients are the Ito image of the RLE under X -> Y = U diag(s^{1/N}) V^T.
3. The scheme: reproducibility, beta tensors, time_scale, survival through rank-deficient X,
   agreement of the two charts away from rank deficiency, order-h consistency of the drift.
4. Stationarity: E = alpha/2 ||X||^2, d = 1, 2, N = 2, 3: moments within 4 standard errors of
   SingularValueLaw, KS p > 1e-3, and the same data rejects a wrong law.
"""

import pytest
import torch
from torch.autograd.functional import jvp as _jvp

from dlnsim import MatrixRegression, WeightDecay, metric_operator, metric_operator_sqrt
from dlnsim.dynamics.rle import (
    RiemannianLangevin,
    _layer_pair_terms,
    _operator_matrix,
    _sym_power,
    from_layer_coordinates,
    layer_coordinates,
    rle_drift,
    rle_drift_autograd,
    rle_layer_drift,
)
from dlnsim.geometry import SVDFactors
from dlnsim.gibbs import SingularValueLaw
from dlnsim.problems import rle_stationary_samples
from dlnsim.simulation import simulate
from dlnsim.spectral import log_kernel
from dlnsim.stats import independent_chain_stderr, ks_test, zscore

torch.set_default_dtype(torch.float64)


def _random_problem(d, seed):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(2, d, d, generator=g)
    E = MatrixRegression(torch.randn(d, d, generator=g))  # not orthogonally invariant: full E-part
    return X, E


# ---------------------------------------------------------------------------------------------
# 1. drift: closed form vs automatic differentiation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("N", [1, 2, 3, 4])
def test_closed_form_drift_equals_autograd_oracle(d, N):
    X, E = _random_problem(d, 10 * d + N)
    beta = torch.tensor([0.7, 2.5])
    closed = rle_drift(X, E, N, beta)
    oracle = rle_drift_autograd(X, E, N, beta)
    # Both are roundoff-exact formulas (measured agreement 1e-15 relative); 1e-10 as specified.
    assert torch.allclose(closed, oracle, rtol=0, atol=1e-10 * float(oracle.abs().max()))


def test_log_rho_counts_diagonal_once_and_offdiagonal_once():
    # det A = prod over ALL (i, j) of K_ij (A acts on d^2 dimensions), so
    # log rho = S - 1/2 log det A = const - 1/2 sum_{i<=j} log K_ij: the spec's formula, read as a
    # sum of log K over the pairs i <= j of -1/2 log det A + S. Reading it instead as
    # "S - 1/2 sum_{i<=j} log K" (S kept, each pair once) contradicts the closed form by O(1).
    X, E = _random_problem(3, 7)
    for N in (2, 3):
        s = torch.linalg.svdvals(X[0])
        logK = log_kernel(s, N)
        assert float(torch.logdet(_operator_matrix(X[0], N))) == pytest.approx(float(logK.sum()), rel=1e-12)
        closed = rle_drift(X, E, N, 1.3)
        wrong = rle_drift_autograd(X, E, N, 1.3, log_det_pairs="upper")
        assert float((wrong - closed).abs().max()) > 1e-2 * float(closed.abs().max())


def test_drift_limits_and_noise_free_part():
    X, E = _random_problem(3, 3)
    # N = 1: the RLE is Euclidean Langevin, drift -grad E for every beta.
    assert torch.allclose(rle_drift(X, E, 1, 0.3), -E.grad(X), atol=1e-13)
    # beta -> infinity: the drift is the end-to-end gradient flow -A(grad E).
    assert torch.allclose(rle_drift(X, E, 3, 1e15), -metric_operator(X, E.grad(X), 3), atol=1e-12)
    # The Ito part (N-1) X (X^T X)^{-1/N}: drift(beta) - drift(inf) = (A grad S + Ito)/beta.
    from dlnsim.entropy import entropy_grad

    ito = 2 * X @ _sym_power(X.mT @ X, -1.0 / 3)
    expected = (metric_operator(X, entropy_grad(X, 3), 3) + ito) / 2.0
    assert torch.allclose(rle_drift(X, E, 3, 2.0) - rle_drift(X, E, 3, 1e300), expected, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# 2. layer chart = Ito image of the RLE
# ---------------------------------------------------------------------------------------------


def jvp(f, primals, tangents):
    # torch.autograd.functional (double-backward) rather than torch.func: the latter warns on
    # first use in this torch version, and warnings are errors here. create_graph for nesting.
    return _jvp(f, primals[0], tangents[0], create_graph=True)


def _phi(X, N):
    return X @ _sym_power(X.mT @ X, (1 - N) / (2 * N))


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("N", [1, 2, 3, 4])
def test_layer_chart_is_the_ito_image_of_the_rle(d, N):
    X, E = _random_problem(d, 100 + 10 * d + N)
    X = X[0]
    beta = 0.7
    f = lambda Z: _phi(Z, N)  # noqa: E731  (eigh-based: independent of the SVD code)
    assert torch.allclose(f(X), layer_coordinates(X, N), atol=1e-12)
    assert torch.allclose(from_layer_coordinates(layer_coordinates(X, N), N), X, atol=1e-12)
    # Ito: b_Y = DPhi[b_X] + (1/beta) sum_k D^2 Phi[A^{1/2} E_k, A^{1/2} E_k]; D_Y = DPhi A DPhi^T.
    bX = rle_drift(X, E, N, beta)
    _, first = jvp(f, (X,), (bX,))
    second = torch.zeros_like(X)
    cols = []
    for k in range(d * d):
        Ek = torch.zeros(d * d)
        Ek[k] = 1
        v = metric_operator_sqrt(X, Ek.reshape(d, d), N)
        _, hv = jvp(lambda Z: jvp(f, (Z,), (v,))[1], (X,), (v,))
        second = second + hv
        cols.append(jvp(f, (X,), (v,))[1].reshape(-1))
    bY = (first + second / beta).detach()
    assert torch.allclose(rle_layer_drift(X, E, N, beta), bY, atol=1e-10 * float(bY.abs().max()))
    J = torch.stack(cols, 1).detach()
    frame = SVDFactors.of(X, N)
    _, _, rho, _ = _layer_pair_terms(frame.s, frame.log_K, N)
    D = []
    for k in range(d * d):
        Ek = torch.zeros(d * d)
        Ek[k] = 1
        P = frame.U.mT @ Ek.reshape(d, d) @ frame.V
        Q = rho * 0.5 * (P + P.mT) + 0.5 * (P - P.mT) / rho
        D.append((frame.U @ Q @ frame.V.mT).reshape(-1))
    assert torch.allclose(J @ J.T, torch.stack(D, 1), atol=1e-10)


def test_layer_chart_coefficients_regular_at_rank_deficiency_and_collisions():
    # r_i -> 0 as x_i -> 0 (odd, smooth), bounded near collisions x_i = x_j, and 1/N <= B/A <= 1.
    for N in (2, 3, 5):
        for eps in (1e-3, 1e-6, 1e-9):
            s = torch.tensor([1.3, 0.7, eps**N])
            _, _, rho, r = _layer_pair_terms(s, log_kernel(s, N), N)
            assert abs(float(r[-1])) < 10 * eps
            assert bool(((rho >= 1 / N - 1e-12) & (rho <= 1 + 1e-12)).all())
        near = torch.tensor([1.0, 1.0 - 1e-9, 0.5])
        exact = torch.tensor([1.0, 1.0, 0.5])
        r1 = _layer_pair_terms(near, log_kernel(near, N), N)[3]
        r0 = _layer_pair_terms(exact, log_kernel(exact, N), N)[3]
        # O(gap) change (measured <= 7.4e-10); a cancelling difference quotient would be off by ~1e-7.
        assert torch.allclose(r1, r0, rtol=0, atol=1e-8)


# ---------------------------------------------------------------------------------------------
# 3. the scheme
# ---------------------------------------------------------------------------------------------


def test_scheme_reproducible_beta_tensor_and_time_scale():
    g = torch.Generator().manual_seed(0)
    X0 = torch.randn(5, 2, 2, generator=g)
    E = WeightDecay(1.0)

    def run(**kw):
        h = kw.pop("h", 0.01)
        sch = RiemannianLangevin(E, h, 3, kw.pop("beta", 2.0), generator=torch.Generator().manual_seed(4), **kw)
        st = sch.init_state(X=X0)
        for _ in range(20):
            st = sch.step(st)
        return st

    a, b = run(), run()
    assert torch.equal(a.X, b.X) and a.t == pytest.approx(0.2) and a.step == 20
    assert torch.allclose(run(beta=torch.full((5,), 2.0)).X, a.X, atol=1e-14)
    # time_scale="depth" multiplies the generator by 1/N: the same as step h/N.
    assert torch.allclose(run(time_scale="depth").X, run(h=0.01 / 3).X, atol=1e-13)
    # The carried SVD is dropped when X is modified in place or replaced.
    sch = RiemannianLangevin(E, 0.01, 3, 2.0, generator=torch.Generator().manual_seed(1))
    st = sch.step(sch.init_state(X=X0))
    st.X.mul_(2.0)
    fresh = SVDFactors.of(st.X, 3)
    assert torch.allclose(sch._frame(st.X).s, fresh.s, rtol=1e-13, atol=0)


@pytest.mark.parametrize("chart", ["layer", "end_to_end"])
def test_scheme_survives_rank_deficient_and_zero_X(chart):
    X = torch.zeros(4, 3, 3)
    X[1, 0, 0] = 1.0  # rank 1
    X[2] = torch.diag(torch.tensor([1.0, 0.5, 0.0]))  # rank 2
    X[3] = torch.randn(3, 3, generator=torch.Generator().manual_seed(3))
    for N in (1, 2, 3):
        sch = RiemannianLangevin(WeightDecay(1.0), 0.01, N, 1.0, generator=torch.Generator().manual_seed(0), chart=chart)
        st = sch.init_state(X=X)
        for _ in range(30):
            st = sch.step(st)
        assert bool(torch.isfinite(st.X).all())
        assert st.stats["rank_crossings"].shape == (4,)


def test_drift_consistency_of_the_layer_step():
    # With negligible noise (beta = 1e24) one layer-chart step is X - h A(grad E) + O(h^2):
    # halving h must divide the deviation by ~4 (first-order consistency of the chart's drift).
    X, E = _random_problem(3, 5)
    errs = []
    for h in (1e-2, 5e-3, 2.5e-3):
        sch = RiemannianLangevin(E, h, 3, 1e24, generator=torch.Generator().manual_seed(0))
        st = sch.step(sch.init_state(X=X))
        errs.append(float((st.X - (X - h * metric_operator(X, E.grad(X), 3))).abs().max()))
    assert 3.5 < errs[0] / errs[1] < 4.5 and 3.5 < errs[1] / errs[2] < 4.5


def test_charts_agree_in_law_away_from_rank_deficiency():
    # E = 1/2 ||X - Phi||^2 with a non-symmetric target, well-separated singular values, low noise:
    # both discretisations of the same SDE give the same ensemble means at t = 0.3 (h = 0.005:
    # both biases O(h) ~ 1e-3 here, far below the MC error; 4 combined standard errors).
    Phi = torch.tensor([[2.5, 0.8], [-0.4, 1.5]])
    X0 = torch.tensor([[1.5, 0.0], [0.3, 0.9]]).expand(3000, 2, 2)
    out = {}
    for chart in ("layer", "end_to_end"):
        sch = RiemannianLangevin(MatrixRegression(Phi), 0.005, 3, 10.0, generator=torch.Generator().manual_seed(7), chart=chart)
        st = sch.init_state(X=X0)
        for _ in range(60):
            st = sch.step(st)
        s = torch.linalg.svdvals(st.X)
        out[chart] = torch.stack([s[:, 0], s[:, 1], (st.X * st.X).sum((-2, -1)), st.X[:, 0, 1]], -1)
    a, b = out["layer"], out["end_to_end"]
    se = (a.var(0) / a.shape[0] + b.var(0) / b.shape[0]).sqrt()
    z = (a.mean(0) - b.mean(0)) / se
    assert bool((z.abs() < 4).all()), z
    # ...and the ensemble did move (the comparison is not between two copies of X0).
    assert float((a[:, 2].mean() - (X0[0] ** 2).sum()).abs()) > 10 * float(se[2])


def test_simulate_records_rank_crossings():
    sch = RiemannianLangevin(WeightDecay(1.0), 0.02, 2, 1.0, generator=torch.Generator().manual_seed(0))
    rec = simulate(sch, 50, X=0.3 * torch.randn(64, 1, 1, generator=torch.Generator().manual_seed(1)), save_every=10, beta=1.0)
    assert rec["rank_crossings"].shape == (6, 64)
    assert float(rec["rank_crossings"][-1].sum()) > 0  # d = 1 chains near 0 change sign
    assert bool(torch.isfinite(rec["free_energy"]).all())


def test_validation():
    E = WeightDecay(1.0)
    with pytest.raises(ValueError, match="chart"):
        RiemannianLangevin(E, 0.01, 2, 1.0, chart="polar")
    with pytest.raises(ValueError, match="time_scale"):
        RiemannianLangevin(E, 0.01, 2, 1.0, time_scale="layers")
    with pytest.raises(ValueError, match="beta"):
        RiemannianLangevin(E, 0.01, 2, torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="square"):
        RiemannianLangevin(E, 0.01, 2, 1.0).init_state(X=torch.zeros(3, 2, 3))


# ---------------------------------------------------------------------------------------------
# 4. stationarity against the Gibbs law
# ---------------------------------------------------------------------------------------------

MOMENTS = {
    "s_max": lambda s: s[..., 0],
    "s_min": lambda s: s[..., -1],
    "norm2": lambda s: (s * s).sum(-1),
    "absdet": lambda s: s.prod(-1),
}


def _stationary_samples(d, N, h, chains, burn, n_samples, spacing, seed, chart="layer"):
    return rle_stationary_samples(d, N, h, chains, burn, n_samples, spacing, seed=seed, chart=chart)


# Step sizes from the measured layer-chart bias (scripts/rle_stationary_long.py, 16000-100000
# chains; relative bias, linear in h): d = 1: E||X||^2 +1.7% (N = 2), +2.0% (N = 3) at h = 0.02;
# d = 2, N = 2: E||X||^2 +1.7%, E|det X| +2.3% at h = 0.01 and half that at 0.005; d = 2, N = 3:
# E|det X| +3.4% at h = 0.005, +0.7 +- 0.7% at 0.0025. At the h below the bias is <= 0.5 of the
# standard errors of these ensembles (relative: ~2% for d = 1, ~0.9-2% for d = 2). beta = alpha = 1
# (the law depends on beta alpha only; other values rescale time). Relaxation time ~0.5: burn-in 2,
# then 6 samples 0.5 apart per chain; standard errors from per-chain means (exact for independent
# chains); KS on the last sample of each chain (independent draws).
# The d = 3 case (h = 0.001: its bias at 0.0025 reached z ~ 3 at 8000 chains) is the long version:
# run it with `pytest -m slow`.
STATIONARY_CASES = [
    (1, 2, 0.01),
    (1, 3, 0.01),
    (2, 2, 0.0025),
    (2, 3, 0.0025),
    pytest.param(3, 2, 0.001, marks=pytest.mark.slow),
]


@pytest.mark.parametrize("d,N,h", STATIONARY_CASES)
def test_rle_stationary_law(d, N, h):
    chains = 2000
    s, st = _stationary_samples(d, N, h, chains, burn=2.0, n_samples=6, spacing=0.5, seed=1000 * d + N)
    assert bool(torch.isfinite(s).all())
    law = SingularValueLaw(N, 1.0, 1.0, d)
    # d = 1: S is constant and entropy=False is the same law; the wrong law there is the Euclidean
    # Gibbs law exp(-beta E) dX (Gaussian X). d = 2: the law without the entropy factor e^S.
    wrong = SingularValueLaw(N, 1.0, 1.0, d, entropy=False, volume="lebesgue" if d == 1 else "metric")
    z_true, z_wrong = {}, {}
    for name, f in MOMENTS.items():
        v = f(s)
        se = float(independent_chain_stderr(v))
        z_true[name] = zscore(float(v.mean()), float(law.moment(f)), se)
        z_wrong[name] = zscore(float(v.mean()), float(wrong.moment(f)), se)
    assert all(abs(z) < 4 for z in z_true.values()), z_true
    last = s[-1]
    p_max = ks_test(last[:, 0], law.cdf_max)[1]
    p_min = ks_test(last[:, -1], law.cdf_min)[1]
    assert p_max > 1e-3 and p_min > 1e-3, (p_max, p_min)
    # Power: the same data rejects the wrong law.
    p_wrong = ks_test(last[:, 0], wrong.cdf_max)[1]
    assert max(abs(z) for z in z_wrong.values()) > 4 or p_wrong < 1e-3, (z_wrong, p_wrong)
    # Chains do cross the rank-deficient set (det X changes sign), without NaN.
    assert float(st.stats["rank_crossings"].mean()) > 0


def test_plain_euler_in_X_is_biased_near_rank_deficiency():
    # Why the layer chart is the default: the literal X-chart Euler-Maruyama cannot resolve
    # |s| < O(h), where the law has mass ~ h^{1/2}; at h = 0.02 (d = 1, N = 2) E s is biased by
    # ~ +12% (measured), > 4 standard errors of this ensemble, while the layer chart at the same h
    # passes (test_rle_stationary_law).
    s, _ = _stationary_samples(1, 2, 0.02, 2000, burn=2.0, n_samples=6, spacing=0.5, seed=5, chart="end_to_end")
    law = SingularValueLaw(2, 1.0, 1.0, 1)
    v = s[..., 0]
    assert zscore(float(v.mean()), float(law.moment(lambda t: t[..., 0])), float(independent_chain_stderr(v))) > 4
