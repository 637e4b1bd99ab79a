"""Fast paths equal their reference paths (issue 5), and the benchmark's baselines compute what the
benchmark says they compute. No test here looks at wall time: speed is measured by scripts/bench.py.

Reference for the gradient step: autograd of L(W) = sum_b E(W_N ... W_1) (independent of the
hand-written prefix/suffix products). Tolerances are roundoff: every entry is a sum of at most
N d-term products of O(1) numbers, so float64 differences are a few 1e-16 times the magnitudes;
1e-13 leaves a factor ~100 of headroom and still catches any wrong term (which is O(1e-2) or more).
"""
import importlib.util
from pathlib import Path

import pytest
import torch

import dlnsim.dynamics.gradient as gradient_mod
from dlnsim import (
    CustomEnergy,
    GradientDescent,
    LinearRegression,
    MatrixCompletion,
    MatrixRegression,
    WeightDecay,
)
from dlnsim.dynamics.gradient import descent_update, parameter_gradient
from dlnsim.entropy import orbit_log_volume
from dlnsim.network import balanced_weights, end_to_end, gradient_from_end_to_end

from conftest import DTYPE, make_generator

ROUNDOFF = 1e-13


def _weights(widths, B, g, dtype=DTYPE):
    return [torch.randn(B, widths[p], widths[p - 1], dtype=dtype, generator=g) / widths[p - 1] ** 0.5 for p in range(1, len(widths))]


def _differentiable(energy):
    # CustomEnergy.value detaches (it returns numbers); its fn is the differentiable form.
    return energy.fn if isinstance(energy, CustomEnergy) else energy.value


def _autograd_step(weights, energy, h):
    ws = [W.detach().clone().requires_grad_(True) for W in weights]
    loss = _differentiable(energy)(end_to_end(ws)).sum()
    grads = torch.autograd.grad(loss, ws)
    return [W.detach() - h * g for W, g in zip(ws, grads)]


def _max_diff(a, b):
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


def _energies(widths, B, g):
    d_out, d_in = widths[-1], widths[0]
    target = torch.randn(d_out, d_in, dtype=DTYPE, generator=g)
    mask = (torch.rand(d_out, d_in, generator=g) < 0.6).to(DTYPE)
    A = torch.randn(d_in, 7, dtype=DTYPE, generator=g)
    Y = torch.randn(d_out, 7, dtype=DTYPE, generator=g)
    return {
        "regression": MatrixRegression(target),
        "regression_batched_target": MatrixRegression(torch.randn(B, d_out, d_in, dtype=DTYPE, generator=g)),
        "completion": MatrixCompletion(target, mask),
        "linear_regression": LinearRegression(A, Y),
        "weight_decay_plus_regression": WeightDecay(0.3) + MatrixRegression(target),
        "custom": CustomEnergy(lambda X: 0.25 * ((X - target) ** 4).sum(dim=(-2, -1))),
    }


# Widths: square deep, rectangular (d_0 != d_N, hidden widths differ), depth 1 and 2.
WIDTHS = [[4, 4, 4, 4, 4], [3, 5, 2, 4], [3, 2], [4, 4, 4]]


@pytest.mark.parametrize("widths", WIDTHS, ids=lambda w: "x".join(map(str, w)))
@pytest.mark.parametrize("blocked", [False, True], ids=["one_block", "cache_blocks"])
def test_descent_update_equals_autograd_step(widths, blocked, monkeypatch):
    # blocked=True shrinks the CPU block budget so that B = 11 splits into blocks of 2 (ragged
    # last block); the block count is checked so the test really exercises that path.
    B, h = 11, 0.05
    g = make_generator(1)
    W = _weights(widths, B, g)
    per_traj = 3 * sum(w[0].numel() for w in W) * W[0].element_size()
    monkeypatch.setattr(gradient_mod, "_CPU_BLOCK_BYTES", 2 * per_traj if blocked else 2**40)
    calls = []
    real_block = gradient_mod._descent_block
    monkeypatch.setattr(gradient_mod, "_descent_block", lambda *a, **k: calls.append(1) or real_block(*a, **k))
    for name, energy in _energies(widths, B, g).items():
        calls.clear()
        before = [w.clone() for w in W]
        new = descent_update(W, energy, h)
        ref = _autograd_step(W, energy, h)
        scale = max(float(r.abs().max()) for r in ref)
        assert _max_diff(new, ref) <= ROUNDOFF * scale, name
        assert all(n.shape == w.shape and n.dtype == w.dtype for n, w in zip(new, W))
        assert _max_diff(W, before) == 0.0, f"{name}: descent_update modified its input"
        # Energies whose data carry the batch dim (or are opaque) must not be cut into blocks.
        batch_free = name not in ("regression_batched_target", "custom")
        assert len(calls) == (6 if blocked and batch_free else 1), name


