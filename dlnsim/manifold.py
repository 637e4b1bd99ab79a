"""The balanced manifold of a square deep linear network: constraints, tangent projector, Newton projection.

    M = { W = (W_1, ..., W_N) of full rank : G_p(W) = W_{p+1}^T W_{p+1} - W_p W_p^T = 0, p = 1..N-1 },
    dim M = d^2 + (N-1) d(d-1)/2                                  (THEORY.md sections 2 and 5(a)),

seen as the zero set of the constraint map c(W) = (upper-triangular entries i <= j of G_p)_{p=1..N-1}
in R^m, m = (N-1) d(d+1)/2 (p-major, then row-major i <= j, the order of torch.triu_indices).
Its Jacobian J = dc(W) and the adjoint (Frobenius on parameters, Euclidean on R^m) are

    J V     = upper triangle of  W_{p+1}^T V_{p+1} + V_{p+1}^T W_{p+1} - V_p W_p^T - W_p V_p^T,
    J^T mu  = ( 2 W_q L_{q-1} - 2 L_q W_q )_{q=1..N},   L_0 = L_N = 0,

where L_p is the symmetric matrix of mu_p: (L_p)_ii = mu_ii, (L_p)_ij = (L_p)_ji = mu_ij / 2.
J J^T couples only neighbouring layers, so it is block tridiagonal in p with blocks of size
k = d(d+1)/2:  diagonal  L -> 2 (C_p L + L C_p),  C_p = W_{p+1}^T W_{p+1} + W_p W_p^T;
coupling (p, p+1)  L -> -4 W_{p+1}^T L W_{p+1}. It is factorised by block Cholesky in O(N k^3).

Internally the constraints use orthonormal coordinates z of the symmetric matrices (basis E_ii,
(E_ij + E_ji)/sqrt 2), in which ||z_p|| = ||G_p||_F and J J^T is better conditioned; c = s * z with
s_a = 1 (i = j) or 1/sqrt 2 (i < j). The tangent projector P_W = I - J^T (J J^T)^{-1} J and the
zero set do not depend on this choice of coordinates.

Shapes: weights [W_1, ..., W_N], each (..., d, d) (any leading batch dims, usually (B,)); hot-path
code works on the stacked tensor (..., N, d, d) through `ConstraintFrame`. Everything here is
batched and free of host synchronisation except the `check_*` functions (and, on the CPU only,
the early exit of the Newton loop, where a sync costs nothing).

Linear algebra: for few constraints (m <= DENSE_MAX = 24: d = 2 up to N = 9, d = 3 up to N = 5)
J^T is held as a dense (N d^2, m) matrix and m x m systems are inverted directly (the step is
launch-bound there); above, J J^T is assembled block by block (O(N k^2) gathers) and factorised by
block-tridiagonal Cholesky, the Newton matrix by block LU (O(N k^3) = O(N d^6) flops).

Newton projection (`ConstraintFrame.newton`): given x on M and a tangent step v, find mu with
c(x + v + J(x)^T mu) = 0. Methods (NEWTON_METHODS):
- "newton" (default): the exact Jacobian J(y_k) J(x)^T at every iterate; quadratic convergence
  (3-4 updates for a Langevin step). Chosen because it stays robust near rank-deficient X, where
  the smallest eigenvalue of J J^T ~ l_min^2 (l = s^{1/N}) and the fixed-matrix variants stall:
  measured for d = 2, N = 3, h = 0.05, beta = 1 at balanced points over Gaussian X: failures 0.03%
  ("newton"), 0.9% ("chord"), 8% ("quasi"), with 40 iterations allowed.
- "chord": the exact Jacobian at the first iterate x + v, kept fixed (one LU per projection;
  rate O(|v|^2)).
- "quasi": J(x) J(x)^T kept fixed (Zappa, Holmes-Cerfon & Goodman, CPAM 2018; Xu & Holmes-Cerfon
  2308.10877): no extra factorisation, linear rate O(|v| |J| / l_min^2).
All run at most max_iter updates with per-trajectory masks; a trajectory stops updating once
max_p ||G_p||_F <= tol and reports how many updates it took and whether it converged. The result
of each trajectory does not depend on the rest of the batch (required by the reverse check of
the Metropolis scheme).
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import torch

from . import small_svd
from ._checks import check_square_weights, rank_tolerance

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
    "ConstraintFrame",
    "DenseSolver",
    "DENSE_MAX",
    "check_point_on_manifold",
    "check_vector_on_tangent",
    "NEWTON_METHODS",
    "BalancedFrame",
    "SOLVERS",
    "make_frame",
]

NEWTON_METHODS = ("newton", "chord", "quasi")


def manifold_dimension(d: int, depth: int) -> int:
    """dim M = d^2 + (N-1) d(d-1)/2 = N d^2 - (N-1) d(d+1)/2."""
    return d * d + (depth - 1) * d * (d - 1) // 2


def constraint_count(d: int, depth: int) -> int:
    """m = (N-1) d(d+1)/2, the number of constraints (upper-triangular entries of G_1..G_{N-1})."""
    return (depth - 1) * d * (d + 1) // 2


# --------------------------------------------------------------------------------------------
# Orthonormal coordinates on symmetric matrices, and the index tables for Gram blocks.


class _SymBasis(NamedTuple):
    Z: torch.Tensor  # (k, d*d): rows are the orthonormal basis E_ii, (E_ij + E_ji)/sqrt 2, row-major vec
    scale: torch.Tensor  # (k,): c = scale * z
    ww: torch.Tensor  # (k, k): w_a w_b, w = 1/2 (i = j), 1/sqrt 2 (i < j)
    gather: tuple  # flat (k*k,) indices of P_{i_a i_b}, P_{i_a j_b}, P_{j_a i_b}, P_{j_a j_b} in a flattened (d, d)
    gather_t: tuple  # at (a, b) the entries Q_{j_b j_a}, Q_{i_b j_a}, Q_{j_b i_a}, Q_{i_b i_a} (= Q_mj, Q_lj, Q_mi, Q_li)
    eye_terms: tuple  # the gather_t of the identity matrix, (k, k) each


@functools.lru_cache(maxsize=64)
def _sym_basis(d: int, dtype: torch.dtype, device: torch.device) -> _SymBasis:
    i, j = torch.triu_indices(d, d, device=device)
    k = i.numel()
    diag = i == j
    r = 2.0**-0.5
    one = torch.ones(k, dtype=dtype, device=device)
    w_row = torch.where(diag, one, one * r)
    Z = torch.zeros(k, d * d, dtype=dtype, device=device)
    a = torch.arange(k, device=device)
    Z[a, i * d + j] = w_row
    Z[a, j * d + i] = w_row
    w = torch.where(diag, one * 0.5, one * r)
    pair = lambda u, v: (u[:, None] * d + v[None, :]).flatten()  # noqa: E731
    gather = (pair(i, i), pair(i, j), pair(j, i), pair(j, j))
    gather_t = tuple(pair(u, v).view(k, k).mT.flatten() for u, v in ((j, j), (i, j), (j, i), (i, i)))
    eye = torch.eye(d, dtype=dtype, device=device).flatten()
    eye_terms = tuple(eye[g].view(k, k) for g in gather_t)
    return _SymBasis(Z, w_row, w[:, None] * w[None, :], gather, gather_t, eye_terms)


def _sym_operator(P: torch.Tensor, Q: torch.Tensor | None, basis: _SymBasis) -> torch.Tensor:
    """Matrix (..., k, k) of L -> sym(P L Q) on symmetric L, in the orthonormal coordinates.

    Entry (a, b), a = (i, j), b = (l, m): w_a w_b [P_il Q_mj + P_im Q_lj + P_jl Q_mi + P_jm Q_li]
    (the four ways the basis matrices E_ij + E_ji and E_lm + E_ml pair up). Q = None means I.
    Gathers of d x d entries: O(k^2) work, no d^2 x d^2 Kronecker product.
    """
    k = basis.ww.shape[0]
    Pf = P.flatten(-2)
    PII, PIJ, PJI, PJJ = (Pf.index_select(-1, idx).unflatten(-1, (k, k)) for idx in basis.gather)
    if Q is None:
        QJJ, QIJ, QJI, QII = basis.eye_terms
    else:
        # Q_mj, Q_lj, Q_mi, Q_li with b = (l, m): the gathers at the transposed index pairs.
        Qf = Q.flatten(-2)
        QJJ, QIJ, QJI, QII = (Qf.index_select(-1, idx).unflatten(-1, (k, k)) for idx in basis.gather_t)
    return basis.ww * (PII * QJJ + PIJ * QIJ + PJI * QJI + PJJ * QII)


# --------------------------------------------------------------------------------------------
# Batched block-tridiagonal solvers.


def _mv(A: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (A @ x.unsqueeze(-1)).squeeze(-1)


class BlockTridiagonalCholesky:
    """A = L L^T for symmetric positive-definite block-tridiagonal A, batched.

    diag: (..., n, k, k) the blocks A_pp; upper: (..., n-1, k, k) the blocks A_{p,p+1}.
    L is block lower bidiagonal: L_pp = chol(S_p), L_{p+1,p} = M_p with M_p^T = L_pp^{-1} A_{p,p+1},
    S_{p+1} = A_{p+1,p+1} - M_p M_p^T. The inverses of the diagonal factors are kept explicitly so
    that each solve is 2n small matmuls. `ok` (...,) is False where a pivot block is not positive
    definite or not finite; there the factor is replaced by the identity (solutions are then
    meaningless but finite, and callers mask them out).
    """

    def __init__(self, diag: torch.Tensor, upper: torch.Tensor):
        n, k = diag.shape[-3], diag.shape[-1]
        eye = torch.eye(k, dtype=diag.dtype, device=diag.device)
        self.Linv: list[torch.Tensor] = []
        self.Mt: list[torch.Tensor] = []
        ok = torch.ones(diag.shape[:-3], dtype=torch.bool, device=diag.device)
        S = diag[..., 0, :, :]
        for p in range(n):
            L, info = torch.linalg.cholesky_ex(S)
            good = (info == 0) & torch.isfinite(L).flatten(-2).all(-1)
            ok = ok & good
            L = torch.where(good[..., None, None], L, eye)
            Li = torch.linalg.solve_triangular(L, eye.expand_as(L), upper=False)
            self.Linv.append(Li)
            if p < n - 1:
                Mt = Li @ upper[..., p, :, :]
                self.Mt.append(Mt)
                S = diag[..., p + 1, :, :] - Mt.mT @ Mt
        self.ok = ok

    def solve(self, b: torch.Tensor) -> torch.Tensor:
        """A^{-1} b for b (..., n, k); extra leading dims of b broadcast against the factor's."""
        n = len(self.Linv)
        z = [None] * n
        z[0] = _mv(self.Linv[0], b[..., 0, :])
        for p in range(1, n):
            z[p] = _mv(self.Linv[p], b[..., p, :] - _mv(self.Mt[p - 1].mT, z[p - 1]))
        x = [None] * n
        x[n - 1] = _mv(self.Linv[n - 1].mT, z[n - 1])
        for p in range(n - 2, -1, -1):
            x[p] = _mv(self.Linv[p].mT, z[p] - _mv(self.Mt[p], x[p + 1]))
        return torch.stack(x, dim=-2)

    def select(self, idx: torch.Tensor) -> "BlockTridiagonalCholesky":
        """The factors of the batch entries idx (one batch dim)."""
        out = BlockTridiagonalCholesky.__new__(BlockTridiagonalCholesky)
        out.Linv = [a[idx] for a in self.Linv]
        out.Mt = [a[idx] for a in self.Mt]
        out.ok = self.ok[idx]
        return out

    def where(self, mask: torch.Tensor, other: "BlockTridiagonalCholesky") -> "BlockTridiagonalCholesky":
        """The factor of self where mask (...,) is True, of other elsewhere (for accept/reject)."""
        out = BlockTridiagonalCholesky.__new__(BlockTridiagonalCholesky)
        m = mask[..., None, None]
        out.Linv = [torch.where(m, a, b) for a, b in zip(self.Linv, other.Linv)]
        out.Mt = [torch.where(m, a, b) for a, b in zip(self.Mt, other.Mt)]
        out.ok = torch.where(mask, self.ok, other.ok)
        return out


