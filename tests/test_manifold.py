"""The balanced manifold (dlnsim.manifold): constraint map, Jacobian, Gram solvers, projector, Newton.

Oracles: autograd for the constraint Jacobian; dense torch.linalg solves for the block-tridiagonal
solvers; the eigenvalues of the dense projector for the tangent dimension. Tolerances are roundoff
bounds (float64, O(10-1000) eps times the size of the numbers involved) unless said otherwise.
"""
import itertools

import pytest
import torch

from dlnsim.manifold import (
    BlockTridiagonalCholesky,
    BlockTridiagonalLU,
    ExactConstraintSolver,
    check_point_on_manifold,
    check_vector_on_tangent,
    constraint_count,
    constraint_jacobian,
    constraint_jacobian_adjoint,
    constraints,
    gram_blocks,
    manifold_dimension,
    newton_projection,
    tangent_projection,
)
from dlnsim.network import balanced_weights, balancedness

from conftest import DTYPE, make_generator

CASES = [(1, 2), (1, 3), (2, 2), (2, 3), (3, 2), (3, 4), (4, 3)]


def _random_weights(d, N, B, gen, scale=1.0):
    return [scale * torch.randn(B, d, d, dtype=DTYPE, generator=gen) for _ in range(N)]


def _balanced(d, N, B, gen):
    return balanced_weights(torch.randn(B, d, d, dtype=DTYPE, generator=gen), N, generator=gen)


def _dense_jacobian(weights):
    """(B, m, N d^2) Jacobian of c(W) by autograd, one trajectory at a time."""
    B, N, d = weights[0].shape[0], len(weights), weights[0].shape[-1]
    out = []
    for b in range(B):
        x = torch.stack([W[b] for W in weights]).reshape(-1)

        def c(flat):
            return constraints(list(flat.reshape(N, 1, d, d).unbind(0)))[0]

        out.append(torch.autograd.functional.jacobian(c, x))
    return torch.stack(out)


def _assemble(diag, upper, lower=None):
    n, k = diag.shape[-3], diag.shape[-1]
    A = diag.new_zeros(*diag.shape[:-3], n * k, n * k)
    lower = upper.mT if lower is None else lower
    for p in range(n):
        A[..., p * k:(p + 1) * k, p * k:(p + 1) * k] = diag[..., p, :, :]
        if p < n - 1:
            A[..., p * k:(p + 1) * k, (p + 1) * k:(p + 2) * k] = upper[..., p, :, :]
            A[..., (p + 1) * k:(p + 2) * k, p * k:(p + 1) * k] = lower[..., p, :, :]
    return A


def test_dimensions():
    # docs/theory.md section 2: dim M = d^2 + (N-1) d(d-1)/2 = N d^2 - #constraints.
    for d, N in itertools.product(range(1, 6), range(1, 6)):
        assert manifold_dimension(d, N) == N * d * d - constraint_count(d, N)
    assert manifold_dimension(2, 3) == 6 and constraint_count(2, 3) == 6


@pytest.mark.parametrize("d,N", CASES)
def test_constraints_jacobian_adjoint_against_autograd(d, N):
    gen = make_generator(10 * d + N)
    W = _random_weights(d, N, 3, gen)
    G = balancedness(W)
    i, j = torch.triu_indices(d, d)
    assert torch.allclose(constraints(W), G[..., i, j].flatten(-2), atol=1e-13)
    J = _dense_jacobian(W)
    V = _random_weights(d, N, 3, gen)
    Vflat = torch.stack(V, 1).flatten(1)
    assert torch.allclose(constraint_jacobian(W, V), (J @ Vflat.unsqueeze(-1)).squeeze(-1), atol=1e-12)
    mu = torch.randn(3, constraint_count(d, N), dtype=DTYPE, generator=gen)
    JTmu = torch.stack(constraint_jacobian_adjoint(W, mu), 1).flatten(1)
    assert torch.allclose(JTmu, (J.mT @ mu.unsqueeze(-1)).squeeze(-1), atol=1e-12)
    # The adjoint identity <J V, mu> = <V, J^T mu>, directly.
    lhs = (constraint_jacobian(W, V) * mu).sum(-1)
    rhs = (Vflat * JTmu).sum(-1)
    assert torch.allclose(lhs, rhs, atol=1e-12)