@pytest.mark.parametrize("widths", WIDTHS, ids=lambda w: "x".join(map(str, w)))
def test_gradient_from_end_to_end_equals_autograd(widths):
    # The first layer's gradient skips the product with W_{0:1} = I; N = 1 returns G itself.
    g = make_generator(2)
    W = _weights(widths, 5, g)
    energy = _energies(widths, 5, g)["custom"]
    ws = [w.clone().requires_grad_(True) for w in W]
    ref = torch.autograd.grad(_differentiable(energy)(end_to_end(ws)).sum(), ws)
    got = parameter_gradient(W, energy)
    G = energy.grad(end_to_end(W))
    got2 = gradient_from_end_to_end(W, G)
    scale = max(float(r.abs().max()) for r in ref)
    assert _max_diff(got, ref) <= ROUNDOFF * scale
    assert _max_diff(got2, ref) <= ROUNDOFF * scale


def test_gradient_descent_step_matches_reference_over_many_steps():
    # 50 steps at the blocking size of the benchmark (d = 16, B = 200: blocks of 85 on CPU) against
    # the unfused reference W - h parameter_gradient; roundoff accumulates at most linearly in the
    # number of steps on this contracting problem (h * Lipschitz < 1).
    d, N, B, h = 16, 4, 200, 0.05
    g = make_generator(3)
    W0 = _weights([d] * (N + 1), B, g)
    energy = MatrixRegression(torch.randn(d, d, dtype=DTYPE, generator=g) / d**0.5)
    scheme = GradientDescent(energy, h, N)
    state = scheme.init_state(weights=W0)
    ref = [w.clone() for w in W0]
    for _ in range(50):
        state = scheme.step(state)
        ref = [w - h * gr for w, gr in zip(ref, parameter_gradient(ref, energy))]
    assert state.step == 50 and abs(state.t - 50 * h) < 1e-12
    assert _max_diff(state.weights, ref) <= 50 * ROUNDOFF


def test_float32_run_stays_float32_and_tracks_float64():
    # float32 weights with a float64 target: the weights set the precision (no silent upcast), and
    # one step agrees with the float64 step to float32 roundoff (eps32 = 1.2e-7; 1e-5 relative
    # allows the ~N d accumulated roundings of the products).
    d, N, B, h = 8, 4, 64, 0.05
    g = make_generator(4)
    W64 = _weights([d] * (N + 1), B, g)
    energy = MatrixRegression(torch.randn(d, d, dtype=DTYPE, generator=g))
    W32 = [w.float() for w in W64]
    new32 = GradientDescent(energy, h, N).step(GradientDescent(energy, h, N).init_state(weights=W32)).weights
    new64 = descent_update(W64, energy, h)
    assert all(w.dtype == torch.float32 for w in new32)
    scale = max(float(w.abs().max()) for w in new64)
    assert _max_diff([w.double() for w in new32], new64) <= 1e-5 * scale


# torch's inductor imports torch.utils.mkldnn, which calls the deprecated torch.jit.script_method
# at import time: a warning from torch itself, not from dlnsim.
@pytest.mark.filterwarnings("ignore:.*torch.jit.script_method.*:DeprecationWarning")
@pytest.mark.parametrize("blocked", [False, True], ids=["one_block", "cache_blocks"])
def test_compiled_step_equals_eager_step(blocked, monkeypatch):
    # torch.compile may reorder floating-point sums inside fused kernels: roundoff-level agreement.
    # blocked: blocks of 4 out of B = 6 (a full and a ragged block, each writing into its slice).
    d, N, B, h = 4, 3, 6, 0.05
    if blocked:
        monkeypatch.setattr(gradient_mod, "_CPU_BLOCK_BYTES", 4 * 3 * N * d * d * 8)
    g = make_generator(5)
    W0 = _weights([d] * (N + 1), B, g)
    energy = MatrixRegression(torch.randn(d, d, dtype=DTYPE, generator=g))
    eager = GradientDescent(energy, h, N)
    compiled = GradientDescent(energy, h, N, compile=True)
    s_e, s_c = eager.init_state(weights=W0), compiled.init_state(weights=W0)
    for _ in range(3):
        s_e, s_c = eager.step(s_e), compiled.step(s_c)
    assert _max_diff(s_c.weights, s_e.weights) <= ROUNDOFF


