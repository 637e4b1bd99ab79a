"""Runs over C and H (network.field: complex | quaternion): the config rules and the objects of a run.

`network.field` chooses the number system of the weights (docs/theory_complex.md). The real field is
the rest of dlnsim, untouched. For complex and quaternion networks, `dlnsim.builders` asks this
module for the energy, the initial weights, the scheme and the observer, and `dlnsim.config` asks it
for the rules (`check_config`). What is supported, as data:

    FIELD_SCHEMES   dynamics.scheme -> the scheme over F (dlnsim.dynamics.field_flows)
    FIELD_ENERGIES  energy.type     -> the energy over F (dlnsim.field_energies)
    FIELD_INITS     network.init values

Targets over F: energy.target random is U diag(spectrum) V* with U, V Haar on U(d) / Sp(d) drawn
from energy.seed; identity, diag and a given (real) matrix are the same matrices seen over F.
So the target has the singular values the real run would have, and the Saxe closed form of
`dlnsim.run_theory` (which reads them from the real target) applies unchanged. A balanced start is
W_p = Q_p diag(s^{1/N}) Q_{p-1}* with Haar Q_p on K_d (`dlnsim.field_network.balanced_weights`).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .dynamics import SCHEMES
from .dynamics.field_flows import FieldEndToEndFlow, FieldGradientDescent, FieldGradientFlow
from .energies import target_matrix
from .field_energies import FieldMatrixRegression
from .field_network import balanced_weights
from .field_observe import FieldObserver
from .network import DeepLinearNetwork
from .fields import FIELDS, embed_diagonal, field_svd, gaussian, get_field, quaternion_to_complex, random_group
from .observe import ENTROPY_MEASURED_AUTO_MAX, default_include
from .options import fail
from .run_theory import initial_spectrum

__all__ = [
    "FIELD_NAMES",
    "FIELD_SCHEMES",
    "FIELD_ENERGIES",
    "FIELD_INITS",
    "is_field_run",
    "check_config",
    "field_target",
    "build_energy",
    "build_weights",
    "network_module",
    "build_scheme",
    "build_observer",
]

FIELD_NAMES = tuple(FIELDS)
FIELD_SCHEMES = {
    "gradient_descent": FieldGradientDescent,
    "gradient_flow": FieldGradientFlow,
    "end_to_end_flow": FieldEndToEndFlow,
    "free_energy_flow": FieldEndToEndFlow,  # with beta: the free-energy flow E - S_beta/beta
}
FIELD_ENERGIES = {"matrix_regression": FieldMatrixRegression}
FIELD_INITS = ("balanced", "gaussian")


def is_field_run(cfg: dict) -> bool:
    """Does this (resolved) config run a complex or quaternionic network?"""
    return cfg["network"].get("field", "real") != "real"


def check_config(c: dict) -> None:
    """The rules of network.field (ConfigError naming the key and the fix)."""
    if not is_field_run(c):
        return
    net, en, dyn, obs = c["network"], c["energy"], c["dynamics"], c["observers"]
    field, widths = net["field"], net["widths"]
    if not all(w == widths[0] for w in widths):
        fail("network.widths", f"networks over {field} need square widths (d x d over F), got {widths}")
    if net["init"] not in FIELD_INITS:
        fail("network.init", f"with network.field: {field} use one of {', '.join(FIELD_INITS)}, got {net['init']!r}")
    if en["type"] not in FIELD_ENERGIES:
        fail("energy.type", f"with network.field: {field} the energy is one of {', '.join(FIELD_ENERGIES)}, got {en['type']!r}")
    if dyn["scheme"] not in FIELD_SCHEMES:
        fail("dynamics.scheme", f"with network.field: {field} use one of {', '.join(FIELD_SCHEMES)} (no Langevin/RLE over C, H), got {dyn['scheme']!r}")
    if dyn["options"]:
        fail("dynamics.options", f"schemes over {field} take no options (fixed-step RK4), got {sorted(dyn['options'])}")
    if dyn["theory"] == "true":
        fail("dynamics.theory", f"the end-to-end reference flow runs next to real networks only; with network.field: {field} use auto or false "
             "(or run dynamics.scheme: end_to_end_flow itself)")
    if c["device"]["dtype"] != "float64":
        fail("device.dtype", f"networks over {field} run in complex128 (float64 parts): batched complex64 eigen/singular vectors "
             "have been reported to lose orthonormality; set device.dtype: float64")
    if obs["include"] is not None and "X" in obs["include"]:
        fail("observers.include", f"X is not recorded for network.field: {field} (a complex representation); remove it")


def _embed(M: torch.Tensor, F) -> torch.Tensor:
    """A real matrix seen over F, as its representation (complex128)."""
    Z = M.to(torch.complex128)
    return quaternion_to_complex(Z, torch.zeros_like(Z)) if F.beta == 4 else Z


def field_target(cfg: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Phi, U, V): the target over F as a representation (complex128, CPU) and its singular frames
    (Phi = U diag(s) V*, U, V in K_d), for energy.target random | identity | diag | a matrix."""
    F = get_field(cfg["network"]["field"])
    en, widths = cfg["energy"], cfg["network"]["widths"]
    d = widths[0]
    if en["target"] == "random":
        g = torch.Generator().manual_seed(en["seed"])
        U, V = random_group((), d, F, generator=g), random_group((), d, F, generator=g)
        s = torch.arange(d, 0, -1, dtype=torch.float64) if en["spectrum"] is None else torch.tensor(en["spectrum"], dtype=torch.float64)
        # descending, as an SVD orders them: the aligned start pairs network.spectrum with these in
        # the order the real run (and run_theory's Saxe curve) does
        s = s.sort(descending=True).values
        return U @ embed_diagonal(s, F) @ V.mH, U, V
    Phi = _embed(target_matrix(en, widths), F)
    U, _, V = field_svd(Phi, F)
    return Phi, U, V


