"""network.field in the run layer: config rules, builders, and runs over C and H against theory."""
import numpy as np
import pytest
import torch

from dlnsim.builders import build_simulation
from dlnsim.config import ConfigError, load_config
from dlnsim.energies import target_matrix
from dlnsim.field_runs import field_target
from dlnsim.fields import get_field, singular_values, structure_defect
from dlnsim.run_theory import saxe_reference


def _cfg(field="complex", **over):
    cfg = {
        "network": {"width": 3, "depth": 3, "init": "balanced", "target": "aligned", "scale": 0.05, "field": field},
        "energy": {"type": "matrix_regression", "target": "random", "spectrum": [3.0, 2.0, 1.0]},
        "dynamics": {"scheme": "gradient_flow", "step_size": 0.01, "time": 1.5, "ensemble": 2},
        "observers": {"every": 10, "entropy_measured": "true"},
        "output": {"figures": False},
    }
    for k, v in over.items():
        sec, key = k.split("__")
        cfg[sec][key] = v
    return load_config(cfg)


@pytest.mark.parametrize("over,key", [
    ({"dynamics__scheme": "langevin_projected", "dynamics__beta": 1.0}, "dynamics.scheme"),
    ({"network__init": "orthogonal", "network__target": None}, "network.init"),
    ({"energy__type": "weight_decay", "energy__spectrum": None, "network__target": None}, "energy.type"),
    ({"network__widths": [3, 2, 3], "network__width": None, "network__depth": None, "network__init": "gaussian",
      "network__target": None, "energy__spectrum": None, "observers__entropy_measured": "auto"}, "network.widths"),
    ({"observers__include": ["loss", "X"]}, "observers.include"),
    ({"dynamics__theory": "true"}, "dynamics.theory"),
])
def test_field_config_rules(over, key):
    with pytest.raises(ConfigError, match="^" + key.replace(".", r"\.")):
        _cfg("quaternion", **over)
    with pytest.raises(ConfigError, match=r"^network\.field: .*complex"):
        _cfg("octonion")


def test_field_config_refuses_float32():
    with pytest.raises(ConfigError, match=r"^device\.dtype: .*complex64"):
        load_config({"network": {"field": "complex"}, "device": {"dtype": "float32"}})


@pytest.mark.parametrize("target", ["random", "identity", "diag", [[2.0, 0.5, 0.0], [0.0, 1.0, 0.3], [0.1, 0.0, 0.7]]])
def test_field_target_has_the_real_targets_singular_values(target):
    for field in ("complex", "quaternion"):
        spec = [3.0, 2.0, 1.0] if target in ("random", "diag") else None
        cfg = _cfg(field, energy__target=target, energy__spectrum=spec)
        Phi, U, V = field_target(cfg)
        F = get_field(field)
        ref = torch.linalg.svdvals(target_matrix(cfg["energy"], cfg["network"]["widths"]))
        assert (singular_values(Phi, F) - ref).abs().max() < 1e-13
        # U, V are its singular frames (the aligned start uses them)
        D = U.mH @ Phi @ V
        assert (D - torch.diag(torch.diagonal(D))).abs().max() < 1e-13


@pytest.mark.parametrize("field", ["complex", "quaternion"])
def test_gradient_flow_run_over_F_follows_saxe_and_entropy(field):
    cfg = _cfg(field)
    sim, _ = build_simulation(cfg)
    sim.run(cfg["dynamics"]["steps"])
    W = sim.state.weights
    assert W[0].dtype == torch.complex128 and W[0].shape[-1] == get_field(field).matrix_size(3)
    if field == "quaternion":
        assert max(structure_defect(w).max().item() for w in W) < 1e-13
    rec = {k: torch.stack([m[k] for m in sim.saved]) for k in sim.saved[0]}
    gap = (rec["entropy_measured"] - rec["entropy_formula"]).abs().max().item()
    assert gap < 1e-12  # aligned balanced start: measured 7e-15 (C), 4e-14 (H)
    t = np.array(sim.times)
    saxe = torch.as_tensor(saxe_reference(cfg, t))
    err = (rec["singular_values"] - saxe.unsqueeze(1)).abs().max().item()
    assert err < 1e-6  # RK4 truncation at h = 0.01 (deterministic): measured 4.3e-7 for C and H
    assert rec["balancedness"].abs().max() < 1e-12


def test_end_to_end_and_free_energy_flows_over_H_through_the_config():
    """Same seed, same X(0): the parameter flow and the end-to-end flow agree (non-aligned start)."""
    kw = dict(network__target=None, network__spectrum=[0.9, 0.6, 0.3], network__scale=1.0)
    sims = []
    for scheme in ("gradient_flow", "end_to_end_flow"):
        cfg = _cfg("quaternion", dynamics__scheme=scheme, observers__entropy_measured="auto", **kw)
        sim, _ = build_simulation(cfg)
        sim.run(cfg["dynamics"]["steps"])
        sims.append(sim)
    s = [torch.stack([m["singular_values"] for m in sim.saved]) for sim in sims]
    assert (s[0][0] - s[1][0]).abs().max() < 1e-14  # the same initial X
    assert (s[0] - s[1]).abs().max() < 1e-6  # RK4 h = 0.01 on both: measured 1.4e-7
    cfg = _cfg("quaternion", dynamics__scheme="free_energy_flow", dynamics__beta=2.0, observers__entropy_measured="auto", **kw)
    sim, _ = build_simulation(cfg)
    sim.run(20)
    m = sim.saved[-1]
    assert torch.isfinite(m["free_energy"]).all()
    assert (m["free_energy"] - (m["loss"] - m["entropy_formula"] / 2.0)).abs().max() < 1e-12


def test_aligned_start_pairs_modes_as_the_real_run():
    """Unsorted energy.spectrum and an uneven network.spectrum: modes pair as in run_theory's Saxe curve."""
    for field in ("real", "complex"):
        cfg = _cfg(field, energy__spectrum=[1.0, 3.0, 2.0], network__spectrum=[0.1, 0.05, 0.02], dynamics__time=0.5)
        sim, _ = build_simulation(cfg)
        sim.run(cfg["dynamics"]["steps"])
        s = torch.stack([m["singular_values"] for m in sim.saved])
        saxe = torch.as_tensor(saxe_reference(cfg, np.array(sim.times)))
        assert (s - saxe.unsqueeze(1)).abs().max() < 3e-7  # RK4 h = 0.01: measured 4.9e-8 (R and C alike)


def test_entropy_measured_auto_counts_the_gram_size_over_F():
    """auto: (N-1) dim k_d <= ENTROPY_MEASURED_AUTO_MAX with dim k_d over F (H, d = 4: 36 per layer)."""
    from dlnsim.builders import build_energy, build_observer

    for field, d, N, kept in (("complex", 4, 3, True), ("quaternion", 4, 3, False), ("quaternion", 3, 3, True)):
        cfg = _cfg(field, network__width=d, network__depth=N, energy__spectrum=None, observers__entropy_measured="auto")
        assert ("entropy_measured" in build_observer(cfg, build_energy(cfg)).include) == kept
