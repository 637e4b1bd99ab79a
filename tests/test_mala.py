"""Tests of the Metropolis-adjusted RLE (dlnsim.dynamics.mala.MetropolisRLE).

1. The pieces of the acceptance ratio against brute-force computations: the layer chart's Jacobian
   log det against autograd + slogdet; the target density in Y against dlnsim.gibbs's density in X
   plus that log det; S against the entropy's closed form and the orbit Gram determinant; the
   proposal density against the dense d^2 x d^2 Gaussian whose covariance is the pullback
   (2 hc/beta) J^{-1} A J^{-T} of the dense matrix of A_{N,X} (so the diffusion's log det, constant
   -d log N in the chart, is checked too).
2. Detailed balance: the step's log ratio equals log pi(Y') q(Y|Y') - log pi(Y) q(Y'|Y) computed
   densely, for a non-invariant energy, beta per chain, both det signs.
3. Stationary law at a large step (h = 0.2, where the Euler RLE is visibly biased) against
   SingularValueLaw, d = 2, N = 2, 3; the Euler RLE at the same h fails the same test.
4. The scheme from a YAML config through the CLI.
"""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dlnsim import MatrixRegression, WeightDecay
from dlnsim.dynamics import SCHEMES, MetropolisRLE, RiemannianLangevin
from dlnsim.dynamics.mala import _half_upper_sum, layer_log_density, layer_log_jacobian, layer_proposal_log_density
from dlnsim.dynamics.rle import _operator_matrix, _sym_power, layer_coordinates, rle_layer_drift
from dlnsim.entropy import entropy, orbit_log_volume
from dlnsim.gibbs import SingularValueLaw, gibbs_log_density
from dlnsim.network import balanced_weights
from dlnsim.spectral import log_kernel
from dlnsim.stats import independent_chain_stderr, ks_test, zscore

torch.set_default_dtype(torch.float64)
ROOT = Path(__file__).resolve().parents[1]


def _to_X(Y: torch.Tensor, N: int) -> torch.Tensor:
    """X = Y (Y^T Y)^{(N-1)/2} by eigh (independent of the SVD path of the module)."""
    return Y @ _sym_power(Y.mT @ Y, (N - 1) / 2)


def _jacobian(Y: torch.Tensor, N: int) -> torch.Tensor:
    """d vec X / d vec Y (row-major), (d^2, d^2), by autograd."""
    d = Y.shape[-1]
    return torch.autograd.functional.jacobian(lambda y: _to_X(y, N), Y).reshape(d * d, d * d)


def _problem(d, seed, B=3):
    g = torch.Generator().manual_seed(seed)
    Y = torch.randn(B, d, d, generator=g)
    Y[0] = Y[0] * torch.tensor([1.0] * (d - 1) + [-1.0])  # one of each det sign is likely; force variety
    E = MatrixRegression(torch.randn(d, d, generator=g))  # not orthogonally invariant
    return Y, E


