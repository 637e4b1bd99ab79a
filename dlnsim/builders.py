"""Objects of a run from its resolved config: energy, initial network, scheme, observer, reference flow.

    energy = build_energy(cfg); generator = torch.Generator().manual_seed(cfg["dynamics"]["seed"])
    scheme = build_scheme(cfg, energy, generator); net = build_network(cfg, generator=generator)
    sim = build_simulation(cfg)      # all of it, as the runner does: a dlnsim.simulation.Simulation

Every factory reads the registries (dlnsim.energies.ENERGIES, dlnsim.dynamics.SCHEMES,
dlnsim.observe.OBSERVABLES) and the theory decisions of dlnsim.run_theory; none knows a scheme or
an energy by name. The noise of a run (initialisation and every stochastic step) comes from one
torch.Generator seeded with dynamics.seed, on the run's device.
"""
from __future__ import annotations

import math

import torch

from .dynamics import EndToEndFlow, Scheme, State, scheme_class
from .dynamics.balancing import balance_from_gaussian
from .energies import ENERGIES, Energy, target_matrix
from .network import DeepLinearNetwork, read_weight_file
from .observe import Observer, default_include
from .options import ConfigError
from .run_theory import initial_spectrum, run_energy, wants_reference_flow
from .simulation import Simulation
from . import field_runs

__all__ = [
    "device_dtype",
    "beta_of",
    "batch_size",
    "build_energy",
    "build_network",
    "build_scheme",
    "build_observer",
    "build_simulation",
]


def device_dtype(cfg: dict) -> tuple[torch.device, torch.dtype]:
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


def build_energy(cfg: dict, device=None, dtype=None) -> Energy:
    """The Energy of cfg['energy'] (data on device/dtype; defaults from cfg['device'])."""
    if device is None or dtype is None:
        d, t = device_dtype(cfg)
        device, dtype = device or d, dtype or t
    if field_runs.is_field_run(cfg):  # complex / quaternion weights: the energy over F
        return field_runs.build_energy(cfg, device, dtype)
    cls = ENERGIES[cfg["energy"]["type"]]
    kw = {"batch": batch_size(cfg)} if cls.per_trajectory_data else {}
    energy = run_energy(cfg["energy"], cfg["network"]["widths"], **kw)
    return energy.to(dtype=dtype, device=device)


def _initial_X(cfg: dict, B: int, generator, device, dtype) -> torch.Tensor | None:
    """X(0) for a balanced init (None: the network's own random U diag(spectrum) V^T)."""
    net = cfg["network"]
    t, d = net["target"], net["widths"][0]
    if t is None:
        return None
    if t == "gaussian":
        return net["scale"] * torch.randn(B, d, d, generator=generator, dtype=dtype, device=device) / math.sqrt(d)
    if t == "aligned":
        U, lam, Vh = torch.linalg.svd(target_matrix(cfg["energy"], net["widths"]))
        return ((U * initial_spectrum(cfg)) @ Vh).to(dtype=dtype, device=device)
    return torch.tensor(t, dtype=dtype, device=device)


def build_network(cfg: dict, *, generator: torch.Generator | None = None) -> DeepLinearNetwork:
    """The initial ensemble (batch = ensemble x number of betas) of cfg['network'], drawn from `generator`.

    (Before issue 11 the signature was (cfg, energy, generator), with energy unused; generator is
    keyword-only so that a call in the old positional form fails loudly.)
    """
    device, dtype = device_dtype(cfg)
    net, B = cfg["network"], batch_size(cfg)
    if field_runs.is_field_run(cfg):
        return field_runs.network_module(field_runs.build_weights(cfg, B, generator, device, dtype))
    if net["init"] == "file":
        ws = [w.to(dtype=dtype, device=device) for w in read_weight_file(net["file"])]
        ws = [w.unsqueeze(0) if w.dim() == 2 else w for w in ws]
        for p, w in enumerate(ws, start=1):
            if w.shape[0] not in (1, B):
                raise ConfigError(f"network.file: W_{p} has batch {w.shape[0]}, the run has {B} trajectories (give 1 or {B})")
        return DeepLinearNetwork.from_weights([w.expand(B, -1, -1) for w in ws], requires_grad=False)
    if net["init"] == "balance_from_gaussian":
        # square widths (checked by the config); X(0) is the product of the Gaussian layers
        ws = balance_from_gaussian(net["widths"][0], net["depth"], B, net["scale"], generator=generator, dtype=dtype, device=device)
        return DeepLinearNetwork.from_weights(ws, requires_grad=False)
    kw = {} if net["std"] is None else {"std": net["std"]}
    if net["init"] == "balanced":
        kw = dict(target=_initial_X(cfg, B, generator, device, dtype), spectrum=net["spectrum"])
    return DeepLinearNetwork(net["widths"], B, net["init"], net["scale"], dtype=dtype, device=device, generator=generator, **kw)


