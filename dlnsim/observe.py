"""Observables of a run, measured at save points (THEORY.md section 6).

`Observer.measure(state)` returns a dict of tensors, each with the batch dim first:

    loss              (B,)        E(X)
    singular_values   (B, r)      descending, r = min(d_N, d_0)
    X                 (B, d_N, d_0)                       (if record_X)
    balancedness      (B, N-1)    ||G_p(t) - G_p(0)||_F   (parameter schemes)
    balancedness_norm (B, N-1)    ||G_p(t)||_F
    balancedness_rel  (B,)        max_p ||G_p(t) - G_p(0)||_F / sum_p ||W_p||_F^2
    entropy_formula   (B,)        S(X), closed form (square X; -inf/NaN where rank-deficient)
    entropy_measured  (B,)        log-volume of the orbit through W (square widths, parameter schemes)
    free_energy       (B,)        E - S/beta (when beta is given)
    reference_distance (B,)       ||X - X_ref||_F / ||X_ref||_F against a reference (theory) state
    <stat>            (B,)        every counter the scheme keeps in state.stats

No host syncs: values that are undefined come out as NaN/inf rather than raising, so the
simulation never stops to check; the runner inspects them once per save point.
"""
from __future__ import annotations

import torch

from .energies import Energy
from .entropy import entropy_from_singular_values, orbit_log_volume
from .network import balancedness
from .dynamics.base import State

__all__ = ["Observer", "OBSERVABLES"]

OBSERVABLES = (
    "loss",
    "singular_values",
    "X",
    "balancedness",
    "entropy_formula",
    "entropy_measured",
    "free_energy",
    "reference_distance",
)


class Observer:
    """Measures the observables of `state` for an ensemble of depth `depth`.

    include: names from OBSERVABLES to record (default: all that apply). beta: inverse
    temperature for the free energy (number or (B,) tensor), None for none. G0: the initial
    balancedness tensors, taken from the first state measured unless given.
    """

    def __init__(self, energy: Energy, depth: int, include=None, beta=None):
        include = set(OBSERVABLES if include is None else include)
        unknown = include - set(OBSERVABLES)
        if unknown:
            raise ValueError(f"unknown observables {sorted(unknown)}; choose from {list(OBSERVABLES)}")
        self.energy = energy
        self.depth = depth
        self.include = include
        self.beta = beta
        self._G0 = None

    def measure(self, state: State, reference: State | None = None) -> dict[str, torch.Tensor]:
        X = state.end_to_end()
        square = X.shape[-1] == X.shape[-2]
        out: dict[str, torch.Tensor] = {}
        loss = self.energy.value(X)
        if "loss" in self.include:
            out["loss"] = loss
        s = torch.linalg.svdvals(X)
        if "singular_values" in self.include:
            out["singular_values"] = s
        if "X" in self.include:
            out["X"] = X
        S = entropy_from_singular_values(s, self.depth) if square else None
        if S is not None and "entropy_formula" in self.include:
            out["entropy_formula"] = S
        if S is not None and self.beta is not None and "free_energy" in self.include:
            beta = torch.as_tensor(self.beta, dtype=X.dtype, device=X.device)
            out["free_energy"] = loss - S / beta
        if state.weights is not None and len(state.weights) > 1 and "balancedness" in self.include:
            G = balancedness(state.weights)
            if self._G0 is None:
                self._G0 = [g.clone() for g in G] if isinstance(G, list) else G.clone()
            if isinstance(G, list):
                drift = torch.stack([(g - g0).flatten(-2).norm(dim=-1) for g, g0 in zip(G, self._G0)], dim=-1)
                norm = torch.stack([g.flatten(-2).norm(dim=-1) for g in G], dim=-1)
            else:
                drift = (G - self._G0).flatten(-2).norm(dim=-1)
                norm = G.flatten(-2).norm(dim=-1)
            wsq = sum((W * W).sum(dim=(-2, -1)) for W in state.weights)
            out["balancedness"] = drift
            out["balancedness_norm"] = norm
            out["balancedness_rel"] = drift.amax(dim=-1) / wsq
        if (
            state.weights is not None
            and "entropy_measured" in self.include
            and all(W.shape[-1] == W.shape[-2] == X.shape[-1] for W in state.weights)
        ):
            out["entropy_measured"] = orbit_log_volume(state.weights)
        if reference is not None and "reference_distance" in self.include:
            Xr = reference.end_to_end()
            out["reference_distance"] = (X - Xr).flatten(-2).norm(dim=-1) / Xr.flatten(-2).norm(dim=-1)
        for k, v in state.stats.items():
            out[k] = v.clone()
        return out

    def reset(self) -> None:
        self._G0 = None

    def state_dict(self) -> dict:
        """What a checkpoint needs to resume measuring: the initial balancedness G_p(0)."""
        return {"G0": self._G0}

    def load_state_dict(self, d: dict) -> None:
        self._G0 = d["G0"]
