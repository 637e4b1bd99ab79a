"""Tests of dlnsim.stats (KS test, standard errors) and dlnsim.gibbs (the stationary law).

The law is checked against computations that do not share its code: exact Gaussian results at
N = 1, the virial identity E||X||^2 = [d(d-1)/2 + d(d+1)/(2N)] / (beta alpha) (homogeneity of the
density, any N), incomplete-gamma closed forms at d = 1, an mpmath quadrature of the explicit
N = 2, d = 2 density, and a random-walk Metropolis chain on X in R^{d x d} driven by
gibbs_log_density (Lebesgue measure), which checks the Jacobian prod |s_i^2 - s_j^2|.
"""
import math

import pytest
import torch

from dlnsim import WeightDecay
from dlnsim.gibbs import SingularValueLaw, gibbs_log_density, singular_value_log_density
from dlnsim.stats import (
    batch_means_stderr,
    independent_chain_stderr,
    kolmogorov_sf,
    ks_test,
    mean_and_stderr,
    zscore,
)

mpmath = pytest.importorskip("mpmath", reason="mpmath is a test dependency: pip install -e '.[dev]'")

torch.set_default_dtype(torch.float64)

S_MAX = lambda s: s[..., 0]  # noqa: E731
S_MIN = lambda s: s[..., -1]  # noqa: E731
SQ = lambda s: (s * s).sum(-1)  # noqa: E731
DET = lambda s: s.prod(-1)  # noqa: E731
MOMENTS = {"s_max": S_MAX, "s_min": S_MIN, "norm2": SQ, "absdet": DET}


# ---------------------------------------------------------------------------------------------
# stats
# ---------------------------------------------------------------------------------------------


def _mtw_cdf(n: int, d: float) -> float:
    """Exact P(D_n < d) for the one-sample KS statistic (Marsaglia, Tsang & Wang 2003), in mpmath."""
    mpmath.mp.dps = 40
    k = int(n * d) + 1
    m = 2 * k - 1
    h = mpmath.mpf(k) - n * mpmath.mpf(d)
    H = mpmath.matrix(m, m)
    for i in range(m):
        for j in range(m):
            H[i, j] = 1 if i - j + 1 >= 0 else 0
    for i in range(m):
        H[i, 0] -= h ** (i + 1)
        H[m - 1, i] -= h ** (m - i)
    H[m - 1, 0] += (2 * h - 1) ** m if 2 * h - 1 > 0 else 0
    for i in range(m):
        for j in range(m):
            if i - j + 1 > 0:
                H[i, j] /= mpmath.factorial(i - j + 1)
    Q = H**n
    s = Q[k - 1, k - 1]
    for i in range(1, n + 1):
        s = s * i / n
    return float(s)


def test_kolmogorov_sf_known_quantiles_and_branch_agreement():
    # Tabulated quantiles of the Kolmogorov distribution: P(K > 1.3581) = 0.05, P(K > 1.6276) = 0.01.
    assert kolmogorov_sf(1.35810) == pytest.approx(0.05, abs=2e-5)
    assert kolmogorov_sf(1.62762) == pytest.approx(0.01, abs=2e-6)
    assert kolmogorov_sf(0.0) == 1.0 and 0.0 <= kolmogorov_sf(10.0) < 1e-80
    # The two theta-function series are different identities for the same function: they must agree
    # to roundoff where both converge (they are switched at t = 1).
    for t in (0.6, 0.8, 1.0, 1.2, 1.5):
        a = 2 * sum((-1) ** (k - 1) * math.exp(-2 * k * k * t * t) for k in range(1, 60))
        b = 1 - math.sqrt(2 * math.pi) / t * sum(math.exp(-((2 * k - 1) ** 2) * math.pi**2 / (8 * t * t)) for k in range(1, 60))
        assert a == pytest.approx(b, abs=1e-14)
        assert kolmogorov_sf(t) == pytest.approx(a, abs=1e-14)


