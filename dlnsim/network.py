"""Deep linear networks as batched torch modules, and the parameter-space calculus on them.

An ensemble of B networks of depth N with widths d_0 (input), ..., d_N (output) is held as
weights [W_1, ..., W_N], W_p of shape (B, d_p, d_{p-1}); the end-to-end matrix is
X = phi(W) = W_N ... W_1 of shape (B, d_N, d_0) (docs/theory.md section 1).

The parameter gradient of L(W) = E(phi(W)) is dL/dW_p = W_{N:p+1}^T grad E(X) W_{p-1:1}^T,
computed from prefix and suffix products with 3N - 3 batched matmuls (no autograd in the hot
path; autograd is the test oracle).
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ._checks import check_depth, check_matrix
from .options import ConfigError

__all__ = [
    "DeepLinearNetwork",
    "end_to_end",
    "prefix_products",
    "gradient_from_end_to_end",
    "balancedness",
    "balanced_weights",
    "random_orthogonal",
    "check_widths",
    "read_weight_file",
]


def check_widths(widths: Sequence[int]) -> list[int]:
    """Validate widths [d_0, ..., d_N] (N >= 1, every d_p a positive integer)."""
    if isinstance(widths, (str, bytes)) or not isinstance(widths, Sequence):
        raise ValueError(f"widths must be a list [d_0, ..., d_N] of positive integers, got {widths!r}")
    widths = list(widths)
    if len(widths) < 2:
        raise ValueError(f"widths must list at least d_0 and d_1 (depth >= 1), got {widths!r}")
    for p, w in enumerate(widths):
        if isinstance(w, bool) or not isinstance(w, int) or w < 1:
            raise ValueError(f"widths[{p}] must be a positive integer, got {w!r}")
    return widths


def _check_chain(weights: Sequence[torch.Tensor]) -> None:
    if len(weights) == 0:
        raise ValueError("weights must be a non-empty list [W_1, ..., W_N]")
    for p, W in enumerate(weights, start=1):
        check_matrix(W, f"W_{p}")
        if p > 1 and W.shape[-1] != weights[p - 2].shape[-2]:
            raise ValueError(
                f"widths do not chain: W_{p} has shape {tuple(W.shape[-2:])} (d_{p}, d_{p - 1}) but "
                f"W_{p - 1} has {tuple(weights[p - 2].shape[-2:])}; need W_{p}.shape[-1] == W_{p - 1}.shape[-2]"
            )


def prefix_products(weights: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """[W_{0:1}, W_{1:1}, ..., W_{N:1}] = [I, W_1, W_2 W_1, ..., X]; entry p has shape (B, d_p, d_0)."""
    W1 = weights[0]
    eye = torch.eye(W1.shape[-1], dtype=W1.dtype, device=W1.device).expand(*W1.shape[:-2], -1, -1)
    out = [eye, W1]
    for W in weights[1:]:
        out.append(W @ out[-1])
    return out


def end_to_end(weights: Sequence[torch.Tensor]) -> torch.Tensor:
    """X = W_N ... W_1, shape (B, d_N, d_0)."""
    X = weights[0]
    for W in weights[1:]:
        X = W @ X
    return X


def gradient_from_end_to_end(
    weights: Sequence[torch.Tensor], G: torch.Tensor, prefixes: list[torch.Tensor] | None = None
) -> list[torch.Tensor]:
    """[W_{N:p+1}^T G W_{p-1:1}^T]_{p=1..N}: the parameter gradient when G = grad E(X).

    weights: [W_1..W_N], W_p (B, d_p, d_{p-1}); G: (B, d_N, d_0). prefixes: optional output of
    prefix_products (reused when the caller already formed X). Returns a list shaped like weights.
    """
    N = len(weights)
    if prefixes is None:
        prefixes = prefix_products(weights)
    grads: list[torch.Tensor] = [None] * N  # type: ignore[list-item]
    T = G  # T_p = W_{N:p+1}^T G, shape (B, d_p, d_0)
    for p in range(N, 1, -1):
        grads[p - 1] = T @ prefixes[p - 1].mT
        T = weights[p - 1].mT @ T
    grads[0] = T  # W_{0:1} = I: the product with it is exact, so skip the matmul
    return grads


def balancedness(weights: Sequence[torch.Tensor]) -> torch.Tensor:
    """G_p = W_{p+1}^T W_{p+1} - W_p W_p^T for p = 1..N-1, stacked: (B, N-1, d, d) for square widths.

    For general widths the hidden widths differ; then a list is returned (each (B, d_p, d_p)).
    Conserved by gradient flow (docs/theory.md section 2); zero on the balanced manifold.
    """
    G = [weights[p].mT @ weights[p] - weights[p - 1] @ weights[p - 1].mT for p in range(1, len(weights))]
    if len(G) == 0:
        W = weights[0]
        return W.new_zeros(*W.shape[:-2], 0, 1, 1)
    if all(g.shape == G[0].shape for g in G):
        return torch.stack(G, dim=-3)
    return G  # type: ignore[return-value]


def random_orthogonal(shape: tuple[int, ...], d: int, dtype=torch.float64, device=None, generator=None) -> torch.Tensor:
    """Haar-distributed O(d) matrices of shape (*shape, d, d) (QR of a Gaussian, sign-corrected)."""
    Z = torch.randn(*shape, d, d, dtype=dtype, device=device, generator=generator)
    Q, R = torch.linalg.qr(Z)
    signs = torch.sign(torch.diagonal(R, dim1=-2, dim2=-1))
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    return Q * signs.unsqueeze(-2)


def balanced_weights(X: torch.Tensor, depth: int, generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """A balanced point over X: W_p = Q_p diag(s^{1/N}) Q_{p-1}^T, Q_N = U, Q_0 = V, Q_1..Q_{N-1} Haar.

    X: (..., d, d) square (docs/theory.md section 2); depth N >= 1. Returns [W_1, ..., W_N], each
    (..., d, d), with phi(W) = X and G_p(W) = 0. generator: torch.Generator for the Q_p (on X's
    device); pass one for reproducibility. Rank-deficient X gives a point of the closure of M.
    """
    check_depth(depth)
    check_matrix(X, square=True)
    U, s, Vh = torch.linalg.svd(X)
    batch, d = X.shape[:-2], X.shape[-1]
    Qs = [Vh.mT] + [
        random_orthogonal(tuple(batch), d, X.dtype, X.device, generator) for _ in range(depth - 1)
    ] + [U]
    root = s ** (1.0 / depth)
    return [(Qs[p] * root.unsqueeze(-2)) @ Qs[p - 1].mT for p in range(1, depth + 1)]


class DeepLinearNetwork(nn.Module):
    """An ensemble of B deep linear networks x -> W_N ... W_1 x.

    weights: nn.ParameterList [W_1, ..., W_N], W_p of shape (B, d_p, d_{p-1}).
    Build one with a constructor classmethod (balanced, gaussian, orthogonal, identity,
    from_weights) or the generic `DeepLinearNetwork(widths, batch, init=..., ...)`.

    Default dtype float64: balancedness drift is O(h^2) per step and float32 roundoff swamps it.
    """
    INITS = ("balanced", "gaussian", "orthogonal", "identity")

    def __init__(
        self,
        widths: Sequence[int],
        batch: int = 1,
        init: str = "gaussian",
        scale: float = 1.0,
        *,
        target: torch.Tensor | None = None,
        spectrum: Sequence[float] | torch.Tensor | None = None,
        dtype: torch.dtype = torch.float64,
        device: str | torch.device | None = None,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        widths = check_widths(widths)
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch (ensemble size) must be a positive integer, got {batch!r}")
        if init not in self.INITS:
            raise ValueError(f"init must be one of {self.INITS}, got {init!r}")
        if not (isinstance(scale, (int, float)) and scale > 0):
            raise ValueError(f"scale must be a positive number, got {scale!r}")
        kw = dict(dtype=dtype, device=device)
        N = len(widths) - 1
        if init == "balanced":
            X = _balanced_target(widths, batch, scale, target, spectrum, generator, **kw)
            weights = balanced_weights(X, N, generator)
        elif init == "gaussian":
            # scale / sqrt(d_{p-1}): each layer roughly preserves the norm of its input times `scale`.
            weights = [
                torch.randn(batch, widths[p], widths[p - 1], generator=generator, **kw) * (scale / widths[p - 1] ** 0.5)
                for p in range(1, N + 1)
            ]
        elif init == "orthogonal":
            weights = []
            for p in range(1, N + 1):
                m = max(widths[p], widths[p - 1])
                Q = random_orthogonal((batch,), m, generator=generator, **kw)
                weights.append(scale * Q[..., : widths[p], : widths[p - 1]])
        else:  # identity: W_p = scale * I (rectangular: the leading identity block)
            weights = [
                scale * torch.eye(widths[p], widths[p - 1], **kw).expand(batch, -1, -1).clone()
                for p in range(1, N + 1)
            ]
        self.weights = nn.ParameterList([nn.Parameter(W) for W in weights])

    @classmethod
    def from_weights(cls, weights: Sequence[torch.Tensor], requires_grad: bool = True) -> "DeepLinearNetwork":
        """Wrap user-supplied tensors [W_1, ..., W_N], W_p (B, d_p, d_{p-1}) (a 2-D W_p means B = 1)."""
        weights = [W.unsqueeze(0) if isinstance(W, torch.Tensor) and W.dim() == 2 else W for W in weights]
        _check_chain(weights)
        B = torch.broadcast_shapes(*(W.shape[:-2] for W in weights))
        if len(B) != 1:
            raise ValueError(f"weights must have shape (B, d_p, d_(p-1)) with one batch dim, got batch shape {tuple(B)}")
        net = cls.__new__(cls)
        nn.Module.__init__(net)
        net.weights = nn.ParameterList(
            [nn.Parameter(W.expand(B[0], -1, -1).clone(), requires_grad=requires_grad) for W in weights]
        )
        return net

    @property
    def depth(self) -> int:
        return len(self.weights)

    @property
    def widths(self) -> list[int]:
        return [self.weights[0].shape[-1]] + [W.shape[-2] for W in self.weights]

    @property
    def batch_size(self) -> int:
        return self.weights[0].shape[0]

    def weight_list(self) -> list[torch.Tensor]:
        return list(self.weights)

    def end_to_end(self) -> torch.Tensor:
        """X = W_N ... W_1, shape (B, d_N, d_0)."""
        return end_to_end(list(self.weights))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply every network of the ensemble to inputs x of shape (n, d_0) or (B, n, d_0).

        Returns (B, n, d_N): row k of the output is W_N ... W_1 x_k (inputs are rows).
        """
        if x.dim() not in (2, 3) or x.shape[-1] != self.widths[0]:
            raise ValueError(
                f"x must have shape (n, {self.widths[0]}) or ({self.batch_size}, n, {self.widths[0]}), got {tuple(x.shape)}"
            )
        h = x if x.dim() == 3 else x.unsqueeze(0).expand(self.batch_size, -1, -1)
        for W in self.weights:
            h = h @ W.mT
        return h

    def balancedness(self) -> torch.Tensor:
        """G_p = W_{p+1}^T W_{p+1} - W_p W_p^T, p = 1..N-1 (see `balancedness`)."""
        return balancedness(list(self.weights))

    def extra_repr(self) -> str:
        return f"widths={self.widths}, batch={self.batch_size}, dtype={self.weights[0].dtype}"


