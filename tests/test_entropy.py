"""Entropy S(X) (closed form), the measured orbit log-volume, and vol O(d) (docs/theory.md section 5).

Independent references: a dense Gram determinant of the orbit map J (no block structure used),
mpmath at 50 digits on the defining geometric sum of K, mp.diff for derivatives, autograd, and
hand derivations of vol O(d).
"""
import itertools
import math

import pytest
import torch

import dlnsim
from dlnsim.entropy import so_basis
from dlnsim.network import balanced_weights, end_to_end

from conftest import DTYPE, make_generator, matrix_with_spectrum, random_orthogonal

mpmath = pytest.importorskip("mpmath", reason="mpmath is a test dependency: pip install -e '.[dev]'")


@pytest.fixture(autouse=True)
def _mp50():
    with mpmath.workdps(50):
        yield


def _mp_log_c(d):
    """log vol O(d) in mpmath, from vol SO(n) = 2^{n(n-1)/4} prod_{k<n} vol S^k, vol O = 2 vol SO."""
    vol_sphere = lambda k: 2 * mpmath.pi ** (mpmath.mpf(k + 1) / 2) / mpmath.gamma(mpmath.mpf(k + 1) / 2)  # noqa: E731
    so = mpmath.mpf(2) ** (mpmath.mpf(d * (d - 1)) / 4) * mpmath.fprod(vol_sphere(k) for k in range(1, d))
    return mpmath.log(2 * so)


def _mp_K(si, sj, N):
    """The defining geometric sum K_ij = sum_p s_i^{2(N-p)/N} s_j^{2(p-1)/N} at mp precision."""
    si, sj = mpmath.mpf(si), mpmath.mpf(sj)
    return mpmath.fsum(
        si ** (mpmath.mpf(2 * (N - p)) / N) * sj ** (mpmath.mpf(2 * (p - 1)) / N)
        for p in range(1, N + 1)
    )


def _mp_entropy_kernel_part(s, N):
    """1/2 sum_{i<j} log K_ij(s)."""
    return mpmath.fsum(mpmath.log(_mp_K(s[i], s[j], N)) for i, j in itertools.combinations(range(len(s)), 2)) / 2


# --------------------------------------------------------------------------- vol O(d)


def test_orthogonal_group_volumes():
    # c_1 = |{+1, -1}| = 2; O(2) = two circles R(theta), |dR/dtheta|_F = sqrt 2: 2 * 2 pi sqrt 2.
    assert math.exp(dlnsim.log_orthogonal_volume(1)) == pytest.approx(2.0, rel=1e-15)
    assert math.exp(dlnsim.log_orthogonal_volume(2)) == pytest.approx(4 * math.sqrt(2) * math.pi, rel=1e-15)
    # SO(3) = S^3 / {+-1} by unit quaternions q = (cos(theta/2), sin(theta/2) n) -> rotation by theta
    # about n. At q = 1, |dq/dtheta| = 1/2 while |dR/dtheta|_F = |[n]_x|_F = sqrt 2, so the
    # (bi-invariant) map scales lengths by 2 sqrt 2 and 3-volumes by 16 sqrt 2. vol S^3 = 2 pi^2 and
    # the cover is 2:1, so vol SO(3) = 16 sqrt(2) pi^2 and c_3 = vol O(3) = 32 sqrt(2) pi^2.
    # (8 sqrt(2) pi^2 would be vol SO(3) / 2: the trap of counting the double cover twice.)
    assert math.exp(dlnsim.log_orthogonal_volume(3)) == pytest.approx(32 * math.sqrt(2) * math.pi**2, rel=1e-14)
    for d in range(1, 9):
        assert dlnsim.log_orthogonal_volume(d) == pytest.approx(float(_mp_log_c(d)), rel=1e-14, abs=1e-14)
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="d must be an integer"):
            dlnsim.log_orthogonal_volume(bad)


# --------------------------------------------------------------------------- closed form = measured


