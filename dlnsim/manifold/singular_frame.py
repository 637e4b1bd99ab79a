"""The singular-frame solver of the balanced manifold: J J^T diagonal in the singular frames of x.

The fast path of the Langevin schemes (O(N d^3) per step), with the exact solver
(dlnsim.manifold.exact) as its fallback on the CPU; the class docstring gives the construction.
Naming: frame coordinates are the coordinates of a vector in the singular frames Q_p of x
(V_p -> Q_p^T V_p Q_{p-1}); methods that take or return them say so (`to_frame_coordinates`,
`project_in_frame`, `newton_in_frame`, ...), and a trailing t on a variable (Wt, Vt, Lt) marks a
quantity in frame coordinates (the tilde of the formulas).
"""
from __future__ import annotations

import functools

import torch

from .. import _device, small_svd
from .constraint_map import _sym_basis
from .exact import ExactConstraintSolver, NewtonResult

__all__ = ["SingularFrameSolver"]

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


class SingularFrameSolver:
    """The constraint map of M around x, in the singular frames of x (the fast path, O(N d^3)).

    At a balanced point W_p = Q_p diag(l) Q_{p-1}^T (l = s^{1/N}, Q_0 = V, Q_N = U; docs/theory.md section 2).
    Frames: Q_0, l^2 from one eigh of W_1^T W_1, then Q_p = W_p Q_{p-1} diag(1/l) (exact on M), made
    orthogonal to roundoff by one Newton-Schulz step Q <- Q (3 I - Q^T Q) / 2. Frame coordinates
    Vt_p = Q_p^T V_p Q_{p-1} (parameters) and Lt_p = Q_p^T L_p Q_p (constraints, symmetric) are
    isometries, so projections and norms computed there are the exact ones. In them
    x becomes Wt_p = Q_p^T W_p Q_{p-1} = diag(l) + (roundoff, and the O(tol / l^2) imbalance of x), and

        J^T L  = ( 2 (Wt_p L_{p-1} - L_p Wt_p) )_p,         J V = ( A_p + A_p^T )_p,
        A_p    = Wt_{p+1}^T V_{p+1} - V_p Wt_p^T             (L_0 = L_N = 0; exact, batched matmuls),

    and at Wt = diag(l) exactly, J J^T acts on each entry (i, j) of (L_1, ..., L_{N-1}) as the
    constant-coefficient Jacobi matrix tridiag(-4 l_i l_j, 4 (l_i^2 + l_j^2), -4 l_i l_j) in p,
    diagonalised by the sine transform S_pk = sqrt(2/N) sin(pi p k / N) with eigenvalues
    4 ((l_i - l_j)^2 + 4 l_i l_j sin^2(pi k / 2N)) (k = 1..N-1; no cancellation). That inverse,
    `solve_canonical`, is used as an approximate inverse of the true J J^T:
    - `project_in_frame`: P V = V - J^T z with z from the canonical solve plus `refine` steps of iterative
      refinement against the true operator (default 1: the frame defect is at most ~1e-10 relative
      on trusted frames, so one step reaches roundoff);
    - `newton_in_frame`: simplified Newton y = x + v + J(x)^T mu, mu <- mu - (J J^T)_canonical^{-1} G(y)
      (the "quasi" iteration, linear rate ~ |v| / l_min), masked per trajectory. A trajectory
      whose residual exceeds _STALL_RATIO times its best so far, or whose frame is not trusted, or
      which exhausts max_iter, is handed on the CPU to the exact Newton of ExactConstraintSolver, from
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
        all_good = _device.host_reads_free(W.device) and bool(good.all())
        self.Q = Q if all_good else torch.where(good[..., None, None, None], Q, eye)
        self.l = l
        self.Wt = self.to_frame_coordinates(W)
        self.inv_lam = lam.reciprocal_() if all_good else torch.where(good[..., None, None, None], 1.0 / lam, torch.zeros_like(lam))
        self.S = S
        self.ok = good

    # -- coordinates --------------------------------------------------------------------------
    def _shifted(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """T[1:], T[:-1] along the layer axis of the attribute T = self.<name>, as contiguous tensors made
        once per value of T: slices along the layer axis are not batch-contiguous, and matmul would copy
        them at every call."""
        T = getattr(self, name)
        cache = self.__dict__.get("_shifted_" + name)
        if cache is None or cache[0] is not T:
            cache = (T, T[..., 1:, :, :].contiguous(), T[..., :-1, :, :].contiguous())
            self.__dict__["_shifted_" + name] = cache
        return cache[1], cache[2]

    def _slices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(Q_1..Q_N), (Q_0..Q_{N-1})."""
        return self._shifted("Q")

    def to_frame_coordinates(self, V: torch.Tensor) -> torch.Tensor:
        """Vt_p = Q_p^T V_p Q_{p-1}, (..., N, d, d)."""
        Qn, Qp = self._slices()
        return Qn.mT @ V @ Qp

    def from_frame_coordinates(self, Vt: torch.Tensor) -> torch.Tensor:
        """V_p = Q_p Vt_p Q_{p-1}^T."""
        Qn, Qp = self._slices()
        return Qn @ Vt @ Qp.mT

    def sym_from_frame_coordinates(self, Lt: torch.Tensor) -> torch.Tensor:
        """L_p = Q_p Lt_p Q_p^T for constraint-space matrices (..., N-1, d, d)."""
        Qm = self.Q[..., 1:-1, :, :]
        return Qm @ Lt @ Qm.mT

    # -- operators in frame coordinates --------------------------------------------------------
    def _wt_slices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(Wt_2..Wt_N), (Wt_1..Wt_{N-1})."""
        return self._shifted("Wt")

    def jvp_in_frame(self, V: torch.Tensor) -> torch.Tensor:
        Wn, Wp = self._wt_slices()
        A = Wn.mT @ V[..., 1:, :, :] - V[..., :-1, :, :] @ Wp.mT
        return A + A.mT

    def vjp_in_frame(self, L: torch.Tensor) -> torch.Tensor:
        # (J^T L)_p = 2 (Wt_p L_{p-1} - L_p Wt_p), L_0 = L_N = 0: the two products on contiguous operands.
        Wn, Wp = self._wt_slices()
        T1, T2 = Wn @ L, L @ Wp  # Wt_p L_{p-1} for p = 2..N; L_p Wt_p for p = 1..N-1
        out = torch.cat([-T2[..., :1, :, :], T1[..., :-1, :, :] - T2[..., 1:, :, :], T1[..., -1:, :, :]], dim=-3)
        return out.mul_(2.0)

    def solve_canonical(self, R: torch.Tensor) -> torch.Tensor:
        """(J J^T)^{-1} R at Wt = diag(l) exactly: sine transform in p, divide, transform back."""
        # S is symmetric; mixing over the layer axis as one matmul on (..., N-1, d*d) (no permute copies).
        S = self.S
        Rh = (S @ R.flatten(-2)).view(R.shape) * self.inv_lam
        return (S @ Rh.flatten(-2)).view(R.shape)

    def project_in_frame(self, V: torch.Tensor) -> torch.Tensor:
        """P_x V for V in frame coordinates (returned in frame coordinates)."""
        r = self.jvp_in_frame(V)
        z = self.solve_canonical(r)
        for _ in range(self.refine):
            z = z + self.solve_canonical(r - self.jvp_in_frame(self.vjp_in_frame(z)))
        P = V - self.vjp_in_frame(z)
        if _device.host_reads_free(self.W.device) and self.W.dim() == 4 and not bool(self.ok.all()):
            # Untrusted frames are identities: the exact projector on that subset (CPU host sync).
            idx = (~self.ok).nonzero()[:, 0]
            P = P.clone()
            P[idx] = ExactConstraintSolver(self.W[idx]).project(V.expand_as(P)[idx])
        return P

    def project(self, V: torch.Tensor) -> torch.Tensor:
        """P_x V in original coordinates."""
        return self.from_frame_coordinates(self.project_in_frame(self.to_frame_coordinates(V)))

    def where(self, mask: torch.Tensor, other: "SingularFrameSolver") -> "SingularFrameSolver":
        """The frame of self where mask (B,) is True, of other elsewhere."""
        out = SingularFrameSolver.__new__(SingularFrameSolver)
        out.__dict__.update(self.__dict__)
        m4 = mask[..., None, None, None]
        out.W = torch.where(m4, self.W, other.W)
        out.Q = torch.where(m4, self.Q, other.Q)
        out.Wt = torch.where(m4, self.Wt, other.Wt)
        out.inv_lam = torch.where(m4, self.inv_lam, other.inv_lam)
        out.l = torch.where(mask[..., None], self.l, other.l)
        out.ok = torch.where(mask, self.ok, other.ok)
        return out

    # -- Newton projection ---------------------------------------------------------------------
    def newton_in_frame(self, v: torch.Tensor, tol: float = 1e-10, max_iter: int = 12, method: str = "newton",
                 want_mu: bool = False, fallback: bool | None = None, v_orig: torch.Tensor | None = None) -> NewtonResult:
        """Find mu with G(x + v + J(x)^T mu) = 0, v (..., N, d, d) in frame coordinates.

        Returns Y in ORIGINAL coordinates; residual and `converged` are evaluated there (so they mean
        what the exact path's mean). mu (z coordinates, as ExactConstraintSolver.newton) only if want_mu,
        else None. method: the exact Newton method of the CPU fallback (NEWTON_METHODS). fallback:
        run that fallback (default: on the CPU only, where its host sync is free). v_orig: v in
        original coordinates (saves a transform). Untrusted frames (self.ok False) are identity
        frames (isometries): no frame iteration there, only the fallback.
        """
        Wt = self.Wt
        batch = torch.broadcast_shapes(Wt.shape[:-3], v.shape[:-3])
        N, d = self.depth, self.d
        iters = Wt.new_zeros(batch)
        live = self.ok.expand(batch)
        prev = torch.full(batch, float("inf"), dtype=Wt.dtype, device=Wt.device)
        cpu = _device.host_reads_free(Wt.device)
        # The iterates use the canonical adjoint J_D^T (elementwise); y itself is formed with the exact
        # J(x)^T below. They differ by 2 |Wt - diag(l)| |mu| (~1e-13 |v|^2 on trusted frames), far
        # below tol; the inner tolerance tol/2 leaves room for it, and the residual is re-evaluated.
        base = Wt + v
        # Layer-major layout (N, *batch, d, d) inside the loop: layer slices are contiguous, the sine
        # transform over p is one (N-1, N-1) x (N-1, B d^2) matmul, and no op copies its operands.
        base_l = base.movedim(-3, 0).contiguous()
        Lpad = base_l.new_zeros(N + 1, *batch, d, d)  # (0, L_1, ..., L_{N-1}, 0)
        # J_D^T L = 2 l_i L_{p-1,ij} - 2 L_{p,ij} l_j; per-trajectory tensors expanded to the batch
        # so that the loop can continue on a subset.
        l2 = 2.0 * self.l.expand(*batch, d)
        inv_lam = self.inv_lam.expand(*batch, N - 1, d, d).movedim(-3, 0)
        compact = cpu and len(batch) == 1
        # Budget: max_iter updates, as for the exact solver. The rate is linear (~0.1 at d = 8, 0.3-0.9
        # at d = 16 for h = 0.01, beta = 10), the tail is cheap once compacted to the few active
        # trajectories, and every trajectory kept off the exact path saves an O(N d^6) block
        # factorisation per update: the Langevin schemes pass max_iter = 36 (their default).
        iters = _frame_iterate(base_l, Lpad, li2=l2[..., :, None], lj2=l2[..., None, :], inv_lam=inv_lam, S=self.S,
                               live=live, prev=prev, iters=iters, tol=0.5 * tol, n_iter=max_iter, cpu=cpu,
                               compact=compact)
        L = Lpad[1:N].movedim(0, -3)
        C = self.vjp_in_frame(L)
        Y = base + C
        normal_sq = (C * C).sum(dim=(-3, -2, -1))
        Yo = self.from_frame_coordinates(Y)
        res = _residual_norm(Yo)
        converged = (res <= tol) & self.ok
        if cpu and len(batch) == 1:
            # Trusted frames whose canonical iteration stopped short of tol (near rank-deficient x the
            # gap between J_D^T and J(x)^T, ~|Wt - diag(l)| |mu| with |Wt - diag(l)| ~ tol / l_min^2 from
            # the imbalance of x, puts the canonical iteration's floor above tol): continue with the
            # exact adjoint on that subset. Measured d = 16, N = 4: the only exact fallbacks left were
            # such trajectories (l_min ~ 0.05, residual stuck at 1e-10 .. 5e-9).
            polish = ~converged & self.ok.expand(batch) & torch.isfinite(res)
            if bool(polish.any()):
                idx = polish.nonzero()[:, 0]
                Ls, its = self._polish(idx, base[idx], L[idx], 0.5 * tol, max_iter)
                L = L.clone()
                L[idx] = Ls
                iters = iters.index_add(0, idx, its)
                C = self.vjp_in_frame(L)
                Y = base + C
                normal_sq = (C * C).sum(dim=(-3, -2, -1))
                Yo = self.from_frame_coordinates(Y)
                res = _residual_norm(Yo)
                converged = (res <= tol) & self.ok
        mu = None
        if want_mu:
            Lo = self.sym_from_frame_coordinates(L)
            mu = Lo.flatten(-2) @ _sym_basis(self.d, Lo.dtype, Lo.device).Z.mT
        if fallback is None:
            fallback = cpu
        retry = ~converged  # untrusted frames are identities, so v is meaningful there too
        if fallback and len(batch) == 1 and bool(retry.any()):
            # Exact Newton on the failures, from mu = 0: the same root the exact path would find.
            idx = retry.nonzero()[:, 0]
            Wb = self.W.expand(*batch, *self.W.shape[-3:])
            vo = (self.from_frame_coordinates(v) if v_orig is None else v_orig).expand(*batch, *v.shape[-3:])
            # One or two trajectories: the dense solver is launch-bound and about twice as fast as the
            # block one up to m ~ 250 entries in all (same numbers to roundoff).
            dense = True if idx.numel() * (self.depth - 1) * self.d * (self.d + 1) <= 2 * _DENSE_FALLBACK_MAX else None
            sub = ExactConstraintSolver(Wb[idx], dense=dense).newton(vo[idx], tol=tol, max_iter=max_iter, method=method)
            Yo, iters, res, normal_sq, converged = Yo.clone(), iters.clone(), res.clone(), normal_sq.clone(), converged.clone()
            Yo[idx], res[idx], normal_sq[idx], converged[idx] = sub.Y, sub.residual, sub.normal_sq, sub.converged
            iters[idx] = iters[idx] + sub.iterations
            if want_mu:
                mu = mu.clone()
                mu[idx] = sub.mu
        return NewtonResult(Yo, mu, iters, converged, res, normal_sq)

    def _polish(self, idx: torch.Tensor, base: torch.Tensor, L: torch.Tensor, tol: float, max_iter: int):
        """Simplified Newton on the trajectories idx with the exact adjoint J(x)^T (frame coordinates)
        and the canonical inverse; base = Wt + v, L (n, N-1, d, d) the start. Returns the new L and
        the number of updates per trajectory.

        Each trajectory stops once its frame-coordinate residual is <= tol or exceeds _STALL_RATIO
        times its best (then the exact fallback takes it); the others do not affect it.
        """
        N = self.depth
        Wt = self.Wt.expand(self.ok.shape[0], *self.Wt.shape[-3:])[idx] if self.Wt.dim() > 3 else self.Wt
        inv_lam = self.inv_lam.expand(self.ok.shape[0], *self.inv_lam.shape[-3:])[idx] if self.inv_lam.dim() > 3 else self.inv_lam
        S = self.S
        zero = torch.zeros_like(L[..., :1, :, :])
        best = torch.full(L.shape[:-3], float("inf"), dtype=L.dtype, device=L.device)
        live = torch.ones_like(best, dtype=torch.bool)
        its = torch.zeros_like(best)
        for _ in range(max_iter):
            Lp = torch.cat([zero, L, zero], dim=-3)
            Y = base + 2.0 * (Wt @ Lp[..., :-1, :, :] - Lp[..., 1:, :, :] @ Wt)
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
        """As ExactConstraintSolver.newton: v and Y in original coordinates, mu in z coordinates."""
        return self.newton_in_frame(self.to_frame_coordinates(v), tol=tol, max_iter=max_iter, method=method, want_mu=True, v_orig=v)


# On the CPU the frame loop continues on the still-active subset once it is below this fraction.
_COMPACT_FRACTION = 0.125
# The exact fallback uses the dense solver while (trajectories) x (N-1) d(d+1)/2 is at most this.
_DENSE_FALLBACK_MAX = 256


def _frame_iterate(base, Lpad, *, li2, lj2, inv_lam, S, live, prev, iters, tol, n_iter, cpu, compact):
    """The simplified-Newton loop of SingularFrameSolver.newton_in_frame, layer-major, updating Lpad in place.

    base (N, B.., d, d) = Wt + v; Lpad (N+1, B.., d, d) = (0, L_1, ..., L_{N-1}, 0); li2, lj2
    (B.., d, 1), (B.., 1, d) = 2 l; inv_lam (N-1, B.., d, d); live, prev, iters (B..,). Layer-major:
    layer slices are contiguous, the sine transform over p is one (N-1, N-1) x (N-1, B d^2) matmul.
    S (N-1, N-1): the sine transform of `_dst`. tol, n_iter: stop a trajectory at residual <= tol,
    the loop after n_iter updates. Returns the updated iteration counts. cpu: host reads are free
    (early exit). compact (CPU, one batch dim): once few trajectories are still active, the loop
    continues on them only (their iterates do not depend on the others).
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
                sub_it = _frame_iterate(base[:, idx], sub_L, li2=li2[idx], lj2=lj2[idx], inv_lam=inv_lam[:, idx], S=S,
                                        live=live[idx], prev=prev[idx], iters=iters[idx], tol=tol, n_iter=n_iter - it,
                                        cpu=cpu, compact=compact)
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

