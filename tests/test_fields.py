"""Deep linear networks over R, C, H: representations, gradients, flows, entropy and group volumes.

Every closed form is checked against an independent computation: the quaternion representation
against a componentwise Hamilton product, hand gradients against autograd in real coordinates,
the parameter flow against the end-to-end flow, the entropy formula against the Gram determinant
of the orbit map, the block-Cholesky Gram determinant against a dense one, and the group volumes
against a fibration Jacobian computed numerically and a Monte-Carlo polar-coordinates integral.
"""
import math

import pytest
import torch

from dlnsim.entropy import entropy, log_orthogonal_volume, orbit_log_volume
from dlnsim.entropy_fields import (
    entropy_field,
    entropy_field_from_singular_values,
    entropy_field_grad,
    log_group_volume,
    log_sphere_volume,
    orbit_log_volume_field,
)
from dlnsim.dynamics.field_flows import descent_step, end_to_end_step, gradient_flow_step
from dlnsim.field_energies import FieldLinearRegression, FieldMatrixRegression
from dlnsim.field_geometry import FieldFrame, field_metric_operator
from dlnsim.field_network import balanced_weights, balancedness, end_to_end, parameter_gradient
from dlnsim.fields import (
    complex_to_real,
    embed_diagonal,
    field_svd,
    gaussian,
    get_field,
    inner,
    lie_algebra_basis,
    norm_sq,
    project_structure,
    quaternion_from_complex,
    quaternion_from_real,
    quaternion_to_complex,
    quaternion_to_real_parts,
    real_to_complex,
    random_group,
    singular_values,
    structure_defect,
)
from dlnsim.theory import saxe_mode

from conftest import make_generator

FIELDS = ["real", "complex", "quaternion"]


def hamilton_matmul(P, Q):
    """(a1 + b1 i + c1 j + d1 k)(a2 + b2 i + c2 j + d2 k) for real component matrices (independent of chi)."""
    a1, b1, c1, d1 = P
    a2, b2, c2, d2 = Q
    return (a1 @ a2 - b1 @ b2 - c1 @ c2 - d1 @ d2,
            a1 @ b2 + b1 @ a2 + c1 @ d2 - d1 @ c2,
            a1 @ c2 - b1 @ d2 + c1 @ a2 + d1 @ b2,
            a1 @ d2 + b1 @ c2 - c1 @ b2 + d1 @ a2)


def real_parts(gen, d, batch=()):
    return tuple(torch.randn(*batch, d, d, dtype=torch.float64, generator=gen) for _ in range(4))


# ---- representations ------------------------------------------------------------------------


def test_chi_is_a_star_homomorphism_and_pairings(gen):
    P, Q = real_parts(gen, 3), real_parts(gen, 3)
    chiP, chiQ = quaternion_from_real(*P), quaternion_from_real(*Q)
    prod = quaternion_from_real(*hamilton_matmul(P, Q))
    assert (chiP @ chiQ - prod).abs().max() < 1e-13  # measured 1.8e-15
    P_star = (P[0].mT, -P[1].mT, -P[2].mT, -P[3].mT)
    assert (quaternion_from_real(*P_star) - chiP.mH).abs().max() == 0
    # Re tr_H(P* Q) = sum of the componentwise Frobenius products (orthonormal real coordinates)
    ref = sum((p * q).sum() for p, q in zip(P, Q))
    assert abs(inner(chiP, chiQ, "quaternion") - ref) < 1e-12
    assert abs(0.25 * (complex_to_real(chiP) * complex_to_real(chiQ)).sum() - ref) < 1e-12
    for part, orig in zip(quaternion_to_real_parts(chiP), P):
        assert torch.equal(part, orig)
    assert torch.equal(real_to_complex(complex_to_real(chiP)), chiP)
    A, B = quaternion_from_complex(chiP)
    assert torch.equal(quaternion_to_complex(A, B), chiP)
    # the 4d x 4d real representation is multiplicative too
    assert (complex_to_real(chiP) @ complex_to_real(chiQ) - complex_to_real(prod)).abs().max() < 1e-13


