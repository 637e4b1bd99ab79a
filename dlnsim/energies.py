"""Energies E(X) on the end-to-end matrix, batched: value (B,) and Euclidean gradient (B, d_out, d_in).

The loss on parameters is L(W) = E(phi(W)) (docs/theory.md section 1). Every energy has
`value(X)`, `grad(X)` and `value_and_grad(X)` for X of shape (B, d_out, d_in) (or (d_out, d_in));
data tensors (targets, masks) broadcast over the batch. `CustomEnergy` wraps any differentiable
function of X, with the gradient by autograd.

`ENERGIES` is the registry of the config's energy.type: config name -> class. A registered class
declares `name`, `from_config(section, widths)` (the energy of a resolved `energy:` section),
`check_config(section, widths)` (its own config rules, ConfigError naming the key), `config_keys`
(keys of the section that only it reads), `has_target` (it uses the target matrix Phi of
energy.target), `aligned_start` (a balanced start aligned with Phi is meaningful) and `batch_free` (its data has no batch dim: the CPU fast path of gradient descent
may cut the batch into blocks). Adding an energy is its class here plus its keys in config.SCHEMA.
"""
from __future__ import annotations

import os
from typing import Callable

import numpy as np
import torch

from .network import random_orthogonal
from .options import fail

__all__ = [
    "Energy",
    "MatrixRegression",
    "LinearRegression",
    "MatrixCompletion",
    "WeightDecay",
    "CustomEnergy",
    "SumEnergy",
    "ENERGIES",
    "target_matrix",
]


def _sq(X: torch.Tensor) -> torch.Tensor:
    return (X * X).sum(dim=(-2, -1))


class Energy:
    """E(X): value (..., ) and gradient (..., d_out, d_in). Subclasses override value_and_grad."""

    shape: tuple[int, int] | None = None  # (d_out, d_in) the energy needs, when it has data
    orthogonally_invariant: bool = False  # E(O1 X O2) = E(X): the singular-value law applies
    # registry data (module docstring); read from the class itself, so subclasses declare their own
    name: str | None = None
    config_keys: tuple[str, ...] = ()
    has_target: bool = False
    aligned_start: bool = False
    batch_free: bool = False

    @classmethod
    def from_config(cls, section: dict, widths: list[int]) -> "Energy":
        raise NotImplementedError(f"{cls.__name__} cannot be built from a config")

    @classmethod
    def check_config(cls, section: dict, widths: list[int]) -> None:
        """The energy's own rules on a resolved `energy:` section (raise ConfigError naming the key)."""

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

    name = "matrix_regression"
    has_target = True
    aligned_start = True
    batch_free = True

    def __init__(self, target):
        self.target = _as_matrix(target, "target")
        self.shape = tuple(self.target.shape[-2:])

    @classmethod
    def from_config(cls, section, widths):
        return cls(target_matrix(section, widths))

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

    name = "linear_regression"
    config_keys = ("data",)
    has_target = True  # the synthetic data's Phi
    batch_free = True

    @classmethod
    def from_config(cls, section, widths):
        if section["data"] is not None:
            with np.load(section["data"]) as z:
                A = torch.as_tensor(z["inputs"], dtype=torch.float64)
                Y = torch.as_tensor(z["outputs"], dtype=torch.float64)
            return cls(A, Y)
        Phi = target_matrix(section, widths)
        g = torch.Generator().manual_seed(section["seed"] + 1)
        A = torch.randn(Phi.shape[1], section["n_samples"], dtype=torch.float64, generator=g)
        Y = Phi @ A + section["noise"] * torch.randn(Phi.shape[0], section["n_samples"], dtype=torch.float64, generator=g)
        return cls(A, Y)

    @classmethod
    def check_config(cls, section, widths):
        if section["data"] is not None:
            _check_data_file(section["data"], widths[0], widths[-1])

    def __init__(self, inputs, outputs):
        A = _as_matrix(inputs, "inputs")
        Y = _as_matrix(outputs, "outputs")
        if A.shape[-1] != Y.shape[-1]:
            raise ValueError(
                f"inputs (d_in, n) and outputs (d_out, n) need the same number of samples n, got {A.shape[-1]} and {Y.shape[-1]}"
            )
        n = A.shape[-1]
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
    """E(X) = 1/2 ||mask o (X - Phi)||_F^2, grad = mask o (X - Phi) (mask of 0/1 or weights)."""

    name = "matrix_completion"
    config_keys = ("mask",)
    has_target = True
    aligned_start = True
    batch_free = True

    @classmethod
    def from_config(cls, section, widths):
        Phi = target_matrix(section, widths)
        m = section["mask"]
        d_out, d_in = Phi.shape
        if m == "diag":
            mask = torch.eye(d_out, d_in, dtype=torch.float64)
        elif m == "offdiag":
            mask = 1.0 - torch.eye(d_out, d_in, dtype=torch.float64)
        else:
            mask = torch.tensor(m, dtype=torch.float64)
        return cls(Phi, mask)

    @classmethod
    def check_config(cls, section, widths):
        m, d_in, d_out = section["mask"], widths[0], widths[-1]
        if m is None:
            fail("energy.mask", "matrix_completion needs the observed entries: diag | offdiag | a 0/1 matrix")
        if isinstance(m, list) and (len(m), len(m[0])) != (d_out, d_in):
            fail("energy.mask", f"must be d_N x d_0 = {d_out}x{d_in}, got {len(m)}x{len(m[0])}")
        if isinstance(m, list):
            bad = [v for row in m for v in row if v not in (0, 1)]
            if bad:
                fail("energy.mask", f"entries must be 0 (hidden) or 1 (observed), got {bad[0]!r}")

    def __init__(self, target, mask):
        self.target = _as_matrix(target, "target")
        self.mask = _as_matrix(mask, "mask").to(self.target.dtype)
        if self.mask.shape[-2:] != self.target.shape[-2:]:
            raise ValueError(f"mask shape {tuple(self.mask.shape)} must match target shape {tuple(self.target.shape)}")
        self.shape = tuple(self.target.shape[-2:])

    def value_and_grad(self, X):
        R = self.mask * (X - self.target)
        return 0.5 * _sq(R), R

    def grad(self, X):
        return self.mask * (X - self.target)


