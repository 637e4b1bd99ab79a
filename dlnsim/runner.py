"""Run a resolved config: build the objects, drive the scheme, write the result folder.

    cfg = load_config("configs/saxe_modes.yaml")
    outcome = run(cfg)                       # -> Outcome(status, run_dir, message, exit_code)
    outcome = resume("results/saxe_modes-20250101-120000")

Factories (usable on their own, e.g. in a notebook): build_energy(cfg), build_network(cfg,
energy, generator), build_scheme(cfg, energy, generator), build_observer(cfg, energy).

The driver loop mirrors `dlnsim.simulation.Simulation` (save at every step that is a multiple of
observers.every, the end-to-end reference flow in lock-step) and adds what a long run needs:
- one host sync per save point, to check that X and the loss are finite (divergence stops the run
  with status 'diverged', the step, time and quantity, and keeps the data recorded so far);
- checkpoints (state, generator state, records) every output.checkpoint_every save points;
- SIGINT/SIGTERM: the current step finishes, everything recorded so far and a checkpoint are
  written, status 'interrupted', exit code 128 + signal (130 / 143). `resume` continues from the
  checkpoint; on CPU the resumed arrays are bit-identical to an uninterrupted run.
The last step is always a save point (an extra save if steps is not a multiple of every).

Test hooks (environment variables, for the test suite only): DLNSIM_TEST_INTERRUPT_AT_STEP=k sends
this process SIGINT (or DLNSIM_TEST_INTERRUPT_SIGNAL=TERM) after step k; DLNSIM_TEST_STEP_SLEEP=s
sleeps s seconds per step so that a test can signal a run from outside at a predictable point.
"""
from __future__ import annotations

import copy
import importlib
import math
import os
import shutil
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass

import numpy as np
import torch

from . import results as R
from .config import ENTROPY_MEASURED_AUTO_MAX, ConfigError, variant_configs
from .dynamics.base import Scheme, State
from .dynamics.gradient import EndToEndFlow, GradientDescent, GradientFlow
from .energies import Energy, LinearRegression, MatrixCompletion, MatrixRegression, WeightDecay
from .network import DeepLinearNetwork, random_orthogonal
from .observe import OBSERVABLES, Observer
from .safe_io import load_torch_tensors

__all__ = [
    "Outcome",
    "run",
    "resume",
    "build_energy",
    "build_network",
    "build_scheme",
    "build_observer",
    "energy_target",
    "beta_of",
    "saxe_reference",
    "read_weight_file",
    "EXIT_CODES",
]

# exit codes of `dlnsim run`: interrupted runs exit with 128 + the signal number instead.
EXIT_CODES = {"completed": 0, "failed": 1, "user_error": 2, "diverged": 3}

# name -> (module, class) for the stochastic schemes, imported when used.
_LAZY_SCHEMES = {
    "langevin_projected": ("dlnsim.dynamics.langevin", "ProjectedLangevin"),
    "langevin_metropolis": ("dlnsim.dynamics.langevin", "MetropolisLangevin"),
    "langevin_unprojected": ("dlnsim.dynamics.langevin", "UnprojectedLangevin"),
    "rle": ("dlnsim.dynamics.rle", "RiemannianLangevin"),
}


@dataclass
class Outcome:
    status: str  # completed | interrupted | diverged | failed
    run_dir: str
    message: str = ""
    exit_code: int = 0


# ---------------------------------------------------------------------------------------------
# factories
# ---------------------------------------------------------------------------------------------


def _device_dtype(cfg: dict) -> tuple[torch.device, torch.dtype]:
    dev = cfg["device"]["device"]
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(dev), getattr(torch, cfg["device"]["dtype"])


def beta_of(cfg: dict, device=None, dtype=torch.float64):
    """dynamics.beta as the schemes take it: None, a float, or a (B,) tensor for a list of betas
    (trajectory b has beta[b // ensemble])."""
    beta = cfg["dynamics"]["beta"]
    if beta is None or not isinstance(beta, list):
        return beta
    return torch.tensor(beta, dtype=dtype, device=device).repeat_interleave(cfg["dynamics"]["ensemble"])


def batch_size(cfg: dict) -> int:
    beta = cfg["dynamics"]["beta"]
    return cfg["dynamics"]["ensemble"] * (len(beta) if isinstance(beta, list) else 1)


