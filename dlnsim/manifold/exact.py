"""The exact solver of the balanced manifold: the constraint map around one point, with exact linear algebra.

Linear algebra: for few constraints (m <= DENSE_MAX = 24: d = 2 up to N = 9, d = 3 up to N = 5)
J^T is held as a dense (N d^2, m) matrix and m x m systems are inverted directly (the step is
launch-bound there); above, J J^T is assembled block by block (O(N k^2) gathers) and factorised by
block-tridiagonal Cholesky, the Newton matrix by block LU (O(N k^3) = O(N d^6) flops;
dlnsim.manifold.block_solvers).

Newton projection (`ExactConstraintSolver.newton`): given x on M and a tangent step v, find mu with
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

Shapes: stacked weights (..., N, d, d) (any leading batch dims, usually (B,)). Everything is
batched and free of host synchronisation except, on the CPU only, the early exit of the Newton
loop (where a sync costs nothing).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from .. import _device
from .block_solvers import BlockTridiagonalCholesky, BlockTridiagonalLU, DenseSolver, _mv
from .constraint_map import _stack, _sym_basis, _sym_operator

__all__ = ["NEWTON_METHODS", "NewtonResult", "DENSE_MAX", "ExactConstraintSolver"]

NEWTON_METHODS = ("newton", "chord", "quasi")


class NewtonResult(NamedTuple):
    """Output of ExactConstraintSolver.newton; tensors over the batch dims (...,)."""

    Y: torch.Tensor  # (..., N, d, d) the projected point x + v + J(x)^T mu
    mu: torch.Tensor  # (..., N-1, k) multipliers in the orthonormal coordinates z
    iterations: torch.Tensor  # (...,) number of Newton updates applied (float, for stats)
    converged: torch.Tensor  # (...,) bool: max_p ||G_p(Y)||_F <= tol (and the factorisation succeeded)
    residual: torch.Tensor  # (...,) max_p ||G_p(Y)||_F
    normal_sq: torch.Tensor  # (...,) |Y - (x + v)|^2 = |J(x)^T mu|^2, the size of the normal correction


DENSE_MAX = 24  # up to this many constraints (N-1) d(d+1)/2, J is held as a dense matrix


class ExactConstraintSolver:
    """The constraint map of M around one point x, with J(x) J(x)^T factorised once (lazily).

    W: stacked weights (..., N, d, d), N >= 2. The oracle of the Langevin schemes (their solver
    for few constraints, and the fallback of SingularFrameSolver):
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
    def of(cls, weights, dense: bool | None = None) -> "ExactConstraintSolver":
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
        W = self.W
        Wn, Yn, Wp, Yp = W[..., 1:, :, :], Y[..., 1:, :, :], W[..., :-1, :, :], Y[..., :-1, :, :]
        # L -> sym(L Q) equals L -> sym(Q^T L) (sym A = sym A^T): both diagonal terms are left products.
        diag = 4.0 * (_sym_operator(Yn.mT @ Wn, None, self.basis) + _sym_operator(Yp @ Wp.mT, None, self.basis))
        Wm, Ym = W[..., 1:-1, :, :], Y[..., 1:-1, :, :]
        upper = -4.0 * _sym_operator(Ym.mT, Wm, self.basis)
        lower = -4.0 * _sym_operator(Wm, Ym.mT, self.basis)
        return diag, upper, lower

    def newton_solver(self, Y: torch.Tensor):
        """Solver of the exact Newton matrix J(Y) J(x)^T (dense inverse or block LU)."""
        if self.dense:
            Jy = ExactConstraintSolver(Y, dense=True).jacobian_t()
            return DenseSolver(Jy.mT @ self.jacobian_t(), symmetric=False)
        return BlockTridiagonalLU(*self.newton_blocks(Y))

    # -- projections --------------------------------------------------------------------------
    def project(self, V: torch.Tensor) -> torch.Tensor:
        """P_x V = V - J^T (J J^T)^{-1} J V; V (..., N, d, d) (extra leading dims broadcast)."""
        return V - self.vjp(self.factor.solve(self.jvp(V)))

    def select(self, idx: torch.Tensor) -> "ExactConstraintSolver":
        """The solver of the trajectories idx (1-D batch), reusing the factorisation and J^T."""
        out = ExactConstraintSolver(self.W[idx], dense=self.dense)
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
        W = self.W
        factor = self.factor  # also the flag that x itself is regular
        batch = torch.broadcast_shapes(W.shape[:-3], v.shape[:-3])
        mu = W.new_zeros(*batch, self.depth - 1, self.k)
        Y = W + v
        iters = W.new_zeros(batch)
        cpu = _device.host_reads_free(W.device)
        compact = cpu and method != "chord" and len(batch) == 1 and W.shape[:-3] == v.shape[:-3] == batch
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
                    sub = self.select(idx).newton((Y - W)[idx], tol, max_iter - it, method)
                    Y, mu, iters = Y.clone(), mu.clone(), iters.clone()
                    Y[idx], mu[idx], iters[idx] = sub.Y, mu[idx] + sub.mu, iters[idx] + sub.iterations
                    break
            iters = iters + active.to(iters.dtype)
            if method == "newton":
                solver = self.newton_solver(Y)
            mu = torch.where(active[..., None, None], mu - solver.solve(r), mu)
            Y = W + v + self.vjp(mu)
        res = self.residual(Y).norm(dim=-1).amax(dim=-1)
        converged = (res <= tol) & factor.ok
        corr = Y - W - v
        return NewtonResult(Y, mu, iters, converged, res, (corr * corr).sum(dim=(-3, -2, -1)))

    # The interface the Langevin schemes drive both solvers through (to_frame_coordinates,
    # project_in_frame, newton_in_frame, where; dlnsim.manifold.singular_frame): here the frame
    # is the identity, so frame coordinates are the original ones.
    def to_frame_coordinates(self, V: torch.Tensor) -> torch.Tensor:
        return V

    def project_in_frame(self, V: torch.Tensor) -> torch.Tensor:
        return self.project(V)

    def newton_in_frame(self, v: torch.Tensor, tol: float = 1e-10, max_iter: int = 12, method: str = "newton") -> NewtonResult:
        return self.newton(v, tol=tol, max_iter=max_iter, method=method)

    def where(self, mask: torch.Tensor, other: "ExactConstraintSolver") -> "ExactConstraintSolver":
        """The solver of self where mask (B,) is True, of other elsewhere (factor merged, not recomputed)."""
        out = ExactConstraintSolver(torch.where(mask[..., None, None, None], self.W, other.W), dense=self.dense)
        out._factor = self.factor.where(mask, other.factor)
        return out

