"""Gradient-noise diagnostics of minibatch / label-noise SGD at one parameter point W.

Covariance. A sampler (`dlnsim.dynamics.sgd`) draws b samples k with probabilities p_k (with or
without replacement); sample k has X-space gradient h_k (grad E = sum_k p_k h_k) and label-noise
directions J_kq (a draw adds -sigma xi_q J_kq, xi ~ N(0, 1)). Lifting by the adjoint of the
differential of phi, Dphi^T(Z)_p = W_{N:p+1}^T Z W_{p-1:1}^T, the parameter-space stochastic
gradient has mean g = Dphi^T(grad E) and covariance

    C = c_b / b  sum_k p_k (Dphi^T h_k - g)(Dphi^T h_k - g)^T  +  sigma^2 / b  sum_k p_k sum_q Dphi^T J_kq (Dphi^T J_kq)^T,

c_b = 1 with replacement, (n - b)/(n - 1) without (finite-population correction; uniform p; with
epoch-wise reshuffling this is the covariance of each step's minibatch, marginally a uniform subset
of size b, not of an epoch's dependent sequence of steps). It is
returned as a factor F with C = F F^T (D x m, D = sum_p d_p d_{p-1}), from which traces, top
eigenvalues (squared singular values of F) and projected traces tr(P C) = ||P F||_F^2 follow.

Split. Every column of F is in range(Dphi^T) = (ker Dphi)^perp, the *horizontal* space: the fiber
phi^{-1}(X) has tangent space ker Dphi (for square full-rank X it is the GL(d)^{N-1} orbit
W_p -> R_p W_p R_{p-1}^{-1}), and the O(d)^{N-1} orbit of THEORY.md section 4 (the fiber inside the
balanced manifold) lies in it. So minibatch and label noise of any loss E(phi(W)) have no component
along the fiber: `noise_summary` measures the split (horizontal, vertical = fiber-tangent, and the
orbit part of the vertical) with explicit projectors, and reports the vertical share (0 to roundoff).
On the balanced manifold the horizontal projector is V -> horizontal_lift(W, Dphi V) (THEORY.md
section 3: Dphi Dphi^T = A_{N,X} there); elsewhere it is Dphi^T (Dphi Dphi^T)^+ Dphi.

Balancedness drift. G_p(W) = W_{p+1}^T W_{p+1} - W_p W_p^T is quadratic, so one step
W' = W + V, V = -h (g_hat + lambda W), has the exact expectation

    E G_p(W') = G_p(W + E V) + h^2 sum_columns f (f_{p+1}^T f_{p+1} - f_p f_p^T),

and the first-order change along any g_hat in range(Dphi^T) vanishes (gradient flow conserves G_p):
SGD moves G_p only at order h^2, through the mean step and the noise covariance.

Effective temperature. Unprojected Langevin W += -h grad L + sqrt(2h/beta) xi injects 2h/beta per
direction per step; SGD injects h^2 C, all of it horizontal. Matching the horizontal trace gives
1/beta_eff = h tr(C) / (2 dim H), dim H = rank Dphi (= d_N d_0 for full-rank X).

Shapes: weights [W_1..W_N], W_p (d_p, d_{p-1}) (one trajectory: index the ensemble first); dense
(D x D) objects only where named "dense"; float64 recommended.
"""
from __future__ import annotations

import torch

from .entropy import so_basis
from .geometry import SVDFactors
from .network import end_to_end, gradient_from_end_to_end, prefix_products

__all__ = [
    "lift",
    "flatten_params",
    "unflatten_params",
    "noise_factor",
    "noise_covariance_dense",
    "horizontal_projection",
    "orbit_tangent_matrix",
    "noise_summary",
    "expected_balancedness_change",
    "label_noise_inverse_temperature",
]


def _check_single(weights):
    if not isinstance(weights, (list, tuple)) or len(weights) == 0:
        raise ValueError("weights must be a list [W_1, ..., W_N] of one trajectory, each (d_p, d_{p-1})")
    for p, W in enumerate(weights, start=1):
        if not isinstance(W, torch.Tensor) or W.dim() != 2:
            raise ValueError(
                f"W_{p} must be one trajectory's (d_p, d_{p-1}) matrix, got {type(W).__name__} of shape "
                f"{tuple(getattr(W, 'shape', ()))}; index the ensemble first (weights[b])"
            )


def flatten_params(vs: list[torch.Tensor]) -> torch.Tensor:
    """[(..., d_p, d_{p-1})] -> (..., D), layers in order W_1..W_N, each row-major."""
    return torch.cat([v.flatten(-2) for v in vs], dim=-1)


def unflatten_params(v: torch.Tensor, weights: list[torch.Tensor]) -> list[torch.Tensor]:
    """(..., D) -> [(..., d_p, d_{p-1})] shaped like weights."""
    out, i = [], 0
    for W in weights:
        m = W.numel()
        out.append(v[..., i : i + m].reshape(*v.shape[:-1], *W.shape))
        i += m
    return out


