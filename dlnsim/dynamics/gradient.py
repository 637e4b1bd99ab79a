"""Deterministic gradient dynamics: in parameter space, and the Riemannian flow of X.

- GradientDescent:  W_p <- W_p - h dL/dW_p  (explicit Euler; balancedness drifts O(h^2) per step).
- GradientFlow:     dW_p/dt = -dL/dW_p by classical RK4 (conserves G_p to O(h^4) per unit time), or
                    with method="dopri5" by adaptive Dormand-Prince 5(4) between the points of the
                    h-grid (local error per substep ~ rtol; see `dopri5_advance`).
- EndToEndFlow:     dX/dt = -A_{N,X}(grad E(X)) [+ beta^{-1} A_{N,X}(grad S(X))] by RK4: the image of
                    the parameter flow on the balanced manifold (docs/theory.md section 4), and with
                    `beta` the noise-free free-energy flow -A(grad F), F = E - S/beta (section 5;
                    Chen, Kotwal & Menon 2512.06137).
Parameter gradients are the hand-written prefix/suffix products of `dlnsim.network`.
The flows take method="rk4" (default, fixed step h) or "dopri5" (one `step` advances exactly by h
adaptively; per-trajectory counters "substeps" and "rejected_substeps" in state.stats).
"""
from __future__ import annotations

import torch

from ..energies import Energy
from ..entropy import entropy_grad_singular_values
from ..geometry import SVDFactors
from ..network import gradient_from_end_to_end, prefix_products
from ..options import Choice, ConfigError, Int, Num
from .base import Scheme, State, as_beta, check_beta, dopri5_advance, rk4_step

__all__ = ["parameter_gradient", "descent_update", "GradientDescent", "GradientFlow", "EndToEndFlow", "FreeEnergyFlow",
           "TIME_SCALES", "FLOW_METHODS"]

TIME_SCALES = ("none", "depth")
FLOW_METHODS = ("rk4", "dopri5")
_DEFAULT_RTOL, _DEFAULT_ATOL, _DEFAULT_MAX_SUBSTEPS = 1e-9, 1e-12, 10000
_ADAPTIVE_STATS = ("substeps", "rejected_substeps")


DOPRI_MIN_RTOL = 100 * 2.220446049250313e-16  # 100 float64 eps
DOPRI_MIN_SUBSTEPS = 10


class _FlowIntegrator:
    """The time integrator of a deterministic flow: fixed-step RK4 or adaptive DOPRI5 over each step.

    rtol/atol (default 1e-9/1e-12) and max_substeps (default 10000, per step) apply to dopri5
    only; giving them with rk4 is an error rather than silently ignored. With dopri5 each step
    starts from the standard starting-step heuristic (no step size carried between steps), so a
    step is a pure function of the state: checkpoint/resume and batch composition cannot change it.
    """

    option_spec = {"method": Choice(FLOW_METHODS), "rtol": Num(gt=0), "atol": Num(gt=0), "max_substeps": Int(ge=1)}

    @classmethod
    def config_options(cls, options: dict, path: str = "dynamics.options") -> dict:
        out = super().config_options(options, path)
        extra = sorted(k for k in out if k != "method")
        if extra and out.get("method", "rk4") != "dopri5":
            raise ConfigError(f"{path}: {', '.join(extra)} apply to method: dopri5 only; add method: dopri5 or remove them")
        # tolerances below roundoff can never be met, and an adaptive step needs room to reject a
        # few trial substeps: refuse both here rather than fail mid-run in a result folder
        if out.get("rtol") is not None and out["rtol"] < DOPRI_MIN_RTOL:
            raise ConfigError(f"{path}.rtol: {out['rtol']:g} is below what float64 roundoff allows ({DOPRI_MIN_RTOL:g}); raise it")
        if out.get("max_substeps") is not None and out["max_substeps"] < DOPRI_MIN_SUBSTEPS:
            raise ConfigError(f"{path}.max_substeps: {out['max_substeps']} leaves the adaptive step no room to reject a trial "
                              f"substep; give at least {DOPRI_MIN_SUBSTEPS} (or method: rk4 for fixed steps)")
        return out

    def _set_method(self, method, rtol, atol, max_substeps) -> None:
        if method not in FLOW_METHODS:
            raise ValueError(f"method must be one of {FLOW_METHODS}, got {method!r}")
        if method == "rk4" and (rtol, atol, max_substeps) != (None, None, None):
            raise ValueError("rtol, atol and max_substeps apply to method='dopri5' only; set method='dopri5' or drop them")
        for name, v in (("rtol", rtol), ("atol", atol)):
            if v is not None and not (isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < float("inf")):
                raise ValueError(f"{name} must be a positive number, got {v!r}")
        if max_substeps is not None and not (isinstance(max_substeps, int) and not isinstance(max_substeps, bool) and max_substeps >= 1):
            raise ValueError(f"max_substeps must be a positive integer, got {max_substeps!r}")
        self.method = method
        self.rtol = float(_DEFAULT_RTOL if rtol is None else rtol)
        self.atol = float(_DEFAULT_ATOL if atol is None else atol)
        self.max_substeps = _DEFAULT_MAX_SUBSTEPS if max_substeps is None else max_substeps
        if method == "dopri5":
            self.stat_names = type(self).stat_names + _ADAPTIVE_STATS

    def _advance(self, f, y, state: State):
        if self.method == "rk4":
            return rk4_step(f, y, self.step_size)
        y, n, r = dopri5_advance(f, y, self.step_size, None, self.rtol, self.atol, self.max_substeps)
        for k, v in zip(_ADAPTIVE_STATS, (n, r)):
            state.stats[k] = state.stats[k] + v.to(state.stats[k].dtype)
        return y


