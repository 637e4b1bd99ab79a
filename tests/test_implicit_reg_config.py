"""Implicit-regularization pieces through the run layer: the sgd scheme, the norms / effective_rank /
completion_error observables, configs/razin_cohen.yaml (validation and a short run)."""
import os

import numpy as np
import pytest
import torch

from dlnsim import config as C
from dlnsim.builders import build_simulation
from dlnsim.metrics import completion_errors, effective_rank, nuclear_norm, spectral_norm
from dlnsim.options import ConfigError

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def _cfg(**dyn):
    return {
        "network": {"depth": 2, "width": 3, "init": "gaussian", "scale": 0.5},
        "energy": {"type": "matrix_completion", "target": "random", "mask": [[1, 0, 1], [1, 1, 0], [0, 1, 1]]},
        "dynamics": {"scheme": "sgd", "step_size": 0.05, "steps": 20, "ensemble": 3, "seed": 1, **dyn},
        "observers": {"every": 5, "include": ["loss", "norms", "effective_rank", "completion_error"]},
        "output": {"figures": False},
    }


def test_sgd_config_runs_and_observables_match_metrics():
    cfg = C.load_config(_cfg(options={"batch_size": 2, "label_noise": 0.1, "momentum": 0.5, "schedule": "cosine",
                                      "total_steps": 20, "warmup_steps": 2}))
    sim, _ = build_simulation(cfg)
    assert type(sim.scheme).__name__ == "SGD" and sim.scheme.schedule.kind == "cosine"
    sim.run(cfg["dynamics"]["steps"])
    X = sim.state.end_to_end()
    E = sim.scheme.energy
    a = sim.arrays()
    assert a["nuclear_norm"].shape == (5, 3)  # saves at steps 0, 5, 10, 15, 20; B = 3
    # the observables of the final save point against dlnsim.metrics on the final X (roundoff of one SVD)
    assert np.allclose(a["nuclear_norm"][-1], nuclear_norm(X).numpy(), atol=1e-13)
    assert np.allclose(a["spectral_norm"][-1], spectral_norm(X).numpy(), atol=1e-13)
    assert np.allclose(a["effective_rank"][-1], effective_rank(X).numpy(), atol=1e-13)
    assert np.allclose(a["test_error"][-1], completion_errors(X, E.target, E.mask)["test_error_rel"].numpy(), atol=1e-13)


@pytest.mark.parametrize("options,match", [
    ({"momentum": 1.0}, "momentum"),
    ({"schedule": "step"}, "step_every"),
    ({"batchsize": 2}, "unknown option"),
    ({"batch_size": 0}, "batch_size"),
])
def test_sgd_config_errors(options, match):
    with pytest.raises(ConfigError, match=match):
        C.load_config(_cfg(options=options))


def test_sgd_needs_an_energy_of_samples():
    cfg = _cfg()
    cfg["energy"] = {"type": "matrix_regression", "target": "random"}
    with pytest.raises(ValueError, match="energy.type: matrix_completion or linear_regression"):
        build_simulation(C.load_config(cfg))


def test_razin_cohen_config_short_run():
    cfg = C.load_config(os.path.join(CONFIGS, "razin_cohen.yaml"), overrides=[("dynamics.time", 4.0)])
    sim, _ = build_simulation(cfg)
    sim.run(8)
    X = sim.state.end_to_end()
    # X(0) = 0.01 I, det > 0, and after t = 4 the off-diagonal entries are being fitted: det stays > 0
    assert float(torch.linalg.det(X)[0]) > 0 and float(X[0, 0, 1]) > 0.1


def _net_cfg(**net):
    d_in, d_out = net["widths"][0], net["widths"][-1]
    mask = [[float((i + j) % 2 == 0) for j in range(d_in)] for i in range(d_out)]
    return {"network": net, "energy": {"type": "matrix_completion", "target": "random", "mask": mask},
            "dynamics": {"scheme": "gradient_descent", "step_size": 0.05, "steps": 2, "ensemble": 2},
            "output": {"figures": False}}


def test_network_config_general_widths_and_inits():
    from dlnsim.builders import build_network
    from dlnsim.run_theory import undefined_theory

    cfg = C.load_config(_net_cfg(widths=[3, 5, 2], init="balanced", scale=0.1, spectrum=[1.0, 0.5]))
    net = build_network(cfg, generator=torch.Generator().manual_seed(0))
    W1, W2 = [W.detach() for W in net.weights]
    assert float((W2.mT @ W2 - W1 @ W1.mT).abs().max()) < 1e-14  # balanced (entries O(1): roundoff)
    s = torch.linalg.svdvals(W2 @ W1)
    assert torch.allclose(s, torch.tensor([[1.0, 0.5]] * 2, dtype=torch.float64), atol=1e-14)
    assert "not square" in undefined_theory(cfg) and undefined_theory(C.load_config(_cfg())) is None
    cfg = C.load_config(_net_cfg(widths=[3, 4, 2], init="gaussian", std=1e-3))
    w = torch.cat([W.detach().flatten() for W in build_network(cfg, generator=torch.Generator().manual_seed(0)).weights])
    assert 0.7e-3 < float(w.std()) < 1.3e-3  # 40 entries: sample std within ~4 standard errors of 1e-3
    cfg = C.load_config(_net_cfg(widths=[3, 3, 3], init="residual", std=0.01))
    W = build_network(cfg, generator=torch.Generator().manual_seed(0)).weights[0].detach()
    assert float((W - torch.eye(3, dtype=torch.float64)).abs().max()) < 0.05


