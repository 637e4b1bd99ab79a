"""Metric operator A_{N,X}, its powers, the metric g^N and the spectral kernel K (docs/theory.md section 3).

References are computed independently of the code's SVD path: fractional powers of X X^T and
X^T X by torch.linalg.eigh, the geometric sum for K term by term, and mpmath at 50 digits.
"""
import itertools

import pytest
import torch

import dlnsim
from dlnsim.network import balanced_weights, end_to_end
from dlnsim.spectral import dlog_kernel_ds, kernel, log_kernel

from conftest import DTYPE, make_generator, matrix_with_spectrum, rel_err

mpmath = pytest.importorskip("mpmath", reason="mpmath is a test dependency: pip install -e '.[dev]'")


def _sym_power(M: torch.Tensor, q: float, rank: int) -> torch.Tensor:
    """M^q for symmetric PSD M by eigh; the dim - rank smallest eigenvalues are exactly 0 (known rank).

    Zeroing them matters: eigh returns them as +-1e-16 and (1e-16)^{1/7} ~ 5e-3 is not small.
    0^0 = 1, so q = 0 gives the identity as in the defining sum.
    """
    lam, Q = torch.linalg.eigh(M)
    n = lam.shape[-1]
    lam = lam.clamp_min(0.0)
    lam[..., : n - rank] = 0.0
    return (Q * torch.pow(lam, q).unsqueeze(-2)) @ Q.mT


def _A_reference(X: torch.Tensor, P: torch.Tensor, N: int, rank: int | None = None) -> torch.Tensor:
    """sum_{p=1}^N (X X^T)^{(N-p)/N} P (X^T X)^{(p-1)/N}, from eigh (independent of the SVD path)."""
    r = min(X.shape[-2:]) if rank is None else rank
    XXt, XtX = X @ X.mT, X.mT @ X
    return sum(_sym_power(XXt, (N - p) / N, r) @ P @ _sym_power(XtX, (p - 1) / N, r) for p in range(1, N + 1))


def _K_reference(s_row, s_col, N) -> torch.Tensor:
    """Geometric sum K_ij = sum_p s_i^{2(N-p)/N} s_j^{2(p-1)/N} term by term (0^0 = 1)."""
    si, sj = s_row.unsqueeze(-1), s_col.unsqueeze(-2)
    return sum(si ** (2 * (N - p) / N) * sj ** (2 * (p - 1) / N) for p in range(1, N + 1))


# --------------------------------------------------------------------------- A_{N,X} vs its definition


@pytest.mark.parametrize("d", range(1, 7))
def test_metric_operator_matches_defining_sum(d):
    g = make_generator(100 + d)
    for N in range(1, 8):
        # Singular values in [0.3, 3]: eigh of X X^T squares the condition number (<= 100), so the
        # reference is good to ~1e-14; 1e-12 leaves two digits for the SVD path's own roundoff.
        s = 0.3 * 10.0 ** torch.rand(4, d, dtype=DTYPE, generator=g)
        X = matrix_with_spectrum(s, g)
        P = torch.randn(4, d, d, dtype=DTYPE, generator=g)
        assert rel_err(dlnsim.metric_operator(X, P, N), _A_reference(X, P, N)) < 1e-12, (d, N)


@pytest.mark.parametrize("shape", [(3, 5), (5, 3), (1, 4), (4, 1)])
@pytest.mark.parametrize("N", [1, 2, 3, 5])
def test_metric_operator_rectangular(shape, N):
    # Rectangular X pads the spectrum with zeros: (X X^T)^0 = I on the kernel, higher powers vanish.
    g = make_generator(7 * N + shape[0])
    X = torch.randn(3, *shape, dtype=DTYPE, generator=g)
    P = torch.randn(3, *shape, dtype=DTYPE, generator=g)
    assert rel_err(dlnsim.metric_operator(X, P, N), _A_reference(X, P, N)) < 1e-12


