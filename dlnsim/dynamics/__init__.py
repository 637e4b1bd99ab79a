"""Integrators, one module per family; all follow the State/Scheme contract of `base`."""
from .base import Scheme, State, rk4_step
from .gradient import EndToEndFlow, GradientDescent, GradientFlow, parameter_gradient

__all__ = ["Scheme", "State", "rk4_step", "GradientDescent", "GradientFlow", "EndToEndFlow", "parameter_gradient"]
from .langevin import MetropolisLangevin, ProjectedLangevin, UnprojectedLangevin  # noqa: E402

__all__ += ["ProjectedLangevin", "MetropolisLangevin", "UnprojectedLangevin"]
from .rle import RiemannianLangevin, rle_drift, rle_drift_autograd  # noqa: E402

__all__ += ["RiemannianLangevin", "rle_drift", "rle_drift_autograd"]
