"""Stochastic gradient dynamics in parameter space: minibatch SGD, label noise, weight decay, momentum.

One step of `SGD`, for every trajectory of the ensemble (batch dim B first):

    G_hat = stochastic estimate of grad E(X) from a minibatch       (X = W_N ... W_1, (B, d_N, d_0))
    g_p   = W_{N:p+1}^T G_hat W_{p-1:1}^T + lambda W_p              (hand-written, dlnsim.network)
    v_p  <- mu v_p - h_k g_p,   W_p <- W_p + v_p                    (heavy ball; mu = 0: plain SGD)

with h_k = step_size * schedule(k) (constant, step, cosine, with linear warm-up) and state.t the
sum of the h_k. Minibatch estimators (`CompletionSampler`, `RegressionSampler`) are unbiased:

- completion, E = 1/2 sum_ij M_ij (X - Phi)_ij^2: b entries i_1..i_b drawn with probability
  M_i / |M| (|M| = sum M, the number of observed entries for a 0/1 mask), with or without
  replacement (without: 0/1 masks, uniform), G_hat = |M|/b sum_k (X - Phi - sigma xi_k)_{i_k} E_{i_k};
- regression, E = 1/(2n) ||X A - Y||^2: b samples j_1..j_b of the n columns,
  G_hat = 1/b sum_k (X a_{j_k} - y_{j_k} - sigma xi_k) a_{j_k}^T, xi_k ~ N(0, I_{d_out});

sigma = label_noise: fresh Gaussian label noise at every step ("label-noise SGD"; with
batch_size=None it is added to the full gradient). Each trajectory draws its own minibatch; a
per-trajectory mask (B, d_out, d_in) samples its own observed entries. batch_size=None: full batch.

Sampling without replacement is epoch-wise reshuffling (`EpochShuffler`), as in a data loader:
at the start of each epoch every trajectory draws a fresh uniform permutation of its n samples,
and the epoch's minibatches are consecutive slices of b of it, so every sample is used exactly
once per epoch (ceil(n/b) steps; when b does not divide n the last minibatch of an epoch has
n mod b samples and its estimator the factor 1/(n mod b)). Each minibatch is marginally a uniform
subset of its size, so every step is unbiased and its covariance is the finite-population one of
`dlnsim.gradient_noise`; steps within an epoch are dependent (negatively correlated). The
permutations and the position in the epoch are part of the scheme's checkpointed cache.
With replacement, steps are independent.

All randomness comes from `generator`; no host syncs in `step`. The gradient-noise covariance of
these estimators, and the balancedness drift it causes, are in `dlnsim.gradient_noise`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from ..energies import Energy, LinearRegression, MatrixCompletion, SumEnergy
from ..options import Bool, Choice, Int, Num, fail
from ..network import gradient_from_end_to_end, prefix_products
from .base import Scheme, State

__all__ = ["LRSchedule", "SCHEDULES", "Minibatch", "EpochShuffler", "CompletionSampler", "RegressionSampler", "make_sampler", "SGD"]

SCHEDULES = ("constant", "step", "cosine")


@dataclass(frozen=True)
class LRSchedule:
    """Learning-rate factor f(k) at step k = 0, 1, ... (the step size is step_size * f(k)).

    warmup_steps w: f = (k + 1)/w for k < w (linear warm-up), then with k' = k - w:
      constant: 1;   step: gamma^floor(k' / step_every);
      cosine:   min_factor + (1 - min_factor) (1 + cos(pi min(k', T) / T)) / 2,  T = total_steps - w.
    """

    kind: str = "constant"
    warmup_steps: int = 0
    step_every: int | None = None
    gamma: float = 0.1
    total_steps: int | None = None
    min_factor: float = 0.0

    def __post_init__(self):
        if self.kind not in SCHEDULES:
            raise ValueError(f"schedule kind must be one of {SCHEDULES}, got {self.kind!r}")
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be a non-negative integer, got {self.warmup_steps!r}")
        if self.kind == "step":
            if isinstance(self.step_every, bool) or not isinstance(self.step_every, int) or self.step_every < 1:
                raise ValueError(f"a step schedule needs step_every, a positive integer (got {self.step_every!r})")
            if not (isinstance(self.gamma, (int, float)) and 0 < self.gamma <= 1):
                raise ValueError(f"gamma must be in (0, 1], got {self.gamma!r}")
        if self.kind == "cosine":
            if isinstance(self.total_steps, bool) or not isinstance(self.total_steps, int) or self.total_steps <= self.warmup_steps:
                raise ValueError(f"a cosine schedule needs total_steps, an integer > warmup_steps (got {self.total_steps!r})")
            if not (isinstance(self.min_factor, (int, float)) and 0 <= self.min_factor <= 1):
                raise ValueError(f"min_factor must be in [0, 1], got {self.min_factor!r}")

    @classmethod
    def of(cls, spec) -> "LRSchedule":
        """None -> constant; a kind name; a dict of the fields; or an LRSchedule."""
        if spec is None:
            return cls()
        if isinstance(spec, LRSchedule):
            return spec
        if isinstance(spec, str):
            return cls(kind=spec)
        if isinstance(spec, dict):
            unknown = set(spec) - set(cls.__dataclass_fields__)
            if unknown:
                raise ValueError(f"unknown schedule key(s) {sorted(unknown)}; valid: {sorted(cls.__dataclass_fields__)}")
            return cls(**spec)
        raise ValueError(f"schedule must be None, a kind {SCHEDULES}, a dict or an LRSchedule, got {spec!r}")

    def factor(self, k: int) -> float:
        w = self.warmup_steps
        if k < w:
            return (k + 1) / w
        k -= w
        if self.kind == "constant":
            return 1.0
        if self.kind == "step":
            return self.gamma ** (k // self.step_every)
        T = self.total_steps - w
        return self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * min(k, T) / T))


class Minibatch(NamedTuple):
    """One draw for the ensemble: idx (B, b) sample indices (None: full batch); noise: label noise
    (B, b) for completion, (B, b, d_out) for regression, or the full-batch shapes; None without noise."""

    idx: torch.Tensor | None
    noise: torch.Tensor | None


def _check_batch_size(batch_size, replacement, label_noise):
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer or None (full batch), got {batch_size!r}")
    if not isinstance(replacement, bool):
        raise ValueError(f"replacement must be True or False, got {replacement!r}")
    if isinstance(label_noise, bool) or not isinstance(label_noise, (int, float)) or not label_noise >= 0 or label_noise == float("inf"):
        raise ValueError(f"label_noise must be a non-negative number (std of the fresh label noise), got {label_noise!r}")


class EpochShuffler:
    """Epoch-wise reshuffling of a population of n samples, per trajectory.

    population: (n,) or (B_p, n) long tensor of sample ids (e.g. flat indices of the observed entries
    of one mask, or of each trajectory's mask; B_p = 1 or the ensemble's B). `next(B, b, generator,
    device)` returns (B, b') ids, b' = min(b, n - pos): consecutive slices of a permutation of each
    trajectory's population, a fresh one (torch.rand(B, n).argsort: uniform) at each epoch start.
    State: `perm` (B, n) or None, `pos` (a Python int: no host sync); `state()` / `load_state()`.
    """

    def __init__(self, population: torch.Tensor):
        self.population = population if population.dim() == 2 else population.unsqueeze(0)
        self.n = self.population.shape[-1]
        self.perm: torch.Tensor | None = None
        self.pos = 0

    def next(self, B: int, b: int, generator: torch.Generator | None, device) -> torch.Tensor:
        if self.perm is None or self.pos >= self.n or self.perm.shape[0] != B or self.perm.device != torch.device(device):
            self.perm = torch.rand(B, self.n, generator=generator, dtype=torch.float64, device=device).argsort(dim=-1)
            self.pos = 0
        part = self.perm[:, self.pos:self.pos + b]
        self.pos += part.shape[1]
        pop = self.population
        if pop.device != part.device:  # copied to the accelerator once, not at every step
            pop = self.population = pop.to(part.device)
        return pop.expand(B, -1).gather(1, part) if pop.shape[0] in (1, B) else pop.gather(1, part)

    def state(self) -> dict:
        return {"perm": self.perm, "pos": self.pos}

    def load_state(self, d: dict) -> None:
        self.perm, self.pos = d["perm"], int(d["pos"])


class CompletionSampler:
    """Minibatches of observed entries of a MatrixCompletion energy (see the module docstring).

    The population: the entries with M_ij > 0, each drawn with probability M_ij / |M|; per-sample
    gradient in X-space h_i = |M| (X - Phi)_i E_i (so grad E = E_i[h_i]); label-noise direction
    J_i = |M| E_i (a draw adds -sigma xi J_i).
    """

    def __init__(self, energy: MatrixCompletion, batch_size: int | None, replacement: bool = True, label_noise: float = 0.0):
        _check_batch_size(batch_size, replacement, label_noise)
        self.energy, self.batch_size, self.replacement, self.label_noise = energy, batch_size, replacement, float(label_noise)
        M = energy.mask
        if bool((M < 0).any()):
            raise ValueError("the completion mask must be non-negative (0/1 or weights)")
        counts = (M > 0).sum(dim=(-2, -1))
        self.shuffler = None
        if batch_size is not None and not replacement:
            if not bool(((M == 0) | (M == 1)).all()):
                raise ValueError("sampling without replacement needs a 0/1 mask (weights are sampled with replacement only)")
            if batch_size > int(counts.min()):
                raise ValueError(f"batch_size {batch_size} exceeds the {int(counts.min())} observed entries of a mask; lower it or sample with replacement")
            if int(counts.max()) != int(counts.min()):
                raise ValueError(f"sampling without replacement (epoch-wise reshuffling) needs the same number of observed entries in every "
                                 f"trajectory's mask, got {int(counts.min())} to {int(counts.max())}; sample with replacement")
            flat = M.reshape(-1, M.shape[-2] * M.shape[-1])
            self.shuffler = EpochShuffler((flat > 0).nonzero()[:, 1].reshape(flat.shape[0], -1))
        self._weights = M.flatten(-2).to(torch.float64)  # (B_m or 1.., d_out d_in): sampling probabilities up to |M|
        self._total = M.sum(dim=(-2, -1))  # |M|: () or (B_m,)

    def draw(self, B: int, generator: torch.Generator | None, ref: torch.Tensor) -> Minibatch:
        """Minibatch indices (B, b) into the flattened entries, and label noise if any."""
        if self.batch_size is None:
            noise = None
            if self.label_noise > 0:
                shape = (B,) + tuple(self.energy.target.shape[-2:])
                noise = torch.randn(shape, generator=generator, dtype=ref.dtype, device=ref.device)
            return Minibatch(None, noise)
        if self.shuffler is not None:
            idx = self.shuffler.next(B, self.batch_size, generator, ref.device)
        else:
            w = self._weights
            if w.device != ref.device:  # copied to the accelerator once, not at every step
                w = self._weights = w.to(ref.device)
            w = w.expand(B, -1) if w.dim() == 1 or w.shape[0] == 1 else w
            idx = torch.multinomial(w.reshape(B, -1), self.batch_size, True, generator=generator)
        noise = None
        if self.label_noise > 0:
            noise = torch.randn(B, idx.shape[1], generator=generator, dtype=ref.dtype, device=ref.device)
        return Minibatch(idx, noise)

    def grad(self, X: torch.Tensor, mb: Minibatch) -> torch.Tensor:
        """G_hat (B, d_out, d_in) for the minibatch mb."""
        target, mask = self.energy.target.to(X.dtype), self.energy.mask.to(X.dtype)
        if mb.idx is None:
            R = X - target
            if mb.noise is not None:
                R = R - self.label_noise * mb.noise
            return mask * R
        B, shape = X.shape[0], X.shape[-2:]
        R = (X - target).reshape(B, -1)
        vals = R.gather(1, mb.idx)
        if mb.noise is not None:
            vals = vals - self.label_noise * mb.noise
        G = torch.zeros_like(R).scatter_add_(1, mb.idx, vals)
        if self._total.device != X.device or self._total.dtype != X.dtype:  # once per run, not per step
            self._total = self._total.to(device=X.device, dtype=X.dtype)
        scale = (self._total / mb.idx.shape[1]).reshape(-1, 1)  # b, or n mod b at the end of an epoch
        return (scale * G).reshape(B, *shape)

    def population(self, X: torch.Tensor, trajectory: int = 0):
        """For diagnostics at one X (d_out, d_in): (h (n, d_out, d_in), p (n,), J (n, 1, d_out, d_in), b, replacement).

        trajectory: which mask of a per-trajectory batch of masks to use.
        """
        M = self.energy.mask
        M = M[trajectory] if M.dim() == 3 and M.shape[0] > 1 else M.reshape(M.shape[-2:])
        T = self.energy.target
        T = T[trajectory] if T.dim() == 3 and T.shape[0] > 1 else T.reshape(T.shape[-2:])
        M, T = M.to(X.dtype), T.to(X.dtype)
        idx = M.flatten().nonzero().squeeze(-1)
        n = idx.numel()
        total = M.sum()
        E = torch.zeros(n, M.numel(), dtype=X.dtype, device=X.device)
        E[torch.arange(n), idx] = 1.0
        E = E.reshape(n, *M.shape)
        h = total * (X - T).flatten()[idx].reshape(n, 1, 1) * E
        p = M.flatten()[idx] / total
        b = n if self.batch_size is None else self.batch_size
        replacement = self.replacement if self.batch_size is not None else False
        return h, p, (total * E).unsqueeze(1), b, replacement


class RegressionSampler:
    """Minibatches of the n data columns of a LinearRegression energy (uniform; see the module docstring).

    Per-sample gradient h_j = (X a_j - y_j) a_j^T; label-noise directions J_jq = e_q a_j^T, q = 1..d_out.
    """

    def __init__(self, energy: LinearRegression, batch_size: int | None, replacement: bool = True, label_noise: float = 0.0):
        _check_batch_size(batch_size, replacement, label_noise)
        A, Y = energy.inputs, energy.outputs
        if A.dim() != 2 or Y.dim() != 2:
            raise ValueError("minibatch regression needs one data set shared by the ensemble: inputs (d_in, n), outputs (d_out, n)")
        n = A.shape[-1]
        if batch_size is not None and not replacement and batch_size > n:
            raise ValueError(f"batch_size {batch_size} exceeds the n = {n} samples; lower it or sample with replacement")
        self.energy, self.batch_size, self.replacement, self.label_noise = energy, batch_size, replacement, float(label_noise)
        self.n = n
        self.shuffler = EpochShuffler(torch.arange(n, device=A.device)) if batch_size is not None and not replacement else None

    def draw(self, B: int, generator: torch.Generator | None, ref: torch.Tensor) -> Minibatch:
        d_out = self.energy.outputs.shape[0]
        if self.batch_size is None:
            noise = None
            if self.label_noise > 0:
                noise = torch.randn(B, d_out, self.n, generator=generator, dtype=ref.dtype, device=ref.device)
            return Minibatch(None, noise)
        b = self.batch_size
        if self.shuffler is None:
            idx = torch.randint(0, self.n, (B, b), generator=generator, device=ref.device)
        else:
            idx = self.shuffler.next(B, b, generator, ref.device)
        noise = None
        if self.label_noise > 0:
            noise = torch.randn(B, idx.shape[1], d_out, generator=generator, dtype=ref.dtype, device=ref.device)
        return Minibatch(idx, noise)

    def grad(self, X: torch.Tensor, mb: Minibatch) -> torch.Tensor:
        A, Y = self.energy.inputs.to(X.dtype), self.energy.outputs.to(X.dtype)
        if mb.idx is None:
            G = X @ self.energy.sigma.to(X.dtype) - self.energy.cross.to(X.dtype)
            if mb.noise is not None:
                G = G - (self.label_noise / self.n) * (mb.noise @ A.T)
            return G
        Ab, Yb = A.T[mb.idx], Y.T[mb.idx]  # (B, b, d_in), (B, b, d_out)
        R = Ab @ X.mT - Yb
        if mb.noise is not None:
            R = R - self.label_noise * mb.noise
        return R.mT @ Ab / mb.idx.shape[1]  # b, or n mod b at the end of an epoch

    def population(self, X: torch.Tensor, trajectory: int = 0):
        """For diagnostics at one X (d_out, d_in): (h (n, d_out, d_in), p (n,), J (n, d_out, d_out, d_in), b, replacement)."""
        A, Y = self.energy.inputs.to(X.dtype), self.energy.outputs.to(X.dtype)
        R = X @ A - Y  # (d_out, n)
        h = R.T.unsqueeze(-1) * A.T.unsqueeze(-2)  # (n, d_out, d_in)
        d_out = Y.shape[0]
        eye = torch.eye(d_out, dtype=X.dtype, device=X.device)
        J = eye.reshape(1, d_out, d_out, 1) * A.T.reshape(self.n, 1, 1, -1)  # J[j, q] = e_q a_j^T
        p = torch.full((self.n,), 1.0 / self.n, dtype=X.dtype, device=X.device)
        b = self.n if self.batch_size is None else self.batch_size
        replacement = self.replacement if self.batch_size is not None else False
        return h, p, J, b, replacement


class _PlusDeterministic:
    """A sampler for E = E_sampled + E_rest: the minibatch estimate of grad E_sampled plus the exact
    grad E_rest (a regularizer such as WeightDecay on X): same noise, shifted mean."""

    def __init__(self, inner, rest: list[Energy], energy: Energy):
        self.inner, self.rest, self.energy = inner, rest, energy
        self.label_noise, self.batch_size, self.replacement = inner.label_noise, inner.batch_size, inner.replacement
        self.shuffler = inner.shuffler

    def draw(self, B, generator, ref):
        return self.inner.draw(B, generator, ref)

    def grad(self, X, mb):
        return self.inner.grad(X, mb) + sum(t.grad(X) for t in self.rest)

    def population(self, X, trajectory: int = 0):
        h, p, J, b, replacement = self.inner.population(X, trajectory)
        return h + sum(t.grad(X) for t in self.rest), p, J, b, replacement

    def check_batch(self, B: int) -> None:
        check = getattr(self.inner.energy, "check_batch", None)
        if check is not None:
            check(B)


def make_sampler(energy: Energy, batch_size: int | None, replacement: bool = True, label_noise: float = 0.0):
    """The minibatch sampler for an energy with samples: MatrixCompletion (entries) or LinearRegression
    (columns), or a SumEnergy of exactly one of those and deterministic terms (taken in full)."""
    if isinstance(energy, SumEnergy):
        sampled = [t for t in energy.terms if isinstance(t, (MatrixCompletion, LinearRegression))]
        if len(sampled) != 1:
            raise ValueError(
                f"minibatch SGD on a sum of energies needs exactly one term made of samples (matrix_completion or "
                f"linear_regression), got {len(sampled)}"
            )
        rest = [t for t in energy.terms if t is not sampled[0]]
        return _PlusDeterministic(make_sampler(sampled[0], batch_size, replacement, label_noise), rest, energy)
    if isinstance(energy, MatrixCompletion):
        return CompletionSampler(energy, batch_size, replacement, label_noise)
    if isinstance(energy, LinearRegression):
        return RegressionSampler(energy, batch_size, replacement, label_noise)
    raise ValueError(
        f"minibatch SGD needs an energy made of samples (energy.type: matrix_completion or linear_regression), got "
        f"{type(energy).__name__}; use gradient_descent for other energies"
    )


def _momentum(v, path):
    x = Num(ge=0)(v, path)
    if not x < 1:
        fail(path, f"must be < 1 (heavy-ball momentum mu in [0, 1)), got {v!r}")
    return x


_SCHEDULE_KEYS = ("warmup_steps", "step_every", "gamma", "total_steps", "min_factor")


class SGD(Scheme):
    """Minibatch SGD with label noise, weight decay lambda, heavy-ball momentum mu and a schedule.

    SGD(energy, step_size, depth, *, batch_size=None, replacement=True, label_noise=0.0,
        weight_decay=0.0, momentum=0.0, schedule=None, generator=None)
    energy: MatrixCompletion or LinearRegression (what is sampled), or their SumEnergy with
    deterministic terms (e.g. + WeightDecay on X: gradient taken in full). batch_size=None with no label
    noise is full-batch gradient descent (plus weight decay / momentum / schedule). Any widths.
    The momentum buffer v (one per layer, (B, d_p, d_{p-1})) starts at 0 at init_state and is part
    of the scheme's checkpointed cache.
    """

    name = "sgd"
    space = "parameters"
    stochastic = True
    # dynamics.options of the config; schedule is the kind, its parameters are options of their own
    option_spec = {
        "batch_size": Int(ge=1, nullable=True, hint="samples per step; null: full batch"),
        "replacement": Bool(),
        "label_noise": Num(ge=0, hint="std of the fresh label noise"),
        "weight_decay": Num(ge=0, hint="lambda in lambda/2 sum_p ||W_p||^2"),
        "momentum": _momentum,
        "schedule": Choice(SCHEDULES),
        "warmup_steps": Int(ge=0),
        "step_every": Int(ge=1),
        "gamma": Num(gt=0),
        "total_steps": Int(ge=1),
        "min_factor": Num(ge=0),
    }

    @classmethod
    def config_options(cls, options: dict, path: str = "dynamics.options") -> dict:
        out = super().config_options(options, path)
        kind = out.get("schedule", "constant")
        for k, owner in (("step_every", "step"), ("gamma", "step"), ("total_steps", "cosine"), ("min_factor", "cosine")):
            if k in out and kind != owner:
                fail(f"{path}.{k}", f"only applies to schedule: {owner} (schedule is {kind!r})")
        try:  # the schedule's own rules (step needs step_every, cosine total_steps, ...), named by key
            LRSchedule.of({"kind": out.get("schedule", "constant"), **{k: out[k] for k in _SCHEDULE_KEYS if k in out}})
        except ValueError as e:
            fail(f"{path}.schedule", str(e))
        return out

    @classmethod
    def from_config(cls, energy, step_size, depth, *, beta=None, generator=None, time_scale="none", options=None):
        kw = dict(options or {})
        sched = {k: kw.pop(k) for k in _SCHEDULE_KEYS if k in kw}
        kind = kw.pop("schedule", "constant")
        return cls(energy, step_size, depth, generator=generator, schedule={"kind": kind, **sched}, **kw)

    def __init__(self, energy: Energy, step_size: float, depth: int, *, batch_size: int | None = None,
                 replacement: bool = True, label_noise: float = 0.0, weight_decay: float = 0.0,
                 momentum: float = 0.0, schedule=None, generator: torch.Generator | None = None):
        super().__init__(energy, step_size, depth)
        self.sampler = make_sampler(energy, batch_size, replacement, label_noise)
        for name, v, hi in (("weight_decay", weight_decay, float("inf")), ("momentum", momentum, 1.0)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < hi:
                raise ValueError(f"{name} must be a number in [0, {hi:g}), got {v!r}")
        self.weight_decay, self.momentum = float(weight_decay), float(momentum)
        self.schedule = LRSchedule.of(schedule)
        self.stochastic = batch_size is not None or label_noise > 0
        self._own_generator = generator is None
        if generator is None:
            generator = torch.Generator()
            generator.seed()
        self.generator = generator
        self._velocity = None

    def init_state(self, weights=None, X=None) -> State:
        state = super().init_state(weights=weights, X=X)
        W0 = state.weights[0]
        check_batch = getattr(self.sampler, "check_batch", None) or getattr(self.energy, "check_batch", None)
        if check_batch is not None:
            check_batch(W0.shape[0])
        if self._own_generator and self.generator.device != W0.device:
            seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
            self.generator = torch.Generator(device=W0.device).manual_seed(seed)
        self._velocity = [torch.zeros_like(W) for W in state.weights] if self.momentum > 0 else None
        return state

    def cache_state(self) -> dict:
        """The base caches (momentum buffer) and the epoch state of sampling without replacement."""
        out = super().cache_state()
        if self.sampler.shuffler is not None:
            out["_epoch"] = self.sampler.shuffler.state()
        return out

    def load_cache_state(self, caches: dict) -> None:
        caches = dict(caches)
        epoch = caches.pop("_epoch", None)
        super().load_cache_state(caches)
        if epoch is not None and self.sampler.shuffler is not None:
            self.sampler.shuffler.load_state(epoch)

    def learning_rate(self, k: int) -> float:
        """h_k = step_size * schedule.factor(k)."""
        return self.step_size * self.schedule.factor(k)

    def step(self, state: State) -> State:
        h = self.learning_rate(state.step)
        ws = state.weights
        prefixes = prefix_products(ws)
        X = prefixes[-1]
        G = self.sampler.grad(X, self.sampler.draw(X.shape[0], self.generator, X))
        grads = gradient_from_end_to_end(ws, G.to(X.dtype), prefixes)
        if self.weight_decay > 0:
            grads = [g + self.weight_decay * W for g, W in zip(grads, ws)]
        if self._velocity is not None:
            self._velocity = [self.momentum * v - h * g for v, g in zip(self._velocity, grads)]
            state.weights = [W + v for W, v in zip(ws, self._velocity)]
        else:
            state.weights = [W - h * g for W, g in zip(ws, grads)]
        state.t += h
        state.step += 1
        return state
