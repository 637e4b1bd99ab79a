"""The metric operator A_{N,X} over F = R, C, H and the end-to-end gradient flow.

    A_{N,X}(P) = sum_{p=1}^N (X X*)^{(N-p)/N} P (X* X)^{(p-1)/N} = U [K o (U* P V)] V*,

X = U diag(s) V* an SVD over F, K the field-independent kernel of `dlnsim.spectral`. On the
balanced manifold over F, X(t) = phi(W(t)) under parameter gradient flow solves

    dX/dt = -A_{N,X}(grad E(X))

(same proof as over R: W_{N:p+1} W_{N:p+1}* = (X X*)^{(N-p)/N} by balancedness).

Over H no quaternionic SVD is needed here: chi is a *-homomorphism, so chi((X X*)^a) =
(chi(X) chi(X)^H)^a and A over H, applied in the chi representation, is the complex A of the
2d x 2d matrix chi(X) (whose spectrum is s doubled; the kernel handles the repeated values).
Any complex SVD of chi(X) gives the same operator, and its output is again a quaternion matrix
(tests/test_fields.py checks both). So one `FieldFrame` serves R, C and H.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .entropy_fields import entropy_field_grad_in_frame
from .spectral import log_kernel

__all__ = ["FieldFrame", "field_metric_operator", "end_to_end_velocity"]


@dataclass
class FieldFrame:
    """SVD frame of a square representation X (..., n, n): U, s (..., n), V, depth N, log K (..., n, n)."""

    U: torch.Tensor
    s: torch.Tensor
    V: torch.Tensor
    depth: int
    log_K: torch.Tensor

    @classmethod
    def of(cls, X: torch.Tensor, depth: int) -> "FieldFrame":
        # complex128 by default: batched complex64 eigen/singular vectors have been reported to
        # lose orthonormality on some builds; tests check U^H U = I for the dtypes used here.
        U, s, Vh = torch.linalg.svd(X)
        return cls(U, s, Vh.mH, depth, log_kernel(s, depth))

    def apply(self, P: torch.Tensor, power: float = 1.0) -> torch.Tensor:
        """A_{N,X}^power(P) = U [K^power o (U^H P V)] V^H, shape of P."""
        K = torch.exp(power * self.log_K).to(self.s.dtype)
        return self.U @ (K * (self.U.mH @ P @ self.V)) @ self.V.mH


def field_metric_operator(X: torch.Tensor, P: torch.Tensor, depth: int, power: float = 1.0) -> torch.Tensor:
    """A_{N,X}^power(P) for representations X, P (..., n, n) over any F (power = 1, 1/2, -1, ...)."""
    return FieldFrame.of(X, depth).apply(P, power)


def end_to_end_velocity(X: torch.Tensor, energy, depth: int, field=None, beta=None) -> torch.Tensor:
    """-A_{N,X}(grad E(X)) (+ A_{N,X}(grad S_beta_F(X)) / beta): the end-to-end gradient flow over F,
    or, with an inverse temperature beta (needs field), the gradient flow of the free energy
    E - S_{beta_F}/beta (THEORY.md section 5, noise-free limit), with the entropy over F."""
    frame = FieldFrame.of(X, depth)
    P = -energy.grad(X)
    if beta is not None:
        b = torch.as_tensor(beta, dtype=frame.s.dtype, device=X.device)
        b = b.reshape(-1, 1, 1) if b.dim() == 1 else b  # one inverse temperature per trajectory
        P = P + entropy_field_grad_in_frame(frame.U, frame.s, frame.V.mH, depth, field) / b
    return frame.apply(P, 1.0)