def test_structure_projection(gen):
    Y = torch.randn(6, 6, dtype=torch.complex128, generator=gen)
    Q = quaternion_from_real(*real_parts(gen, 3))
    assert structure_defect(Q) == 0
    Pj = project_structure(Y)
    assert structure_defect(Pj) < 1e-15
    assert (project_structure(Pj) - Pj).abs().max() < 1e-15  # idempotent
    # orthogonal: the residual is orthogonal to every quaternion matrix
    assert abs(inner(Y - Pj, Q, "complex")) < 1e-13


@pytest.mark.parametrize("field", FIELDS)
def test_lie_algebra_basis_orthonormal_skew(field):
    F = get_field(field)
    for d in (1, 2, 3):
        B = lie_algebra_basis(d, F)
        assert B.shape[0] == F.lie_dim(d) == {1: d * (d - 1) // 2, 2: d * d, 4: d * (2 * d + 1)}[F.beta]
        if B.shape[0] == 0:
            continue
        G = inner(B.unsqueeze(1), B.unsqueeze(0), F)
        assert (G - torch.eye(B.shape[0], dtype=torch.float64)).abs().max() < 1e-15
        assert (B + B.mH).abs().max() == 0
        if F.beta == 4:
            assert structure_defect(B).max() == 0


@pytest.mark.parametrize("field", FIELDS)
def test_random_group_is_in_K_and_haar_first_moment(field, gen):
    F = get_field(field)
    d = 3
    U = random_group((4000,), d, F, generator=gen)
    n = F.matrix_size(d)
    # roundoff of the polar factor grows with the condition number of the Gaussian sample:
    # worst of 4000 measured 1e-14 (structure), 4e-15 (unitarity)
    assert (U.mH @ U - torch.eye(n, dtype=U.dtype)).abs().max() < 1e-13
    if F.beta == 4:
        assert structure_defect(U).max() < 1e-12
    # Haar: the first column is uniform on S^{beta d - 1}, so E |u_11|^2 = beta / (beta d) = 1/d;
    # z-score with the sample standard error (4000 samples)
    if F.beta == 4:
        a, b, c, e = (x[..., 0, 0] for x in quaternion_to_real_parts(U))
        u11 = a**2 + b**2 + c**2 + e**2
    else:
        u11 = U[..., 0, 0].abs() ** 2
    z = (u11.mean() - 1 / d) / (u11.std() / math.sqrt(u11.numel()))
    assert abs(z) < 4


@pytest.mark.parametrize("field", FIELDS)
def test_field_svd(field, gen):
    F = get_field(field)
    d = 4
    n = F.matrix_size(d)
    eye = torch.eye(n, dtype=F.dtype())
    U0, V0 = random_group((3,), d, F, generator=gen), random_group((3,), d, F, generator=gen)
    cases = [
        gaussian((5,), d, F, generator=gen),
        U0 @ embed_diagonal(torch.tensor([2.0, 2.0, 1.0, 1.0], dtype=torch.float64), F) @ V0.mH,  # repeated
        U0 @ embed_diagonal(torch.tensor([3.0, 1.0, 0.0, 0.0], dtype=torch.float64), F) @ V0.mH,  # rank 2
    ]
    for X in cases:
        U, s, V = field_svd(X, F)
        assert (U @ embed_diagonal(s, F) @ V.mH - X).abs().max() < 1e-13
        assert (U.mH @ U - eye).abs().max() < 1e-12
        assert (V.mH @ V - eye).abs().max() < 1e-12
        assert (s[..., :-1] >= s[..., 1:] - 1e-12).all()
        assert (s - singular_values(X, F)).abs().max() < 1e-13
        if F.beta == 4:
            assert structure_defect(U).max() < 1e-13 and structure_defect(V).max() < 1e-13


def test_batched_complex_eigh_and_svd_orthonormal(gen):
    """The complex128 default: batched eigh/svd return orthonormal vectors (complex64 was reported not to)."""
    A = torch.randn(256, 6, 6, dtype=torch.complex128, generator=gen)
    H = A + A.mH
    _, V = torch.linalg.eigh(H)
    eye = torch.eye(6, dtype=torch.complex128)
    assert (V.mH @ V - eye).abs().max() < 1e-13  # measured ~2e-15
    frame = FieldFrame.of(A, 3)
    assert (frame.U.mH @ frame.U - eye).abs().max() < 1e-13
    assert (frame.V.mH @ frame.V - eye).abs().max() < 1e-13


# ---- gradients ------------------------------------------------------------------------------


def _loss(weights, energy):
    return energy.value(end_to_end(weights)).sum()


@pytest.mark.parametrize("field", ["complex", "quaternion"])
def test_parameter_gradient_against_autograd_in_real_coordinates(field, gen):
    """grad for Re tr(A* B) = vector of partial derivatives in the orthonormal real coordinates."""
    F = get_field(field)
    d, N = 3, 3
    parts = [[torch.randn(2, d, d, dtype=torch.float64, generator=gen).requires_grad_() for _ in range(F.beta)]
             for _ in range(N)]
    build = (lambda p: torch.complex(*p)) if F.beta == 2 else (lambda p: quaternion_from_real(*p))
    Phi = gaussian((), d, F, generator=gen)
    energies = [FieldMatrixRegression(Phi, F),
                FieldLinearRegression(gaussian((), d, F, generator=gen), gaussian((), d, F, generator=gen), F)]
    for energy in energies:
        weights = [build(p) for p in parts]
        L = _loss(weights, energy)
        grads_auto = torch.autograd.grad(L, [x for p in parts for x in p])
        hand = parameter_gradient([W.detach() for W in weights], energy)
        for p in range(N):
            auto = build(grads_auto[p * F.beta:(p + 1) * F.beta])
            rel = (auto - hand[p]).abs().max() / hand[p].abs().max()
            assert rel < 1e-14  # measured 2e-16 (gradient entries up to ~3e3)


def test_torch_complex_grad_is_the_real_pairing_gradient(gen):
    """torch stores dE/dRe X + i dE/dIm X = 2 dE/d(conj X) in X.grad: the gradient for Re tr(A^H B)."""
    d, N = 3, 2
    F = get_field("complex")
    weights = [gaussian((2,), d, F, generator=gen).requires_grad_() for _ in range(N)]
    energy = FieldMatrixRegression(gaussian((), d, F, generator=gen), F)
    _loss(weights, energy).backward()
    hand = parameter_gradient([W.detach() for W in weights], energy)
    for W, g in zip(weights, hand):
        assert (W.grad - g).abs().max() < 1e-12


def test_quaternion_autograd_on_chi_entries_needs_projection_and_factor_two(gen):
    """With E written on all of chi(X), chi(grad_H E) = 2 P(torch grad) (P onto chi's image)."""
    d = 3
    F = get_field("quaternion")
    Y = gaussian((), d, F, generator=gen).requires_grad_()
    Phi = gaussian((), d, F, generator=gen)
    M = torch.randn(2 * d, 2 * d, dtype=torch.complex128, generator=gen)  # not structured
    # E(Y) = 1/2 ||Y - Phi||_H^2 + <M, Y>_C: its chi-restricted gradient is (Y - Phi) + 2 P(M)
    E = 0.25 * ((Y - Phi).abs() ** 2).sum() + (M.conj() * Y).sum().real
    (g,) = torch.autograd.grad(E, Y)
    expected = (Y - Phi).detach() + 2 * project_structure(M)
    assert (2 * project_structure(g) - expected).abs().max() < 1e-13


# ---- dynamics -------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["complex", "quaternion"])
def test_gradient_flow_conserves_balancedness_and_structure(field, gen):
    F = get_field(field)
    d, N, T = 3, 3, 0.5
    scale = (F.beta * d) ** -0.5  # entries of norm ~ 1/sqrt(d): layers of norm ~ 1
    weights = [gaussian((2,), d, F, generator=gen) * scale for _ in range(N)]  # unbalanced start
    energy = FieldMatrixRegression(gaussian((), d, F, generator=gen) * scale, F)
    G0 = balancedness(weights)
    drift = []  # max |G_p(T) - G_p(0)|
    for h in (0.05, 0.025):
        W = weights
        for _ in range(round(T / h)):
            W = gradient_flow_step(W, energy, h)
        drift.append((balancedness(W) - G0).abs().max().item())
        if F.beta == 4:
            assert max(structure_defect(w).max().item() for w in W) < 1e-14
    # RK4: O(h^4) global. Measured at h = 0.05, 0.025: C 9.6e-5, 5.2e-6; H 3.8e-5, 2.0e-6 (ratio 18-19;
    # h = 0.0125 gives another factor 17.5); the drift at the same T over R is 1.6e-5, 9.1e-7.
    assert drift[1] < 2e-5 and 12 < drift[0] / drift[1] < 24
    # gradient descent: drift O(h^2) per step
    one = [(balancedness(descent_step(weights, energy, h)) - G0).abs().max().item() for h in (0.02, 0.01)]
    assert 3.6 < one[0] / one[1] < 4.4  # measured 4.0


@pytest.mark.parametrize("field", FIELDS)
def test_parameter_flow_from_balanced_start_equals_end_to_end_flow(field, gen):
    """dX/dt = -A_{N,X}(grad E) with K_ij from the SVD over F, to RK4 accuracy (error ratio ~16 per halving)."""
    F = get_field(field)
    d, N, T = 3, 3, 1.0
    # a well-conditioned start: A_{N,X} involves s^{2/N}, not smooth at s = 0, and RK4 on the
    # end-to-end flow reaches its asymptotic rate only away from rank deficiency
    K1, K2 = random_group((2,), d, F, generator=gen), random_group((2,), d, F, generator=gen)
    X0 = K1 @ embed_diagonal(torch.tensor([0.9, 0.6, 0.3], dtype=torch.float64), F) @ K2.mH
    # target near 2 X0 (over R: same sign of det, so the path stays away from rank deficiency)
    energy = FieldMatrixRegression(2 * X0 + 0.3 * gaussian((2,), d, F, generator=gen) / d**0.5, F)
    errs = []
    for h in (0.05, 0.025):
        W = balanced_weights(X0, N, F, generator=gen)
        X = X0.clone()
        for _ in range(round(T / h)):
            W = gradient_flow_step(W, energy, h)
            X = end_to_end_step(X, energy, N, h)
        errs.append((end_to_end(W) - X).abs().max().item())
    # measured (R, C, H): 1.25e-7 / 6.9e-9, 1.23e-7 / 6.8e-9, 1.52e-7 / 8.5e-9: ratio 18 (RK4: 16)
    assert errs[1] < 3e-8 and 12 < errs[0] / errs[1] < 24


def test_quaternion_metric_operator_equals_sum_formula(gen):
    """A via the complex SVD of chi(X) (doubled spectrum) = sum_p (XX*)^{(N-p)/N} P (X*X)^{(p-1)/N}
    with the powers from the quaternionic SVD; the result is a quaternion matrix."""
    F = get_field("quaternion")
    d, N = 3, 4
    X = gaussian((2,), d, F, generator=gen)
    P = gaussian((2,), d, F, generator=gen)
    U, s, V = field_svd(X, F)

    def power(Q, e):  # (Q diag(s)^2 Q*)^e
        return Q @ embed_diagonal(s ** (2 * e), F) @ Q.mH

    ref = sum(power(U, (N - p) / N) @ P @ power(V, (p - 1) / N) for p in range(1, N + 1))
    out = field_metric_operator(X, P, N)
    assert (out - ref).abs().max() / ref.abs().max() < 1e-13
    assert structure_defect(out).max() < 1e-13
    # the inverse is the inverse
    assert (field_metric_operator(X, out, N, power=-1.0) - P).abs().max() < 1e-12


@pytest.mark.parametrize("field", ["complex", "quaternion"])
def test_saxe_modes_over_F(field, gen):
    """Aligned start: each singular value follows du/dt = N u^{2(N-1)/N}(lambda - u) over every F."""
    F = get_field(field)
    d, N, h, T = 3, 3, 0.01, 2.0
    U, V = random_group((), d, F, generator=gen), random_group((), d, F, generator=gen)
    lam = torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64)
    u0 = torch.tensor([0.05, 0.03, 0.02], dtype=torch.float64)
    energy = FieldMatrixRegression(U @ embed_diagonal(lam, F) @ V.mH, F)
    X = U @ embed_diagonal(u0, F) @ V.mH
    for _ in range(round(T / h)):
        X = end_to_end_step(X, energy, N, h)
    u = singular_values(X, F)
    ref = saxe_mode(torch.tensor(T), lam, u0, N)
    assert (u - ref).abs().max() < 1e-7  # RK4 at h = 0.01: measured ~1e-9


