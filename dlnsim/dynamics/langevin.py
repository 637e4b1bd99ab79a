"""Overdamped Langevin dynamics in parameter space: on the balanced manifold M, and off it.

Target: the constrained Langevin equation of docs/theory.md section 6(a),

    dW = -P_W grad L(W) dt + sqrt(2/beta) P_W o dB      (Stratonovich, P_W the projector onto T_W M),

whose stationary law is exp(-beta L) dvol_M; its image under X = phi(W) is the Riemannian Langevin
equation of section 5(b) (`dlnsim.dynamics.rle`). Schemes (all batched over the ensemble, no host
syncs, hand-written parameter gradients, all randomness from `self.generator`):

- ProjectedLangevin: projected Euler-Maruyama. Tangent step v = -h P_x grad L(x) + sqrt(2h/beta) P_x xi,
  then y = x + v + J(x)^T mu with mu from the Newton projection of `dlnsim.manifold` so that
  G_p(y) = 0. First order weakly: O(h) bias in the stationary law (several % at h = 0.02-0.1).
  Linear algebra (option solver): "frame" does everything in the singular frames of x, where J J^T
  is diagonal in the matrix entries (dlnsim.manifold.SingularFrameSolver: O(N d^3) per step, simplified
  Newton with an exact-Newton fallback on the CPU); "exact" is the block-tridiagonal / dense
  Newton of ExactConstraintSolver (O(N d^6), the oracle; dense and launch-bound for few constraints);
  "auto" (default): "exact" for few constraints ((N-1) d(d+1)/2 <= 24: d = 2 up to N = 9, d = 3 up
  to N = 5, where a step is 2.4-3.1x faster than with "frame" at N = 2 and 1.05-1.35x at N = 3;
  dlnsim.manifold.make_projection_solver), else "frame" on the CPU and "exact" on accelerators (no
  host-synchronising fallback there). Same projection to ~tol where both
  converge; with "frame" the noise is drawn in frame coordinates (same law, different stream).
  Safeguard: a projection is rejected (the trajectory stays at x for this step) if Newton does not
  converge, or if the normal correction is large, |y - (x + v)| > safeguard |v| (default 2).
  Why 2|v|: the normal correction onto the nearby sheet of M is ~ kappa |v|^2 / 2 (kappa the
  curvature), far below 2|v| for every step that resolves the geometry (|v| kappa < 4); a larger
  correction means Newton found a distant solution of c = 0, which near rank-deficient X can lie
  arbitrarily far away (|W| ~ 1e56 was seen; docs/theory.md section 12). The cap also bounds every move by |y - x| <= 3|v|.
- MetropolisLangevin: the same move as a proposal, accepted with the Metropolis-Hastings rule of
  Zappa, Holmes-Cerfon & Goodman (CPAM 2018) for exp(-beta L) dvol_M. The reverse tangent move is
  v' = P_y (x - y); the ratio of proposal densities is that of the tangent Gaussians,
  exp(-beta |v' - m_y|^2 / 4h) / exp(-beta |v - m_x|^2 / 4h), m_x = -h P_x grad L(x) (the Jacobian
  factors |det(T_x^T T_y)| of the two projections are equal and cancel). The proposal is rejected
  unless the reverse projection from y (same solver, same tolerance) returns to x within
  `reverse_tol`: without this check the chain is not reversible where the solver finds a different
  root (about 3% of reverse projections fail for d = 2, N = 3). The safeguard is applied to both
  directions (a symmetric restriction of the proposal, so detailed balance holds).
- UnprojectedLangevin: plain Euler-Maruyama dW = -grad L dt + sqrt(2/beta) dB in the full parameter
  space: the contrast run, whose balancedness G_p drifts diffusively.

det-sign components (both manifold schemes): a balanced step through rank-deficient X multiplies
det X by (-1)^N, so at even depth the chains alone never leave the det-sign component they start in.
Every `reflect_every` steps a Metropolis-accepted reflection W_N -> H W_N (random Householder H;
dlnsim.dynamics.reflection) is composed with the step: it keeps W balanced, preserves volume, flips
det X, and leaves exp(-beta L) dvol_M invariant, so the chain samples the law on all of GL_d.
Default (reflect_every=None): every 10 steps at even depth, where it is needed, and off at odd depth,
where the chains cross through rank deficiency as the RLE does. The move is a Monte-Carlo move,
not part of the Langevin equation: it keeps the stationary law but changes the path law (a jump
X -> H X), so for time-dependent comparisons use keep_component=True (at even depth the path law
is then the RLE's up to the first passage through rank deficiency), or reflect_every=0. Cost: ~10%
of a Metropolis step at reflect_every = 10 (the cached frame is recomputed after a move). keep_component=True switches it off and rejects every step that would change
the sign of det X (counted in component_rejections; at odd depth the chains would otherwise cross
through rank deficiency): MetropolisLangevin then samples the law restricted to the starting
component exactly (a proposal restricted to a domain), ProjectedLangevin up to its O(h) bias. Counters: sign_changes (steps on which
det X changed sign), reflections_accepted.

Per-trajectory counters (state.stats, (B,) float tensors, cumulative since init_state):
ProjectedLangevin: steps, projection_failures, safeguard_rejections, newton_iterations;
MetropolisLangevin: proposals, accepted, projection_failures, reverse_failures,
safeguard_rejections, newton_iterations (forward + reverse). Rates are ratios of counters.

Square widths only for the manifold schemes (M is defined for square width, docs/theory.md section 2).
Notation in the code: W the stacked weights (B, N, d, d), Y the projected point, X = phi(W) the
end-to-end matrix (as everywhere in dlnsim); the projection solver at W comes from
dlnsim.manifold.make_projection_solver.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from ..energies import Energy
from ..manifold import NEWTON_METHODS, SOLVERS, check_point_on_manifold, make_projection_solver
from ..network import gradient_from_end_to_end, prefix_products
from .base import Scheme, State, as_beta, check_beta
from .reflection import det_sign, reflection_move

__all__ = ["ProjectedLangevin", "MetropolisLangevin", "UnprojectedLangevin"]


def _energy_and_gradient(W: torch.Tensor, energy: Energy) -> tuple[torch.Tensor, torch.Tensor]:
    """L(W) (B,) and dL/dW stacked (B, N, d, d) from stacked weights W (B, N, d, d)."""
    ws = list(W.unbind(dim=-3))
    prefixes = prefix_products(ws)
    value, G = energy.value_and_grad(prefixes[-1])
    return value, torch.stack(gradient_from_end_to_end(ws, G, prefixes), dim=-3)


def _sq(V: torch.Tensor) -> torch.Tensor:
    return (V * V).sum(dim=(-3, -2, -1))


class _LangevinBase(Scheme):
    """Shared constructor: beta, generator, options."""

    space = "parameters"
    stochastic = True
    needs_beta = True
    option_spec = None  # dynamics.options go to the constructor, which checks them against `options`
    options: dict = {}

    def __init__(
        self, energy: Energy, step_size: float, depth: int, beta, *, generator: torch.Generator | None = None, **options
    ):
        super().__init__(energy, step_size, depth)
        check_beta(beta)
        self.beta = torch.as_tensor(beta, dtype=torch.float64)
        self._beta_cache: dict = {}
        self._own_generator = generator is None
        if generator is None:
            generator = torch.Generator()
            generator.seed()
        self.generator = generator
        unknown = set(options) - set(self.options)
        if unknown:
            raise ValueError(
                f"unknown option(s) {sorted(unknown)} for {type(self).__name__}; valid options: {sorted(self.options)}"
            )
        for k, default in self.options.items():
            setattr(self, k, options.get(k, default))
        self._check_options()

    def _check_options(self) -> None:
        pass

    def init_state(self, weights=None, X=None) -> State:
        state = super().init_state(weights=weights, X=X)
        W0 = state.weights[0]
        if self.beta.dim() == 1 and self.beta.shape[0] not in (1, W0.shape[0]):
            raise ValueError(
                f"beta has {self.beta.shape[0]} entries but the ensemble has B = {W0.shape[0]}; give one beta per trajectory"
            )
        if self._own_generator and self.generator.device != W0.device:
            # A generator we made ourselves follows the state's device (a CUDA randn needs a CUDA generator).
            seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
            self.generator = torch.Generator(device=W0.device).manual_seed(seed)
        return state

    def _beta(self, ref: torch.Tensor) -> torch.Tensor:
        """beta as (B,) or () tensor on ref's dtype/device (copied to the device once per run)."""
        return as_beta(self.beta, ref, self._beta_cache, trailing=0)

    def _noise(self, ref: torch.Tensor) -> torch.Tensor:
        return torch.randn(ref.shape, generator=self.generator, dtype=ref.dtype, device=ref.device)