@pytest.mark.parametrize("d", [2, 3, 4, 5])
@pytest.mark.parametrize("N", [2, 3, 4, 6])
def test_entropy_equals_orbit_volume_on_balanced_manifold(d, N):
    g = make_generator(1000 * d + N)
    X = torch.randn(3, d, d, dtype=DTYPE, generator=g)
    W = balanced_weights(X, N, generator=g)
    S = dlnsim.entropy(X, N)
    measured = dlnsim.orbit_log_volume(W)
    # Block Cholesky of a Gram matrix with condition ~ (s_max/s_min)^{4/N}; roundoff ~1e-13 here.
    assert float((S - measured).abs().max()) < 1e-10


def _gram_logdet_dense(W):
    """log det(J^T J) with J built column by column as a dense (N d^2) x ((N-1) d(d-1)/2) matrix.

    Column (q, a): A_q = F_a, all other A = 0, so dW_q = F_a W_q, dW_{q+1} = -W_{q+1} F_a.
    """
    N, d = len(W), W[0].shape[-1]
    F = so_basis(d)
    cols = []
    for q in range(1, N):
        for a in range(F.shape[0]):
            dW = [torch.zeros_like(w) for w in W]
            dW[q - 1] = F[a] @ W[q - 1]
            dW[q] = -W[q] @ F[a]
            cols.append(torch.cat([v.flatten(-2) for v in dW], dim=-1))
    J = torch.stack(cols, dim=-1)
    sign, logdet = torch.linalg.slogdet(J.mT @ J)
    assert bool((sign > 0).all())
    return logdet


@pytest.mark.parametrize("d,N", [(2, 2), (2, 5), (3, 2), (3, 3), (3, 4), (4, 3)])
def test_orbit_volume_block_cholesky_vs_dense_gram(d, N):
    # At a NON-balanced point the block formulas of orbit_log_volume are checked against the
    # definition; Gram condition numbers are < 1e4 here, so 1e-10 is ~1e4 x the roundoff floor.
    g = make_generator(17 * d + N)
    W = [torch.eye(d, dtype=DTYPE) + 0.5 * torch.randn(2, d, d, dtype=DTYPE, generator=g) for _ in range(N)]
    ref = (N - 1) * dlnsim.log_orthogonal_volume(d) + 0.5 * _gram_logdet_dense(W)
    assert float((dlnsim.orbit_log_volume(W) - ref).abs().max()) < 1e-10
    # Off the balanced manifold the measured volume differs from the closed form at phi(W).
    gap = (dlnsim.orbit_log_volume(W) - dlnsim.entropy(end_to_end(W), N)).abs()
    assert float(gap.min()) > 1e-3


@pytest.mark.parametrize("d,N", [(3, 3), (2, 4)])
def test_orbit_volume_invariant_along_orbit(d, N):
    # The group acts by isometries, so every point of one orbit sees the same orbit volume:
    # W_p -> R_p W_p R_{p-1}^T, R_0 = R_N = I. Checked on and off the balanced manifold.
    g = make_generator(5 + d + N)
    X = torch.randn(2, d, d, dtype=DTYPE, generator=g)
    off = [torch.eye(d, dtype=DTYPE) + 0.5 * torch.randn(2, d, d, dtype=DTYPE, generator=g) for _ in range(N)]
    for W in (balanced_weights(X, N, generator=g), off):
        R = [torch.eye(d, dtype=DTYPE).expand(2, d, d)] + [random_orthogonal(d, (2,), g) for _ in range(N - 1)]
        R.append(torch.eye(d, dtype=DTYPE).expand(2, d, d))
        moved = [R[p] @ W[p - 1] @ R[p - 1].mT for p in range(1, N + 1)]
        assert float((end_to_end(moved) - end_to_end(W)).abs().max()) < 1e-13
        assert float((dlnsim.orbit_log_volume(moved) - dlnsim.orbit_log_volume(W)).abs().max()) < 1e-11


