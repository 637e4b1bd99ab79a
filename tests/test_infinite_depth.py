"""The infinite-depth limit (docs/theory.md §14, part 1): log-mean kernel, A_inf, the
renormalized entropy, the depth-inf drifts and schemes, and the convergence of finite N to them.

Independent references: mpmath (50 digits) for the kernel; Gauss-Legendre quadrature of
int_0^1 (X X^T)^{1-u} P (X^T X)^u du with eigh powers for A_inf; automatic differentiation for
gradients and for the divergence in the RLE drift. Rates in N are measured by least-squares slopes
of log(error) against log(N) and compared with the derived rate 1 (or 2 where the derivation says so).
"""
import math

import numpy as np
import pytest
import torch

from dlnsim.depth_limit import (
    entropy_divergent_part,
    entropy_inf,
    entropy_inf_grad,
    entropy_renormalized,
    metric_operator_inf_quadrature,
)
from dlnsim.dynamics.gradient import EndToEndFlow
from dlnsim.dynamics.infinite_depth import (
    InfiniteDepthFlow,
    InfiniteDepthFreeEnergyFlow,
    InfiniteDepthLangevin,
    infinite_depth_velocity,
    rle_drift_inf,
    rle_drift_inf_autograd,
)
from dlnsim.dynamics.rle import RiemannianLangevin, rle_drift
from dlnsim.energies import MatrixRegression, WeightDecay
from dlnsim.entropy import entropy
from dlnsim.geometry import (
    metric_inf,
    metric_operator,
    metric_operator_inf,
    metric_operator_inf_inv,
    metric_operator_inf_inv_sqrt,
    metric_operator_inf_sqrt,
)
from dlnsim.spectral import dlog_kernel_inf_ds, kernel, kernel_inf, log_kernel_inf, logmean_slope

from conftest import DTYPE, make_generator, matrix_with_spectrum, rel_err

mpmath = pytest.importorskip("mpmath", reason="mpmath is a test dependency: pip install -e '.[dev]'")


def _slope(Ns, errs) -> float:
    return float(np.polyfit(np.log(Ns), np.log(errs), 1)[0])


def _logmean_mp(a, b):
    a, b = mpmath.mpf(a), mpmath.mpf(b)
    if a == b:
        return a
    if a == 0 or b == 0:
        return mpmath.mpf(0)
    return (a - b) / (mpmath.log(a) - mpmath.log(b))


# --------------------------------------------------------------------------- the log-mean kernel


def test_kernel_inf_against_mpmath_edge_cases():
    mpmath.mp.dps = 50
    cases = [1.0, 1.0, 1.0 + 1e-12, 1.0 + 1e-7, 3.0, 1e-8, 1e8, 0.0]
    s = torch.tensor(cases, dtype=DTYPE)
    K = kernel_inf(s)
    worst = 0.0
    for i, a in enumerate(cases):
        for j, b in enumerate(cases):
            ref = _logmean_mp(mpmath.mpf(a) ** 2, mpmath.mpf(b) ** 2)
            if ref == 0:
                assert K[i, j] == 0.0  # logmean(a, 0) = 0: exact limit, not NaN
            else:
                worst = max(worst, abs(float(K[i, j]) - float(ref)) / float(ref))
    # measured 4.4e-16 (a few ulp): expm1/log1p-free form has no cancellation at s_i ~ s_j
    assert worst < 1e-14, worst


def test_logmean_slope_series_and_direct_agree_and_limits():
    eps = 1e-9
    L = torch.tensor([-0.1 - eps, -0.1 + eps, 0.1 - eps, 0.1 + eps, 1e-5, -3.0, 40.0], dtype=DTYPE)
    g = logmean_slope(L)
    mpmath.mp.dps = 50
    ref = [float(1 / (1 - mpmath.exp(-mpmath.mpf(x))) - 1 / mpmath.mpf(x)) for x in L.tolist()]
    # the switch at |L| = 0.1 is seamless: measured 0 (series side) and 3.3e-16 (direct side,
    # which loses ~eps/|L|) against mpmath
    assert max(abs(a - b) for a, b in zip(g.tolist(), ref)) < 5e-15
    ends = logmean_slope(torch.tensor([0.0, float("inf"), -float("inf")], dtype=DTYPE))
    assert ends.tolist() == [0.5, 1.0, 0.0]


