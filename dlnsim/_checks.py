"""Input validation shared by the public functions: one-line ValueErrors that name the fix.

These checks may synchronise with the host (they read tensor values); the simulation hot loops
call the unchecked internals instead.
"""
from __future__ import annotations

import torch


def check_depth(depth) -> int:
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be an integer >= 1, got {depth!r}")
    return depth


def check_matrix(X: torch.Tensor, name: str = "X", square: bool = False) -> torch.Tensor:
    if not isinstance(X, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (..., d_out, d_in), got {type(X).__name__}")
    if X.dim() < 2:
        raise ValueError(f"{name} must have shape (..., d_out, d_in), got shape {tuple(X.shape)}")
    if not X.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor (float64 recommended), got {X.dtype}")
    if square and X.shape[-1] != X.shape[-2]:
        raise ValueError(
            f"{name} must be square (..., d, d) here: the theory (docs/theory.md sections 3-9) is for "
            f"square width, got shape {tuple(X.shape)}"
        )
    return X


def rank_tolerance(s: torch.Tensor) -> torch.Tensor:
    """Numerical-rank threshold max(d) * eps * s_max, the usual pinv/matrix_rank cut-off."""
    eps = torch.finfo(s.dtype).eps
    return max(s.shape[-1], 1) * eps * s.amax(dim=-1)


def check_full_rank(s: torch.Tensor, what: str) -> None:
    """Raise if any matrix of the batch (given by its singular values) is numerically rank-deficient."""
    bad = s.amin(dim=-1) <= rank_tolerance(s)
    if bool(bad.any()):
        idx = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"{what} is undefined for rank-deficient X (batch index {idx}: smallest singular value "
            f"{float(s.amin(dim=-1)[idx]):.3g} <= rank tolerance); the theory needs full-rank X"
        )


def check_square_weights(weights, what: str, min_depth: int = 1) -> int:
    """Validate [W_1, ..., W_N] with every W_p of shape (..., d, d) and N >= min_depth; returns d."""
    if not isinstance(weights, (list, tuple)) or len(weights) < min_depth or len(weights) == 0:
        raise ValueError(
            f"{what}: weights must be a list [W_1, ..., W_N] of N >= {max(min_depth, 1)} tensors (..., d, d)"
        )
    d = weights[0].shape[-1] if isinstance(weights[0], torch.Tensor) else None
    for p, W in enumerate(weights, start=1):
        check_matrix(W, f"W_{p}")
        if W.shape[-2:] != (d, d):
            raise ValueError(
                f"{what} needs square widths (all W_p of shape (d, d)); W_{p} has shape "
                f"{tuple(W.shape[-2:])} but W_1 has ({d}, {d})"
            )
    return d


def check_beta(beta) -> None:
    """An inverse temperature is a positive finite number or a (B,) tensor of them (one per trajectory)."""
    b = torch.as_tensor(beta)
    if b.dim() > 1 or not bool(torch.isfinite(b).all()) or bool((b <= 0).any()):
        raise ValueError(f"beta must be positive and finite (a number or a (B,) tensor), got {beta!r}")


def as_beta(beta, ref: torch.Tensor, cache: dict | None = None, trailing: int = 2) -> torch.Tensor:
    """The one beta normaliser: beta on ref's dtype/device, a scalar, or (B,) followed by `trailing`
    singleton dims ((B, 1, 1) by default, to broadcast against (B, d, d); trailing=0 gives (B,)).

    cache: a dict kept by the caller (a scheme), so that the host-to-device copy happens once per
    run rather than at every step (a blocking copy on an accelerator). Unchecked: call check_beta
    once where beta enters.
    """
    key = (ref.dtype, ref.device, trailing)
    if cache is not None and key in cache:
        return cache[key]
    b = torch.as_tensor(beta, dtype=ref.dtype, device=ref.device)
    b = b.reshape((-1,) + (1,) * trailing) if b.dim() == 1 else b
    if cache is not None:
        cache[key] = b
    return b