def parameter_gradient(weights: list[torch.Tensor], energy: Energy) -> list[torch.Tensor]:
    """dL/dW_p = W_{N:p+1}^T grad E(X) W_{p-1:1}^T for L = E o phi; list shaped like weights."""
    prefixes = prefix_products(weights)
    G = energy.grad(prefixes[-1])
    return gradient_from_end_to_end(weights, G, prefixes)


# A CPU step streams every intermediate of a (B, d, d) ensemble through memory; cut the batch into
# blocks whose whole step (weights, prefixes, suffixes, outputs) fits in one core's L2 (~2 MiB) so
# the intermediates stay in cache: 1.4-1.7x at d >= 16 and B = 1024 on the benchmark CPU. GPUs want
# one big launch instead, so blocking is CPU only.
_CPU_BLOCK_BYTES = 2**21


def descent_update(weights: list[torch.Tensor], energy: Energy, h: float) -> list[torch.Tensor]:
    """[W_p - h dL/dW_p]_{p=1..N}: one gradient-descent step, fused; equals the reference
    `[W - h g for W, g in zip(weights, parameter_gradient(weights, energy))]` to roundoff.

    3N - 3 batched matmuls (N - 1 prefixes, N - 1 suffixes, N - 1 gradient products, each fused
    with its update by baddbmm) and no gradient tensors: the step is matmul-bound at large d and
    memory/overhead-bound at small d, so every elementwise pass saved counts. On CPU the batch is
    processed in cache-sized blocks when the energy's data has no batch dim (then the gradient of
    a block is the block of the gradient). weights: [W_1..W_N], W_p (B, d_p, d_{p-1}); returns
    new tensors (the inputs are not modified). The energy's gradient is cast to the weights'
    dtype: the weights set the precision of a run (float32 weights, float64 target stay float32).
    """
    return _blocked_update(weights, energy, h, _descent_block)