def newton_tol(dtype: torch.dtype) -> float:
    """Default absolute Newton tolerance on max_p ||G_p||_F: 1e-10 in float64, 1e3 eps in lower
    precision (1.2e-4 in float32, whose resolution 1.2e-7 |W|^2 an absolute 1e-10 can never reach:
    projections would fail at every step and the chains stay frozen)."""
    return max(1e-10, 1e3 * torch.finfo(dtype).eps)


class _ManifoldLangevin(_LangevinBase):
    square_only = True
    on_manifold = True
    # tol None: newton_tol(dtype), the absolute Newton tolerance scaled with the dtype's resolution.
    # max_iter 36: measured d = 2, N = 3, h = 0.05, beta = 1, B = 1024, 30 steps, three seeds
    # (results/bench/README.md, "Projection failures"): projection failures 139/122/113 at 12 updates,
    # 53/39/42 at 36 (safeguard rejections 5/2/8 -> 24/18/21: Newton then reaches a far root, which the
    # safeguard rejects), for ~40% more time on that case; converged trajectories stop after 3-5
    # updates either way.
    options = {"tol": None, "max_iter": 36, "method": "newton", "safeguard": 2.0, "solver": "auto",
               "keep_component": False, "reflect_every": None}

    def _tol(self, dtype: torch.dtype) -> float:
        return self.tol if self.tol is not None else newton_tol(dtype)

    def _check_options(self) -> None:
        if self.depth < 2:
            raise ValueError(
                f"{type(self).__name__} needs depth >= 2 (the balanced manifold of depth 1 is all of GL_d); "
                "use UnprojectedLangevin"
            )
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {self.solver!r}")
        if self.method not in NEWTON_METHODS:
            raise ValueError(f"method must be one of {NEWTON_METHODS}, got {self.method!r}")
        if not (isinstance(self.max_iter, int) and not isinstance(self.max_iter, bool) and self.max_iter >= 1):
            raise ValueError(f"max_iter must be a positive integer, got {self.max_iter!r}")
        if self.tol is not None and not (isinstance(self.tol, (int, float)) and not isinstance(self.tol, bool)
                                         and 0 < self.tol < float("inf")):
            raise ValueError(f"tol must be a positive finite number (absolute, on max_p ||G_p||_F), got {self.tol!r}")
        if not isinstance(self.keep_component, bool):
            raise ValueError(f"keep_component must be true or false (stay in the starting det-sign component), got {self.keep_component!r}")
        if self.reflect_every is None:  # "auto": where the chains cannot change the sign of det X themselves
            self.reflect_every = 10 if self.depth % 2 == 0 else 0
        if isinstance(self.reflect_every, bool) or not (isinstance(self.reflect_every, int) and self.reflect_every >= 0):
            raise ValueError(
                f"reflect_every must be a non-negative integer (steps between reflection moves; 0: none), got {self.reflect_every!r}"
            )
        if self.safeguard is not None and not (isinstance(self.safeguard, (int, float)) and self.safeguard > 0):
            raise ValueError(
                f"safeguard must be a positive number (the cap on |y - (x+v)| / |v|) or None, got {self.safeguard!r}"
            )

    def init_state(self, weights=None, X=None) -> State:
        state = super().init_state(weights=weights, X=X)
        d = state.weights[0].shape[-1]
        if any(W.shape[-2:] != (d, d) for W in state.weights):
            raise ValueError(
                f"{type(self).__name__} runs on the balanced manifold, defined for square widths; got layer shapes "
                f"{[tuple(W.shape[-2:]) for W in state.weights]}"
            )
        # Off M the safeguard would reject every step (the normal correction then includes the
        # distance to M), so the chain would never move: refuse such a start. Roundoff allowance
        # 1e3 eps |W|^2 covers float32 weights from balanced_weights.
        eps = torch.finfo(state.weights[0].dtype).eps
        ok, reason = check_point_on_manifold(state.weights, atol=10 * self._tol(state.weights[0].dtype), rtol=1e3 * eps)
        if not ok:
            raise ValueError(
                f"{type(self).__name__} must start on the balanced manifold ({reason}); start from "
                f"balanced_weights(X, depth) (network init 'balanced')"
            )
        return state

    def _component_move(self, state: State, sign0: torch.Tensor, prev: list | None = None) -> State:
        """After a step: the reflection move every reflect_every steps, or with keep_component a step that
        changed the sign of det X is undone (prev: the weights before the step); then the count of
        det-sign changes over the whole step (dlnsim.dynamics.reflection)."""
        if self.keep_component and prev is not None:
            left = det_sign(state.weights) != sign0
            state.weights = [torch.where(left[:, None, None], W0, W) for W0, W in zip(prev, state.weights)]
            state.stats["component_rejections"] = state.stats["component_rejections"] + left.to(sign0.dtype)
        elif not self.keep_component and self.reflect_every and state.step % self.reflect_every == 0:
            state.weights, acc = reflection_move(state.weights, self.energy, self._beta(state.weights[0]), self.generator)
            state.stats["reflections_accepted"] = state.stats["reflections_accepted"] + acc.to(sign0.dtype)
        state.stats["sign_changes"] = state.stats["sign_changes"] + (det_sign(state.weights) != sign0).to(sign0.dtype)
        return state

    def _project(self, proj, v: torch.Tensor):
        """Newton projection of x + v (v in the frame's coordinates); Y comes back in original ones."""
        r = proj.newton_in_frame(v, tol=self._tol(v.dtype), max_iter=self.max_iter, method=self.method)
        if self.safeguard is None:
            guard = torch.ones_like(r.converged)
        else:
            guard = r.normal_sq <= (self.safeguard**2) * _sq(v)
        return r, guard


