"""The contract every integrator follows: a State, and a Scheme with `step(state) -> state`.

A scheme advances a whole ensemble (batch dim B first) by one step of size `step_size` and does
no host synchronisation (no `.item()`, no Python branching on tensor values), so that a run can
queue thousands of steps on a GPU. Per-trajectory counters a scheme keeps (rejections, Newton
iterations, ...) live in `state.stats` as (B,) tensors and are recorded like any observable.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .._checks import as_beta, check_beta
from ..energies import Energy
from ..options import ConfigError, check_options
from ..network import end_to_end

__all__ = ["State", "Scheme", "rk4_step", "check_beta", "as_beta", "dopri5_advance"]


@dataclass
class State:
    """Where an ensemble is.

    weights: [W_1, ..., W_N], W_p (B, d_p, d_{p-1}), for parameter-space schemes; None for
             schemes on the end-to-end matrix.
    X:       (B, d_N, d_0) for end-to-end schemes; None for parameter schemes (use end_to_end()).
    t:       time reached (a Python float: steps are deterministic in time, no sync needed).
    step:    number of steps taken.
    stats:   per-trajectory scheme statistics, each (B,).
    """

    weights: list[torch.Tensor] | None = None
    X: torch.Tensor | None = None
    t: float = 0.0
    step: int = 0
    stats: dict[str, torch.Tensor] = field(default_factory=dict)

    def end_to_end(self) -> torch.Tensor:
        return self.X if self.weights is None else end_to_end(self.weights)

    @property
    def batch_size(self) -> int:
        return (self.X if self.weights is None else self.weights[0]).shape[0]

    def state_dict(self) -> dict:
        return {"weights": self.weights, "X": self.X, "t": self.t, "step": self.step, "stats": dict(self.stats)}

    @classmethod
    def from_state_dict(cls, d: dict) -> "State":
        return cls(weights=d["weights"], X=d["X"], t=d["t"], step=d["step"], stats=dict(d["stats"]))


class AnnealedSVDScheme:
    """Shared by the schemes for X that step in the SVD frame of X (the RLE at finite and infinite depth).

    beta is settable between steps (annealing): validated on assignment, and the per-device copy that
    as_beta caches is dropped so the new value takes effect at the next step. The SVD factors computed
    at the end of a step are carried to the next one, and reused only while state.X is still the very
    tensor they describe (same object, unmodified: its _version is unchanged).
    """

    _carried = None  # (X, X._version, SVDFactors) of the last step

    @property
    def beta(self):
        return self._beta

    @beta.setter
    def beta(self, value) -> None:
        check_beta(value)
        self._beta = value
        self._beta_cache = {}

    def carried_factors(self, X: torch.Tensor):
        """The SVDFactors carried from the previous step if they describe X, else None."""
        c = self._carried
        return c[2] if c is not None and c[0] is X and c[1] == X._version else None

    def carry(self, X: torch.Tensor, factors) -> None:
        self._carried = (X, X._version, factors)


class Scheme:
    """Base class of integrators.

    Class attributes say what a scheme is (as data, not by branching); the run layer (config rules,
    builders, observables, theory) reads them and nothing else:
      name         its one name, the value of dynamics.scheme in a config;
      space        "parameters" (state.weights) or "end_to_end" (state.X);
      stochastic   draws noise (takes a generator);
      needs_beta   takes an inverse temperature (dynamics.beta must be set);
      square_only  the run layer requires square widths (the theory it is compared with is square);
      on_manifold  moves on the balanced manifold (starts from a balanced point);
      option_spec  {option: checker} of dynamics.options, checked by the config; {} takes none;
      reference_flow  its image under phi follows the end-to-end flow of E when it starts balanced (so the
                   Saxe modes and the end-to-end reference flow are its theory); False for flows that
                   add other forces (weight decay on parameters) or leave X fixed (balancing flows);
                   None passes them to the constructor, which checks them;
      stat_names   the per-trajectory counters it maintains in state.stats.
    """

    name: str = "scheme"
    space: str = "parameters"
    stochastic: bool = False
    needs_beta: bool = False
    square_only: bool = False
    on_manifold: bool = False
    option_spec: dict | None = {}
    reference_flow: bool = True
    stat_names: tuple[str, ...] = ()

    @classmethod
    def config_options(cls, options: dict, path: str = "dynamics.options") -> dict:
        """dynamics.options checked against option_spec (ConfigError naming the key on a mistake)."""
        if cls.option_spec is None:
            return dict(options)
        if not cls.option_spec and options:
            raise ConfigError(f"{path}: scheme {cls.name!r} takes no options, got {sorted(options)}")
        return check_options(options, cls.option_spec, path, f"scheme {cls.name!r}")

    @classmethod
    def from_config(cls, energy: Energy, step_size: float, depth: int, *, beta=None, generator=None,
                    time_scale: str = "none", options: dict | None = None) -> "Scheme":
        """The scheme from the run layer's values; keywords a scheme does not take are not passed."""
        kw = dict(options or {})
        if cls.space == "end_to_end":
            kw.setdefault("time_scale", time_scale)
        if cls.needs_beta:
            kw["beta"] = beta
        if cls.stochastic:
            kw["generator"] = generator
        return cls(energy, step_size, depth, **kw)

    def __init__(self, energy: Energy, step_size: float, depth: int):
        if not (isinstance(step_size, (int, float)) and step_size > 0 and step_size == step_size):
            raise ValueError(f"step_size must be a positive number, got {step_size!r}")
        self.energy = energy
        self.step_size = float(step_size)
        self.depth = int(depth)

    def init_state(self, weights: list[torch.Tensor] | None = None, X: torch.Tensor | None = None) -> State:
        """A fresh state at t = 0 from parameters (parameter schemes) or from X (end-to-end schemes)."""
        if self.space == "parameters":
            if weights is None:
                raise ValueError(f"{self.name} runs in parameter space: give it weights [W_1, ..., W_N]")
            state = State(weights=[W.detach().clone() for W in weights])
        else:
            if X is None:
                if weights is None:
                    raise ValueError(f"{self.name} runs on the end-to-end matrix: give it X or weights")
                X = end_to_end(weights)
            state = State(X=X.detach().clone())
        # An energy with data (target, mask, regression data) fixes (d_out, d_in): fail here with a
        # readable message rather than with a broadcasting error inside the first step.
        check_shape = getattr(self.energy, "check_shape", None)
        if check_shape is not None:
            ref_out = state.X if state.weights is None else state.weights[-1]
            ref_in = state.X if state.weights is None else state.weights[0]
            check_shape(ref_out.shape[-2], ref_in.shape[-1])
        B = state.batch_size
        ref = state.X if state.weights is None else state.weights[0]
        for k in self.stat_names:
            state.stats[k] = torch.zeros(B, dtype=ref.dtype, device=ref.device)
        return state

    def step(self, state: State) -> State:
        raise NotImplementedError

    def cache_state(self) -> dict:
        """Private per-run caches carried from one step to the next (attributes named `_*`).

        Schemes may keep, e.g., the SVD frame of the current X; the next step depends on it at
        roundoff level, so a checkpoint saves it (together with the state, so that tensor identity
        between cache and state survives pickling) and a resumed run is bit-identical on CPU.
        Generators are excluded: their state is saved through `generator.get_state()`.
        """
        return {k: v for k, v in vars(self).items()
                if k.startswith("_") and not isinstance(v, torch.Generator) and not callable(v)}

    def load_cache_state(self, caches: dict) -> None:
        for k, v in caches.items():
            setattr(self, k, v)


