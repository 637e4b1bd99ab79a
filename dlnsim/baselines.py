"""Convex baselines that implicit-regularization studies compare deep linear networks against.

- Minimum nuclear norm completion:  min ||X||_*  subject to  X_ij = B_ij for observed (i, j),
  solved by ADMM on the splitting  min ||Z||_* + iota_C(X)  s.t.  Z = X,  C = {X : M o X = M o B}
  (Boyd et al., "Distributed optimization ... ADMM", 2011, section 5; the Z-step is singular-value
  soft thresholding, Cai, Candes & Shen 2010):
      Z <- SVT_{1/rho}(X - U),   X <- Pi_C(Z + U),   U <- U + Z - X.
  X is feasible at every iterate; the returned X is the last one, and its distance to the
  low-rank iterate Z (primal residual) is reported with the dual residual rho ||X_k - X_{k-1}||.
  Batched: masks and observations (..., d_out, d_in) with one problem per leading index.
  Candes & Recht (2009): an incoherent rank-r matrix is recovered exactly from enough random entries.
- Minimum-norm least squares: X = Y A^+ minimises ||X A - Y||_F and, among minimisers, ||X||_F
  (what gradient descent on X from X(0) = 0 converges to).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ._checks import check_matrix

__all__ = ["NuclearNormResult", "min_nuclear_norm_completion", "singular_value_threshold", "min_norm_least_squares"]


def singular_value_threshold(X: torch.Tensor, tau: float | torch.Tensor) -> torch.Tensor:
    """SVT_tau(X) = U diag(max(s - tau, 0)) V^T, the proximal map of tau ||.||_*; X (..., m, n), tau a number or (...,)."""
    U, s, Vh = torch.linalg.svd(X, full_matrices=False)
    if isinstance(tau, torch.Tensor):
        tau = tau.unsqueeze(-1)
    return (U * (s - tau).clamp(min=0).unsqueeze(-2)) @ Vh


@dataclass
class NuclearNormResult:
    """X (..., d_out, d_in) the solution; nuclear_norm (...,); iterations (int, for the whole batch);
    primal_residual ||Z - X||_F and dual_residual rho ||X_k - X_{k-1}||_F at the last iterate (...,);
    converged: True if both fell below tol * max(1, ||B||_F) for every problem of the batch."""

    X: torch.Tensor
    nuclear_norm: torch.Tensor
    iterations: int
    primal_residual: torch.Tensor
    dual_residual: torch.Tensor
    converged: bool


def min_nuclear_norm_completion(
    observed: torch.Tensor, mask: torch.Tensor, *, rho: float | None = None, tol: float = 1e-10,
    max_iter: int = 20000, check_every: int = 10, adapt: bool = True, relax: float = 1.0,
) -> NuclearNormResult:
    """argmin ||X||_* s.t. mask o X = mask o observed, by ADMM (see the module docstring).

    observed, mask: (..., d_out, d_in) (broadcast against each other); mask 0/1. rho: the ADMM
    penalty; default 1 / (mean |observed entry|), which makes the thresholds scale with the data.
    Stops when the primal and dual residuals are both below tol * max(1, ||mask o observed||_F)
    (checked every `check_every` iterations: one host sync each), or after max_iter iterations
    (then converged = False; the iterate is still feasible). adapt: rebalance rho at each check
    (residual balancing), which makes the iteration count insensitive to the starting rho.
    relax: over-relaxation factor in (0, 2) (1 = plain ADMM; 1.5-1.9 saved 15-25% of the iterations
    near the recovery threshold, 30x30 rank 2 with 360 entries: 16230 -> 11980 to tol 1e-6).
    Near the recovery threshold convergence is sublinear: expect 1e4 iterations for tol 1e-6.
    """
    check_matrix(observed, "observed")
    check_matrix(mask, "mask")
    if not (isinstance(relax, (int, float)) and 0 < relax < 2):
        raise ValueError(f"relax must be in (0, 2), got {relax!r}")
    shape = torch.broadcast_shapes(observed.shape, mask.shape)
    M = mask.to(observed.dtype).expand(shape)
    if not bool(((M == 0) | (M == 1)).all()):
        raise ValueError("mask must be 0/1 (observed entries 1)")
    B = M * observed.expand(shape)
    if rho is None:
        count = M.sum(dim=(-2, -1)).clamp(min=1)
        mean_abs = (B.abs().sum(dim=(-2, -1)) / count).clamp(min=torch.finfo(B.dtype).tiny)
        rho_t = 1.0 / mean_abs
    else:
        if not (isinstance(rho, (int, float)) and rho > 0):
            raise ValueError(f"rho must be a positive number, got {rho!r}")
        rho_t = torch.full(shape[:-2], float(rho), dtype=B.dtype)
    scale = torch.linalg.matrix_norm(B).clamp(min=1.0)
    X = B.clone()
    U = torch.zeros_like(B)
    free = 1.0 - M
    k = 0
    r_p = r_d = torch.full(shape[:-2], float("inf"), dtype=B.dtype)
    converged = False
    while k < max_iter:
        Z = singular_value_threshold(X - U, 1.0 / rho_t)
        if relax != 1.0:  # over-relaxation (Boyd et al. 2011, section 3.4.3)
            Z = relax * Z + (1.0 - relax) * X
        X_new = B + free * (Z + U)  # projection onto C: observed entries fixed, the rest from Z + U
        U = U + Z - X_new
        k += 1
        if k % check_every == 0 or k == max_iter:
            r_p = torch.linalg.matrix_norm(Z - X_new)
            r_d = rho_t * torch.linalg.matrix_norm(X_new - X)
            if bool(((r_p <= tol * scale) & (r_d <= tol * scale)).all()):
                X = X_new
                converged = True
                break
            if adapt:
                # residual balancing (Boyd et al. 2011, section 3.4.1): keep r_p and r_d within a factor
                # 10 of each other; the scaled dual U = y / rho is rescaled with rho.
                f = torch.where(r_p > 10 * r_d, 2.0, torch.where(r_d > 10 * r_p, 0.5, 1.0)).to(B.dtype)
                rho_t = rho_t * f
                U = U / f[..., None, None]
        X = X_new
    nuc = torch.linalg.svdvals(X).sum(dim=-1)
    return NuclearNormResult(X, nuc, k, r_p, r_d, converged)


def min_norm_least_squares(inputs: torch.Tensor, outputs: torch.Tensor, rcond: float | None = None) -> torch.Tensor:
    """X = Y A^+: the minimum-Frobenius-norm minimiser of ||X A - Y||_F; A (d_in, n), Y (d_out, n) -> (d_out, d_in).

    rcond: relative cut-off for small singular values of A (torch.linalg.pinv's default when None).
    """
    check_matrix(inputs, "inputs")
    check_matrix(outputs, "outputs")
    if inputs.shape[-1] != outputs.shape[-1]:
        raise ValueError(f"inputs (d_in, n) and outputs (d_out, n) need the same n, got {inputs.shape[-1]} and {outputs.shape[-1]}")
    pinv = torch.linalg.pinv(inputs) if rcond is None else torch.linalg.pinv(inputs, rtol=rcond)
    return outputs @ pinv