class ProjectedLangevin(_ManifoldLangevin):
    """Projected Euler-Maruyama on the balanced manifold (unadjusted; O(h) stationary bias).

    ProjectedLangevin(energy, step_size, depth, beta, *, generator=None, tol=None (newton_tol(dtype): 1e-10 in float64), max_iter=36,
    method="newton", safeguard=2.0, solver="auto"). beta: number or (B,) tensor. tol: Newton tolerance on
    max_p ||G_p||_F (absolute); max_iter, method: see dlnsim.manifold ("newton", "chord",
    "quasi"); safeguard: reject when |y - (x + v)| > safeguard |v| (None: never). Start from a
    balanced point (balanced_weights). Like every explicit scheme it diverges when h |grad^2 L|
    is large (superlinear drift at large |W|); use h well below 2 / (N alpha |W_p|^{2(N-1)}).
    """

    name = "langevin_projected"
    stat_names = ("steps", "projection_failures", "safeguard_rejections", "newton_iterations", "sign_changes", "reflections_accepted",
                  "component_rejections")

    def step(self, state: State) -> State:
        prev, sign0 = state.weights, det_sign(state.weights)
        W = torch.stack(state.weights, dim=-3)
        h = self.step_size
        proj = make_projection_solver(W, self.solver)
        _, grad = _energy_and_gradient(W, self.energy)
        sigma = _per_layer(torch.sqrt(2.0 * h / self._beta(W)))
        # Work in the frame's coordinates (an isometry; the identity for solver="exact"). The noise is
        # drawn there directly: an isotropic Gaussian is invariant under the orthogonal change of frame.
        v = proj.project_in_frame(sigma * self._noise(W) - h * proj.to_frame_coordinates(grad))
        r, guard = self._project(proj, v)
        ok = r.converged & guard
        Y = torch.where(_per_layer(ok), r.Y, W)
        state.weights = list(Y.unbind(dim=-3))
        st = state.stats
        st["steps"] = st["steps"] + 1
        st["projection_failures"] = st["projection_failures"] + (~r.converged).to(W.dtype)
        st["safeguard_rejections"] = st["safeguard_rejections"] + (r.converged & ~guard).to(W.dtype)
        st["newton_iterations"] = st["newton_iterations"] + r.iterations
        state.t += h
        state.step += 1
        return self._component_move(state, sign0, prev)


