"""dlnsim.reference (the Gibbs reference for any energy) against independent computations.

- its layer-chart density against dlnsim.gibbs.gibbs_log_density plus the Jacobian dX/dY by autograd;
- its d = 2 coordinates' volume element against autograd;
- quadrature against SingularValueLaw (weight decay; both the 2-D spectral path and the 4-D general
  path, forced by a non-invariant wrapper of the same energy), and against an mpmath quadrature at d = 1;
- for a non-invariant energy at d = 2: two quadrature resolutions, and the independent MCMC sampler;
- MCMC at d = 3 against SingularValueLaw, with power against the law without the entropy factor;
- split R-hat and ESS on AR(1) series with known autocorrelation time.
"""
import math

import pytest
import torch

from dlnsim.energies import CustomEnergy, MatrixCompletion, MatrixRegression, WeightDecay
from dlnsim.gibbs import SingularValueLaw, gibbs_log_density
from dlnsim.reference import gibbs_reference, layer_log_density
from dlnsim.stats import effective_sample_size, split_rhat

from conftest import DTYPE, make_generator

PHI2 = torch.tensor([[1.0, 0.3], [-0.2, 0.5]], dtype=DTYPE)


def SQ(X):
    return (X * X).sum((-2, -1))


def spectral(X):
    s = torch.linalg.svdvals(X)
    return torch.stack([s[:, 0], s[:, -1], (s * s).sum(-1), s.prod(-1)], -1)


def spectral_s(s):
    return torch.stack([s[:, 0], s[:, -1], (s * s).sum(-1), s.prod(-1)], -1)


def entries(X):
    return torch.cat([(torch.linalg.det(X) > 0).to(X.dtype)[:, None], X.flatten(1), SQ(X)[:, None]], -1)


@pytest.mark.parametrize("d,N", [(2, 2), (2, 3), (3, 2), (3, 4)])
def test_layer_density_is_gibbs_density_times_the_jacobian(d, N):
    # log q(Y) = log p(X(Y)) + log |det dX/dY| - d log N (the constant N^d is dropped by the module).
    g = make_generator(d * 10 + N)
    E = MatrixRegression(torch.randn(d, d, dtype=DTYPE, generator=g))
    Y = torch.randn(5, d, d, dtype=DTYPE, generator=g)
    lq, X = layer_log_density(Y, E, N, 1.7)
    for k in range(5):
        def chart(y):
            U, x, Vh = torch.linalg.svd(y)
            return (U * x.pow(N).unsqueeze(-2)) @ Vh

        J = torch.autograd.functional.jacobian(chart, Y[k]).reshape(d * d, d * d)
        expected = gibbs_log_density(X[k:k + 1], E, N, 1.7)[0] + torch.linalg.slogdet(J).logabsdet - d * math.log(N)
        # autograd through the SVD at distinct singular values: measured agreement 1e-13
        assert float(lq[k]) == pytest.approx(float(expected), abs=1e-9)


def test_d2_coordinates_volume_element():
    # Y = R(theta) diag(x1, e x2) R(phi)^T: |det d(Y entries)/d(x1, x2, theta, phi)| = x1^2 - x2^2.
    def Y(p, e):
        x1, x2, th, ph = p
        c, s = torch.cos(th), torch.sin(th)
        R1 = torch.stack([torch.stack([c, -s]), torch.stack([s, c])])
        c, s = torch.cos(ph), torch.sin(ph)
        R2 = torch.stack([torch.stack([c, -s]), torch.stack([s, c])])
        return (R1 @ torch.diag(torch.stack([x1, e * x2])) @ R2.T).reshape(-1)

    for p in ([1.3, 0.4, 0.3, 2.0], [0.9, 0.85, 4.0, 1.0]):
        for e in (1.0, -1.0):
            J = torch.autograd.functional.jacobian(lambda q: Y(q, e), torch.tensor(p, dtype=DTYPE))
            assert float(torch.linalg.det(J).abs()) == pytest.approx(p[0] ** 2 - p[1] ** 2, rel=1e-12)