def rk4_step(f, y, h: float):
    """Classical RK4 for y' = f(y), y a tensor or a list of tensors."""
    if isinstance(y, torch.Tensor):
        return rk4_step(lambda v: [f(v[0])], [y], h)[0]
    add = lambda a, b, c: [ai + c * bi for ai, bi in zip(a, b)]  # noqa: E731
    k1 = f(y)
    k2 = f(add(y, k1, 0.5 * h))
    k3 = f(add(y, k2, 0.5 * h))
    k4 = f(add(y, k3, h))
    return [yi + (h / 6.0) * (a + 2 * b + 2 * c + d) for yi, a, b, c, d in zip(y, k1, k2, k3, k4)]


# Dormand-Prince 5(4) tableau (Dormand & Prince 1980; Hairer, Norsett & Wanner, Table II.5.2).
# The 7th stage is evaluated at the accepted 5th-order solution and is the next step's first
# stage (FSAL): 6 evaluations of f per attempted step.
_DP_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
)
_DP_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84)
# b(5th order) - b(4th order); the 7th (FSAL) stage enters the error only.
_DP_E = (71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40)
_SAFETY, _FAC_MIN, _FAC_MAX = 0.9, 0.2, 5.0


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1) in like's dtype, to scale a batch-first tensor trajectory-wise."""
    return v.to(like.dtype).reshape((-1,) + (1,) * (like.dim() - 1))