class MetropolisLangevin(_ManifoldLangevin):
    """Metropolis-adjusted projected Langevin on M (exact stationary law exp(-beta L) dvol_M).

    MetropolisLangevin(energy, step_size, depth, beta, *, generator=None, tol=None, max_iter=36,
    method="newton", safeguard=2.0, reverse_tol=None (max(1e-7, 100 tol))). reverse_tol: the reverse projection must
    return within ||x_rev - x||_F <= reverse_tol (1 + ||x||_F); a converged projection lands within
    ~tol / sigma_min(J) of its root, a different root lies O(|x|) away, so any threshold in between
    separates them. Keeps the factorisation at the current point between steps (one Gram
    factorisation per proposal).
    """

    name = "langevin_metropolis"
    options = {**_ManifoldLangevin.options, "reverse_tol": None}  # None: max(1e-7, 100 tol)
    stat_names = ("proposals", "accepted", "projection_failures", "reverse_failures", "safeguard_rejections", "newton_iterations",
                  "sign_changes", "reflections_accepted", "component_rejections")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._cache: _Point | None = None

    def _point(self, state: State) -> "_Point":
        """Projection solver, L and P grad L at the current point: from the cache when the state is the one the
        last step produced (same tensor objects), else computed afresh."""
        c = self._cache
        if c is not None and len(c.weights) == len(state.weights) and all(a is b for a, b in zip(state.weights, c.weights)):
            return c
        W = torch.stack(state.weights, dim=-3)
        proj = make_projection_solver(W, self.solver)
        value, grad = _energy_and_gradient(W, self.energy)
        return _Point(W, proj, value, proj.project_in_frame(proj.to_frame_coordinates(grad)), state.weights)

    def step(self, state: State) -> State:
        sign0 = det_sign(state.weights)
        W, proj, Lx, Pgx, _ = self._point(state)
        h = self.step_size
        beta = self._beta(W)
        sigma = _per_layer(torch.sqrt(2.0 * h / beta))
        # Forward move: v = m_x + sigma P xi with m_x = -h P grad L(x).
        # Tangent vectors live in the frame coordinates of their base point (module docstring of
        # dlnsim.manifold.SingularFrameSolver); norms and Gaussian densities are the same there.
        noise = sigma * proj.project_in_frame(self._noise(W))
        v = noise - h * Pgx
        fwd, guard_f = self._project(proj, v)
        # Evaluate y only where the forward projection is usable (keeps NaN out of the factorisation).
        usable = fwd.converged & guard_f & torch.isfinite(fwd.Y).flatten(-3).all(-1)
        Y = torch.where(_per_layer(usable), fwd.Y, W)
        proj_y = make_projection_solver(Y, self.solver)
        Ly, grad_y = _energy_and_gradient(Y, self.energy)
        Pgy = proj_y.project_in_frame(proj_y.to_frame_coordinates(grad_y))
        # Reverse move from y: v' = P_y (x - y), projected back along the normal space at y.
        v_rev = proj_y.project_in_frame(proj_y.to_frame_coordinates(W - Y))
        rev, guard_r = self._project(proj_y, v_rev)
        rtol_rev = self.reverse_tol if self.reverse_tol is not None else max(1e-7, 100 * self._tol(W.dtype))
        returned = rev.converged & (_sq(rev.Y - W) <= rtol_rev**2 * (1.0 + _sq(W)))
        # log of [exp(-beta L(y)) q(x | y)] / [exp(-beta L(x)) q(y | x)], q(y|x) ∝ exp(-beta |v - m_x|^2 / 4h).
        log_ratio = -beta * (Ly - Lx) - beta / (4.0 * h) * (_sq(v_rev + h * Pgy) - _sq(noise))
        u = torch.rand(Lx.shape, generator=self.generator, dtype=W.dtype, device=W.device)
        accept = usable & returned & guard_r & (torch.log(u) < log_ratio)
        if self.keep_component:  # proposals outside the starting component are rejected: exact for the restricted law
            left = det_sign(list(Y.unbind(dim=-3))) != sign0
            state.stats["component_rejections"] = state.stats["component_rejections"] + (accept & left).to(W.dtype)
            accept = accept & ~left
        a = _per_layer(accept)
        Wn = torch.where(a, Y, W)
        proj_n = proj_y.where(accept, proj)
        state.weights = list(Wn.unbind(dim=-3))
        self._cache = _Point(Wn, proj_n, torch.where(accept, Ly, Lx), torch.where(a, Pgy, Pgx), state.weights)
        st = state.stats
        f = lambda m: m.to(W.dtype)  # noqa: E731
        st["proposals"] = st["proposals"] + 1
        st["accepted"] = st["accepted"] + f(accept)
        st["projection_failures"] = st["projection_failures"] + f(~fwd.converged)
        st["safeguard_rejections"] = st["safeguard_rejections"] + f((fwd.converged & ~guard_f) | (usable & ~guard_r))
        st["reverse_failures"] = st["reverse_failures"] + f(usable & ~returned)
        st["newton_iterations"] = st["newton_iterations"] + fwd.iterations + torch.where(usable, rev.iterations, 0.0)
        state.t += h
        state.step += 1
        return self._component_move(state, sign0)


