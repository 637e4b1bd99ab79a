"""Integrators, one module per family; all follow the State/Scheme contract of `base`.

gradient: GradientDescent, GradientFlow (RK4 / DOPRI5), EndToEndFlow, FreeEnergyFlow (EndToEndFlow with beta).
langevin: ProjectedLangevin, MetropolisLangevin (on the balanced manifold), UnprojectedLangevin.
rle:      RiemannianLangevin (the Riemannian Langevin equation for X), rle_drift, rle_drift_autograd.
mala:     MetropolisRLE (the RLE's layer-chart Euler step as a Metropolis proposal: exact stationary law at any h).
sgd:      SGD (minibatch / label-noise SGD, weight decay, momentum, LR schedules), LRSchedule.
infinite_depth: the end-to-end flow, free-energy flow and RLE at depth inf (time in units of N).
balancing: BalancingFlow (gradient flows of R = 1/2 sum ||W_p||^2 on the fibers of phi), WeightDecayDescent.

`SCHEMES` is the registry: config name (`Scheme.name`, the value of dynamics.scheme) -> class.
`INFINITE_DEPTH_SCHEMES` maps the names of the schemes that have a depth-inf version (network.depth: inf)
to it; `scheme_class(name, depth)` is the one lookup of both.
The run layer reads everything it needs to know about a scheme from the class attributes
documented on `Scheme`; adding a scheme is its module plus one entry here.
"""
from .base import Scheme, State, rk4_step
from .gradient import EndToEndFlow, FreeEnergyFlow, GradientDescent, GradientFlow, parameter_gradient
from .langevin import MetropolisLangevin, ProjectedLangevin, UnprojectedLangevin
from .rle import RiemannianLangevin, rle_drift, rle_drift_autograd
from .mala import MetropolisRLE
from .sgd import SGD, LRSchedule
from .balancing import BalancingFlow, WeightDecayDescent
from .infinite_depth import InfiniteDepthFlow, InfiniteDepthFreeEnergyFlow, InfiniteDepthLangevin

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
        MetropolisRLE,
        SGD,
        BalancingFlow,
        WeightDecayDescent,
    )
}

INFINITE_DEPTH_SCHEMES: dict[str, type[Scheme]] = {
    cls.name: cls for cls in (InfiniteDepthFlow, InfiniteDepthFreeEnergyFlow, InfiniteDepthLangevin)
}


def scheme_class(name: str, depth) -> type[Scheme]:
    """The class of dynamics.scheme `name` at network depth `depth` (an int, or inf for the depth-inf
    version; KeyError when `name` has none)."""
    return INFINITE_DEPTH_SCHEMES[name] if depth == float("inf") else SCHEMES[name]


__all__ = [
    "SCHEMES",
    "INFINITE_DEPTH_SCHEMES",
    "scheme_class",
    "BalancingFlow",
    "WeightDecayDescent",
    "InfiniteDepthFlow",
    "InfiniteDepthFreeEnergyFlow",
    "InfiniteDepthLangevin",
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
    "MetropolisRLE",
    "rle_drift",
    "rle_drift_autograd",
    "SGD",
    "LRSchedule",
]