def test_dlog_kernel_inf_matches_autograd():
    s = torch.tensor([2.0, 1.0, 1.0 + 1e-9, 0.3], dtype=DTYPE, requires_grad=True)
    logK = log_kernel_inf(s)
    D = dlog_kernel_inf_ds(s.detach())
    d = s.shape[0]
    for i in range(d):
        for j in range(d):
            if abs(float(s[i].detach() - s[j].detach())) < 1e-6 and i != j:
                continue  # autograd of the direct form is ill-conditioned there; the series covers it
            (gr,) = torch.autograd.grad(logK[i, j], s, retain_graph=True)
            # D_ij is the partial derivative in s_i (s_j fixed); for i == j the total derivative
            assert abs(float(gr[i]) - float(D[i, j])) < 1e-13, (i, j)


# --------------------------------------------------------------------------- A_inf


@pytest.mark.parametrize("d", [1, 2, 3, 5])
def test_metric_operator_inf_matches_quadrature(d):
    g = make_generator(300 + d)
    s = 0.3 * 10.0 ** torch.rand(3, d, dtype=DTYPE, generator=g)  # condition number <= 10
    X = matrix_with_spectrum(s, g)
    P = torch.randn(3, d, d, dtype=DTYPE, generator=g)
    # measured <= 7e-15 (48-node Gauss-Legendre is exact to roundoff for ratios <= 100 in s^2)
    assert rel_err(metric_operator_inf(X, P), metric_operator_inf_quadrature(X, P)) < 1e-13


@pytest.mark.parametrize("shape", [(2, 3), (3, 2)])
def test_metric_operator_inf_rectangular(shape):
    # zero-padded spectrum: K^inf(s, 0) = 0, i.e. 0^u = 0 at every interior quadrature node. The
    # reference zeroes the known null eigenvalues of the larger Gram matrix (eigh returns them as
    # +-1e-16, and (1e-16)^{u} is not small at the first node u = 6e-4).
    g = make_generator(sum(shape))
    X = torch.randn(2, *shape, dtype=DTYPE, generator=g)
    P = torch.randn(2, *shape, dtype=DTYPE, generator=g)
    r = min(shape)

    def power(M, q):
        lam, Q = torch.linalg.eigh(M)
        lam = lam.clone()
        lam[..., : M.shape[-1] - r] = 0.0
        return (Q * lam.clamp_min(0).pow(q).unsqueeze(-2)) @ Q.mT

    u, w = np.polynomial.legendre.leggauss(48)
    ref = sum(wk / 2 * power(X @ X.mT, 1 - (uk + 1) / 2) @ P @ power(X.mT @ X, (uk + 1) / 2) for uk, wk in zip(u, w))
    assert rel_err(metric_operator_inf(X, P), ref) < 1e-13  # measured 1.6e-15
    E = MatrixRegression(torch.randn(*shape, dtype=DTYPE, generator=g))
    st = InfiniteDepthFlow(E, 0.1).init_state(X=X)  # the flow of E accepts rectangular X
    assert st.X.shape == X.shape
    with pytest.raises(ValueError, match="square"):
        InfiniteDepthFlow(E, 0.1, beta=1.0).init_state(X=X)


def test_metric_operator_inf_powers_and_metric():
    g = make_generator(5)
    X = matrix_with_spectrum(torch.tensor([[2.0, 1.0, 1.0, 0.2]], dtype=DTYPE), g)
    P = torch.randn(1, 4, 4, dtype=DTYPE, generator=g)
    A = metric_operator_inf(X, P)
    assert rel_err(metric_operator_inf_sqrt(X, metric_operator_inf_sqrt(X, P)), A) < 1e-13
    assert rel_err(metric_operator_inf_inv(X, A), P) < 1e-13
    assert rel_err(metric_operator_inf_inv_sqrt(X, metric_operator_inf_sqrt(X, P)), P) < 1e-13
    # g^inf = lim N g^N: N * g^N -> g^inf at rate 1/N (measured slope -1.00)
    Ns = [64, 128, 256, 512]
    from dlnsim.geometry import metric

    errs = [float(abs(N * metric(X, P, N) - metric_inf(X, P)) / metric_inf(X, P)) for N in Ns]
    assert abs(_slope(Ns, errs) + 1) < 0.05, errs