class BlockTridiagonalLU:
    """Block LU (block Thomas algorithm) of a general block-tridiagonal A, batched.

    diag (..., n, k, k), upper (..., n-1, k, k) = A_{p,p+1}, lower (..., n-1, k, k) = A_{p+1,p}.
    No pivoting across blocks (the pivot blocks D'_p = A_pp - A_{p,p-1} D'_{p-1}^{-1} A_{p-1,p} are
    inverted with partial pivoting). `ok` is False where a pivot block is singular or not finite.
    """

    def __init__(self, diag: torch.Tensor, upper: torch.Tensor, lower: torch.Tensor):
        n, k = diag.shape[-3], diag.shape[-1]
        eye = torch.eye(k, dtype=diag.dtype, device=diag.device)
        self.Dinv: list[torch.Tensor] = []
        self.Y: list[torch.Tensor] = []
        self.lower = lower
        ok = torch.ones(diag.shape[:-3], dtype=torch.bool, device=diag.device)
        D = diag[..., 0, :, :]
        for p in range(n):
            Dinv, info = torch.linalg.inv_ex(D)
            good = (info == 0) & torch.isfinite(Dinv).flatten(-2).all(-1)
            ok = ok & good
            Dinv = torch.where(good[..., None, None], Dinv, eye)
            self.Dinv.append(Dinv)
            if p < n - 1:
                Y = Dinv @ upper[..., p, :, :]
                self.Y.append(Y)
                D = diag[..., p + 1, :, :] - lower[..., p, :, :] @ Y
        self.ok = ok

    def solve(self, b: torch.Tensor) -> torch.Tensor:
        n = len(self.Dinv)
        g = [None] * n
        g[0] = _mv(self.Dinv[0], b[..., 0, :])
        for p in range(1, n):
            g[p] = _mv(self.Dinv[p], b[..., p, :] - _mv(self.lower[..., p - 1, :, :], g[p - 1]))
        x = [None] * n
        x[n - 1] = g[n - 1]
        for p in range(n - 2, -1, -1):
            x[p] = g[p] - _mv(self.Y[p], x[p + 1])
        return torch.stack(x, dim=-2)


