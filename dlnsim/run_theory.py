"""Which theory applies to a run, and its curves: the one place figures, sweeps and config ask.

A run (a resolved config) can be put next to three kinds of theory:

- the Saxe closed form (`saxe_setting`, `saxe_reference`): E = 1/2 ||X - Phi||^2, a balanced start
  aligned with Phi, a deterministic gradient scheme; every singular value follows
  du/dt = N u^{2(N-1)/N} (lambda - u) (dlnsim.theory.saxe_mode), in time t/N with time_scale: depth;
- the end-to-end reference flow (`reference_flow_applies`, `wants_reference_flow`): the flow
  dX/dt = -A_{N,X}(grad E) integrated from the run's X(0) next to a deterministic parameter-space
  scheme with square widths (docs/theory.md section 4); recorded as reference_singular_values and
  reference_distance. It costs about one more run of an end-to-end flow (2.5-7x a gradient step),
  so with dynamics.theory: auto it is integrated only when something uses it: a per-run singular-
  value figure without a Saxe curve, a study figure that draws it (`STUDY_FIGURES_USING_REFERENCE`),
  both only with output.figures on, or observers.include naming reference_distance; theory: true
  always integrates it, false never;
- the Gibbs law exp(-beta E + S) dvol_{g^N} (`gibbs_setting`, `gibbs_reference`): the runs of a scheme
  that samples it (Langevin on M, the RLE), for whatever energy the run used: `gibbs_reference`
  returns the reference of dlnsim.reference (quadrature for d <= 2, MCMC for d <= GIBBS_MCMC_MAX_WIDTH)
  or None with the reason, one line, that figures print where no theory line can be drawn;
  `gibbs_law` (SingularValueLaw) remains for E = alpha/2 ||X||^2, d <= 3. `energy_title(cfg)` names
  the energy a run used, for figure titles; `stationary_rows` gives the z-scores of a run's
  headline moments against its reference (figures/stationary.csv).

Each answer is a function of the config alone (no arrays), so config validation, the runner, the
figures and the sweep summaries agree by construction.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .depth_limit import saxe_mode_inf
from .dynamics import SCHEMES
from .energies import ENERGIES, SumEnergy, WeightDecay, target_matrix
from .gibbs import SingularValueLaw
from .reference import HEADLINE, reference_or_reason
from .stats import independent_chain_stderr
from .theory import saxe_mode

__all__ = [
    "initial_spectrum",
    "saxe_setting",
    "saxe_reference",
    "reference_flow_applies",
    "wants_reference_flow",
    "STUDY_FIGURES_USING_REFERENCE",
    "gibbs_setting",
    "gibbs_law",
    "gibbs_reference",
    "energy_title",
    "run_energy",
    "stationary_rows",
    "theory_arrays",
    "undefined_theory",
]

# Largest width d for which figures compute the Gibbs reference of any energy by MCMC (d^2-dimensional
# random walk: beyond this its mixing makes a figure slow and its band wide).
GIBBS_MCMC_MAX_WIDTH = 4


def _square(cfg: dict) -> bool:
    w = cfg["network"]["widths"]
    return all(x == w[0] for x in w)


def undefined_theory(cfg: dict) -> str | None:
    """One line naming the theory quantities a run with rectangular widths cannot have (they are
    defined for square width, THEORY.md sections 3-5), or None for square widths."""
    if cfg["network"]["widths"] is None or _square(cfg):  # a study's own section: its variants say
        return None
    return (f"widths {cfg['network']['widths']} are not square: the entropy S(X) (entropy_formula, free_energy), "
            "entropy_measured, the balanced-manifold Langevin schemes, the RLE, the end-to-end reference flow and the "
            "Saxe/Gibbs closed forms are undefined and not recorded")


def initial_spectrum(cfg: dict) -> torch.Tensor:
    """Singular values (d,) of a balanced X(0): network.spectrum, or all equal to network.scale."""
    net = cfg["network"]
    if net["spectrum"] is not None:
        return torch.tensor(net["spectrum"], dtype=torch.float64)
    return torch.full((net["widths"][0],), float(net["scale"]), dtype=torch.float64)


# ---------------------------------------------------------------------------------------------
# Saxe closed form
# ---------------------------------------------------------------------------------------------


def saxe_setting(cfg: dict) -> bool:
    """Is the run in the setting of the closed-form Saxe modes: matrix regression, a balanced start
    aligned with the target, a deterministic gradient scheme without entropic drift?"""
    net, scheme = cfg["network"], SCHEMES[cfg["dynamics"]["scheme"]]
    return (cfg["energy"]["type"] == "matrix_regression" and cfg["energy"].get("confinement") is None
            and net["init"] == "balanced" and net["target"] == "aligned"
            and not scheme.stochastic and not scheme.needs_beta and scheme.reference_flow)


def saxe_reference(cfg: dict, t: np.ndarray) -> np.ndarray | None:
    """Closed-form singular values (T, r) (Saxe modes, descending) at times t, or None outside saxe_setting."""
    if not saxe_setting(cfg):
        return None
    net, dyn = cfg["network"], cfg["dynamics"]
    lam = torch.linalg.svdvals(target_matrix(cfg["energy"], net["widths"]))
    N = net["depth"]
    if N == math.inf:  # du/dt = u^2 (lambda - u), time in units of N (the only time scale at depth inf)
        u = saxe_mode_inf(torch.as_tensor(t, dtype=torch.float64).unsqueeze(-1), lam, initial_spectrum(cfg))
        return u.sort(dim=-1, descending=True).values.numpy()
    scale = 1.0 / N if dyn["time_scale"] == "depth" else 1.0
    tt = torch.as_tensor(t, dtype=torch.float64).unsqueeze(-1) * scale
    u = saxe_mode(tt, lam, initial_spectrum(cfg), N)
    return u.sort(dim=-1, descending=True).values.numpy()


# ---------------------------------------------------------------------------------------------
# the end-to-end reference flow
# ---------------------------------------------------------------------------------------------

# Study figures (study.figure) that draw reference_singular_values, and for which variants.
STUDY_FIGURES_USING_REFERENCE = {"flows": lambda cfg: cfg["dynamics"]["scheme"] != "gradient_descent"}


def reference_flow_applies(cfg: dict) -> bool:
    """Can the end-to-end flow be integrated next to this run: a deterministic parameter-space
    scheme without entropic drift, square widths (dynamics.theory: true is refused otherwise)."""
    scheme = SCHEMES[cfg["dynamics"]["scheme"]]
    return (scheme.space == "parameters" and not scheme.stochastic and not scheme.needs_beta and _square(cfg)
            and scheme.reference_flow and len(cfg["network"]["widths"]) > 1
            and cfg["network"].get("field", "real") == "real")


def wants_reference_flow(cfg: dict, study_figure: str | None = None) -> bool:
    """Is the reference flow integrated for this run? study_figure: the study's figure kind when the
    run is a variant of a study (its own figures are not drawn), else None."""
    theory = cfg["dynamics"]["theory"]
    if theory == "false" or not reference_flow_applies(cfg):
        return False
    if theory == "true":
        return True
    include = cfg["observers"]["include"]
    if include is not None and "reference_distance" in include:
        return True
    if not cfg["output"]["figures"]:
        return False
    if study_figure is not None:
        uses = STUDY_FIGURES_USING_REFERENCE.get(study_figure)
        return uses is not None and uses(cfg)
    return not saxe_setting(cfg)


# ---------------------------------------------------------------------------------------------
# the Gibbs law
# ---------------------------------------------------------------------------------------------


def gibbs_setting(cfg: dict) -> bool:
    """Does the run sample the DLN Gibbs law exp(-beta E + S) dvol_g (for any energy): a stochastic scheme
    on the balanced manifold or the RLE for X, with beta given? (UnprojectedLangevin leaves M: it does not.)"""
    scheme = SCHEMES[cfg["dynamics"]["scheme"]]
    samples_law = scheme.stochastic and (getattr(scheme, "on_manifold", False) or scheme.space == "end_to_end")
    # depth inf: exp(-beta E + S_inf) dvol has density ~ prod s_i^{-1} near s_i = 0, not normalizable: no law
    return samples_law and cfg["dynamics"]["beta"] is not None and cfg["network"]["depth"] != math.inf


def gibbs_law(cfg: dict, beta: float):
    """The stationary law of the singular values at inverse temperature beta (SingularValueLaw:
    E = alpha/2 ||X||^2, square d <= 3)."""
    return SingularValueLaw(cfg["network"]["depth"], float(beta), cfg["energy"]["alpha"], cfg["network"]["widths"][0])


_REFERENCES: dict = {}


def gibbs_reference(cfg: dict, beta: float):
    """(GibbsReference, "") for this run's energy at inverse temperature beta, or (None, reason).

    Quadrature for d <= 2 (exact to ~1e-9), MCMC for d <= GIBBS_MCMC_MAX_WIDTH (seeded from
    dynamics.seed; Monte-Carlo band from its chains); cached per (energy, widths, depth, beta).
    """
    net, en = cfg["network"], cfg["energy"]
    widths = net["widths"]
    key = (repr(sorted(en.items())), tuple(widths), net["depth"], float(beta))
    if key in _REFERENCES:
        return _REFERENCES[key]
    if not gibbs_setting(cfg):
        out = (None, f"no reference: {cfg['dynamics']['scheme']} does not sample the Gibbs law exp(-beta E + S) dvol_g")
    elif len(set(widths)) > 1:
        out = (None, f"no reference: the Gibbs law lives on GL_d (square widths; got {widths})")
    elif widths[0] > GIBBS_MCMC_MAX_WIDTH:
        out = (None, f"no reference computed for d = {widths[0]} > {GIBBS_MCMC_MAX_WIDTH} "
                     "(dlnsim.reference.gibbs_reference(method='mcmc') can, at a cost)")
    else:
        energy = run_energy(en, widths)
        g = torch.Generator().manual_seed(int(cfg["dynamics"].get("seed") or 0) + 7)
        out = reference_or_reason(energy, widths[-1], widths[0], net["depth"], float(beta), generator=g,
                                  chains=16, steps=3000, burn=1000)
    _REFERENCES[key] = out
    return out


def run_energy(section: dict, widths, **kw):
    """The Energy of a run's energy section: ENERGIES[type].from_config (kw: its batch of per-trajectory
    data), plus confinement/2 ||X||^2 when energy.confinement is set (a SumEnergy; the data term first)."""
    energy = ENERGIES[section["type"]].from_config(section, widths, **kw)
    c = section.get("confinement")
    return energy if c is None else SumEnergy([energy, WeightDecay(c)])


def energy_title(cfg: dict) -> str:
    """The energy a run used, as a figure-title string (mathtext)."""
    en = cfg["energy"]
    c = en.get("confinement")
    return _data_energy_title(en) + ("" if c is None else rf" $+\frac{{c}}{{2}}\|X\|^2$ (c={c:g})")


def _data_energy_title(en: dict) -> str:
    kind = en["type"]
    if kind == "weight_decay":
        return rf"$E=\frac{{\alpha}}{{2}}\|X\|^2$ ($\alpha$={en['alpha']:g})"
    if kind == "matrix_regression":
        return rf"$E=\frac{{1}}{{2}}\|X-\Phi\|^2$ ($\Phi$: {en['target'] if isinstance(en['target'], str) else 'given'})"
    if kind == "linear_regression":
        given = en.get("data") or en.get("train_inputs")
        return r"$E=\frac{1}{2n}\|XA-Y\|^2$" + (" (data from files)" if given else f" (n={en['n_samples']})")
    if kind == "matrix_completion":
        return r"$E=\frac{1}{2}\|M\circ(X-\Phi)\|^2$"
    return f"E: {kind}"


def stationary_rows(cfg: dict, a: dict, frac: float = 0.5) -> list[dict]:
    """z-scores of the headline moments (dlnsim.reference.HEADLINE) of a run against its reference, one
    row per (beta, observable): the last `frac` of the save points, standard errors from the spread of
    per-trajectory means (independent trajectories) combined with the reference's own error. Empty
    when no reference applies; a row with the reason otherwise missing."""
    rows = []
    if "singular_values" not in a or not gibbs_setting(cfg):
        return rows
    betas = np.atleast_1d(a["beta"]) if "beta" in a else np.full(a["loss"].shape[1], cfg["dynamics"]["beta"])
    start = int(len(a["t"]) * (1 - frac))
    S = a["singular_values"][start:]
    cols = [(S**2).sum(-1), S[..., 0], S[..., -1]]
    if "det_sign" in a:
        cols.append((a["det_sign"][start:] > 0).astype(float))
    V = torch.as_tensor(np.stack(cols, -1))  # (T, B, k)
    for b in np.unique(betas):
        idx = np.flatnonzero(betas == b)
        ref, why = gibbs_reference(cfg, float(b))
        if ref is None:
            rows.append({"beta": float(b), "observable": "", "reason": why})
            continue
        truth, tse = ref.headline()
        v = V[:, idx]
        ok = torch.isfinite(v).all(0).all(-1)
        v = v[:, ok]
        mean = v.mean((0, 1))
        se = independent_chain_stderr(v) if v.shape[1] >= 2 else torch.full_like(mean, float("nan"))
        for k in range(v.shape[-1]):
            tot = float(torch.sqrt(se[k] ** 2 + tse[k] ** 2))
            rows.append({"beta": float(b), "observable": HEADLINE[k], "simulation": float(mean[k]), "stderr": float(se[k]),
                         "reference": float(truth[k]), "reference_stderr": float(tse[k]),
                         "z": (float(mean[k]) - float(truth[k])) / tot if tot > 0 else float("nan"),
                         "reference_method": ref.method, "reason": ""})
    return rows


# ---------------------------------------------------------------------------------------------
# theory arrays of a result folder
# ---------------------------------------------------------------------------------------------


def theory_arrays(cfg: dict, t: np.ndarray) -> dict[str, np.ndarray]:
    """Closed-form curves written next to the simulated arrays: saxe_singular_values (T, r) when it applies."""
    saxe = saxe_reference(cfg, t) if len(t) else None
    return {} if saxe is None else {"saxe_singular_values": saxe}
