"""Batched solvers of the linear systems of the balanced manifold: block-tridiagonal and small dense.

J J^T (symmetric positive definite) and the Newton matrix J(y) J(x)^T (not symmetric) are block
tridiagonal in the layer pair p with blocks of size k = d(d+1)/2 (dlnsim.manifold.constraint_map):
block Cholesky / block LU solve them in O(N k^3) flops. For few constraints the whole m x m matrix
is inverted instead (`DenseSolver`: the step is launch-bound there). All three share the interface
`.solve(b)` (b in the block layout (..., n, k)), `.ok` (factorisation succeeded), `.select(idx)`
and `.where(mask, other)` (the factor of a subset, or of two merged; Cholesky and dense).
"""
from __future__ import annotations

import torch

__all__ = ["BlockTridiagonalCholesky", "BlockTridiagonalLU", "DenseSolver"]


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