def build_scheme(cfg: dict, energy: Energy, generator: torch.Generator | None = None, beta=None) -> Scheme:
    """The Scheme of cfg['dynamics'] (stochastic ones draw all noise from `generator`)."""
    dyn = cfg["dynamics"]
    cls = scheme_class(dyn["scheme"], cfg["network"]["depth"])
    if beta is None:
        beta = beta_of(cfg, *device_dtype(cfg))
    if field_runs.is_field_run(cfg):
        return field_runs.build_scheme(cfg, energy, beta)
    try:
        return cls.from_config(energy, dyn["step_size"], cfg["network"]["depth"], beta=beta, generator=generator,
                               time_scale=dyn["time_scale"], options=dyn["options"])
    except (TypeError, ValueError) as e:
        if cls.option_spec is not None:  # options checked by the config: a library error, not the user's
            raise
        key = "dynamics.options" if dyn["options"] else "dynamics"
        raise ConfigError(f"{key}: {cls.__name__}: {str(e).splitlines()[0]}") from None


def build_observer(cfg: dict, energy: Energy, scheme: Scheme | None = None, beta=None) -> Observer:
    if scheme is None:
        scheme = build_scheme(cfg, energy)
    if beta is None:
        beta = beta_of(cfg, *device_dtype(cfg))
    if field_runs.is_field_run(cfg):
        return field_runs.build_observer(cfg, energy, beta)
    return Observer(energy, cfg["network"]["depth"], include=default_include(cfg, type(scheme)), beta=beta)


def build_simulation(cfg: dict, study_figure: str | None = None, *, fresh: bool = True) -> tuple[Simulation, torch.Generator]:
    """The Simulation of a run and its generator. fresh: draw the initial network and record step 0
    (False: an empty state, to be filled from a checkpoint). study_figure: see run_theory.wants_reference_flow."""
    device, dtype = device_dtype(cfg)
    generator = torch.Generator(device=device).manual_seed(cfg["dynamics"]["seed"])
    energy = build_energy(cfg, device, dtype)
    beta = beta_of(cfg, device, dtype)
    scheme = build_scheme(cfg, energy, generator, beta)
    observer = build_observer(cfg, energy, scheme, beta)
    ref_scheme = None
    if wants_reference_flow(cfg, study_figure):
        # the reference flow of an adaptive gradient flow is integrated to the same tolerances
        ref_opts = dict(cfg["dynamics"]["options"]) if cfg["dynamics"]["scheme"] == "gradient_flow" else {}
        ref_scheme = EndToEndFlow(energy, cfg["dynamics"]["step_size"], cfg["network"]["depth"], **ref_opts)
    state, ref_state = None, None
    if fresh:
        weights = [W.detach() for W in build_network(cfg, generator=generator).weights]
        state = scheme.init_state(weights=weights)
        if ref_scheme is not None:
            ref_state = ref_scheme.init_state(weights=weights)
    else:
        state = State()
    reference = None if ref_scheme is None else (ref_scheme, ref_state)
    sim = Simulation(scheme, state, observer, cfg["observers"]["every"], reference, save_initial=fresh)
    return sim, generator