@pytest.mark.parametrize("d,N", [(3, 3), (4, 7), (2, 2)])
def test_entropy_orthogonal_invariance(d, N):
    g = make_generator(29 + d * N)
    X = torch.randn(4, d, d, dtype=DTYPE, generator=g)
    O1, O2 = random_orthogonal(d, (4,), g), random_orthogonal(d, (4,), g)
    S = dlnsim.entropy(X, N)
    # svdvals of O1 X O2 agree with those of X to ~eps * s_max; S is smooth in s: 1e-12 relative.
    assert float(((dlnsim.entropy(O1 @ X @ O2, N) - S) / S.abs().clamp_min(1)).abs().max()) < 1e-12
    flipped = X.clone()
    flipped[:, 0] = -flipped[:, 0]  # det changes sign
    assert float(((dlnsim.entropy(flipped, N) - S) / S.abs().clamp_min(1)).abs().max()) < 1e-12


def test_entropy_trivial_depths_and_dimension():
    g = make_generator(2)
    X = torch.randn(3, 4, 4, dtype=DTYPE, generator=g)
    # N = 1: the group is trivial and K = 1: S = 0.
    assert float(dlnsim.entropy(X, 1).abs().max()) == 0.0
    assert float(dlnsim.orbit_log_volume([X]).abs().max()) == 0.0
    # d = 1: O(1)^{N-1} is 2^{N-1} points.
    x = torch.randn(3, 1, 1, dtype=DTYPE, generator=g)
    assert torch.allclose(dlnsim.entropy(x, 4), torch.full((3,), 3 * math.log(2), dtype=DTYPE), rtol=1e-15, atol=0)


@pytest.mark.parametrize("N", [2, 3, 5, 10])
def test_jacobi_tridiagonal_block_determinant(N):
    # docs/theory.md section 5: at the canonical point each pair i<j contributes the (N-1)x(N-1) Jacobi
    # block tridiag(-l_i l_j, l_i^2 + l_j^2, -l_i l_j), l = s^{1/N}, whose determinant is K_ij.
    g = make_generator(N)
    for _ in range(5):
        li, lj = (0.3 + 2 * torch.rand(2, dtype=DTYPE, generator=g)).tolist()
        n = N - 1
        T = torch.diag(torch.full((n,), li**2 + lj**2, dtype=DTYPE))
        if n > 1:
            off = torch.full((n - 1,), -li * lj, dtype=DTYPE)
            T = T + torch.diag(off, 1) + torch.diag(off, -1)
        K = sum(li ** (2 * (N - p)) * lj ** (2 * (p - 1)) for p in range(1, N + 1))  # s^{2/N} = l^2
        # LU of an SPD tridiagonal matrix with condition <= ((l_i + l_j)/(l_i - l_j))^2 ~ 1e3.
        assert float(torch.linalg.det(T)) == pytest.approx(K, rel=1e-12)
    # And the Gram determinant at the canonical balanced point W_p = diag(l) is the product of them.
    s = torch.tensor([2.0, 0.9, 0.4], dtype=DTYPE)
    W = [torch.diag(s ** (1 / N)).unsqueeze(0)] * N
    S = float(dlnsim.entropy_from_singular_values(s, N))
    assert float(dlnsim.orbit_log_volume(W)) == pytest.approx(S, rel=1e-13)


# --------------------------------------------------------------------------- stability: gaps, depth


SPECTRA = {
    "gap1e-12": [1.0, 1.0 + 1e-12, 2.5, 0.4],
    "two_close_pairs": [3.0, 3.0 * (1 + 1e-12), 0.5, 0.5 * (1 + 1e-11)],
    "repeated": [1.7, 1.7, 1.7, 0.2],
    "spread": [1e-3, 1.0, 30.0, 1e3],
}


