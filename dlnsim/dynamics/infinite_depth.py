"""Dynamics of the end-to-end matrix at infinite depth, time rescaled by N (`depth: inf`).

With the time of Cohen, Menon & Veraszto (arXiv 2210.12497), t_N = t / N (time_scale "depth"),
each finite-depth flow of X has a limit as N -> inf, obtained by replacing A_{N,X}/N with A_inf
(`dlnsim.geometry.metric_operator_inf`, log-mean kernel K^inf):

- end-to-end flow:     dX/dt = -A_inf(grad E)
- free-energy flow:    dX/dt = -A_inf(grad E) + beta^{-1} A_inf(grad S_inf)
- RLE:                 dX = [ -A_inf(grad E) + beta^{-1} (A_inf(grad S_inf) + X) ] dt + sqrt(2/beta) A_inf^{1/2}(dB)

S_inf is the renormalized entropy of `dlnsim.depth_limit` (S_N minus a constant in X, so its
gradient is the limit of grad S_N). The Ito term of the RLE is the limit of
(1/N) (N-1) X (X^T X)^{-1/N} = X - (1/N) X (I + log X^T X) + O(N^-2): the Brownian motion of
(GL_d, g^inf) has drift beta^{-1} X, the N -> inf limit of the identity
div A - 1/2 A(grad log det A) = (N-1) X (X^T X)^{-1/N} divided by N (checked against automatic
differentiation of the quadrature A_inf in tests/test_infinite_depth.py).
In the SVD frame the entropic and Ito terms together are diagonal:

    A_inf(grad S_inf) + X = U diag(q) V^T,  q_i = s_i [1 + sum_{j != i} g(log s_i^2 - log s_j^2)],

g = `dlnsim.spectral.logmean_slope` in [0, 1]: q is Lipschitz and vanishes with s_i. The finite-N
drift divided by N converges to this limit at rate 1/N.

At infinite depth every coefficient is linear in X (K^inf_ij <= max(s_i, s_j)^2): in d = 1 the RLE
is geometric Brownian motion in disguise (log|X| has drift -X E'(X) and noise sqrt(2/beta)), X never
reaches rank deficiency, and exp(-beta E + S_inf) dvol_{g^inf} has density prod s_i^{-1} near
s_i = 0: not normalizable. The infinite-depth RLE has no stationary law; the finite-N laws
(density s^{-(N-1)/N}) lose their normalisation as N -> inf.

Shapes: X (B, d, d) square; beta a number or a (B,) tensor.
"""
from __future__ import annotations

import math

import torch

from .. import small_svd
from .._checks import check_matrix
from ..depth_limit import entropy_inf_grad_singular_values, entropy_inf, metric_operator_inf_quadrature
from ..energies import Energy
from ..geometry import SVDFactors, infinite_depth_factors
from ..spectral import log_kernel_inf, logmean_slope
from .base import AnnealedSVDScheme, Scheme, State, as_beta, check_beta
from .gradient import _FlowIntegrator

__all__ = [
    "rle_drift_inf",
    "rle_drift_inf_autograd",
    "infinite_depth_velocity",
    "InfiniteDepthFlow",
    "InfiniteDepthFreeEnergyFlow",
    "InfiniteDepthLangevin",
]


def _spectral_drift_inf(s: torch.Tensor) -> torch.Tensor:
    """q (..., d) = beta times the entropic + Ito drift in the frame (module docstring)."""
    l = 2.0 * torch.log(s)
    g = logmean_slope(l.unsqueeze(-1) - l.unsqueeze(-2))
    # two zero singular values: L = -inf + inf; the term is multiplied by s_i = 0 anyway
    g = torch.nan_to_num(g, nan=0.5)
    g = g - torch.diag_embed(torch.diagonal(g, dim1=-2, dim2=-1))
    return s * (1.0 + g.sum(dim=-1))


def _frame_drift_inf(frame: SVDFactors, G: torch.Tensor, beta: torch.Tensor | None) -> torch.Tensor:
    """U^T drift V = -K^inf o (U^T G V) [+ diag(q)/beta]."""
    out = -torch.exp(frame.log_K) * (frame.U.mT @ G @ frame.V)
    if beta is not None:
        out = out + torch.diag_embed(_spectral_drift_inf(frame.s)) / beta
    return out


def rle_drift_inf(X: torch.Tensor, energy: Energy, beta) -> torch.Tensor:
    """-A_inf(grad E) + beta^{-1} (A_inf(grad S_inf) + X); X (B, d, d) -> (B, d, d).

    The limit of rle_drift(X, energy, N, beta) / N as N -> inf (rate 1/N).
    """
    check_matrix(X, square=True)
    check_beta(beta)
    frame = infinite_depth_factors(X)
    return frame.U @ _frame_drift_inf(frame, energy.grad(X), as_beta(beta, X)) @ frame.V.mT


