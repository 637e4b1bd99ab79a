"""Metrics of implicit-regularization studies, as pure batched functions of the end-to-end matrix X.

X: (..., d_out, d_in); every metric returns (...,) (one number per trajectory) unless stated.

- Spectral: nuclear ||X||_* = sum s_i, Frobenius ||X||_F = (sum s_i^2)^{1/2}, spectral ||X||_2 = s_1;
  effective rank erank(X) = exp(-sum_i p_i log p_i), p_i = s_i / sum_j s_j (Roy & Vetterli,
  EUSIPCO 2007; 0 log 0 = 0, erank(0) := 0); distance to the nearest matrix of rank <= r,
  (sum_{i>r} s_i^2)^{1/2} (Eckart-Young).
- Completion (`completion_errors`): with truth Phi and observation mask M (0/1), the train error on
  observed entries ||M o (X - Phi)||_F, the test error on unobserved entries ||(1 - M) o (X - Phi)||_F
  and the reconstruction error ||X - Phi||_F, each also relative to the same norm of Phi.
- Regression (`regression_errors`): E(X) = 1/(2n) ||X A - Y||_F^2 on a data set (train or held-out),
  and the relative error ||X A - Y||_F / ||Y||_F.
"""
from __future__ import annotations

import torch

from ._checks import check_matrix

__all__ = [
    "singular_values",
    "nuclear_norm",
    "frobenius_norm",
    "spectral_norm",
    "effective_rank",
    "effective_rank_from_singular_values",
    "distance_to_rank",
    "completion_errors",
    "regression_errors",
]


def singular_values(X: torch.Tensor) -> torch.Tensor:
    """The singular-value profile s_1 >= ... >= s_r, r = min(d_out, d_in): (..., r)."""
    return torch.linalg.svdvals(check_matrix(X))


def nuclear_norm(X: torch.Tensor) -> torch.Tensor:
    """||X||_* = sum_i s_i."""
    return singular_values(X).sum(dim=-1)


def frobenius_norm(X: torch.Tensor) -> torch.Tensor:
    """||X||_F (no SVD needed)."""
    return torch.linalg.matrix_norm(check_matrix(X))


def spectral_norm(X: torch.Tensor) -> torch.Tensor:
    """||X||_2 = s_1."""
    return singular_values(X)[..., 0]


def effective_rank_from_singular_values(s: torch.Tensor) -> torch.Tensor:
    """exp of the Shannon entropy of p = s / ||s||_1; s (..., r) >= 0. erank of a zero matrix is 0."""
    total = s.sum(dim=-1, keepdim=True)
    p = s / torch.where(total > 0, total, torch.ones_like(total))
    plogp = torch.where(p > 0, p * torch.log(torch.where(p > 0, p, torch.ones_like(p))), torch.zeros_like(p))
    er = torch.exp(-plogp.sum(dim=-1))
    return torch.where(total.squeeze(-1) > 0, er, torch.zeros_like(er))


def effective_rank(X: torch.Tensor) -> torch.Tensor:
    """erank(X) in [1, min(d_out, d_in)] (Roy & Vetterli): 1 for rank one, r for r equal singular values."""
    return effective_rank_from_singular_values(singular_values(X))


def distance_to_rank(X: torch.Tensor, rank: int) -> torch.Tensor:
    """min ||X - Y||_F over rank(Y) <= rank = (sum_{i > rank} s_i^2)^{1/2} (Eckart-Young)."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
        raise ValueError(f"rank must be a non-negative integer, got {rank!r}")
    s = singular_values(X)
    return torch.linalg.vector_norm(s[..., rank:], dim=-1)


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    # relative error of a zero reference is undefined: NaN, not a silent 0 or inf
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.full_like(num, float("nan")))


def completion_errors(X: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Train (observed), test (unobserved) and reconstruction (all entries) errors, absolute and relative.

    X (..., d_out, d_in); truth Phi and mask M (0/1, one per trajectory or shared) broadcast against X.
    Keys: train_error, test_error, reconstruction_error (Frobenius norms of the residual on those
    entries) and the same with the suffix _rel (divided by the norm of Phi on those entries; NaN where
    that norm is 0, e.g. a test error when every entry is observed).
    """
    check_matrix(X)
    M = mask.to(X.dtype)
    R = X - truth
    out = {}
    for name, W in (("train", M), ("test", 1.0 - M), ("reconstruction", torch.ones_like(M))):
        num = torch.linalg.matrix_norm(W * R)
        den = torch.linalg.matrix_norm(W * truth).expand_as(num)
        out[f"{name}_error"] = num
        out[f"{name}_error_rel"] = _ratio(num, den)
    return out


def regression_errors(X: torch.Tensor, inputs: torch.Tensor, outputs: torch.Tensor) -> dict[str, torch.Tensor]:
    """loss = 1/(2n) ||X A - Y||_F^2 and rel_error = ||X A - Y||_F / ||Y||_F on data A (d_in, n), Y (d_out, n)."""
    check_matrix(X)
    if inputs.shape[-2] != X.shape[-1] or outputs.shape[-2] != X.shape[-2] or inputs.shape[-1] != outputs.shape[-1]:
        raise ValueError(
            f"data A {tuple(inputs.shape)}, Y {tuple(outputs.shape)} do not fit X {tuple(X.shape[-2:])}: need A (d_in, n), Y (d_out, n)"
        )
    R = X @ inputs - outputs
    n = inputs.shape[-1]
    num = torch.linalg.matrix_norm(R)
    return {"loss": num.square() / (2 * n), "rel_error": _ratio(num, torch.linalg.matrix_norm(outputs).expand_as(num))}
