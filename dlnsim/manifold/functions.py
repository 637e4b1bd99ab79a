"""Public functions of the balanced manifold on lists of weights, the choice of solver, and checks.

weights: [W_1, ..., W_N], each (..., d, d) (any leading batch dims); constraint vectors in the
coordinates c = upper-triangular entries of G_p (dlnsim.manifold.constraint_map). The schemes ask
`make_projection_solver` for the solver object at stacked weights (..., N, d, d); the `check_*`
functions are host-side (they read tensor values).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from .. import _device
from .._checks import rank_tolerance
from .constraint_map import _SymBasis, _stack, _unstack
from .exact import DENSE_MAX, NEWTON_METHODS, ExactConstraintSolver
from .singular_frame import SingularFrameSolver

__all__ = [
    "constraints",
    "constraint_jacobian",
    "constraint_jacobian_adjoint",
    "gram_blocks",
    "tangent_projection",
    "newton_projection",
    "Projection",
    "check_point_on_manifold",
    "check_vector_on_tangent",
    "SOLVERS",
    "make_projection_solver",
]

SOLVERS = ("auto", "frame", "exact")  # the values of the Langevin schemes' option `solver`


def make_projection_solver(W: torch.Tensor, solver: str = "frame"):
    """The solver object at stacked W: SingularFrameSolver ("frame") or ExactConstraintSolver ("exact").

    "auto": "exact" where the constraints are few (m = (N-1) d(d+1)/2 <= DENSE_MAX: d = 2 up to N = 9,
    d = 3 up to N = 5, the sizes of most stationary studies), "frame" above on the CPU (where its
    exact-Newton fallback runs), "exact" elsewhere. Why: with few constraints the exact dense Newton
    is a handful of launch-bound batched ops per update and converges quadratically, while the
    frame iteration hands 12-50% of the trajectories to that same exact Newton at the step sizes of
    stationary studies (|v| / l_min ~ 1: the law has mass near rank-deficient X); measured B = 1024,
    E = ||X||^2/2, beta = 1, h = 0.05 (scripts/bench.py (f)): projected step 4.4 vs 25 us per
    trajectory at d = 2, N = 2; 18 vs 68 us at d = 3, N = 2; Metropolis 8.8 vs 53 and 28 vs 126 us.
    Above DENSE_MAX the exact path is block-tridiagonal O(N d^6) and the frame solver wins; without
    the fallback (accelerators) the simplified iteration fails often at large |v| / l_min (measured
    d = 2, N = 3, h = 0.05, beta = 1: 24% at max_iter = 40, against 0.01% for exact Newton).
    """
    if solver == "auto":
        N, d = W.shape[-3], W.shape[-1]
        few = (N - 1) * d * (d + 1) // 2 <= DENSE_MAX
        solver = "frame" if (_device.host_reads_free(W.device) and not few) else "exact"
    if solver == "frame":
        return SingularFrameSolver(W)
    if solver == "exact":
        return ExactConstraintSolver(W)
    raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")


def _to_z(mu: torch.Tensor, depth: int, basis: _SymBasis) -> torch.Tensor:
    k = basis.scale.shape[0]
    if mu.shape[-1] != (depth - 1) * k:
        raise ValueError(f"mu must have (N-1) d(d+1)/2 = {(depth - 1) * k} entries in its last dim, got {mu.shape[-1]}")
    return mu.unflatten(-1, (depth - 1, k)) * basis.scale  # c-adjoint: J_c^T mu = J_z^T (s * mu)


# --------------------------------------------------------------------------------------------
# Public functions on lists of weights (coordinates c = upper-triangular entries).


def constraints(weights) -> torch.Tensor:
    """c(W): upper-triangular entries (i <= j) of G_p = W_{p+1}^T W_{p+1} - W_p W_p^T, p = 1..N-1.

    weights: [W_1, ..., W_N], each (..., d, d). Returns (..., (N-1) d(d+1)/2), p-major.
    """
    f = ExactConstraintSolver.of(weights)
    return (f.residual() * f.basis.scale).flatten(-2)


def constraint_jacobian(weights, V) -> torch.Tensor:
    """J V = dc(W)[V] for a parameter-space vector V (list like weights); (..., (N-1) d(d+1)/2)."""
    f = ExactConstraintSolver.of(weights)
    return (f.jvp(_stack(V)) * f.basis.scale).flatten(-2)


def constraint_jacobian_adjoint(weights, mu: torch.Tensor) -> list[torch.Tensor]:
    """J^T mu for mu (..., (N-1) d(d+1)/2): the list (2 W_q L_{q-1} - 2 L_q W_q)_{q=1..N}.

    The adjoint for the Frobenius product on parameters and the Euclidean one on R^m:
    <J V, mu> = sum_p <V_p, (J^T mu)_p>.
    """
    f = ExactConstraintSolver.of(weights)
    return _unstack(f.vjp(_to_z(mu, f.depth, f.basis)))


def gram_blocks(weights) -> tuple[torch.Tensor, torch.Tensor]:
    """Blocks of J J^T (coordinates c): diag (..., N-1, k, k) and upper (..., N-2, k, k) = block (p, p+1).

    k = d(d+1)/2. The lower blocks are the transposes of `upper`; all other blocks vanish.
    """
    f = ExactConstraintSolver.of(weights)
    diag, upper = f.gram_blocks()
    s = f.basis.scale
    scale = s[:, None] * s[None, :]
    return diag * scale, upper * scale


def tangent_projection(weights, V) -> list[torch.Tensor]:
    """P_W V = V - J^T (J J^T)^{-1} J V, the orthogonal projection onto ker J = T_W M (on M).

    weights, V: lists [.._1, ..., .._N] of (..., d, d). Off M this is the projection onto the
    tangent space of the level set of c through W. Undefined (garbage) where J J^T is singular.
    """
    f = ExactConstraintSolver.of(weights)
    return _unstack(f.project(_stack(V)))


class Projection(NamedTuple):
    """Result of newton_projection."""

    weights: list  # [Y_1, ..., Y_N]: x + v + J(x)^T mu
    mu: torch.Tensor  # (..., (N-1) d(d+1)/2) multipliers in coordinates c
    iterations: torch.Tensor  # (...,) Newton updates applied
    converged: torch.Tensor  # (...,) bool
    residual: torch.Tensor  # (...,) max_p ||G_p(Y)||_F


def newton_projection(weights, step, *, tol: float = 1e-10, max_iter: int = 12, method: str = "newton") -> Projection:
    """Project x + v back to M along the normal space at x: find mu with c(x + v + J(x)^T mu) = 0.

    weights: x = [W_1, ..., W_N] on M (each (..., d, d)); step: v, a list of the same shapes
    (normally tangent at x). tol: absolute tolerance on max_p ||G_p||_F (units of |W|^2; float64
    roundoff in G_p is ~1e-16 |W|^2). max_iter: most updates per trajectory (masked once
    converged). method: "newton" (exact Jacobian), "chord" or "quasi" (module docstring).
    """
    if method not in NEWTON_METHODS:
        raise ValueError(f"method must be one of {NEWTON_METHODS}, got {method!r}")
    if not (isinstance(max_iter, int) and max_iter >= 1):
        raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")
    if not (tol > 0):
        raise ValueError(f"tol must be positive, got {tol!r}")
    f = ExactConstraintSolver.of(weights)
    r = f.newton(_stack(step), tol=tol, max_iter=max_iter, method=method)
    mu_c = (r.mu / f.basis.scale).flatten(-2)
    return Projection(_unstack(r.Y), mu_c, r.iterations, r.converged, r.residual)


# --------------------------------------------------------------------------------------------
# geoopt-style checks (host side: they read tensor values).


def check_point_on_manifold(weights, atol: float = 1e-8, rtol: float = 1e-10) -> tuple[bool, str | None]:
    """(True, None) if W is on M: max_p ||G_p||_F <= atol + rtol max_p ||W_p||_F^2 and W full rank.

    Otherwise (False, reason) with a readable reason naming the layer pair, the error and the
    batch index of the first offender.
    """
    try:
        W = _stack(weights)
    except ValueError as e:
        return False, str(e)
    if not bool(torch.isfinite(W).all()):
        return False, "weights contain NaN or inf"
    G = ExactConstraintSolver(W).residual().norm(dim=-1)  # (..., N-1) = ||G_p||_F
    scale = (W * W).sum(dim=(-2, -1)).amax(dim=-1)
    tol = atol + rtol * scale
    bad = G > tol[..., None]
    if bool(bad.any()):
        idx, p, where = _first_offender(bad)
        err = float(G[tuple(idx)])
        return False, (
            f"W_{p + 1}^T W_{p + 1} != W_{p} W_{p}^T: ||G_{p}||_F = {err:.3g} > tolerance "
            f"{float(tol[tuple(idx[:-1])]):.3g}{where}"
        )
    s = torch.linalg.svdvals(W)
    smin = s.amin(dim=-1)
    bad = smin <= rank_tolerance(s)
    if bool(bad.any()):
        idx, p, where = _first_offender(bad)
        return False, (
            f"W_{p} is rank-deficient (smallest singular value {float(smin[tuple(idx)]):.3g}): M consists of "
            f"full-rank points{where}"
        )
    return True, None


def _first_offender(bad: torch.Tensor):
    """For a (..., N-1 or N) mask of failing layers: the first failing index, its layer number p
    (1-based) and a ' (batch index ...)' phrase for messages."""
    idx = bad.nonzero()[0]
    where = "" if idx.numel() == 1 else f" (batch index {tuple(int(i) for i in idx[:-1])})"
    return idx, int(idx[-1]) + 1, where


def check_vector_on_tangent(weights, V, atol: float = 1e-8, rtol: float = 1e-10) -> tuple[bool, str | None]:
    """(True, None) if J(W) V = 0 to max_p ||dG_p(V)||_F <= atol + rtol ||W|| ||V||, else (False, reason)."""
    try:
        W, Vs = _stack(weights), _stack(V)
    except ValueError as e:
        return False, str(e)
    if Vs.shape[-3:] != W.shape[-3:]:
        return False, f"V has layer shape {tuple(Vs.shape[-3:])} but the weights have {tuple(W.shape[-3:])}"
    if not bool(torch.isfinite(Vs).all()):
        return False, "V contains NaN or inf"
    dG = ExactConstraintSolver(W).jvp(Vs).norm(dim=-1)  # (..., N-1) = ||dG_p(V)||_F
    scale = W.flatten(-3).norm(dim=-1) * Vs.flatten(-3).norm(dim=-1)
    tol = atol + rtol * scale
    bad = dG > tol[..., None]
    if bool(bad.any()):
        idx, p, where = _first_offender(bad)
        return False, (
            f"V is not tangent to M: its derivative of G_{p} has norm {float(dG[tuple(idx)]):.3g} > "
            f"tolerance {float(tol[tuple(idx[:-1])]):.3g}{where}"
        )
    return True, None