def test_metric_operator_inf_rank_deficient_limit():
    # a zero singular value: K^inf = 0 on its row and column (A_inf is singular there)
    X = torch.diag(torch.tensor([2.0, 0.5, 0.0], dtype=DTYPE)).unsqueeze(0)
    P = torch.ones(1, 3, 3, dtype=DTYPE)
    A = metric_operator_inf(X, P)
    assert torch.all(A[0, 2, :] == 0) and torch.all(A[0, :, 2] == 0)
    assert torch.isfinite(A).all()
    with pytest.raises(ValueError, match="rank-deficient"):
        metric_operator_inf_inv(X, P)


def test_A_over_N_converges_at_rate_one_and_corrected_at_rate_two():
    # K^N/N = (s_i s_j)^{-1/N} K^inf (1 + O(N^-2)): rate 1, and 2 once the factor is removed.
    g = make_generator(11)
    s = torch.tensor([[2.5, 1.0, 0.4]], dtype=DTYPE)
    X = matrix_with_spectrum(s, g)
    P = torch.randn(1, 3, 3, dtype=DTYPE, generator=g)
    Ns = [16, 32, 64, 128, 256, 512]
    A = metric_operator_inf(X, P)
    errs = [rel_err(metric_operator(X, P, N) / N, A) for N in Ns]
    # measured slope -0.998 (errors 6.6e-2 ... 2.1e-3)
    assert abs(_slope(Ns, errs) + 1) < 0.03, errs
    si = s[0].unsqueeze(-1) * s[0].unsqueeze(-2)
    corr = [float(((si ** (1.0 / N) * kernel(s[0], N) / N - kernel_inf(s[0])).abs() / kernel_inf(s[0])).max()) for N in Ns]
    # measured slope -2.00
    assert abs(_slope(Ns, corr) + 2) < 0.05, corr


# --------------------------------------------------------------------------- renormalized entropy


def test_entropy_renormalization_converges_with_the_derived_coefficient():
    # S_N - D_N = S_inf - ((d-1)/(2N)) log|det X| + O(N^-2)
    g = make_generator(12)
    s = torch.tensor([[2.0, 1.0, 0.3], [1.5, 1.4, 0.9]], dtype=DTYPE)
    X = matrix_with_spectrum(s, g)
    d = 3
    S_inf = entropy_inf(X)
    c = -(d - 1) / 2 * torch.log(s.prod(-1))
    Ns = [16, 32, 64, 128, 256, 512]
    raw = [float((entropy_renormalized(X, N) - S_inf).abs().max()) for N in Ns]
    assert abs(_slope(Ns, raw) + 1) < 0.05, raw  # measured -0.99 / -1.00
    rem = [float((N * (entropy_renormalized(X, N) - S_inf) - c).abs().max()) for N in Ns]
    assert abs(_slope(Ns, rem) + 1) < 0.05, rem  # the next term is O(N^-2): measured -1.00
    # the divergent part is the whole divergence: entropy(X, N) itself grows like (N-1) log c_d
    N = 64
    assert torch.allclose(entropy(X, N) - entropy_divergent_part(d, N), entropy_renormalized(X, N), atol=0, rtol=1e-14)
    assert entropy_renormalized(X, math.inf).equal(S_inf)


def test_entropy_inf_gradient_matches_autograd():
    g = make_generator(13)
    X = matrix_with_spectrum(torch.tensor([[2.0, 1.0, 0.3]], dtype=DTYPE), g).requires_grad_(True)
    (gr,) = torch.autograd.grad(entropy_inf(X).sum(), X)
    assert rel_err(entropy_inf_grad(X.detach()), gr) < 1e-13  # measured 2e-16


# --------------------------------------------------------------------------- drifts


def _case(seed, spectrum):
    g = make_generator(seed)
    X = matrix_with_spectrum(torch.tensor(spectrum, dtype=DTYPE), g)
    d = X.shape[-1]
    E = MatrixRegression(torch.randn(d, d, dtype=DTYPE, generator=g))
    return X, E


def test_rle_drift_inf_matches_autograd_divergence():
    X, E = _case(14, [[2.7, 0.87, 0.52], [2.5, 1.5, 0.22]])
    beta = torch.tensor([2.0, 0.5], dtype=DTYPE)
    # measured 1.1e-15: the Ito term of the depth-inf RLE is beta^{-1} X (div A_inf - 1/2 A grad log det A = X)
    assert rel_err(rle_drift_inf(X, E, beta), rle_drift_inf_autograd(X, E, beta)) < 1e-12


