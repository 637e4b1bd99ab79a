"""dlnsim: a PyTorch simulator of deep linear network dynamics, next to their geometric theory.

Theory functions (pure, batched, usable in a notebook) are exported here:
    metric_operator, metric_operator_sqrt, metric_operator_inv, metric_operator_inv_sqrt, metric,
    entropy, log_orthogonal_volume, orbit_log_volume, balanced_weights, saxe_mode, ...
Stationary law and statistics: SingularValueLaw, gibbs_log_density, ks_test, zscore.
Simulation: DeepLinearNetwork, energies, the schemes of dlnsim.dynamics, Simulation / simulate;
implicit regularization: dlnsim.tasks, dlnsim.metrics, dlnsim.baselines, dlnsim.gradient_noise, SGD;
runs from YAML: dlnsim.config, dlnsim.runner, the `dlnsim` command (dlnsim.cli).
Results: load_run(dir), load_sweep(dir) (dlnsim.loaders).
"""
from ._version import __version__  # noqa: F401

from .energies import (  # noqa: F401
    CustomEnergy,
    Energy,
    LinearRegression,
    MatrixCompletion,
    MatrixRegression,
    SumEnergy,
    WeightDecay,
)
from .entropy import (  # noqa: F401
    entropy,
    entropy_from_singular_values,
    entropy_grad,
    entropy_grad_singular_values,
    log_orthogonal_volume,
    orbit_log_volume,
)
from .entropy_fields import entropy_field, log_group_volume, orbit_log_volume_field  # noqa: F401
from .fields import get_field  # noqa: F401  (networks over R, C, H: docs/theory.md §13)
from .geometry import (  # noqa: F401
    SpectralFrame,
    SVDFactors,
    horizontal_lift,
    metric,
    metric_operator,
    metric_operator_inv,
    metric_operator_inv_sqrt,
    metric_operator_sqrt,
)
from .network import DeepLinearNetwork, balanced_weights, balancedness, end_to_end  # noqa: F401
from .spectral import kernel, log_kernel  # noqa: F401
from .theory import saxe_mode, saxe_time  # noqa: F401
from .dynamics import (  # noqa: F401
    EndToEndFlow,
    FreeEnergyFlow,
    GradientDescent,
    GradientFlow,
    MetropolisLangevin,
    MetropolisRLE,
    ProjectedLangevin,
    RiemannianLangevin,
    Scheme,
    State,
    UnprojectedLangevin,
    rle_drift,
    SGD,
    LRSchedule,
)
from .observe import Observer  # noqa: F401
from .simulation import Simulation, simulate  # noqa: F401
from .manifold import (  # noqa: F401
    check_point_on_manifold,
    check_vector_on_tangent,
    manifold_dimension,
    newton_projection,
    tangent_projection,
)
from .gibbs import SingularValueLaw, gibbs_log_density, singular_value_log_density  # noqa: F401
from .stats import independent_chain_stderr, ks_test, zscore  # noqa: F401
from . import baselines, gradient_noise, metrics, tasks  # noqa: F401  (implicit-regularization studies)
# the infinite-depth limit and the balancing flows (docs/theory.md §14)
from .spectral import kernel_inf, log_kernel_inf  # noqa: F401,E402
from .geometry import metric_inf, metric_operator_inf, metric_operator_inf_inv, metric_operator_inf_sqrt  # noqa: F401,E402
from .depth_limit import entropy_divergent_part, entropy_inf, entropy_renormalized  # noqa: F401,E402
from .dynamics import (  # noqa: F401,E402
    BalancingFlow,
    InfiniteDepthFlow,
    InfiniteDepthFreeEnergyFlow,
    InfiniteDepthLangevin,
    WeightDecayDescent,
)
from .dynamics.balancing import balance, balance_from_gaussian, training_decomposition  # noqa: F401,E402
# working with results: run and sweep folders as arrays, config, meta and a tidy table
from .loaders import load_run, load_sweep  # noqa: F401,E402
