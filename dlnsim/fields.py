"""Matrices over F = R, C, H as torch tensors: representations, the real trace pairing, SVD, groups.

A DLN over F has weights W_p in M_d(F) and the metric from the real trace pairing

    <A, B>_F = Re tr(A* B)                      (A* the conjugate transpose over F),

under which the fiber group K_d = O(d), U(d), Sp(d) acts isometrically (THEORY.md section 4,
last item; Contreras, Nahas & Kotwal, arXiv 2606.16579). beta_F = dim_R F = 1, 2, 4.

Representations (the choice made here):
- R: real tensors (..., d, d); C: complex tensors (..., d, d) (complex128 recommended).
- H: the complex representation chi. A quaternion matrix Q = A + B j (A, B in M_d(C),
  q = a + b i + c j + d k  <->  A = a + b i, B = c + d i) is stored as the (..., 2d, 2d) complex

      chi(Q) = [[A, B], [-conj(B), conj(A)]].

  chi is an injective *-homomorphism: chi(Q R) = chi(Q) chi(R), chi(Q*) = chi(Q)^H, so products,
  conjugate transposes, the parameter gradient and matrix functions of Q*Q are computed on chi(Q)
  with ordinary complex linear algebra. Its image is {Y : Y J = J conj(Y)}, J = [[0, I], [-I, 0]]
  (`structure_defect` measures the distance to it). The trace pairing picks up a factor:

      Re tr_H(Q* R) = 1/2 Re tr(chi(Q)^H chi(R)) = 1/4 tr(rho(Q)^T rho(R)),

  rho the 4d x 4d real representation (`complex_to_real` of chi). `inner` applies the factor, so
  every formula written with <., .>_F is computed correctly in every representation;
  `Field.pairing_scale` (1, 1, 1/2) is that factor. chi(Q) has the singular values of Q, each twice.

Gradients: grad E is the gradient for <., .>_F: dE = <grad E, dX>_F. Over C it is
2 dE/d(conj X) (the conjugate Wirtinger derivative times 2), which is exactly what torch autograd
stores in X.grad for a real-valued E of a complex X (it returns dE/dRe X + i dE/dIm X). Over H,
if E is written as a function of all of chi(X) and g is torch's gradient there, then
chi(grad E) = 2 P(g) (P = `project_structure`, the orthogonal projection onto the image of chi;
the 2 is 1/pairing_scale).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "Field",
    "FIELDS",
    "get_field",
    "quaternion_from_complex",
    "quaternion_to_complex",
    "quaternion_from_real",
    "quaternion_to_real_parts",
    "complex_to_real",
    "real_to_complex",
    "symplectic_unit",
    "structure_defect",
    "project_structure",
    "embed_diagonal",
    "inner",
    "norm_sq",
    "gaussian",
    "random_group",
    "lie_algebra_basis",
    "singular_values",
    "field_svd",
]


@dataclass(frozen=True)
class Field:
    """F in {R, C, H} as data: beta = dim_R F; rep = size factor of the representation (H: 2d x 2d);
    pairing_scale: <A, B>_F = pairing_scale * Re tr(A^H B) on the representation; group: K_d."""

    name: str
    beta: int
    rep: int
    pairing_scale: float
    group: str
    symbol: str

    def dtype(self, real_dtype: torch.dtype = torch.float64) -> torch.dtype:
        """The torch dtype of the representation: float64 for R, complex128 for C and H."""
        if self.beta == 1:
            return real_dtype
        return {torch.float64: torch.complex128, torch.float32: torch.complex64}[real_dtype]

    def lie_dim(self, d: int) -> int:
        """dim_R of k_d = o(d), u(d), sp(d): d(d-1)/2, d^2, d(2d+1) = beta d(d-1)/2 + (beta-1) d."""
        return self.beta * d * (d - 1) // 2 + (self.beta - 1) * d

    def matrix_size(self, d: int) -> int:
        """Size of the representing matrix of an element of M_d(F)."""
        return self.rep * d


FIELDS = {
    "real": Field("real", 1, 1, 1.0, "O", "R"),
    "complex": Field("complex", 2, 1, 1.0, "U", "C"),
    "quaternion": Field("quaternion", 4, 2, 0.5, "Sp", "H"),
}


def get_field(field) -> Field:
    """A Field from itself or its name ('real', 'complex', 'quaternion')."""
    if isinstance(field, Field):
        return field
    if field not in FIELDS:
        raise ValueError(f"field must be one of {tuple(FIELDS)}, got {field!r}")
    return FIELDS[field]


# ---- quaternion representations -------------------------------------------------------------


def quaternion_to_complex(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """chi(A + B j) = [[A, B], [-conj(B), conj(A)]], shape (..., 2d, 2d) from A, B (..., d, d) complex."""
    top = torch.cat([A, B], dim=-1)
    bottom = torch.cat([-B.conj(), A.conj()], dim=-1)
    return torch.cat([top, bottom], dim=-2)


def quaternion_from_complex(Y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) with Y = chi(A + B j), read from the first block row of Y (..., 2d, 2d)."""
    d = Y.shape[-1] // 2
    return Y[..., :d, :d], Y[..., :d, d:]


