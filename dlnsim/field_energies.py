"""Energies over F = R, C, H for the real trace pairing: value (B,) and gradient (B, n, n) representations.

    E(X) = 1/2 ||X - Phi||_F^2,  grad E = X - Phi;     E(X) = 1/(2n) ||X A - Y||_F^2,  grad E = (X A - Y) A*/n,

with ||.||_F^2 = Re tr(A* A) (`dlnsim.fields.norm_sq`: over H, half the complex Frobenius norm of chi).
grad E is the gradient for <., .>_F (the convention of `dlnsim.fields`).
"""
from __future__ import annotations

import torch

from .energies import Energy
from .fields import get_field, norm_sq

__all__ = ["FieldMatrixRegression", "FieldLinearRegression"]


class FieldMatrixRegression(Energy):
    """E(X) = 1/2 ||X - Phi||_F^2 = 1/2 Re tr((X - Phi)*(X - Phi)), grad E = X - Phi.

    target Phi: representation (n, n) or (B, n, n); field: its F (the norm carries the factor 1/2 over H).
    Invariant under X -> K_1 X K_2 with K_i in K_d only when Phi = 0; it is the Saxe-mode energy.
    """

    def __init__(self, target: torch.Tensor, field):
        self.field = get_field(field)
        self.target = target
        self.shape = tuple(target.shape[-2:])

    def value_and_grad(self, X):
        R = X - self.target
        return 0.5 * norm_sq(R, self.field), R

    def grad(self, X):
        return X - self.target

    def to(self, dtype=None, device=None):
        # dtype may be the real working precision: the representation's dtype follows it.
        if dtype is not None and not dtype.is_complex:
            dtype = self.field.dtype(dtype)
        self.target = self.target.to(dtype=dtype, device=device)
        return self


class FieldLinearRegression(Energy):
    """E(X) = 1/(2n) ||X A - Y||_F^2 over F, grad E = (X A - Y) A* / n.

    inputs A: (n_in, n*r) and outputs Y: (n_out, n*r) representations of d_in x n and d_out x n
    matrices over F (r = 2 over H: the n samples are the columns of the quaternion matrices).
    """

    def __init__(self, inputs: torch.Tensor, outputs: torch.Tensor, field):
        self.field = get_field(field)
        if inputs.shape[-1] != outputs.shape[-1]:
            raise ValueError(f"inputs and outputs need the same number of samples, got {inputs.shape[-1]} and {outputs.shape[-1]}")
        self.n = inputs.shape[-1] // self.field.rep
        self.inputs, self.outputs = inputs, outputs
        self.shape = (outputs.shape[-2], inputs.shape[-2])

    def value_and_grad(self, X):
        R = X @ self.inputs - self.outputs
        return 0.5 * norm_sq(R, self.field) / self.n, R @ self.inputs.mH / self.n

    def grad(self, X):
        return (X @ self.inputs - self.outputs) @ self.inputs.mH / self.n