def test_svd_factors_keep_their_exported_old_name():
    # geometry.SVDFactors was called SpectralFrame (exported by dlnsim) before issue 11; checkpoints
    # written then name dlnsim.geometry:SpectralFrame, so the alias must resolve to the same class.
    from dlnsim import geometry

    assert dlnsim.SpectralFrame is dlnsim.SVDFactors is geometry.SpectralFrame is geometry.SVDFactors


def test_metric_operator_rank_deficient_square():
    # A (positive powers only) is defined on the closure of GL_d; zero singular values pad K.
    # A is only Hoelder-continuous (exponent 2/N) at rank-deficient X, so roundoff-level zero
    # singular values (1e-16)^{2/N} would dominate: build X with EXACT zeros (a random leading
    # block, zero elsewhere, which LAPACK's SVD reproduces with exact zeros; permuting rows and
    # columns does not survive the bidiagonalisation exactly).
    g = make_generator(3)
    for rank in (1, 2, 3):
        X = torch.zeros(2, 4, 4, dtype=DTYPE)
        X[:, :rank, :rank] = torch.randn(2, rank, rank, dtype=DTYPE, generator=g)
        P = torch.randn(2, 4, 4, dtype=DTYPE, generator=g)
        for N in (2, 3, 4):
            assert rel_err(dlnsim.metric_operator(X, P, N), _A_reference(X, P, N, rank)) < 1e-12, (rank, N)


def _dense_operator(op, X, N):
    """The d_out d_in x d_out d_in matrix of P -> op(X, P, N) in the basis E_kl (row-major vec)."""
    m, n = X.shape[-2:]
    basis = torch.eye(m * n, dtype=DTYPE).reshape(m * n, m, n)
    cols = op(X.unsqueeze(0).expand(m * n, m, n), basis, N)
    return cols.reshape(m * n, m * n).mT


@pytest.mark.parametrize("d,N", [(1, 3), (2, 2), (3, 3), (4, 5), (3, 1)])
def test_metric_operator_self_adjoint_positive_with_eigenvalues_K(d, N):
    g = make_generator(11 * d + N)
    s = 0.3 * 10.0 ** torch.rand(d, dtype=DTYPE, generator=g)
    X = matrix_with_spectrum(s, g)
    A = _dense_operator(dlnsim.metric_operator, X, N)
    # Self-adjoint for the Frobenius inner product <P, A Q> = <A P, Q>: the dense matrix is symmetric.
    assert float((A - A.mT).abs().max()) < 1e-13 * float(A.abs().max())
    P, Q = torch.randn(2, d, d, dtype=DTYPE, generator=g)
    lhs = (P * dlnsim.metric_operator(X, Q, N)).sum()
    rhs = (dlnsim.metric_operator(X, P, N) * Q).sum()
    assert abs(float(lhs - rhs)) < 1e-13 * float(P.norm() * Q.norm() * A.abs().max())
    # Positive definite with spectrum {K_ij}: compare sorted eigenvalues with the geometric sum.
    eig = torch.linalg.eigvalsh(0.5 * (A + A.mT))
    K = _K_reference(s, s, N).flatten().sort().values
    assert float(eig.min()) > 0
    assert rel_err(eig, K) < 1e-12


@pytest.mark.parametrize("d,N", [(2, 2), (3, 4), (5, 7), (4, 1)])
def test_metric_operator_powers_compose(d, N):
    g = make_generator(5 * d + N)
    s = 0.3 * 10.0 ** torch.rand(3, d, dtype=DTYPE, generator=g)
    X = matrix_with_spectrum(s, g)
    P = torch.randn(3, d, d, dtype=DTYPE, generator=g)
    AP = dlnsim.metric_operator(X, P, N)
    # Every power is U [K^q o (U^T P V)] V^T with orthogonal U, V: roundoff ~ d eps * cond(K).
    assert rel_err(dlnsim.metric_operator_sqrt(X, dlnsim.metric_operator_sqrt(X, P, N), N), AP) < 1e-13
    assert rel_err(dlnsim.metric_operator_inv(X, AP, N), P) < 1e-13
    back = dlnsim.metric_operator_inv_sqrt(X, dlnsim.metric_operator_inv_sqrt(X, AP, N), N)
    assert rel_err(back, P) < 1e-13


