"""Metropolis-adjusted Riemannian Langevin (MALA for the RLE) in the layer chart (docs/theory.md section 6(c)).

Target: the RLE's stationary law. In the layer chart Y = U diag(x) V^T, x = s^{1/N} (X = U diag(s) V^T,
`dlnsim.dynamics.rle.layer_coordinates`), its density with respect to Lebesgue measure dY is

    pi(Y) ∝ exp(-beta E(X) + S(X)),      S(X) = const + 1/2 sum_{i<j} log K_ij(s),

because the Lebesgue density in X, exp(-beta E) prod_i s_i^{-(N-1)/N} prod_{i<j} K_ij^{-1/2}
(`dlnsim.gibbs`), times |det dX/dY| = prod_i N x_i^{N-1} prod_{i<j} K_ij (the Jacobian of the spectral
map x -> x^N: f'(x_i) on the diagonal, (f_i -+ f_j)/(x_i -+ x_j) on the symmetric / antisymmetric pair
components, whose product is K_ij) is that: the singular factors cancel and pi is smooth and bounded
through rank-deficient X.

Proposal: one Euler-Maruyama step of the RLE in the layer chart (`RiemannianLangevin`, chart="layer"),

    Y' = Y + hc mu(Y) + sqrt(2 hc / beta) D_Y^{1/2}(Z),   Z standard normal (B, d, d),

a Gaussian with mean m(Y) = Y + hc mu(Y) and covariance (2 hc / beta) D_Y, D_Y diagonal in the frame of
Y: rho_ij = B_ij/A_ij on the symmetric pair components, 1/rho_ij on the antisymmetric ones, 1/N on the
diagonal (`rle._layer_pair_terms`). det D_Y = N^{-d} for every Y (the rho factors pair off), so the
Gaussian normalisers cancel in the ratio:

    log q(Y' | Y) = const - |Z|^2 / 2,
    log q(Y | Y') = const - beta / (4 hc) (|rho'^{-1/2} o sym(Delta)|^2 + |rho'^{1/2} o anti(Delta)|^2),
    Delta = U'^T (Y - m(Y')) V'  (Y and m(Y') in the frame (U', V') of Y').

Acceptance (per chain, one uniform each): log u < -beta (E' - E) + (S' - S) + log q(Y | Y') - log q(Y' | Y).
Metropolis-Hastings with this ratio leaves pi invariant for every step size: the law is exact, h only
sets the acceptance rate (no projections, so nothing fails at N = 3 as the manifold Metropolis scheme does).

Cost per step: one small SVD (of the proposal, in the current frame), the energy and gradient at the
proposal, the pair terms there; everything at the current point (frame, E, drift) is carried from the
step that produced it (the proposal's values when accepted).

Shapes: X (B, d, d) square; beta a number or (B,) tensor. stats: "proposals", "accepted",
"sign_changes" (accepted moves across the rank-deficient set, det X changing sign).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from .._checks import check_depth
from ..energies import Energy
from .. import small_svd
from ..spectral import log_kernel
from .base import AnnealedSVDScheme, Scheme, State, as_beta
from .gradient import TIME_SCALES
from .rle import _anti, _layer_force, _layer_noise, _layer_pair_terms, _sym

__all__ = ["MetropolisRLE", "layer_log_density", "layer_proposal_log_density", "layer_log_jacobian"]


class _Point(NamedTuple):
    """Everything the step needs at one point, in its SVD frame (carried between steps)."""

    X: torch.Tensor  # (B, d, d), the state tensor these values describe (identity marks the cache)
    U: torch.Tensor  # (B, d, d)
    x: torch.Tensor  # (B, d) layer singular values s^{1/N}
    V: torch.Tensor  # (B, d, d)
    log_S: torch.Tensor  # (B,) 1/2 sum_{i<j} log K_ij = S - const
    E: torch.Tensor  # (B,) energy
    force: torch.Tensor  # (B, d, d) -(B o sym(G) + A o anti(G)) in the frame, G = U^T grad E V
    r: torch.Tensor  # (B, d) the Ito/entropic drift times beta, diagonal in the frame
    rho: torch.Tensor  # (B, d, d) B/A (diagonal 1/N)


def _half_upper_sum(log_K: torch.Tensor) -> torch.Tensor:
    """1/2 sum_{i<j} log K_ij, (...,); a mask (not sum - trace) so that -inf diagonals (s_i = 0) stay out."""
    d = log_K.shape[-1]
    upper = torch.ones(d, d, dtype=torch.bool, device=log_K.device).triu(1)
    return 0.5 * torch.where(upper, log_K, torch.zeros_like(log_K)).sum(dim=(-2, -1))


def _point(X: torch.Tensor, U: torch.Tensor, s: torch.Tensor, V: torch.Tensor, energy: Energy, depth: int) -> _Point:
    log_K = log_kernel(s, depth)
    E, grad = energy.value_and_grad(X)
    A, Bm, rho, r = _layer_pair_terms(s, log_K, depth)
    force = _layer_force(A, Bm, U.mT @ grad @ V)
    return _Point(X, U, s ** (1.0 / depth), V, _half_upper_sum(log_K), E, force, r, rho)


def _quad(Delta: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
    """|D^{-1/2}(Delta)|^2 for frame coordinates Delta (..., d, d): sym parts / rho, antisymmetric parts * rho."""
    return ((_sym(Delta) ** 2) / rho + (_anti(Delta) ** 2) * rho).sum(dim=(-2, -1))


# --- the densities as functions of Y (public: the tests' brute-force checks and docs/theory.md) ----------


def layer_log_jacobian(Y: torch.Tensor, depth: int) -> torch.Tensor:
    """log |det dX/dY| of X = Y (Y^T Y)^{(N-1)/2}: sum_i log(N x_i^{N-1}) + sum_{i<j} log K_ij(x^N); (...,)."""
    check_depth(depth)
    x = torch.linalg.svdvals(Y)
    s = x**depth
    return (torch.log(torch.as_tensor(float(depth), dtype=Y.dtype)) + (depth - 1) * torch.log(x)).sum(-1) + \
        2.0 * _half_upper_sum(log_kernel(s, depth))


def layer_log_density(Y: torch.Tensor, energy: Energy, depth: int, beta) -> torch.Tensor:
    """log pi(Y) = -beta E(X(Y)) + 1/2 sum_{i<j} log K_ij, up to a constant; Y (..., d, d) -> (...,)."""
    check_depth(depth)
    U, x, Vh = torch.linalg.svd(Y)
    s = x**depth
    X = (U * s.unsqueeze(-2)) @ Vh
    b = as_beta(beta, Y, trailing=0)
    return -b * energy.value(X) + _half_upper_sum(log_kernel(s, depth))


def layer_proposal_log_density(Y_to: torch.Tensor, Y_from: torch.Tensor, energy: Energy, depth: int, beta,
                               hc: float) -> torch.Tensor:
    """log q(Y_to | Y_from) of the Euler-Maruyama proposal, up to the constant -d^2/2 log(4 pi hc / beta) + d/2 log N.

    Computed afresh from the SVD of Y_from (no carried values); tests/test_mala.py checks it against the dense
    d^2 x d^2 Gaussian whose covariance is the pullback J^{-1} A J^{-T} of the metric operator.
    """
    U, x, Vh = torch.linalg.svd(Y_from)
    V = Vh.mT
    s = x**depth
    X = (U * s.unsqueeze(-2)) @ Vh
    p = _point(X, U, s, V, energy, depth)
    b = as_beta(beta, Y_from)
    mean = torch.diag_embed(x) + hc * (p.force + torch.diag_embed(p.r) / b)
    Delta = U.mT @ Y_to @ V - mean
    return -as_beta(beta, Y_from, trailing=0) / (4.0 * hc) * _quad(Delta, p.rho)


# --- the scheme ----------------------------------------------------------------------------------------


class MetropolisRLE(AnnealedSVDScheme, Scheme):
    """Metropolis-adjusted RLE: the layer-chart Euler-Maruyama step as a proposal, exact stationary law.

    MetropolisRLE(energy, step_size, depth, beta, *, generator=None, time_scale="none",
    keep_component=False). X (B, d, d) square. The proposal is `RiemannianLangevin`'s default step
    (chart="layer"); the accept/reject test (module docstring) makes exp(-beta E + S) dvol_g the exact
    stationary law at any step size, so h can be chosen for mixing (acceptance 0.5-0.9) rather than for
    bias. keep_component: proposals whose det X has the other sign are rejected (exact for the law
    restricted to the starting component, docs/theory.md section 8). time_scale as for the RLE.
    No host syncs: one (B,) uniform per step decides each chain.
    """

    name = "rle_metropolis"
    space = "end_to_end"
    stochastic = True
    needs_beta = True
    square_only = True
    option_spec = None  # time_scale, keep_component: checked by the constructor
    stat_names = ("proposals", "accepted", "sign_changes")

    def __init__(self, energy: Energy, step_size: float, depth: int, beta, *, generator: torch.Generator | None = None,
                 time_scale: str = "none", keep_component: bool = False):
        super().__init__(energy, step_size, depth)
        check_depth(depth)
        if time_scale not in TIME_SCALES:
            raise ValueError(f"time_scale must be one of {TIME_SCALES}, got {time_scale!r}")
        if not isinstance(keep_component, bool):
            raise ValueError(f"keep_component must be True or False, got {keep_component!r}")
        self.beta = beta
        self.generator = generator
        self.time_scale = time_scale
        self.scale = 1.0 if time_scale == "none" else 1.0 / self.depth
        self.keep_component = keep_component

    def init_state(self, weights=None, X=None) -> State:
        state = super().init_state(weights=weights, X=X)
        if state.X.shape[-1] != state.X.shape[-2]:
            raise ValueError(f"MetropolisRLE needs square X (B, d, d), got shape {tuple(state.X.shape)}")
        return state

    def _current(self, X: torch.Tensor) -> _Point:
        carried = self.carried_factors(X)
        if carried is not None:
            return carried
        U, s, Vh = small_svd.svd(X)
        return _point(X, U, s, Vh.mT, self.energy, self.depth)

    def _propose(self, p: _Point, Z: torch.Tensor):
        """(proposal point, log acceptance ratio (B,), det of the proposal in the current frame) for noise Z."""
        N = self.depth
        beta = as_beta(self.beta, p.X, self._beta_cache)  # scalar or (B, 1, 1)
        b = beta.reshape(-1) if beta.dim() else beta  # scalar or (B,)
        hc = self.step_size * self.scale
        amp = torch.sqrt(2.0 * hc / beta)
        # Forward: the RLE's layer-chart Euler step, in the frame of the current point.
        new = (torch.diag_embed(p.x) + hc * (p.force + torch.diag_embed(p.r) / beta)
               + amp * _layer_noise(p.rho, Z))
        Uf, x_new, Vfh = small_svd.svd(new)
        U, V = p.U @ Uf, p.V @ Vfh.mT
        s_new = x_new**N
        q = _point((U * s_new.unsqueeze(-2)) @ V.mT, U, s_new, V, self.energy, N)
        # Reverse: Y in the proposal's frame is Uf^T diag(x) Vf; the reverse mean there is diag(x') + hc mu(Y').
        mean_rev = torch.diag_embed(x_new) + hc * (q.force + torch.diag_embed(q.r) / beta)
        Delta = (Uf.mT * p.x.unsqueeze(-2)) @ Vfh.mT - mean_rev
        log_ratio = (-b * (q.E - p.E) + (q.log_S - p.log_S)
                     - b / (4.0 * hc) * _quad(Delta, q.rho) + 0.5 * (Z * Z).sum(dim=(-2, -1)))
        return q, log_ratio, small_svd.det(new)

    def step(self, state: State) -> State:
        X = state.X
        p = self._current(X)
        Z = torch.randn(X.shape, dtype=X.dtype, device=X.device, generator=self.generator)
        q, log_ratio, det_new = self._propose(p, Z)
        u = torch.rand(log_ratio.shape, generator=self.generator, dtype=X.dtype, device=X.device)
        # NaN (a proposal on the measure-zero set of two zero singular values) compares False: rejected.
        accept = torch.log(u) < log_ratio
        crossed = det_new < 0
        if self.keep_component:
            accept = accept & ~crossed
        a1, a2, a3 = accept[:, None], accept[:, None, None], accept
        nxt = _Point(
            torch.where(a2, q.X, X), torch.where(a2, q.U, p.U), torch.where(a1, q.x, p.x), torch.where(a2, q.V, p.V),
            torch.where(a3, q.log_S, p.log_S), torch.where(a3, q.E, p.E), torch.where(a2, q.force, p.force),
            torch.where(a1, q.r, p.r), torch.where(a2, q.rho, p.rho),
        )
        self.carry(nxt.X, nxt)
        state.X = nxt.X
        st = state.stats
        st["proposals"] = st["proposals"] + 1
        st["accepted"] = st["accepted"] + accept.to(X.dtype)
        st["sign_changes"] = st["sign_changes"] + (accept & crossed).to(X.dtype)
        state.t += self.step_size
        state.step += 1
        return state