def test_finite_depth_drift_over_N_converges_at_rate_one():
    X, E = _case(15, [[2.0, 1.0, 0.3]])
    beta = 2.0
    lim = rle_drift_inf(X, E, beta)
    Ns = [16, 32, 64, 128, 256, 512, 1024]
    errs = [rel_err(rle_drift(X, E, N, beta) / N, lim) for N in Ns]
    # measured: 6.7e-2 at N = 16 to 1.1e-3 at N = 1024, slope -0.99
    assert abs(_slope(Ns, errs) + 1) < 0.05, errs
    # the entropic + Ito part alone (E = 0 direction): the same rate
    Z = WeightDecay(1e-300)
    ent = [rel_err(rle_drift(X, Z, N, beta) / N, rle_drift_inf(X, Z, beta)) for N in Ns]
    assert abs(_slope(Ns, ent) + 1) < 0.05, ent


# --------------------------------------------------------------------------- flows


def _run(scheme, X0, n):
    st = scheme.init_state(X=X0)
    for _ in range(n):
        st = scheme.step(st)
    return st.X


@pytest.mark.parametrize("beta", [None, 2.0])
def test_finite_depth_flows_converge_to_the_infinite_depth_flow(beta):
    X0, E = _case(16, [[2.0, 1.0, 0.3]])
    h, n = 0.02, 50  # T = 1; RK4 error ~1e-8 at this h, far below the 1/N differences (>= 5e-3)
    Xi = _run(InfiniteDepthFlow(E, h, beta=beta), X0, n)
    assert rel_err(InfiniteDepthFlow(E, h, beta=beta).velocity(X0), infinite_depth_velocity(X0, E, beta)) < 1e-15
    Ns = [16, 32, 64, 128]
    errs = [rel_err(_run(EndToEndFlow(E, h, N, time_scale="depth", beta=beta), X0, n), Xi) for N in Ns]
    # measured slopes -1.01 (beta None: 8.8e-2 .. 1.1e-2) and -0.99 (beta 2: 5.5e-2 .. 7.0e-3)
    assert abs(_slope(Ns, errs) + 1) < 0.05, errs


def test_infinite_depth_flow_dopri5_matches_rk4():
    X0, E = _case(17, [[2.0, 1.0, 0.3]])
    a = _run(InfiniteDepthFlow(E, 0.01, beta=1.0), X0, 100)
    b = _run(InfiniteDepthFlow(E, 0.5, beta=1.0, method="dopri5", rtol=1e-11, atol=1e-13), X0, 2)
    assert rel_err(a, b) < 1e-8  # RK4 global error O(h^4): measured 4.7e-7 at h = 0.05, 6.6e-10 at h = 0.01


def test_finite_depth_rle_converges_pathwise_to_the_infinite_depth_rle():
    # Same generator and step: the Euler-Maruyama chains share their Gaussian draws, so the
    # difference comes from the coefficients only, which differ by O(1/N). The draws live in the SVD
    # frame, so the coupling holds while both chains' SVDs pick the same frame branch (column signs,
    # order): at N = 16 it broke after ~15 steps here (error 2e-2 -> 0.17), hence 10 steps.
    X0, E = _case(18, [[2.0, 1.0, 0.5], [1.5, 1.2, 0.8]])
    h, n, beta = 0.01, 10, 4.0
    inf = InfiniteDepthLangevin(E, h, beta=beta, generator=make_generator(1))
    Xi = _run(inf, X0, n)
    Ns = [16, 32, 64, 128]
    errs = []
    for N in Ns:
        sch = RiemannianLangevin(E, h, N, beta, generator=make_generator(1), time_scale="depth", chart="end_to_end")
        errs.append(rel_err(_run(sch, X0, n), Xi))
    # measured slope -0.98 (errors 2.2e-2 .. 2.9e-3)
    assert abs(_slope(Ns, errs) + 1) < 0.05, errs