def energy_target(cfg: dict) -> torch.Tensor | None:
    """The target matrix Phi (d_N, d_0) of the energy (float64, CPU), or None for weight_decay."""
    en, widths = cfg["energy"], cfg["network"]["widths"]
    if en["type"] == "weight_decay":
        return None
    d_in, d_out = widths[0], widths[-1]
    r = min(d_in, d_out)
    t = en["target"]
    if isinstance(t, list):
        return torch.tensor(t, dtype=torch.float64)
    if t == "identity":
        return torch.eye(d_out, d_in, dtype=torch.float64)
    if t == "diag":
        s = torch.ones(r, dtype=torch.float64) if en["spectrum"] is None else torch.tensor(en["spectrum"], dtype=torch.float64)
        out = torch.zeros(d_out, d_in, dtype=torch.float64)
        out[range(r), range(r)] = s
        return out
    # random: Haar U, V from energy.seed, independent of the dynamics' generator and device
    g = torch.Generator().manual_seed(en["seed"])
    s = (torch.arange(r, 0, -1, dtype=torch.float64) if en["spectrum"] is None
         else torch.tensor(en["spectrum"], dtype=torch.float64))
    U = random_orthogonal((), d_out, generator=g)[:, :r]
    V = random_orthogonal((), d_in, generator=g)[:, :r]
    return (U * s) @ V.T


def build_energy(cfg: dict, device=None, dtype=None) -> Energy:
    """The Energy of cfg['energy'] (data on device/dtype; defaults from cfg['device'])."""
    if device is None or dtype is None:
        d, t = _device_dtype(cfg)
        device, dtype = device or d, dtype or t
    en = cfg["energy"]
    Phi = energy_target(cfg)
    if en["type"] == "matrix_regression":
        energy = MatrixRegression(Phi)
    elif en["type"] == "weight_decay":
        energy = WeightDecay(en["alpha"])
    elif en["type"] == "matrix_completion":
        m = en["mask"]
        d_out, d_in = Phi.shape
        if m == "diag":
            mask = torch.eye(d_out, d_in, dtype=torch.float64)
        elif m == "offdiag":
            mask = 1.0 - torch.eye(d_out, d_in, dtype=torch.float64)
        else:
            mask = torch.tensor(m, dtype=torch.float64)
        energy = MatrixCompletion(Phi, mask)
    else:  # linear_regression
        if en["data"] is not None:
            with np.load(en["data"]) as z:
                A, Y = torch.as_tensor(z["inputs"], dtype=torch.float64), torch.as_tensor(z["outputs"], dtype=torch.float64)
        else:
            g = torch.Generator().manual_seed(en["seed"] + 1)
            A = torch.randn(Phi.shape[1], en["n_samples"], dtype=torch.float64, generator=g)
            Y = Phi @ A + en["noise"] * torch.randn(Phi.shape[0], en["n_samples"], dtype=torch.float64, generator=g)
        energy = LinearRegression(A, Y)
    return energy.to(dtype=dtype, device=device)


def read_weight_file(path: str) -> list[torch.Tensor]:
    """Weights [W_1..W_N] from a .pt (list, or dict with 'weights') or .npz (W1..WN or W_1..W_N)."""
    if not os.path.isfile(path):
        raise ConfigError(f"network.file: no such file {path}")
    if path.endswith(".npz"):
        with np.load(path) as z:
            keys = sorted((k for k in z.files if k.lstrip("W_").isdigit()), key=lambda k: int(k.lstrip("W_")))
            if not keys:
                raise ConfigError(f"network.file: {path} holds no arrays named W1..WN (or W_1..W_N)")
            ws = [torch.as_tensor(z[k], dtype=torch.float64) for k in keys]
    else:
        obj = load_torch_tensors(path, "network.file")  # weights_only: never unpickles objects
        if isinstance(obj, dict):
            obj = obj.get("weights")
        if not isinstance(obj, (list, tuple)) or not obj or not all(isinstance(w, torch.Tensor) for w in obj):
            raise ConfigError(f"network.file: {path} must hold a list of tensors [W_1, ..., W_N] (or {{'weights': [...]}})")
        ws = [w.to(torch.float64) for w in obj]
    for p, W in enumerate(ws, start=1):
        if W.dim() not in (2, 3):
            raise ConfigError(f"network.file: W_{p} must have shape (d_p, d_(p-1)) or (B, d_p, d_(p-1)), got {tuple(W.shape)}")
    return ws


