"""Drive a scheme over an ensemble and record observables every `save_every` steps.

    sim = Simulation(scheme, state, observer, save_every=10, reference=(EndToEndFlow(...), ref_state))
    sim.run(1000)                # may be called repeatedly (chunks, checkpoints)
    rec = sim.records()          # {"t": (T,), "loss": (T, B), "singular_values": (T, B, r), ...}

Records are written into per-chunk preallocated buffers; the loop itself makes no host syncs
(time is a Python float, steps are counted in Python). A reference scheme (the theory
trajectory, e.g. the end-to-end flow from the same X(0)) is advanced in lock-step and its
distance recorded as `reference_distance`; its singular values as `reference_singular_values`.
"""
from __future__ import annotations

from typing import Callable

import torch

from .dynamics.base import Scheme, State
from .observe import Observer

__all__ = ["Simulation", "simulate"]


class Simulation:
    def __init__(
        self,
        scheme: Scheme,
        state: State,
        observer: Observer,
        save_every: int = 1,
        reference: tuple[Scheme, State] | None = None,
    ):
        if isinstance(save_every, bool) or not isinstance(save_every, int) or save_every < 1:
            raise ValueError(f"save_every must be a positive integer, got {save_every!r}")
        self.scheme = scheme
        self.state = state
        self.observer = observer
        self.save_every = save_every
        self.reference = reference
        self._chunks: list[dict[str, torch.Tensor]] = []
        self._times: list[float] = []
        if state.step == 0:
            self._save()

    def _measure(self) -> dict[str, torch.Tensor]:
        ref_state = None if self.reference is None else self.reference[1]
        out = self.observer.measure(self.state, ref_state)
        if ref_state is not None:
            out["reference_singular_values"] = torch.linalg.svdvals(ref_state.end_to_end())
        return out

    def _save(self) -> None:
        self._chunks.append(self._measure())
        self._times.append(self.state.t)

    def run(self, n_steps: int, callback: Callable[["Simulation"], None] | None = None) -> "Simulation":
        """Advance n_steps steps, saving every save_every (counted from step 0 of the run).

        callback(sim) is called after each save (progress bars, divergence checks, checkpoints).
        """
        for _ in range(n_steps):
            self.state = self.scheme.step(self.state)
            if self.reference is not None:
                ref_scheme, ref_state = self.reference
                self.reference = (ref_scheme, ref_scheme.step(ref_state))
            if self.state.step % self.save_every == 0:
                self._save()
                if callback is not None:
                    callback(self)
        return self

    def records(self) -> dict[str, torch.Tensor]:
        """Stack the saved measurements: "t" (T,) and every observable (T, B, ...)."""
        keys = self._chunks[0].keys()
        out = {k: torch.stack([c[k] for c in self._chunks]) for k in keys}
        ref = next(iter(out.values()))
        out["t"] = torch.tensor(self._times, dtype=ref.dtype)
        return out

    def last(self) -> dict[str, torch.Tensor]:
        return self._chunks[-1]

    @property
    def n_saved(self) -> int:
        return len(self._chunks)


def simulate(
    scheme: Scheme,
    n_steps: int,
    *,
    weights: list[torch.Tensor] | None = None,
    X: torch.Tensor | None = None,
    save_every: int = 1,
    include=None,
    beta=None,
    reference: Scheme | None = None,
) -> dict[str, torch.Tensor]:
    """One call: run `scheme` from weights (or X) for n_steps and return the records.

    reference: a scheme on the end-to-end matrix (e.g. EndToEndFlow) started from phi(weights)
    and advanced alongside; its distance to the run is recorded (THEORY.md section 6).
    """
    state = scheme.init_state(weights=weights, X=X)
    ref = None if reference is None else (reference, reference.init_state(weights=weights, X=X))
    observer = Observer(scheme.energy, scheme.depth, include=include, beta=beta)
    return Simulation(scheme, state, observer, save_every, ref).run(n_steps).records()
