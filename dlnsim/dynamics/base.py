"""The contract every integrator follows: a State, and a Scheme with `step(state) -> state`.

A scheme advances a whole ensemble (batch dim B first) by one step of size `step_size` and does
no host synchronisation (no `.item()`, no Python branching on tensor values), so that a run can
queue thousands of steps on a GPU. Per-trajectory counters a scheme keeps (rejections, Newton
iterations, ...) live in `state.stats` as (B,) tensors and are recorded like any observable.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..energies import Energy
from ..network import end_to_end

__all__ = ["State", "Scheme", "rk4_step"]


@dataclass
class State:
    """Where an ensemble is.

    weights: [W_1, ..., W_N], W_p (B, d_p, d_{p-1}), for parameter-space schemes; None for
             schemes on the end-to-end matrix.
    X:       (B, d_N, d_0) for end-to-end schemes; None for parameter schemes (use end_to_end()).
    t:       time reached (a Python float: steps are deterministic in time, no sync needed).
    step:    number of steps taken.
    stats:   per-trajectory scheme statistics, each (B,).
    """

    weights: list[torch.Tensor] | None = None
    X: torch.Tensor | None = None
    t: float = 0.0
    step: int = 0
    stats: dict[str, torch.Tensor] = field(default_factory=dict)

    def end_to_end(self) -> torch.Tensor:
        return self.X if self.weights is None else end_to_end(self.weights)

    @property
    def batch_size(self) -> int:
        return (self.X if self.weights is None else self.weights[0]).shape[0]

    def state_dict(self) -> dict:
        return {"weights": self.weights, "X": self.X, "t": self.t, "step": self.step, "stats": dict(self.stats)}

    @classmethod
    def from_state_dict(cls, d: dict) -> "State":
        return cls(weights=d["weights"], X=d["X"], t=d["t"], step=d["step"], stats=dict(d["stats"]))


class Scheme:
    """Base class of integrators.

    Class attributes say what a scheme is (as data, not by branching): `space` is "parameters" or
    "end_to_end"; `stochastic` whether it draws noise; `stat_names` the per-trajectory counters
    it maintains in state.stats.
    """

    name: str = "scheme"
    space: str = "parameters"
    stochastic: bool = False
    stat_names: tuple[str, ...] = ()

    def __init__(self, energy: Energy, step_size: float, depth: int):
        if not (isinstance(step_size, (int, float)) and step_size > 0 and step_size == step_size):
            raise ValueError(f"step_size must be a positive number, got {step_size!r}")
        self.energy = energy
        self.step_size = float(step_size)
        self.depth = int(depth)

    def init_state(self, weights: list[torch.Tensor] | None = None, X: torch.Tensor | None = None) -> State:
        """A fresh state at t = 0 from parameters (parameter schemes) or from X (end-to-end schemes)."""
        if self.space == "parameters":
            if weights is None:
                raise ValueError(f"{self.name} runs in parameter space: give it weights [W_1, ..., W_N]")
            state = State(weights=[W.detach().clone() for W in weights])
        else:
            if X is None:
                if weights is None:
                    raise ValueError(f"{self.name} runs on the end-to-end matrix: give it X or weights")
                X = end_to_end(weights)
            state = State(X=X.detach().clone())
        # An energy with data (target, mask, regression data) fixes (d_out, d_in): fail here with a
        # readable message rather than with a broadcasting error inside the first step.
        check_shape = getattr(self.energy, "check_shape", None)
        if check_shape is not None:
            ref_out = state.X if state.weights is None else state.weights[-1]
            ref_in = state.X if state.weights is None else state.weights[0]
            check_shape(ref_out.shape[-2], ref_in.shape[-1])
        B = state.batch_size
        ref = state.X if state.weights is None else state.weights[0]
        for k in self.stat_names:
            state.stats[k] = torch.zeros(B, dtype=ref.dtype, device=ref.device)
        return state

    def step(self, state: State) -> State:
        raise NotImplementedError

    def cache_state(self) -> dict:
        """Private per-run caches carried from one step to the next (attributes named `_*`).

        Schemes may keep, e.g., the SVD frame of the current X; the next step depends on it at
        roundoff level, so a checkpoint saves it (together with the state, so that tensor identity
        between cache and state survives pickling) and a resumed run is bit-identical on CPU.
        Generators are excluded: their state is saved through `generator.get_state()`.
        """
        return {k: v for k, v in vars(self).items()
                if k.startswith("_") and not isinstance(v, torch.Generator) and not callable(v)}

    def load_cache_state(self, caches: dict) -> None:
        for k, v in caches.items():
            setattr(self, k, v)


def rk4_step(f, y, h: float):
    """Classical RK4 for y' = f(y), y a tensor or a list of tensors."""
    if isinstance(y, torch.Tensor):
        k1 = f(y)
        k2 = f(y + 0.5 * h * k1)
        k3 = f(y + 0.5 * h * k2)
        k4 = f(y + h * k3)
        return y + (h / 6.0) * (k1 + 2 * k2 + 2 * k3 + k4)
    add = lambda a, b, c: [ai + c * bi for ai, bi in zip(a, b)]  # noqa: E731
    k1 = f(y)
    k2 = f(add(y, k1, 0.5 * h))
    k3 = f(add(y, k2, 0.5 * h))
    k4 = f(add(y, k3, h))
    return [yi + (h / 6.0) * (a + 2 * b + 2 * c + d) for yi, a, b, c, d in zip(y, k1, k2, k3, k4)]