def test_compile_flag_is_validated():
    with pytest.raises(ValueError, match="compile must be True or False"):
        GradientDescent(WeightDecay(1.0), 0.1, 2, compile="yes")


# --------------------------------------------------------------------------- the benchmark's baselines


def _bench_module():
    path = Path(__file__).resolve().parents[1] / "scripts" / "bench.py"
    spec = importlib.util.spec_from_file_location("dlnsim_bench", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_user_loop_is_the_same_dynamics():
    # (a) compares dlnsim with nn.Sequential + SGD per trajectory: it must be the same computation.
    bench = _bench_module()
    d, B, h = 5, 3, 0.05
    weights, target = bench.gd_problem(d, B, DTYPE, torch.device("cpu"))
    scheme = GradientDescent(MatrixRegression(target), h, bench.DEPTH)
    state = scheme.init_state(weights=weights)
    user = bench.UserLoop(weights, target, h)
    for _ in range(4):
        state = scheme.step(state)
        user.step()
    scale = max(float(w.abs().max()) for w in state.weights)
    assert _max_diff(state.weights, user.weights()) <= ROUNDOFF * scale


def test_bench_dense_gram_equals_block_cholesky():
    # (e) times orbit_log_volume against a dense slogdet(J^T J): same quantity, different algebra;
    # at balanced points both equal the closed-form entropy (checked in test_entropy).
    bench = _bench_module()
    g = make_generator(6)
    for d, N in ((3, 2), (4, 4)):
        X = torch.randn(4, d, d, dtype=DTYPE, generator=g)
        W = balanced_weights(X, N, g)
        W = [w + 0.1 * torch.randn(w.shape, dtype=DTYPE, generator=g) for w in W]  # off the manifold too
        assert float((bench.dense_gram_log_volume(W) - orbit_log_volume(W)).abs().max()) < 1e-11


def test_bench_torchsde_baseline_has_dlnsim_drift_and_diffusion():
    # (c) gives torchsde the RLE with the diffusion as an explicit d^2 x d^2 matrix: its drift must
    # be rle_drift and its matrix applied to P must be sqrt(2/beta) A^{1/2}(P) (roundoff).
    rle = pytest.importorskip("dlnsim.dynamics.rle")
    from dlnsim.geometry import metric_operator_sqrt

    bench = _bench_module()
    d, N, B, beta = 3, 4, 5, 2.5
    g = make_generator(7)
    X = torch.eye(d, dtype=DTYPE) + 0.3 * torch.randn(B, d, d, dtype=DTYPE, generator=g)
    P = torch.randn(B, d, d, dtype=DTYPE, generator=g)
    energy = MatrixRegression(torch.randn(d, d, dtype=DTYPE, generator=g))
    f, G = bench.TorchsdeRLE(energy, N, beta, d).f_and_g(0.0, X.reshape(B, -1))
    drift = rle.rle_drift(X, energy, N, beta)
    assert float((f.view(B, d, d) - drift).abs().max()) <= ROUNDOFF * float(drift.abs().max())
    noise = (2.0 / beta) ** 0.5 * metric_operator_sqrt(X, P, N)
    assert float(((G @ P.reshape(B, -1, 1)).view(B, d, d) - noise).abs().max()) <= ROUNDOFF * float(noise.abs().max())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_descent_update_on_cuda_equals_cpu():
    # On a GPU there is no cache blocking (one launch per matmul); same numbers to roundoff (the
    # GPU's GEMMs sum in another order).
    d, N, B, h = 16, 4, 300, 0.05
    g = make_generator(8)
    W = _weights([d] * (N + 1), B, g)
    energy = MatrixRegression(torch.randn(d, d, dtype=DTYPE, generator=g))
    cpu = descent_update(W, energy, h)
    gpu = descent_update([w.cuda() for w in W], MatrixRegression(energy.target.cuda()), h)
    assert all(x.is_cuda for x in gpu)
    assert _max_diff([x.cpu() for x in gpu], cpu) <= ROUNDOFF
