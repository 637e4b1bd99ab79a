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

__all__ = ["log_kernel", "kernel", "dlog_kernel_ds", "log_kernel_inf", "kernel_inf", "logmean_slope", "dlog_kernel_inf_ds"]


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


# --- the infinite-depth limit (Cohen, Menon & Veraszto, arXiv 2210.12497) ---------------------------
#
# K_ij / N = (1/N) sum_{k=0}^{N-1} s_i^{2(1 - k/N)} s_j^{2k/N} is a Riemann sum of
# int_0^1 s_i^{2(1-u)} s_j^{2u} du, the logarithmic mean of s_i^2 and s_j^2:
#
#     K^inf_ij = (s_i^2 - s_j^2) / (log s_i^2 - log s_j^2),   K^inf_ii = s_i^2,
#
# and exactly K_ij / N = (s_i s_j)^{-1/N} K^inf_ij (1 + O(N^-2)) (the sum is a midpoint rule once
# the factor (s_i s_j)^{(N-1)/N} is pulled out), so A_{N,X}/N -> A_inf at rate 1/N.

def log_kernel_inf(s: torch.Tensor, s_col: torch.Tensor | None = None) -> torch.Tensor:
    """log K^inf_ij = log logmean(s_i^2, s_j^2), shape (..., n, m); -inf where s_i or s_j is 0.

    With L = |log s_i^2 - log s_j^2| and m = max(s_i, s_j): log K^inf = log m^2 + log((1 - e^{-L})/L)
    (expm1: no cancellation at s_i ~ s_j; exactly log s_i^2 at L = 0). A zero singular value gives
    the limit value logmean(a, 0) = 0, unlike finite N where K_ij(s, 0) = s^{2(N-1)/N} > 0.
    s, s_col: as for `log_kernel` (s_col pads the columns of a rectangular X).
    """
    s_col = s if s_col is None else s_col
    l_i = (2.0 * torch.log(s)).unsqueeze(-1)
    l_j = (2.0 * torch.log(s_col)).unsqueeze(-2)
    l_max, l_min = torch.maximum(l_i, l_j), torch.minimum(l_i, l_j)
    any_zero = torch.isinf(l_min) & (l_min < 0)
    L = torch.where(any_zero | (l_max == l_min), torch.ones_like(l_max), l_max - l_min)
    out = l_max + torch.log(-torch.expm1(-L) / L)
    out = torch.where(l_max == l_min, l_max, out)
    return torch.where(any_zero, torch.full_like(out, -float("inf")), out)


def kernel_inf(s: torch.Tensor, s_col: torch.Tensor | None = None) -> torch.Tensor:
    """K^inf_ij = logmean(s_i^2, s_j^2), (..., n, m): the eigenvalues of A_inf = lim A_{N,X}/N."""
    return torch.exp(log_kernel_inf(s, s_col))


def logmean_slope(L: torch.Tensor) -> torch.Tensor:
    """g(L) = 1/(1 - e^{-L}) - 1/L, for any real L (0 -> 1/2, +inf -> 1, -inf -> 0).

    (s_i/2) d log K^inf_ij / d s_i = g(log s_i^2 - log s_j^2). The two 1/L poles cancel (the
    direct form loses ~eps/|L| absolute): for |L| < 0.1 the Bernoulli series
    1/2 + L/12 - L^3/720 + L^5/30240 - L^7/1209600 is used (truncation ~2e-8 L^9 < 1e-16 there).
    """
    small = L.abs() < 0.1
    safe = torch.where(small | torch.isnan(L), torch.ones_like(L), L)
    direct = -1.0 / torch.expm1(-safe) - 1.0 / safe
    L2 = L * L
    series = 0.5 + L * (1 / 12 + L2 * (-1 / 720 + L2 * (1 / 30240 - L2 / 1209600)))
    return torch.where(small, series, direct)


def dlog_kernel_inf_ds(s: torch.Tensor) -> torch.Tensor:
    """D_ij = d log K^inf_ij / d s_i = (2/s_i) g(log s_i^2 - log s_j^2), (..., n, n), for s > 0.

    Diagonal: d log K^inf_ii / d s_i = 2/s_i (the total derivative of log s_i^2).
    The N -> inf limit of `dlog_kernel_ds` (its (N - 1 - m(L/N))/N tends to g(L)).
    """
    l = 2.0 * torch.log(s)
    out = (2.0 / s.unsqueeze(-1)) * logmean_slope(l.unsqueeze(-1) - l.unsqueeze(-2))
    eye = torch.eye(s.shape[-1], dtype=torch.bool, device=s.device)
    return torch.where(eye, (2.0 / s).unsqueeze(-1).expand_as(out), out)
