"""The balanced manifold of a square deep linear network: constraints, tangent projector, Newton projection.

    M = { W = (W_1, ..., W_N) of full rank : G_p(W) = W_{p+1}^T W_{p+1} - W_p W_p^T = 0, p = 1..N-1 },
    dim M = d^2 + (N-1) d(d-1)/2                                  (docs/theory.md sections 2 and 6(a)).

Modules, along the concepts (lowest first; each imports only the ones above it):
- `constraint_map`: the constraint map c(W) in R^m, m = (N-1) d(d+1)/2, its Jacobian J and adjoint
  J^T, the structure of J J^T, and the orthonormal coordinates of symmetric matrices used inside;
- `block_solvers`: batched block-tridiagonal Cholesky / LU and small dense inverses;
- `exact`: `ExactConstraintSolver`, the constraint map around one point with exact linear algebra
  (J J^T factorised, Newton projection by "newton" / "chord" / "quasi"; the oracle);
- `singular_frame`: `SingularFrameSolver`, the same operations in the singular frames of a balanced
  point, where J J^T is diagonal in the matrix entries (O(N d^3); the fast path);
- `functions`: the public functions on lists of weights, `make_projection_solver` (which solver a
  scheme uses) and the host-side checks.

Shapes: weights [W_1, ..., W_N], each (..., d, d) (any leading batch dims, usually (B,)); the
solvers work on the stacked tensor (..., N, d, d). Everything is batched and free of host
synchronisation except the `check_*` functions (and, on the CPU only, early exits and the
fallbacks of the Newton loops, where a sync costs nothing).
"""
from __future__ import annotations

from .block_solvers import BlockTridiagonalCholesky, BlockTridiagonalLU, DenseSolver
from .constraint_map import constraint_count, manifold_dimension
from .exact import DENSE_MAX, NEWTON_METHODS, ExactConstraintSolver, NewtonResult
from .functions import (
    SOLVERS,
    Projection,
    check_point_on_manifold,
    check_vector_on_tangent,
    constraint_jacobian,
    constraint_jacobian_adjoint,
    constraints,
    gram_blocks,
    make_projection_solver,
    newton_projection,
    tangent_projection,
)
from .singular_frame import SingularFrameSolver

__all__ = [
    "manifold_dimension",
    "constraint_count",
    "constraints",
    "constraint_jacobian",
    "constraint_jacobian_adjoint",
    "gram_blocks",
    "BlockTridiagonalCholesky",
    "BlockTridiagonalLU",
    "tangent_projection",
    "newton_projection",
    "Projection",
    "NewtonResult",
    "ExactConstraintSolver",
    "DenseSolver",
    "DENSE_MAX",
    "check_point_on_manifold",
    "check_vector_on_tangent",
    "NEWTON_METHODS",
    "SingularFrameSolver",
    "SOLVERS",
    "make_projection_solver",
]