# ---------------------------------------------------------------------------------------------
# 1. densities against brute force
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("N", [2, 3, 4])
def test_layer_jacobian_target_and_entropy_against_brute_force(d, N):
    Y, E = _problem(d, 7 * d + N)
    beta = 1.7
    jac_closed = layer_log_jacobian(Y, N)
    jac_dense = torch.stack([torch.linalg.slogdet(_jacobian(y, N))[1] for y in Y])
    # roundoff of a d^2 x d^2 slogdet of an autograd Jacobian: measured 1.2e-12 at s_1/s_d ~ 1e7 (d = 3, N = 3;
    # it grows like eps cond(dX/dY)), <= 1e-13 in the other cases
    assert torch.allclose(jac_closed, jac_dense, rtol=1e-11, atol=1e-11), (jac_closed, jac_dense)
    X = _to_X(Y, N)
    # target in Y = Lebesgue density of X (dlnsim.gibbs) times |det dX/dY|, up to one constant (d log N)
    oracle = gibbs_log_density(X, E, N, beta) + jac_dense
    ours = layer_log_density(Y, E, N, beta)
    diff = oracle - ours
    # measured 2.7e-11 (d = 3, N = 3, s_1/s_d ~ 1e7; gibbs_log_density's own roundoff), <= 7e-13 in the others
    assert torch.allclose(diff, torch.full_like(diff, d * math.log(N)), rtol=0, atol=1e-10), diff
    # S - const: the closed-form entropy and the orbit Gram determinant at a balanced point over X
    s = torch.linalg.svdvals(X)
    # log det A = sum over all (i, j) of log K_ij (used through det D = det A / det(J)^2 = N^{-d}), against the
    # dense d^2 x d^2 matrix of A. The oracle's eigh of X^T X has absolute error ~eps s_1^2, i.e. relative error
    # eps (s_1/s_d)^2 in the smallest eigenvalue whose powers enter A (these cases reach s_1/s_d ~ 1e7, where
    # the oracle, not the closed form, loses digits: measured 4e-4 there, 1e-14 at s_1/s_d ~ 10).
    log_det_A = torch.stack([torch.linalg.slogdet(_operator_matrix(x, N))[1] for x in X])
    tol = 1e-10 + 10 * d * d * torch.finfo(X.dtype).eps * (s[:, 0] / s[:, -1]) ** 2
    assert bool(((log_kernel(s, N).sum(dim=(-2, -1)) - log_det_A).abs() <= tol).all())
    half = _half_upper_sum(log_kernel(s, N))
    for other in (entropy(X, N), orbit_log_volume(balanced_weights(X, N, torch.Generator().manual_seed(1)))):
        dd = other - half
        assert torch.allclose(dd, dd[0].expand_as(dd), rtol=0, atol=1e-12), dd  # measured <= 4e-15


def _roundoff(Y, N) -> float:
    """Tolerance of the dense pullback J^{-1} A J^{-T}: it inverts the autograd Jacobian of an eigh-based map
    twice, so its roundoff scales as eps cond(J)^2 (measured up to 30 eps cond(J)^2, e.g. 1.9e-9 at cond 540);
    1e-13 cond^2 + 1e-11 leaves a margin of ~15."""
    return 1e-13 * float(torch.linalg.cond(_jacobian(Y, N))) ** 2 + 1e-11


def _dense_log_q(Y_to, Y_from, E, N, beta, hc):
    """log N(vec Y_to; vec m, Sigma), m = Y_from + hc rle_layer_drift, Sigma = (2 hc/beta) J^{-1} A J^{-T} (dense)."""
    d = Y_from.shape[-1]
    X = _to_X(Y_from, N)
    m = Y_from + hc * rle_layer_drift(X.unsqueeze(0), E, N, beta)[0]
    Jinv = torch.linalg.inv(_jacobian(Y_from, N))
    Sigma = (2 * hc / beta) * Jinv @ _operator_matrix(X, N) @ Jinv.mT
    r = (Y_to - m).reshape(-1)
    return -0.5 * r @ torch.linalg.solve(Sigma, r) - 0.5 * torch.linalg.slogdet(2 * math.pi * Sigma)[1], Sigma


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("N", [2, 3])
def test_proposal_density_and_diffusion_log_det_against_dense_gaussian(d, N):
    Y, E = _problem(d, 11 * d + N, B=2)
    beta, hc = 1.3, 0.15
    g = torch.Generator().manual_seed(3)
    Yp = Y + 0.4 * torch.randn(Y.shape, generator=g)
    ours = layer_proposal_log_density(Yp, Y, E, N, beta, hc)
    for k in range(Y.shape[0]):
        dense, Sigma = _dense_log_q(Yp[k], Y[k], E, N, beta, hc)
        # the layer chart's diffusion has det D = N^{-d}: det Sigma = (2 hc/beta)^{d^2} N^{-d}
        log_det = torch.linalg.slogdet(Sigma)[1]
        tol = _roundoff(Y[k], N)
        assert abs(float(log_det) - (d * d * math.log(2 * hc / beta) - d * math.log(N))) < tol
        const = -0.5 * (d * d * math.log(4 * math.pi * hc / beta) - d * math.log(N))
        assert abs(float(ours[k]) + const - float(dense)) < tol * max(1.0, abs(float(dense)))


