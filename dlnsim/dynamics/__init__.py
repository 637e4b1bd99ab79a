"""Integrators, one module per family; all follow the State/Scheme contract of `base`."""
from .base import Scheme, State, rk4_step
from .gradient import EndToEndFlow, GradientDescent, GradientFlow, parameter_gradient

__all__ = ["Scheme", "State", "rk4_step", "GradientDescent", "GradientFlow", "EndToEndFlow", "parameter_gradient"]
