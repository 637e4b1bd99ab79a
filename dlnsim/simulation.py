"""The one simulation loop: drive a scheme over an ensemble, record observables, check divergence.

    sim = Simulation(scheme, state, observer, save_every=10, reference=(EndToEndFlow(...), ref_state))
    sim.run(1000)                # may be called repeatedly (chunks); stops early on a stop request
    rec = sim.records()          # {"t": (T,), "loss": (T, B), "singular_values": (T, B, r), ...}
    rec = simulate(scheme, 1000, weights=W, save_every=10)   # the same in one call; rec.state: the final state

Both `dlnsim.simulate` and the CLI runner (dlnsim.runner) use this loop:
- a save point at step 0 (of a fresh state), at every multiple of save_every, and at the last step
  of each `run` call when it is not a multiple (the final state is always recorded);
- a reference scheme (the theory trajectory, e.g. the end-to-end flow from the same X(0)) advanced
  in lock-step; its singular values recorded as `reference_singular_values`, NaN from the step on
  which it stops being finite (it may blow up where the run does not; the run goes on);
- divergence check, one host sync per save point: if X or the loss is not finite, or a step's
  linear algebra fails, `Diverged` is raised (step, time, quantity, trajectories); the records so
  far are kept;
- `state_dict` / `load_state_dict`: the checkpoint (State.state_dict, scheme caches, observer
  memory, records), so that a resumed run on the CPU is bit-identical to an uninterrupted one.
Records are kept as one dict of (B, ...) tensors per save point and stacked when asked for; the
loop itself makes no host syncs between save points.
"""
from __future__ import annotations

import copy
import warnings
from typing import Callable

import numpy as np
import torch

from .dynamics.base import Scheme, State
from .observe import Observer

__all__ = ["Simulation", "simulate", "Diverged", "Records"]


class Diverged(Exception):
    """X or the loss stopped being finite (or a step's linear algebra failed) at `step`, time `t`."""
    def __init__(self, step: int, t: float, quantity: str, trajectories: list[int], detail: str = ""):
        self.step, self.t, self.quantity, self.trajectories = step, t, quantity, trajectories
        shown = trajectories[:5] + (["..."] if len(trajectories) > 5 else [])
        where = f" in trajectories {shown}" if trajectories else ""
        why = f" ({detail})" if detail else ""
        super().__init__(f"diverged at step {step} (t = {t:.6g}): {quantity} is not finite{where}{why}; "
                         "reduce dynamics.step_size")


class Records(dict):
    """The stacked records {name: (T, B, ...) tensor, "t": (T,)} of a simulation, with the final
    `state` (to continue from: simulate(other_scheme, n, state=rec.state)) and `diverged` (None, or
    the Diverged exception that stopped it)."""
    state: State | None = None
    diverged: Diverged | None = None


def _bad_rows(X: torch.Tensor) -> torch.Tensor:
    return ~torch.isfinite(X).flatten(1).all(dim=1)


def _fresh_tree(obj, device, memo: dict):
    """A copy of obj (dicts, lists, tuples, named tuples, plain objects) with every tensor replaced by
    a fresh copy on `device`, one copy per original tensor (memo by id).

    Why not the loaded tensors themselves: torch.load builds tensors with an in-place set_(), which
    bumps their version counter, and a scheme cache keyed on (tensor identity, tensor._version), as
    the RLE's carried SVD frame is, would then be discarded. A fresh copy has version 0, as the
    tensors produced by a step have.
    """
    key = id(obj)
    if key in memo:
        return memo[key]
    if isinstance(obj, torch.Tensor):
        out = obj.to(device).clone() if obj.is_floating_point() or obj.is_complex() or obj.dtype == torch.bool else obj.clone()
    elif isinstance(obj, dict):
        out = {k: _fresh_tree(v, device, memo) for k, v in obj.items()}
    elif isinstance(obj, list):
        out = [_fresh_tree(v, device, memo) for v in obj]
    elif isinstance(obj, tuple):
        items = [_fresh_tree(v, device, memo) for v in obj]
        out = type(obj)._make(items) if hasattr(obj, "_fields") else tuple(items)
    elif hasattr(obj, "__dict__") and not isinstance(obj, type):
        out = copy.copy(obj)
        for k, v in vars(obj).items():
            object.__setattr__(out, k, _fresh_tree(v, device, memo))
    else:
        out = obj
    memo[key] = out
    return out