@pytest.mark.parametrize("n", [20, 100])
def test_ks_pvalue_against_exact_finite_n_distribution(n):
    # Stephens' corrected asymptotic p-value against the exact distribution: we measured relative
    # errors <= 3% for n >= 20 and p in [1e-3, 0.5]; 6% leaves room without hiding a wrong formula
    # (dropping the 0.12 + 0.11/sqrt(n) correction gives ~20% at n = 20).
    for D in {20: (0.18, 0.25, 0.30, 0.36), 100: (0.08, 0.11, 0.14, 0.17)}[n]:
        exact = 1.0 - _mtw_cdf(n, D)
        x = torch.linspace(0.5 / n, 1 - 0.5 / n, n)
        # Build samples whose empirical CDF has sup-distance exactly D from U(0,1): shift by D - 1/(2n).
        samples = (x + (D - 0.5 / n)).clamp(max=1 - 1e-12)
        D_hat, p = ks_test(samples, lambda t: t.clamp(0, 1))
        assert D_hat == pytest.approx(D, abs=1e-12)
        assert p == pytest.approx(exact, rel=0.06)


def test_ks_pvalues_of_true_cdf_are_uniform_and_wrong_cdf_rejects():
    g = torch.Generator().manual_seed(11)
    reps, n = 400, 200
    p = torch.tensor([ks_test(torch.rand(n, generator=g), lambda t: t)[1] for _ in range(reps)])
    # Under H0 the p-values are ~U(0,1) (slightly discrete at finite n): their own KS test passes,
    # and the rejection rate at 5% is within 4 binomial standard errors of 0.05.
    assert ks_test(p, lambda t: t)[1] > 1e-3
    rate = float((p < 0.05).double().mean())
    assert abs(rate - 0.05) < 4 * math.sqrt(0.05 * 0.95 / reps)
    # Power: N(0.15, 1) samples against the N(0, 1) CDF (D ~ 0.06 >> 1.95/sqrt(2000) = 0.044).
    z = torch.randn(2000, generator=g) + 0.15
    D, pw = ks_test(z, lambda t: 0.5 * (1 + torch.erf(t / math.sqrt(2))))
    assert pw < 1e-3


def test_ks_rejects_bad_input():
    with pytest.raises(ValueError, match="non-finite"):
        ks_test(torch.tensor([0.1, float("nan")]), lambda t: t)
    with pytest.raises(ValueError, match="empty"):
        ks_test(torch.tensor([]), lambda t: t)


def test_independent_chain_and_batch_means_stderr_on_ar1():
    # AR(1) x_t = phi x_{t-1} + sqrt(1 - phi^2) e_t (stationary N(0,1)): the variance of the mean of
    # T steps is (1/T)(1+phi)/(1-phi) - 2 phi (1 - phi^T) / (T^2 (1-phi)^2).
    g = torch.Generator().manual_seed(5)
    phi, T, C = 0.8, 400, 400
    x = torch.randn(C, generator=g)
    xs = []
    for _ in range(T):
        x = phi * x + math.sqrt(1 - phi**2) * torch.randn(C, generator=g)
        xs.append(x)
    v = torch.stack(xs)  # (T, C)
    var_mean = (1 + phi) / (1 - phi) / T - 2 * phi * (1 - phi**T) / (T**2 * (1 - phi) ** 2)
    truth = math.sqrt(var_mean / C)
    se = float(independent_chain_stderr(v))
    # The estimate is a sample std over C chains: relative error ~ 1/sqrt(2C) = 3.5%; allow 4x.
    assert se == pytest.approx(truth, rel=4 / math.sqrt(2 * C))
    # Ignoring the autocorrelation (treating all T*C values as independent) is 3x too small.
    assert float(v.std()) / math.sqrt(T * C) < 0.5 * truth
    mean, se2 = mean_and_stderr(v)
    assert float(se2) == se and abs(float(mean)) < 4 * truth
    # Batch means on one long chain (batches of 1000 >> autocorrelation time 9): relative error
    # ~ 1/sqrt(2 * 20) = 16% from 20 batches; allow 3x.
    long = []
    y = torch.zeros(())
    for _ in range(20000):
        y = phi * y + math.sqrt(1 - phi**2) * torch.randn((), generator=g)
        long.append(y)
    se_bm = float(batch_means_stderr(torch.stack(long), 20))
    assert se_bm == pytest.approx(math.sqrt((1 + phi) / (1 - phi) / 20000), rel=0.5)
    assert zscore(1.5, 1.0, 0.25) == 2.0
    with pytest.raises(ValueError, match="C >= 2"):
        independent_chain_stderr(torch.zeros(3, 1))