# --------------------------------------------------------------------------- metric and horizontal lift


@pytest.mark.parametrize("d,N", [(2, 2), (3, 3), (3, 5), (4, 2)])
def test_metric_is_squared_norm_of_horizontal_lift(d, N):
    g = make_generator(13 * d + N)
    X = matrix_with_spectrum(0.4 * 5.0 ** torch.rand(2, d, dtype=DTYPE, generator=g), g)
    W = balanced_weights(X, N, generator=g)
    Z, Z2 = torch.randn(2, 2, d, d, dtype=DTYPE, generator=g)
    V = dlnsim.horizontal_lift(W, Z)
    norm2 = sum((v * v).sum(dim=(-2, -1)) for v in V)
    gZZ = dlnsim.metric(X, Z, N)
    assert rel_err(gZZ, norm2) < 1e-12
    # g^N(Z, Z) = tr(Z^T A^{-1} Z) and symmetric in its two arguments.
    assert rel_err(dlnsim.metric(X, Z, N, Z2), dlnsim.metric(X, Z2, N, Z)) < 1e-12
    # d/dt phi(W + t V) at t = 0 is the linear term sum_p W_{N:p+1} V_p W_{p-1:1} (exact, no FD).
    lin = sum(_linear_term(W, V, p) for p in range(N))
    assert rel_err(lin, Z) < 1e-12
    # Horizontal: V is orthogonal to the orbit's tangent vectors dW_p = A_p W_p - W_p A_{p-1}.
    for q in range(1, N):
        for a, b in itertools.combinations(range(d), 2):
            F = torch.zeros(d, d, dtype=DTYPE)
            F[a, b], F[b, a] = 1.0, -1.0
            inner = (V[q - 1] * (F @ W[q - 1])).sum(dim=(-2, -1)) - (V[q] * (W[q] @ F)).sum(dim=(-2, -1))
            scale = torch.stack([v.flatten(-2).norm(dim=-1) for v in V]).sum(0) * sum(
                w.flatten(-2).norm(dim=-1) for w in W
            )
            assert float((inner.abs() / scale).max()) < 1e-13


def _linear_term(W, V, p):
    """W_N ... W_{p+2} V_{p+1} W_p ... W_1 (0-based p: the factor replaced is W[p])."""
    return end_to_end(W[:p] + [V[p]] + W[p + 1 :])


# --------------------------------------------------------------------------- the kernel K


@pytest.mark.parametrize("N", [1, 2, 3, 7, 40])
def test_kernel_zero_and_repeated_singular_values(N):
    # Exact repeats, a zero, two zeros: the geometric sum in float64 (all terms >= 0, no
    # cancellation) is accurate to ~N eps, the reference here.
    s = torch.tensor([2.5, 1.0, 1.0, 0.3, 0.0, 0.0], dtype=DTYPE)
    K = kernel(s, N)
    ref = _K_reference(s, s, N)
    assert torch.isfinite(K).all()
    assert float(((K - ref).abs() / ref.clamp_min(1e-300)).max()) < 1e-13
    # K_ij = 0 exactly where both are zero and N > 1 (every term carries a positive power of 0).
    assert bool((K[4:, 4:] == (0.0 if N > 1 else 1.0)).all())
    # Rectangular columns: s_col padded with zeros.
    s_col = torch.tensor([1.7, 0.2, 0.0], dtype=DTYPE)
    ref = _K_reference(s, s_col, N)
    assert float(((kernel(s, N, s_col) - ref).abs() / ref.clamp_min(1e-300)).max()) < 1e-13


@pytest.fixture(autouse=True)
def _mp50():
    """50 significant digits for the mpmath references, restored afterwards."""
    with mpmath.workdps(50):
        yield