# ---- entropy --------------------------------------------------------------------------------


@pytest.mark.parametrize("field", FIELDS)
def test_entropy_formula_equals_measured_orbit_volume_at_balanced_points(field, gen):
    F = get_field(field)
    worst = 0.0
    for d in (1, 2, 3):
        Xs = [gaussian((3,), d, F, generator=gen)]
        if d == 3:  # a repeated singular value: the formula's kernel form covers it
            Q1, Q2 = random_group((), d, F, generator=gen), random_group((), d, F, generator=gen)
            Xs.append(Q1 @ embed_diagonal(torch.tensor([1.5, 1.5, 0.4], dtype=torch.float64), F) @ Q2.mH)
        for X in Xs:
            for N in (1, 2, 3, 5):
                W = balanced_weights(X, N, F, generator=gen)
                err = (orbit_log_volume_field(W, F) - entropy_field(X, N, F)).abs().max().item()
                worst = max(worst, err)
    assert worst < 1e-12  # measured 1.4e-14


def _dense_orbit_log_volume(weights, field):
    """Independent: realify every tangent vector of the orbit map and take slogdet of the dense Gram."""
    F = get_field(field)
    N = len(weights)
    d = weights[0].shape[-1] // F.rep
    B = lie_algebra_basis(d, F)
    cols = []
    for q in range(1, N):
        for Fa in B:
            vec = []
            for p in range(1, N + 1):
                dW = torch.zeros_like(weights[p - 1])
                if p == q:
                    dW = dW + Fa @ weights[p - 1]
                if p == q + 1:
                    dW = dW - weights[p - 1] @ Fa
                v = torch.view_as_real(dW).flatten() if dW.is_complex() else dW.flatten()
                vec.append(v * F.pairing_scale**0.5)
            cols.append(torch.cat(vec))
    J = torch.stack(cols, dim=1)
    return (N - 1) * log_group_volume(d, F) + 0.5 * torch.linalg.slogdet(J.mT @ J)[1]


