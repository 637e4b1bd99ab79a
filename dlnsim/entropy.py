"""Entropy of the deep linear network: log-volumes of the group orbits over X.

Closed form (Menon & Yu, arXiv 2509.09088, Theorem 4; docs/theory.md section 5):

    S(X) = (N-1) log c_d + 1/2 sum_{i<j} log K_ij(s),   c_d = vol O(d),

with K the spectral kernel (`dlnsim.spectral`), evaluated in log space so that nearly coincident
singular values and depth in the thousands lose no digits. The measured side,
`orbit_log_volume`, is the log-volume of the O(d)^{N-1} orbit through a parameter point W from the
Gram determinant of the orbit's tangent vectors; it equals S(phi(W)) on the balanced manifold and
measures departure from it elsewhere.

Conventions: the volume of O(d) is taken in the metric induced from the Frobenius norm on d x d
matrices (vol SO(n) = 2^{n(n-1)/4} prod_{k=1}^{n-1} vol S^k, vol O(n) = 2 vol SO(n)); the so(d)
basis is F_ij = (E_ij - E_ji)/sqrt 2, orthonormal for tr(A^T B).
"""
from __future__ import annotations

import math

import torch

from ._checks import check_depth, check_full_rank, check_matrix, check_square_weights
from .spectral import dlog_kernel_ds, log_kernel, log_kernel_inf

__all__ = [
    "log_orthogonal_volume",
    "entropy",
    "entropy_from_singular_values",
    "entropy_grad_singular_values",
    "entropy_grad",
    "orbit_log_volume",
    "so_basis",
]


def log_orthogonal_volume(d: int) -> float:
    """log c_d = log vol O(d) (Frobenius-induced metric). c_1 = 2, c_2 = 4 sqrt(2) pi."""
    if isinstance(d, bool) or not isinstance(d, int) or d < 1:
        raise ValueError(f"d must be an integer >= 1, got {d!r}")
    log_sphere = lambda k: math.log(2.0) + (k + 1) / 2 * math.log(math.pi) - math.lgamma((k + 1) / 2)  # noqa: E731
    log_so = d * (d - 1) / 4 * math.log(2.0) + sum(log_sphere(k) for k in range(1, d))
    return math.log(2.0) + log_so