class _Point(NamedTuple):
    W: torch.Tensor  # (B, N, d, d)
    proj: object  # the projection solver at W (SingularFrameSolver or ExactConstraintSolver)
    L: torch.Tensor  # (B,)
    Pg: torch.Tensor  # P_x grad L(x) in the frame's coordinates, (B, N, d, d)
    weights: list  # the state's list of views of W (identity marks the cache as current)


def _per_layer(t: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, 1, 1) to broadcast over stacked weights; 0-dim tensors pass through."""
    return t if t.dim() == 0 else t[:, None, None, None]


class UnprojectedLangevin(_LangevinBase):
    """Euler-Maruyama in the full parameter space: W <- W - h grad L + sqrt(2h/beta) xi.

    The contrast run (docs/theory.md section 6): the noise is not projected onto T_W M, so the
    balancedness G_p leaves 0 and drifts diffusively. Any widths.
    """

    name = "langevin_unprojected"

    def step(self, state: State) -> State:
        h = self.step_size
        ws = state.weights
        prefixes = prefix_products(ws)
        grads = gradient_from_end_to_end(ws, self.energy.grad(prefixes[-1]), prefixes)
        beta = self._beta(ws[0])
        sigma = torch.sqrt(2.0 * h / beta)
        if sigma.dim() == 1:
            sigma = sigma[:, None, None]
        state.weights = [W - h * g + sigma * self._noise(W) for W, g in zip(ws, grads)]
        state.t += h
        state.step += 1
        return state