def _mask(m: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return m.reshape((-1,) + (1,) * (like.dim() - 1))


def _combine(y: list[torch.Tensor], h: torch.Tensor, coeffs, ks) -> list[torch.Tensor]:
    """[y_i + h * sum_j c_j k_j,i], with h (B,) a per-trajectory step."""
    out = []
    for i, yi in enumerate(y):
        acc = None
        for c, k in zip(coeffs, ks):
            if c != 0.0:
                acc = c * k[i] if acc is None else acc + c * k[i]
        out.append(yi if acc is None else yi + _bcast(h, yi) * acc)
    return out


def _rms(parts: list[torch.Tensor]) -> torch.Tensor:
    """Root mean square over all entries of each trajectory of a list of batch-first tensors: (B,)."""
    total = sum(p.reshape(p.shape[0], -1).square().sum(-1) for p in parts)
    n = sum(p[0].numel() for p in parts)
    return (total / n).to(torch.float64).sqrt()


def _initial_step(f, y, f0, t_span, rtol, atol) -> torch.Tensor:
    """Per-trajectory starting step (Hairer, Norsett & Wanner, section II.4, order 5): (B,) float64."""
    sc = [atol + rtol * yi.abs() for yi in y]
    d0 = _rms([yi / s for yi, s in zip(y, sc)])
    d1 = _rms([fi / s for fi, s in zip(f0, sc)])
    h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / d1)
    h0 = torch.minimum(h0, torch.full_like(h0, t_span))
    f1 = f(_combine(y, h0, (1.0,), (f0,)))
    d2 = _rms([(a - b) / s for a, b, s in zip(f1, f0, sc)]) / h0
    dmax = torch.maximum(d1, d2)
    h1 = torch.where(dmax <= 1e-15, torch.maximum(torch.full_like(h0, 1e-6), h0 * 1e-3), (0.01 / dmax) ** 0.2)
    return torch.minimum(torch.minimum(100 * h0, h1), torch.full_like(h0, t_span))