@pytest.mark.parametrize("N", [2, 3, 7, 1000])
@pytest.mark.parametrize("name", sorted(SPECTRA))
def test_entropy_near_degenerate_and_deep_matches_mpmath(name, N):
    s_list = SPECTRA[name]
    d = len(s_list)
    s = torch.tensor(s_list, dtype=DTYPE)
    kernel_ref = _mp_entropy_kernel_part(s.tolist(), N)
    S_ref = float((N - 1) * _mp_log_c(d) + kernel_ref)
    const = (N - 1) * dlnsim.log_orthogonal_volume(d)

    S = dlnsim.entropy_from_singular_values(s, N)
    assert math.isfinite(float(S))
    # log K evaluated in log space: a few ulp per pair (measured <= 1.4e-16 relative, S ~ 1e4 at N = 1000).
    assert float(S) == pytest.approx(S_ref, rel=1e-13)
    assert float(S) - const == pytest.approx(float(kernel_ref), rel=1e-13, abs=1e-13)

    # Through the SVD path: X = U diag(s) V^T. svdvals returns s to ~eps * s_max absolute and K
    # is smooth (a geometric sum), so S moves by ~eps * s_max * sum_k |dS/ds_k|: below 1e-12 even
    # for the 1e-3 .. 1e3 spread (dS/ds_min ~ 1/s_min; measured <= 1.9e-12). Compared on the kernel
    # part, which does not hide behind the (N-1) log c_d constant (~1e4 at N = 1000).
    X = matrix_with_spectrum(s.expand(2, d), make_generator(N))
    S_svd = dlnsim.entropy(X, N)
    assert torch.isfinite(S_svd).all()
    err = float((S_svd - const - float(kernel_ref)).abs().max())
    assert err <= 1e-11


@pytest.mark.parametrize("N", [2, 3, 7, 1000])
@pytest.mark.parametrize("name", ["gap1e-12", "repeated", "two_close_pairs"])
def test_entropy_grad_singular_values_matches_mpmath(name, N):
    s = SPECTRA[name]
    grad = dlnsim.entropy_grad_singular_values(torch.tensor(s, dtype=DTYPE), N)
    assert torch.isfinite(grad).all()
    for k in range(len(s)):
        def S_of(x, k=k):  # only the pairs containing k depend on s_k
            return mpmath.fsum(mpmath.log(_mp_K(x, s[j], N)) for j in range(len(s)) if j != k) / 2

        ref = float(mpmath.diff(S_of, mpmath.mpf(s[k])))
        # dS/ds is O(N/s) at most; the Bernoulli-series branch is accurate to ~1e-14 relative.
        assert float(grad[k]) == pytest.approx(ref, rel=1e-11, abs=1e-12), k


@pytest.mark.parametrize("d,N", [(3, 2), (4, 3), (3, 6)])
def test_entropy_grad_matches_autograd(d, N):
    # Well-conditioned (distinct singular values): autograd through svdvals is accurate.
    g = make_generator(41 + d + N)
    s = torch.sort(0.5 + 2.0 * torch.rand(2, d, dtype=DTYPE, generator=g), descending=True).values
    s_var = s.clone().requires_grad_(True)
    (auto_s,) = torch.autograd.grad(dlnsim.entropy_from_singular_values(s_var, N).sum(), s_var)
    assert torch.allclose(dlnsim.entropy_grad_singular_values(s, N), auto_s, rtol=1e-12, atol=1e-13)
    X = matrix_with_spectrum(s, g).requires_grad_(True)
    (auto_X,) = torch.autograd.grad(dlnsim.entropy(X, N).sum(), X)
    assert torch.allclose(dlnsim.entropy_grad(X.detach(), N), auto_X, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- errors


def test_entropy_bad_input():
    g = make_generator(9)
    X = torch.randn(2, 3, 3, dtype=DTYPE, generator=g)
    with pytest.raises(ValueError, match="square"):
        dlnsim.entropy(X[..., :2], 2)
    singular = X.clone()
    singular[0, 2] = 2.0 * singular[0, 1]
    with pytest.raises(ValueError, match="rank-deficient"):
        dlnsim.entropy(singular, 3)
    with pytest.raises(ValueError, match="rank-deficient"):
        dlnsim.entropy(torch.zeros(3, 3, dtype=DTYPE), 2)
    with pytest.raises(ValueError, match="depth"):
        dlnsim.entropy(X, 0)
    with pytest.raises(ValueError, match="rank-deficient"):
        dlnsim.entropy_grad(singular, 3)
    with pytest.raises(ValueError, match="square widths"):
        dlnsim.orbit_log_volume([torch.randn(3, 2, dtype=DTYPE), torch.randn(2, 3, dtype=DTYPE)])
    with pytest.raises(ValueError, match="must be a list"):
        dlnsim.orbit_log_volume([])
