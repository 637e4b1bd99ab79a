"""Entropy of the deep linear network over F = R, C, H (beta = 1, 2, 4): closed form and measured.

Closed form (the real case is Menon & Yu's Theorem 4; the unified statement is Contreras, Nahas
& Kotwal, arXiv 2606.16579; derivation and checks in docs/theory.md §13):

    S_beta(X) = (N-1) log c_{d,beta} + (beta/2) sum_{i<j} log K_ij(s) + ((beta-1)/2) sum_i log K_ii(s),
    K_ij = (s_i^2 - s_j^2)/(s_i^{2/N} - s_j^{2/N}),  K_ii = N s_i^{2(N-1)/N}   (`dlnsim.spectral`),

s the singular values of X over F. The (beta/2) K_ij terms come from the beta real directions of
each off-diagonal entry of k_d; the K_ii terms from the beta - 1 imaginary directions of each
diagonal entry (absent over R), on which the Gram matrix of the orbit map is s_i^{2/N} times the
path-graph Laplacian tridiag(-1, 2, -1) of size N-1, whose determinant is N.

c_{d,beta} = vol K_d in the metric induced by <A, B>_F = Re tr(A* B):

    c_{d,beta} = 2^{beta d(d-1)/4} prod_{k=1}^d vol S^{beta k - 1},  vol S^{m-1} = 2 pi^{m/2}/Gamma(m/2),

from the fibrations K_d / K_{d-1} = S^{beta d - 1} (g -> g e_1): the d - 1 off-diagonal directions
of the first column of k_d have norm sqrt 2 in k_d and 1 on the sphere. beta = 1 is vol O(d)
(`dlnsim.entropy.log_orthogonal_volume`); beta = 2: (2 pi)^{d(d+1)/2} / prod_{k<d} k!;
beta = 4: 2^{d^2} pi^{d(d+1)} / prod_{k<=d} (2k-1)!. c_{1,2} = 2 pi, c_{1,4} = 2 pi^2.

Measured side: `orbit_log_volume_field` is the log-volume of the K_d^{N-1} orbit through any W,
(N-1) log c_{d,beta} + 1/2 log det(J^T J), J the orbit map (A_1..A_{N-1}) -> (A_p W_p - W_p A_{p-1})
in the orthonormal basis `dlnsim.fields.lie_algebra_basis`; equal to S_beta(phi(W)) on the balanced
manifold (the action is free and isometric, so the orbit's volume is vol(K_d^{N-1}) times the
constant Gram factor).
"""
from __future__ import annotations

import math

import torch

from ._checks import check_depth
from .entropy import block_tridiagonal_logdet
from .fields import get_field, lie_algebra_basis, singular_values
from .spectral import dlog_kernel_ds, log_kernel

__all__ = [
    "log_sphere_volume",
    "log_group_volume",
    "entropy_field_from_singular_values",
    "entropy_field",
    "entropy_field_grad_singular_values",
    "entropy_field_grad",
    "entropy_field_grad_in_frame",
    "orbit_log_volume_field",
]


def log_sphere_volume(m: int) -> float:
    """log vol S^{m-1} (the unit sphere in R^m) = log(2 pi^{m/2} / Gamma(m/2)); m >= 1 (vol S^0 = 2)."""
    return math.log(2.0) + m / 2 * math.log(math.pi) - math.lgamma(m / 2)


def log_group_volume(d: int, field) -> float:
    """log c_{d,beta} = log vol K_d (O(d), U(d), Sp(d)) in the metric of Re tr(A* B)."""
    F = get_field(field)
    if isinstance(d, bool) or not isinstance(d, int) or d < 1:
        raise ValueError(f"d must be an integer >= 1, got {d!r}")
    b = F.beta
    return b * d * (d - 1) / 4 * math.log(2.0) + sum(log_sphere_volume(b * k) for k in range(1, d + 1))


def entropy_field_from_singular_values(s: torch.Tensor, depth: int, field) -> torch.Tensor:
    """S_beta as a function of the singular values s (..., d) over F; shape (...,). No rank check."""
    F = get_field(field)
    d = s.shape[-1]
    logK = log_kernel(s, depth)
    i, j = torch.triu_indices(d, d, offset=1, device=s.device).unbind(0)
    off = logK[..., i, j].sum(-1)
    diag = torch.diagonal(logK, dim1=-2, dim2=-1).sum(-1) if depth > 1 else torch.zeros_like(off)
    const = (depth - 1) * log_group_volume(d, F)
    return const + 0.5 * F.beta * off + 0.5 * (F.beta - 1) * diag


def entropy_field(X: torch.Tensor, depth: int, field) -> torch.Tensor:
    """Closed-form S_beta(X) for X in M_d(F) given as its representation (..., n, n); shape (...,).

    Needs full-rank X (ValueError otherwise: the fiber is then not a K_d^{N-1} orbit of this volume).
    """
    check_depth(depth)
    F = get_field(field)
    s = singular_values(X, F)
    tol = s.shape[-1] * torch.finfo(s.dtype).eps * s.amax(-1)
    if bool((s.amin(-1) <= tol).any()):
        raise ValueError("the entropy S_beta(X) is undefined for rank-deficient X; the theory needs full-rank X")
    return entropy_field_from_singular_values(s, depth, F)