# ---------------------------------------------------------------------------------------------
# 2. detailed balance: the step's ratio against the dense densities
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("N", [2, 3])
def test_acceptance_ratio_is_detailed_balance(d, N):
    Y, E = _problem(d, 13 * d + N, B=4)
    X = _to_X(Y, N)
    beta = torch.tensor([0.8, 1.0, 2.5, 4.0])
    h = 0.2
    sch = MetropolisRLE(E, h, N, beta, generator=torch.Generator().manual_seed(0))
    p = sch._current(X)
    Z = torch.randn(X.shape, generator=torch.Generator().manual_seed(5))
    q, log_ratio, _ = sch._propose(p, Z)
    Yn = layer_coordinates(q.X, N)
    for k in range(X.shape[0]):
        b = float(beta[k])
        fwd, _ = _dense_log_q(Yn[k], Y[k], E, N, b, h)
        rev, _ = _dense_log_q(Y[k], Yn[k], E, N, b, h)
        target = layer_log_density(Yn[k:k + 1], E, N, b) - layer_log_density(Y[k:k + 1], E, N, b)
        oracle = float(target) + float(rev) - float(fwd)
        # the forward density is the Gaussian of the noise actually drawn: -|Z|^2/2 + normaliser
        const = -0.5 * (d * d * math.log(4 * math.pi * h / b) - d * math.log(N))
        tol = max(_roundoff(Y[k], N), _roundoff(Yn[k], N)) * max(1.0, abs(oracle), abs(float(fwd)))
        assert abs(float(fwd) - (const - 0.5 * float((Z[k] ** 2).sum()))) < tol
        # dense oracle vs the carried-frame computation: roundoff only
        assert abs(float(log_ratio[k]) - oracle) < tol, (k, float(log_ratio[k]), oracle)


def test_step_reuses_the_carried_point_and_is_reproducible():
    E = WeightDecay(1.0)
    X0 = torch.randn(64, 2, 2, generator=torch.Generator().manual_seed(2))
    runs = []
    for carry in (True, False):
        sch = MetropolisRLE(E, 0.2, 3, 1.0, generator=torch.Generator().manual_seed(9))
        st = sch.init_state(X=X0)
        for _ in range(20):
            if not carry:
                st.X = st.X.clone()  # a new tensor object: the carried point is not reused
            sch.step(st)
        runs.append(st)
    # recomputed vs carried SVD of the same point: same chain up to roundoff
    assert torch.allclose(runs[0].X, runs[1].X, rtol=0, atol=1e-10)
    assert torch.equal(runs[0].stats["accepted"], runs[1].stats["accepted"])
    acc = float(runs[0].stats["accepted"].sum() / runs[0].stats["proposals"].sum())
    assert 0.3 < acc < 0.99, acc


@pytest.mark.parametrize("d", [2, 3])
def test_float32_time_scale_and_beta_tensor(d):
    # float32: the log ratio is a sum of O(d^2) terms (|Z|^2/2 and the reverse quadratic form nearly cancel
    # for a good proposal), so float32 roundoff (~1e-6 of d^2) moves the accept decision of a tiny fraction
    # of chains only: the acceptance rates of float32 and float64 chains from the same start agree within
    # their binomial spread (same starts and seeds, so the two runs are coupled until a decision differs; measured difference <= 0.013 over
    # 128 chains x 40 steps; asserted 0.05).
    X0 = torch.randn(128, d, d, generator=torch.Generator().manual_seed(3))
    acc = {}
    for dtype in (torch.float32, torch.float64):
        sch = MetropolisRLE(WeightDecay(1.0), 0.1, 3, torch.linspace(0.5, 2.0, 128, dtype=dtype),
                            generator=torch.Generator().manual_seed(4), time_scale="depth")
        st = sch.init_state(X=X0.to(dtype))
        for _ in range(40):
            sch.step(st)
        assert st.X.dtype == dtype and bool(torch.isfinite(st.X).all())
        acc[dtype] = float(st.stats["accepted"].sum() / st.stats["proposals"].sum())
        assert st.t == pytest.approx(4.0)  # time_scale="depth": state time counts h, the step uses h/N
    assert abs(acc[torch.float32] - acc[torch.float64]) < 0.05, acc
    assert 0.3 < acc[torch.float64] < 1.0, acc  # measured 0.49 (d = 3) .. 0.7 (d = 2) in the transient from a Gaussian start