def dopri5_advance(f, y, t_span: float, h0=None, rtol: float = 1e-9, atol: float = 1e-12, max_substeps: int = 10000):
    """Advance every trajectory of y' = f(y) from t to t + t_span exactly, by adaptive Dormand-Prince 5(4).

    y: a tensor or a list of tensors, batch dim B first; f maps y to a like-shaped velocity and must
    act trajectory-wise (row b of f(y) depends on row b of y only). Every trajectory has its own step
    size and error norm  ||err||_b = rms over b's entries of err / (atol + rtol max(|y|, |y_new|)),
    accepts or rejects its own step (torch.where masks), and stops on t + t_span exactly (the last
    step is clipped). The whole batch is always passed to f (a finished or rejecting trajectory
    takes a zero or repeated step): energies with batch data and (B,) parameters such as beta keep
    their shapes. Step control: h <- h min(5, max(0.2, 0.9 ||err||^(-1/5))), no growth right after
    a rejection. h0: float, (B,) tensor, or None for the standard starting-step heuristic (one
    extra evaluation of f).

    Host syncs: one per substep (are all trajectories done?) -- the loop length is data dependent.
    Raises ValueError after max_substeps attempted substeps (rtol/atol too tight, or the flow
    diverged: a NaN error rejects forever).
    Returns (y_end like y, n_substeps (B,) accepted substeps, n_rejected (B,) rejected substeps).
    """
    single = isinstance(y, torch.Tensor)
    ys = [y] if single else list(y)
    fl = (lambda v: [f(v[0])]) if single else (lambda v: list(f(v)))  # noqa: E731
    B, dev = ys[0].shape[0], ys[0].device
    t_span = float(t_span)
    k1 = fl(ys)
    if h0 is None:
        h = _initial_step(fl, ys, k1, t_span, rtol, atol)
    else:
        h = torch.as_tensor(h0, dtype=torch.float64, device=dev).expand(B).clone()
    tau = torch.zeros(B, dtype=torch.float64, device=dev)
    n_acc = torch.zeros(B, dtype=torch.long, device=dev)
    n_rej = torch.zeros(B, dtype=torch.long, device=dev)
    just_rejected = torch.zeros(B, dtype=torch.bool, device=dev)
    done = torch.zeros(B, dtype=torch.bool, device=dev)
    for _ in range(int(max_substeps)):
        rem = t_span - tau
        last = h >= rem
        # finished trajectories take a zero step: their y, k1 and counters stay as they are
        h_eff = torch.where(done, torch.zeros_like(h), torch.minimum(h, rem))
        ks = [k1]
        for a in _DP_A[1:]:
            ks.append(fl(_combine(ys, h_eff, a, ks)))
        y_new = _combine(ys, h_eff, _DP_B, ks)
        k7 = fl(y_new)
        err = _combine([torch.zeros_like(yi) for yi in ys], h_eff, _DP_E, ks + [k7])
        norm = _rms([e / (atol + rtol * torch.maximum(yi.abs(), yn.abs())) for e, yi, yn in zip(err, ys, y_new)])
        accept = (norm <= 1.0) & ~done
        reject = ~accept & ~done
        fac = (_SAFETY * norm.pow(-0.2)).clamp(_FAC_MIN, _FAC_MAX)  # NaN norm -> NaN h -> rejects until max_substeps
        fac = torch.where(accept & just_rejected, fac.clamp(max=1.0), fac)
        h_next = h_eff * fac
        # a step clipped to land on t + t_span says nothing against the unclipped proposal
        h_next = torch.where(accept & last, torch.maximum(h_next, h), h_next)
        ys = [torch.where(_mask(accept, yi), yn, yi) for yi, yn in zip(ys, y_new)]
        k1 = [torch.where(_mask(accept, a), b, a) for a, b in zip(k1, k7)]
        tau = torch.where(accept, torch.where(last, torch.full_like(tau, t_span), tau + h_eff), tau)
        h = torch.where(done, h, h_next)
        n_acc += accept.long()
        n_rej += reject.long()
        just_rejected = torch.where(done, just_rejected, reject)
        done = done | (accept & last)
        if bool(done.all()):  # the one host sync per substep
            return (ys[0] if single else ys), n_acc, n_rej
    raise ValueError(
        f"dopri5: {int((~done).sum())} of {B} trajectories did not reach t + {t_span:g} in {max_substeps} substeps; "
        f"rtol={rtol:g}/atol={atol:g} are too tight for this step_size, or the flow diverged (raise max_substeps or the tolerances)"
    )