@pytest.mark.parametrize("d,B", [(2, 64), (3, 1024)])
def test_infinite_depth_langevin_small_kernels_match_lapack(d, B):
    # The step's SVD and det go through dlnsim.small_svd (closed form at d = 2, Jacobi at d = 3, B >= 1024).
    # X_new = U (Uf diag(s') Vf^T) V^T does not depend on which SVD of the updated matrix a kernel returns, so
    # from the same frame one step agrees with the LAPACK path to roundoff. Over several steps the carried
    # frames differ in column signs and the frame-drawn noise then differs pathwise (same law), so the
    # multi-step check is the noise-free limit (beta = 1e30: noise ~1e-16). Both SVDs are backward stable
    # (~1e-15); measured differences <= 1e-14 on |X| ~ 1; asserted 1e-11.
    from dlnsim import small_svd

    g = make_generator(5)
    X0 = torch.randn(B, d, d, dtype=DTYPE, generator=g)

    def run(lapack, beta, n):
        sch = InfiniteDepthLangevin(WeightDecay(1.0), 0.01, beta=beta, generator=make_generator(2))
        st = sch.init_state(X=X0)
        for _ in range(n):
            if lapack:
                with small_svd.lapack_only():
                    sch.step(st)
            else:
                sch.step(st)
        return st

    for beta, n in ((2.0, 1), (1e30, 20)):
        a, b = run(False, beta, n), run(True, beta, n)
        assert float((a.X - b.X).abs().max()) < 1e-11, (beta, float((a.X - b.X).abs().max()))
        assert torch.equal(a.stats["rank_crossings"], b.stats["rank_crossings"])


def test_infinite_depth_schemes_validate():
    E = WeightDecay(1.0)
    with pytest.raises(ValueError, match="beta"):
        InfiniteDepthLangevin(E, 0.1, beta=-1.0)
    with pytest.raises(ValueError, match="step_size"):
        InfiniteDepthFlow(E, 0.0)
    with pytest.raises(ValueError, match="square"):
        InfiniteDepthLangevin(E, 0.1, beta=1.0).init_state(X=torch.zeros(1, 2, 3, dtype=DTYPE))
    with pytest.raises(ValueError, match="time_scale 'depth'"):
        InfiniteDepthFlow(E, 0.1, time_scale="none")
    with pytest.raises(ValueError, match="depth must be inf"):
        InfiniteDepthFlow(E, 0.1, 8)
    with pytest.raises(ValueError, match="beta"):
        InfiniteDepthFreeEnergyFlow(E, 0.1)
    assert InfiniteDepthFlow(E, 0.1).depth == math.inf


# --------------------------------------------------------------------------- the depth-inf Saxe modes


def test_saxe_mode_inf_matches_the_flow_and_the_finite_depth_limit():
    from dlnsim.depth_limit import saxe_mode_inf, saxe_time_inf
    from dlnsim.theory import saxe_mode

    t = torch.linspace(0, 8, 41, dtype=DTYPE).unsqueeze(-1)
    lam = torch.tensor([3.0, 1.5, 0.5, 0.0], dtype=DTYPE)
    u0 = torch.tensor([0.3, 0.2, 0.1, 0.4], dtype=DTYPE)
    ui = saxe_mode_inf(t, lam, u0)
    # aligned start: the depth-inf flow is diagonal, each mode du/dt = u^2 (lambda - u); RK4 h = 0.01
    E = MatrixRegression(torch.diag(lam[:3]))
    st = InfiniteDepthFlow(E, 0.01).init_state(X=torch.diag(u0[:3]).unsqueeze(0))
    for _ in range(800):
        st = InfiniteDepthFlow(E, 0.01).step(st)
    assert float((torch.diagonal(st.X[0]) - ui[-1, :3]).abs().max()) < 1e-10  # measured 1.5e-12
    # finite-N Saxe modes in time t/N converge at rate 1/N (measured slope -0.99, N * err -> 4.45)
    Ns = [16, 32, 64, 128]
    errs = [float((saxe_mode(t / N, lam, u0, N) - ui).abs().max()) for N in Ns]
    assert abs(_slope(Ns, errs) + 1) < 0.05, errs
    # t(u(t)) = t, also from above the target (u0 > lambda; early, before u is within roundoff of
    # lambda, where t(u) ~ -log|lambda - u| / lambda^2 is ill-conditioned)
    assert abs(float(saxe_time_inf(saxe_mode_inf(0.05, 3.0, 5.0), 3.0, 5.0)) - 0.05) < 1e-10
    assert abs(float(saxe_time_inf(saxe_mode_inf(2.0, 3.0, 0.3), 3.0, 0.3)) - 2.0) < 1e-10
