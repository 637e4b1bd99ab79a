"""Batched SVD, symmetric eigendecomposition and determinant for the small matrices of a step.

    X = U diag(s) V^T,   U, V orthogonal (..., d, d),  s_1 >= ... >= s_d >= 0   (as torch.linalg.svd),
    A = Q diag(w) Q^T,   A symmetric, w ascending                               (as torch.linalg.eigh),

for square X, A of shape (..., d, d). Most theory studies run at d = 2 or 3, where LAPACK's
per-matrix call (gesdd / syevd) is mostly overhead: ~2 us per 2 x 2 SVD, ~4 us per 3 x 3 at
B = 1024 on one CPU core, against a few hundred nanoseconds of arithmetic. Here:

- d = 2, closed form. X = R(phi) diag(q + r, q - r) R(theta) with E = (x11 + x22)/2,
  F = (x11 - x22)/2, G = (x21 + x12)/2, H = (x21 - x12)/2, q = hypot(E, H), r = hypot(F, G),
  phi, theta from atan2(G, F) and atan2(H, E) (Blinn's decomposition: X is the sum of a scaled
  rotation [[E, -H], [H, E]] and a scaled reflection [[F, G], [G, -F]]). No division: repeated
  (r = 0), zero (q = r) and 1e-12-gap singular values give exactly orthogonal U, V from
  cos/sin of well-defined angles (atan2(0, 0) = 0), with backward error a few eps ||X||.
  s_2 = |q - r| carries an absolute error ~eps s_1, which is LAPACK's backward error too.
  eigh at d = 2: the same construction on a symmetric matrix (one angle).
- 3 <= d <= JACOBI_MAX: one-sided (Hestenes) Jacobi over the batch. Columns b_i of B = X V are
  rotated pairwise (cyclic order) until orthogonal; then s_i = |b_i|, sorted, and u_i = b_i / s_i.
  At these sizes the cost is the number of tensor ops, not flops (~2 us of dispatch per op on a
  (1024,) tensor, against ~2.8 us of LAPACK per 3 x 3 matrix), so the columns are kept as
  contiguous (2d, B) tensors (structure of arrays) updated in place, and a rotation is 18 ops with
  none transcendental (Rutishauser's rational tan(theta), rsqrt for the cosine; `_sweep`). X is
  scaled to max |x_ij| = 1 first (no under/overflow in |b_i|^2). One-sided Jacobi gives the
  singular values to high relative accuracy (Demmel & Veselic 1992; measured on column-graded
  matrices, tests), and U is orthogonal to the stopping tolerance whatever the gaps (tiny s_i
  included: the cosines are relative). A random 3 x 3 needs 4 sweeps to reach cosines <=
  _TOL_EPS d eps (3 leave ~30% of them short), so d + 1 sweeps run unchecked and one check follows
  (further sweeps, each checked, only if some matrix is short: a host read, free on the CPU; on
  accelerators svd() uses LAPACK). The columns are then ranked by norm and scattered straight into
  U and Vh (no sort, no transposing copy). 3.2-4.5x LAPACK at B = 1024, 5-6x at B = 4096 (d = 3,
  float64, one thread; break-even near B = 200); a warm start V0 close to V checks from the first
  sweep.
- Fallback and oracle: torch.linalg.svd / eigh. Matrices that are not finite, that did not
  converge in _MAX_SWEEPS, or with a column below sqrt(tiny / tol) of the largest entry after
  rotation (3e-147 in float64, 9e-17 in float32: no reliable direction for u_i; the zero matrix,
  columns that cancel exactly) are recomputed by LAPACK on that subset (CPU, a host read).

`det` is the closed-form determinant for d <= 3 (LAPACK's det is an LU per matrix).
Which d use which kernel: `svd_kernel(d, device)`; tests/test_small_svd.py pins accuracy against
LAPACK (backward error ||X - U S V^T|| / ||X||, orthogonality, singular values) on random,
repeated, zero, 1e-12-gap and badly scaled spectra, in float32 and float64.
"""
from __future__ import annotations

import contextlib
import functools

import torch

from . import _device

__all__ = ["svd", "svdvals", "eigh", "det", "svd2", "eigh2", "jacobi_svd", "svd_kernel", "JACOBI_MAX", "JACOBI_MIN_BATCH", "lapack_only"]