def _velocity_inf(X: torch.Tensor, energy: Energy, beta: torch.Tensor | None) -> torch.Tensor:
    frame = infinite_depth_factors(X)
    P = -energy.grad(X)
    if beta is not None:
        P = P + frame.from_singular(entropy_inf_grad_singular_values(frame.s)) / beta
    return frame.apply(P, 1.0)


def infinite_depth_velocity(X: torch.Tensor, energy: Energy, beta=None) -> torch.Tensor:
    """-A_inf(grad E) [+ beta^{-1} A_inf(grad S_inf)]: the end-to-end (free-energy) flow at depth inf.

    X (B, d_out, d_in); square and full rank when beta is given (S_inf needs it).
    """
    check_matrix(X, square=beta is not None)
    if beta is not None:
        check_beta(beta)
        beta = as_beta(beta, X)
    return _velocity_inf(X, energy, beta)


def rle_drift_inf_autograd(X: torch.Tensor, energy: Energy, beta) -> torch.Tensor:
    """Oracle: -A(grad E) + beta^{-1} (div A + A(grad log rho)), A = A_inf by quadrature,
    log rho = S_inf - 1/2 log det A_inf (the d^2 x d^2 matrix of the quadrature operator).

    (div A)_{kl} = sum_ab d[A_X(E_kl)]_ab / dX_ab by autograd. No log-mean kernel enters except
    through S_inf. X (B, d, d), distinct nonzero singular values; slow, for tests.
    """
    check_matrix(X, square=True)
    check_beta(beta)
    batch = X.reshape(-1, *X.shape[-2:])
    b = torch.as_tensor(beta, dtype=X.dtype).reshape(-1)
    b = b.expand(batch.shape[0]) if b.numel() == 1 else b
    out = []
    for x, bx in zip(batch, b):
        d = x.shape[-1]
        basis = torch.eye(d * d, dtype=x.dtype).reshape(d * d, d, d)

        def op_matrix(y):  # column kl: vec A_inf,y(E_kl)
            return metric_operator_inf_quadrature(y, basis).reshape(d * d, d * d).mT

        J = torch.autograd.functional.jacobian(op_matrix, x, vectorize=True).reshape(d * d, d * d, d * d)
        div = torch.einsum("aka->k", J).reshape(d, d)
        xr = x.detach().requires_grad_(True)
        with torch.enable_grad():
            log_rho = entropy_inf(xr) - 0.5 * torch.logdet(op_matrix(xr))
            (g_rho,) = torch.autograd.grad(log_rho, xr)
        M = op_matrix(x)
        A = lambda P: (M @ P.reshape(-1)).reshape(d, d)  # noqa: E731
        out.append(-A(energy.grad(x.unsqueeze(0))[0]) + (div + A(g_rho)) / bx)
    return torch.stack(out).reshape(X.shape)


class _InfiniteDepth:
    """Scheme attributes shared by the depth-inf schemes: depth = inf and time in units of N.

    The constructors take (energy, step_size, depth=inf, *, time_scale="depth", ...) like their
    finite-depth counterparts, so that the run layer builds them the same way; any other depth or
    time scale is refused (A_{N,X} itself has no limit, only A_{N,X}/N).
    """

    depth = math.inf
    time_scale = "depth"

    def _base_init(self, energy: Energy, step_size: float, depth, time_scale: str) -> None:
        if depth != math.inf:
            raise ValueError(f"{type(self).__name__} is the depth-inf scheme: depth must be inf, got {depth!r}")
        if time_scale != "depth":
            raise ValueError(
                f"depth inf needs time_scale 'depth' (time in units of N: A_N/N has a limit, A_N does not), got {time_scale!r}"
            )
        # Scheme.__init__ would cast depth to int: validate step_size the same way, keep depth = inf.
        Scheme.__init__(self, energy, step_size, 1)
        self.depth = math.inf

    def init_state(self, weights=None, X=None) -> State:
        state = Scheme.init_state(self, weights=weights, X=X)
        if state.X.shape[-1] != state.X.shape[-2]:
            raise ValueError(f"{self.name} needs square X (B, d, d), got shape {tuple(state.X.shape)}")
        return state


