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

from ..field_geometry import end_to_end_step
from ..field_network import descent_step, gradient_flow_step
from ..fields import get_field
from .base import Scheme, State, check_beta

__all__ = ["FieldGradientDescent", "FieldGradientFlow", "FieldEndToEndFlow"]


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
    """beta: None for the gradient flow of E; a positive number for the free-energy flow E - S_beta_F/beta."""

    name = "end_to_end_flow"
    space = "end_to_end"

    def __init__(self, energy, step_size: float, depth: int, field="complex", beta=None):
        super().__init__(energy, step_size, depth, field)
        if beta is not None:
            check_beta(beta)
        self.beta = beta

    def step(self, state: State) -> State:
        state.X = end_to_end_step(state.X, self.energy, self.depth, self.step_size, self.field, self.beta)
        return self._advance(state)