@pytest.mark.parametrize("d,N", [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3), (2, 5)])
def test_quadrature_against_singular_value_law(d, N):
    beta, alpha = 1.3, 0.8
    law = SingularValueLaw(N, beta, alpha, d)
    truth = law.moment(spectral_s)
    ref = gibbs_reference(WeightDecay(alpha), d, N, beta)
    # Two independent spectrally convergent quadratures: measured agreement 1e-13.
    assert torch.allclose(ref.expect(spectral), truth, rtol=1e-9, atol=0)
    # det X takes both signs equally; the mean of X vanishes (exact by symmetry of the nodes).
    assert float(ref.expect(lambda X: (torch.linalg.det(X) > 0).to(X.dtype))) == pytest.approx(0.5, abs=1e-12)
    if d == 2 and N in (2, 3):
        # The general 4-D path (energy not flagged invariant): same law, measured agreement 1e-11.
        general = gibbs_reference(CustomEnergy(lambda X: 0.5 * alpha * SQ(X)), d, N, beta, n_quad=48, n_angle=16)
        assert torch.allclose(general.expect(spectral), truth, rtol=1e-8, atol=0)


@pytest.mark.parametrize("N", [2, 3])
def test_d1_non_invariant_against_mpmath(N):
    mpmath = pytest.importorskip("mpmath")  # dev extra
    # p(x) ∝ exp(-beta (x - 1/2)^2 / 2) |x|^{-(N-1)/N} on R, written here without dlnsim and integrated by
    # mpmath after x = +-y^N (which removes the singularity at 0: tanh-sinh on the raw form is only
    # good to ~1e-7 at dps 15). The issue-10 numbers: P(x > 0) = 0.669 (N = 2), 0.625 (N = 3).
    mpmath.mp.dps = 20
    beta = 2.0
    half = lambda f, sg: mpmath.quad(lambda y: f(sg * y**N) * mpmath.exp(-beta * (sg * y**N - 0.5) ** 2 / 2), [0, 1, 2, 4])  # noqa: E731
    moment = lambda f: half(f, 1) + half(f, -1)  # noqa: E731
    Z = moment(lambda x: 1)
    exact = [half(lambda x: 1, 1) / Z, moment(lambda x: x) / Z, moment(lambda x: x * x) / Z]
    ref = gibbs_reference(MatrixRegression(torch.tensor([[0.5]], dtype=DTYPE)), 1, N, beta)
    got = ref.expect(lambda X: torch.stack([(X[:, 0, 0] > 0).to(X.dtype), X[:, 0, 0], X[:, 0, 0] ** 2], -1))
    assert torch.allclose(got, torch.tensor([float(v) for v in exact], dtype=DTYPE), rtol=1e-9, atol=1e-10)
    assert float(got[0]) == pytest.approx({2: 0.669, 3: 0.625}[N], abs=5e-4)
    # The restricted law is the conditional law: E[x | x > 0] from the component reference.
    pos = gibbs_reference(MatrixRegression(torch.tensor([[0.5]], dtype=DTYPE)), 1, N, beta, component=1)
    cond = half(lambda x: x, 1) / half(lambda x: 1, 1)
    assert float(pos.expect(lambda X: X[:, 0, 0])) == pytest.approx(float(cond), rel=1e-9)


@pytest.fixture(scope="module")
def quad_d2():
    return {N: gibbs_reference(MatrixRegression(PHI2), 2, N, 2.0, n_quad=48, n_angle=16, error_estimate=True) for N in (2, 3)}


@pytest.mark.parametrize("N", [2, 3])
def test_d2_non_invariant_quadrature_converges_and_mcmc_agrees(N, quad_d2):
    ref = quad_d2[N]
    # Quadrature error estimate = |rule - rule at 3/4 of the nodes| (36 x 23 chamber nodes, 12 angles), an
    # upper bound for this rule's error under geometric convergence: measured 7e-6 here (at the default
    # 64 x 24 resolution: 6e-10), far below the Monte-Carlo errors it is compared with.
    assert float(ref.stderr(entries).max()) < 1e-4
    truth = ref.expect(entries)
    # Components restrict correctly: P(det>0) of the full law is the mass of the + component.
    plus = gibbs_reference(MatrixRegression(PHI2), 2, N, 2.0, component=1, n_quad=48, n_angle=16)
    assert float(plus.expect(lambda X: (torch.linalg.det(X) > 0).to(X.dtype))) == pytest.approx(1.0, abs=1e-12)
    # The independent sampler (random-walk Metropolis in the layer chart): |z| <= 4, R-hat < 1.02.
    mc = gibbs_reference(MatrixRegression(PHI2), 2, N, 2.0, method="mcmc", chains=32, steps=1500, burn=500,
                         generator=make_generator(70 + N))
    z = (mc.expect(entries) - truth) / mc.stderr(entries)
    assert bool((z.abs() <= 4).all()), z.tolist()
    assert float(mc.rhat(entries).max()) < 1.02
    assert 0.15 < mc.diagnostics["acceptance"] < 0.5