# ---------------------------------------------------------------------------------------------
# gibbs: exact checks of the quadrature law
# ---------------------------------------------------------------------------------------------


def _chi_mean(k: int) -> float:
    return math.sqrt(2) * math.exp(math.lgamma((k + 1) / 2) - math.lgamma(k / 2))


@pytest.mark.parametrize("d", [1, 2, 3])
def test_depth_one_law_is_gaussian(d):
    # N = 1: X has iid N(0, 1/c) entries, c = beta alpha. Exact: E||X||^2 = d^2/c;
    # |det X| = prod_k chi_k / c^{d/2} (Bartlett); d = 2: X = r1 R(t1) + r2 R(t2) diag(1,-1) with
    # r1, r2 iid Rayleigh(1/sqrt(2c)), s_max = r1 + r2, s_min = |r1 - r2|.
    beta, alpha = 2.0, 0.7
    c = beta * alpha
    law = SingularValueLaw(1, beta, alpha, d)
    # Tolerance: Gauss-Legendre on a smooth integrand; measured errors ~1e-14.
    assert float(law.moment(SQ)) == pytest.approx(d * d / c, rel=1e-11)
    det = math.prod(_chi_mean(k) for k in range(1, d + 1)) / c ** (d / 2)
    assert float(law.moment(DET)) == pytest.approx(det, rel=1e-11)
    if d == 1:
        assert float(law.moment(S_MAX)) == pytest.approx(math.sqrt(2 / (math.pi * c)), rel=1e-11)
    if d == 2:
        assert float(law.moment(S_MAX)) == pytest.approx(math.sqrt(math.pi / c), rel=1e-11)
        assert float(law.moment(S_MIN)) == pytest.approx(math.sqrt(math.pi / c) * (1 - 1 / math.sqrt(2)), rel=1e-11)


@pytest.mark.parametrize("d,N", [(d, N) for d in (1, 2, 3) for N in (1, 2, 3, 5) if (d, N) != (3, 5)])
def test_virial_identity_and_two_resolutions(d, N):
    # p(s) = e^{-c|s|^2/2} h(s), h homogeneous of degree k  =>  c E|s|^2 = d + k. With the entropy
    # k = d(d-1) - (N-1) d(d+1)/(2N), so E||X||^2 = [d(d-1)/2 + d(d+1)/(2N)]/c (= dim M/(N c):
    # equipartition on the balanced manifold); without it (entropy=False) k = d(d-N)/N, E||X||^2 = d^2/(N c).
    beta, alpha = 1.3, 0.9
    c = beta * alpha
    law = SingularValueLaw(N, beta, alpha, d)
    assert float(law.moment(SQ)) == pytest.approx((d * (d - 1) / 2 + d * (d + 1) / (2 * N)) / c, rel=1e-10)
    wrong = SingularValueLaw(N, beta, alpha, d, entropy=False)
    assert float(wrong.moment(SQ)) == pytest.approx(d * d / (N * c), rel=1e-10)
    fine = SingularValueLaw(N, beta, alpha, d, n_quad=int(1.5 * law.n_quad))
    # Spectral convergence: two resolutions agree to near roundoff (measured <= 3e-12).
    assert law.log_normaliser == pytest.approx(fine.log_normaliser, abs=1e-9)
    for f in MOMENTS.values():
        assert float(law.moment(f)) == pytest.approx(float(fine.moment(f)), rel=1e-9)