def _upper_pairs(n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.triu_indices(n, n, offset=1, device=device).unbind(0)


def entropy_from_singular_values(s: torch.Tensor, depth: int) -> torch.Tensor:
    """S as a function of the singular values s (..., d) of X; shape (...,). No rank check.

    depth = inf gives the renormalized limit S_inf = 1/2 sum_{i<j} log K^inf_ij
    (S_N minus its divergent part (N-1) log c_d + (d(d-1)/4) log N; `dlnsim.depth_limit`).
    """
    i, j = _upper_pairs(s.shape[-1], s.device)
    if depth == math.inf:
        return 0.5 * log_kernel_inf(s)[..., i, j].sum(dim=-1)
    logK = log_kernel(s, depth)[..., i, j]
    const = (depth - 1) * log_orthogonal_volume(s.shape[-1])
    return const + 0.5 * logK.sum(dim=-1)


def entropy(X: torch.Tensor, depth: int) -> torch.Tensor:
    """Closed-form entropy S(X) = (N-1) log c_d + 1/2 sum_{i<j} log K_ij(s); shape (...,).

    X: (..., d, d), square and full rank (ValueError otherwise). depth: N >= 1.
    Invariant under X -> O_1 X O_2 and under the sign of det X.
    """
    check_depth(depth)
    check_matrix(X, square=True)
    s = torch.linalg.svdvals(X)
    check_full_rank(s, "the entropy S(X)")
    return entropy_from_singular_values(s, depth)


def entropy_grad_singular_values(s: torch.Tensor, depth: int) -> torch.Tensor:
    """dS/ds_k = 1/2 sum_{j != k} d log K_kj / d s_k, shape (..., d), for s > 0."""
    D = dlog_kernel_ds(s, depth)
    D = D - torch.diag_embed(torch.diagonal(D, dim1=-2, dim2=-1))
    return 0.5 * D.sum(dim=-1)


def entropy_grad(X: torch.Tensor, depth: int) -> torch.Tensor:
    """Euclidean gradient of S at X: U diag(dS/ds) V^T, shape (..., d, d). Needs full-rank X."""
    from .geometry import SVDFactors

    check_depth(depth)
    check_matrix(X, square=True)
    frame = SVDFactors.of(X, depth)
    check_full_rank(frame.s, "the entropy gradient")
    return frame.from_singular(entropy_grad_singular_values(frame.s, depth))


def so_basis(d: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """Orthonormal basis F_ij = (E_ij - E_ji)/sqrt 2, i < j, of so(d); shape (d(d-1)/2, d, d)."""
    i, j = _upper_pairs(d, device)
    m = i.numel()
    F = torch.zeros(m, d, d, dtype=dtype, device=device)
    k = torch.arange(m, device=device)
    F[k, i, j] = 2.0**-0.5
    F[k, j, i] = -(2.0**-0.5)
    return F


def orbit_log_volume(weights: list[torch.Tensor]) -> torch.Tensor:
    """Measured log-volume of the O(d)^{N-1} orbit through W = (W_1, ..., W_N); shape (B,) / (...,).

        (N-1) log c_d + 1/2 log det(J^T J),
        J: (A_1, ..., A_{N-1}) in so(d)^{N-1} -> (A_p W_p - W_p A_{p-1})_{p=1..N},  A_0 = A_N = 0.

    weights: [W_1, ..., W_N], each (..., d, d) (square widths: the group is O(d)^{N-1}).
    The Gram matrix J^T J is block tridiagonal in the layer index (block size d(d-1)/2):
        diag_q  [a, b] = tr(F_a^T F_b W_q W_q^T) + tr(F_a^T W_{q+1}^T W_{q+1} F_b),
        upper_q [a, b] = -tr(F_a^T W_{q+1}^T F_b W_{q+1}),
    and its log-determinant is accumulated by block Cholesky, O(N d^6) rather than O(N^3 d^6).
    Returns -inf where the Gram matrix is singular (rank-deficient W).
    """
    d = check_square_weights(weights, "orbit_log_volume")
    N = len(weights)
    batch = torch.broadcast_shapes(*(W.shape[:-2] for W in weights))
    const = (N - 1) * log_orthogonal_volume(d)
    W0 = weights[0]
    if N == 1 or d == 1:
        # The group is trivial (N = 1) or finite (O(1) = {+-1}): the orbit is c_d^{N-1} points.
        return torch.full(batch, const, dtype=W0.dtype, device=W0.device)
    F = so_basis(d, W0.dtype, W0.device)

    def diag_block(q: int) -> torch.Tensor:  # q = 1..N-1 (layer of A_q)
        M = weights[q - 1] @ weights[q - 1].mT  # W_q W_q^T
        P = weights[q].mT @ weights[q]  # W_{q+1}^T W_{q+1}
        left = torch.einsum("aij,bik,...kj->...ab", F, F, M)
        right = torch.einsum("aij,...ik,bkj->...ab", F, P, F)
        return left + right

    def upper_block(q: int) -> torch.Tensor:  # coupling of A_q and A_{q+1} through W_{q+1}
        W = weights[q]
        T = W.mT.unsqueeze(-3) @ F @ W.unsqueeze(-3)  # (..., m, d, d): W^T F_b W
        return -torch.einsum("aij,...bij->...ab", F, T)

    return const + 0.5 * block_tridiagonal_logdet(diag_block, upper_block, N - 1,
                                                  torch.zeros(batch, dtype=W0.dtype, device=W0.device))


def block_tridiagonal_logdet(diag_block, upper_block, n: int, zero: torch.Tensor) -> torch.Tensor:
    """log det of the symmetric positive block-tridiagonal matrix with diagonal blocks diag_block(q)
    and upper blocks upper_block(q) (coupling q and q+1), q = 1..n, by block Cholesky
    (S_1 = D_1, S_{q+1} = D_{q+1} - C_q^T S_q^{-1} C_q; log det = sum_q log det S_q).

    zero: a tensor of zeros of the batch shape and real dtype of the result. A block that is not
    positive definite (a degenerate orbit) gives -inf for that batch entry instead of an error.
    """
    logdet = zero
    S = diag_block(1)
    for q in range(1, n + 1):
        L, info = torch.linalg.cholesky_ex(S)
        logdet = logdet + 2.0 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
        logdet = torch.where(info == 0, logdet, torch.full_like(logdet, -float("inf")))
        if q < n:
            C = upper_block(q)
            S = diag_block(q + 1) - C.mT @ torch.cholesky_solve(C, L)  # Schur complement
    return logdet
