"""The det-sign components of GL_d and the reflection move that connects them on the balanced manifold.

GL_d has two components, det X > 0 and det X < 0. A balanced chain on M that passes through a
rank-deficient X flips the smallest singular direction in all N layers at once, which multiplies
det X by (-1)^N: at even depth the manifold schemes never change the sign of det X, and the share of
chains in each component stays where it started (docs/theory.md, "The det-sign components").

The reflection move (a Metropolis step of its own, composed with a manifold step):

    propose  W_N -> H W_N,  H = I - 2 v v^T / |v|^2,  v ~ N(0, I_d)  (a random Householder reflection),
    accept   with probability min(1, exp(-beta (L(W') - L(W)))).

Why it is exact for exp(-beta L) dvol_M: for a fixed H the map T_H(W) = (W_1, ..., H W_N) is linear
and orthogonal for the Frobenius metric on parameters, so it preserves the Riemannian volume; it
maps M to M, because the only constraint that involves W_N, G_{N-1} = W_N^T W_N - W_{N-1} W_{N-1}^T,
is unchanged (H^T H = I); and it is an involution (H^2 = I). A Metropolis step with a
volume-preserving involution as proposal and acceptance min(1, pi(T x) / pi(x)) satisfies detailed
balance for pi; drawing H at random (from a law not depending on W) keeps it. det(H W_N) = -det W_N,
so every accepted move flips det X, and the two components are connected in one step.

Shapes: weights [W_1, ..., W_N], W_p (B, d, d) (square widths); beta a number or a (B,) tensor;
returns (B,) tensors. No host synchronisation.
"""
from __future__ import annotations

import torch

from ..energies import Energy
from ..network import end_to_end

__all__ = ["det_sign", "householder", "reflection_move"]


def det_sign(weights: list[torch.Tensor]) -> torch.Tensor:
    """sign det X = prod_p sign det W_p, (B,) in the weights' dtype (+1, -1; 0 where some W_p is singular)."""
    sign = torch.ones_like(weights[0][..., 0, 0])
    for W in weights:
        sign = sign * torch.linalg.slogdet(W).sign
    return sign


def householder(v: torch.Tensor) -> torch.Tensor:
    """H = I - 2 v v^T / |v|^2 for v (B, d); (B, d, d). Orthogonal, symmetric, det H = -1."""
    d = v.shape[-1]
    eye = torch.eye(d, dtype=v.dtype, device=v.device)
    return eye - 2.0 * v.unsqueeze(-1) * v.unsqueeze(-2) / (v * v).sum(-1)[..., None, None]


def reflection_move(
    weights: list[torch.Tensor], energy: Energy, beta: torch.Tensor, generator: torch.Generator | None
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """One Metropolis-accepted reflection W_N -> H W_N for every trajectory (module docstring).

    beta: () or (B,) tensor on the weights' dtype/device. Returns (new weights, accepted (B,) bool).
    The energies at the current and proposed X are both evaluated here (one E per point): the
    move is rare enough (MetropolisLangevin/ProjectedLangevin option reflect_every) that caching
    L from the manifold step is not worth coupling the two.
    """
    WN = weights[-1]
    B, d = WN.shape[0], WN.shape[-1]
    v = torch.randn(B, d, dtype=WN.dtype, device=WN.device, generator=generator)
    # H W_N = W_N - 2 v (v^T W_N) / |v|^2: no d x d product needed.
    WN_new = WN - (2.0 / (v * v).sum(-1))[:, None, None] * v.unsqueeze(-1) * (v.unsqueeze(-2) @ WN)
    X = end_to_end(weights)
    X_new = end_to_end(weights[:-1] + [WN_new])
    log_ratio = -beta * (energy.value(X_new) - energy.value(X))
    u = torch.rand(B, dtype=WN.dtype, device=WN.device, generator=generator)
    accept = torch.log(u) < log_ratio
    new = weights[:-1] + [torch.where(accept[:, None, None], WN_new, WN)]
    return new, accept
