"""Observables of a run over F = R, C, H (the `dlnsim.observe` keys, measured with the pairing of F).

    loss              (B,)      E(X)
    singular_values   (B, d)    over F (over H: each singular value once, not chi's doubled list)
    balancedness      (B, N-1)  ||G_p(t) - G_p(0)||_F, G_p = W_{p+1}* W_{p+1} - W_p W_p*, norm of Re tr
    balancedness_norm (B, N-1)  ||G_p(t)||_F
    balancedness_rel  (B,)      max_p ||G_p(t) - G_p(0)||_F / sum_p ||W_p||_F^2
    entropy_formula   (B,)      S_beta(X) closed form (`dlnsim.entropy_fields`)
    entropy_measured  (B,)      log-volume of the K_d^{N-1} orbit through W (parameter schemes)
    free_energy       (B,)      E - S_beta/beta_T (when beta is given)
    reference_distance (B,)     ||X - X_ref||_F / ||X_ref||_F
    <stat>            (B,)      the scheme's counters

X itself is not recorded (it is complex). No host syncs.
"""
from __future__ import annotations

import torch

from .dynamics.base import State
from .entropy_fields import entropy_field_from_singular_values, orbit_log_volume_field
from .field_network import balancedness
from .fields import get_field, norm_sq, singular_values
from .observe import Observer

__all__ = ["FieldObserver"]


class FieldObserver(Observer):
    """`Observer` over the field `field` (a Field or 'real' / 'complex' / 'quaternion')."""

    def __init__(self, energy, depth: int, field, include=None, beta=None):
        super().__init__(energy, depth, include, beta)
        self.field = get_field(field)
        self.include.discard("X")

    def measure(self, state: State, reference: State | None = None) -> dict[str, torch.Tensor]:
        F = self.field
        X = state.end_to_end()
        out: dict[str, torch.Tensor] = {}
        loss = self.energy.value(X)
        if "loss" in self.include:
            out["loss"] = loss
        s = singular_values(X, F)
        if "singular_values" in self.include:
            out["singular_values"] = s
        S = entropy_field_from_singular_values(s, self.depth, F)
        if "entropy_formula" in self.include:
            out["entropy_formula"] = S
        if self.beta is not None and "free_energy" in self.include:
            out["free_energy"] = loss - S / torch.as_tensor(self.beta, dtype=s.dtype, device=s.device)
        W = state.weights
        if W is not None and len(W) > 1 and "balancedness" in self.include:
            G = balancedness(W)
            if self._G0 is None:
                self._G0 = G.clone()
            out["balancedness"] = norm_sq(G - self._G0, F).sqrt()
            out["balancedness_norm"] = norm_sq(G, F).sqrt()
            out["balancedness_rel"] = out["balancedness"].amax(-1) / sum(norm_sq(w, F) for w in W)
        if W is not None and "entropy_measured" in self.include:
            out["entropy_measured"] = orbit_log_volume_field(W, F)
        if reference is not None and "reference_distance" in self.include:
            Xr = reference.end_to_end()
            out["reference_distance"] = (norm_sq(X - Xr, F) / norm_sq(Xr, F)).sqrt()
        for k, v in state.stats.items():
            out[k] = v.clone()
        return out