class InfiniteDepthFlow(_InfiniteDepth, _FlowIntegrator, Scheme):
    """dX/dt = -A_inf(grad E) [+ beta^{-1} A_inf(grad S_inf)] by RK4 (or method="dopri5").

    The N -> inf limit of EndToEndFlow(energy, h, N, time_scale="depth", beta=beta): the finite-N
    trajectories converge to this one at rate 1/N. beta None: gradient flow of E for g^inf;
    beta > 0 (number or (B,)): the free-energy flow of F = E - S_inf/beta. Config: scheme
    end_to_end_flow with network.depth: inf.
    """

    name = "end_to_end_flow"
    space = "end_to_end"

    def __init__(self, energy: Energy, step_size: float, depth=math.inf, *, time_scale: str = "depth", beta=None,
                 method: str = "rk4", rtol: float | None = None, atol: float | None = None, max_substeps: int | None = None):
        self._base_init(energy, step_size, depth, time_scale)
        self._set_method(method, rtol, atol, max_substeps)
        if beta is not None:
            check_beta(beta)
        self.beta = beta
        self._beta_cache: dict = {}

    def velocity(self, X: torch.Tensor) -> torch.Tensor:
        beta = None if self.beta is None else as_beta(self.beta, X, self._beta_cache)
        return _velocity_inf(X, self.energy, beta)

    def init_state(self, weights=None, X=None) -> State:
        # rectangular X is fine for the flow of E (A_inf is defined for every X); S_inf needs square X
        state = Scheme.init_state(self, weights=weights, X=X)
        if self.beta is not None and state.X.shape[-1] != state.X.shape[-2]:
            raise ValueError(f"{self.name} with beta (free-energy flow) needs square X (B, d, d), got shape {tuple(state.X.shape)}")
        return state

    def step(self, state: State) -> State:
        state.X = self._advance(self.velocity, state.X, state)
        state.t += self.step_size
        state.step += 1
        return state


class InfiniteDepthFreeEnergyFlow(InfiniteDepthFlow):
    """InfiniteDepthFlow with its entropic drift (beta required): config scheme free_energy_flow at depth inf."""

    name = "free_energy_flow"
    needs_beta = True
    square_only = True

    def __init__(self, energy: Energy, step_size: float, depth=math.inf, *, beta=None, **kw):
        if beta is None:
            raise ValueError("the free-energy flow needs an inverse temperature beta (a positive number or (B,) tensor)")
        super().__init__(energy, step_size, depth, beta=beta, **kw)


class InfiniteDepthLangevin(AnnealedSVDScheme, _InfiniteDepth, Scheme):
    """Euler-Maruyama for the infinite-depth RLE of X (B, d, d), in the SVD frame (one SVD per step):

        X <- U [ diag(s) + h (-K^inf o (U^T grad E V) + diag(q)/beta) + sqrt(2h/beta) (K^inf)^{1/2} o Z ] V^T,

    Z standard Gaussian (U^T xi V has the law of xi). The coefficients are Lipschitz in X, so the
    literal chart needs no layer chart (the finite-N scheme's reason for one, the s^{-(N-1)/N}
    singularity, disappears in the limit); the relative noise on s_i is sqrt(2h/beta) per step.
    With the same generator and step, the draws match those of
    RiemannianLangevin(chart="end_to_end", time_scale="depth"), which converges to this scheme
    pathwise at rate 1/N. state.stats["rank_crossings"] counts steps where det X changed sign
    (zero in exact arithmetic at depth inf; nonzero means h is too large).
    """

    name = "rle"
    space = "end_to_end"
    stochastic = True
    needs_beta = True
    square_only = True
    stat_names = ("rank_crossings",)

    def __init__(self, energy: Energy, step_size: float, depth=math.inf, *, beta=None, time_scale: str = "depth",
                 generator: torch.Generator | None = None):
        self._base_init(energy, step_size, depth, time_scale)
        self.beta = beta
        self.generator = generator

    def _frame(self, X: torch.Tensor) -> SVDFactors:
        carried = self.carried_factors(X)
        return carried if carried is not None else infinite_depth_factors(X)

    def step(self, state: State) -> State:
        X = state.X
        frame = self._frame(X)
        beta = as_beta(self.beta, X, self._beta_cache)
        h = self.step_size
        Z = torch.randn(X.shape, dtype=X.dtype, device=X.device, generator=self.generator)
        drift = _frame_drift_inf(frame, self.energy.grad(X), beta)
        new = torch.diag_embed(frame.s) + h * drift + torch.sqrt(2.0 * h / beta) * torch.exp(0.5 * frame.log_K) * Z
        Uf, s_new, Vfh = small_svd.svd(new)  # closed form / Jacobi at d = 2, 3 (LAPACK above): 1.2-1.5x per step
        crossed = small_svd.det(new) < 0
        U, V = frame.U @ Uf, frame.V @ Vfh.mT
        X_new = (U * s_new.unsqueeze(-2)) @ V.mT
        self.carry(X_new, SVDFactors(U, s_new, V, math.inf, log_kernel_inf(s_new)))
        state.X = X_new
        state.stats["rank_crossings"] = state.stats["rank_crossings"] + crossed.to(X.dtype)
        state.t += self.step_size
        state.step += 1
        return state
