"""The infinite-depth limit of the DLN geometry: the renormalized entropy and an independent A_inf.

With time rescaled by the depth N (Cohen, Menon & Veraszto, arXiv 2210.12497), the metric operator
A_{N,X}/N tends to A_inf, whose eigenvalues are logarithmic means (`dlnsim.spectral.kernel_inf`):

    A_inf(P) = int_0^1 (X X^T)^{1-u} P (X^T X)^u du,  K^inf_ij = (s_i^2 - s_j^2)/(log s_i^2 - log s_j^2).

Entropy. S_N(X) = (N-1) log c_d + 1/2 sum_{i<j} log K^N_ij diverges as N -> inf. Since
K^N_ij = N (s_i s_j)^{-1/N} K^inf_ij (1 + O(N^-2)),

    S_N(X) = (N-1) log c_d + (d(d-1)/4) log N + S_inf(X) - ((d-1)/(2N)) log|det X| + O(N^-2),
    S_inf(X) = 1/2 sum_{i<j} log K^inf_ij(s).

The divergent part D_N = (N-1) log c_d + (d(d-1)/4) log N depends on (N, d) only, so the
renormalized entropy S_N - D_N has the same gradient as S_N and tends to S_inf at rate 1/N with the
explicit leading coefficient -((d-1)/2) log|det X| (tests/test_infinite_depth.py).

`metric_operator_inf_quadrature` evaluates A_inf by Gauss-Legendre quadrature of the integral with
eigh-based matrix powers: no log-mean kernel involved, the test oracle of the SVD formula and,
through automatic differentiation, of the infinite-depth RLE drift.
Shapes: X (..., d, d) square (the entropy needs full rank).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ._checks import check_depth, check_full_rank, check_matrix
from .entropy import entropy_from_singular_values, log_orthogonal_volume
from .spectral import logmean_slope

__all__ = [
    "entropy_divergent_part",
    "entropy_renormalized",
    "entropy_inf",
    "entropy_inf_from_singular_values",
    "entropy_inf_grad_singular_values",
    "entropy_inf_grad",
    "metric_operator_inf_quadrature",
    "saxe_time_inf",
    "saxe_mode_inf",
]


def entropy_divergent_part(d: int, depth: int) -> float:
    """D_N = (N-1) log c_d + (d(d-1)/4) log N: the part of S_N that diverges as N -> inf."""
    check_depth(depth)
    return (depth - 1) * log_orthogonal_volume(d) + d * (d - 1) / 4 * math.log(depth)


def entropy_inf_from_singular_values(s: torch.Tensor) -> torch.Tensor:
    """S_inf = 1/2 sum_{i<j} log logmean(s_i^2, s_j^2); s (..., d) -> (...,). No rank check."""
    return entropy_from_singular_values(s, math.inf)


def entropy_inf(X: torch.Tensor) -> torch.Tensor:
    """S_inf(X) = lim_{N -> inf} [S_N(X) - D_N]; X (..., d, d) full rank -> (...,)."""
    check_matrix(X, square=True)
    s = torch.linalg.svdvals(X)
    check_full_rank(s, "the entropy S_inf(X)")
    return entropy_inf_from_singular_values(s)


def entropy_renormalized(X: torch.Tensor, depth) -> torch.Tensor:
    """S_N(X) - D_N for an integer depth N (tends to S_inf at rate 1/N); S_inf(X) for depth = inf."""
    if depth == math.inf:
        return entropy_inf(X)
    check_depth(depth)
    check_matrix(X, square=True)
    s = torch.linalg.svdvals(X)
    check_full_rank(s, "the entropy S(X)")
    return entropy_from_singular_values(s, depth) - entropy_divergent_part(X.shape[-1], depth)


def entropy_inf_grad_singular_values(s: torch.Tensor) -> torch.Tensor:
    """dS_inf/ds_i = (1/s_i) sum_{j != i} g(log s_i^2 - log s_j^2), g = `logmean_slope`; (..., d), s > 0."""
    l = 2.0 * torch.log(s)
    g = logmean_slope(l.unsqueeze(-1) - l.unsqueeze(-2))
    g = g - torch.diag_embed(torch.diagonal(g, dim1=-2, dim2=-1))
    return g.sum(dim=-1) / s


def entropy_inf_grad(X: torch.Tensor) -> torch.Tensor:
    """Euclidean gradient of S_inf: U diag(dS_inf/ds) V^T, (..., d, d). Needs full-rank X."""
    check_matrix(X, square=True)
    U, s, Vh = torch.linalg.svd(X)
    check_full_rank(s, "the entropy gradient")
    return (U * entropy_inf_grad_singular_values(s).unsqueeze(-2)) @ Vh


def metric_operator_inf_quadrature(X: torch.Tensor, P: torch.Tensor, nodes: int = 48) -> torch.Tensor:
    """Oracle: int_0^1 (X X^T)^{1-u} P (X^T X)^u du by `nodes`-point Gauss-Legendre; (..., d, d).

    The integrand is entire in u, e^{u log(lambda_j/lambda_i)}: the rule converges geometrically, to
    roundoff for condition numbers up to ~1e3 at 48 nodes. Full-rank X (eigh of X X^T and X^T X,
    once; the powers per node). Differentiable by autograd (distinct singular values). For tests.
    """
    u, w = np.polynomial.legendre.leggauss(nodes)
    u = torch.as_tensor((u + 1) / 2, dtype=X.dtype, device=X.device)  # [-1, 1] -> [0, 1]
    w = torch.as_tensor(w / 2, dtype=X.dtype, device=X.device)
    lam_l, Ql = torch.linalg.eigh(X @ X.mT)
    lam_r, Qr = torch.linalg.eigh(X.mT @ X)
    log_l, log_r = lam_l.clamp_min(0).log(), lam_r.clamp_min(0).log()
    Pf = Ql.mT @ P @ Qr  # P in the eigenbases: the integrand is diagonal-scaled there
    # weight_ab = sum_k w_k lam_l,a^{1-u_k} lam_r,b^{u_k}
    e = torch.exp((1 - u) * log_l.unsqueeze(-1).unsqueeze(-1) + u * log_r.unsqueeze(-2).unsqueeze(-1))
    return Ql @ ((e * w).sum(-1) * Pf) @ Qr.mT


def saxe_time_inf(u, lam, u0) -> torch.Tensor:
    """Time for an aligned mode of the depth-inf flow (time in units of N) to go from u0 to u:

        du/dt = K^inf_ii (lambda - u) = u^2 (lambda - u),
        t(u) = T(u) - T(u0),  T(u) = -1/(lambda u) + log(u / |lambda - u|) / lambda^2   (lambda > 0),

    the N -> inf limit of the Saxe modes du/dt = u^{2(N-1)/N} (lambda - u). u between u0 and lambda.
    """
    u, lam, u0 = torch.broadcast_tensors(*(torch.as_tensor(v, dtype=torch.float64) for v in (u, lam, u0)))
    T = lambda v: -1.0 / (lam * v) + torch.log(v / (lam - v).abs()) / lam**2  # noqa: E731
    return T(u) - T(u0)


def saxe_mode_inf(t, lam, u0) -> torch.Tensor:
    """u(t) for du/dt = u^2 (lambda - u), u(0) = u0: the depth-inf Saxe mode (float64, broadcast shape).

    lambda >= 0, u0 > 0, t >= 0. lambda = 0: u = (u0^{-2} + 2 t)^{-1/2}. Otherwise t(u) of
    `saxe_time_inf` is inverted by bisection in z = -log|(lambda - u)/(lambda - u0)|, on which it increases.
    """
    t, lam, u0 = torch.broadcast_tensors(*(torch.as_tensor(v, dtype=torch.float64) for v in (t, lam, u0)))
    if bool((lam < 0).any()) or bool((u0 <= 0).any()) or bool((t < 0).any()):
        raise ValueError("saxe_mode_inf needs lam >= 0, u0 > 0 and t >= 0")
    decay = torch.where(lam == 0, torch.ones_like(lam), lam)
    gap0 = decay - u0
    gap0 = torch.where(gap0 == 0, torch.ones_like(gap0), gap0)
    lo, hi = torch.zeros_like(t), torch.full_like(t, 745.0)  # e^{-745} underflows: u = lambda, t = inf
    for _ in range(110):
        mid = 0.5 * (lo + hi)
        below = saxe_time_inf(decay - gap0 * torch.exp(-mid), decay, u0) < t
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    out = decay - gap0 * torch.exp(-0.5 * (lo + hi))
    out = torch.where(u0 == lam, lam, out)
    return torch.where(lam == 0, (u0**-2 + 2 * t) ** -0.5, out)