def test_mcmc_d3_against_singular_value_law_with_power():
    beta, alpha, N = 1.0, 1.0, 2
    mc = gibbs_reference(WeightDecay(alpha), 3, N, beta, chains=32, steps=1500, burn=500, generator=make_generator(3))
    assert mc.method == "mcmc"
    law = SingularValueLaw(N, beta, alpha, 3)
    se = mc.stderr(spectral)
    z = (mc.expect(spectral) - law.moment(spectral_s)) / se
    assert bool((z.abs() <= 4).all()), z.tolist()
    assert float(mc.rhat(spectral).max()) < 1.02 and float(mc.ess(spectral).min()) > 500
    # Power: the law without the entropy factor e^S is rejected (measured |z| ~ 20).
    wrong = SingularValueLaw(N, beta, alpha, 3, entropy=False)
    z_wrong = (mc.expect(spectral) - wrong.moment(spectral_s)) / se
    assert float(z_wrong.abs().max()) > 8, z_wrong.tolist()


def test_rhat_and_ess_on_ar1():
    # AR(1) with coefficient a: integrated autocorrelation time (1 + a)/(1 - a) = 9 for a = 0.8.
    g = make_generator(5)
    T, C, a = 4000, 8, 0.8
    x = torch.zeros(T, C, dtype=DTYPE)
    x[0] = torch.randn(C, generator=g, dtype=DTYPE) / math.sqrt(1 - a * a)
    noise = torch.randn(T, C, generator=g, dtype=DTYPE)
    for t in range(1, T):
        x[t] = a * x[t - 1] + noise[t]
    ess = float(effective_sample_size(x))
    # The ESS estimate itself fluctuates by ~ sqrt(2 tau / T) ~ 10% per chain, less over 8 chains.
    assert ess == pytest.approx(C * T / 9, rel=0.15)
    assert float(split_rhat(x)) < 1.01
    shifted = x + torch.arange(C, dtype=DTYPE)  # chains that disagree
    assert float(split_rhat(shifted)) > 1.5


def test_errors():
    with pytest.raises(ValueError, match="not normalisable"):
        gibbs_reference(MatrixCompletion(torch.eye(2, dtype=DTYPE), torch.tensor([[1.0, 0.0], [1.0, 1.0]])), 2, 2, 1.0)
    with pytest.raises(ValueError, match="component"):
        gibbs_reference(WeightDecay(1.0), 2, 2, 1.0, component=0)
    with pytest.raises(ValueError, match="quadrature covers"):
        gibbs_reference(WeightDecay(1.0), 3, 2, 1.0, method="quadrature")
    with pytest.raises(ValueError, match="shape"):
        gibbs_reference(MatrixRegression(PHI2), 3, 2, 1.0)
    with pytest.raises(ValueError, match="one positive number"):
        gibbs_reference(WeightDecay(1.0), 2, 2, [1.0, 2.0])