# --------------------------------------------------------------------------------------------
# The constraint map at one point.


class NewtonResult(NamedTuple):
    """Output of ConstraintFrame.newton; tensors over the batch dims (...,)."""

    Y: torch.Tensor  # (..., N, d, d) the projected point x + v + J(x)^T mu
    mu: torch.Tensor  # (..., N-1, k) multipliers in the orthonormal coordinates z
    iterations: torch.Tensor  # (...,) number of Newton updates applied (float, for stats)
    converged: torch.Tensor  # (...,) bool: max_p ||G_p(Y)||_F <= tol (and the factorisation succeeded)
    residual: torch.Tensor  # (...,) max_p ||G_p(Y)||_F
    normal_sq: torch.Tensor  # (...,) |Y - (x + v)|^2 = |J(x)^T mu|^2, the size of the normal correction


class DenseSolver:
    """A^{-1} for a batch of small dense matrices (..., m, m), kept as an explicit inverse.

    For the few-constraint case (m <= DENSE_MAX) the step is launch-bound, not flop-bound: one
    inverse and one matmul per solve beat any blocked algorithm. symmetric=True: A is SPD and
    is inverted through its Cholesky factor. `ok` as for the block solvers. Vectors are given in
    the block layout (..., n, k) and returned in it.
    """

    def __init__(self, A: torch.Tensor, symmetric: bool):
        eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
        if symmetric:
            L, info = torch.linalg.cholesky_ex(A)
            inv = torch.cholesky_inverse(torch.where((info == 0)[..., None, None], L, eye))
        else:
            inv, info = torch.linalg.inv_ex(A)
        ok = (info == 0) & torch.isfinite(inv).flatten(-2).all(-1)
        self.inv = torch.where(ok[..., None, None], inv, eye)
        self.ok = ok

    def solve(self, b: torch.Tensor) -> torch.Tensor:
        return _mv(self.inv, b.flatten(-2)).view(b.shape)

    def select(self, idx: torch.Tensor) -> "DenseSolver":
        out = DenseSolver.__new__(DenseSolver)
        out.inv, out.ok = self.inv[idx], self.ok[idx]
        return out

    def where(self, mask: torch.Tensor, other: "DenseSolver") -> "DenseSolver":
        out = DenseSolver.__new__(DenseSolver)
        out.inv = torch.where(mask[..., None, None], self.inv, other.inv)
        out.ok = torch.where(mask, self.ok, other.ok)
        return out


DENSE_MAX = 24  # up to this many constraints (N-1) d(d+1)/2, J is held as a dense matrix


