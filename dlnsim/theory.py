"""Closed-form gradient-flow trajectories of the DLN (Saxe, McClelland & Ganguli 1312.6120;
Arora, Cohen & Hazan 1802.06509; docs/theory.md section 4).

For E = 1/2 ||X - Phi||^2, Phi = U diag(lambda) V^T, and an aligned balanced start
X(0) = U diag(u_0) V^T, X stays aligned and each mode solves

    du/dt = N u^{2(N-1)/N} (lambda - u)        (prefactor N: it is K_ii(u) (lambda - u)).

N = 1: u = lambda + (u_0 - lambda) e^{-t}.  N = 2: u = lambda e^{2 lambda t} / (e^{2 lambda t} - 1 + lambda/u_0).
lambda = 0: u = (u_0^{-c} + 2(N-1) t)^{-1/c}, c = 2(N-1)/N.
General N: with x = u^{1/N}, mu = lambda^{1/N} and r_k = mu e^{2 pi i k/N} the N-th roots of lambda,

    t(u) = Re[T(x) - T(x_0)],   T(x) = x^{2-N} / ((2-N) lambda) - sum_k r_k^2 Log(x - r_k) / (N lambda^2)

(partial fractions of dx / (x^{N-1} (lambda - x^N))); u(t) inverts t(u) by bisection in
z = -log|(lambda - u)/(lambda - u_0)|, on which t is increasing, to full float64 resolution.
"""
from __future__ import annotations

import math

import torch

from ._checks import check_depth

__all__ = ["saxe_mode", "saxe_time"]


def _roots(lam: torch.Tensor, depth: int) -> torch.Tensor:
    """The N-th roots r_k = lambda^{1/N} e^{2 pi i k/N} of lambda, (..., N) complex."""
    k = torch.arange(depth, dtype=lam.dtype, device=lam.device)
    return (lam ** (1.0 / depth)).unsqueeze(-1) * torch.polar(torch.ones_like(k), 2 * math.pi * k / depth)


def _T(x: torch.Tensor, lam: torch.Tensor, depth: int, roots: torch.Tensor | None = None) -> torch.Tensor:
    N = depth
    roots = _roots(lam, N) if roots is None else roots
    xc = x.unsqueeze(-1).to(roots.dtype)
    logs = (roots**2 * torch.log(xc - roots)).sum(-1).real
    return x ** (2 - N) / ((2 - N) * lam) - logs / (N * lam**2)


def saxe_time(u, lam, u0, depth: int) -> torch.Tensor:
    """Time for a mode to go from u0 to u: int_{u0}^{u} dv / (N v^{2(N-1)/N} (lambda - v)).

    Tensors broadcast; lambda > 0, u0 > 0, u between u0 and lambda. Any depth N >= 1.
    """
    check_depth(depth)
    u, lam, u0 = torch.broadcast_tensors(*(torch.as_tensor(v, dtype=torch.float64) for v in (u, lam, u0)))
    N = depth
    if N == 1:
        return torch.log((lam - u0) / (lam - u))
    if N == 2:
        # x = sqrt(u): T(x) = -1/(lam x) + (1/(2 lam^2)) log|(mu + x)/(mu - x)|... via u directly:
        # dt/du = 1/(2u(lam-u)) -> t = (1/(2 lam)) log(u (lam - u0) / (u0 (lam - u)))
        return torch.log(u * (lam - u0) / (u0 * (lam - u))) / (2 * lam)
    return _T(u ** (1.0 / N), lam, N) - _T(u0 ** (1.0 / N), lam, N)


def saxe_mode(t, lam, u0, depth: int) -> torch.Tensor:
    """u(t) for du/dt = N u^{2(N-1)/N} (lambda - u), u(0) = u0 (the gradient flow of one aligned mode).

    t, lam, u0: tensors or numbers, broadcast together (float64); lam >= 0, u0 > 0, t >= 0.
    Returns a float64 tensor of the broadcast shape.
    """
    check_depth(depth)
    t, lam, u0 = torch.broadcast_tensors(*(torch.as_tensor(v, dtype=torch.float64) for v in (t, lam, u0)))
    if bool((lam < 0).any()) or bool((u0 <= 0).any()) or bool((t < 0).any()):
        raise ValueError(
            "saxe_mode needs lam >= 0, u0 > 0 and t >= 0 (modes are aligned singular values; a negative "
            "target mode is the positive one with U's column flipped)"
        )
    N = depth
    c = 2.0 * (N - 1) / N
    if N == 1:
        out = lam + (u0 - lam) * torch.exp(-t)
        return out
    decay = torch.where(lam == 0, torch.ones_like(lam), lam)
    zero_target = (u0 ** (-c) + 2 * (N - 1) * t) ** (-1.0 / c)
    if N == 2:
        e = torch.exp(-2 * decay * t)
        out = decay / (1 - e + (decay / u0) * e)
    else:
        out = _invert_time(t, decay, u0, N)
    out = torch.where(u0 == lam, lam, out)
    return torch.where(lam == 0, zero_target, out)


def _invert_time(t: torch.Tensor, lam: torch.Tensor, u0: torch.Tensor, depth: int) -> torch.Tensor:
    gap0 = lam - u0
    gap0 = torch.where(gap0 == 0, torch.ones_like(gap0), gap0)
    roots = _roots(lam, depth)  # the same at every bisection step
    T0 = _T(u0 ** (1.0 / depth), lam, depth, roots)

    def time_at(z):
        u = lam - gap0 * torch.exp(-z)
        return _T(u ** (1.0 / depth), lam, depth, roots) - T0

    # e^{-z} underflows at z ~ 745: u == lambda there and t = inf, an upper bracket for any t.
    lo = torch.zeros_like(t)
    hi = torch.full_like(t, 745.0)
    for _ in range(110):
        mid = 0.5 * (lo + hi)
        below = time_at(mid) < t
        lo = torch.where(below, mid, lo)
        hi = torch.where(below, hi, mid)
    return lam - gap0 * torch.exp(-0.5 * (lo + hi))