@pytest.mark.parametrize("field", FIELDS)
def test_block_cholesky_orbit_volume_equals_dense_gram(field, gen):
    F = get_field(field)
    d, N = 2, 4
    weights = [gaussian((), d, F, generator=gen) for _ in range(N)]  # off the balanced manifold
    fast = orbit_log_volume_field(weights, F)
    dense = _dense_orbit_log_volume(weights, F)
    assert abs(fast - dense) < 1e-11  # measured ~1e-14
    if F.beta == 1:
        assert abs(fast - orbit_log_volume(weights)) < 1e-12  # the existing real implementation


def test_real_case_reduces_to_existing_entropy(gen):
    X = torch.randn(4, 3, 3, dtype=torch.float64, generator=gen)
    for N in (1, 2, 4):
        assert (entropy_field(X, N, "real") - entropy(X, N)).abs().max() < 1e-13
    for d in range(1, 7):
        assert abs(log_group_volume(d, "real") - log_orthogonal_volume(d)) < 1e-13


@pytest.mark.parametrize("field", ["complex", "quaternion"])
def test_entropy_is_invariant_and_has_the_diagonal_term(field, gen):
    F = get_field(field)
    d, N = 3, 4
    X = gaussian((), d, F, generator=gen)
    K1, K2 = random_group((), d, F, generator=gen), random_group((), d, F, generator=gen)
    assert abs(entropy_field(K1 @ X @ K2, N, F) - entropy_field(X, N, F)) < 1e-12
    # S_beta - beta S_1 = (N-1)(log c_{d,beta} - beta log c_{d,1}) + (beta-1)/2 sum_i log(N s_i^{2(N-1)/N})
    s = singular_values(X, F)
    lhs = entropy_field_from_singular_values(s, N, F) - F.beta * entropy_field_from_singular_values(s, N, "real")
    rhs = (N - 1) * (log_group_volume(d, F) - F.beta * log_group_volume(d, "real")) + \
        (F.beta - 1) / 2 * torch.log(N * s ** (2 * (N - 1) / N)).sum()
    assert abs(lhs - rhs) < 1e-12