def test_compare_reference_or_reason_and_richardson():
    from dlnsim.reference import HEADLINE, compare, reference_or_reason
    from dlnsim.stats import richardson

    ref, why = reference_or_reason(MatrixRegression(PHI2), 2, 2, 2, 2.0, n_quad=32, n_angle=12)
    assert ref is not None and why == ""
    # Draws of the law itself: every headline z-score is a standard normal (|z| <= 4).
    X = ref.sample(4000, make_generator(9)).reshape(40, 100, 2, 2)
    rows = compare(X, ref)
    assert [r["observable"] for r in rows] == list(HEADLINE)
    assert all(abs(r["z"]) <= 4 for r in rows), rows
    # Shifted samples are caught.
    assert max(abs(r["z"]) for r in compare(1.1 * X, ref)) > 8
    for args, msg in (((2, 3), "square"), ((2, 2, 2, [1.0, 2.0]), "several beta")):
        a = args if len(args) == 4 else args + (2, 1.0)
        none, why = reference_or_reason(WeightDecay(1.0), *a)
        assert none is None and msg in why
    none, why = reference_or_reason(MatrixCompletion(torch.eye(2, dtype=DTYPE), torch.tensor([[1.0, 0.0], [1.0, 1.0]])), 2, 2, 2, 1.0)
    assert none is None and "not normalisable" in why
    # Richardson, first order: m(h) = m0 + c h exactly gives m0 back; errors combine as (2 se_2, se_1).
    m0, se0, diff = richardson(1.0 + 0.4, 0.1, 1.0 + 0.2, 0.1)
    assert m0 == pytest.approx(1.0) and se0 == pytest.approx(math.sqrt(0.04 + 0.01)) and diff == pytest.approx(-0.2)
    m0, _, _ = richardson(1.0 + 0.4, 0.0, 1.0 + 0.1, 0.0, order=2)
    assert m0 == pytest.approx(1.0)


def test_marginal_densities_and_histograms():
    import numpy as np

    u = torch.tensor([0.3, 0.7, 1.0, 1.3], dtype=DTYPE)
    for d, N in ((1, 2), (2, 3)):
        ref = gibbs_reference(WeightDecay(1.0), d, N, 1.3)
        law = SingularValueLaw(N, 1.3, 1.0, d)
        for which, pdf in (("max", law.pdf_max), ("min", law.pdf_min)):
            # slice quadrature vs SingularValueLaw's face integrals: measured 2e-8 (the latter's clamp at 0)
            assert torch.allclose(ref.pdf_layer(which, u), pdf(u**N) * N * u ** (N - 1), rtol=1e-6, atol=1e-9)
    # Non-invariant energy: the marginals integrate to 1 and give the quadrature's own E s_max, E s_min (1e-12).
    ref = gibbs_reference(MatrixRegression(PHI2), 2, 2, 2.0, n_quad=48, n_angle=16)
    t, w = np.polynomial.legendre.leggauss(200)
    R = ref.diagnostics["radius"]
    uu, ww = torch.tensor((t + 1) / 2 * R), torch.tensor(w / 2 * R)
    for k, which in ((0, "max"), (-1, "min")):
        p = ref.pdf_layer(which, uu)
        assert float((p * ww).sum()) == pytest.approx(1.0, abs=1e-10)
        assert float((p * ww * uu**2).sum()) == pytest.approx(float(ref.expect(lambda X: torch.linalg.svdvals(X)[:, k])), rel=1e-9)
    # mcmc: no slice density, a histogram with a band; the band covers the quadrature density (|z| <= 4 per bin).
    mc = gibbs_reference(MatrixRegression(PHI2), 2, 2, 2.0, method="mcmc", chains=32, steps=1500, burn=500,
                         generator=make_generator(8))
    assert mc.pdf_layer("max", uu) is None
    edges = torch.linspace(0.6, 1.5, 10, dtype=DTYPE)
    dens, se = mc.histogram(lambda X: torch.linalg.svdvals(X)[:, 0].sqrt(), edges)
    exact, _ = ref.histogram(lambda X: torch.linalg.svdvals(X)[:, 0].sqrt(), torch.linspace(0.6, 1.5, 2, dtype=DTYPE))
    mids = 0.5 * (edges[1:] + edges[:-1])
    z = (dens - ref.pdf_layer("max", mids)) / se
    # bin average vs midpoint density: curvature error ~ width^2 f''/24 ~ 1e-3, far below se ~ 3e-2
    assert bool((z.abs() <= 4).all()), z.tolist()
    assert float(exact.sum() * 0.9) == pytest.approx(float((ref.pdf_layer("max", mids) * 0.1).sum()), rel=2e-2)
