"""Every scheme of the registry through the config factories, on every available device.

On CPU this checks the device plumbing of the factories (energy data, network, scheme, observer
all on `device.device`); where CUDA is present (a lent GPU: `pytest tests/test_devices.py`) the
same runs execute there and deterministic schemes are compared with the CPU run. Tolerances:
deterministic schemes follow the same float64 arithmetic up to library roundoff (different BLAS
/ SVD kernels), amplified over 50 steps of a contracting flow: 1e-9 relative. Stochastic schemes
draw from device-specific generators, so only finiteness, shapes and the manifold constraint are
compared.
"""
from __future__ import annotations

import pytest
import torch

from dlnsim.builders import beta_of, build_energy, build_network, build_observer, build_scheme
from dlnsim.config import load_config
from dlnsim.dynamics import SCHEMES
from dlnsim.manifold import check_point_on_manifold

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
STOCHASTIC = tuple(name for name, cls in SCHEMES.items() if cls.stochastic)
STEPS = 50
# schemes that need an energy of samples: minibatches of random observed entries, one mask per trajectory
ENERGY = {"sgd": {"type": "matrix_completion", "target": "random", "mask": "random", "mask_fraction": 0.6,
                  "mask_per_trajectory": True}}
OPTIONS = {"sgd": {"batch_size": 3, "label_noise": 0.1, "momentum": 0.5}}


def _run(scheme_name: str, device: str):
    cfg = load_config(
        {
            "network": {"width": 3, "depth": 3, "init": "balanced", "scale": 0.7},
            "energy": ENERGY.get(scheme_name, {"type": "weight_decay" if scheme_name in STOCHASTIC else "matrix_regression"}),
            "dynamics": {
                "scheme": scheme_name,
                "step_size": 0.01,
                "steps": STEPS,
                "ensemble": 4,
                "seed": 3,
                "beta": 2.0 if SCHEMES[scheme_name].needs_beta else None,
                "options": OPTIONS.get(scheme_name, {}),
            },
            "observers": {"every": 10},
            "device": {"device": device},
        }
    )
    energy = build_energy(cfg, cfg["device"]["device"], torch.float64)
    generator = torch.Generator(device=device).manual_seed(cfg["dynamics"]["seed"])
    beta = beta_of(cfg, device, torch.float64)
    scheme = build_scheme(cfg, energy, generator, beta)
    net = build_network(cfg, generator=generator)
    state = scheme.init_state(weights=[W.detach() for W in net.weights])
    observer = build_observer(cfg, energy, scheme, beta)
    for _ in range(STEPS):
        state = scheme.step(state)
    return state, observer.measure(state)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scheme_name", SCHEMES)
def test_every_scheme_runs_on_the_device(scheme_name, device):
    state, obs = _run(scheme_name, device)
    X = state.end_to_end()
    assert X.device.type == device and X.dtype == torch.float64
    assert bool(torch.isfinite(X).all())
    for k, v in obs.items():
        assert v.device.type == device, k
        assert v.shape[0] == 4, k
    if state.weights is not None and SCHEMES[scheme_name].on_manifold:
        ok, reason = check_point_on_manifold(state.weights, atol=1e-9)
        assert ok, reason


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on a lent GPU)")
@pytest.mark.parametrize("scheme_name", [s for s in SCHEMES if s not in STOCHASTIC])
def test_deterministic_schemes_agree_between_cpu_and_cuda(scheme_name):
    cpu, _ = _run(scheme_name, "cpu")
    gpu, _ = _run(scheme_name, "cuda")
    Xc, Xg = cpu.end_to_end(), gpu.end_to_end().cpu()
    assert float((Xc - Xg).norm() / Xc.norm()) < 1e-9
