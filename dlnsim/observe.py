"""Observables of a run, measured at save points (docs/theory.md): one registry entry each.

`OBSERVABLES` maps a name to an `Observable`: a pure function of (state, context) returning its
arrays, each with the batch dim first, when it applies to the state, and the run figure that draws it.

    loss              (B,)        E(X)
    singular_values   (B, r)      descending, r = min(d_N, d_0)
    X                 (B, d_N, d_0)                       (not recorded unless asked for)
    entropy_formula   (B,)        S(X), closed form (square X; -inf/NaN where rank-deficient)
    free_energy       (B,)        E - S/beta (square X, when beta is given)
    det_sign          (B,)        sign det X: +1, -1 (0 when singular); square X (docs/theory.md section 8)
    balancedness      (B, N-1)    ||G_p(t) - G_p(0)||_F   (parameter schemes, N >= 2), with
      balancedness_norm (B, N-1)  ||G_p(t)||_F
      balancedness_rel  (B,)      max_p ||G_p(t) - G_p(0)||_F / sum_p ||W_p||_F^2 (the absolute drift where W = 0)
    entropy_measured  (B,)        log-volume of the orbit through W (square widths, parameter schemes)
    reference_distance (B,)       ||X - X_ref||_F / ||X_ref||_F against a reference (theory) state
                                  (||X - X_ref||_F where X_ref = 0)
    norms             (B,) each   nuclear_norm, frobenius_norm, spectral_norm of X   (not recorded unless asked for)
    effective_rank    (B,)        exp of the entropy of s/||s||_1 (Roy & Vetterli)  (not recorded unless asked for)
    completion_error  (B,) each   matrix_completion: test_error ||(1-M) o (X - Phi)|| / ||(1-M) o Phi|| (unobserved
                                  entries, against the clean target Phi = energy.truth), reconstruction_error
                                  (all entries, against Phi), train_error ||M o (X - O)|| / ||M o O|| (observed
                                  entries, against what was observed, O = energy.target: Phi + noise there)
    regression_error  (B,) each   linear_regression: train_error ||X A - Y||_F / ||Y||_F on the training data,
                                  test_error the same on the held-out data (when there are any: energy.n_test,
                                  test_fraction, test files); test labels carry the same label noise as train
    layer_effective_rank (B, N)   effective rank of each layer W_p (parameter schemes)  (not recorded unless asked for)
    <stat>            (B,)        every counter the scheme keeps in state.stats

`Observer.measure(state, reference)` evaluates the included entries in registry order. The
quantities several entries share (X, E(X), its singular values, S(X)) are computed once per save
point by `Context`. No host syncs: values that are undefined come out as NaN/inf rather than
raising; the simulation loop inspects them once per save point.

To add an observable: one `Observable(...)` entry below (and, for a figure of its own, a run figure
in dlnsim.plotting named by its `figure`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ._checks import as_beta
from .dynamics.base import State
from .energies import Energy
from .entropy import entropy_from_singular_values, orbit_log_volume
from .metrics import completion_errors, effective_rank_from_singular_values, regression_errors
from .network import balancedness

__all__ = ["Observer", "Observable", "Context", "OBSERVABLES", "ENTROPY_MEASURED_AUTO_MAX", "default_include"]

# Gram matrices of the measured entropy have (N-1) d(d-1)/2 rows; above this, "auto" skips them.
ENTROPY_MEASURED_AUTO_MAX = 60


class Context:
    """What the observables of one save point share, computed on first use.

    state, reference: the run's state and the reference (theory) state or None; energy, depth,
    beta (None, a number or (B,) tensor); memory: the observer's dict kept across save points
    (e.g. the initial balancedness G_p(0)).
    """
    def __init__(self, state: State, reference: State | None, energy: Energy, depth: int, beta, memory: dict):
        self.state, self.reference, self.energy, self.depth, self.beta, self.memory = (
            state, reference, energy, depth, beta, memory)
        self._cache: dict = {}

    def _get(self, key, fn):
        if key not in self._cache:
            self._cache[key] = fn()
        return self._cache[key]

    @property
    def X(self) -> torch.Tensor:
        return self._get("X", self.state.end_to_end)

    @property
    def square(self) -> bool:
        return self.X.shape[-1] == self.X.shape[-2]

    @property
    def loss(self) -> torch.Tensor:
        return self._get("loss", lambda: self.energy.value(self.X))

    @property
    def singular_values(self) -> torch.Tensor:
        return self._get("s", lambda: torch.linalg.svdvals(self.X))

    @property
    def entropy(self) -> torch.Tensor:
        return self._get("S", lambda: entropy_from_singular_values(self.singular_values, self.depth))


@dataclass(frozen=True)
class Observable:
    """One observable: measure(ctx) -> {array name: (B, ...) tensor}; applies(ctx) on this state;
    figure: the run figure (dlnsim.plotting) that draws it; default: recorded when
    observers.include is null; select(cfg, scheme_class): None, or the run layer's own decision
    (e.g. a config key of its own), which overrides include."""
    name: str
    measure: Callable[[Context], dict]
    applies: Callable[[Context], bool] = lambda ctx: True
    figure: str | None = None
    default: bool = True
    select: Callable[[dict, type], bool] | None = None


def _balancedness(ctx: Context) -> dict:
    weights = ctx.state.weights
    G = balancedness(weights)
    if ctx.memory.get("G0") is None:
        ctx.memory["G0"] = [g.clone() for g in G] if isinstance(G, list) else G.clone()
    G0 = ctx.memory["G0"]
    if isinstance(G, list):
        drift = torch.stack([(g - g0).flatten(-2).norm(dim=-1) for g, g0 in zip(G, G0)], dim=-1)
        norm = torch.stack([g.flatten(-2).norm(dim=-1) for g in G], dim=-1)
    else:
        drift = (G - G0).flatten(-2).norm(dim=-1)
        norm = G.flatten(-2).norm(dim=-1)
    wsq = sum((W * W).sum(dim=(-2, -1)) for W in weights)
    top = drift.amax(dim=-1)
    # at W = 0 (sum ||W_p||^2 = 0) the relative drift is 0/0: report the absolute drift there
    return {"balancedness": drift, "balancedness_norm": norm,
            "balancedness_rel": torch.where(wsq > 0, top / torch.where(wsq > 0, wsq, 1.0), top)}


def _reference_distance(ctx: Context) -> dict:
    Xr = ctx.reference.end_to_end()
    dist, ref = (ctx.X - Xr).flatten(-2).norm(dim=-1), Xr.flatten(-2).norm(dim=-1)
    # X_ref = 0 (e.g. a start at X = 0, a fixed point): the absolute distance instead of 0/0
    return {"reference_distance": torch.where(ref > 0, dist / torch.where(ref > 0, ref, 1.0), dist)}


def _select_entropy_measured(cfg: dict, scheme_cls: type) -> bool:
    """observers.entropy_measured: true | false | auto ((N-1) d(d-1)/2 <= ENTROPY_MEASURED_AUTO_MAX);
    only for parameter-space schemes with square widths."""
    widths, want = cfg["network"]["widths"], cfg["observers"]["entropy_measured"]
    d, N = widths[0], len(widths) - 1
    square = all(w == d for w in widths)
    return scheme_cls.space == "parameters" and square and (
        want == "true" or (want == "auto" and (N - 1) * d * (d - 1) // 2 <= ENTROPY_MEASURED_AUTO_MAX))


def _square_weights(ctx: Context) -> bool:
    ws = ctx.state.weights
    return ws is not None and all(W.shape[-1] == W.shape[-2] == ctx.X.shape[-1] for W in ws)


def _norms(ctx: Context) -> dict:
    s = ctx.singular_values
    return {"nuclear_norm": s.sum(dim=-1), "frobenius_norm": s.square().sum(dim=-1).sqrt(), "spectral_norm": s[..., 0]}


def _data_term(energy: Energy, name: str):
    """The energy of a run of type `name` (e.g. "matrix_completion"): the energy itself, or that data
    term of a SumEnergy (energy.confinement adds c/2 ||X||^2 to it); None when there is none."""
    for e in getattr(energy, "terms", (energy,)):
        if getattr(type(e), "name", None) == name:
            return e
    return None


def _completion_error(ctx: Context) -> dict:
    E = _data_term(ctx.energy, "matrix_completion")
    truth = getattr(E, "truth", E.target)
    e = completion_errors(ctx.X, truth, E.mask)
    # train error against the observations (noisy where energy.noise > 0); the same as against truth without noise
    train = e["train_error_rel"] if truth is E.target else completion_errors(ctx.X, E.target, E.mask)["train_error_rel"]
    return {"test_error": e["test_error_rel"], "train_error": train, "reconstruction_error": e["reconstruction_error_rel"]}


def _layer_effective_rank(ctx: Context) -> dict:
    ws = ctx.state.weights
    layers = list(ws) if isinstance(ws, (list, tuple)) else ws.unbind(dim=-3)  # list or stacked (B, N, d, d)
    return {"layer_effective_rank": torch.stack(
        [effective_rank_from_singular_values(torch.linalg.svdvals(W)) for W in layers], dim=-1)}


def _is_completion(ctx: Context) -> bool:
    return _data_term(ctx.energy, "matrix_completion") is not None


def _regression_error(ctx: Context) -> dict:
    E = _data_term(ctx.energy, "linear_regression")
    out = {"train_error": regression_errors(ctx.X, E.inputs, E.outputs)["rel_error"]}
    if getattr(E, "test_inputs", None) is not None:
        out["test_error"] = regression_errors(ctx.X, E.test_inputs, E.test_outputs)["rel_error"]
    return out


def _is_regression(ctx: Context) -> bool:
    return _data_term(ctx.energy, "linear_regression") is not None


_ENTRIES = (
    Observable("loss", lambda c: {"loss": c.loss}, figure="loss"),
    Observable("singular_values", lambda c: {"singular_values": c.singular_values}, figure="singular_values"),
    Observable("X", lambda c: {"X": c.X}, default=False),
    Observable("entropy_formula", lambda c: {"entropy_formula": c.entropy}, lambda c: c.square, figure="entropy"),
    Observable("free_energy", lambda c: {"free_energy": c.loss - c.entropy / as_beta(c.beta, c.X, trailing=0)},
               lambda c: c.square and c.beta is not None, figure="thermodynamics"),
    # real X only: over C and H det X is a phase (no two components), so the observable does not apply
    Observable("det_sign", lambda c: {"det_sign": torch.linalg.det(c.X).sign()}, lambda c: c.square and not c.X.is_complex(),
               figure="stationary"),
    Observable("balancedness", _balancedness, lambda c: c.state.weights is not None and len(c.state.weights) > 1,
               figure="balancedness"),
    Observable("entropy_measured", lambda c: {"entropy_measured": orbit_log_volume(c.state.weights)}, _square_weights,
               figure="entropy", select=_select_entropy_measured),
    Observable("reference_distance", _reference_distance, lambda c: c.reference is not None),
    Observable("norms", _norms, figure="implicit_regularization", default=False),
    Observable("effective_rank", lambda c: {"effective_rank": effective_rank_from_singular_values(c.singular_values)},
               figure="implicit_regularization", default=False),
    Observable("completion_error", _completion_error, _is_completion, figure="implicit_regularization", default=False),
    Observable("regression_error", _regression_error, _is_regression, figure="implicit_regularization", default=False),
    Observable("layer_effective_rank", _layer_effective_rank, lambda c: c.state.weights is not None, default=False),
)
OBSERVABLES: dict[str, Observable] = {o.name: o for o in _ENTRIES}


def default_include(cfg: dict, scheme_cls: type) -> list[str]:
    """The observables a run records: observers.include (null: every default one), each entry's own
    `select` rule applied, and the loss always (the divergence check and every figure read it)."""
    include = cfg["observers"]["include"]
    names = list(include) if include is not None else [k for k, o in OBSERVABLES.items() if o.default]
    for k, o in OBSERVABLES.items():
        if o.select is not None:
            names = [n for n in names if n != k] + ([k] if o.select(cfg, scheme_cls) else [])
    return names if "loss" in names else ["loss"] + names


class Observer:
    """Measures the observables of `state` for an ensemble of depth `depth`.

    include: names from OBSERVABLES to record (default: all that apply). beta: inverse
    temperature for the free energy (number or (B,) tensor), None for none. The initial
    balancedness G_p(0) is taken from the first state measured (`state_dict` / `load_state_dict`
    carry it through a checkpoint).
    """
    def __init__(self, energy: Energy, depth: int, include=None, beta=None):
        include = set(OBSERVABLES if include is None else include)
        unknown = include - set(OBSERVABLES)
        if unknown:
            raise ValueError(f"unknown observables {sorted(unknown)}; choose from {list(OBSERVABLES)}")
        self.energy = energy
        self.depth = depth
        self.include = include
        self.beta = beta
        self._memory: dict = {"G0": None}

    def measure(self, state: State, reference: State | None = None) -> dict[str, torch.Tensor]:
        ctx = Context(state, reference, self.energy, self.depth, self.beta, self._memory)
        out: dict[str, torch.Tensor] = {}
        for name, obs in OBSERVABLES.items():
            if name in self.include and obs.applies(ctx):
                out.update(obs.measure(ctx))
        for k, v in state.stats.items():
            out[k] = v.clone()
        return out

    def state_dict(self) -> dict:
        """What a checkpoint needs to resume measuring: the initial balancedness G_p(0)."""
        return {"G0": self._memory["G0"]}

    def load_state_dict(self, d: dict) -> None:
        self._memory["G0"] = d["G0"]
