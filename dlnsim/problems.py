"""Reference problems shared by the tests and the long scripts (tests/, scripts/*_long.py).

The statistical checks of the Langevin schemes run the same chains in a quick version (tests,
small ensembles) and a long one (scripts, large ensembles, tables); the set-ups live here once so
that both check the same thing:

- `balanced_start(d, N, B, generator, scale)`: balanced weights over X with i.i.d. N(0, scale^2)
  entries, the spread-out start of the manifold chains;
- `singular_value_observables(X)` (B, 4): s_max, s_min, ||X||_F^2, |det X| (names `OBSERVABLE_NAMES`),
  and `law_moments(law)`: the same four under a dlnsim.gibbs.SingularValueLaw;
- `rle_stationary_samples(...)`: RiemannianLangevin chains for E = alpha/2 ||X||^2 run to
  stationarity, then sampled at a fixed spacing (the Gibbs-law comparison of the RLE).
"""
from __future__ import annotations

import torch

from .dynamics.base import State
from .dynamics.rle import RiemannianLangevin
from .energies import WeightDecay
from .network import balanced_weights

__all__ = ["balanced_start", "singular_value_observables", "OBSERVABLE_NAMES", "law_moments", "rle_stationary_samples"]

OBSERVABLE_NAMES = ("s_max", "s_min", "|X|^2", "|det X|")


def balanced_start(d: int, N: int, B: int, generator: torch.Generator, scale: float = 1.0,
                   dtype: torch.dtype = torch.float64) -> list[torch.Tensor]:
    """Balanced weights [W_1..W_N] (B, d, d) over X with i.i.d. N(0, scale^2) entries."""
    return balanced_weights(scale * torch.randn(B, d, d, dtype=dtype, generator=generator), N, generator=generator)


def _four(s: torch.Tensor) -> torch.Tensor:
    return torch.stack([s[..., 0], s[..., -1], (s * s).sum(-1), s.prod(-1)], dim=-1)


def singular_value_observables(X: torch.Tensor) -> torch.Tensor:
    """(B, 4): s_max, s_min, ||X||_F^2, |det X| of X (B, d, d)."""
    return _four(torch.linalg.svdvals(X))


def law_moments(law) -> torch.Tensor:
    """(4,): the expectations of singular_value_observables under a SingularValueLaw."""
    return law.moment(_four)


def rle_stationary_samples(d: int, N: int, h: float, chains: int, burn: float, n_samples: int, spacing: float, *,
                           beta: float = 1.0, alpha: float = 1.0, chart: str = "layer", seed: int = 0,
                           dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, State]:
    """Singular values (n_samples, chains, d) of RLE chains for E = alpha/2 ||X||^2, after `burn`
    time units and then every `spacing`, and the final state. The chains start near the law's scale
    (c = beta alpha): X entries N(0, 0.5/c)."""
    g = torch.Generator().manual_seed(seed)
    scheme = RiemannianLangevin(WeightDecay(alpha), h, N, beta, generator=g, chart=chart)
    state = scheme.init_state(X=(0.5 / (beta * alpha)) ** 0.5 * torch.randn(chains, d, d, generator=g, dtype=dtype))
    for _ in range(round(burn / h)):
        state = scheme.step(state)
    out = []
    for _ in range(n_samples):
        for _ in range(round(spacing / h)):
            state = scheme.step(state)
        out.append(torch.linalg.svdvals(state.X))
    return torch.stack(out), state
