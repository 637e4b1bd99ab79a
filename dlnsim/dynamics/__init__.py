"""Integrators, one module per family; all follow the State/Scheme contract of `base`.

gradient: GradientDescent, GradientFlow (RK4), EndToEndFlow (RK4; with beta the free-energy flow).
langevin: ProjectedLangevin, MetropolisLangevin (on the balanced manifold), UnprojectedLangevin.
rle:      RiemannianLangevin (the Riemannian Langevin equation for X), rle_drift, rle_drift_autograd.
sgd:      SGD (minibatch / label-noise SGD, weight decay, momentum, LR schedules), LRSchedule.
"""
from .base import Scheme, State, rk4_step
from .gradient import EndToEndFlow, GradientDescent, GradientFlow, parameter_gradient
from .langevin import MetropolisLangevin, ProjectedLangevin, UnprojectedLangevin
from .rle import RiemannianLangevin, rle_drift, rle_drift_autograd
from .sgd import SGD, LRSchedule

__all__ = [
    "Scheme",
    "State",
    "rk4_step",
    "GradientDescent",
    "GradientFlow",
    "EndToEndFlow",
    "parameter_gradient",
    "ProjectedLangevin",
    "MetropolisLangevin",
    "UnprojectedLangevin",
    "RiemannianLangevin",
    "rle_drift",
    "rle_drift_autograd",
    "SGD",
    "LRSchedule",
]