def test_log_space_integrand_matches_the_public_density_and_deep_networks():
    # The quadrature integrand is written in log x (no underflow of s = x^N at large depth); it is
    # the public singular_value_log_density plus the Jacobian log prod N x^{N-1}.
    g = torch.Generator().manual_seed(4)
    x = torch.rand(50, 3, generator=g).sort(dim=-1, descending=True).values + 0.05
    for N in (1, 2, 5):
        for entropy, volume in ((True, "metric"), (False, "metric"), (True, "lebesgue"), (False, "lebesgue")):
            law = SingularValueLaw(N, 1.5, 0.8, 3, entropy, volume=volume, n_quad=4)
            ref = law.log_density(x**N) + (math.log(N) + (N - 1) * torch.log(x)).sum(-1)
            assert torch.allclose(law._log_integrand_x(x), ref, atol=1e-11)
    # Depth 100 (x^N underflows below x ~ 1e-3): the virial identity still holds to ~1e-12.
    for d in (1, 2):
        law = SingularValueLaw(100, 1.0, 1.0, d)
        assert float(law.moment(SQ)) == pytest.approx(d * (d - 1) / 2 + d * (d + 1) / 200, rel=1e-10)


@pytest.mark.parametrize("N", [2, 3])
def test_d1_closed_forms(N):
    # d = 1: p(s) ∝ exp(-c s^2/2) s^{-(N-1)/N}: E s^k = (2/c)^{k/2} Gamma((k + 1/N)/2) / Gamma(1/(2N)),
    # P(s <= x) = P(1/(2N), c x^2/2) (regularised lower incomplete gamma).
    beta, alpha = 2.0, 0.7
    c = beta * alpha
    law = SingularValueLaw(N, beta, alpha, 1)
    for k in (1, 2, 3):
        ek = (2 / c) ** (k / 2) * math.gamma((k + 1 / N) / 2) / math.gamma(1 / (2 * N))
        assert float(law.moment(lambda s: s[..., 0] ** k)) == pytest.approx(ek, rel=1e-11)
    xs = torch.tensor([0.001, 0.05, 0.3, 0.8, 1.5, 3.0])
    exact = torch.tensor([float(mpmath.gammainc(1 / (2 * N), 0, c * x * x / 2, regularized=True)) for x in xs.tolist()])
    # CDF tables: cubic Hermite on 200 panels, measured error ~1e-9.
    assert torch.allclose(law.cdf_max(xs), exact, rtol=0, atol=1e-8)
    assert torch.allclose(law.cdf_min(xs), exact, rtol=0, atol=1e-8)
    pdf = (2 * (c / 2) ** (1 / (2 * N)) / math.gamma(1 / (2 * N))) * xs ** (-(N - 1) / N) * torch.exp(-c * xs**2 / 2)
    assert torch.allclose(law.pdf_max(xs), pdf, rtol=1e-9)