def _initial_X(cfg: dict, B: int, generator, device, dtype) -> torch.Tensor | None:
    """X(0) for a balanced init (None: the network's own random U diag(spectrum) V^T)."""
    net = cfg["network"]
    t, d = net["target"], net["widths"][0]
    if t is None:
        return None
    if t == "gaussian":
        return net["scale"] * torch.randn(B, d, d, generator=generator, dtype=dtype, device=device) / math.sqrt(d)
    if t == "aligned":
        U, lam, Vh = torch.linalg.svd(energy_target(cfg))
        return ((U * initial_spectrum(cfg)) @ Vh).to(dtype=dtype, device=device)
    return torch.tensor(t, dtype=dtype, device=device)


def build_network(cfg: dict, energy: Energy | None = None, generator: torch.Generator | None = None) -> DeepLinearNetwork:
    """The initial ensemble (batch = ensemble x number of betas) of cfg['network']."""
    device, dtype = _device_dtype(cfg)
    net, B = cfg["network"], batch_size(cfg)
    if net["init"] == "file":
        ws = [w.to(dtype=dtype, device=device) for w in read_weight_file(net["file"])]
        ws = [w.unsqueeze(0) if w.dim() == 2 else w for w in ws]
        for p, w in enumerate(ws, start=1):
            if w.shape[0] not in (1, B):
                raise ConfigError(f"network.file: W_{p} has batch {w.shape[0]}, the run has {B} trajectories (give 1 or {B})")
        return DeepLinearNetwork.from_weights([w.expand(B, -1, -1) for w in ws], requires_grad=False)
    kw = {}
    if net["init"] == "balanced":
        kw = dict(target=_initial_X(cfg, B, generator, device, dtype), spectrum=net["spectrum"])
    return DeepLinearNetwork(net["widths"], B, net["init"], net["scale"], dtype=dtype, device=device, generator=generator, **kw)


def build_scheme(cfg: dict, energy: Energy, generator: torch.Generator | None = None, beta=None) -> Scheme:
    """The Scheme of cfg['dynamics'] (stochastic ones draw all noise from `generator`)."""
    dyn = cfg["dynamics"]
    name, h, N = dyn["scheme"], dyn["step_size"], cfg["network"]["depth"]
    if beta is None:
        beta = beta_of(cfg, *_device_dtype(cfg))
    if name == "gradient_descent":
        return GradientDescent(energy, h, N)
    flow = dict(dyn["options"])  # method/rtol/atol/max_substeps, validated by config._flow_options
    if name == "gradient_flow":
        return GradientFlow(energy, h, N, **flow)
    if name == "end_to_end_flow":
        return EndToEndFlow(energy, h, N, time_scale=dyn["time_scale"], **flow)
    if name == "free_energy_flow":
        return EndToEndFlow(energy, h, N, time_scale=dyn["time_scale"], beta=beta, **flow)
    module, cls_name = _LAZY_SCHEMES[name]
    try:
        cls = getattr(importlib.import_module(module), cls_name)
    except (ImportError, AttributeError):
        raise ConfigError(f"dynamics.scheme: {name!r} is not available in this installation ({module}.{cls_name} is missing)") from None
    options = dict(dyn["options"])
    if name == "rle" and dyn["time_scale"] != "none":
        options.setdefault("time_scale", dyn["time_scale"])
    try:
        return cls(energy, h, N, beta, generator=generator, **options)
    except (TypeError, ValueError) as e:
        key = "dynamics.options" if dyn["options"] else "dynamics"
        raise ConfigError(f"{key}: {cls_name}: {str(e).splitlines()[0]}") from None