# ---- group volumes c_{d,beta} ---------------------------------------------------------------


def test_group_volume_small_cases_and_closed_forms():
    assert abs(log_group_volume(1, "complex") - math.log(2 * math.pi)) < 1e-15  # U(1) = circle
    assert abs(log_group_volume(1, "quaternion") - math.log(2 * math.pi**2)) < 1e-15  # Sp(1) = S^3
    assert abs(log_group_volume(1, "real") - math.log(2)) < 1e-15  # O(1) = {+-1}
    for d in range(1, 7):
        u = d * (d + 1) / 2 * math.log(2 * math.pi) - sum(math.lgamma(k + 1) for k in range(1, d))
        sp = d * d * math.log(2) + d * (d + 1) * math.log(math.pi) - sum(math.lgamma(2 * k) for k in range(1, d + 1))
        assert abs(log_group_volume(d, "complex") - u) < 1e-12
        assert abs(log_group_volume(d, "quaternion") - sp) < 1e-12


@pytest.mark.parametrize("field", FIELDS)
def test_group_volume_fibration_jacobian_numeric(field, gen):
    """vol K_d = vol K_{d-1} vol S^{beta d - 1} / NJ, NJ the normal Jacobian of g -> g e_1 (coarea;
    the fiber is an isometric copy of K_{d-1}); NJ computed numerically at Haar-random g."""
    F = get_field(field)
    for d in (2, 3, 4):
        B = lie_algebra_basis(d, F)
        g = random_group((), d, F, generator=gen)
        n = F.matrix_size(d)
        cols = []
        for A in B:
            # tangent g A at g, mapped to the sphere point's velocity g A e_1; over H the first
            # column of chi(.) is [A e_1; -conj(B e_1)], an isometric complex coordinate of H^d
            col = (g @ A)[:, 0]
            cols.append(torch.view_as_real(col).flatten() if col.is_complex() else col)
        D = torch.stack(cols)  # (dim k, beta d): rows are the images of an orthonormal basis
        assert D.shape[1] == F.beta * d and n == F.rep * d
        # the images span the sphere's tangent space (dim beta d - 1; the radial direction is
        # missed since A is skew): NJ = product of the beta d - 1 nonzero singular values of D
        sv = torch.linalg.svdvals(D)
        if sv.numel() > F.beta * d - 1:
            assert sv[F.beta * d - 1 :].abs().max() < 1e-13
        log_nj = torch.log(sv[: F.beta * d - 1]).sum().item()
        recursed = log_group_volume(d - 1, F) + log_sphere_volume(F.beta * d) - log_nj
        assert abs(recursed - log_group_volume(d, F)) < 1e-12
        assert abs(log_nj + F.beta * (d - 1) / 2 * math.log(2)) < 1e-12  # NJ = 2^{-beta(d-1)/2}


