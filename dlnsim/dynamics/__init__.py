"""Integrators, one module per family; all follow the State/Scheme contract of `base`.

gradient: GradientDescent, GradientFlow (RK4 / DOPRI5), EndToEndFlow, FreeEnergyFlow (EndToEndFlow with beta).
langevin: ProjectedLangevin, MetropolisLangevin (on the balanced manifold), UnprojectedLangevin.
rle:      RiemannianLangevin (the Riemannian Langevin equation for X), rle_drift, rle_drift_autograd.
sgd:      SGD (minibatch / label-noise SGD, weight decay, momentum, LR schedules), LRSchedule.

`SCHEMES` is the registry: config name (`Scheme.name`, the value of dynamics.scheme) -> class.
The run layer reads everything it needs to know about a scheme from the class attributes
documented on `Scheme`; adding a scheme is its module plus one entry here.
"""
from .base import Scheme, State, rk4_step
from .gradient import EndToEndFlow, FreeEnergyFlow, GradientDescent, GradientFlow, parameter_gradient
from .langevin import MetropolisLangevin, ProjectedLangevin, UnprojectedLangevin
from .rle import RiemannianLangevin, rle_drift, rle_drift_autograd
from .sgd import SGD, LRSchedule

SCHEMES: dict[str, type[Scheme]] = {
    cls.name: cls
    for cls in (
        GradientDescent,
        GradientFlow,
        EndToEndFlow,
        FreeEnergyFlow,
        ProjectedLangevin,
        MetropolisLangevin,
        UnprojectedLangevin,
        RiemannianLangevin,
        SGD,
    )
}

__all__ = [
    "SCHEMES",
    "Scheme",
    "State",
    "rk4_step",
    "GradientDescent",
    "GradientFlow",
    "EndToEndFlow",
    "FreeEnergyFlow",
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
