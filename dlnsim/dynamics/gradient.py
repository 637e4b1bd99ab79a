"""Deterministic gradient dynamics: in parameter space, and the Riemannian flow of X.

- GradientDescent:  W_p <- W_p - h dL/dW_p  (explicit Euler; balancedness drifts O(h^2) per step).
- GradientFlow:     dW_p/dt = -dL/dW_p by classical RK4 (conserves G_p to O(h^4) per unit time).
- EndToEndFlow:     dX/dt = -A_{N,X}(grad E(X)) [+ beta^{-1} A_{N,X}(grad S(X))] by RK4: the image of
                    the parameter flow on the balanced manifold (THEORY.md section 3), and with
                    `beta` the noise-free free-energy flow -A(grad F), F = E - S/beta (section 5;
                    Chen, Kotwal & Menon 2512.06137).
Parameter gradients are the hand-written prefix/suffix products of `dlnsim.network`.
"""
from __future__ import annotations

import torch

from ..energies import Energy
from ..entropy import entropy_grad_singular_values
from ..geometry import SpectralFrame
from ..network import gradient_from_end_to_end, prefix_products
from .base import Scheme, State, rk4_step

__all__ = ["parameter_gradient", "GradientDescent", "GradientFlow", "EndToEndFlow", "TIME_SCALES"]

TIME_SCALES = ("none", "depth")


def parameter_gradient(weights: list[torch.Tensor], energy: Energy) -> list[torch.Tensor]:
    """dL/dW_p = W_{N:p+1}^T grad E(X) W_{p-1:1}^T for L = E o phi; list shaped like weights."""
    prefixes = prefix_products(weights)
    G = energy.grad(prefixes[-1])
    return gradient_from_end_to_end(weights, G, prefixes)


class GradientDescent(Scheme):
    """W_p <- W_p - h dL/dW_p, the whole ensemble at once."""

    name = "gradient_descent"

    def step(self, state: State) -> State:
        grads = parameter_gradient(state.weights, self.energy)
        h = self.step_size
        state.weights = [W - h * g for W, g in zip(state.weights, grads)]
        state.t += h
        state.step += 1
        return state


class GradientFlow(Scheme):
    """dW_p/dt = -dL/dW_p, integrated by RK4 with fixed step h (global error O(h^4))."""

    name = "gradient_flow"

    def step(self, state: State) -> State:
        f = lambda ws: [-g for g in parameter_gradient(ws, self.energy)]  # noqa: E731
        state.weights = rk4_step(f, state.weights, self.step_size)
        state.t += self.step_size
        state.step += 1
        return state


class EndToEndFlow(Scheme):
    """dX/dt = -c A_{N,X}(grad E(X)) + (c/beta) A_{N,X}(grad S(X)) by RK4; X (B, d, d) or (B, d_out, d_in).

    time_scale: "none" (c = 1, THEORY's default) or "depth" (c = 1/N, the normalisation of Cohen,
    Menon & Veraszto, which has a limit as N -> infinity). beta: None for the gradient flow of E;
    a positive number (or (B,) tensor) adds the entropic drift (square full-rank X needed).
    """

    name = "end_to_end_flow"
    space = "end_to_end"

    def __init__(self, energy: Energy, step_size: float, depth: int, time_scale: str = "none", beta=None):
        super().__init__(energy, step_size, depth)
        if time_scale not in TIME_SCALES:
            raise ValueError(f"time_scale must be one of {TIME_SCALES}, got {time_scale!r}")
        self.scale = 1.0 if time_scale == "none" else 1.0 / self.depth
        if beta is not None:
            beta_t = torch.as_tensor(beta)
            if bool((beta_t <= 0).any()):
                raise ValueError(f"beta must be positive, got {beta!r}")
            beta = beta_t if beta_t.dim() == 0 else beta_t.reshape(-1, 1, 1)
        self.beta = beta

    def velocity(self, X: torch.Tensor) -> torch.Tensor:
        frame = SpectralFrame.of(X, self.depth)
        P = -self.energy.grad(X)
        if self.beta is not None:
            P = P + frame.from_singular(entropy_grad_singular_values(frame.s, self.depth)) / self.beta.to(X)
        return self.scale * frame.apply(P, 1.0)

    def step(self, state: State) -> State:
        state.X = rk4_step(self.velocity, state.X, self.step_size)
        state.t += self.step_size
        state.step += 1
        return state