@pytest.mark.parametrize("field,d,c", [("real", 3, 1.5), ("complex", 2, 1.5), ("complex", 3, 2.0), ("quaternion", 2, 2.0)])
def test_group_volume_monte_carlo_polar_coordinates(field, d, c):
    """1 = int phi(Z) dZ = vol K_d * int_{P > 0} phi(P) J(P) dP (polar Z = Q P, Gaussian phi), with
    J(P) = prod_{i<j} ((p_i + p_j)/2)^beta prod_i p_i^{beta-1}. The P-integral is done by importance
    sampling P = c I + H, H standard Gaussian on Hermitian matrices over F: the group is never sampled."""
    F = get_field(field)
    gen = make_generator(7)
    n_samples = 40000
    G = gaussian((n_samples,), d, F, generator=gen)
    H = (G + G.mH) / 2  # standard Gaussian in orthonormal coordinates of Herm_d(F)
    P = c * torch.eye(G.shape[-1], dtype=G.dtype) + H
    p = torch.linalg.eigvalsh(P)
    p = p[..., ::2] if F.beta == 4 else p
    pos = p.amin(-1) > 0
    pc = p.clamp_min(1e-300)
    i, j = torch.triu_indices(d, d, 1)
    log_J = F.beta * torch.log((pc[..., i] + pc[..., j]) / 2).sum(-1) + (F.beta - 1) * torch.log(pc).sum(-1)
    m_herm = d + F.beta * d * (d - 1) // 2
    log_phi = -F.beta * d * d / 2 * math.log(2 * math.pi) - 0.5 * (p**2).sum(-1)
    log_q = -m_herm / 2 * math.log(2 * math.pi) - 0.5 * norm_sq(H, F)
    w = torch.where(pos, torch.exp(log_phi + log_J - log_q), torch.zeros_like(log_q))
    mean, se = w.mean(), w.std() / math.sqrt(n_samples)
    # log vol = -log mean; its standard error is se/mean (measured 0.5-0.85 %; z = -0.2, 1.7, 0.0, 2.0)
    z = (-math.log(mean) - log_group_volume(d, F)) / (se / mean)
    assert abs(z) < 4, f"z = {z:.2f}"
    assert se / mean < 0.02  # the check resolves factors far below the 2^{1/2} of a basis slip


