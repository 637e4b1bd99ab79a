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
  At these sizes the cost is the number of tensor ops, not flops, so the columns are kept as
  contiguous (2d, B) tensors (structure of arrays): a strided op on (B, 3, 3) costs ~25 times an
  elementwise op on (B,). X is scaled to max |x_ij| = 1 first (no under/overflow in |b_i|^2).
  One-sided Jacobi gives the singular values to high relative accuracy (Demmel & Veselic 1992),
  and U is orthogonal to the stopping tolerance whatever the gaps (tiny s_i included: the cosines
  are relative). The sweep count adapts (stop after the first sweep, from sweep d on, after which
  every pair's cosine is <= _TOL_EPS d eps; a random 3 x 3 needs 4 sweeps); the host read is free
  on the CPU, and on accelerators svd() uses LAPACK. A warm start V0 close to V checks from the
  first sweep.
- Fallback and oracle: torch.linalg.svd / eigh. Matrices that are not finite, that did not
  converge in _MAX_SWEEPS, or with an exactly zero column after rotation (no direction for u_i:
  the zero matrix, exact rank deficiency) are recomputed by LAPACK on that subset (CPU, a host
  read).

`det` is the closed-form determinant for d <= 3 (LAPACK's det is an LU per matrix).
Which d use which kernel: `svd_kernel(d, device)`; tests/test_small_svd.py pins accuracy against
LAPACK (backward error ||X - U S V^T|| / ||X||, orthogonality, singular values) on random,
repeated, zero, 1e-12-gap and badly scaled spectra, in float32 and float64.
"""
from __future__ import annotations

import contextlib

import torch

from . import _device

__all__ = ["svd", "svdvals", "eigh", "det", "svd2", "eigh2", "jacobi_svd", "svd_kernel", "JACOBI_MAX", "JACOBI_MIN_BATCH", "lapack_only"]

# The Jacobi kernel is used for 3 <= d <= JACOBI_MAX and batches of at least JACOBI_MIN_BATCH
# matrices, where it beats LAPACK on this CPU (scripts/bench.py (f): ~300 tensor ops of a few us
# each against ~4 us of LAPACK per 3 x 3 matrix: break-even near B = 600 at d = 3, B = 1000 at d = 4).
JACOBI_MAX = 3
JACOBI_MIN_BATCH = 1024
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
    off-diagonal ~5% of the diagonal) saves no sweep: measured d = 3, 4, B = 1024, checking from
    the first sweep costs more than the sweep it saves (1.3x vs 1.55x LAPACK at d = 3).
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


def _gram_offdiag(cols: list, d: int) -> torch.Tensor:
    """max over pairs of |cos| = |b_p . b_q| / (|b_p| |b_q|), (B,).

    Norms are taken before the product: gamma^2 / (alpha_p alpha_q) underflows in float32 for
    columns of relative size 1e-8 and 1e-11 (a rank-one matrix), which would pass the test falsely.
    """
    tiny = torch.finfo(cols[0].dtype).tiny
    norms = [(c[:d] * c[:d]).sum(0).sqrt_() for c in cols]
    out = None
    for i in range(d):
        for j in range(i + 1, d):
            bp, bq = cols[i], cols[j]
            g = bp[0] * bq[0]
            for r in range(1, d):
                g = g.addcmul_(bp[r], bq[r])
            rel = g.abs_().div_(norms[i] * norms[j] + tiny)
            out = rel if out is None else torch.maximum(out, rel)
    return out, norms


def _jacobi_columns(cols: list, alpha: list, d: int, sweeps: int | None, min_sweeps: int, tol: float) -> torch.Tensor:
    """Cyclic one-sided Jacobi on the columns cols[j] = [b_j; v_j] (2d, B) (structure of arrays).

    Every op is on a contiguous (B,) or (2d, B) tensor: at these sizes the cost is the number of
    ops, not flops (a strided reduction over (B, d, d) costs as much as dozens of elementwise ops).
    alpha[j] = |b_j|^2 is kept up to date by the exact rotation identities alpha_p' = alpha_p -
    t gamma, alpha_q' = alpha_q + t gamma (t = tan of the angle) and recomputed at each check.
    Adaptive mode (sweeps None): from sweep min_sweeps on, stop once every pair's cosine is <= tol
    after the sweep (one Gram evaluation, ~1/3 of a sweep). Returns the (B,) largest cosine at the
    last check (inf if none was made).
    """
    pairs = [(i, j) for i in range(d) for j in range(i + 1, d)]
    ref = cols[0]
    two = torch.full((), 2.0, dtype=ref.dtype, device=ref.device)
    n = _MAX_SWEEPS if sweeps is None else sweeps
    off = None
    for sweep in range(1, n + 1):
        for i, j in pairs:
            bp, bq = cols[i], cols[j]
            g = bp[0] * bq[0]
            for r in range(1, d):
                g = g.addcmul_(bp[r], bq[r])
            a, b = alpha[i], alpha[j]
            diff = b - a
            # tan(2 theta) = 2 gamma / (alpha_q - alpha_p), the root with |theta| <= pi/4 (the convergent
            # choice); gamma = 0 gives theta = 0 (atan2(0, x >= 0) = 0).
            theta = torch.atan2(torch.copysign(two, diff).mul_(g), diff.abs()).mul_(0.5)
            c, s = torch.cos(theta), torch.sin(theta)
            tg = (s / c).mul_(g)
            alpha[i], alpha[j] = a - tg, b + tg
            cols[i] = torch.addcmul(c * bp, s, bq, value=-1.0)
            cols[j] = torch.addcmul(c * bq, s, bp)
        if sweep >= min_sweeps and (sweeps is None or sweep == n):
            off, norms = _gram_offdiag(cols, d)
            alpha[:] = [nrm * nrm for nrm in norms]
            if sweeps is None and bool((off <= tol).all()):
                break
    if off is None:
        return torch.full_like(alpha[0], float("inf"))
    return off


def jacobi_svd(X: torch.Tensor, V0: torch.Tensor | None = None, sweeps: int | None = None,
               fallback: bool = True, min_sweeps: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One-sided Jacobi SVD of (..., d, d): U, s (descending), Vh. V0: warm start (orthogonal).

    sweeps: None = adaptive (until converged, at most _MAX_SWEEPS; a host read per check), else
    that many sweeps. min_sweeps: first sweep after which convergence is checked (default 1 with a
    warm start V0, else d: a random 3 x 3 matrix needs 4 sweeps, a nearly diagonal one 1-2). fallback: LAPACK for the matrices that failed (module docstring; a host read).
    U = B / s: the converged columns are orthogonal to ~_TOL_EPS d eps relative to their norms, so U
    is orthogonal to that accuracy whatever the gaps, tiny s_k included; only s_k = 0 exactly
    (no direction at all) needs the fallback.
    """
    _check(X)
    d = X.shape[-1]
    batch = X.shape[:-2]
    Xf = X.reshape(-1, d, d)
    nb = Xf.shape[0]
    eye = torch.eye(d, dtype=X.dtype, device=X.device)
    # Scale to max |x_ij| = 1: the squared norms and cosines then neither underflow nor overflow.
    scale = Xf.flatten(1).abs().amax(1)
    scale = torch.where(scale > 0, scale, 1.0)
    Xs = Xf / scale[:, None, None]
    B0 = Xs if V0 is None else Xs @ V0.reshape(-1, d, d)
    V = eye.expand(nb, d, d) if V0 is None else V0.reshape(-1, d, d)
    # Structure of arrays: column j of [B; V] as a contiguous (2d, nb) tensor.
    T = torch.cat([B0, V], dim=-2).permute(2, 1, 0).contiguous()
    cols = list(T.unbind(0))
    alpha = [(c[:d] * c[:d]).sum(0) for c in cols]
    eps = torch.finfo(X.dtype).eps
    if min_sweeps is None:
        min_sweeps = 1 if V0 is not None else d
    tol = _TOL_EPS * d * eps
    off = _jacobi_columns(cols, alpha, d, sweeps, min_sweeps, tol)
    # Sort the columns by |b_j| (descending) in the structure-of-arrays layout, where the sort and the
    # gather run over contiguous (d, ., nb) blocks; strided ops on (nb, d, d) cost ~50x more here.
    T = torch.stack(cols, dim=0)  # (d [column], 2d [row of B; V], nb)
    s = (T[:, :d] * T[:, :d]).sum(1).sqrt()  # (d, nb)
    s, order = s.sort(dim=0, descending=True)
    T = T.gather(0, order.unsqueeze(1).expand(d, 2 * d, nb))
    U = (T[:, :d] / torch.where(s > 0, s, 1.0).unsqueeze(1)).permute(2, 1, 0).contiguous()
    V = T[:, d:].permute(2, 1, 0).contiguous()
    s = s.mT * scale[:, None]
    if fallback:
        bad = ~(off <= tol) | ~torch.isfinite(s).all(-1) | ~(s[:, -1] > torch.finfo(X.dtype).tiny * 4)
        if bool(bad.any()):
            idx = bad.nonzero()[:, 0]
            Ul, sl, Vhl = torch.linalg.svd(Xf[idx])
            U, s, V = U.clone(), s.clone(), V.clone()
            U[idx], s[idx], V[idx] = Ul, sl, Vhl.mT
    return U.reshape(*batch, d, d), s.reshape(*batch, d), V.mT.reshape(*batch, d, d)
