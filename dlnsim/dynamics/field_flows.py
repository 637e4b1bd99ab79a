"""Gradient descent, gradient flow and the end-to-end flow over F = R, C, H as `Scheme`s.

The state holds representations (`dlnsim.fields`): complex (B, d, d) over C, complex (B, 2d, 2d)
(chi) over H. The steps are those of `dlnsim.field_network` / `dlnsim.field_geometry`:

    FieldGradientDescent:  W_p <- W_p - h W_{N:p+1}* grad E(X) W_{p-1:1}*
    FieldGradientFlow:     dW_p/dt = -W_{N:p+1}* grad E(X) W_{p-1:1}*            (RK4)
    FieldEndToEndFlow:     dX/dt = -A_{N,X}(grad E) [+ A_{N,X}(grad S_beta_F)/beta]  (RK4)

Over R they coincide with GradientDescent / GradientFlow / EndToEndFlow of `dlnsim.dynamics.gradient`
(tests/test_fields.py), which remain the tuned real implementations.
"""
from __future__ import annotations

import torch

from ..energies import Energy
from ..field_geometry import end_to_end_velocity
from ..field_network import parameter_gradient, parameter_gradient_from_end_to_end
from ..fields import get_field
from ..network import prefix_products
from .base import Scheme, State, check_beta, rk4_step

__all__ = ["FieldGradientDescent", "FieldGradientFlow", "FieldEndToEndFlow", "descent_step",
           "gradient_flow_step", "end_to_end_step"]


def descent_step(weights: list[torch.Tensor], energy: Energy, h: float) -> list[torch.Tensor]:
    """One gradient-descent step W_p <- W_p - h dL/dW_p (over F: the gradient for <., .>_F)."""
    return [W - h * g for W, g in zip(weights, parameter_gradient(weights, energy))]


def gradient_flow_step(weights: list[torch.Tensor], energy: Energy, h: float) -> list[torch.Tensor]:
    """One RK4 step of dW_p/dt = -dL/dW_p (global error O(h^4))."""
    def f(ws):
        prefixes = prefix_products(ws)
        return parameter_gradient_from_end_to_end(ws, -energy.grad(prefixes[-1]), prefixes)

    return rk4_step(f, weights, h)


def end_to_end_step(X: torch.Tensor, energy: Energy, depth: int, h: float, field=None, beta=None, scale: float = 1.0) -> torch.Tensor:
    """One RK4 step of scale * `end_to_end_velocity` (global error O(h^4)); scale = 1/N for time_scale: depth."""
    return rk4_step(lambda Y: scale * end_to_end_velocity(Y, energy, depth, field, beta), X, h)


class _FieldScheme(Scheme):
    def __init__(self, energy, step_size: float, depth: int, field="complex"):
        super().__init__(energy, step_size, depth)
        self.field = get_field(field)

    def _advance(self, state: State) -> State:
        state.t += self.step_size
        state.step += 1
        return state


class FieldGradientDescent(_FieldScheme):
    name = "gradient_descent"

    def step(self, state: State) -> State:
        state.weights = descent_step(state.weights, self.energy, self.step_size)
        return self._advance(state)


class FieldGradientFlow(_FieldScheme):
    name = "gradient_flow"

    def step(self, state: State) -> State:
        state.weights = gradient_flow_step(state.weights, self.energy, self.step_size)
        return self._advance(state)


class FieldEndToEndFlow(_FieldScheme):
    """beta: None for the gradient flow of E; a positive number or (B,) tensor for the free-energy flow
    E - S_beta_F/beta. time_scale: "none" (c = 1) or "depth" (c = 1/N), as EndToEndFlow."""

    name = "end_to_end_flow"
    space = "end_to_end"

    def __init__(self, energy, step_size: float, depth: int, field="complex", beta=None, time_scale: str = "none"):
        super().__init__(energy, step_size, depth, field)
        if beta is not None:
            check_beta(beta)
        if time_scale not in ("none", "depth"):
            raise ValueError(f"time_scale must be 'none' or 'depth', got {time_scale!r}")
        self.beta = beta
        self.scale = 1.0 if time_scale == "none" else 1.0 / self.depth

    def step(self, state: State) -> State:
        state.X = end_to_end_step(state.X, self.energy, self.depth, self.step_size, self.field, self.beta, self.scale)
        return self._advance(state)
