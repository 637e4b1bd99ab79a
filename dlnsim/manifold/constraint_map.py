"""The constraint map of the balanced manifold and its coordinates.

    M = { W = (W_1, ..., W_N) of full rank : G_p(W) = W_{p+1}^T W_{p+1} - W_p W_p^T = 0, p = 1..N-1 },
    dim M = d^2 + (N-1) d(d-1)/2                                  (docs/theory.md sections 2 and 6(a)),

seen as the zero set of the constraint map c(W) = (upper-triangular entries i <= j of G_p)_{p=1..N-1}
in R^m, m = (N-1) d(d+1)/2 (p-major, then row-major i <= j, the order of torch.triu_indices).
Its Jacobian J = dc(W) and the adjoint (Frobenius on parameters, Euclidean on R^m) are

    J V     = upper triangle of  W_{p+1}^T V_{p+1} + V_{p+1}^T W_{p+1} - V_p W_p^T - W_p V_p^T,
    J^T mu  = ( 2 W_q L_{q-1} - 2 L_q W_q )_{q=1..N},   L_0 = L_N = 0,

where L_p is the symmetric matrix of mu_p: (L_p)_ii = mu_ii, (L_p)_ij = (L_p)_ji = mu_ij / 2.
J J^T couples only neighbouring layers, so it is block tridiagonal in p with blocks of size
k = d(d+1)/2:  diagonal  L -> 2 (C_p L + L C_p),  C_p = W_{p+1}^T W_{p+1} + W_p W_p^T;
coupling (p, p+1)  L -> -4 W_{p+1}^T L W_{p+1}.

Internally the constraints use orthonormal coordinates z of the symmetric matrices (basis E_ii,
(E_ij + E_ji)/sqrt 2), in which ||z_p|| = ||G_p||_F and J J^T is better conditioned; c = s * z with
s_a = 1 (i = j) or 1/sqrt 2 (i < j). The tangent projector P_W = I - J^T (J J^T)^{-1} J and the
zero set do not depend on this choice of coordinates. This module holds that basis (`_sym_basis`),
the matrices of L -> sym(P L Q) in it (`_sym_operator`), and the conversions between lists of
weights [W_1, ..., W_N] (each (..., d, d)) and the stacked tensor (..., N, d, d) of the solvers.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import torch

from .._checks import check_square_weights

__all__ = ["manifold_dimension", "constraint_count"]


def manifold_dimension(d: int, depth: int) -> int:
    """dim M = d^2 + (N-1) d(d-1)/2 = N d^2 - (N-1) d(d+1)/2."""
    return d * d + (depth - 1) * d * (d - 1) // 2


def constraint_count(d: int, depth: int) -> int:
    """m = (N-1) d(d+1)/2, the number of constraints (upper-triangular entries of G_1..G_{N-1})."""
    return (depth - 1) * d * (d + 1) // 2


# --------------------------------------------------------------------------------------------
# Orthonormal coordinates on symmetric matrices, and the index tables for Gram blocks.


class _SymBasis(NamedTuple):
    Z: torch.Tensor  # (k, d*d): rows are the orthonormal basis E_ii, (E_ij + E_ji)/sqrt 2, row-major vec
    scale: torch.Tensor  # (k,): c = scale * z
    ww: torch.Tensor  # (k, k): w_a w_b, w = 1/2 (i = j), 1/sqrt 2 (i < j)
    gather: tuple  # flat (k*k,) indices of P_{i_a i_b}, P_{i_a j_b}, P_{j_a i_b}, P_{j_a j_b} in a flattened (d, d)
    gather_t: tuple  # at (a, b) the entries Q_{j_b j_a}, Q_{i_b j_a}, Q_{j_b i_a}, Q_{i_b i_a} (= Q_mj, Q_lj, Q_mi, Q_li)
    eye_terms: tuple  # the gather_t of the identity matrix, (k, k) each


@functools.lru_cache(maxsize=64)
def _sym_basis(d: int, dtype: torch.dtype, device: torch.device) -> _SymBasis:
    i, j = torch.triu_indices(d, d, device=device)
    k = i.numel()
    diag = i == j
    r = 2.0**-0.5
    one = torch.ones(k, dtype=dtype, device=device)
    w_row = torch.where(diag, one, one * r)
    Z = torch.zeros(k, d * d, dtype=dtype, device=device)
    a = torch.arange(k, device=device)
    Z[a, i * d + j] = w_row
    Z[a, j * d + i] = w_row
    w = torch.where(diag, one * 0.5, one * r)
    pair = lambda u, v: (u[:, None] * d + v[None, :]).flatten()  # noqa: E731
    gather = (pair(i, i), pair(i, j), pair(j, i), pair(j, j))
    gather_t = tuple(pair(u, v).view(k, k).mT.flatten() for u, v in ((j, j), (i, j), (j, i), (i, i)))
    eye = torch.eye(d, dtype=dtype, device=device).flatten()
    eye_terms = tuple(eye[g].view(k, k) for g in gather_t)
    return _SymBasis(Z, w_row, w[:, None] * w[None, :], gather, gather_t, eye_terms)


def _sym_operator(P: torch.Tensor, Q: torch.Tensor | None, basis: _SymBasis) -> torch.Tensor:
    """Matrix (..., k, k) of L -> sym(P L Q) on symmetric L, in the orthonormal coordinates.

    Entry (a, b), a = (i, j), b = (l, m): w_a w_b [P_il Q_mj + P_im Q_lj + P_jl Q_mi + P_jm Q_li]
    (the four ways the basis matrices E_ij + E_ji and E_lm + E_ml pair up). Q = None means I.
    Gathers of d x d entries: O(k^2) work, no d^2 x d^2 Kronecker product.
    """
    k = basis.ww.shape[0]
    Pf = P.flatten(-2)
    PII, PIJ, PJI, PJJ = (Pf.index_select(-1, idx).unflatten(-1, (k, k)) for idx in basis.gather)
    if Q is None:
        QJJ, QIJ, QJI, QII = basis.eye_terms
    else:
        # Q_mj, Q_lj, Q_mi, Q_li with b = (l, m): the gathers at the transposed index pairs.
        Qf = Q.flatten(-2)
        QJJ, QIJ, QJI, QII = (Qf.index_select(-1, idx).unflatten(-1, (k, k)) for idx in basis.gather_t)
    return basis.ww * (PII * QJJ + PIJ * QIJ + PJI * QJI + PJJ * QII)



def _stack(weights) -> torch.Tensor:
    if isinstance(weights, torch.Tensor):
        return weights
    check_square_weights(weights, "the balanced manifold (depth >= 2)", min_depth=2)
    return torch.stack(torch.broadcast_tensors(*weights), dim=-3)


def _unstack(W: torch.Tensor) -> list[torch.Tensor]:
    return list(W.unbind(dim=-3))