def test_d2_n2_against_independent_mpmath_quadrature():
    # N = 2, d = 2: K_12 = s1 + s2, so p(s) ∝ e^{-(s1^2+s2^2)/2} (s1 s2)^{-1/2} (s1 - s2) sqrt(s1 + s2),
    # written here without any dlnsim code and integrated by mpmath (tanh-sinh handles s^{-1/2}).
    mpmath.mp.dps = 12
    p = lambda s1, s2: mpmath.exp(-(s1**2 + s2**2) / 2) * (s1 * s2) ** -0.5 * (s1 - s2) * mpmath.sqrt(s1 + s2)  # noqa: E731
    inner = lambda f: lambda s1: mpmath.quad(lambda s2: f(s1, s2), [0, s1])  # noqa: E731
    Z = mpmath.quad(inner(p), [0, 2, 5, 12])
    law = SingularValueLaw(2, 1.0, 1.0, 2)
    Es2 = mpmath.quad(inner(lambda a, b: b * p(a, b)), [0, 2, 5, 12]) / Z
    assert float(law.moment(S_MIN)) == pytest.approx(float(Es2), rel=1e-9)
    # log_normaliser is the log of the same integral (the density is exactly singular_value_log_density).
    assert law.log_normaliser == pytest.approx(float(mpmath.log(Z)), abs=1e-9)
    a = 1.0
    F_max = mpmath.quad(inner(p), [0, a]) / Z
    assert float(law.cdf_max(torch.tensor(a))) == pytest.approx(float(F_max), abs=1e-6)
    # P(s_min <= a) = P(s_min <= a < s_max) + P(s_max <= a); the first term is a product region.
    F_min = mpmath.quad(lambda s1: mpmath.quad(lambda s2: p(s1, s2), [0, a]), [a, 2, 5, 12]) / Z + F_max
    assert float(law.cdf_min(torch.tensor(a))) == pytest.approx(float(F_min), abs=1e-6)
    s = torch.tensor([[1.3, 0.4]])
    assert float(law.pdf(s)) == pytest.approx(float(p(1.3, 0.4) / Z), rel=1e-9)


# tol: measured deviations 1e-12 (d = 2, default resolution) and 7e-9 (d = 3, n_quad = 24).
@pytest.mark.parametrize("d,N,n_quad,tol", [(2, 3, None, 1e-9), (3, 2, 24, 1e-7)])
def test_marginals_are_consistent_with_the_joint_law(d, N, n_quad, tol):
    law = SingularValueLaw(N, 1.0, 1.0, d, n_quad=n_quad, n_table=100)
    # The marginal densities integrate to 1 and reproduce E s_max, E s_min of the joint quadrature
    # (independent code paths: (d-1)-dim face integrals vs the d-dim chamber rule), on 20 panels x 20
    # Gauss-Legendre points in u = s^{1/N}. (d = 3 at reduced resolution to keep the test fast.)
    import numpy as np

    nodes, weights = np.polynomial.legendre.leggauss(20)
    edges = torch.linspace(0, law.x_cut, 21)
    u = ((edges[:-1, None] + edges[1:, None]) / 2 + (edges[1] - edges[0]) / 2 * torch.tensor(nodes)).reshape(-1)
    w = ((edges[1] - edges[0]) / 2 * torch.tensor(weights)).repeat(20)
    s = u**N
    jac = N * u ** (N - 1)
    for pdf, f in ((law.pdf_max, S_MAX), (law.pdf_min, S_MIN)):
        dens = pdf(s) * jac
        assert float((w * dens).sum()) == pytest.approx(1.0, abs=tol)
        assert float((w * dens * s).sum()) == pytest.approx(float(law.moment(f)), rel=10 * tol)
    x = torch.linspace(0, law.s_cut, 41)
    for cdf in (law.cdf_max, law.cdf_min):
        F = cdf(x)
        # Monotone up to the interpolation error in the far tail, 0 at 0, 1 at the truncation point.
        assert bool((F[1:] >= F[:-1] - 1e-12).all()) and float(F[0]) == 0.0
        assert float(F[-1]) == pytest.approx(1.0, abs=tol)