class WeightDecay(Energy):
    """E(X) = alpha/2 ||X||_F^2, grad = alpha X. Orthogonally invariant (the Gibbs-law test case)."""

    orthogonally_invariant = True
    name = "weight_decay"
    batch_free = True

    @classmethod
    def from_config(cls, section, widths):
        return cls(section["alpha"])

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

    batch_free = True  # when every term is (dlnsim.dynamics.gradient._batch_free asks the terms)

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


ENERGIES: dict[str, type[Energy]] = {
    cls.name: cls for cls in (MatrixRegression, LinearRegression, MatrixCompletion, WeightDecay)
}


def target_matrix(section: dict, widths: list[int]) -> torch.Tensor:
    """The target matrix Phi (d_N, d_0) of a resolved `energy:` section (float64, CPU).

    energy.target: a matrix | identity | diag (diag(spectrum), ones by default) | random
    (U diag(spectrum) V^T, Haar U, V from energy.seed, independent of the dynamics' generator and
    device; spectrum (r, r-1, ..., 1) by default, r = min(d_N, d_0)).
    """
    d_in, d_out = widths[0], widths[-1]
    r = min(d_in, d_out)
    t, spectrum = section["target"], section["spectrum"]
    if isinstance(t, list):
        return torch.tensor(t, dtype=torch.float64)
    if t == "identity":
        return torch.eye(d_out, d_in, dtype=torch.float64)
    if t == "diag":
        s = torch.ones(r, dtype=torch.float64) if spectrum is None else torch.tensor(spectrum, dtype=torch.float64)
        out = torch.zeros(d_out, d_in, dtype=torch.float64)
        out[range(r), range(r)] = s
        return out
    g = torch.Generator().manual_seed(section["seed"])
    s = torch.arange(r, 0, -1, dtype=torch.float64) if spectrum is None else torch.tensor(spectrum, dtype=torch.float64)
    U = random_orthogonal((), d_out, generator=g)[:, :r]
    V = random_orthogonal((), d_in, generator=g)[:, :r]
    return (U * s) @ V.T


def _check_data_file(path: str, d_in: int, d_out: int) -> None:
    if not os.path.isfile(path):
        fail("energy.data", f"no such file {path}")
    import zipfile

    try:
        with np.load(path, allow_pickle=False) as z:
            A, Y = z["inputs"], z["outputs"]
    except KeyError:
        fail("energy.data", f"{path} must hold arrays 'inputs' (d_0, n) and 'outputs' (d_N, n)")
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        why = "not an .npz archive of numeric arrays" if "pickle" in str(e) else str(e).splitlines()[0][:120]
        fail("energy.data", f"cannot read {path}: {why}")
    if A.ndim != 2 or Y.ndim != 2 or A.shape[0] != d_in or Y.shape[0] != d_out or A.shape[1] != Y.shape[1]:
        fail("energy.data", f"inputs {A.shape} and outputs {Y.shape} must be ({d_in}, n) and ({d_out}, n) for the network widths")
    if A.shape[1] == 0:
        fail("energy.data", f"{path} holds no samples (n = 0); give at least one column of inputs and outputs")
    if not (np.issubdtype(A.dtype, np.number) and np.issubdtype(Y.dtype, np.number)):
        fail("energy.data", f"inputs and outputs in {path} must be numeric arrays, got {A.dtype} and {Y.dtype}")
    if not (np.isfinite(A).all() and np.isfinite(Y).all()):
        fail("energy.data", f"{path} has non-finite entries (NaN or inf) in inputs or outputs; give finite data")