def entropy_field_grad_singular_values(s: torch.Tensor, depth: int, field) -> torch.Tensor:
    """dS_beta/ds_k = (beta/2) sum_{j != k} d log K_kj/ds_k + ((beta-1)/2) d log K_kk/ds_k; (..., d), s > 0."""
    F = get_field(field)
    D = dlog_kernel_ds(s, depth)
    diag = torch.diagonal(D, dim1=-2, dim2=-1)
    return 0.5 * F.beta * (D.sum(-1) - diag) + 0.5 * (F.beta - 1) * diag


def entropy_field_grad(X: torch.Tensor, depth: int, field) -> torch.Tensor:
    """grad S_beta(X) for <., .>_F: U diag(dS/ds) V*, as a representation (..., n, n). Full-rank X.

    Over H it is computed from any complex SVD of chi(X) with dS/ds repeated for each pair of
    singular values: a spectral function's gradient does not depend on the choice of singular
    vectors within a repeated singular value, so the result is chi of the quaternionic gradient.
    """
    U, s_rep, Vh = torch.linalg.svd(X)
    tol = s_rep.shape[-1] * torch.finfo(s_rep.dtype).eps * s_rep.amax(-1)
    if bool((s_rep.amin(-1) <= tol).any()):
        raise ValueError("the entropy gradient is undefined for rank-deficient X; the theory needs full-rank X")
    return entropy_field_grad_in_frame(U, s_rep, Vh, depth, field)


def entropy_field_grad_in_frame(U: torch.Tensor, s_rep: torch.Tensor, Vh: torch.Tensor, depth: int, field) -> torch.Tensor:
    """grad S_beta from an SVD U diag(s_rep) Vh of the representation (over H: s_rep = s doubled)."""
    F = get_field(field)
    s = s_rep[..., ::2] if F.beta == 4 else s_rep
    g = entropy_field_grad_singular_values(s, depth, F)
    g = g.repeat_interleave(2, dim=-1) if F.beta == 4 else g
    return (U * g.unsqueeze(-2).to(U.dtype)) @ Vh


def orbit_log_volume_field(weights: list[torch.Tensor], field) -> torch.Tensor:
    """Measured log-volume of the K_d^{N-1} orbit through W = (W_1..W_N) over F; shape (...,).

        (N-1) log c_{d,beta} + 1/2 log det(J^T J),   J: (A_q)_{q=1..N-1} -> (A_p W_p - W_p A_{p-1})_{p=1..N}

    with A_q in k_d written in the orthonormal basis F_a of `lie_algebra_basis` and all pairings
    <., .>_F. The Gram matrix is block tridiagonal in q (blocks of size dim k_d):
        diag_q[a, b]  = <F_a W_q, F_b W_q> + <W_{q+1} F_a, W_{q+1} F_b>,
        upper_q[a, b] = -<W_{q+1} F_a, F_b W_{q+1}>   (coupling of A_q and A_{q+1}),
    and its log-determinant is accumulated by block Cholesky. -inf where the Gram matrix is singular.
    weights: representations (..., n, n) of square d x d matrices over F.
    """
    F = get_field(field)
    N = len(weights)
    W0 = weights[0]
    d = W0.shape[-1] // F.rep
    real = W0.real.dtype if W0.is_complex() else W0.dtype
    batch = torch.broadcast_shapes(*(W.shape[:-2] for W in weights))
    const = (N - 1) * log_group_volume(d, F)
    if N == 1:
        return torch.full(batch, const, dtype=real, device=W0.device)
    B = lie_algebra_basis(d, F, real, W0.device)  # (m, n, n)
    m = B.shape[0]
    if m == 0:  # O(1): a finite group, the orbit is c^{N-1} points
        return torch.full(batch, const, dtype=real, device=W0.device)

    def gram(X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:  # X, Y (..., m, n, n) -> (..., m, m)
        # <X_a, Y_b>_F as one matmul over the flattened entries (no (m, m, n, n) intermediate)
        G = X.flatten(-2).conj() @ Y.flatten(-2).mT
        return F.pairing_scale * (G.real if G.is_complex() else G)

    def diag_block(q: int) -> torch.Tensor:
        left = B @ weights[q - 1].unsqueeze(-3)  # F_a W_q
        right = weights[q].unsqueeze(-3) @ B  # W_{q+1} F_a
        return gram(left, left) + gram(right, right)

    def upper_block(q: int) -> torch.Tensor:
        W = weights[q].unsqueeze(-3)
        return -gram(W @ B, B @ W)

    return const + 0.5 * block_tridiagonal_logdet(diag_block, upper_block, N - 1,
                                                  torch.zeros(batch, dtype=real, device=W0.device))
