"""Energies E(X) on the end-to-end matrix, batched: value (B,) and Euclidean gradient (B, d_out, d_in).

The loss on parameters is L(W) = E(phi(W)) (THEORY.md section 1). Every energy has
`value(X)`, `grad(X)` and `value_and_grad(X)` for X of shape (B, d_out, d_in) (or (d_out, d_in));
data tensors (targets, masks) broadcast over the batch. `CustomEnergy` wraps any differentiable
function of X, with the gradient by autograd.
"""
from __future__ import annotations

from typing import Callable

import torch

__all__ = [
    "Energy",
    "MatrixRegression",
    "LinearRegression",
    "MatrixCompletion",
    "WeightDecay",
    "CustomEnergy",
    "SumEnergy",
]


def _sq(X: torch.Tensor) -> torch.Tensor:
    return (X * X).sum(dim=(-2, -1))


class Energy:
    """E(X): value (..., ) and gradient (..., d_out, d_in). Subclasses override value_and_grad."""

    shape: tuple[int, int] | None = None  # (d_out, d_in) the energy needs, when it has data
    orthogonally_invariant: bool = False  # E(O1 X O2) = E(X): the singular-value law applies

    def value_and_grad(self, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def value(self, X: torch.Tensor) -> torch.Tensor:
        return self.value_and_grad(X)[0]

    def grad(self, X: torch.Tensor) -> torch.Tensor:
        return self.value_and_grad(X)[1]

    def __call__(self, X: torch.Tensor) -> torch.Tensor:
        return self.value(X)

    def check_shape(self, d_out: int, d_in: int) -> None:
        if self.shape is not None and tuple(self.shape) != (d_out, d_in):
            raise ValueError(
                f"{type(self).__name__} expects X of shape {tuple(self.shape)} (from its data), but the network "
                f"maps d_0={d_in} to d_N={d_out}; make the network widths match the data"
            )

    def to(self, dtype=None, device=None) -> "Energy":
        """Move data tensors to dtype/device (in place); returns self."""
        for k, v in vars(self).items():
            if isinstance(v, torch.Tensor):
                setattr(self, k, v.to(dtype=dtype if v.is_floating_point() else None, device=device))
        return self

    def __add__(self, other: "Energy") -> "Energy":
        return SumEnergy([self, other])


def _as_matrix(x, name: str) -> torch.Tensor:
    t = torch.as_tensor(x, dtype=torch.float64) if not isinstance(x, torch.Tensor) else x
    if t.dim() < 2:
        raise ValueError(f"{name} must be a matrix (d_out, d_in) or a batch (B, d_out, d_in), got shape {tuple(t.shape)}")
    return t


class MatrixRegression(Energy):
    """E(X) = 1/2 ||X - Phi||_F^2, grad = X - Phi. Phi: (d_out, d_in) or (B, d_out, d_in)."""

    def __init__(self, target):
        self.target = _as_matrix(target, "target")
        self.shape = tuple(self.target.shape[-2:])

    def value_and_grad(self, X):
        R = X - self.target
        return 0.5 * _sq(R), R

    def grad(self, X):  # the gradient-descent hot path needs no value
        return X - self.target


class LinearRegression(Energy):
    """E(X) = 1/(2n) ||X A - Y||_F^2 on data A (d_in, n), Y (d_out, n); grad = (X A - Y) A^T / n.

    Evaluated through the sufficient statistics Sigma = A A^T / n, C = Y A^T / n, c = ||Y||^2/(2n):
    E = 1/2 tr(X Sigma X^T) - tr(X C^T) + c, so a step costs O(d^3), not O(d^2 n).
    """

    def __init__(self, inputs, outputs):
        A = _as_matrix(inputs, "inputs")
        Y = _as_matrix(outputs, "outputs")
        if A.shape[-1] != Y.shape[-1]:
            raise ValueError(
                f"inputs (d_in, n) and outputs (d_out, n) need the same number of samples n, got {A.shape[-1]} and {Y.shape[-1]}"
            )
        n = A.shape[-1]
        # The samples themselves, for minibatch SGD (dlnsim.dynamics.sgd); full-batch steps use the statistics.
        self.inputs, self.outputs = A, Y
        self.sigma = A @ A.mT / n
        self.cross = Y @ A.mT / n
        self.const = _sq(Y) / (2 * n)
        self.shape = (Y.shape[-2], A.shape[-2])

    def value_and_grad(self, X):
        XS = X @ self.sigma
        G = XS - self.cross
        val = 0.5 * (XS * X).sum(dim=(-2, -1)) - (X * self.cross).sum(dim=(-2, -1)) + self.const
        return val, G

    def grad(self, X):
        return X @ self.sigma - self.cross


class MatrixCompletion(Energy):
    """E(X) = 1/2 ||mask o (X - Phi)||_F^2, grad = mask o (X - Phi) (mask of 0/1 or weights).

    target, mask: (d_out, d_in) or (B, d_out, d_in) each; a batched mask is one mask per trajectory
    (random masks: `dlnsim.tasks.random_mask(..., batch=B)`), and its B must be the ensemble's.
    """

    def __init__(self, target, mask):
        self.target = _as_matrix(target, "target")
        self.mask = _as_matrix(mask, "mask").to(self.target.dtype)
        if self.mask.shape[-2:] != self.target.shape[-2:]:
            raise ValueError(f"mask shape {tuple(self.mask.shape)} must match target shape {tuple(self.target.shape)}")
        self.shape = tuple(self.target.shape[-2:])

    def value_and_grad(self, X):
        R = self.mask * (X - self.target)
        return 0.5 * _sq(R), R

    @property
    def batch_size(self) -> int | None:
        """B of a batched target or mask (one per trajectory), None when both are shared by the ensemble."""
        dims = [t.shape[0] for t in (self.target, self.mask) if t.dim() == 3]
        return max(dims) if dims else None

    def check_batch(self, B: int) -> None:
        """Raise unless a batched target/mask has one entry per trajectory of an ensemble of B."""
        b = self.batch_size
        if b is not None and b not in (1, B):
            raise ValueError(f"the completion mask/target has a batch of {b} (one per trajectory) but the ensemble has B = {B}; draw one mask per trajectory or one for all")

    def observed_count(self) -> torch.Tensor:
        """sum of mask entries: (B,) for a batched mask, () otherwise."""
        return self.mask.sum(dim=(-2, -1))

    def grad(self, X):
        return self.mask * (X - self.target)


class WeightDecay(Energy):
    """E(X) = alpha/2 ||X||_F^2, grad = alpha X. Orthogonally invariant (the Gibbs-law test case)."""

    orthogonally_invariant = True

    def __init__(self, alpha: float = 1.0):
        if not alpha > 0:
            raise ValueError(f"alpha must be positive, got {alpha!r}")
        self.alpha = float(alpha)

    def value_and_grad(self, X):
        return 0.5 * self.alpha * _sq(X), self.alpha * X

    def grad(self, X):
        return self.alpha * X


class CustomEnergy(Energy):
    """Any differentiable fn: (B, d_out, d_in) -> (B,); gradient by autograd (slower: for exploration)."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], orthogonally_invariant: bool = False):
        self.fn = fn
        self.orthogonally_invariant = orthogonally_invariant

    def value_and_grad(self, X):
        with torch.enable_grad():
            Xr = X.detach().requires_grad_(True)
            val = self.fn(Xr)
            (g,) = torch.autograd.grad(val.sum(), Xr)
        return val.detach(), g


class SumEnergy(Energy):
    """E = sum_k E_k."""

    def __init__(self, terms):
        self.terms = list(terms)
        shapes = {t.shape for t in self.terms if t.shape is not None}
        if len(shapes) > 1:
            raise ValueError(f"energies to add have incompatible shapes {shapes}")
        self.shape = shapes.pop() if shapes else None
        self.orthogonally_invariant = all(t.orthogonally_invariant for t in self.terms)

    def value_and_grad(self, X):
        vals, grads = zip(*(t.value_and_grad(X) for t in self.terms))
        return sum(vals), sum(grads)

    def grad(self, X):
        return sum(t.grad(X) for t in self.terms)

    def to(self, dtype=None, device=None):
        for t in self.terms:
            t.to(dtype, device)
        return self