def build_energy(cfg: dict, device, dtype) -> FieldMatrixRegression:
    F = get_field(cfg["network"]["field"])
    Phi, _, _ = field_target(cfg)
    return FIELD_ENERGIES[cfg["energy"]["type"]](Phi.to(device=device, dtype=F.dtype(dtype)), F)


def build_weights(cfg: dict, batch: int, generator: torch.Generator | None, device, dtype) -> list[torch.Tensor]:
    """Initial weights [W_1..W_N], each (batch, n, n) representations, for network.init balanced | gaussian."""
    net = cfg["network"]
    F = get_field(net["field"])
    d, N = net["widths"][0], net["depth"]
    cdt = F.dtype(dtype)
    norm = net["scale"] / math.sqrt(F.beta * d)  # entries of mean square scale^2 / d, as the real init
    if net["init"] == "gaussian":
        return [(norm * gaussian((batch,), d, F, dtype, device, generator)).to(cdt) for _ in range(N)]
    t = net["target"]
    s = initial_spectrum(cfg).to(device=device, dtype=dtype)
    if t is None:
        U = random_group((batch,), d, F, dtype, device, generator)
        V = random_group((batch,), d, F, dtype, device, generator)
        X0 = U @ embed_diagonal(s, F) @ V.mH
    elif t == "gaussian":
        X0 = norm * gaussian((batch,), d, F, dtype, device, generator)
    elif t == "aligned":
        _, U, V = field_target(cfg)
        U, V = U.to(device=device, dtype=cdt), V.to(device=device, dtype=cdt)
        X0 = (U @ embed_diagonal(s, F).to(cdt) @ V.mH).expand(batch, -1, -1)
    else:
        X0 = _embed(torch.tensor(t, dtype=torch.float64), F).to(device=device).expand(batch, -1, -1)
    return [W.to(cdt) for W in balanced_weights(X0.to(cdt), N, F, generator=generator)]


def network_module(weights: list[torch.Tensor]) -> DeepLinearNetwork:
    """The weights as a DeepLinearNetwork (what builders.build_network returns), without its real-input
    checks: the complex representations are validated here by construction. Its forward is the real
    one (inputs are rows); `end_to_end` and `weights` are what the run layer uses."""
    net = DeepLinearNetwork.__new__(DeepLinearNetwork)
    nn.Module.__init__(net)
    net.weights = nn.ParameterList([nn.Parameter(W, requires_grad=False) for W in weights])
    return net


def build_scheme(cfg: dict, energy, beta):
    dyn, F = cfg["dynamics"], get_field(cfg["network"]["field"])
    cls = FIELD_SCHEMES[dyn["scheme"]]
    h, N = dyn["step_size"], cfg["network"]["depth"]
    if cls is FieldEndToEndFlow:
        return cls(energy, h, N, F, beta=beta if SCHEMES[dyn["scheme"]].needs_beta else None, time_scale=dyn["time_scale"])
    return cls(energy, h, N, F)


def build_observer(cfg: dict, energy, beta) -> FieldObserver:
    """FieldObserver of the run's observables. entropy_measured: auto keeps it while the Gram matrix has
    at most ENTROPY_MEASURED_AUTO_MAX rows, counted over F: (N-1) dim k_d = (N-1)(beta d(d-1)/2 + (beta-1) d)."""
    net = cfg["network"]
    include = [k for k in default_include(cfg, SCHEMES[cfg["dynamics"]["scheme"]]) if k != "X"]
    rows = (net["depth"] - 1) * get_field(net["field"]).lie_dim(net["widths"][0])
    if cfg["observers"]["entropy_measured"] == "auto" and rows > ENTROPY_MEASURED_AUTO_MAX:
        include = [k for k in include if k != "entropy_measured"]
    return FieldObserver(energy, net["depth"], net["field"], include=include, beta=beta)
