"""The deep linear network over F = R, C, H: products, parameter gradient, balancedness, balanced points.

    X = phi(W) = W_N ... W_1,   dL/dW_p = W_{N:p+1}* grad E(X) W_{p-1:1}*,
    G_p = W_{p+1}* W_{p+1} - W_p W_p*  (conserved by gradient flow, zero on the balanced manifold),

with * the conjugate transpose over F and grad E the gradient for <A, B>_F = Re tr(A* B)
(`dlnsim.fields`). The identities are those of the real case (THEORY.md sections 1-2) because
Re tr(A B) = Re tr(B A) over every F. Tensors are representations (`dlnsim.fields`): W_p of shape
(B, n, n) with n = d (R, C) or 2d (H, chi representation); chi is a *-homomorphism, so the code is
the real code with .mH in place of .mT and is the same for C and H.

The real hot path (dlnsim.network, dlnsim.dynamics.gradient) is fused and tuned for real tensors;
this module is the straightforward version for every F and agrees with it on real input to roundoff
(tests/test_fields.py). Energies over F: `dlnsim.field_energies`; steps: `dlnsim.dynamics.field_flows`.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ._checks import check_depth
from .fields import embed_diagonal, field_svd, get_field, random_group
from .network import end_to_end, prefix_products

__all__ = [
    "end_to_end",
    "parameter_gradient_from_end_to_end",
    "parameter_gradient",
    "balancedness",
    "balanced_weights",
]


def parameter_gradient_from_end_to_end(weights: Sequence[torch.Tensor], G: torch.Tensor,
                                       prefixes: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """[W_{N:p+1}* G W_{p-1:1}*]_{p=1..N}: the parameter gradient when G = grad E(X).

    weights: [W_1..W_N] representations (B, n, n); G: (B, n, n). Returns a list shaped like weights.
    """
    N = len(weights)
    if prefixes is None:
        prefixes = prefix_products(weights)
    grads: list[torch.Tensor] = [None] * N  # type: ignore[list-item]
    T = G  # T_p = W_{N:p+1}* G
    for p in range(N, 1, -1):
        grads[p - 1] = T @ prefixes[p - 1].mH
        T = weights[p - 1].mH @ T
    grads[0] = T
    return grads


def parameter_gradient(weights: Sequence[torch.Tensor], energy) -> list[torch.Tensor]:
    """dL/dW_p for L = E o phi, for the pairing <., .>_F on each layer."""
    prefixes = prefix_products(weights)
    return parameter_gradient_from_end_to_end(weights, energy.grad(prefixes[-1]), prefixes)


def balancedness(weights: Sequence[torch.Tensor]) -> torch.Tensor:
    """G_p = W_{p+1}* W_{p+1} - W_p W_p*, p = 1..N-1, stacked (B, N-1, n, n) (Hermitian over F)."""
    W = weights[0]
    if len(weights) == 1:
        return W.new_zeros(*W.shape[:-2], 0, *W.shape[-2:])
    return torch.stack([weights[p].mH @ weights[p] - weights[p - 1] @ weights[p - 1].mH
                        for p in range(1, len(weights))], dim=-3)


def balanced_weights(X: torch.Tensor, depth: int, field, generator: torch.Generator | None = None,
                     random_fiber: bool = True) -> list[torch.Tensor]:
    """A balanced point over X in M_d(F): W_p = Q_p diag(s^{1/N}) Q_{p-1}*, Q_N = U, Q_0 = V.

    X = U diag(s) V* (`field_svd`); Q_1..Q_{N-1} Haar on K_d (random_fiber) or all equal to U
    (then W_p = (X X*)^{1/(2N)} for p >= 2). X: representation (..., n, n). Returns [W_1..W_N].
    """
    check_depth(depth)
    F = get_field(field)
    U, s, V = field_svd(X, F)
    batch = X.shape[:-2]
    d = s.shape[-1]
    inner_Q = [random_group(tuple(batch), d, F, s.dtype, X.device, generator) if random_fiber else U
               for _ in range(depth - 1)]
    Qs = [V] + inner_Q + [U]
    root = embed_diagonal(s ** (1.0 / depth), F)
    return [Qs[p] @ root @ Qs[p - 1].mH for p in range(1, depth + 1)]