@pytest.mark.parametrize("d,N", CASES)
def test_gram_blocks_are_J_JT_and_solvers_agree_with_dense(d, N):
    gen = make_generator(100 + 10 * d + N)
    W = _random_weights(d, N, 4, gen)
    J = _dense_jacobian(W)
    diag, upper = gram_blocks(W)
    A = _assemble(diag, upper)
    assert torch.allclose(A, J @ J.mT, atol=1e-12 * float((J @ J.mT).abs().max()))
    # Block Cholesky of J J^T and block LU of the exact Newton matrix J(Y) J(X)^T, against dense solves
    # (internal orthonormal coordinates); relative residual at roundoff times the condition number.
    frame = ExactConstraintSolver.of(W, dense=False)
    Y = torch.stack(_random_weights(d, N, 4, gen), 1)
    k = d * (d + 1) // 2
    r = torch.randn(4, N - 1, k, dtype=DTYPE, generator=gen)
    Az = _assemble(*frame.gram_blocks())
    x = BlockTridiagonalCholesky(*frame.gram_blocks()).solve(r)
    assert torch.allclose(x.flatten(-2), torch.linalg.solve(Az, r.flatten(-2)), rtol=1e-8, atol=1e-10)
    blocks = frame.newton_blocks(Y)
    M = _assemble(*blocks)
    fy = ExactConstraintSolver(Y, dense=True)
    assert torch.allclose(M, fy.jacobian_t().mT @ frame.jacobian_t(), atol=1e-11 * float(M.abs().max()))
    x = BlockTridiagonalLU(*blocks).solve(r)
    assert torch.allclose(x.flatten(-2), torch.linalg.solve(M, r.flatten(-2)), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("d,N", CASES)
def test_projector_idempotent_self_adjoint_rank(d, N):
    gen = make_generator(200 + 10 * d + N)
    W = _balanced(d, N, 2, gen)
    n = N * d * d
    basis = torch.eye(n, dtype=DTYPE).reshape(n, 1, N, d, d).expand(n, 2, N, d, d)
    for dense in (True, False):
        frame = ExactConstraintSolver.of(W, dense=dense)
        P = frame.project(basis).reshape(n, 2, n).permute(1, 2, 0)  # (2, n, n), column e -> P e
        assert torch.allclose(P, P.mT, atol=1e-12), "P must be self-adjoint"
        assert torch.allclose(P @ P, P, atol=1e-12), "P must be idempotent"
        assert float(frame.jvp(P.mT.reshape(2, n, N, d, d).transpose(0, 1)).abs().max()) < 1e-11, "J P = 0"
        eig = torch.linalg.eigvalsh(P)
        # Eigenvalues of an orthogonal projector are 0 or 1; the rank is dim M.
        assert torch.all((eig.abs() < 1e-10) | ((eig - 1).abs() < 1e-10))
        assert int((eig > 0.5).sum(-1)[0]) == int((eig > 0.5).sum(-1)[1]) == manifold_dimension(d, N)
    # The list-level function gives the same projection, and its output passes the tangent check.
    V = _random_weights(d, N, 2, gen)
    PV = tangent_projection(W, V)
    ok, reason = check_vector_on_tangent(W, PV)
    assert ok, reason
    ok, reason = check_vector_on_tangent(W, V)
    assert not ok and "not tangent" in reason


@pytest.mark.parametrize("d,N", CASES)
@pytest.mark.parametrize("method", ["newton", "chord", "quasi"])
def test_newton_projection_lands_on_manifold(d, N, method):
    gen = make_generator(300 + 10 * d + N)
    B = 16
    W = _balanced(d, N, B, gen)
    # Steps of size ~0.05 |W|: the regime of a Langevin step with h ~ 1e-3.
    V = tangent_projection(W, [0.05 * v for v in _random_weights(d, N, B, gen)])
    proj = newton_projection(W, V, tol=1e-11, max_iter=40, method=method)
    assert bool(proj.converged.all()), f"{method}: {int((~proj.converged).sum())} trajectories did not converge"
    assert float(proj.residual.max()) <= 1e-11
    assert float(balancedness(proj.weights).flatten(-2).norm(dim=-1).max()) <= 1e-11
    ok, reason = check_point_on_manifold(proj.weights, atol=1e-10)
    assert ok, reason
    # y - (x + v) = J(x)^T mu lies in the normal space at x: its tangent part vanishes.
    corr = [y - w - v for y, w, v in zip(proj.weights, W, V)]
    assert torch.allclose(torch.stack(corr, 1), torch.stack(constraint_jacobian_adjoint(W, proj.mu), 1), atol=1e-12)
    tang = tangent_projection(W, corr)
    assert max(float(t.abs().max()) for t in tang) < 1e-10
    if method == "newton" and d > 1:
        # Quadratic convergence: a handful of updates from a residual O(|v|^2).
        assert float(proj.iterations.max()) <= 6


def test_dense_and_block_frames_agree_and_compaction_preserves_iterates():
    gen = make_generator(400)
    d, N, B = 2, 3, 24
    W = torch.stack(_balanced(d, N, B, gen), 1)
    # Mixed step sizes: some projections converge fast, some slowly, some not at all, so the CPU
    # loop compacts onto a subset; every trajectory must get the iterates it gets alone.
    scale = torch.logspace(-3, 0.3, B, dtype=DTYPE).reshape(B, 1, 1, 1)
    for dense in (True, False):
        frame = ExactConstraintSolver(W, dense=dense)
        v = frame.project(scale * torch.randn(W.shape, dtype=DTYPE, generator=gen))
        together = frame.newton(v, tol=1e-10, max_iter=12)
        alone = [ExactConstraintSolver(W[b:b + 1], dense=dense).newton(v[b:b + 1], tol=1e-10, max_iter=12) for b in range(B)]
        Y_alone = torch.cat([r.Y for r in alone])
        conv_alone = torch.cat([r.converged for r in alone])
        assert torch.equal(together.converged, conv_alone)
        assert torch.equal(together.iterations, torch.cat([r.iterations for r in alone]))
        c = together.converged
        assert torch.allclose(together.Y[c], Y_alone[c], atol=1e-12)
        assert 0 < int(c.sum()) < B or bool(c.all())
    f_dense, f_block = ExactConstraintSolver(W, dense=True), ExactConstraintSolver(W, dense=False)
    V = torch.randn(W.shape, dtype=DTYPE, generator=gen)
    assert torch.allclose(f_dense.project(V), f_block.project(V), atol=1e-12)
    v = f_dense.project(0.1 * V)
    a, b = f_dense.newton(v), f_block.newton(v)
    assert torch.equal(a.converged, b.converged) and torch.allclose(a.Y, b.Y, atol=1e-12)


def test_balanced_points_pass_and_random_points_fail_with_reason():
    gen = make_generator(500)
    for d, N in CASES:
        ok, reason = check_point_on_manifold(_balanced(d, N, 5, gen))
        assert ok, reason
    W = _random_weights(2, 3, 5, gen)
    ok, reason = check_point_on_manifold(W)
    assert not ok
    assert "W_2^T W_2 != W_1 W_1^T" in reason and "||G_1||_F" in reason and "batch index (0,)" in reason
    # A perturbation of one layer of one trajectory is located.
    Wb = _balanced(2, 3, 5, gen)
    Wb[2] = Wb[2].clone()
    Wb[2][3] += 1e-4
    ok, reason = check_point_on_manifold(Wb, atol=1e-8)
    assert not ok and "W_3^T W_3 != W_2 W_2^T" in reason and "(3,)" in reason
    # Rank-deficient balanced point: constraints hold, full rank fails.
    X = torch.diag(torch.tensor([1.0, 0.0], dtype=DTYPE)).expand(2, 2, 2)
    ok, reason = check_point_on_manifold(balanced_weights(X, 3, generator=gen))
    assert not ok and "rank-deficient" in reason
    ok, reason = check_point_on_manifold([torch.ones(2, 2, 3, dtype=DTYPE)] * 2)
    assert not ok and "square" in reason


def test_singular_gram_is_flagged_not_raised():
    # At W = 0 the constraint Jacobian vanishes: factorisation fails, Newton reports failure, no NaN leaks.
    d, N, B = 2, 3, 4
    W = torch.zeros(B, N, d, d, dtype=DTYPE)
    W[1:] = torch.stack(_balanced(d, N, B - 1, make_generator(600)), 1)
    for dense in (True, False):
        frame = ExactConstraintSolver(W, dense=dense)
        assert frame.ok.tolist() == [False, True, True, True]
        v = frame.project(0.01 * torch.ones_like(W))
        r = frame.newton(v)
        assert r.converged.tolist() == [False, True, True, True]
        assert bool(torch.isfinite(r.Y[1:]).all())


def test_argument_errors():
    W = _balanced(2, 3, 2, make_generator(700))
    with pytest.raises(ValueError, match="method"):
        newton_projection(W, W, method="broyden")
    with pytest.raises(ValueError, match="depth >= 2"):
        constraints([W[0]])
    with pytest.raises(ValueError, match="entries"):
        constraint_jacobian_adjoint(W, torch.zeros(2, 5, dtype=DTYPE))


# --------------------------------------------------------------------------------------------
# The frame solver (SingularFrameSolver) against the exact ExactConstraintSolver (the oracle).


@pytest.mark.parametrize("d,N", CASES + [(5, 4)])
def test_frame_solver_matches_exact_projector_and_newton(d, N):
    from dlnsim.manifold import SingularFrameSolver

    gen = make_generator(800 + 10 * d + N)
    B = 12
    W = torch.stack(_balanced(d, N, B, gen), 1)
    exact, frame = ExactConstraintSolver(W), SingularFrameSolver(W)
    assert bool(frame.ok.all())
    # Frames are orthogonal and carry x to diag(l) (roundoff; x is balanced to roundoff here).
    eye = torch.eye(d, dtype=DTYPE)
    assert float((frame.Q.mT @ frame.Q - eye).abs().max()) < 1e-13
    assert float((frame.Wt - torch.diag_embed(frame.l).unsqueeze(-3)).abs().max()) < 1e-11
    # The canonical inverse is the inverse of J J^T at Wt = diag(l) (the sine-transform eigenvalues).
    R = torch.randn(B, N - 1, d, d, dtype=DTYPE, generator=gen)
    R = R + R.mT
    Xd = torch.diag_embed(frame.l).unsqueeze(-3).expand(B, N, d, d)
    canon = SingularFrameSolver(Xd)
    assert torch.allclose(canon.jvp_in_frame(canon.vjp_in_frame(canon.solve_canonical(R))), R, atol=1e-10)
    # Same tangent projector to roundoff.
    V = torch.randn(W.shape, dtype=DTYPE, generator=gen)
    assert torch.allclose(frame.project(V), exact.project(V), atol=1e-12)
    # Same Newton projection where both converge (roots agree to ~tol / sigma_min(J)); the frame
    # iteration converges by itself here (no fallback) for steps ~0.05 |W|.
    v = exact.project(0.05 * torch.randn(W.shape, dtype=DTYPE, generator=gen))
    a = exact.newton(v, tol=1e-12, max_iter=12)
    b = frame.newton_in_frame(frame.to_frame_coordinates(v), tol=1e-12, max_iter=40, want_mu=True, fallback=False)
    assert bool(a.converged.all()) and bool(b.converged.all())
    assert torch.allclose(a.Y, b.Y, atol=1e-10)
    assert torch.allclose(a.mu, b.mu, atol=1e-9 * (1 + float(a.mu.abs().max())))
    assert torch.allclose(a.normal_sq, b.normal_sq, atol=1e-12)


def test_frame_solver_falls_back_to_exact_newton_and_flags_singular_points():
    from dlnsim.manifold import SingularFrameSolver

    d, N, B = 2, 3, 64
    gen = make_generator(900)
    W = torch.stack(_balanced(d, N, B, gen), 1)
    W[0] = 0.0  # singular: J = 0
    exact, frame = ExactConstraintSolver(W), SingularFrameSolver(W)
    assert not bool(frame.ok[0]) and bool(frame.ok[1:].all())
    # Large steps (h = 0.05, beta = 1 scale): the simplified iteration stalls on many trajectories;
    # the CPU fallback gives exactly the exact path's convergence pattern and the same points.
    v = exact.project(0.3 * torch.randn(W.shape, dtype=DTYPE, generator=gen))
    v[0] = 0.01
    a = exact.newton(v, max_iter=12)
    alone = frame.newton_in_frame(frame.to_frame_coordinates(v), max_iter=12, fallback=False)
    b = frame.newton(v, max_iter=12)  # original coordinates: the fallback also covers untrusted frames
    assert int((~alone.converged).sum()) > int((~b.converged).sum())  # the fallback was exercised
    assert torch.equal(a.converged, b.converged) and not bool(b.converged[0])
    c = a.converged
    assert torch.allclose(a.Y[c], b.Y[c], atol=1e-9)
    assert bool(torch.isfinite(b.Y[1:]).all())
    # Untrusted frames are identity frames (isometries), handled by the exact fallback; without the
    # fallback they report failure, never a false success.
    assert torch.equal(frame.Q[0], torch.eye(d, dtype=DTYPE).expand(N + 1, d, d))
    c = frame.newton_in_frame(frame.to_frame_coordinates(v), max_iter=12)
    assert torch.equal(c.converged, a.converged)
    assert not bool(frame.newton_in_frame(frame.to_frame_coordinates(v), max_iter=12, fallback=False).converged[0])
    assert torch.allclose(frame.project(v), exact.project(v), atol=1e-12)


def test_auto_solver_choice():
    """solver="auto": the exact dense Newton for few constraints ((N-1) d(d+1)/2 <= DENSE_MAX), the
    frame solver above (on the CPU); the choice is a speed decision, both solve the same equations
    (test_frame_solver_matches_exact_projector_and_newton)."""
    from dlnsim.manifold import DENSE_MAX, SingularFrameSolver, make_projection_solver

    g = make_generator(4)
    for d, N, expected in ((2, 3, ExactConstraintSolver), (3, 5, ExactConstraintSolver), (3, 6, SingularFrameSolver), (4, 4, SingularFrameSolver)):
        W = torch.stack(balanced_weights(torch.randn(2, d, d, dtype=DTYPE, generator=g), N, g), dim=-3)
        assert isinstance(make_projection_solver(W, "auto"), expected), (d, N)
        assert ((N - 1) * d * (d + 1) // 2 <= DENSE_MAX) == (expected is ExactConstraintSolver)