# The Jacobi kernel is used for 3 <= d <= JACOBI_MAX and batches of at least JACOBI_MIN_BATCH
# matrices, where it beats LAPACK on this CPU (~270 tensor ops of ~2 us at d = 3 against ~2.8 us of
# LAPACK per 3 x 3 matrix; measured 0.7x at B = 128, 1.3x at B = 256, 2.2x at B = 512, float64, one
# thread). At d = 4 it measured 1.0x at B = 256, 1.6x at 512, 2.6x at 1024, 3.0x at 4096, but d = 4
# stays on LAPACK until the RLE at d = 4 is rechecked with it.
JACOBI_MAX = 3
JACOBI_MIN_BATCH = 256
# Columns count as orthogonal when |b_i . b_j| <= _TOL_EPS d eps |b_i| |b_j|.
_TOL_EPS = 4.0
_MAX_SWEEPS = 12


_FORCE_LAPACK = False


@contextlib.contextmanager
def lapack_only():
    """Within this context svd, eigh and det call LAPACK for every size (the benchmark's baseline)."""
    global _FORCE_LAPACK
    old, _FORCE_LAPACK = _FORCE_LAPACK, True
    try:
        yield
    finally:
        _FORCE_LAPACK = old


def svd_kernel(d: int, device: torch.device | str = "cpu", batch: int = JACOBI_MIN_BATCH) -> str:
    """Which kernel svd() uses for `batch` matrices (d, d) on device: "closed_form", "jacobi" or "lapack"."""
    if _FORCE_LAPACK:
        return "lapack"
    if d <= 2:
        return "closed_form"
    if _device.host_reads_free(device) and d <= JACOBI_MAX and batch >= JACOBI_MIN_BATCH:
        return "jacobi"
    return "lapack"


def _check(X: torch.Tensor, name: str = "X") -> None:
    if X.dim() < 2 or X.shape[-1] != X.shape[-2]:
        raise ValueError(f"{name} must be a batch of square matrices (..., d, d), got shape {tuple(X.shape)}")


