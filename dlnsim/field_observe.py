"""Observables of a run over F = R, C, H: the `dlnsim.observe` registry, measured with the pairing of F.

The names and shapes are those of `dlnsim.observe.OBSERVABLES`; what changes over F:

    singular_values   (B, d)    over F (over H each singular value once, not chi's doubled list)
    entropy_formula   (B,)      S_beta(X) (`dlnsim.entropy_fields`); free_energy = E - S_beta/beta
    balancedness      (B, N-1)  ||G_p(t) - G_p(0)||_F, G_p = W_{p+1}* W_{p+1} - W_p W_p*, norm of Re tr(A* B)
      (with balancedness_norm, balancedness_rel as in dlnsim.observe)
    entropy_measured  (B,)      log-volume of the K_d^{N-1} orbit through W
    reference_distance (B,)     ||X - X_ref||_F / ||X_ref||_F

X itself is not recorded (it is a complex representation; the config refuses observers.include: [X]).
"""
from __future__ import annotations

import torch

from .entropy_fields import entropy_field_from_singular_values, orbit_log_volume_field
from .field_network import balancedness
from .fields import get_field, norm_sq, singular_values
from .observe import OBSERVABLES, Context, Observer

__all__ = ["FieldContext", "FieldObserver", "FIELD_MEASURES"]


class FieldContext(Context):
    """`Context` whose singular values and entropy are those over the field `field`."""

    def __init__(self, *args, field, **kwargs):
        super().__init__(*args, **kwargs)
        self.field = field

    @property
    def singular_values(self) -> torch.Tensor:
        return self._get("s", lambda: singular_values(self.X, self.field))

    @property
    def entropy(self) -> torch.Tensor:
        return self._get("S", lambda: entropy_field_from_singular_values(self.singular_values, self.depth, self.field))


def _balancedness(ctx: FieldContext) -> dict:
    F, weights = ctx.field, ctx.state.weights
    G = balancedness(weights)
    if ctx.memory.get("G0") is None:
        ctx.memory["G0"] = G.clone()
    drift = norm_sq(G - ctx.memory["G0"], F).sqrt()
    wsq = sum(norm_sq(W, F) for W in weights)
    return {"balancedness": drift, "balancedness_norm": norm_sq(G, F).sqrt(), "balancedness_rel": drift.amax(dim=-1) / wsq}


def _reference_distance(ctx: FieldContext) -> dict:
    Xr = ctx.reference.end_to_end()
    return {"reference_distance": (norm_sq(ctx.X - Xr, ctx.field) / norm_sq(Xr, ctx.field)).sqrt()}


# The registry entries whose measurement depends on the field; the others read FieldContext.
FIELD_MEASURES = {
    "balancedness": _balancedness,
    "entropy_measured": lambda c: {"entropy_measured": orbit_log_volume_field(c.state.weights, c.field)},
    "reference_distance": _reference_distance,
}


class FieldObserver(Observer):
    """`Observer` over the field `field` (a Field or 'real' / 'complex' / 'quaternion')."""

    def __init__(self, energy, depth: int, field, include=None, beta=None):
        super().__init__(energy, depth, include, beta)
        self.field = get_field(field)
        self.include.discard("X")

    def measure(self, state, reference=None) -> dict[str, torch.Tensor]:
        ctx = FieldContext(state, reference, self.energy, self.depth, self.beta, self._memory, field=self.field)
        out: dict[str, torch.Tensor] = {}
        for name, obs in OBSERVABLES.items():
            if name in self.include and obs.applies(ctx):
                out.update(FIELD_MEASURES.get(name, obs.measure)(ctx))
        for k, v in state.stats.items():
            out[k] = v.clone()
        return out