def _cpu_state(state: State | None) -> dict | None:
    if state is None:
        return None
    sd = state.state_dict()
    cpu = lambda x: None if x is None else (x.cpu() if isinstance(x, torch.Tensor) else [w.cpu() for w in x])  # noqa: E731
    return {"weights": cpu(sd["weights"]), "X": cpu(sd["X"]), "t": sd["t"], "step": sd["step"],
            "stats": {k: v.cpu() for k, v in sd["stats"].items()}}


class Simulation:
    """A scheme, its state, an observer and the records: see the module docstring.

    reference: (scheme, state) of the theory trajectory, or None. check_finite: raise Diverged at a
    save point where X or the loss is not finite (one host sync per save point).
    """
    def __init__(self, scheme: Scheme, state: State, observer: Observer, save_every: int = 1,
                 reference: tuple[Scheme, State] | None = None, *, check_finite: bool = True, save_initial: bool = True):
        if isinstance(save_every, bool) or not isinstance(save_every, int) or save_every < 1:
            raise ValueError(f"save_every must be a positive integer, got {save_every!r}")
        self.scheme, self.state, self.observer, self.save_every = scheme, state, observer, save_every
        self.ref_scheme, self.ref_state = reference if reference is not None else (None, None)
        self.check_finite = check_finite
        # t = t0 + (step - step0) h, computed rather than accumulated (no drift: records slice by time)
        self.t0, self.step0 = float(state.t), int(state.step)
        self.stopped = False  # set by run() when a stop request ended it early
        self.saved: list[dict[str, torch.Tensor]] = []
        self.times: list[float] = []
        self.steps: list[int] = []
        if save_initial and state.step == 0:
            self.save()

    @property
    def reference(self) -> tuple[Scheme, State] | None:
        return None if self.ref_state is None else (self.ref_scheme, self.ref_state)

    # -- one save point ------------------------------------------------------------------------
    def save(self) -> None:
        st = self.state
        if self.check_finite:
            bad = _bad_rows(st.end_to_end())
            if bool(bad.any()):  # the one host sync of a save point
                raise Diverged(st.step, st.t, "X (the end-to-end matrix)", bad.nonzero().flatten().tolist())
        m = self.observer.measure(st, self.ref_state)
        if self.check_finite:
            bad = ~torch.isfinite(m["loss"]) if "loss" in m else None
            if bad is not None and bool(bad.any()):
                raise Diverged(st.step, st.t, "the loss E(X)", bad.nonzero().flatten().tolist())
        if self.ref_state is not None:
            # svdvals raises on non-finite input: NaN rows instead (the reference may blow up where the run does not)
            Xr = self.ref_state.end_to_end()
            ok = ~_bad_rows(Xr)
            sv = torch.linalg.svdvals(torch.where(ok[:, None, None], Xr, torch.zeros_like(Xr)))
            m["reference_singular_values"] = torch.where(ok[:, None], sv, torch.full_like(sv, float("nan")))
        self.saved.append(m)
        self.times.append(st.t)
        self.steps.append(st.step)

    # -- the loop ------------------------------------------------------------------------------
    def run(self, n_steps: int, callback: Callable[["Simulation"], None] | None = None, *, stop=None,
            on_step: Callable[[int], None] | None = None) -> "Simulation":
        """Advance n_steps steps (fewer if stop.signum is set: checked before each step), saving every
        save_every steps counted from step 0 and at the last step. callback(sim) runs after each save
        (progress bars, checkpoints); on_step(step) after each step. Raises Diverged."""
        end = self.state.step + n_steps
        self.stopped = False
        while self.state.step < end:
            if stop is not None and stop.signum is not None:
                self.stopped = True
                return self
            self._step()
            step = self.state.step
            if step % self.save_every == 0 or step == end:
                self.save()
                if callback is not None:
                    callback(self)
            if on_step is not None:
                on_step(step)
        return self

    def _step(self) -> None:
        try:
            self.state = self.scheme.step(self.state)
        except torch.linalg.LinAlgError as e:  # an SVD / solve met non-finite values: divergence
            bad = _bad_rows(self.state.end_to_end()).nonzero().flatten().tolist()
            raise Diverged(self.state.step + 1, self.state.t + self.scheme.step_size, "X (the end-to-end matrix)",
                           bad, f"the step failed: {str(e).splitlines()[0]}") from None
        self.state.t = self.t0 + (self.state.step - self.step0) * self.scheme.step_size
        if self.ref_scheme is not None:
            try:
                self.ref_state = self.ref_scheme.step(self.ref_state)
            except torch.linalg.LinAlgError:  # the reference flow blew up: NaN from here on
                self.ref_scheme = None
                self.ref_state.X = torch.full_like(self.ref_state.X, float("nan"))

    # -- output --------------------------------------------------------------------------------
    def records(self) -> Records:
        """Stack the saved measurements: "t" (T,) and every observable (T, B, ...), as torch tensors."""
        out = Records({k: torch.stack([c[k] for c in self.saved]) for k in self.saved[0]} if self.saved else {})
        ref = next(iter(out.values()), None)
        out["t"] = torch.tensor(self.times, dtype=torch.float64 if ref is None else ref.dtype)
        out.state = self.state
        return out

    def arrays(self) -> dict[str, np.ndarray]:
        """The records as numpy: "t" (T,) float64, "step" (T,) int64, every observable (T, B, ...)."""
        out = {"t": np.asarray(self.times, dtype=np.float64), "step": np.asarray(self.steps, dtype=np.int64)}
        for k in (self.saved[0] if self.saved else ()):
            out[k] = torch.stack([r[k] for r in self.saved]).cpu().numpy()
        return out

    # -- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The checkpoint payload (CPU tensors): state, reference state, scheme caches, observer memory, records."""
        G0 = self.observer.state_dict()["G0"]
        cpu = lambda x: None if x is None else (x.cpu() if isinstance(x, torch.Tensor) else [w.cpu() for w in x])  # noqa: E731
        return {
            # Pickled in the same payload as the state: see Scheme.cache_state.
            "scheme_private": self.scheme.cache_state(),
            "state": _cpu_state(self.state),
            "reference": _cpu_state(self.ref_state),
            "G0": cpu(G0),
            "records": {k: torch.stack([r[k] for r in self.saved]).cpu() for k in self.saved[0]},
            "times": list(self.times),
            "steps": list(self.steps),
            "t0": self.t0,
            "step0": self.step0,
        }

    def load_state_dict(self, ck: dict, device) -> None:
        # One shared memo: a tensor that the state and a scheme cache both hold stays one object.
        memo: dict = {}
        tree = lambda x: _fresh_tree(x, device, memo)  # noqa: E731
        self.state = State.from_state_dict(tree(ck["state"]))
        if ck["reference"] is not None and self.ref_scheme is not None:
            self.ref_state = State.from_state_dict(tree(ck["reference"]))
        else:
            self.ref_scheme, self.ref_state = None, None
        self.scheme.load_cache_state(tree(ck.get("scheme_private") or {}))
        # the observer measures balancedness drift against the initial G_p; restore it
        self.observer.load_state_dict({"G0": tree(ck["G0"])})
        records = tree(ck["records"])
        self.saved = [{k: v[i] for k, v in records.items()} for i in range(len(ck["times"]))]
        self.times, self.steps = list(ck["times"]), list(ck["steps"])
        self.t0, self.step0 = float(ck.get("t0", 0.0)), int(ck.get("step0", 0))