class ConstraintFrame:
    """The constraint map of M around one point x, with J(x) J(x)^T factorised once (lazily).

    W: stacked weights (..., N, d, d), N >= 2. The hot-path object of the Langevin schemes:
    `jvp` (J V), `vjp` (J^T z), `residual` (G_p in coordinates z), `project` (P_x V),
    `newton` (projection of x + v back to M along the normal space at x). Vectors z live in the
    orthonormal coordinates (..., N-1, k) described in the module docstring.

    dense: hold J^T as a dense (..., N d^2, m) matrix and invert m x m matrices directly (few
    kernel launches; the default when m = (N-1) d(d+1)/2 <= DENSE_MAX), or use the
    block-tridiagonal structure (O(N k^3) flops instead of O(N^3 k^3); the default above).
    Both give the same numbers to roundoff.
    """

    def __init__(self, W: torch.Tensor, dense: bool | None = None):
        self.W = W
        self.depth = W.shape[-3]
        self.d = W.shape[-1]
        self.basis = _sym_basis(self.d, W.dtype, W.device)
        self.k = self.basis.Z.shape[0]
        self.m = (self.depth - 1) * self.k
        self.dense = self.m <= DENSE_MAX if dense is None else bool(dense)
        self._factor = None
        self._jt: torch.Tensor | None = None

    @classmethod
    def of(cls, weights, dense: bool | None = None) -> "ConstraintFrame":
        return cls(_stack(weights), dense)

    # -- constraint map and its derivative ------------------------------------------------
    def residual(self, Y: torch.Tensor | None = None) -> torch.Tensor:
        """Coordinates z of G_p(Y), (..., N-1, k); Y defaults to x. ||z_p|| = ||G_p||_F."""
        Y = self.W if Y is None else Y
        G = Y[..., 1:, :, :].mT @ Y[..., 1:, :, :] - Y[..., :-1, :, :] @ Y[..., :-1, :, :].mT
        return G.flatten(-2) @ self.basis.Z.mT

    def jvp(self, V: torch.Tensor) -> torch.Tensor:
        """J(x) V in coordinates z: dG_p = A_p + A_p^T, A_p = W_{p+1}^T V_{p+1} - V_p W_p^T. V (..., N, d, d)."""
        W = self.W
        A = W[..., 1:, :, :].mT @ V[..., 1:, :, :] - V[..., :-1, :, :] @ W[..., :-1, :, :].mT
        # <A + A^T, S_a> = 2 <A, S_a> for the symmetric basis matrices S_a.
        return 2.0 * (A.flatten(-2) @ self.basis.Z.mT)

    def vjp(self, z: torch.Tensor) -> torch.Tensor:
        """J(x)^T z, (..., N, d, d): (2 W_q L_{q-1} - 2 L_q W_q)_q, L_p = sum_a z_pa S_a, L_0 = L_N = 0."""
        if self._jt is not None and z.shape[:-2] == self.W.shape[:-3]:
            return _mv(self._jt, z.flatten(-2)).view(self.W.shape)
        L = (z @ self.basis.Z).unflatten(-1, (self.d, self.d))
        zero = torch.zeros_like(L[..., :1, :, :])
        L = torch.cat([zero, L, zero], dim=-3)
        return 2.0 * (self.W @ L[..., :-1, :, :] - L[..., 1:, :, :] @ self.W)

    def jacobian_t(self) -> torch.Tensor:
        """J(x)^T as a dense matrix (..., N d^2, m): column (p, a) is J^T e_(p,a) (coordinates z).

        Row (p, a) of J is 2 W_{p+1} S_a in layer p+1 and -2 S_a W_p in layer p (S_a the
        orthonormal basis of symmetric matrices): <dG_p, S_a> = 2 <W_{p+1}^T V_{p+1} - V_p W_p^T, S_a>.
        """
        if self._jt is None:
            W, N, d, k = self.W, self.depth, self.d, self.k
            S = self.basis.Z.view(k, d, d)
            batch = W.shape[:-3]
            Jt = W.new_zeros(*batch, N, N - 1, k, d, d)
            p = torch.arange(N - 1, device=W.device)
            Jt[..., p + 1, p, :, :, :] = 2.0 * (W[..., 1:, None, :, :] @ S)
            Jt[..., p, p, :, :, :] = -2.0 * (S @ W[..., :-1, None, :, :])
            # (..., N, N-1, k, d, d) -> (..., N, d, d, N-1, k) -> (..., N d^2, m)
            nb = len(batch)
            perm = tuple(range(nb)) + (nb, nb + 3, nb + 4, nb + 1, nb + 2)
            self._jt = Jt.permute(perm).reshape(*batch, N * d * d, self.m)
        return self._jt

    # -- the Gram matrix J J^T --------------------------------------------------------------
    def gram_blocks(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Blocks of J J^T in coordinates z: diag (..., N-1, k, k) and upper (..., N-2, k, k) = block (p, p+1)."""
        W = self.W
        C = W[..., 1:, :, :].mT @ W[..., 1:, :, :] + W[..., :-1, :, :] @ W[..., :-1, :, :].mT
        diag = 4.0 * _sym_operator(C, None, self.basis)
        Wmid = W[..., 1:-1, :, :]  # W_{p+1} for p = 1..N-2
        upper = -4.0 * _sym_operator(Wmid.mT, Wmid, self.basis)
        return diag, upper

    @property
    def factor(self):
        """The solver of J J^T (DenseSolver or BlockTridiagonalCholesky): .solve(z), .ok."""
        if self._factor is None:
            if self.dense:
                Jt = self.jacobian_t()
                self._factor = DenseSolver(Jt.mT @ Jt, symmetric=True)
            else:
                self._factor = BlockTridiagonalCholesky(*self.gram_blocks())
        return self._factor

    @property
    def ok(self) -> torch.Tensor:
        """(...,) bool: J J^T was factorised (x is not numerically rank-deficient)."""
        return self.factor.ok

    def newton_blocks(self, Y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Blocks of the exact Newton matrix J(Y) J(x)^T in coordinates z: diag, upper, lower."""
        X = self.W
        Xn, Yn, Xp, Yp = X[..., 1:, :, :], Y[..., 1:, :, :], X[..., :-1, :, :], Y[..., :-1, :, :]
        # L -> sym(L Q) equals L -> sym(Q^T L) (sym A = sym A^T): both diagonal terms are left products.
        diag = 4.0 * (_sym_operator(Yn.mT @ Xn, None, self.basis) + _sym_operator(Yp @ Xp.mT, None, self.basis))
        Xm, Ym = X[..., 1:-1, :, :], Y[..., 1:-1, :, :]
        upper = -4.0 * _sym_operator(Ym.mT, Xm, self.basis)
        lower = -4.0 * _sym_operator(Xm, Ym.mT, self.basis)
        return diag, upper, lower

    def newton_solver(self, Y: torch.Tensor):
        """Solver of the exact Newton matrix J(Y) J(x)^T (dense inverse or block LU)."""
        if self.dense:
            Jy = ConstraintFrame(Y, dense=True).jacobian_t()
            return DenseSolver(Jy.mT @ self.jacobian_t(), symmetric=False)
        return BlockTridiagonalLU(*self.newton_blocks(Y))

    # -- projections --------------------------------------------------------------------------
    def project(self, V: torch.Tensor) -> torch.Tensor:
        """P_x V = V - J^T (J J^T)^{-1} J V; V (..., N, d, d) (extra leading dims broadcast)."""
        return V - self.vjp(self.factor.solve(self.jvp(V)))

    def select(self, idx: torch.Tensor) -> "ConstraintFrame":
        """The frame of the trajectories idx (1-D batch), reusing the factorisation and J^T."""
        out = ConstraintFrame(self.W[idx], dense=self.dense)
        if self._jt is not None:
            out._jt = self._jt[idx]
        if self._factor is not None:
            out._factor = self._factor.select(idx)
        return out

    def newton(self, v: torch.Tensor, tol: float = 1e-10, max_iter: int = 12, method: str = "newton") -> NewtonResult:
        """Solve c(x + v + J(x)^T mu) = 0 for mu by `method` (see NEWTON_METHODS), masked per trajectory.

        Every trajectory runs until max_p ||G_p||_F <= tol or max_iter updates. On accelerators
        all max_iter iterations are queued (no host sync). On the CPU, where reading a flag costs
        nothing, the loop stops as soon as every trajectory has converged, and once fewer than
        half are still iterating it continues on that subset only (one batch dim; same iterates):
        a few hard cases then no longer cost full-ensemble iterations.
        """
        X = self.W
        factor = self.factor  # also the flag that x itself is regular
        batch = torch.broadcast_shapes(X.shape[:-3], v.shape[:-3])
        mu = X.new_zeros(*batch, self.depth - 1, self.k)
        Y = X + v
        iters = X.new_zeros(batch)
        cpu = X.device.type == "cpu"
        compact = cpu and method != "chord" and len(batch) == 1 and X.shape[:-3] == v.shape[:-3] == batch
        solver = factor if method == "quasi" else self.newton_solver(Y) if method == "chord" else None
        for it in range(max_iter):
            r = self.residual(Y)
            active = ~(r.norm(dim=-1).amax(dim=-1) <= tol)  # NaN residuals stay active (and end unconverged)
            if cpu:
                n_active = int(active.sum())
                if n_active == 0:
                    break
                if compact and 2 * n_active < batch[0]:
                    # Continue on the active subset: x + (v + J^T mu) + J^T mu' with mu' from 0 is the
                    # same iteration (J^T is linear), so the iterates do not depend on the others.
                    idx = active.nonzero()[:, 0]
                    sub = self.select(idx).newton((Y - X)[idx], tol, max_iter - it, method)
                    Y, mu, iters = Y.clone(), mu.clone(), iters.clone()
                    Y[idx], mu[idx], iters[idx] = sub.Y, mu[idx] + sub.mu, iters[idx] + sub.iterations
                    break
            iters = iters + active.to(iters.dtype)
            if method == "newton":
                solver = self.newton_solver(Y)
            mu = torch.where(active[..., None, None], mu - solver.solve(r), mu)
            Y = X + v + self.vjp(mu)
        res = self.residual(Y).norm(dim=-1).amax(dim=-1)
        converged = (res <= tol) & factor.ok
        corr = Y - X - v
        return NewtonResult(Y, mu, iters, converged, res, (corr * corr).sum(dim=(-3, -2, -1)))

    # Identity "frame" maps, so that the schemes drive both solvers through one interface.
    def to_frame(self, V: torch.Tensor) -> torch.Tensor:
        return V

    def from_frame(self, V: torch.Tensor) -> torch.Tensor:
        return V

    def project_t(self, V: torch.Tensor) -> torch.Tensor:
        return self.project(V)

    def newton_t(self, v: torch.Tensor, tol: float = 1e-10, max_iter: int = 12, method: str = "newton") -> NewtonResult:
        return self.newton(v, tol=tol, max_iter=max_iter, method=method)

    def where(self, mask: torch.Tensor, other: "ConstraintFrame") -> "ConstraintFrame":
        """The frame of self where mask (B,) is True, of other elsewhere (factor merged, not recomputed)."""
        out = ConstraintFrame(torch.where(mask[..., None, None, None], self.W, other.W), dense=self.dense)
        out._factor = self.factor.where(mask, other.factor)
        return out


# --------------------------------------------------------------------------------------------
# The fast solver: singular frames of a balanced point, where J J^T is diagonal in (i, j).

SOLVERS = ("auto", "frame", "exact")

# A frame is trusted when its Q_p (built by the recursion below) are orthogonal to this defect
# before the polar correction step; one Newton-Schulz step squares it (to < 1e-14).
_FRAME_ORTH_MAX = 1e-7
# A simplified-Newton update whose residual exceeds this multiple of the best residual so far counts
# as a stall: the trajectory leaves the frame iteration (for the exact fallback on the CPU). The
# iteration is not monotone (its error operator is not normal: at d = 16 the residual often grows
# for an update or two and then converges), so the test is against the best so far, not the last
# update; measured at d = 16, N = 4, B = 32, h = 0.01, beta = 10 (scripts/bench.py (d)): a ratio of
# 0.5 against the last update with 12 updates allowed sent ~0.5 trajectories per step to the exact
# fallback (85-90% of the step's time); this rule with 36 updates and the exact-adjoint polish, none
# (projection failures 0 in both).
_STALL_RATIO = 2.0


@functools.lru_cache(maxsize=64)
def _dst(depth: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """S (N-1, N-1) with S_pk = sqrt(2/N) sin(pi p k / N) (orthogonal, symmetric), and sin^2(pi k / 2N)."""
    k = torch.arange(1, depth, dtype=dtype, device=device)
    S = (2.0 / depth) ** 0.5 * torch.sin(torch.pi * k[:, None] * k[None, :] / depth)
    return S, torch.sin(torch.pi * k / (2 * depth)) ** 2


class BalancedFrame:
    """The constraint map of M around x, in the singular frames of x (the fast path, O(N d^3)).

    At a balanced point W_p = Q_p diag(l) Q_{p-1}^T (l = s^{1/N}, Q_0 = V, Q_N = U; THEORY section 2).
    Frames: Q_0, l^2 from one eigh of W_1^T W_1, then Q_p = W_p Q_{p-1} diag(1/l) (exact on M), made
    orthogonal to roundoff by one Newton-Schulz step Q <- Q (3 I - Q^T Q) / 2. Frame coordinates
    Vt_p = Q_p^T V_p Q_{p-1} (parameters) and Lt_p = Q_p^T L_p Q_p (constraints, symmetric) are
    isometries, so projections and norms computed there are the exact ones. In them
    x becomes Xt_p = Q_p^T W_p Q_{p-1} = diag(l) + (roundoff, and the O(tol / l^2) imbalance of x), and

        J^T L  = ( 2 (Xt_p L_{p-1} - L_p Xt_p) )_p,         J V = ( A_p + A_p^T )_p,
        A_p    = Xt_{p+1}^T V_{p+1} - V_p Xt_p^T             (L_0 = L_N = 0; exact, batched matmuls),

    and at Xt = diag(l) exactly, J J^T acts on each entry (i, j) of (L_1, ..., L_{N-1}) as the
    constant-coefficient Jacobi matrix tridiag(-4 l_i l_j, 4 (l_i^2 + l_j^2), -4 l_i l_j) in p,
    diagonalised by the sine transform S_pk = sqrt(2/N) sin(pi p k / N) with eigenvalues
    4 ((l_i - l_j)^2 + 4 l_i l_j sin^2(pi k / 2N)) (k = 1..N-1; no cancellation). That inverse,
    `solve_canonical`, is used as an approximate inverse of the true J J^T:
    - `project_t`: P V = V - J^T z with z from the canonical solve plus `refine` steps of iterative
      refinement against the true operator (default 1: the frame defect is at most ~1e-10 relative
      on trusted frames, so one step reaches roundoff);
    - `newton_t`: simplified Newton y = x + v + J(x)^T mu, mu <- mu - (J J^T)_canonical^{-1} G(y)
      (the "quasi" iteration, linear rate ~ |v| / l_min), masked per trajectory. A trajectory
      whose residual exceeds _STALL_RATIO times its best so far, or whose frame is not trusted, or
      which exhausts max_iter, is handed on the CPU to the exact Newton of ConstraintFrame, from
      scratch (mu = 0), on that subset only (a host sync, free on the CPU). On accelerators there
      is no fallback (no host sync): such trajectories are reported unconverged.
    Each trajectory's result does not depend on the rest of the batch.

    W: stacked weights (..., N, d, d). Cost per frame: one batched eigh (d x d) and ~8 batched
    matmuls; per projection 8 matmuls; per Newton update 4 matmuls.
    """

    def __init__(self, W: torch.Tensor, refine: int = 1):
        self.W = W
        self.depth = N = W.shape[-3]
        self.d = d = W.shape[-1]
        self.refine = refine
        eye = torch.eye(d, dtype=W.dtype, device=W.device)
        ev, Q0 = small_svd.eigh(W[..., 0, :, :].mT @ W[..., 0, :, :])  # closed form at d = 2
        l = ev.clamp_min(0.0).sqrt()
        lmax = l.amax(dim=-1, keepdim=True)
        # Columns with l ~ 0 give garbage frames; they are caught by the orthogonality test below.
        linv = 1.0 / torch.maximum(l, torch.finfo(W.dtype).tiny ** 0.5 * (1.0 + lmax))
        Qs = [Q0]
        for p in range(N):
            Qs.append((W[..., p, :, :] @ Qs[-1]) * linv[..., None, :])
        Qr = torch.stack(Qs[1:], dim=-3)  # (..., N, d, d), Q_1..Q_N
        E = Qr.mT @ Qr - eye
        Qr = Qr - 0.5 * (Qr @ E)
        defect = E.abs().flatten(-3).amax(dim=-1)
        Q = torch.cat([Q0.unsqueeze(-3), Qr], dim=-3)  # (..., N+1, d, d)
        S, sin2 = _dst(N, W.dtype, W.device)
        li, lj = l[..., None, :, None], l[..., None, None, :]
        lam = 4.0 * ((li - lj) ** 2 + 4.0 * li * lj * sin2[:, None, None])  # (..., N-1, d, d), index k
        good = (lam.flatten(-3).amin(dim=-1) > 0) & (defect <= _FRAME_ORTH_MAX) & torch.isfinite(Q).flatten(-3).all(-1)
        # Untrusted trajectories get identity frames: the frame maps stay isometries (so their
        # vectors keep their meaning) and the exact solver takes over for them (CPU fallback).
        # On the CPU (host read free) the masked copies are skipped when every frame is trusted.
        all_good = W.device.type == "cpu" and bool(good.all())
        self.Q = Q if all_good else torch.where(good[..., None, None, None], Q, eye)
        self.l = l
        self.Xt = self.to_frame(W)
        self.inv_lam = lam.reciprocal_() if all_good else torch.where(good[..., None, None, None], 1.0 / lam, torch.zeros_like(lam))
        self.S = S
        self.ok = good

    # -- coordinates --------------------------------------------------------------------------
    def _slices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(Q_1..Q_N), (Q_0..Q_{N-1}) as contiguous tensors, made once per frame: slices of Q along
        the layer axis are not batch-contiguous, and matmul would copy them at every call."""
        cache = self.__dict__.get("_qslices")
        if cache is None or cache[0] is not self.Q:
            cache = (self.Q, self.Q[..., 1:, :, :].contiguous(), self.Q[..., :-1, :, :].contiguous())
            self._qslices = cache
        return cache[1], cache[2]

    def to_frame(self, V: torch.Tensor) -> torch.Tensor:
        """Vt_p = Q_p^T V_p Q_{p-1}, (..., N, d, d)."""
        Qn, Qp = self._slices()
        return Qn.mT @ V @ Qp

    def from_frame(self, Vt: torch.Tensor) -> torch.Tensor:
        """V_p = Q_p Vt_p Q_{p-1}^T."""
        Qn, Qp = self._slices()
        return Qn @ Vt @ Qp.mT

    def sym_from_frame(self, Lt: torch.Tensor) -> torch.Tensor:
        """L_p = Q_p Lt_p Q_p^T for constraint-space matrices (..., N-1, d, d)."""
        Qm = self.Q[..., 1:-1, :, :]
        return Qm @ Lt @ Qm.mT

    # -- operators in frame coordinates --------------------------------------------------------
    def _xt_slices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(Xt_2..Xt_N), (Xt_1..Xt_{N-1}) as contiguous tensors (see _slices)."""
        cache = self.__dict__.get("_xslices")
        if cache is None or cache[0] is not self.Xt:
            cache = (self.Xt, self.Xt[..., 1:, :, :].contiguous(), self.Xt[..., :-1, :, :].contiguous())
            self._xslices = cache
        return cache[1], cache[2]

    def jvp_t(self, V: torch.Tensor) -> torch.Tensor:
        Xn, Xp = self._xt_slices()
        A = Xn.mT @ V[..., 1:, :, :] - V[..., :-1, :, :] @ Xp.mT
        return A + A.mT

    def vjp_t(self, L: torch.Tensor) -> torch.Tensor:
        # (J^T L)_p = 2 (Xt_p L_{p-1} - L_p Xt_p), L_0 = L_N = 0: the two products on contiguous operands.
        Xn, Xp = self._xt_slices()
        T1, T2 = Xn @ L, L @ Xp  # Xt_p L_{p-1} for p = 2..N; L_p Xt_p for p = 1..N-1
        out = torch.cat([-T2[..., :1, :, :], T1[..., :-1, :, :] - T2[..., 1:, :, :], T1[..., -1:, :, :]], dim=-3)
        return out.mul_(2.0)

    def solve_canonical(self, R: torch.Tensor) -> torch.Tensor:
        """(J J^T)^{-1} R at Xt = diag(l) exactly: sine transform in p, divide, transform back."""
        # S is symmetric; mixing over the layer axis as one matmul on (..., N-1, d*d) (no permute copies).
        S = self.S
        Rh = (S @ R.flatten(-2)).view(R.shape) * self.inv_lam
        return (S @ Rh.flatten(-2)).view(R.shape)

    def project_t(self, V: torch.Tensor) -> torch.Tensor:
        """P_x V for V in frame coordinates (returned in frame coordinates)."""
        r = self.jvp_t(V)
        z = self.solve_canonical(r)
        for _ in range(self.refine):
            z = z + self.solve_canonical(r - self.jvp_t(self.vjp_t(z)))
        P = V - self.vjp_t(z)
        if self.W.device.type == "cpu" and self.W.dim() == 4 and not bool(self.ok.all()):
            # Untrusted frames are identities: the exact projector on that subset (CPU host sync).
            idx = (~self.ok).nonzero()[:, 0]
            P = P.clone()
            P[idx] = ConstraintFrame(self.W[idx]).project(V.expand_as(P)[idx])
        return P

    def project(self, V: torch.Tensor) -> torch.Tensor:
        """P_x V in original coordinates."""
        return self.from_frame(self.project_t(self.to_frame(V)))

    def where(self, mask: torch.Tensor, other: "BalancedFrame") -> "BalancedFrame":
        """The frame of self where mask (B,) is True, of other elsewhere."""
        out = BalancedFrame.__new__(BalancedFrame)
        out.__dict__.update(self.__dict__)
        m4 = mask[..., None, None, None]
        out.W = torch.where(m4, self.W, other.W)
        out.Q = torch.where(m4, self.Q, other.Q)
        out.Xt = torch.where(m4, self.Xt, other.Xt)
        out.inv_lam = torch.where(m4, self.inv_lam, other.inv_lam)
        out.l = torch.where(mask[..., None], self.l, other.l)
        out.ok = torch.where(mask, self.ok, other.ok)
        return out

    # -- Newton projection ---------------------------------------------------------------------
    def newton_t(self, v: torch.Tensor, tol: float = 1e-10, max_iter: int = 12, method: str = "newton",
                 want_mu: bool = False, fallback: bool | None = None, v_orig: torch.Tensor | None = None) -> NewtonResult:
        """Find mu with G(x + v + J(x)^T mu) = 0, v (..., N, d, d) in frame coordinates.

        Returns Y in ORIGINAL coordinates; residual and `converged` are evaluated there (so they mean
        what the exact path's mean). mu (z coordinates, as ConstraintFrame.newton) only if want_mu,
        else None. method: the exact Newton method of the CPU fallback (NEWTON_METHODS). fallback:
        run that fallback (default: on the CPU only, where its host sync is free). v_orig: v in
        original coordinates (saves a transform). Untrusted frames (self.ok False) are identity
        frames (isometries): no frame iteration there, only the fallback.
        """
        Xt = self.Xt
        batch = torch.broadcast_shapes(Xt.shape[:-3], v.shape[:-3])
        N, d = self.depth, self.d
        iters = Xt.new_zeros(batch)
        live = self.ok.expand(batch)
        prev = torch.full(batch, float("inf"), dtype=Xt.dtype, device=Xt.device)
        cpu = Xt.device.type == "cpu"
        # The iterates use the canonical adjoint J_D^T (elementwise); y itself is formed with the exact
        # J(x)^T below. They differ by 2 |Xt - diag(l)| |mu| (~1e-13 |v|^2 on trusted frames), far
        # below tol; the inner tolerance tol/2 leaves room for it, and the residual is re-evaluated.
        base = Xt + v
        # Layer-major layout (N, *batch, d, d) inside the loop: layer slices are contiguous, the sine
        # transform over p is one (N-1, N-1) x (N-1, B d^2) matmul, and no op copies its operands.
        base_l = base.movedim(-3, 0).contiguous()
        Lpad = base_l.new_zeros(N + 1, *batch, d, d)  # (0, L_1, ..., L_{N-1}, 0)
        # J_D^T L = 2 l_i L_{p-1,ij} - 2 L_{p,ij} l_j; per-trajectory tensors expanded to the batch
        # so that the loop can continue on a subset.
        l2 = 2.0 * self.l.expand(*batch, d)
        inv_lam = self.inv_lam.expand(*batch, N - 1, d, d).movedim(-3, 0)
        compact = cpu and len(batch) == 1
        iters = _frame_iterate(base_l, Lpad, l2[..., :, None], l2[..., None, :], inv_lam, self.S, live, prev, iters,
                               0.5 * tol, _FRAME_ITER_FACTOR * max_iter, cpu, compact)
        L = Lpad[1:N].movedim(0, -3)
        C = self.vjp_t(L)
        Y = base + C
        normal_sq = (C * C).sum(dim=(-3, -2, -1))
        Yo = self.from_frame(Y)
        res = _residual_norm(Yo)
        converged = (res <= tol) & self.ok
        if cpu and len(batch) == 1:
            # Trusted frames whose canonical iteration stopped short of tol (near rank-deficient x the
            # gap between J_D^T and J(x)^T, ~|Xt - diag(l)| |mu| with |Xt - diag(l)| ~ tol / l_min^2 from
            # the imbalance of x, puts the canonical iteration's floor above tol): continue with the
            # exact adjoint on that subset. Measured d = 16, N = 4: the only exact fallbacks left were
            # such trajectories (l_min ~ 0.05, residual stuck at 1e-10 .. 5e-9).
            polish = ~converged & self.ok.expand(batch) & torch.isfinite(res)
            if bool(polish.any()):
                idx = polish.nonzero()[:, 0]
                Ls, its = self._polish(idx, base[idx], L[idx], 0.5 * tol, _FRAME_ITER_FACTOR * max_iter)
                L = L.clone()
                L[idx] = Ls
                iters = iters.index_add(0, idx, its)
                C = self.vjp_t(L)
                Y = base + C
                normal_sq = (C * C).sum(dim=(-3, -2, -1))
                Yo = self.from_frame(Y)
                res = _residual_norm(Yo)
                converged = (res <= tol) & self.ok
        mu = None
        if want_mu:
            Lo = self.sym_from_frame(L)
            mu = Lo.flatten(-2) @ _sym_basis(self.d, Lo.dtype, Lo.device).Z.mT
        if fallback is None:
            fallback = cpu
        retry = ~converged  # untrusted frames are identities, so v is meaningful there too
        if fallback and len(batch) == 1 and bool(retry.any()):
            # Exact Newton on the failures, from mu = 0: the same root the exact path would find.
            idx = retry.nonzero()[:, 0]
            Wb = self.W.expand(*batch, *self.W.shape[-3:])
            vo = (self.from_frame(v) if v_orig is None else v_orig).expand(*batch, *v.shape[-3:])
            # One or two trajectories: the dense solver is launch-bound and about twice as fast as the
            # block one up to m ~ 250 entries in all (same numbers to roundoff).
            dense = True if idx.numel() * (self.depth - 1) * self.d * (self.d + 1) <= 2 * _DENSE_FALLBACK_MAX else None
            sub = ConstraintFrame(Wb[idx], dense=dense).newton(vo[idx], tol=tol, max_iter=max_iter, method=method)
            Yo, iters, res, normal_sq, converged = Yo.clone(), iters.clone(), res.clone(), normal_sq.clone(), converged.clone()
            Yo[idx], res[idx], normal_sq[idx], converged[idx] = sub.Y, sub.residual, sub.normal_sq, sub.converged
            iters[idx] = iters[idx] + sub.iterations
            if want_mu:
                mu = mu.clone()
                mu[idx] = sub.mu
        return NewtonResult(Yo, mu, iters, converged, res, normal_sq)

    def _polish(self, idx: torch.Tensor, base: torch.Tensor, L: torch.Tensor, tol: float, max_iter: int):
        """Simplified Newton on the trajectories idx with the exact adjoint J(x)^T (frame coordinates)
        and the canonical inverse; base = Xt + v, L (n, N-1, d, d) the start. Returns the new L and
        the number of updates per trajectory.

        Each trajectory stops once its frame-coordinate residual is <= tol or exceeds _STALL_RATIO
        times its best (then the exact fallback takes it); the others do not affect it.
        """
        N = self.depth
        Xt = self.Xt.expand(self.ok.shape[0], *self.Xt.shape[-3:])[idx] if self.Xt.dim() > 3 else self.Xt
        inv_lam = self.inv_lam.expand(self.ok.shape[0], *self.inv_lam.shape[-3:])[idx] if self.inv_lam.dim() > 3 else self.inv_lam
        S = self.S
        zero = torch.zeros_like(L[..., :1, :, :])
        best = torch.full(L.shape[:-3], float("inf"), dtype=L.dtype, device=L.device)
        live = torch.ones_like(best, dtype=torch.bool)
        its = torch.zeros_like(best)
        for _ in range(max_iter):
            Lp = torch.cat([zero, L, zero], dim=-3)
            Y = base + 2.0 * (Xt @ Lp[..., :-1, :, :] - Lp[..., 1:, :, :] @ Xt)
            G = Y[..., 1:, :, :].mT @ Y[..., 1:, :, :] - Y[..., :-1, :, :] @ Y[..., :-1, :, :].mT
            r = G.flatten(-2).norm(dim=-1).amax(dim=-1)
            live = live & (r <= _STALL_RATIO * best)
            best = torch.minimum(best, r)
            active = live & ~(r <= tol)
            if not bool(active.any()):
                break
            its = its + active.to(its.dtype)
            G = torch.where(active[..., None, None, None], G, 0.0)
            Rh = (S @ G.flatten(-2)).view(G.shape) * inv_lam
            L = L - (S @ Rh.flatten(-2)).view(G.shape)
        return L, its

    def newton(self, v: torch.Tensor, tol: float = 1e-10, max_iter: int = 12, method: str = "newton") -> NewtonResult:
        """As ConstraintFrame.newton: v and Y in original coordinates, mu in z coordinates."""
        return self.newton_t(self.to_frame(v), tol=tol, max_iter=max_iter, method=method, want_mu=True, v_orig=v)


# Frame-loop budget as a multiple of max_iter. The rate is linear (~0.1 at d = 8, 0.3-0.9 at d = 16
# for h = 0.01, beta = 10), the tail is cheap once compacted to the few active trajectories, and
# every trajectory kept off the exact path saves an O(N d^6) block factorisation per update: the
# Langevin schemes therefore pass max_iter = 36 (their default), which serves both solvers.
_FRAME_ITER_FACTOR = 1
# On the CPU the frame loop continues on the still-active subset once it is below this fraction.
_COMPACT_FRACTION = 0.125
# The exact fallback uses the dense solver while (trajectories) x (N-1) d(d+1)/2 is at most this.
_DENSE_FALLBACK_MAX = 256


def _frame_iterate(base, Lpad, li2, lj2, inv_lam, S, live, prev, iters, tol, n_iter, cpu, compact):
    """The simplified-Newton loop of BalancedFrame.newton_t, layer-major, updating Lpad in place.

    base (N, B.., d, d) = Xt + v; Lpad (N+1, B.., d, d) = (0, L_1, ..., L_{N-1}, 0); li2, lj2
    (B.., d, 1), (B.., 1, d) = 2 l; inv_lam (N-1, B.., d, d); live, prev, iters (B..,). Layer-major:
    layer slices are contiguous, the sine transform over p is one (N-1, N-1) x (N-1, B d^2) matmul.
    Returns the updated iteration counts. compact (CPU, one batch dim): once few trajectories are
    still active, the loop continues on them only (their iterates do not depend on the others).
    """
    N = base.shape[0]
    L = Lpad[1:N]
    Y = torch.addcmul(base, li2, Lpad[:-1]).addcmul_(Lpad[1:], lj2, value=-1.0)
    for it in range(n_iter):
        Yn, Yp = Y[1:].flatten(0, -3), Y[:-1].flatten(0, -3)
        G = torch.baddbmm(torch.bmm(Yn.mT, Yn), Yp, Yp.mT, alpha=-1.0).view(L.shape)
        res = G.flatten(-2).norm(dim=-1).amax(dim=0)
        live = live & (res <= _STALL_RATIO * prev)  # NaN residuals stall too; prev = best so far
        active = live & ~(res <= tol)
        if cpu:
            n_active = int(active.sum())
            if n_active == 0:
                break
            B = active.shape[0] if compact else 0
            if compact and n_active < _COMPACT_FRACTION * B and it + 1 < n_iter:
                idx = active.nonzero()[:, 0]
                sub_L = Lpad[:, idx]
                sub_it = _frame_iterate(base[:, idx], sub_L, li2[idx], lj2[idx], inv_lam[:, idx], S, live[idx],
                                        prev[idx], iters[idx], tol, n_iter - it, cpu, compact)
                Lpad[:, idx] = sub_L
                iters = iters.index_put((idx,), sub_it)
                return iters
        prev = torch.minimum(prev, res)
        iters = iters + active.to(iters.dtype)
        # Frozen trajectories (converged or stalled) get a zero update; where() keeps NaN out.
        if not (cpu and n_active == active.numel()):
            G = torch.where(active[..., None, None], G, 0.0)
        Rh = (S @ G.view(N - 1, -1)).view(G.shape).mul_(inv_lam)
        L.sub_((S @ Rh.view(N - 1, -1)).view(G.shape))
        Y = torch.addcmul(base, li2, Lpad[:-1]).addcmul_(Lpad[1:], lj2, value=-1.0)
    return iters


def _residual_norm(Y: torch.Tensor) -> torch.Tensor:
    """max_p ||G_p(Y)||_F, (...,), for stacked Y (..., N, d, d)."""
    G = Y[..., 1:, :, :].mT @ Y[..., 1:, :, :] - Y[..., :-1, :, :] @ Y[..., :-1, :, :].mT
    return G.flatten(-2).norm(dim=-1).amax(dim=-1)


def make_frame(W: torch.Tensor, solver: str = "frame"):
    """The solver object at stacked W: BalancedFrame ("frame") or ConstraintFrame ("exact").

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
        solver = "frame" if (W.device.type == "cpu" and not few) else "exact"
    if solver == "frame":
        return BalancedFrame(W)
    if solver == "exact":
        return ConstraintFrame(W)
    raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")


def _stack(weights) -> torch.Tensor:
    if isinstance(weights, torch.Tensor):
        return weights
    check_square_weights(weights, "the balanced manifold (depth >= 2)", min_depth=2)
    return torch.stack(torch.broadcast_tensors(*weights), dim=-3)


def _unstack(W: torch.Tensor) -> list[torch.Tensor]:
    return list(W.unbind(dim=-3))


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
    f = ConstraintFrame.of(weights)
    return (f.residual() * f.basis.scale).flatten(-2)


def constraint_jacobian(weights, V) -> torch.Tensor:
    """J V = dc(W)[V] for a parameter-space vector V (list like weights); (..., (N-1) d(d+1)/2)."""
    f = ConstraintFrame.of(weights)
    return (f.jvp(_stack(V)) * f.basis.scale).flatten(-2)


def constraint_jacobian_adjoint(weights, mu: torch.Tensor) -> list[torch.Tensor]:
    """J^T mu for mu (..., (N-1) d(d+1)/2): the list (2 W_q L_{q-1} - 2 L_q W_q)_{q=1..N}.

    The adjoint for the Frobenius product on parameters and the Euclidean one on R^m:
    <J V, mu> = sum_p <V_p, (J^T mu)_p>.
    """
    f = ConstraintFrame.of(weights)
    return _unstack(f.vjp(_to_z(mu, f.depth, f.basis)))


def gram_blocks(weights) -> tuple[torch.Tensor, torch.Tensor]:
    """Blocks of J J^T (coordinates c): diag (..., N-1, k, k) and upper (..., N-2, k, k) = block (p, p+1).

    k = d(d+1)/2. The lower blocks are the transposes of `upper`; all other blocks vanish.
    """
    f = ConstraintFrame.of(weights)
    diag, upper = f.gram_blocks()
    s = f.basis.scale
    scale = s[:, None] * s[None, :]
    return diag * scale, upper * scale


def tangent_projection(weights, V) -> list[torch.Tensor]:
    """P_W V = V - J^T (J J^T)^{-1} J V, the orthogonal projection onto ker J = T_W M (on M).

    weights, V: lists [.._1, ..., .._N] of (..., d, d). Off M this is the projection onto the
    tangent space of the level set of c through W. Undefined (garbage) where J J^T is singular.
    """
    f = ConstraintFrame.of(weights)
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
    f = ConstraintFrame.of(weights)
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
    G = ConstraintFrame(W).residual().norm(dim=-1)  # (..., N-1) = ||G_p||_F
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
    dG = ConstraintFrame(W).jvp(Vs).norm(dim=-1)  # (..., N-1) = ||dG_p(V)||_F
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