def _mp_logK(si, sj, N):
    si, sj = mpmath.mpf(si), mpmath.mpf(sj)
    terms = (si ** (mpmath.mpf(2 * (N - p)) / N) * sj ** (mpmath.mpf(2 * (p - 1)) / N) for p in range(1, N + 1))
    return mpmath.log(mpmath.fsum(terms))


@pytest.mark.parametrize("N", [2, 3, 7, 1000])
def test_log_kernel_near_degenerate_matches_mpmath(N):
    # Relative gaps 1e-12 .. 1: the quotient form (s_i^2 - s_j^2)/(s_i^{2/N} - s_j^{2/N}) would lose
    # all digits at 1e-12; the code must stay within a few ulp of the 50-digit geometric sum.
    base = 1.3
    s = torch.tensor([base] + [base * (1 + r) for r in (1e-12, 1e-9, 1e-6, 1e-3, 0.5)] + [base], dtype=DTYPE)
    L = log_kernel(s, N)
    vals = s.tolist()
    for i, j in itertools.product(range(len(vals)), repeat=2):
        ref = _mp_logK(vals[i], vals[j], N)
        assert abs(float(L[i, j]) - float(ref)) <= 1e-13 * max(1.0, abs(float(ref))), (i, j)


@pytest.mark.parametrize("N", [2, 3, 7, 50, 1000])
def test_dlog_kernel_ds_matches_mpmath(N):
    # Gaps straddle the switch of _mean_index between the closed form and its Bernoulli series
    # (|N delta| = 1e-2, delta = log s_i^{2/N} - log s_j^{2/N}), and go down to 1e-12 and 0.
    base = 0.8
    rel = [0.0, 1e-12, 1e-8, 1e-4, 2e-3, 4e-3, 6e-3, 1e-2, 3e-2, 0.3, 2.0]
    s = torch.tensor([base] + [base * (1 + r) for r in rel], dtype=DTYPE)
    D = dlog_kernel_ds(s, N)
    vals = s.tolist()
    # Row and column of the base value (every gap, both signs of delta) and the diagonal.
    n = len(vals)
    pairs = {(0, j) for j in range(n)} | {(i, 0) for i in range(n)} | {(i, i) for i in range(n)}
    for i, j in sorted(pairs):
        if i == j:
            f = lambda x: _mp_logK(x, x, N)  # noqa: E731  total derivative of log K_ii
        else:
            f = lambda x: _mp_logK(x, vals[j], N)  # noqa: E731
        ref = float(mpmath.diff(f, mpmath.mpf(vals[i])))
        # Values are O(1/s); the closed form loses ~eps * 2/(N delta) <= 200 eps at the switch.
        assert abs(float(D[i, j]) - ref) <= 1e-12 * max(1.0, abs(ref)), (i, j, float(D[i, j]), ref)


# --------------------------------------------------------------------------- errors


def test_geometry_bad_input():
    X = torch.randn(2, 3, 3, dtype=DTYPE, generator=make_generator(0))
    P = torch.randn(2, 3, 3, dtype=DTYPE, generator=make_generator(1))
    singular = X.clone()
    singular[1, :, 2] = singular[1, :, 0]  # rank 2
    with pytest.raises(ValueError, match="rank-deficient"):
        dlnsim.metric_operator_inv(singular, P, 2)
    with pytest.raises(ValueError, match="rank-deficient"):
        dlnsim.metric_operator_inv_sqrt(singular, P, 2)
    with pytest.raises(ValueError, match="rank-deficient"):
        dlnsim.metric(singular, P, 3)
    with pytest.raises(ValueError, match="square"):
        dlnsim.metric_operator_inv(X[..., :2], P[..., :2], 2)
    with pytest.raises(ValueError, match="depth"):
        dlnsim.metric_operator(X, P, 0)
    with pytest.raises(ValueError, match="shape"):
        dlnsim.metric_operator(X, P[..., :2], 2)
    with pytest.raises(ValueError, match="floating"):
        dlnsim.metric_operator(X.long(), P, 2)