def lift(weights: list[torch.Tensor], Z: torch.Tensor) -> torch.Tensor:
    """Dphi_W^T(Z) flattened: Z (..., d_N, d_0) -> (..., D)."""
    return flatten_params(gradient_from_end_to_end(list(weights), Z, prefix_products(list(weights))))


def _push(weights: list[torch.Tensor], V: torch.Tensor) -> torch.Tensor:
    """Dphi_W(V) = sum_p W_{N:p+1} V_p W_{p-1:1}: (..., D) -> (..., d_N, d_0)."""
    vs = unflatten_params(V, weights)
    N = len(weights)
    pre = prefix_products(weights)  # pre[q] = W_{q:1}
    out = 0
    for p in range(1, N + 1):
        term = vs[p - 1] @ pre[p - 1]
        for q in range(p + 1, N + 1):
            term = weights[q - 1] @ term
        out = out + term
    return out


def noise_factor(weights: list[torch.Tensor], sampler, trajectory: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(g (D,), F (D, m)) with g the mean parameter gradient and C = F F^T the covariance of one
    step's stochastic parameter gradient (weight decay is deterministic and adds nothing to C).

    sampler: a `CompletionSampler` or `RegressionSampler` (or an SGD scheme's `.sampler`);
    trajectory selects the mask of a per-trajectory batch of masks.
    """
    _check_single(weights)
    X = end_to_end(list(weights))
    h, p, J, b, replacement = sampler.population(X, trajectory)
    n = h.shape[0]
    H = lift(weights, h)  # (n, D)
    g = p @ H
    cb = 1.0 if replacement else ((n - b) / (n - 1) if n > 1 else 0.0)
    cols = [((cb * p / b).sqrt().unsqueeze(-1) * (H - g)).T]
    if sampler.label_noise > 0:
        q = J.shape[1]
        L = lift(weights, J.reshape(n * q, *J.shape[-2:])).reshape(n, q, -1)
        w = (p / b).sqrt().reshape(n, 1, 1) * sampler.label_noise
        cols.append((w * L).reshape(n * q, -1).T)
    return g, torch.cat(cols, dim=1)


def noise_covariance_dense(weights: list[torch.Tensor], sampler, trajectory: int = 0) -> torch.Tensor:
    """C = F F^T, dense (D, D)."""
    _, F = noise_factor(weights, sampler, trajectory)
    return F @ F.T


def horizontal_projection(weights: list[torch.Tensor], V: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(P_H V, dim H): orthogonal projection of parameter vectors V (..., D) onto range(Dphi^T).

    P_H = Dphi^T (Dphi Dphi^T)^+ Dphi with the Gram operator Dphi Dphi^T formed densely on the
    (d_N d_0)-dimensional X-space (pseudo-inverse: rank-deficient X allowed). dim H = its rank.
    """
    _check_single(weights)
    W0 = weights[0]
    d_out, d_in = weights[-1].shape[0], W0.shape[1]
    basis = torch.eye(d_out * d_in, dtype=W0.dtype, device=W0.device).reshape(-1, d_out, d_in)
    Lb = lift(weights, basis)  # rows: Dphi^T(E_ab); Gram = Lb Lb^T
    gram = Lb @ Lb.T
    rank = int(torch.linalg.matrix_rank(gram, hermitian=True))
    coeff = torch.linalg.pinv(gram, hermitian=True) @ (Lb @ V.unsqueeze(-1) if V.dim() == 1 else Lb @ V.mT)
    PV = (Lb.T @ coeff)
    PV = PV.squeeze(-1) if V.dim() == 1 else PV.mT
    return PV, rank


def orbit_tangent_matrix(weights: list[torch.Tensor]) -> torch.Tensor:
    """Tangent vectors of the prod_{p=1}^{N-1} O(d_p) orbit, delta W_p = A_p W_p - W_p A_{p-1}
    (A_0 = A_N = 0), for A_p running over the basis F_ij = (E_ij - E_ji)/sqrt 2 of each so(d_p):
    a dense (D, sum_p d_p (d_p - 1)/2) matrix (THEORY.md section 4; any widths)."""
    _check_single(weights)
    N = len(weights)
    cols = []
    for q in range(1, N):  # hidden layer q, between W_q and W_{q+1}
        d = weights[q - 1].shape[0]
        Fb = so_basis(d, weights[0].dtype, weights[0].device)  # (m, d, d)
        vs = [torch.zeros(Fb.shape[0], *W.shape, dtype=W.dtype, device=W.device) for W in weights]
        vs[q - 1] = Fb @ weights[q - 1]  # A_q W_q
        vs[q] = -weights[q] @ Fb  # -W_{q+1} A_q
        cols.append(flatten_params(vs))
    if not cols:
        return weights[0].new_zeros(sum(W.numel() for W in weights), 0)
    return torch.cat(cols, dim=0).T


def noise_summary(weights: list[torch.Tensor], sampler, *, top: int = 3, step_size: float | None = None,
                  trajectory: int = 0) -> dict[str, torch.Tensor | float | int]:
    """Trace, top eigenvalues and the horizontal / vertical (fiber-tangent) / orbit split of C at W.

    Keys: trace, top_eigenvalues (top,), trace_horizontal, trace_vertical (= trace - horizontal),
    trace_orbit (projection on the O(d_p) orbit directions, part of the vertical), vertical_fraction,
    dim_horizontal, grad_norm (||g||); with step_size h also inverse_temperature 1/beta_eff =
    h trace_horizontal / (2 dim_horizontal) and beta_eff.
    """
    g, F = noise_factor(weights, sampler, trajectory)
    trace = float((F * F).sum())
    sv = torch.linalg.svdvals(F)
    eig = torch.zeros(top, dtype=F.dtype)
    k = min(top, sv.numel())
    eig[:k] = sv[:k] ** 2
    PF, dimH = horizontal_projection(weights, F.T)
    tr_h = float((PF * PF).sum())
    T = orbit_tangent_matrix(weights)
    if T.shape[1]:
        coef = torch.linalg.lstsq(T, F).solution if T.shape[0] >= T.shape[1] else torch.linalg.pinv(T) @ F
        PO = T @ coef
        tr_o = float((PO * PO).sum())
    else:
        tr_o = 0.0
    out = {
        "trace": trace,
        "top_eigenvalues": eig,
        "trace_horizontal": tr_h,
        "trace_vertical": trace - tr_h,
        "trace_orbit": tr_o,
        "vertical_fraction": (trace - tr_h) / trace if trace > 0 else 0.0,
        "dim_horizontal": dimH,
        "grad_norm": float(g.norm()),
    }
    if step_size is not None:
        inv = step_size * tr_h / (2 * dimH) if dimH else 0.0
        out["inverse_temperature"] = inv
        out["beta_eff"] = 1.0 / inv if inv > 0 else float("inf")
    return out


def _G(ws):
    return [ws[p].T @ ws[p] - ws[p - 1] @ ws[p - 1].T for p in range(1, len(ws))]


def expected_balancedness_change(weights: list[torch.Tensor], sampler, step_size: float, weight_decay: float = 0.0,
                                 trajectory: int = 0) -> list[torch.Tensor]:
    """E[G_p(W')] - G_p(W), p = 1..N-1, for one SGD step W' = W - h (g_hat + lambda W) (no momentum
    buffer): exact, G_p(W + E V) - G_p(W) + h^2 sum_f (f_{p+1}^T f_{p+1} - f_p f_p^T) (module docstring)."""
    g, F = noise_factor(weights, sampler, trajectory)
    h = float(step_size)
    mean = unflatten_params(-h * g, weights)
    moved = [W + m - h * weight_decay * W for W, m in zip(weights, mean)]
    fs = unflatten_params(F.T, weights)  # each (m, d_p, d_{p-1})
    out = []
    for p, (G1, G0) in enumerate(zip(_G(moved), _G(list(weights))), start=1):
        noise = (fs[p].mT @ fs[p]).sum(0) - (fs[p - 1] @ fs[p - 1].mT).sum(0)
        out.append(G1 - G0 + h * h * noise)
    return out


def label_noise_inverse_temperature(X: torch.Tensor, mask: torch.Tensor, label_noise: float, depth: int,
                                    step_size: float) -> torch.Tensor:
    """1/beta_eff = h tr(C) / (2 dim H) of full-batch label-noise SGD on matrix completion at balanced
    weights over X, from X alone (no weights needed):

        tr C = sigma^2 sum_ij M_ij^2 <E_ij, A_{N,X} E_ij> = sigma^2 sum_kl K_kl [(U o U)^T (M o M) (V o V)]_kl,

    since the gradient noise is -sigma M o xi in X-space, C = Dphi^T (noise cov) Dphi and
    Dphi Dphi^T = A_{N,X} on the balanced manifold (K: the kernel of A_{N,X} in the SVD frame (U, V) of X).
    dim H = d_out d_in (full-rank square X). `noise_summary(..., step_size=h)` gives the same number
    from the weights at any point (the test compares them at balanced points).

    X: (..., d, d) square, full rank; mask: (d, d) or (..., d, d); returns (...,).
    """
    if X.shape[-1] != X.shape[-2]:
        raise ValueError(f"label_noise_inverse_temperature needs square X (dim H = d^2), got {tuple(X.shape[-2:])}")
    fr = SVDFactors.of(X, depth)
    M2 = (mask * mask).to(X.dtype)
    T = (fr.U * fr.U).mT @ M2 @ (fr.V * fr.V)  # [(U o U)^T (M o M) (V o V)]_kl
    trace = label_noise**2 * (torch.exp(fr.log_K) * T).sum(dim=(-2, -1))
    return step_size * trace / (2 * X.shape[-1] * X.shape[-2])
