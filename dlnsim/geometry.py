"""The metric operator A_{N,X} of the deep linear network and the Riemannian metric g^N.

    A_{N,X}(P) = sum_{p=1}^N (X X^T)^{(N-p)/N} P (X^T X)^{(p-1)/N}
               = U [K o (U^T P V)] V^T,        X = U diag(s) V^T,

with K the spectral kernel of `dlnsim.spectral` (docs/theory.md section 3; Arora, Cohen & Hazan
1802.06509; Menon 2411.09004). Powers A^q (q = 1/2, -1, -1/2) are the same formula with K^q.
The metric on the observables is g^N(X)(Z, Z) = tr(Z^T A_{N,X}^{-1}(Z)).

Shapes: X and P are (..., d_out, d_in) with any leading batch dims. A itself (q > 0) is defined for
every X, rectangular and rank-deficient included (the zero singular values pad the spectrum);
negative powers and g^N need full-rank X and raise ValueError otherwise.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ._checks import check_depth, check_full_rank, check_matrix
from .spectral import log_kernel, log_kernel_inf

__all__ = [
    "SVDFactors",
    "SpectralFrame",
    "metric_operator",
    "metric_operator_sqrt",
    "metric_operator_inv",
    "metric_operator_inv_sqrt",
    "metric",
    "horizontal_lift",
    "infinite_depth_factors",
    "metric_operator_inf",
    "metric_operator_inf_sqrt",
    "metric_operator_inf_inv",
    "metric_operator_inf_inv_sqrt",
    "metric_inf",
]


@dataclass
class SVDFactors:
    """The SVD factors of X, computed once and reused for every power of A_{N,X} at X.

    U: (..., d_out, d_out), s: (..., r) with r = min(d_out, d_in), V: (..., d_in, d_in)
    (full SVD, so rectangular X is covered), depth N. log_K: (..., d_out, d_in), the log of the
    kernel K of A_{N,X} in the frame (U, V). (Named SpectralFrame before issue 11; that name
    remains an alias.)
    """

    U: torch.Tensor
    s: torch.Tensor
    V: torch.Tensor
    depth: int
    log_K: torch.Tensor

    @classmethod
    def of(cls, X: torch.Tensor, depth: int) -> "SVDFactors":
        d_out, d_in = X.shape[-2], X.shape[-1]
        square = d_out == d_in
        U, s, Vh = torch.linalg.svd(X, full_matrices=not square)
        V = Vh.mT
        s_row, s_col = _pad(s, d_out), _pad(s, d_in)
        return cls(U, s, V, depth, log_kernel(s_row, depth, s_col))

    def apply(self, P: torch.Tensor, power: float = 1.0) -> torch.Tensor:
        """A_{N,X}^power (P), shape of P: U [K^power o (U^T P V)] V^T."""
        K_pow = torch.exp(power * self.log_K)
        return self.U @ (K_pow * (self.U.mT @ P @ self.V)) @ self.V.mT

    def from_singular(self, f_s: torch.Tensor) -> torch.Tensor:
        """U diag(f_s) V^T for a function f_s of the singular values, shape (..., r)."""
        r = f_s.shape[-1]
        return (self.U[..., :, :r] * f_s.unsqueeze(-2)) @ self.V[..., :, :r].mT


SpectralFrame = SVDFactors  # the name before issue 11, exported by dlnsim


def _pad(s: torch.Tensor, n: int) -> torch.Tensor:
    if s.shape[-1] == n:
        return s
    return torch.cat([s, s.new_zeros(*s.shape[:-1], n - s.shape[-1])], dim=-1)


def _factors(X: torch.Tensor, P: torch.Tensor | None, depth: int, need_full_rank: str | None) -> SVDFactors:
    check_depth(depth)
    check_matrix(X)
    if P is not None:
        check_matrix(P, "P")
        if P.shape[-2:] != X.shape[-2:]:
            raise ValueError(
                f"P must have the shape of X's tangent space {tuple(X.shape[-2:])}, got {tuple(P.shape[-2:])}"
            )
    f = SVDFactors.of(X, depth)
    if need_full_rank is not None:
        if X.shape[-1] != X.shape[-2]:
            raise ValueError(f"{need_full_rank} needs square full-rank X, got shape {tuple(X.shape)}")
        check_full_rank(f.s, need_full_rank)
    return f


def metric_operator(X: torch.Tensor, P: torch.Tensor, depth: int) -> torch.Tensor:
    """A_{N,X}(P) = sum_{p=1}^N (X X^T)^{(N-p)/N} P (X^T X)^{(p-1)/N}.

    X, P: (..., d_out, d_in) (batch dims broadcast). Returns (..., d_out, d_in).
    Self-adjoint and positive semi-definite in P; positive definite for full-rank X.
    """
    return _factors(X, P, depth, None).apply(P, 1.0)


def metric_operator_sqrt(X: torch.Tensor, P: torch.Tensor, depth: int) -> torch.Tensor:
    """A_{N,X}^{1/2}(P) = U [K^{1/2} o (U^T P V)] V^T; (..., d_out, d_in). The Langevin noise factor."""
    return _factors(X, P, depth, None).apply(P, 0.5)


def metric_operator_inv(X: torch.Tensor, P: torch.Tensor, depth: int) -> torch.Tensor:
    """A_{N,X}^{-1}(P) = U [(1/K) o (U^T P V)] V^T; (..., d, d). Needs square full-rank X."""
    return _factors(X, P, depth, "A_{N,X}^{-1}").apply(P, -1.0)


def metric_operator_inv_sqrt(X: torch.Tensor, P: torch.Tensor, depth: int) -> torch.Tensor:
    """A_{N,X}^{-1/2}(P); (..., d, d). Needs square full-rank X."""
    return _factors(X, P, depth, "A_{N,X}^{-1/2}").apply(P, -0.5)


def metric(X: torch.Tensor, Z: torch.Tensor, depth: int, Z2: torch.Tensor | None = None) -> torch.Tensor:
    """g^N(X)(Z, Z2) = tr(Z^T A_{N,X}^{-1}(Z2)) (Z2 defaults to Z); shape (...,).

    X, Z, Z2: (..., d, d), X full rank. This is the squared length of the horizontal lift of Z.
    """
    f = _factors(X, Z, depth, "the metric g^N")
    Z2 = Z if Z2 is None else Z2
    return (Z * f.apply(Z2, -1.0)).sum(dim=(-2, -1))


def horizontal_lift(weights: list[torch.Tensor], Z: torch.Tensor) -> list[torch.Tensor]:
    """Minimal-norm lift of Z in T_X to the balanced point W: V_p = W_{N:p+1}^T A^{-1}(Z) W_{p-1:1}^T.

    weights: [W_1, ..., W_N], W_p (..., d, d), balanced and full rank; Z: (..., d, d).
    Returns [V_1, ..., V_N]; on the balanced manifold ||V||^2 = g^N(X)(Z, Z) and
    d/dt phi(W + t V) = Z (phi is a Riemannian submersion).
    """
    from .network import gradient_from_end_to_end, prefix_products

    prefixes = prefix_products(weights)  # X is the last one; the lift reuses the rest
    Y = metric_operator_inv(prefixes[-1], Z, len(weights))
    return gradient_from_end_to_end(weights, Y, prefixes)


# --- the infinite-depth limit A_inf = lim_{N -> inf} A_{N,X} / N ------------------------------------


def infinite_depth_factors(X: torch.Tensor) -> SVDFactors:
    """The SVD factors of X with the log-mean kernel K^inf (`dlnsim.spectral.log_kernel_inf`); depth = inf.

    A_inf(P) = int_0^1 (X X^T)^{1-u} P (X^T X)^u du = U [K^inf o (U^T P V)] V^T.
    """
    d_out, d_in = X.shape[-2], X.shape[-1]
    U, s, Vh = torch.linalg.svd(X, full_matrices=d_out != d_in)
    return SVDFactors(U, s, Vh.mT, math.inf, log_kernel_inf(_pad(s, d_out), _pad(s, d_in)))


def _factors_inf(X: torch.Tensor, P: torch.Tensor, need_full_rank: str | None) -> SVDFactors:
    check_matrix(X)
    check_matrix(P, "P")
    if P.shape[-2:] != X.shape[-2:]:
        raise ValueError(f"P must have the shape of X's tangent space {tuple(X.shape[-2:])}, got {tuple(P.shape[-2:])}")
    f = infinite_depth_factors(X)
    if need_full_rank is not None:
        if X.shape[-1] != X.shape[-2]:
            raise ValueError(f"{need_full_rank} needs square full-rank X, got shape {tuple(X.shape)}")
        check_full_rank(f.s, need_full_rank)
    return f


def metric_operator_inf(X: torch.Tensor, P: torch.Tensor) -> torch.Tensor:
    """A_inf(P) = lim A_{N,X}(P)/N = int_0^1 (X X^T)^{1-u} P (X^T X)^u du; (..., d_out, d_in).

    Eigenvalues K^inf_ij = logmean(s_i^2, s_j^2) on u_i v_j^T. Defined for every X (a zero
    singular value gives K^inf = 0 on its row and column: A_inf is singular there, with no 1/N
    remainder as at finite depth). Converges at rate 1/N: A_{N,X}/N = (s_i s_j)^{-1/N} K^inf (1 + O(N^-2)).
    """
    return _factors_inf(X, P, None).apply(P, 1.0)


def metric_operator_inf_sqrt(X: torch.Tensor, P: torch.Tensor) -> torch.Tensor:
    """A_inf^{1/2}(P) = U [(K^inf)^{1/2} o (U^T P V)] V^T: the noise factor of the infinite-depth RLE."""
    return _factors_inf(X, P, None).apply(P, 0.5)


def metric_operator_inf_inv(X: torch.Tensor, P: torch.Tensor) -> torch.Tensor:
    """A_inf^{-1}(P) = U [(1/K^inf) o (U^T P V)] V^T; (..., d, d). Needs square full-rank X."""
    return _factors_inf(X, P, "A_inf^{-1}").apply(P, -1.0)


def metric_operator_inf_inv_sqrt(X: torch.Tensor, P: torch.Tensor) -> torch.Tensor:
    """A_inf^{-1/2}(P); (..., d, d). Needs square full-rank X."""
    return _factors_inf(X, P, "A_inf^{-1/2}").apply(P, -0.5)


def metric_inf(X: torch.Tensor, Z: torch.Tensor, Z2: torch.Tensor | None = None) -> torch.Tensor:
    """g^inf(X)(Z, Z2) = tr(Z^T A_inf^{-1}(Z2)) = lim N g^N(X)(Z, Z2); shape (...,). X full rank."""
    f = _factors_inf(X, Z, "the metric g^inf")
    Z2 = Z if Z2 is None else Z2
    return (Z * f.apply(Z2, -1.0)).sum(dim=(-2, -1))
