"""Metrics (dlnsim.metrics), each against a direct computation (numpy, or an entry-by-entry loop)."""
import math

import numpy as np
import pytest
import torch

from dlnsim.metrics import (
    completion_errors,
    distance_to_rank,
    effective_rank,
    frobenius_norm,
    nuclear_norm,
    regression_errors,
    singular_values,
    spectral_norm,
)
from dlnsim.tasks import low_rank_target, random_mask

DTYPE = torch.float64


@pytest.fixture
def Xb(gen):
    return torch.randn(4, 5, 3, dtype=DTYPE, generator=gen)


def test_norms_against_numpy(Xb):
    for b in range(Xb.shape[0]):
        A = Xb[b].numpy()
        # LAPACK SVD on both sides: agreement to a few ulps of ||A|| (measured <= 4e-15)
        assert abs(float(nuclear_norm(Xb)[b]) - np.linalg.norm(A, "nuc")) < 1e-13
        assert abs(float(frobenius_norm(Xb)[b]) - math.sqrt((A**2).sum())) < 1e-13
        assert abs(float(spectral_norm(Xb)[b]) - np.linalg.norm(A, 2)) < 1e-13
    assert singular_values(Xb).shape == (4, 3)


def test_effective_rank_direct_and_cases(Xb):
    for b in range(Xb.shape[0]):
        s = np.linalg.svd(Xb[b].numpy(), compute_uv=False)
        p = s / s.sum()
        assert abs(float(effective_rank(Xb)[b]) - math.exp(-(p * np.log(p)).sum())) < 1e-13
    eye = torch.eye(4, dtype=DTYPE)
    assert abs(float(effective_rank(3.0 * eye)) - 4.0) < 1e-13  # r equal singular values: erank r
    assert abs(float(effective_rank(low_rank_target((5, 4), 1, [2.0], seed=0))) - 1.0) < 1e-10  # rank one
    assert float(effective_rank(torch.zeros(3, 3, dtype=DTYPE))) == 0.0
    # two singular values 1 and 0 exactly: the 0 log 0 = 0 convention gives 1, not NaN
    assert float(effective_rank(torch.diag(torch.tensor([1.0, 0.0], dtype=DTYPE)))) == 1.0


def test_distance_to_rank_eckart_young(Xb, gen):
    for r in range(4):
        d = distance_to_rank(Xb, r)
        U, s, Vh = torch.linalg.svd(Xb, full_matrices=False)
        Xr = (U[..., :r] * s[..., None, :r]) @ Vh[..., :r, :]
        assert torch.allclose(d, torch.linalg.matrix_norm(Xb - Xr), atol=1e-13)
        if r in (1, 2):
            # no random rank-r matrix (nor the truncation plus a perturbation) is closer
            for _ in range(20):
                Y = torch.randn(4, 5, r, dtype=DTYPE, generator=gen) @ torch.randn(4, r, 3, dtype=DTYPE, generator=gen)
                assert bool((torch.linalg.matrix_norm(Xb - Y) >= d).all())
                Y2 = Xr + 1e-3 * (torch.randn(4, 5, r, dtype=DTYPE, generator=gen) @ Vh[..., :r, :])
                assert bool((torch.linalg.matrix_norm(Xb - Y2) >= d - 1e-14).all())
    assert torch.allclose(distance_to_rank(Xb, 0), frobenius_norm(Xb))


def test_completion_errors_entrywise(gen):
    Phi = low_rank_target((4, 5), 2, seed=1)
    mask = random_mask((4, 5), count=8, batch=3, seed=2)
    X = Phi + 0.1 * torch.randn(3, 4, 5, dtype=DTYPE, generator=gen)
    out = completion_errors(X, Phi, mask)
    for b in range(3):
        tr = te = ptr = pte = 0.0
        for i in range(4):
            for j in range(5):
                e, t = float(X[b, i, j] - Phi[i, j]) ** 2, float(Phi[i, j]) ** 2
                if mask[b, i, j] == 1:
                    tr, ptr = tr + e, ptr + t
                else:
                    te, pte = te + e, pte + t
        assert abs(float(out["train_error"][b]) - math.sqrt(tr)) < 1e-14
        assert abs(float(out["test_error"][b]) - math.sqrt(te)) < 1e-14
        assert abs(float(out["reconstruction_error"][b]) - math.sqrt(tr + te)) < 1e-14
        assert abs(float(out["test_error_rel"][b]) - math.sqrt(te / pte)) < 1e-13
        assert abs(float(out["train_error_rel"][b]) - math.sqrt(tr / ptr)) < 1e-13
    full = completion_errors(X, Phi, torch.ones(4, 5, dtype=DTYPE))
    assert bool(full["test_error_rel"].isnan().all()) and bool((full["test_error"] == 0).all())


def test_regression_errors_direct(gen):
    A = torch.randn(3, 7, dtype=DTYPE, generator=gen)
    Y = torch.randn(2, 7, dtype=DTYPE, generator=gen)
    X = torch.randn(5, 2, 3, dtype=DTYPE, generator=gen)
    out = regression_errors(X, A, Y)
    for b in range(5):
        R = X[b].numpy() @ A.numpy() - Y.numpy()
        assert abs(float(out["loss"][b]) - (R**2).sum() / 14) < 1e-13
        assert abs(float(out["rel_error"][b]) - np.linalg.norm(R) / np.linalg.norm(Y.numpy())) < 1e-13
    with pytest.raises(ValueError, match="do not fit"):
        regression_errors(X, A.T, Y)