def quaternion_from_real(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """chi(a + b i + c j + d k) for real (..., n, n) component matrices; (..., 2n, 2n) complex."""
    return quaternion_to_complex(torch.complex(a, b), torch.complex(c, d))


def quaternion_to_real_parts(Y: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(a, b, c, d) real component matrices of the quaternion matrix represented by Y = chi(Q)."""
    A, B = quaternion_from_complex(Y)
    return A.real, A.imag, B.real, B.imag


def complex_to_real(Z: torch.Tensor) -> torch.Tensor:
    """Realification [[Re Z, -Im Z], [Im Z, Re Z]] (..., 2n, 2n): a *-homomorphism with
    tr(r(Z)^T r(Z')) = 2 Re tr(Z^H Z'). Applied to chi it gives the 4d x 4d real representation of H."""
    top = torch.cat([Z.real, -Z.imag], dim=-1)
    bottom = torch.cat([Z.imag, Z.real], dim=-1)
    return torch.cat([top, bottom], dim=-2)


def real_to_complex(R: torch.Tensor) -> torch.Tensor:
    """Inverse of `complex_to_real`: Z = R_11 + i R_21 from the (..., 2n, 2n) realification."""
    n = R.shape[-1] // 2
    return torch.complex(R[..., :n, :n], R[..., n:, :n])


def symplectic_unit(n: int, dtype=torch.complex128, device=None) -> torch.Tensor:
    """J = [[0, I_n], [-I_n, 0]], (2n, 2n)."""
    eye = torch.eye(n, dtype=dtype, device=device)
    zero = torch.zeros_like(eye)
    return torch.cat([torch.cat([zero, eye], -1), torch.cat([-eye, zero], -1)], -2)


def _j_conj(Y: torch.Tensor) -> torch.Tensor:
    """J conj(Y) J^T, the antiunitary image; Y is in the image of chi iff this equals Y."""
    d = Y.shape[-1] // 2
    Yc = Y.conj()
    # J M J^T = [[M22, -M21], [-M12, M11]] for M in blocks: cheaper than two matmuls.
    top = torch.cat([Yc[..., d:, d:], -Yc[..., d:, :d]], dim=-1)
    bottom = torch.cat([-Yc[..., :d, d:], Yc[..., :d, :d]], dim=-1)
    return torch.cat([top, bottom], dim=-2)


def project_structure(Y: torch.Tensor) -> torch.Tensor:
    """Orthogonal projection (for Re tr(A^H B)) of a complex (..., 2d, 2d) matrix onto chi(M_d(H))."""
    return 0.5 * (Y + _j_conj(Y))


def structure_defect(Y: torch.Tensor) -> torch.Tensor:
    """||Y - J conj(Y) J^T||_F / 2 = distance of Y to chi(M_d(H)); shape (...,). 0 for a quaternion matrix."""
    return torch.linalg.matrix_norm(Y - _j_conj(Y)) / 2


def embed_diagonal(s: torch.Tensor, field) -> torch.Tensor:
    """The representation of diag(s) in M_d(F) for real s (..., d): diag(s) or, over H, diag(s, s)."""
    F = get_field(field)
    D = torch.diag_embed(s)
    if F.beta == 1:
        return D
    D = D.to(F.dtype(s.dtype))
    return quaternion_to_complex(D, torch.zeros_like(D)) if F.beta == 4 else D


# ---- the real trace pairing -----------------------------------------------------------------


def inner(A: torch.Tensor, B: torch.Tensor, field) -> torch.Tensor:
    """<A, B>_F = Re tr(A* B) over F, from representations A, B (..., n, n); shape (...,)."""
    F = get_field(field)
    val = (A.conj() * B).sum(dim=(-2, -1))
    return F.pairing_scale * (val.real if val.is_complex() else val)


def norm_sq(A: torch.Tensor, field) -> torch.Tensor:
    """||A||_F^2 = Re tr(A* A); shape (...,)."""
    return inner(A, A, field)


# ---- random matrices and groups -------------------------------------------------------------


def gaussian(shape: tuple[int, ...], d: int, field, dtype=torch.float64, device=None, generator=None) -> torch.Tensor:
    """A standard Gaussian on M_d(F): iid N(0, 1) coordinates in an orthonormal basis of <., .>_F.

    So each entry has beta independent N(0,1) real components and E ||X||_F^2 = beta d^2.
    Returns the representation, (*shape, d, d) (R, C) or (*shape, 2d, 2d) (H). dtype: the real dtype.
    """
    F = get_field(field)
    kw = dict(dtype=dtype, device=device, generator=generator)
    parts = [torch.randn(*shape, d, d, **kw) for _ in range(F.beta)]
    if F.beta == 1:
        return parts[0]
    if F.beta == 2:
        return torch.complex(*parts)
    return quaternion_from_real(*parts)


def random_group(shape: tuple[int, ...], d: int, field, dtype=torch.float64, device=None, generator=None) -> torch.Tensor:
    """Haar-distributed elements of K_d = O(d), U(d), Sp(d), in the representation.

    The unitary polar factor Z (Z^H Z)^{-1/2} = U V^H of a Gaussian Z (`gaussian`): its law is
    invariant under left multiplication by K_d because the Gaussian's is, and it is unique for
    invertible Z, so over H it is a quaternion matrix (no structure is lost through the complex SVD).
    """
    Z = gaussian(shape, d, field, dtype, device, generator)
    U, _, Vh = torch.linalg.svd(Z)
    return U @ Vh


def lie_algebra_basis(d: int, field, dtype=torch.float64, device=None) -> torch.Tensor:
    """Orthonormal basis of k_d = o(d), u(d), sp(d) for <., .>_F; (dim k_d, n, n) representations.

    Off-diagonal (i < j), one element per real unit e of F (1; 1, i; 1, i, j, k):
        (e E_ij - conj(e) E_ji) / sqrt 2     (for e = 1: (E_ij - E_ji)/sqrt 2, as `so_basis`);
    diagonal, one per imaginary unit e (none over R): e E_ii.
    """
    F = get_field(field)
    n = F.matrix_size(d)
    cdt = F.dtype(dtype)
    units = _units(F, cdt, device)  # representations of 1, i, (j, k) as (rep, rep) matrices
    r = F.rep
    out = []

    def place(i: int, j: int, e: torch.Tensor) -> torch.Tensor:
        M = torch.zeros(n, n, dtype=cdt, device=device)
        # unit e of size (r, r) placed at quaternion position (i, j): rows i, i+d (over H), cols j, j+d
        for a in range(r):
            for b in range(r):
                M[i + a * d, j + b * d] = e[a, b]
        return M

    for i in range(d):
        for j in range(i + 1, d):
            for e in units:
                out.append((place(i, j, e) - place(j, i, e.mH)) / 2**0.5)
    for i in range(d):
        for e in units[1:]:
            out.append(place(i, i, e))
    return torch.stack(out) if out else torch.zeros(0, n, n, dtype=cdt, device=device)


def _units(F: Field, dtype, device) -> list[torch.Tensor]:
    if F.beta == 1:
        return [torch.ones(1, 1, dtype=dtype, device=device)]
    if F.beta == 2:
        return [torch.ones(1, 1, dtype=dtype, device=device), torch.full((1, 1), 1j, dtype=dtype, device=device)]
    one = torch.ones(1, 1, dtype=dtype, device=device)
    zero = torch.zeros(1, 1, dtype=dtype, device=device)
    # chi(1), chi(i), chi(j), chi(k) for 1 x 1 quaternion matrices: A + B j with (A, B) = (1,0), (i,0), (0,1), (0,i)
    return [quaternion_to_complex(a, b) for a, b in ((one, zero), (1j * one, zero), (zero, one), (zero, 1j * one))]


# ---- singular value decomposition over F ----------------------------------------------------


def singular_values(X: torch.Tensor, field) -> torch.Tensor:
    """Singular values of X in M_d(F), descending, (..., d). Over H: every other one of chi(X)'s
    (they come in equal pairs)."""
    F = get_field(field)
    s = torch.linalg.svdvals(X)
    return s[..., ::2] if F.beta == 4 else s


def field_svd(X: torch.Tensor, field, cluster_rtol: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """X = U diag(s) V* with U, V in K_d (orthogonal / unitary / symplectic), s (..., d) descending.

    R and C: torch.linalg.svd. H: from the complex SVD of chi(X), whose singular vectors come in
    pairs (v, T v), T v = -J conj(v) (T commutes with chi(X) and is antiunitary). For each
    quaternionic singular value in turn, among the complex right singular vectors of its cluster
    (relative gap < cluster_rtol) the one least in the span built so far is orthonormalised against
    it and added with its partner T v; this gives V = chi(V_H) even when singular values repeat.
    Then U = chi(X) V diag(s)^{-1}, so U diag(s) V^H = chi(X) exactly and U is symplectic
    up to O(eps / relative gap). Zero singular values get left vectors by the same completion.
    Returns U, s, V as representations ((..., 2d, 2d) over H).
    """
    F = get_field(field)
    if F.beta != 4:
        U, s, Vh = torch.linalg.svd(X)
        return U, s, Vh.mH
    batch = X.shape[:-2]
    Xf = X.reshape(-1, *X.shape[-2:])
    Us, ss, Vs = [], [], []
    for Y in Xf:  # per matrix: an O(d^3) loop in Python, used for initialisation and tests only
        U, s, V = _quaternion_svd_one(Y, cluster_rtol)
        Us.append(U)
        ss.append(s)
        Vs.append(V)
    n, d = X.shape[-1], X.shape[-1] // 2
    return (torch.stack(Us).reshape(*batch, n, n), torch.stack(ss).reshape(*batch, d),
            torch.stack(Vs).reshape(*batch, n, n))


def _partner(v: torch.Tensor) -> torch.Tensor:
    """T v = -J conj(v) for v = [a; b]: [-conj(b); conj(a)] (the second-half column of chi(V))."""
    d = v.shape[0] // 2
    return torch.cat([-v[d:].conj(), v[:d].conj()])


def _complete(cands: torch.Tensor, basis: list[torch.Tensor], sigma_c: torch.Tensor, targets: torch.Tensor, tol: float) -> list[torch.Tensor]:
    """Quaternionic Gram-Schmidt: for each target value, the candidate column (of its cluster) with
    the largest residual against span(basis + partners), orthonormalised; returns the new vectors."""
    new = []
    for sig in targets:
        in_cluster = (sigma_c - sig).abs() <= tol
        C = cands[:, in_cluster]
        span = basis + [_partner(b) for b in basis]
        if span:
            Bm = torch.stack(span, dim=1)
            C = C - Bm @ (Bm.mH @ C)
            # twice is enough (Kahan): the second pass removes the roundoff of the first
            C = C - Bm @ (Bm.mH @ C)
        k = int(torch.linalg.vector_norm(C, dim=0).argmax())
        v = C[:, k] / torch.linalg.vector_norm(C[:, k])
        basis.append(v)
        new.append(v)
    return new


def _quaternion_svd_one(Y: torch.Tensor, rtol: float):
    n = Y.shape[-1]
    d = n // 2
    Uc, sc, Vhc = torch.linalg.svd(Y)
    tol = rtol * max(float(sc[0]), 1e-300)
    targets = sc[0::2]
    vs = _complete(Vhc.mH, [], sc, targets, tol)
    V = torch.stack(vs + [_partner(v) for v in vs], dim=1)
    YV = Y @ V[:, :d]
    s = torch.linalg.vector_norm(YV, dim=0)
    # Left vectors: Y v / s for s above the rank tolerance; the null ones completed from Uc.
    rank_tol = n * torch.finfo(s.dtype).eps * max(float(sc[0]), 1e-300)
    us = [YV[:, k] / s[k] for k in range(d) if s[k] > rank_tol]
    if len(us) < d:
        basis = list(us)
        null_targets = torch.zeros(d - len(us), dtype=s.dtype)
        _complete(Uc, basis, torch.zeros_like(sc), null_targets, float("inf"))
        us = basis
    U = torch.stack(us + [_partner(u) for u in us], dim=1)
    return U, s, V