@pytest.mark.parametrize("d", [2, 3])
def test_starts_at_zero_and_rank_deficient_X(d):
    # pi vanishes at X = 0 (d >= 2: the K_ij of two zero singular values are 0), so log pi(X) = -inf there
    # and the first proposal is accepted (log ratio +inf); rank-one starts have finite log pi (one zero).
    X0 = torch.zeros(12, d, d)
    X0[4:8, 0, 0] = 1.0
    X0[8:] = torch.eye(d)  # repeated singular values: the pair kernels at coincident x (log ratio must be finite)
    p = MetropolisRLE(WeightDecay(1.0), 0.1, 3, 1.0)._current(X0[8:])
    assert bool(torch.isfinite(p.force).all() & torch.isfinite(p.r).all() & torch.isfinite(p.log_S).all())
    sch = MetropolisRLE(WeightDecay(1.0), 0.1, 3, 1.0, generator=torch.Generator().manual_seed(0))
    st = sch.init_state(X=X0)
    for _ in range(10):
        sch.step(st)
    assert bool(torch.isfinite(st.X).all())
    assert bool((st.stats["accepted"][:4] >= 1).all())  # every chain left 0
    assert bool((torch.linalg.svdvals(st.X)[:, -1] > 0).all())


def test_validation():
    with pytest.raises(ValueError, match="time_scale"):
        MetropolisRLE(WeightDecay(1.0), 0.1, 2, 1.0, time_scale="x")
    with pytest.raises(ValueError, match="keep_component"):
        MetropolisRLE(WeightDecay(1.0), 0.1, 2, 1.0, keep_component=1)
    with pytest.raises(ValueError, match="beta"):
        MetropolisRLE(WeightDecay(1.0), 0.1, 2, -1.0)
    with pytest.raises(ValueError, match="square"):
        MetropolisRLE(WeightDecay(1.0), 0.1, 2, 1.0).init_state(X=torch.randn(4, 2, 3))


# ---------------------------------------------------------------------------------------------
# 3. exact stationary law at a large step
# ---------------------------------------------------------------------------------------------

MOMENTS = {"s_min": lambda s: s[..., -1], "X2": lambda s: (s * s).sum(-1)}


def _samples(cls, d, N, h, chains, seed, burn=3.0, **kw):
    """chains independent chains from Gaussian X, burn `burn` time units, then 8 samples 0.5 apart: (8, chains, d)."""
    g = torch.Generator().manual_seed(seed)
    sch = cls(WeightDecay(1.0), h, N, 1.0, generator=g, **kw)
    st = sch.init_state(X=torch.randn(chains, d, d, generator=g))
    every = round(0.5 / h)
    for _ in range(round(burn / h)):
        sch.step(st)
    out = []
    for k in range(8 * every):
        sch.step(st)
        if (k + 1) % every == 0:
            out.append(torch.linalg.svdvals(st.X))
    return torch.stack(out), st