@pytest.mark.parametrize("field", ["complex", "quaternion"])
def test_entropy_gradient_against_autograd_in_real_coordinates(field, gen):
    F = get_field(field)
    d, N = 3, 3
    parts = [torch.randn(d, d, dtype=torch.float64, generator=gen).requires_grad_() for _ in range(F.beta)]
    X = torch.complex(*parts) if F.beta == 2 else quaternion_from_real(*parts)
    # autograd through the closed form evaluated on the singular values (distinct for a Gaussian)
    S = entropy_field_from_singular_values(singular_values(X, F), N, F)
    auto = torch.autograd.grad(S, parts)
    auto = torch.complex(*auto) if F.beta == 2 else quaternion_from_real(*auto)
    hand = entropy_field_grad(X.detach(), N, F)
    assert (auto - hand).abs().max() / hand.abs().max() < 1e-11  # measured ~1e-15
    if F.beta == 4:
        assert structure_defect(hand) < 1e-14


@pytest.mark.parametrize("field", FIELDS)
def test_schemes_and_observer_over_F(field, gen):
    """The Scheme wrappers step as the functions do; over R they match the tuned real schemes."""
    from dlnsim.dynamics import EndToEndFlow, GradientDescent, GradientFlow
    from dlnsim.dynamics.field_flows import FieldEndToEndFlow, FieldGradientDescent, FieldGradientFlow
    from dlnsim.energies import MatrixRegression
    from dlnsim.field_observe import FieldObserver

    F = get_field(field)
    d, N, h = 2, 3, 0.01
    X0 = gaussian((3,), d, F, generator=gen) / (F.beta * d) ** 0.5
    W0 = balanced_weights(X0, N, F, generator=gen)
    energy = FieldMatrixRegression(gaussian((), d, F, generator=gen) / (F.beta * d) ** 0.5, F)
    schemes = [FieldGradientDescent(energy, h, N, F), FieldGradientFlow(energy, h, N, F),
               FieldEndToEndFlow(energy, h, N, F), FieldEndToEndFlow(energy, h, N, F, beta=torch.tensor([1.0, 2.0, 4.0]))]
    states = [s.init_state(weights=W0) for s in schemes]
    for _ in range(5):
        states = [s.step(st) for s, st in zip(schemes, states)]
    obs = FieldObserver(energy, N, F, beta=2.0)
    m = obs.measure(schemes[1].init_state(weights=W0))
    assert (m["entropy_measured"] - m["entropy_formula"]).abs().max() < 1e-12
    assert m["balancedness_norm"].abs().max() < 1e-12
    m = obs.measure(states[1])
    assert m["balancedness"].abs().max() < 1e-8  # RK4: O(h^5) per step; measured 2.6e-10 (R), 7e-10 (C), 1.8e-9 (H)
    assert (m["singular_values"] - singular_values(states[1].end_to_end(), F)).abs().max() == 0
    if F.beta == 1:
        real = [GradientDescent(MatrixRegression(energy.target), h, N), GradientFlow(MatrixRegression(energy.target), h, N),
                EndToEndFlow(MatrixRegression(energy.target), h, N)]
        rstates = [s.init_state(weights=W0) for s in real]
        for _ in range(5):
            rstates = [s.step(st) for s, st in zip(real, rstates)]
        for a, b in zip(states[:3], rstates):
            assert (a.end_to_end() - b.end_to_end()).abs().max() < 1e-13