def svd(X: torch.Tensor, V0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """U, s, Vh with X = U diag(s) Vh, like torch.linalg.svd(X) for square X (..., d, d).

    V0: optional warm start (..., d, d) orthogonal, an approximation of V (Jacobi kernel only; the
    result is the same to roundoff). A nearly diagonal X (the RLE's update in the previous frame,
    off-diagonal ~5% of the diagonal) saves no sweep: measured d = 3, 4, B = 1024 with the earlier
    atan2 kernel, checking from the first sweep cost more than the sweep it saved (1.3x vs 1.55x
    LAPACK at d = 3); with the present kernel 3 sweeps still leave ~2% of such matrices short.
    """
    _check(X)
    kind = svd_kernel(X.shape[-1], X.device, X[..., 0, 0].numel())
    if X.shape[-1] == 1 and kind != "lapack":
        s = X.abs()[..., 0]
        sign = torch.where(X[..., 0, :] < 0, -1.0, 1.0).to(X.dtype)
        return sign.unsqueeze(-1), s, torch.ones_like(X)
    if kind == "closed_form":
        return svd2(X)
    if kind == "jacobi":
        return jacobi_svd(X, V0)
    return torch.linalg.svd(X)


def svdvals(X: torch.Tensor) -> torch.Tensor:
    """Singular values (..., d), descending."""
    return svd(X)[1]


def det(X: torch.Tensor) -> torch.Tensor:
    """det X (...,) for square X: closed form for d <= 3, torch.linalg.det above."""
    _check(X)
    d = X.shape[-1]
    if _FORCE_LAPACK:
        return torch.linalg.det(X)
    if d == 1:
        return X[..., 0, 0]
    if d == 2:
        return X[..., 0, 0] * X[..., 1, 1] - X[..., 0, 1] * X[..., 1, 0]
    if d == 3:
        a, b = X[..., 0, :], X[..., 1, :]
        cross = torch.linalg.cross(a, b, dim=-1)
        return (cross * X[..., 2, :]).sum(-1)
    return torch.linalg.det(X)


# ----------------------------------------------------------------------------------------------
# d = 2: closed form


def _rot(c: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """[[c, -s], [s, c]] (..., 2, 2)."""
    return torch.stack([c, -s, s, c], dim=-1).unflatten(-1, (2, 2))


def svd2(X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Closed-form SVD of (..., 2, 2) matrices: U, s (descending, >= 0), Vh (module docstring)."""
    a, b, c, d = X[..., 0, 0], X[..., 0, 1], X[..., 1, 0], X[..., 1, 1]
    E, F = 0.5 * (a + d), 0.5 * (a - d)
    G, H = 0.5 * (c + b), 0.5 * (c - b)
    q, r = torch.hypot(E, H), torch.hypot(F, G)
    a1, a2 = torch.atan2(G, F), torch.atan2(H, E)
    theta, phi = 0.5 * (a2 - a1), 0.5 * (a2 + a1)
    # X = R(phi) diag(q + r, q - r) R(theta), R(a) = [[cos a, -sin a], [sin a, cos a]]; the sign of
    # q - r is moved into U's second column.
    s2 = q - r
    neg = s2 < 0
    cp, sp = torch.cos(phi), torch.sin(phi)
    sgn = torch.where(neg, -1.0, 1.0).to(X.dtype)
    # U = R(phi) diag(1, sgn); Vh = R(theta).
    U = torch.stack([cp, -sp * sgn, sp, cp * sgn], dim=-1).unflatten(-1, (2, 2))
    ct, st = torch.cos(theta), torch.sin(theta)
    Vh = _rot(ct, st)
    return U, torch.stack([q + r, s2.abs()], dim=-1), Vh


def eigh2(A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form eigendecomposition of symmetric (..., 2, 2): w ascending, Q (columns = eigenvectors).

    Only the upper triangle is read (as torch.linalg.eigh reads the lower one; same for symmetric A).
    A = m I + [[f, b], [b, -f]], m = (a + c)/2, f = (a - c)/2: w = m -+ hypot(f, b), and the
    eigenvector of the larger one at angle atan2(b, f)/2.
    """
    a, b, c = A[..., 0, 0], A[..., 0, 1], A[..., 1, 1]
    m, f = 0.5 * (a + c), 0.5 * (a - c)
    r = torch.hypot(f, b)
    t = 0.5 * torch.atan2(b, f)
    ct, st = torch.cos(t), torch.sin(t)
    # columns: (-sin, cos) for m - r, (cos, sin) for m + r
    Q = torch.stack([-st, ct, ct, st], dim=-1).unflatten(-1, (2, 2))
    return torch.stack([m - r, m + r], dim=-1), Q


def eigh(A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w (ascending), Q of symmetric A (..., d, d): closed form at d = 2, torch.linalg.eigh above."""
    _check(A, "A")
    if A.shape[-1] == 2 and not _FORCE_LAPACK:
        return eigh2(A)
    return torch.linalg.eigh(A)


# ----------------------------------------------------------------------------------------------
# 3 <= d <= JACOBI_MAX: one-sided Jacobi


def _sweep(cols: list, rows: list, h: list, d: int, one: torch.Tensor, tiny: torch.Tensor) -> None:
    """One cyclic sweep of one-sided Jacobi, in place on the columns cols[j] = [b_j; v_j] (2d, B).

    rows[j][r] is the (B,) view of b_j's row r, h[j] = |b_j|^2 / 2 (B,). The rotation of (b_p, b_q)
    that makes them orthogonal, with gamma = b_p . b_q and w = (|b_q|^2 - |b_p|^2) / 2, has
    t = tan(theta) = gamma / (w + sign(w) sqrt(w^2 + gamma^2)) (Rutishauser's rational form of
    tan(2 theta) = gamma / w, the root with |theta| <= pi/4, no cancellation), c = 1 / sqrt(1 + t^2),
    and b_p' = c (b_p - t b_q), b_q' = c (b_q + t b_p), |b_p'|^2 = |b_p|^2 - t gamma,
    |b_q'|^2 = |b_q|^2 + t gamma. `tiny` under the square root makes gamma = w = 0 give t = 0 (no
    0/0); it shifts the root only for columns of squared norm ~ tiny, which the fallback catches.
    18 ops on contiguous (B,) / (2d, B) tensors, none transcendental: at these sizes the cost is the
    number of ops (~2 us of dispatch each at B = 1024), not flops.
    """
    for i in range(d):
        for j in range(i + 1, d):
            bp, bq, rp, rq = cols[i], cols[j], rows[i], rows[j]
            g = rp[0] * rq[0]
            for r in range(1, d):
                g.addcmul_(rp[r], rq[r])
            w = h[j] - h[i]
            root = torch.addcmul(tiny, w, w).addcmul_(g, g).sqrt_()
            t = g / root.copysign_(w).add_(w)
            c = torch.addcmul(one, t, t).rsqrt_()
            h[i].addcmul_(t, g, value=-0.5)
            h[j].addcmul_(t, g, value=0.5)
            new_p = torch.addcmul(bp, t, bq, value=-1.0)
            bq.addcmul_(t, bp).mul_(c)
            torch.mul(new_p, c, out=bp)


def _converged(Tb: torch.Tensor, d: int, tol: float, floor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """s = column norms (d, B) of Tb (d [column], d [row], B), and the (B,) mask of matrices whose
    columns are orthogonal: |b_i . b_j| <= tol |b_i| |b_j| for every pair, and min_i |b_i| > floor.

    The pairs are taken d at a time, (i, i + k mod d) for k = 1 .. d // 2 (one roll of the block
    each; every pair is covered, some twice at even d): a few ops on (d, d, B) instead of a few
    per pair. floor = sqrt(tiny / tol): above it tol |b_i| |b_j| is a normal number, so an
    underflowed b_i . b_j cannot pass the test falsely; smaller columns (exact rank deficiency,
    relative size below 3e-147 in float64, 9e-17 in float32) go to the fallback. NaN fails.
    """
    s = Tb.square().sum(1).sqrt_()
    worst = None
    for k in range(1, d // 2 + 1):
        g = (Tb * Tb.roll(-k, 0)).sum(1).abs_()
        m = g.addcmul_(s, s.roll(-k, 0), value=-tol).amax(0)
        worst = m if worst is None else torch.maximum(worst, m)
    ok = (worst <= 0).logical_and_(s.amin(0) > floor)
    return s, ok


@functools.lru_cache(maxsize=64)
def _scatter_layout(d: int, nb: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Index tensors of the final scatter (jacobi_svd): earlier[j, i] = i < j (d, d, 1), and the flat
    offsets of element (row r, matrix b) in U (B, d, d) (b d^2 + r d, (1, d, B)), in Vh (b d^2 + r)
    and of matrix b in s (B, d) (b d, (1, B)); the rank of the column is added to each."""
    idx = torch.arange(d, device=device)
    earlier = (idx.unsqueeze(0) < idx.unsqueeze(1)).unsqueeze(-1)
    b = torch.arange(nb, device=device)
    baseU = (b * (d * d) + (idx * d).unsqueeze(1)).unsqueeze(0)
    baseV = (b * (d * d) + idx.unsqueeze(1)).unsqueeze(0)
    return earlier, baseU, baseV, (b * d).unsqueeze(0)


def jacobi_svd(X: torch.Tensor, V0: torch.Tensor | None = None, sweeps: int | None = None,
               fallback: bool = True, min_sweeps: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One-sided Jacobi SVD of (..., d, d): U, s (descending), Vh. V0: warm start (orthogonal).

    sweeps: None = adaptive: min_sweeps sweeps without a check (default d + 1 = 4 at d = 3, after
    which no random 3 x 3 of 4096 is left unconverged; 1 with a warm start V0), then a check after
    each further sweep (a host read) until every matrix passes or _MAX_SWEEPS; else exactly that many
    sweeps. fallback: LAPACK for the matrices that failed the final check (module docstring; a host
    read). U = B / s: the converged columns are orthogonal to _TOL_EPS d eps relative to their norms,
    so U is orthogonal to that accuracy whatever the gaps, tiny s_k included; only columns below the
    floor of `_converged` (exact rank deficiency) need the fallback.
    Not differentiable (in-place updates in inference mode): with autograd recording on an X that
    requires grad, it returns torch.linalg.svd(X).
    """
    _check(X)
    if X.requires_grad and torch.is_grad_enabled():
        return torch.linalg.svd(X)  # differentiable; the kernel below updates in place
    d = X.shape[-1]
    batch = X.shape[:-2]
    Xf = X.reshape(-1, d, d)
    nb = Xf.shape[0]
    dtype = X.dtype
    finfo = torch.finfo(dtype)
    tol = _TOL_EPS * d * finfo.eps
    floor = (finfo.tiny / tol) ** 0.5
    if min_sweeps is None:
        min_sweeps = 1 if V0 is not None else d + 1
    # The outputs are ordinary tensors, written in place below.
    U = torch.empty(nb, d, d, dtype=dtype, device=X.device)
    Vh = torch.empty(nb, d, d, dtype=dtype, device=X.device)
    s_sorted = torch.empty(nb, d, dtype=dtype, device=X.device)
    # Inference mode: ~12% less dispatch per op (the outputs above are ordinary tensors).
    with torch.inference_mode():
        # Scale to max |x_ij| = 1: the squared norms and cosines then neither underflow nor overflow.
        scale = Xf.reshape(nb, d * d).abs().amax(1).clamp_min_(finfo.tiny)
        # Structure of arrays: T[j] = column j of [B; V], a contiguous (2d, nb) block.
        T = torch.zeros(d, 2 * d, nb, dtype=dtype, device=X.device)
        if V0 is None:
            torch.div(Xf.permute(2, 1, 0), scale, out=T[:, :d])
            T[:, d:].diagonal(dim1=0, dim2=1).fill_(1.0)
        else:
            V0f = V0.reshape(-1, d, d)
            torch.div((Xf @ V0f).permute(2, 1, 0), scale, out=T[:, :d])
            T[:, d:] = V0f.permute(2, 1, 0)
        cols = list(T.unbind(0))
        rows = [list(c[:d].unbind(0)) for c in cols]
        one = torch.ones((), dtype=dtype, device=X.device)
        tiny = torch.full((), finfo.tiny, dtype=dtype, device=X.device)
        h = list(T[:, :d].square().sum(1).mul_(0.5).unbind(0))
        n = _MAX_SWEEPS if sweeps is None else sweeps
        done = min(min_sweeps, n)
        for _ in range(done):
            _sweep(cols, rows, h, d, one, tiny)
        while True:
            s, ok = _converged(T[:, :d], d, tol, floor)
            ok_all = bool(ok.all()) if (sweeps is None or fallback) else False
            if done >= n or (sweeps is None and ok_all):
                break
            # the tracked |b_j|^2 drift (cancellation in |b_p|^2 - t gamma): restart them from s
            h = list(s.square().mul_(0.5).unbind(0))
            _sweep(cols, rows, h, d, one, tiny)
            done += 1
        # Sort the columns by |b_j|, descending, without a sort: rank_j = #{i: s_i > s_j} +
        # #{i < j: s_i = s_j} (ties keep their order), and each column is put straight at its
        # place in U (B, d [row], d [rank]) and Vh (B, d [rank], d [row]): one scatter each, no
        # transposing copy of the structure-of-arrays block (a sort + gather costs ~2x more here).
        # A NaN norm gives no rank: those matrices failed `ok` and are recomputed below.
        T[:, :d] /= s.clamp_min(finfo.tiny).unsqueeze(1)
        Si, Sj = s.unsqueeze(0), s.unsqueeze(1)  # (1, d, B) [i], (d, 1, B) [j]
        earlier, baseU, baseV, baseS = _scatter_layout(d, nb, X.device)
        rank = torch.where(earlier, Si >= Sj, Si > Sj).sum(1)  # (d [j], B)
        U.view(-1).put_(baseU + rank.unsqueeze(1), T[:, :d])
        Vh.view(-1).put_(baseV + (rank * d).unsqueeze(1), T[:, d:])
        s_sorted.view(-1).put_(baseS + rank, s)
        bad = None if not fallback or ok_all else (~ok).nonzero()[:, 0]
    s = s_sorted.mul_(scale[:, None])
    if bad is not None:
        Ul, sl, Vhl = torch.linalg.svd(Xf[bad])
        U[bad], s[bad], Vh[bad] = Ul, sl, Vhl
    return U.reshape(*batch, d, d), s.reshape(*batch, d), Vh.reshape(*batch, d, d)