@pytest.mark.parametrize("N", [2, 3])
def test_stationary_law_exact_at_large_step(N):
    d, h, chains = 2, 0.2, 3000
    law = SingularValueLaw(N, 1.0, 1.0, d)
    s, st = _samples(MetropolisRLE, d, N, h, chains, seed=40 + N)
    assert bool(torch.isfinite(s).all())
    z = {k: zscore(float(f(s).mean()), float(law.moment(f)), float(independent_chain_stderr(f(s)))) for k, f in MOMENTS.items()}
    # exact law: z ~ N(0, 1) per moment; 4 SE leaves a false-alarm rate ~1e-4 per assertion
    assert all(abs(v) < 4 for v in z.values()), z
    p_min = ks_test(s[-1][:, -1], law.cdf_min)[1]
    p_max = ks_test(s[-1][:, 0], law.cdf_max)[1]
    assert p_min > 1e-3 and p_max > 1e-3, (p_min, p_max)
    acc = float(st.stats["accepted"].sum() / st.stats["proposals"].sum())
    assert acc > 0.4, acc  # measured 0.70 (N = 2), 0.49 (N = 3): the chains move
    assert float(st.stats["sign_changes"].sum()) > 0  # they cross the rank-deficient set
    # Power: the Euler RLE (the proposal alone) fails the same test at a quarter of the step. (At h = 0.2 it
    # diverges, at 0.1 it diverges at N = 3 and is +19% in ||X||^2 at N = 2; at 0.05 measured z = 9.7 (N = 2),
    # 13.4 (N = 3) in ||X||^2.)
    s_e, _ = _samples(RiemannianLangevin, d, N, h / 4, chains, seed=40 + N)
    z_e = {k: zscore(float(f(s_e).mean()), float(law.moment(f)), float(independent_chain_stderr(f(s_e))))
           for k, f in MOMENTS.items()}
    assert max(abs(v) for v in z_e.values()) > 4, z_e


# d = 3 (long versions, `pytest -m slow`): h = 0.1, where bench (g) runs it (acceptance 0.58 at N = 2, 0.30 at
# N = 3); burn-in 10 time units because at N = 3 the low acceptance slows the escape from the Gaussian start.
@pytest.mark.slow
@pytest.mark.parametrize("N", [2, 3])
def test_stationary_law_exact_d3_long(N):
    d, h, chains = 3, 0.1, 3000
    law = SingularValueLaw(N, 1.0, 1.0, d)
    s, st = _samples(MetropolisRLE, d, N, h, chains, seed=50 + N, burn=10.0)
    z = {k: zscore(float(f(s).mean()), float(law.moment(f)), float(independent_chain_stderr(f(s)))) for k, f in MOMENTS.items()}
    assert all(abs(v) < 4 for v in z.values()), z
    p_min = ks_test(s[-1][:, -1], law.cdf_min)[1]
    p_max = ks_test(s[-1][:, 0], law.cdf_max)[1]
    assert p_min > 1e-3 and p_max > 1e-3, (p_min, p_max)


# ---------------------------------------------------------------------------------------------
# 4. config and CLI
# ---------------------------------------------------------------------------------------------


def test_registered_and_runs_from_yaml_through_the_cli(tmp_path):
    assert SCHEMES["rle_metropolis"] is MetropolisRLE
    cfg = tmp_path / "mala.yaml"
    cfg.write_text(
        "network: {width: 2, depth: 3}\n"
        "energy: {type: weight_decay}\n"
        "dynamics: {scheme: rle_metropolis, beta: 1.0, step_size: 0.2, steps: 40, ensemble: 16, seed: 4,\n"
        "           options: {keep_component: true}}\n"
        "observers: {every: 10}\n"
        "output: {figures: false}\n"
    )
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "dlnsim", "run", str(cfg), "--out", str(out)], cwd=ROOT,
                       capture_output=True, text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    run_dir = out
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["status"] == "completed", meta
    import numpy as np

    arr = np.load(run_dir / "arrays.npz")
    acc = arr["accepted"][-1] / arr["proposals"][-1]
    assert 0.2 < acc.mean() < 1.0 and np.all(arr["sign_changes"] == 0)  # keep_component: no sign change
    bad = subprocess.run([sys.executable, "-m", "dlnsim", "run", str(cfg), "--out", str(tmp_path / "bad"),
                          "--set", "dynamics.options.keep_component=3"], cwd=ROOT, capture_output=True, text=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert bad.returncode == 2 and "keep_component" in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
    assert not (tmp_path / "bad").exists()  # a user error leaves nothing behind