def simulate(
    scheme: Scheme,
    n_steps: int,
    *,
    weights: list[torch.Tensor] | None = None,
    X: torch.Tensor | None = None,
    state: State | None = None,
    save_every: int = 1,
    include=None,
    beta=None,
    reference: Scheme | None = None,
) -> Records:
    """One call: run `scheme` from weights (or X, or a State of an earlier run) for n_steps and
    return the records, with the final state as `.state`.

    reference: a scheme on the end-to-end matrix (e.g. EndToEndFlow) started from phi(weights)
    and advanced alongside; its distance to the run is recorded (docs/theory.md section 4). If the run
    diverges, the records up to the last finite save point come back with `.diverged` set (and a
    warning). Continuing from `state` (e.g. burn-in, then a smaller step): its step count and time
    go on, and its first save point is the next multiple of save_every.
    """
    if state is None:
        state = scheme.init_state(weights=weights, X=X)
    ref = None
    if reference is not None:
        ref = (reference, reference.init_state(weights=state.weights, X=state.X if state.weights is None else None))
    observer = Observer(scheme.energy, scheme.depth, include=include, beta=beta)
    sim = Simulation(scheme, state, observer, save_every, ref)
    diverged = None
    try:
        sim.run(n_steps)
    except Diverged as e:
        diverged = e
        warnings.warn(str(e), RuntimeWarning, stacklevel=2)
    rec = sim.records()
    rec.diverged = diverged
    return rec