def _balanced_target(widths, batch, scale, target, spectrum, generator, dtype, device):
    d = widths[0]
    if any(w != d for w in widths):
        raise ValueError(
            f"init 'balanced' needs equal widths (the balanced manifold is defined for square width), got {widths}"
        )
    if target is not None:
        X = torch.as_tensor(target, dtype=dtype, device=device)
        if X.dim() == 2:
            X = X.expand(batch, -1, -1)
        if X.shape != (batch, d, d):
            raise ValueError(f"target must have shape ({d}, {d}) or ({batch}, {d}, {d}), got {tuple(X.shape)}")
        return X.clone()
    U = random_orthogonal((batch,), d, dtype, device, generator)
    V = random_orthogonal((batch,), d, dtype, device, generator)
    if spectrum is None:
        s = torch.full((d,), float(scale), dtype=dtype, device=device)
    else:
        s = torch.as_tensor(spectrum, dtype=dtype, device=device)
        if s.shape != (d,) or bool((s < 0).any()):
            raise ValueError(f"spectrum must be {d} non-negative singular values, got {spectrum!r}")
    return (U * s) @ V.mT


def read_weight_file(path: str) -> list[torch.Tensor]:
    """Weights [W_1..W_N] (float64, CPU) from a .pt (a list, or a dict with 'weights') or .npz (W1..WN
    or W_1..W_N); each (d_p, d_{p-1}) or (B, d_p, d_{p-1}), finite. ConfigError naming network.file on a
    bad file. Nothing is unpickled: .npz with allow_pickle=False, .pt with torch.load(weights_only=True)
    (dlnsim.safe_io.load_torch_tensors)."""
    import zipfile

    from .safe_io import load_torch_tensors

    if not os.path.isfile(path):
        raise ConfigError(f"network.file: no such file {path}")
    if path.endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as z:
                keys = sorted((k for k in z.files if k.lstrip("W_").isdigit()), key=lambda k: int(k.lstrip("W_")))
                if not keys:
                    raise ConfigError(f"network.file: {path} holds no arrays named W1..WN (or W_1..W_N)")
                ws = [torch.as_tensor(z[k], dtype=torch.float64) for k in keys]
        except ConfigError:
            raise
        except (OSError, ValueError, TypeError, EOFError, zipfile.BadZipFile) as e:
            msg = "not an .npz archive of numeric arrays" if "pickle" in str(e) else str(e).splitlines()[0][:120]
            raise ConfigError(f"network.file: cannot read weights from {path}: {msg}") from None
    else:
        obj = load_torch_tensors(path, "network.file")
        if isinstance(obj, dict):
            obj = obj.get("weights")
        if not isinstance(obj, (list, tuple)) or not obj or not all(isinstance(w, torch.Tensor) for w in obj):
            raise ConfigError(f"network.file: {path} must hold a list of tensors [W_1, ..., W_N] (or {{'weights': [...]}})")
        ws = [w.to(torch.float64) for w in obj]
    for p, W in enumerate(ws, start=1):
        if W.dim() not in (2, 3):
            raise ConfigError(f"network.file: W_{p} must have shape (d_p, d_(p-1)) or (B, d_p, d_(p-1)), got {tuple(W.shape)}")
        if not bool(torch.isfinite(W).all()):
            raise ConfigError(f"network.file: W_{p} in {path} has non-finite entries (NaN or inf); give finite weights")
    return ws
