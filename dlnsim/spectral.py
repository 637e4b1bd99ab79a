"""Spectral kernel of the DLN metric: the eigenvalues K_ij of A_{N,X} and their log-derivatives.

    K_ij(s) = sum_{p=1}^N s_i^{2(N-p)/N} s_j^{2(p-1)/N}
            = (s_i^2 - s_j^2) / (s_i^{2/N} - s_j^{2/N})   (i != j),   K_ii = N s_i^{2(N-1)/N}

(docs/theory.md section 3). With a = s^{2/N} and delta_ij = log a_i - log a_j the geometric sum is

    K_ij = a_max^{N-1} * expm1(-N|delta|) / expm1(-|delta|),

which never subtracts nearly equal numbers: it is accurate to a few ulp for coincident, nearly
coincident (relative gap 1e-12) and zero singular values and for depth up to thousands, where
the quotient form loses every digit. Everything is a pure function of a batch of singular values
s of shape (..., n), returning (..., n, n).
"""
from __future__ import annotations

import torch

__all__ = ["log_kernel", "kernel", "dlog_kernel_ds"]


def _log_ratio(delta: torch.Tensor, depth: int) -> torch.Tensor:
    """log( sum_{k=0}^{N-1} e^{-k delta} ) for delta >= 0 (inf allowed), stable at delta -> 0."""
    # delta = 0 exactly (repeated singular values, the diagonal) is a removable 0/0: the sum is N.
    zero = delta == 0
    safe = torch.where(zero, torch.ones_like(delta), delta)
    val = torch.log(torch.expm1(-depth * safe) / torch.expm1(-safe))
    return torch.where(zero, torch.full_like(delta, float(depth)).log(), val)


def log_kernel(s: torch.Tensor, depth: int, s_col: torch.Tensor | None = None) -> torch.Tensor:
    """log K_ij, shape (..., n, m); -inf where K_ij = 0 (two zero singular values, N > 1).

    s: singular values (..., n), non-negative, indexing rows i (left singular vectors).
    s_col: (..., m) for the columns j (right singular vectors) when they differ from s: a
    rectangular X has s padded with zeros to d_out for rows and to d_in for columns.
    depth: N >= 1.
    """
    s_col = s if s_col is None else s_col
    if depth == 1:
        # A_{1,X} is the identity: K = 1 whatever s is (0^0 = 1 for the fractional powers).
        return torch.zeros(*s.shape, s_col.shape[-1], dtype=s.dtype, device=s.device)
    la_i = ((2.0 / depth) * torch.log(s)).unsqueeze(-1)  # log s^{2/N}; -inf for s = 0
    la_j = ((2.0 / depth) * torch.log(s_col)).unsqueeze(-2)
    la_max = torch.maximum(la_i, la_j)
    la_min = torch.minimum(la_i, la_j)
    both_zero = torch.isinf(la_max) & (la_max < 0)
    delta = torch.where(both_zero, torch.zeros_like(la_max), la_max - la_min)
    out = (depth - 1) * la_max + _log_ratio(delta, depth)
    return torch.where(both_zero, torch.full_like(out, -float("inf")), out)


def kernel(s: torch.Tensor, depth: int, s_col: torch.Tensor | None = None) -> torch.Tensor:
    """K_ij, shape (..., n, m): the eigenvalues of A_{N,X} on the SVD basis u_i v_j^T."""
    return torch.exp(log_kernel(s, depth, s_col))


def _mean_index(delta: torch.Tensor, depth: int) -> torch.Tensor:
    """m(delta) = sum_k k e^{-k delta} / sum_k e^{-k delta}, k = 0..N-1, for any real delta.

    Closed form 1/expm1(delta) - N/expm1(N delta); its two 1/delta poles cancel, so for
    |N delta| < 1e-2 the Bernoulli series (N-1)/2 + (1-N^2) delta/12 - (1-N^4) delta^3/720 is
    used (truncation error ~ N (N delta)^5 / 30240, below 1e-14 relative there).
    """
    n = float(depth)
    small = (n * delta).abs() < 1e-2
    safe = torch.where(small, torch.ones_like(delta), delta)
    direct = 1.0 / torch.expm1(safe) - n / torch.expm1(n * safe)
    series = (n - 1) / 2 + (1 - n**2) * delta / 12 - (1 - n**4) * delta**3 / 720
    return torch.where(small, series, direct)


def dlog_kernel_ds(s: torch.Tensor, depth: int) -> torch.Tensor:
    """D_ij = d log K_ij / d s_i, shape (..., n, n), for s > 0 (diagonal: d log K_ii / d s_i).

    With a = s^{2/N}, K_ij = sum_k a_i^{N-1-k} a_j^k, so
    d log K_ij / d s_i = (2 / (N s_i)) (N - 1 - m(delta_ij)),  delta_ij = log a_i - log a_j,
    m the mean index of the geometric weights e^{-k delta} (see _mean_index).
    The diagonal entry d log K_ii / ds_i = 2(N-1)/(N s_i) is the total derivative of
    log(N s_i^{2(N-1)/N}).
    """
    if depth == 1:
        return torch.zeros(*s.shape, s.shape[-1], dtype=s.dtype, device=s.device)
    log_a = (2.0 / depth) * torch.log(s)
    delta = log_a.unsqueeze(-1) - log_a.unsqueeze(-2)
    out = (2.0 / (depth * s.unsqueeze(-1))) * (depth - 1 - _mean_index(delta, depth))
    # The diagonal K_ii depends on s_i through both factors: twice the off-diagonal limit.
    eye = torch.eye(s.shape[-1], dtype=torch.bool, device=s.device)
    diag = 2.0 * (depth - 1) / (depth * s)
    return torch.where(eye, diag.unsqueeze(-1).expand_as(out), out)