def test_gibbs_density_matches_singular_value_density_up_to_jacobian():
    g = torch.Generator().manual_seed(2)
    X = torch.randn(6, 3, 3, generator=g)
    s = torch.linalg.svdvals(X)
    E = WeightDecay(0.8)
    for N in (1, 2, 4):
        for entropy in (True, False):
            for volume in ("metric", "lebesgue"):
                lx = gibbs_log_density(X, E, N, 1.7, entropy=entropy, volume=volume)
                ls = singular_value_log_density(s, N, 1.7, lambda t: 0.4 * (t * t).sum(-1), entropy=entropy, volume=volume)
                vdm = sum(torch.log((s[:, i] ** 2 - s[:, j] ** 2).abs()) for i in range(3) for j in range(i + 1, 3))
                assert torch.allclose(ls - lx, vdm, atol=1e-12)
    # Lebesgue without entropy is the Gaussian density; metric and lebesgue coincide at N = 1.
    lg = gibbs_log_density(X, E, 3, 2.0, entropy=False, volume="lebesgue")
    # exact identities: roundoff only
    assert torch.allclose(lg, -2.0 * 0.4 * (X * X).sum((-2, -1)), rtol=1e-13, atol=1e-13)
    assert torch.allclose(gibbs_log_density(X, E, 1, 2.0), lg, rtol=1e-13, atol=1e-13)
    # det X takes both signs with the same density.
    Xf = X.clone()
    Xf[:, 0] *= -1
    assert torch.allclose(gibbs_log_density(Xf, E, 3, 2.0), gibbs_log_density(X, E, 3, 2.0), rtol=1e-13, atol=1e-13)
    # beta as a batch tensor
    b = torch.linspace(0.5, 2.0, 6)
    assert torch.allclose(gibbs_log_density(X, E, 2, b)[2], gibbs_log_density(X[2:3], E, 2, float(b[2]))[0],
                          rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("N", [2, 3])
def test_random_walk_metropolis_on_X_samples_the_singular_value_law(N):
    # Independent check of the Jacobian dX = prod|s_i^2 - s_j^2| ds dU dV: Metropolis on X in R^{2x2}
    # with target gibbs_log_density (Lebesgue), 4000 independent chains, 1000 steps (autocorrelation
    # time ~ 30-50 steps, so the final states are draws from the law up to negligible burn-in error).
    # One final state per chain: iid samples, standard error = sample std / sqrt(C).
    d, C, steps, sigma = 2, 4000, 1000, 0.6
    E = WeightDecay(1.0)
    g = torch.Generator().manual_seed(100 + N)
    X = 0.8 * torch.randn(C, d, d, generator=g)
    lp = gibbs_log_density(X, E, N, 1.0)
    for _ in range(steps):
        Y = X + sigma * torch.randn(X.shape, generator=g)
        lq = gibbs_log_density(Y, E, N, 1.0)
        acc = torch.rand(C, generator=g).log() < lq - lp
        X = torch.where(acc[:, None, None], Y, X)
        lp = torch.where(acc, lq, lp)
    s = torch.linalg.svdvals(X)
    law = SingularValueLaw(N, 1.0, 1.0, d)
    wrong = SingularValueLaw(N, 1.0, 1.0, d, entropy=False)
    z_wrong = []
    for f in MOMENTS.values():
        v = f(s)
        se = float(v.std()) / math.sqrt(C)
        assert abs(zscore(float(v.mean()), float(law.moment(f)), se)) < 4
        z_wrong.append(abs(zscore(float(v.mean()), float(wrong.moment(f)), se)))
    assert ks_test(s[:, 0], law.cdf_max)[1] > 1e-3
    assert ks_test(s[:, 1], law.cdf_min)[1] > 1e-3
    # Power: the law without the entropy factor is rejected by the same data (measured |z| > 9).
    assert max(z_wrong) > 4
    assert ks_test(s[:, 0], wrong.cdf_max)[1] < 1e-3


def test_law_validation():
    with pytest.raises(ValueError, match="d must be"):
        SingularValueLaw(2, 1.0, 1.0, 4)
    with pytest.raises(ValueError, match="beta"):
        SingularValueLaw(2, -1.0, 1.0, 2)
    with pytest.raises(ValueError, match="volume"):
        SingularValueLaw(2, 1.0, 1.0, 2, volume="haar")
    with pytest.raises(ValueError, match="beta must be positive"):
        gibbs_log_density(torch.eye(2)[None], WeightDecay(1.0), 2, 0.0)