def _blocked_update(weights, energy, h, block_fn):
    """Apply block_fn (weights, energy, h, out) to cache-sized batch blocks on CPU, else once."""
    W1 = weights[0]
    B = W1.shape[0] if W1.dim() == 3 else 0
    per_traj = 3 * sum(W[0].numel() for W in weights) * W1.element_size() if B else 1
    block = max(1, _CPU_BLOCK_BYTES // per_traj)
    if (
        W1.device.type != "cpu"
        or block >= B
        or any(W.dim() != 3 or W.shape[0] != B for W in weights)
        or not _batch_free(energy)
    ):
        return block_fn(weights, energy, h)
    out = [torch.empty_like(W) for W in weights]
    for i in range(0, B, block):
        block_fn([W[i : i + block] for W in weights], energy, h, [o[i : i + block] for o in out])
    return out


def _descent_block(weights, energy, h, out=None):
    # prefixes[q] = W_{q+1:1} (prefix_products without its leading identity, which is never used).
    prefixes = [weights[0]]
    for W in weights[1:]:
        prefixes.append(W @ prefixes[-1])
    T = energy.grad(prefixes[-1]).to(weights[0].dtype)  # T_p = W_{N:p+1}^T G, (B, d_p, d_0)
    N = len(weights)
    new: list[torch.Tensor] = [None] * N  # type: ignore[list-item]
    for p in range(N, 1, -1):
        W, P = weights[p - 1], prefixes[p - 2]
        if W.dim() == 3 and T.shape[0] == W.shape[0] == P.shape[0]:
            o = None if out is None else out[p - 1]
            new[p - 1] = torch.baddbmm(W, T, P.mT, alpha=-h, out=o)
        else:  # extra or broadcast batch dims: baddbmm wants one batch dim
            new[p - 1] = W - h * (T @ P.mT)
        T = W.mT @ T
    # W_{0:1} = I: no matmul for the first layer.
    new[0] = torch.add(weights[0], T, alpha=-h, out=None if out is None else out[0])
    return new


def _batch_free(energy: Energy) -> bool:
    """True when grad of a batch block is the block of grad: the energy's class declares it
    (`Energy.batch_free`, read from the class itself, so a subclass must declare it again) and its
    data tensors have no batch dim. Unknown energies (CustomEnergy, subclasses) answer False."""
    if not type(energy).__dict__.get("batch_free", False):
        return False
    terms = getattr(energy, "terms", None)
    if terms is not None:
        return all(_batch_free(t) for t in terms)
    return all(v.dim() <= 2 for v in vars(energy).values() if isinstance(v, torch.Tensor))


class GradientDescent(Scheme):
    """W_p <- W_p - h dL/dW_p, the whole ensemble at once (fused update: `descent_update`).

    compile: run the update of each batch block through torch.compile (one graph per block
    shape and dtype; the first step pays the compilation). The eager update is the reference.
    On the benchmark CPU the compiled step is 5% faster to 25% slower than eager (the matmuls
    stay library calls; the step is matmul- and memory-bound); on a GPU it can save launches.
    """

    name = "gradient_descent"
    option_spec: dict = {}  # `compile` is a Python-only option

    def __init__(self, energy: Energy, step_size: float, depth: int, *, compile: bool = False):
        super().__init__(energy, step_size, depth)
        if not isinstance(compile, bool):
            raise ValueError(f"compile must be True or False, got {compile!r}")
        self.compile = compile
        self._block = torch.compile(_descent_block, dynamic=False) if compile else _descent_block

    def step(self, state: State) -> State:
        state.weights = _blocked_update(state.weights, self.energy, self.step_size, self._block)
        state.t += self.step_size
        state.step += 1
        return state


class GradientFlow(_FlowIntegrator, Scheme):
    """dW_p/dt = -dL/dW_p, by RK4 with fixed step h (global error O(h^4)), or method="dopri5":
    adaptive Dormand-Prince 5(4) to rtol/atol between the points of the h-grid."""

    name = "gradient_flow"

    def __init__(self, energy: Energy, step_size: float, depth: int, *, method: str = "rk4",
                 rtol: float | None = None, atol: float | None = None, max_substeps: int | None = None):
        super().__init__(energy, step_size, depth)
        self._set_method(method, rtol, atol, max_substeps)

    def step(self, state: State) -> State:
        def f(ws):  # -dL/dW: negate grad E once rather than each of the N layer gradients
            prefixes = prefix_products(ws)
            return gradient_from_end_to_end(ws, -self.energy.grad(prefixes[-1]), prefixes)

        state.weights = self._advance(f, state.weights, state)
        state.t += self.step_size
        state.step += 1
        return state


class EndToEndFlow(_FlowIntegrator, Scheme):
    """dX/dt = -c A_{N,X}(grad E(X)) + (c/beta) A_{N,X}(grad S(X)) by RK4 (or method="dopri5", as
    GradientFlow); X (B, d, d) or (B, d_out, d_in).

    time_scale: "none" (c = 1, the default of docs/theory.md) or "depth" (c = 1/N, the normalisation of Cohen,
    Menon & Veraszto, which has a limit as N -> infinity). beta: None for the gradient flow of E;
    a positive number (or (B,) tensor) adds the entropic drift (square full-rank X needed).
    """

    name = "end_to_end_flow"
    space = "end_to_end"
    square_only = True

    def __init__(self, energy: Energy, step_size: float, depth: int, time_scale: str = "none", beta=None, *,
                 method: str = "rk4", rtol: float | None = None, atol: float | None = None, max_substeps: int | None = None):
        super().__init__(energy, step_size, depth)
        self._set_method(method, rtol, atol, max_substeps)
        if time_scale not in TIME_SCALES:
            raise ValueError(f"time_scale must be one of {TIME_SCALES}, got {time_scale!r}")
        self.scale = 1.0 if time_scale == "none" else 1.0 / self.depth
        if beta is not None:
            check_beta(beta)
        self.beta = beta
        self._beta_cache: dict = {}

    def velocity(self, X: torch.Tensor) -> torch.Tensor:
        frame = SVDFactors.of(X, self.depth)
        P = -self.energy.grad(X)
        if self.beta is not None:
            beta = as_beta(self.beta, X, self._beta_cache)
            P = P + frame.from_singular(entropy_grad_singular_values(frame.s, self.depth)) / beta
        return self.scale * frame.apply(P, 1.0)

    def step(self, state: State) -> State:
        state.X = self._advance(self.velocity, state.X, state)
        state.t += self.step_size
        state.step += 1
        return state


class FreeEnergyFlow(EndToEndFlow):
    """dX/dt = -c A_{N,X}(grad F(X)), F = E - S/beta: EndToEndFlow with its entropic drift (beta required).

    The noise-free free-energy flow (docs/theory.md section 4; Chen, Kotwal & Menon 2512.06137); square
    full-rank X.
    """

    name = "free_energy_flow"
    needs_beta = True

    def __init__(self, energy: Energy, step_size: float, depth: int, time_scale: str = "none", beta=None, **kw):
        if beta is None:
            raise ValueError("FreeEnergyFlow needs an inverse temperature beta (a positive number or (B,) tensor)")
        super().__init__(energy, step_size, depth, time_scale, beta, **kw)