def _include(cfg: dict, scheme: Scheme) -> list[str]:
    obs, widths = cfg["observers"], cfg["network"]["widths"]
    # default: every observable but X itself (T x B x d^2 numbers)
    include = list(obs["include"]) if obs["include"] is not None else [k for k in OBSERVABLES if k != "X"]
    d, N = widths[0], len(widths) - 1
    square = all(w == d for w in widths)
    want = obs["entropy_measured"]
    measured = scheme.space == "parameters" and square and (
        want == "true" or (want == "auto" and (N - 1) * d * (d - 1) // 2 <= ENTROPY_MEASURED_AUTO_MAX)
    )
    include = [k for k in include if k != "entropy_measured"] + (["entropy_measured"] if measured else [])
    # the loss is always recorded: the divergence check and every figure read it
    return include if "loss" in include else ["loss"] + include


def build_observer(cfg: dict, energy: Energy, scheme: Scheme | None = None, beta=None) -> Observer:
    if scheme is None:
        scheme = build_scheme(cfg, energy)
    if beta is None:
        beta = beta_of(cfg, *_device_dtype(cfg))
    return Observer(energy, cfg["network"]["depth"], include=_include(cfg, scheme), beta=beta)


def _wants_reference(cfg: dict) -> bool:
    dyn, widths = cfg["dynamics"], cfg["network"]["widths"]
    square = all(w == widths[0] for w in widths)
    if dyn["theory"] == "false":
        return False
    return dyn["scheme"] in ("gradient_descent", "gradient_flow") and square and len(widths) > 1


def initial_spectrum(cfg: dict) -> torch.Tensor:
    """Singular values (d,) of a balanced X(0): network.spectrum, or all equal to network.scale."""
    net = cfg["network"]
    if net["spectrum"] is not None:
        return torch.tensor(net["spectrum"], dtype=torch.float64)
    return torch.full((net["widths"][0],), float(net["scale"]), dtype=torch.float64)


def saxe_setting(cfg: dict) -> bool:
    """Is the run in the setting of the closed-form Saxe modes: matrix regression, a balanced start
    aligned with the target, a deterministic gradient scheme?"""
    net = cfg["network"]
    return (cfg["energy"]["type"] == "matrix_regression" and net["init"] == "balanced" and net["target"] == "aligned"
            and cfg["dynamics"]["scheme"] in ("gradient_descent", "gradient_flow", "end_to_end_flow"))


def saxe_reference(cfg: dict, t: np.ndarray) -> np.ndarray | None:
    """Closed-form singular values (T, r) (Saxe modes, descending) when saxe_setting(cfg)."""
    if not saxe_setting(cfg):
        return None
    from .theory import saxe_mode

    net, dyn = cfg["network"], cfg["dynamics"]
    lam = torch.linalg.svdvals(energy_target(cfg))
    N = net["depth"]
    u0 = initial_spectrum(cfg)
    scale = 1.0 / N if dyn["time_scale"] == "depth" else 1.0
    tt = torch.as_tensor(t, dtype=torch.float64).unsqueeze(-1) * scale
    u = saxe_mode(tt, lam, u0, N)
    return u.sort(dim=-1, descending=True).values.numpy()


# ---------------------------------------------------------------------------------------------
# the driver
# ---------------------------------------------------------------------------------------------


class _Diverged(Exception):
    def __init__(self, step: int, t: float, quantity: str, trajectories: list[int], detail: str = ""):
        self.step, self.t, self.quantity, self.trajectories = step, t, quantity, trajectories
        shown = trajectories[:5] + (["..."] if len(trajectories) > 5 else [])
        where = f" in trajectories {shown}" if trajectories else ""
        why = f" ({detail})" if detail else ""
        super().__init__(f"diverged at step {step} (t = {t:.6g}): {quantity} is not finite{where}{why}; "
                         "reduce dynamics.step_size")


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


class _Stop:
    """Set by the signal handler; the loop stops after the current step."""

    def __init__(self):
        self.signum: int | None = None

    def handler(self, signum, frame):
        if self.signum is not None:  # a second signal: stop now, the default way
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        self.signum = signum


class _Driver:
    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.device, self.dtype = _device_dtype(cfg)
        self.every = cfg["observers"]["every"]
        self.n_steps = cfg["dynamics"]["steps"]
        self.generator = torch.Generator(device=self.device).manual_seed(cfg["dynamics"]["seed"])
        self.energy = build_energy(cfg, self.device, self.dtype)
        self.beta = beta_of(cfg, self.device, self.dtype)
        self.scheme = build_scheme(cfg, self.energy, self.generator, self.beta)
        self.observer = build_observer(cfg, self.energy, self.scheme, self.beta)
        # the reference flow of an adaptive gradient flow is integrated to the same tolerances
        ref_opts = dict(cfg["dynamics"]["options"]) if cfg["dynamics"]["scheme"] == "gradient_flow" else {}
        self.ref_scheme = EndToEndFlow(self.energy, cfg["dynamics"]["step_size"], cfg["network"]["depth"], **ref_opts) if _wants_reference(cfg) else None
        self.records: list[dict[str, torch.Tensor]] = []
        self.times: list[float] = []
        self.steps: list[int] = []
        self.state: State | None = None
        self.ref_state: State | None = None

    # -- start ------------------------------------------------------------------------------
    def fresh(self) -> None:
        net = build_network(self.cfg, self.energy, self.generator)
        weights = [W.detach() for W in net.weights]
        self.state = self.scheme.init_state(weights=weights)
        if self.ref_scheme is not None:
            self.ref_state = self.ref_scheme.init_state(weights=weights)
        self._save()

    def restore(self, ck: dict) -> None:
        # One shared memo: a tensor that the state and a scheme cache both hold stays one object.
        memo: dict = {}
        tree = lambda x: _fresh_tree(x, self.device, memo)  # noqa: E731
        st = tree(ck["state"])
        self.state = State(weights=st["weights"], X=st["X"], t=st["t"], step=st["step"], stats=st["stats"])
        if ck["reference"] is not None:
            rs = tree(ck["reference"])
            self.ref_state = State(weights=rs["weights"], X=rs["X"], t=rs["t"], step=rs["step"], stats=rs["stats"])
        self.generator.set_state(ck["generator"])
        self.scheme.load_cache_state(tree(ck.get("scheme_private") or {}))
        # the observer measures balancedness drift against the initial G_p; restore it
        self.observer.load_state_dict({"G0": tree(ck["G0"])})
        records = tree(ck["records"])
        self.records = [{k: v[i] for k, v in records.items()} for i in range(len(ck["times"]))]
        self.times, self.steps = list(ck["times"]), list(ck["steps"])

    def checkpoint(self) -> dict:
        cpu = lambda x: None if x is None else (x.cpu() if isinstance(x, torch.Tensor) else [w.cpu() for w in x])  # noqa: E731
        sd = lambda s: None if s is None else {  # noqa: E731
            "weights": cpu(s.weights), "X": cpu(s.X), "t": s.t, "step": s.step, "stats": {k: v.cpu() for k, v in s.stats.items()}}
        G0 = self.observer.state_dict()["G0"]
        return {
            # Pickled in the same payload as the state: see Scheme.cache_state.
            "scheme_private": self.scheme.cache_state(),
            "state": sd(self.state),
            "reference": sd(self.ref_state),
            "generator": self.generator.get_state(),
            "G0": cpu(G0) if G0 is not None else None,
            "records": {k: torch.stack([r[k] for r in self.records]).cpu() for k in self.records[0]},
            "times": list(self.times),
            "steps": list(self.steps),
        }

    # -- loop -------------------------------------------------------------------------------
    def _save(self) -> None:
        st = self.state
        X = st.end_to_end()
        bad = ~torch.isfinite(X).flatten(1).all(dim=1)
        if bool(bad.any()):  # the one host sync of a save point
            raise _Diverged(st.step, st.t, "X (the end-to-end matrix)", bad.nonzero().flatten().tolist())
        m = self.observer.measure(st, self.ref_state)
        bad = ~torch.isfinite(m["loss"])
        if bool(bad.any()):
            raise _Diverged(st.step, st.t, "the loss E(X)", bad.nonzero().flatten().tolist())
        if self.ref_state is not None:
            # The reference flow may blow up where the run does not (same h, different scheme): record
            # NaN for it rather than stop the run (svdvals raises on non-finite input).
            Xr = self.ref_state.end_to_end()
            ok = torch.isfinite(Xr).flatten(1).all(dim=1)
            sv = torch.linalg.svdvals(torch.where(ok[:, None, None], Xr, torch.zeros_like(Xr)))
            m["reference_singular_values"] = torch.where(ok[:, None], sv, torch.full_like(sv, float("nan")))
        self.records.append(m)
        self.times.append(st.t)
        self.steps.append(st.step)

    def loop(self, stop: _Stop, on_save) -> str:
        """Advance to dynamics.steps; returns 'completed' or 'interrupted' (raises _Diverged)."""
        test_at = int(os.environ.get("DLNSIM_TEST_INTERRUPT_AT_STEP", "-1"))
        test_sig = signal.SIGTERM if os.environ.get("DLNSIM_TEST_INTERRUPT_SIGNAL", "INT") == "TERM" else signal.SIGINT
        sleep = float(os.environ.get("DLNSIM_TEST_STEP_SLEEP", "0"))
        scheme, ref_scheme = self.scheme, self.ref_scheme
        while self.state.step < self.n_steps:
            if stop.signum is not None:
                return "interrupted"
            try:
                self.state = scheme.step(self.state)
            except torch.linalg.LinAlgError as e:  # an SVD / solve met non-finite values: divergence
                X = self.state.end_to_end()
                bad = (~torch.isfinite(X).flatten(1).all(dim=1)).nonzero().flatten().tolist()
                raise _Diverged(self.state.step + 1, self.state.t + scheme.step_size, "X (the end-to-end matrix)",
                                bad, f"the step failed: {str(e).splitlines()[0]}") from None
            if ref_scheme is not None:
                try:
                    self.ref_state = ref_scheme.step(self.ref_state)
                except torch.linalg.LinAlgError:
                    # the reference flow blew up (where the run may not): record NaN from here on
                    ref_scheme = self.ref_scheme = None
                    self.ref_state.X = torch.full_like(self.ref_state.X, float("nan"))
            step = self.state.step
            if step % self.every == 0 or step == self.n_steps:
                self._save()
                on_save(self)
            if step == test_at:
                os.kill(os.getpid(), test_sig)
            if sleep:
                time.sleep(sleep)
        return "completed"

    # -- output -----------------------------------------------------------------------------
    def arrays(self) -> dict[str, np.ndarray]:
        out = {"t": np.asarray(self.times, dtype=np.float64), "step": np.asarray(self.steps, dtype=np.int64)}
        if self.records:
            for k in self.records[0]:
                out[k] = torch.stack([r[k] for r in self.records]).cpu().numpy()
        if isinstance(self.beta, torch.Tensor):
            out["beta"] = self.beta.cpu().numpy()
        elif self.beta is not None:
            out["beta"] = np.full(batch_size(self.cfg), float(self.beta))
        saxe = saxe_reference(self.cfg, out["t"]) if len(self.times) else None
        if saxe is not None:
            out["saxe_singular_values"] = saxe
        return out


# ---------------------------------------------------------------------------------------------
# runs and studies
# ---------------------------------------------------------------------------------------------


def _progress(total: int, initial: int, desc: str, quiet: bool):
    from tqdm import tqdm

    disable = quiet or not sys.stderr.isatty()
    return tqdm(total=total, initial=initial, desc=desc, unit="step", disable=disable,
                leave=False, file=sys.stderr)


def _write_data(run_dir: str, drv: _Driver) -> None:
    arrays = drv.arrays()
    R.write_arrays(run_dir, arrays)
    R.write_metrics(run_dir, arrays)


def _figures(run_dir: str, cfg: dict, quiet: bool) -> list[str]:
    if not cfg["output"]["figures"]:
        return []
    from .plotting import plot_run

    return plot_run(run_dir, formats=cfg["output"]["formats"])


def _copy_showcase(cfg: dict, figures: list[str], quiet: bool) -> None:
    dest = cfg["output"]["showcase"]
    pngs = [f for f in figures if f.endswith(".png")]
    if dest and pngs:
        os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
        shutil.copyfile(pngs[0], dest)
        if not quiet:
            print(f"dlnsim: figure copied to {dest}", file=sys.stderr)


def _install_signals(stop: _Stop):
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {s: signal.signal(s, stop.handler) for s in (signal.SIGINT, signal.SIGTERM)}


def _restore_signals(old: dict) -> None:
    for s, h in old.items():
        signal.signal(s, h)


def _run_one(cfg: dict, run_dir: str, quiet: bool, stop: _Stop, figures: bool, desc: str) -> Outcome:
    """Run (or resume) one run folder whose config.yaml and meta.json exist."""
    if cfg["device"]["threads"]:
        torch.set_num_threads(cfg["device"]["threads"])
    t0 = time.time()
    meta = R.read_meta(run_dir)
    drv = _Driver(cfg)
    ck = R.load_checkpoint(run_dir) if meta.get("status") != "completed" and meta.get("started") else None
    if ck is not None:
        drv.restore(ck)
        R.update_meta(run_dir, resumed=meta.get("resumed", []) + [R.now()], status="running")
    else:
        drv.fresh()
        R.update_meta(run_dir, started=True, status="running")
    ck_every = cfg["output"]["checkpoint_every"]
    bar = _progress(drv.n_steps, drv.state.step, desc, quiet)
    last = [drv.state.step]

    def on_save(d: _Driver) -> None:
        bar.update(d.state.step - last[0])
        last[0] = d.state.step
        if not bar.disable:
            bar.set_postfix(loss=f"{float(d.records[-1]['loss'].mean()):.3g}", refresh=False)
        if ck_every and len(d.records) % ck_every == 0 and d.state.step < d.n_steps:
            R.save_checkpoint(run_dir, d.checkpoint())

    fields: dict = {}
    try:
        status = drv.loop(stop, on_save)
        message = "" if status == "completed" else f"interrupted by signal {signal.Signals(stop.signum).name} at step {drv.state.step} (t = {drv.state.t:.6g}); continue with: dlnsim run --resume {run_dir}"
    except _Diverged as e:
        status, message = "diverged", str(e)
        fields["diverged"] = {"step": e.step, "t": e.t, "quantity": e.quantity, "trajectories": e.trajectories}
    finally:
        bar.close()
    _write_data(run_dir, drv)
    if status == "interrupted":
        R.save_checkpoint(run_dir, drv.checkpoint())
    elif os.path.exists(os.path.join(run_dir, R.CHECKPOINT)):
        os.remove(os.path.join(run_dir, R.CHECKPOINT))  # nothing left to resume
    figs: list[str] = []
    if figures and status in ("completed", "diverged") and drv.records:
        figs = _figures(run_dir, cfg, quiet)
        if status == "completed":
            _copy_showcase(cfg, figs, quiet)
    wall = meta.get("wall_time_s", 0.0) + time.time() - t0
    R.update_meta(run_dir, end_time=R.now(), wall_time_s=round(wall, 3), steps_done=drv.state.step,
                  t_reached=drv.state.t, n_saved=len(drv.records), message=message, **fields, status=status)
    code = 128 + stop.signum if status == "interrupted" else EXIT_CODES[status]
    return Outcome(status, run_dir, message, code)


def _new_meta(cfg: dict, kind: str) -> dict:
    device, dtype = _device_dtype(cfg) if kind == "run" else (cfg["device"]["device"], cfg["device"]["dtype"])
    meta = R.environment()
    meta.update(kind=kind, study=kind == "study", device=str(device), dtype=str(dtype).replace("torch.", ""),
                seed=cfg["dynamics"]["seed"], start_time=R.now(), status="running")
    return meta


def _prepare(run_dir: str | None, cfg: dict) -> str:
    if run_dir is None:
        return R.make_run_dir(cfg["output"]["dir"], cfg["output"]["name"])
    if os.path.exists(run_dir) and (not os.path.isdir(run_dir) or os.listdir(run_dir)):
        raise ConfigError(f"--out {run_dir}: exists and is not an empty folder; results are never overwritten (choose a new folder)")
    os.makedirs(run_dir, exist_ok=True)
    return run_dir


def _fail_dir(run_dir: str, exc: BaseException, user: bool) -> Outcome:
    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    try:
        R.update_meta(run_dir, end_time=R.now(), message=msg,
                      **({} if user else {"traceback": traceback.format_exc()}), status="failed")
    except OSError:
        pass
    return Outcome("failed", run_dir, msg, EXIT_CODES["user_error" if user else "failed"])


def run(cfg: dict, run_dir: str | None = None, *, quiet: bool = False) -> Outcome:
    """Run a resolved config (a plain run or a study) into a new result folder.

    run_dir: the folder to write (must not exist or be empty); default <output.dir>/<name>-<stamp>.
    Errors in the config surface as ConfigError before any folder is created. Returns the Outcome;
    library ValueErrors during the run mark the folder 'failed' (exit code 2).
    """
    variants = variant_configs(cfg)
    if not variants:
        # build everything once before creating the folder, so that errors leave nothing behind
        _Driver(cfg)
    run_dir = _prepare(run_dir, cfg)
    R.write_config(run_dir, cfg)
    R.write_meta(run_dir, _new_meta(cfg, "study" if variants else "run"))
    return _execute(run_dir, cfg, variants, quiet)


def resume(run_dir: str, *, quiet: bool = False) -> Outcome:
    """Continue an interrupted run or study folder from its checkpoint(s)."""
    from .config import validate

    if not os.path.isdir(run_dir) or not os.path.exists(os.path.join(run_dir, R.META)):
        raise ConfigError(f"--resume {run_dir}: not a dlnsim result folder (no meta.json)")
    meta = R.read_meta(run_dir)
    if meta.get("status") == "completed":
        raise ConfigError(f"--resume {run_dir}: the run is already completed")
    if meta.get("status") == "diverged" and not meta.get("study"):
        raise ConfigError(f"--resume {run_dir}: the run diverged; start a new run with a smaller dynamics.step_size")
    cfg = validate(R.read_config(run_dir))
    R.update_meta(run_dir, commands=meta.get("commands", []) + [R.environment()["command"]], status="running")
    return _execute(run_dir, cfg, variant_configs(cfg), quiet)


def _execute(run_dir: str, cfg: dict, variants, quiet: bool) -> Outcome:
    stop = _Stop()
    old = _install_signals(stop)
    try:
        if not variants:
            try:
                out = _run_one(cfg, run_dir, quiet, stop, True, cfg["output"]["name"])
            except ValueError as e:
                return _fail_dir(run_dir, e, user=True)
            except Exception as e:  # a bug: keep the traceback in meta.json and re-raise
                _fail_dir(run_dir, e, user=False)
                raise
        else:
            out = _run_study(cfg, run_dir, variants, quiet, stop)
    finally:
        _restore_signals(old)
    if not quiet:
        print(f"dlnsim: {out.status}: {run_dir}" + (f" ({out.message})" if out.message else ""), file=sys.stderr)
    return out


def _run_study(cfg: dict, run_dir: str, variants, quiet: bool, stop: _Stop) -> Outcome:
    t0 = time.time()
    meta = R.read_meta(run_dir)
    statuses = {v["label"]: v["status"] for v in meta.get("variants", [])}
    outcomes: list[Outcome] = []
    for label, sub in variants:
        sub_dir = os.path.join(run_dir, R.RUNS, label)
        if statuses.get(label) in ("completed", "diverged"):
            outcomes.append(Outcome(statuses[label], sub_dir))
            continue
        if not os.path.exists(os.path.join(sub_dir, R.META)):
            os.makedirs(sub_dir, exist_ok=True)
            R.write_config(sub_dir, sub)
            R.write_meta(sub_dir, _new_meta(sub, "run"))
        try:
            out = _run_one(sub, sub_dir, quiet, stop, False, label)
        except ValueError as e:
            out = _fail_dir(sub_dir, e, user=True)
        except Exception as e:
            _fail_dir(sub_dir, e, user=False)
            _fail_dir(run_dir, e, user=False)
            raise
        outcomes.append(out)
        statuses[label] = out.status
        R.update_meta(run_dir, variants=[{"label": lb, "status": statuses.get(lb, "pending")} for lb, _ in variants])
        if out.status in ("interrupted", "failed"):
            break
    wall = meta.get("wall_time_s", 0.0) + time.time() - t0
    worst = next((s for s in ("interrupted", "failed", "diverged") if any(o.status == s for o in outcomes)), "completed")
    first = next((o for o in outcomes if o.status == worst), None)
    message = "" if worst == "completed" else f"variant {os.path.basename(first.run_dir)}: {first.message}"
    if worst == "interrupted":
        message = f"interrupted; continue with: dlnsim run --resume {run_dir}"
    figs: list[str] = []
    if worst in ("completed", "diverged") and cfg["output"]["figures"]:
        from .plotting import plot_study

        figs = plot_study(run_dir, formats=cfg["output"]["formats"])
        if worst == "completed":
            _copy_showcase(cfg, figs, quiet)
    R.update_meta(run_dir, end_time=R.now(), wall_time_s=round(wall, 3), message=message, status=worst)
    code = 128 + stop.signum if worst == "interrupted" else (first.exit_code if first is not None else 0)
    return Outcome(worst, run_dir, message, code)
