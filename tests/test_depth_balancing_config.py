"""Run-layer wiring of the infinite-depth schemes, the balancing flows and init: balance_from_gaussian.

Config rules (one-line ConfigErrors naming the key), the builders' choice of class, and short runs
through dlnsim.builders compared with the library objects they should be.
"""
import math

import pytest
import torch

from dlnsim.builders import build_network, build_simulation
from dlnsim.config import ConfigError, load_config
from dlnsim.dynamics import INFINITE_DEPTH_SCHEMES, SCHEMES, scheme_class
from dlnsim.dynamics.balancing import BalancingFlow, WeightDecayDescent
from dlnsim.dynamics.infinite_depth import InfiniteDepthFlow, InfiniteDepthFreeEnergyFlow, InfiniteDepthLangevin
from dlnsim.network import balancedness, end_to_end
from dlnsim.run_theory import gibbs_setting, reference_flow_applies, saxe_setting

from conftest import rel_err


def _cfg(**sections):
    base = {"network": {"width": 2}, "dynamics": {"steps": 5, "step_size": 0.01}, "output": {"figures": False}}
    for k, v in sections.items():
        base.setdefault(k, {}).update(v)
    return load_config(base)


def test_depth_inf_resolves_and_builds_the_limit_schemes():
    for name, cls in (("end_to_end_flow", InfiniteDepthFlow), ("free_energy_flow", InfiniteDepthFreeEnergyFlow),
                      ("rle", InfiniteDepthLangevin)):
        cfg = _cfg(network={"depth": ".inf"}, dynamics={"scheme": name, "time_scale": "depth", "beta": 2.0})
        assert cfg["network"]["depth"] == math.inf and cfg["network"]["widths"] == [2, 2]
        assert scheme_class(name, math.inf) is cls and INFINITE_DEPTH_SCHEMES[name] is cls
        sim, _ = build_simulation(cfg)
        assert type(sim.scheme) is cls and sim.scheme.depth == math.inf
        sim.run(5)  # records observables (entropy at depth inf: the renormalized S_inf)
        assert torch.isfinite(torch.as_tensor(sim.state.X)).all()
    assert scheme_class("end_to_end_flow", 3) is SCHEMES["end_to_end_flow"]


def test_depth_inf_rules():
    with pytest.raises(ConfigError, match="dynamics.time_scale"):
        _cfg(network={"depth": ".inf"}, dynamics={"scheme": "end_to_end_flow"})
    with pytest.raises(ConfigError, match="dynamics.scheme.*no infinite-depth limit"):
        _cfg(network={"depth": ".inf"}, dynamics={"scheme": "gradient_flow", "time_scale": "depth"})
    with pytest.raises(ConfigError, match="network.widths"):
        load_config({"network": {"depth": ".inf", "widths": [2, 3]}, "dynamics": {"scheme": "end_to_end_flow", "time_scale": "depth"}})
    with pytest.raises(ConfigError, match="network.init"):
        _cfg(network={"depth": ".inf", "init": "balance_from_gaussian"}, dynamics={"scheme": "end_to_end_flow", "time_scale": "depth"})
    with pytest.raises(ConfigError, match="network.depth"):
        _cfg(network={"depth": "infinite"})


def test_depth_inf_saxe_theory_and_no_gibbs_law():
    from dlnsim.run_theory import saxe_reference

    cfg = _cfg(network={"depth": ".inf", "target": "aligned", "spectrum": [0.2, 0.1]},
               energy={"type": "matrix_regression", "target": "diag", "spectrum": [2.0, 1.0]},
               dynamics={"scheme": "end_to_end_flow", "time_scale": "depth", "steps": 300, "step_size": 0.01})
    assert saxe_setting(cfg)
    sim, _ = build_simulation(cfg)
    sim.run(300)
    s = torch.linalg.svdvals(sim.state.X)[0].numpy()
    ref = saxe_reference(cfg, [sim.state.t])[0]
    assert abs(s - ref).max() < 1e-9  # the depth-inf Saxe modes; RK4 h = 0.01
    cfg = _cfg(network={"depth": ".inf"}, energy={"type": "weight_decay"},
               dynamics={"scheme": "rle", "time_scale": "depth", "beta": 2.0})
    assert not gibbs_setting(cfg)  # exp(-beta E + S_inf) dvol is not normalizable at depth inf


def test_depth_inf_config_run_matches_the_library_flow():
    cfg = _cfg(network={"depth": ".inf", "width": 3}, dynamics={"scheme": "free_energy_flow", "time_scale": "depth",
                                                                 "beta": 3.0, "steps": 20})
    sim, gen = build_simulation(cfg)
    X0 = sim.state.X.clone()
    for _ in range(20):
        sim.state = sim.scheme.step(sim.state)
    ref = InfiniteDepthFreeEnergyFlow(sim.scheme.energy, 0.01, beta=3.0)
    st = ref.init_state(X=X0)
    for _ in range(20):
        st = ref.step(st)
    assert rel_err(sim.state.X, st.X) == 0.0


def test_balancing_schemes_are_registered_without_reference_theory():
    cfg = _cfg(network={"depth": 3, "init": "gaussian"}, dynamics={"scheme": "balancing_flow", "options": {"metric": "group"}})
    assert not reference_flow_applies(cfg) and not saxe_setting(cfg)
    sim, _ = build_simulation(cfg)
    assert isinstance(sim.scheme, BalancingFlow) and sim.scheme.metric == "group"
    with pytest.raises(ConfigError, match="dynamics.options"):
        _cfg(network={"depth": 3, "init": "gaussian"}, dynamics={"scheme": "balancing_flow", "options": {"metric": "other"}})
    with pytest.raises(ConfigError, match="dynamics.options"):
        _cfg(network={"depth": 3, "init": "gaussian"}, dynamics={"scheme": "balancing_flow", "options": {"rtol": 1e-6}})
    cfg = _cfg(network={"depth": 3, "init": "gaussian"},
               dynamics={"scheme": "weight_decay_descent", "options": {"weight_decay": 0.5, "method": "rk4"}})
    sim, _ = build_simulation(cfg)
    assert isinstance(sim.scheme, WeightDecayDescent) and sim.scheme.weight_decay == 0.5
    assert not reference_flow_applies(cfg)
    with pytest.raises(ConfigError, match="dynamics.options"):
        _cfg(network={"depth": 3}, dynamics={"scheme": "weight_decay_descent", "options": {"weight_decay": -1}})


def test_init_balance_from_gaussian():
    cfg = _cfg(network={"depth": 3, "width": 2, "init": "balance_from_gaussian", "scale": 1.0},
               dynamics={"ensemble": 2, "seed": 4})
    W = [w.detach() for w in build_network(cfg, generator=torch.Generator().manual_seed(4)).weights]
    g = load_config({**cfg, "network": {**cfg["network"], "init": "gaussian"}})
    W_gauss = [w.detach() for w in build_network(g, generator=torch.Generator().manual_seed(4)).weights]
    assert rel_err(end_to_end(W), end_to_end(W_gauss)) < 1e-9  # the Gaussian X, balanced weights
    assert float(balancedness(W).abs().max()) < 1e-9
    with pytest.raises(ConfigError, match="network.init"):
        load_config({"network": {"widths": [2, 3, 2], "init": "balance_from_gaussian"}})