@pytest.mark.parametrize("net,key", [
    ({"widths": [3, 5, 2], "init": "balanced", "target": "gaussian"}, "network.target"),
    ({"widths": [3, 5, 2], "init": "balanced", "spectrum": [1, 1, 1]}, "network.spectrum"),
    ({"widths": [3, 3, 3], "init": "orthogonal", "std": 0.1}, "network.std"),
    ({"widths": [3, 3, 3], "init": "residual"}, "network.std"),
])
def test_network_config_errors(net, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        C.load_config(_net_cfg(**net))


def _completion_cfg(**en):
    return {"network": {"widths": [4, 4, 5], "init": "gaussian", "std": 0.1},
            "energy": {"type": "matrix_completion", "target": "random", **en},
            "dynamics": {"scheme": "gradient_descent", "step_size": 0.05, "steps": 3, "ensemble": 3, "seed": 2},
            "output": {"figures": False}}


def test_random_mask_and_rank_target_from_config():
    from dlnsim.builders import build_energy

    cfg = C.load_config(_completion_cfg(rank=2, spectrum=[3.0, 1.0], mask="random", mask_count=9,
                                        mask_seed=4, mask_per_trajectory=True))
    E = build_energy(cfg)
    assert E.mask.shape == (3, 5, 4) and bool((E.mask.sum(dim=(-2, -1)) == 9).all())
    assert not torch.equal(E.mask[0], E.mask[1])  # one mask per trajectory
    s = torch.linalg.svdvals(E.target)
    assert torch.allclose(s, torch.tensor([3.0, 1.0, 0.0, 0.0], dtype=torch.float64), atol=1e-14)
    shared = build_energy(C.load_config(_completion_cfg(mask="random", mask_fraction=0.5)))
    assert shared.mask.shape == (5, 4) and int(shared.mask.sum()) == 10
    # the whole run: gradient descent (blocked CPU path must see the batched mask) and sgd
    for dyn in ({"scheme": "gradient_descent"}, {"scheme": "sgd", "options": {"batch_size": 3}}):
        c = _completion_cfg(mask="random", mask_count=9, mask_per_trajectory=True)
        c["dynamics"].update(dyn)
        sim, _ = build_simulation(C.load_config(c))
        sim.run(3)
        assert np.isfinite(sim.arrays()["loss"]).all()


@pytest.mark.parametrize("en,key", [
    ({"mask": "random"}, "energy.mask_fraction"),
    ({"mask": "random", "mask_fraction": 0.5, "mask_count": 3}, "energy.mask_fraction"),
    ({"mask": "random", "mask_count": 100}, "energy.mask_count"),
    ({"mask": "diag", "mask_seed": 3}, "energy.mask_seed"),
    ({"mask": "diag", "rank": 5}, "energy.rank"),
    ({"mask": "diag", "rank": 2, "spectrum": [1.0, 2.0, 3.0]}, "energy.spectrum"),
])
def test_completion_config_errors(en, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        C.load_config(_completion_cfg(**en))


def test_completion_sweep_summary_against_direct_computation(tmp_path):
    """The sweep's completion summary (final reconstruction error per point, min nuclear norm of the
    same masks) on two tiny points built through the config, against dlnsim.metrics / baselines."""
    import matplotlib

    matplotlib.use("Agg")
    from dlnsim.baselines import min_nuclear_norm_completion
    from dlnsim.builders import build_energy
    from dlnsim.sweep.plots import _completion_summary, _fig_completion

    points = []
    for count in (10, 20):
        c = _completion_cfg(mask="random", mask_count=count, mask_per_trajectory=True, rank=1)
        c["observers"] = {"include": ["loss", "effective_rank", "completion_error"]}
        cfg = C.load_config(c)
        sim, _ = build_simulation(cfg)
        sim.run(5)
        points.append(({"network.depth": 2, "energy.mask_count": count}, cfg, sim.arrays()))
        X = sim.state.end_to_end()
        E = build_energy(cfg, "cpu", torch.float64)
        direct = float(completion_errors(X, E.target, E.mask)["reconstruction_error_rel"].mean())
        nn = min_nuclear_norm_completion(E.target * E.mask, E.mask, tol=1e-5)
        points[-1] = points[-1] + (direct, float(completion_errors(nn.X, E.target, E.mask)["reconstruction_error_rel"].mean()))
    rows = _completion_summary([p[:3] for p in points], ["network.depth", "energy.mask_count"])
    assert [r["observed"] for r in rows] == [10, 20]
    for r, p in zip(rows, points):
        assert abs(r["reconstruction_error"] - p[3]) < 1e-12  # the same X, the same formula
        assert abs(r["nuclear_norm_error"] - p[4]) < 1e-12  # deterministic ADMM on the same masks
    _fig_completion(rows, ["network.depth"], {"network.depth": "N"}).savefig(tmp_path / "c.png")


def test_schedule_keys_only_with_their_schedule():
    with pytest.raises(ConfigError, match=r"dynamics\.options\.step_every: only applies to schedule: step"):
        C.load_config(_cfg(options={"step_every": 10}))
    with pytest.raises(ConfigError, match=r"dynamics\.options\.min_factor: only applies to schedule: cosine"):
        C.load_config(_cfg(options={"schedule": "step", "step_every": 5, "min_factor": 0.1}))
