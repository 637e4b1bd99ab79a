"""Convex baselines (dlnsim.baselines): minimum nuclear norm completion by ADMM, minimum-norm least squares."""
import pytest
import torch

from dlnsim.baselines import min_norm_least_squares, min_nuclear_norm_completion, singular_value_threshold
from dlnsim.tasks import low_rank_target, random_mask

DTYPE = torch.float64


def test_exact_recovery_incoherent_low_rank():
    # 20 x 20, rank 2, Haar singular vectors (incoherent), 70% of the entries observed (280 >> 76 dof):
    # the regime of exact recovery (Candes & Recht 2009). Four masks solved as one batch.
    Phi = low_rank_target((20, 20), 2, "ones", seed=0)
    M = random_mask((20, 20), fraction=0.7, batch=4, seed=1)
    res = min_nuclear_norm_completion(Phi * M, M, tol=1e-10)
    assert res.converged and res.iterations < 1000  # measured: 120 iterations
    rel = torch.linalg.matrix_norm(res.X - Phi) / torch.linalg.matrix_norm(Phi)
    # stopping residual tol * ||B|| ~ 1e-9; measured recovery errors 4e-14 .. 4e-12
    assert float(rel.max()) < 1e-9
    # the iterate is feasible exactly (observed entries are copied, not fitted)
    assert torch.equal(M * res.X, M * Phi)


def test_hand_checkable_two_by_two():
    # Razin & Cohen's 2x2: w12 = w21 = 1, w22 = 0 observed. ||[[x,1],[1,0]]||_* = sqrt(x^2 + 4): the
    # minimum is x = 0 with nuclear norm 2 (while deep factorizations drive |x| -> infinity).
    obs = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=DTYPE)
    M = torch.tensor([[0.0, 1.0], [1.0, 1.0]], dtype=DTYPE)
    res = min_nuclear_norm_completion(obs, M, tol=1e-12)
    assert res.converged and abs(float(res.X[0, 0])) < 1e-10 and abs(float(res.nuclear_norm) - 2.0) < 1e-10
    # [[1,1],[1,x]]: ||.||_*^2 = ||X||_F^2 + 2|det X| = (x-1)^2 + 4 (x < 1), (x+1)^2 (x >= 1): x = 1, norm 2
    obs = torch.tensor([[1.0, 1.0], [1.0, 0.0]], dtype=DTYPE)
    M = torch.tensor([[1.0, 1.0], [1.0, 0.0]], dtype=DTYPE)
    res = min_nuclear_norm_completion(obs, M, tol=1e-12)
    assert res.converged and abs(float(res.X[1, 1]) - 1.0) < 1e-9 and abs(float(res.nuclear_norm) - 2.0) < 1e-10


def test_one_missing_entry_against_ternary_search(gen):
    # A full-rank 3 x 4 matrix with one unknown entry (no recovery: the optimum is not the truth).
    # f(x) = ||X(x)||_* is convex in x: ternary search to 1e-13 is the independent answer.
    A = torch.randn(3, 4, dtype=DTYPE, generator=gen)
    M = torch.ones(3, 4, dtype=DTYPE)
    M[1, 2] = 0.0

    def f(x):
        Y = A.clone()
        Y[1, 2] = x
        return float(torch.linalg.svdvals(Y).sum())

    lo, hi = -20.0, 20.0
    for _ in range(200):
        a, b = lo + (hi - lo) / 3, hi - (hi - lo) / 3
        lo, hi = (a, hi) if f(a) > f(b) else (lo, b)
    res = min_nuclear_norm_completion(A * M, M, tol=1e-12)
    assert res.converged
    # the objective is flat to second order near its minimum: compare the values to 1e-10
    # and the minimiser to 1e-5 (f'' ~ 1 gives |dx| ~ sqrt(2 * 1e-10))
    assert abs(float(res.nuclear_norm) - f(0.5 * (lo + hi))) < 1e-10
    assert abs(float(res.X[1, 2]) - 0.5 * (lo + hi)) < 1e-5


def test_svt_is_the_prox_of_the_nuclear_norm(gen):
    X = torch.randn(5, 4, dtype=DTYPE, generator=gen)
    Z = singular_value_threshold(X, 0.7)
    obj = lambda Y: 0.7 * float(torch.linalg.svdvals(Y).sum()) + 0.5 * float(((Y - X) ** 2).sum())  # noqa: E731
    for _ in range(50):  # the prox objective is strongly convex: every perturbation increases it
        P = 1e-3 * torch.randn(5, 4, dtype=DTYPE, generator=gen)
        assert obj(Z + P) > obj(Z)
    s = torch.linalg.svdvals(X)
    assert torch.allclose(torch.linalg.svdvals(Z), (s - 0.7).clamp(min=0), atol=1e-14)


def test_min_norm_least_squares(gen):
    # underdetermined (n = 3 < d_in = 5): exact fit, and X in the row space of A^T (minimum norm);
    # against the normal-equations formula X = Y (A^T A)^{-1} A^T
    A = torch.randn(5, 3, dtype=DTYPE, generator=gen)
    Y = torch.randn(2, 3, dtype=DTYPE, generator=gen)
    X = min_norm_least_squares(A, Y)
    assert torch.allclose(X @ A, Y, atol=1e-13)
    assert torch.allclose(X, Y @ torch.linalg.solve(A.T @ A, A.T), atol=1e-13)
    # overdetermined (n = 40): the least-squares solution Y A^T (A A^T)^{-1}
    A = torch.randn(5, 40, dtype=DTYPE, generator=gen)
    Y = torch.randn(2, 40, dtype=DTYPE, generator=gen)
    X = min_norm_least_squares(A, Y)
    assert torch.allclose(X, Y @ A.T @ torch.linalg.inv(A @ A.T), atol=1e-13)
    with pytest.raises(ValueError, match="same n"):
        min_norm_least_squares(A, Y[:, :3])
