"""Networks (initialisations, forward, end-to-end map), energies, and the hand-written parameter
gradient against autograd (docs/theory.md sections 1-2)."""
import pytest
import torch

from dlnsim import (
    CustomEnergy,
    DeepLinearNetwork,
    EndToEndFlow,
    GradientDescent,
    LinearRegression,
    MatrixCompletion,
    MatrixRegression,
    WeightDecay,
)
from dlnsim.dynamics import parameter_gradient
from dlnsim.network import balanced_weights, balancedness, end_to_end

from conftest import DTYPE, make_generator


def _energies(d_out, d_in, g):
    """One instance of every energy class for X of shape (d_out, d_in)."""
    Phi = torch.randn(d_out, d_in, dtype=DTYPE, generator=g)
    mask = (torch.rand(d_out, d_in, generator=g, dtype=DTYPE) < 0.6).to(DTYPE)
    A = torch.randn(d_in, 7, dtype=DTYPE, generator=g)
    Y = torch.randn(d_out, 7, dtype=DTYPE, generator=g)
    quartic = lambda X: 0.25 * ((X - 0.3) ** 4).sum(dim=(-2, -1)) + torch.sin(X).sum(dim=(-2, -1))  # noqa: E731
    return {
        "matrix_regression": MatrixRegression(Phi),
        "linear_regression": LinearRegression(A, Y),
        "matrix_completion": MatrixCompletion(Phi, mask),
        "weight_decay": WeightDecay(0.7),
        "custom": CustomEnergy(quartic),
        "sum": MatrixRegression(Phi) + WeightDecay(0.3),
    }, quartic


def _autograd_value(energy, fn, X):
    """E(X) as a differentiable graph: CustomEnergy's value is detached by design, use its fn."""
    return fn(X) if isinstance(energy, CustomEnergy) else energy.value(X)


WIDTHS = [[3, 3], [2, 5], [4, 3, 2], [3, 5, 2, 4], [2, 3, 3, 4, 1, 3]]


@pytest.mark.parametrize("widths", WIDTHS, ids=lambda w: "-".join(map(str, w)))
def test_parameter_gradient_matches_autograd(widths):
    g = make_generator(sum(widths))
    energies, quartic = _energies(widths[-1], widths[0], g)
    net = DeepLinearNetwork(widths, batch=3, init="gaussian", generator=g)
    for name, energy in energies.items():
        W = [w.detach().clone().requires_grad_(True) for w in net.weights]
        loss = _autograd_value(energy, quartic, end_to_end(W)).sum()
        auto = torch.autograd.grad(loss, W)
        hand = parameter_gradient([w.detach() for w in W], energy)
        for p, (a, h) in enumerate(zip(auto, hand)):
            # Same products in a different order: roundoff ~ N eps ||W||^N ||grad E||.
            assert h.shape == a.shape
            assert float((h - a).abs().max()) <= 1e-12 * max(1.0, float(a.abs().max())), (name, p)


@pytest.mark.parametrize("shape", [(3, 3), (2, 4)])
def test_energy_grad_matches_autograd_of_value(shape):
    g = make_generator(7 + shape[1])
    energies, quartic = _energies(*shape, g)
    X = torch.randn(4, *shape, dtype=DTYPE, generator=g)
    for name, energy in energies.items():
        Xv = X.clone().requires_grad_(True)
        val = _autograd_value(energy, quartic, Xv)
        (auto,) = torch.autograd.grad(val.sum(), Xv)
        v, G = energy.value_and_grad(X)
        assert v.shape == (4,) and G.shape == X.shape
        assert torch.allclose(v, val.detach(), rtol=1e-14, atol=1e-14), name
        assert torch.allclose(energy.grad(X), auto, rtol=1e-13, atol=1e-13), name
        assert torch.allclose(G, auto, rtol=1e-13, atol=1e-13), name


def test_energy_values_match_definitions():
    g = make_generator(3)
    X = torch.randn(2, 3, 4, dtype=DTYPE, generator=g)
    Phi = torch.randn(3, 4, dtype=DTYPE, generator=g)
    A = torch.randn(4, 9, dtype=DTYPE, generator=g)
    Y = torch.randn(3, 9, dtype=DTYPE, generator=g)
    mask = torch.tensor([[1.0, 0, 1, 0], [0, 1, 1, 1], [1, 1, 0, 0]], dtype=DTYPE)
    sq = lambda M: (M**2).sum(dim=(-2, -1))  # noqa: E731
    # Linear regression goes through sufficient statistics: check against 1/(2n) ||X A - Y||^2.
    assert torch.allclose(LinearRegression(A, Y).value(X), sq(X @ A - Y) / 18, rtol=1e-13)
    assert torch.allclose(MatrixRegression(Phi).value(X), 0.5 * sq(X - Phi), rtol=1e-14)
    assert torch.allclose(MatrixCompletion(Phi, mask).value(X), 0.5 * sq(mask * (X - Phi)), rtol=1e-14)
    assert torch.allclose(WeightDecay(2.5).value(X), 1.25 * sq(X), rtol=1e-14)
    assert WeightDecay(1.0).orthogonally_invariant and not MatrixRegression(Phi).orthogonally_invariant


# --------------------------------------------------------------------------- initialisations


@torch.no_grad()  # parameters are nn.Parameters; float() of them would warn
def test_balanced_init_over_target():
    g = make_generator(11)
    Phi = torch.randn(3, 3, dtype=DTYPE, generator=g)
    net = DeepLinearNetwork([3, 3, 3, 3], batch=4, init="balanced", target=Phi, generator=g)
    assert [tuple(W.shape) for W in net.weights] == [(4, 3, 3)] * 3
    assert all(W.dtype == torch.float64 for W in net.weights)
    assert float((net.end_to_end() - Phi).abs().max()) < 1e-13
    # G_p = W_{p+1}^T W_{p+1} - W_p W_p^T = Q_p (diag(s^{2/N}) - diag(s^{2/N})) Q_p^T: roundoff only.
    assert float(net.balancedness().abs().max()) < 1e-13
    # The random Q_p differ across the ensemble: the weights are not copies of each other.
    assert float((net.weights[0][0] - net.weights[0][1]).abs().max()) > 1e-3


@torch.no_grad()  # parameters are nn.Parameters; float() of them would warn
def test_balanced_init_random_with_spectrum_and_scale():
    g = make_generator(12)
    spec = [3.0, 1.0, 0.25, 0.5]
    net = DeepLinearNetwork([4] * 4, batch=5, init="balanced", spectrum=spec, generator=g)
    s = torch.linalg.svdvals(net.end_to_end())
    assert torch.allclose(s, torch.tensor(sorted(spec, reverse=True), dtype=DTYPE).expand(5, 4), rtol=1e-13)
    assert float(net.balancedness().abs().max()) < 1e-13
    # The singular vectors are random: the ensemble members differ.
    X = net.end_to_end()
    assert float((X[0] - X[1]).abs().max()) > 1e-3
    net = DeepLinearNetwork([3, 3, 3], batch=2, init="balanced", scale=0.5, generator=g)
    assert torch.allclose(torch.linalg.svdvals(net.end_to_end()), torch.full((2, 3), 0.5, dtype=DTYPE), rtol=1e-13)
    # balanced_weights (functional form), batched over X.
    X = torch.randn(3, 3, 3, dtype=DTYPE, generator=g)
    W = balanced_weights(X, 4, generator=g)
    assert float((end_to_end(W) - X).abs().max()) < 1e-13
    assert float(balancedness(W).abs().max()) < 1e-13
    assert balancedness(W).shape == (3, 3, 3, 3)


@torch.no_grad()  # parameters are nn.Parameters; float() of them would warn
def test_gaussian_init_statistics():
    # Entries ~ N(0, scale^2 / d_{p-1}); sample variance of n normals has std err var sqrt(2/(n-1)).
    g = make_generator(13)
    widths, scale = [3, 4, 5], 0.8
    net = DeepLinearNetwork(widths, batch=2000, init="gaussian", scale=scale, generator=g)
    assert [tuple(W.shape) for W in net.weights] == [(2000, 4, 3), (2000, 5, 4)]
    for p, W in enumerate(net.weights, start=1):
        var = scale**2 / widths[p - 1]
        n = W.numel()
        z = (float(W.var()) - var) / (var * (2 / (n - 1)) ** 0.5)
        assert abs(z) < 5, (p, z)
        assert abs(float(W.mean())) / (var / n) ** 0.5 < 5


@torch.no_grad()  # parameters are nn.Parameters; float() of them would warn
def test_orthogonal_and_identity_init():
    g = make_generator(14)
    widths = [3, 5, 5, 2]
    net = DeepLinearNetwork(widths, batch=3, init="orthogonal", scale=1.5, generator=g)
    for W in net.weights:
        d_out, d_in = W.shape[-2:]
        # Rectangular blocks of a Haar matrix: orthonormal rows (wide) or columns (tall), times scale.
        M = W @ W.mT if d_out <= d_in else W.mT @ W
        assert torch.allclose(M, 2.25 * torch.eye(min(d_out, d_in), dtype=DTYPE).expand_as(M), atol=1e-13)
    net = DeepLinearNetwork([2, 3, 2], batch=2, init="identity", scale=0.5)
    assert torch.equal(net.weights[0][1], 0.5 * torch.eye(3, 2, dtype=DTYPE))
    assert torch.equal(net.end_to_end(), 0.25 * torch.eye(2, dtype=DTYPE).expand(2, 2, 2))


@torch.no_grad()  # parameters are nn.Parameters; float() of them would warn
def test_from_weights_dtype_device_and_forward():
    g = make_generator(15)
    Ws = [torch.randn(4, 3, 2, dtype=DTYPE, generator=g), torch.randn(4, 5, 3, dtype=DTYPE, generator=g)]
    net = DeepLinearNetwork.from_weights(Ws)
    assert net.depth == 2 and net.widths == [2, 3, 5] and net.batch_size == 4
    assert all(torch.equal(a, b) for a, b in zip(net.weights, Ws))
    assert torch.equal(net.end_to_end(), Ws[1] @ Ws[0])
    # A 2-D tensor means one network.
    single = DeepLinearNetwork.from_weights([Ws[0][0], Ws[1][0]])
    assert single.batch_size == 1 and single.weights[0].shape == (1, 3, 2)
    # forward: inputs are rows, output row k = X x_k, i.e. x @ X^T; shared or per-member inputs.
    x = torch.randn(6, 2, dtype=DTYPE, generator=g)
    X = net.end_to_end()
    assert torch.allclose(net(x), x @ X.mT, rtol=1e-14, atol=1e-14)
    xb = torch.randn(4, 6, 2, dtype=DTYPE, generator=g)
    assert torch.allclose(net(xb), xb @ X.mT, rtol=1e-14, atol=1e-14)
    assert net(x).shape == (4, 6, 5)
    # dtype option.
    net32 = DeepLinearNetwork([2, 3], batch=2, dtype=torch.float32, generator=g)
    assert net32.weights[0].dtype == torch.float32
    assert DeepLinearNetwork([2, 3], batch=2).weights[0].dtype == torch.float64
    # Parameters are trainable leaves (an nn.Module usable with torch.optim).
    assert all(W.requires_grad for W in net.parameters())


# --------------------------------------------------------------------------- bad input


def test_network_bad_input():
    with pytest.raises(ValueError, match=r"widths\[1\] must be a positive integer"):
        DeepLinearNetwork([3, 0, 3])
    with pytest.raises(ValueError, match=r"widths\[0\] must be a positive integer"):
        DeepLinearNetwork([-2, 3])
    with pytest.raises(ValueError, match="positive integer"):
        DeepLinearNetwork([3, 2.5])
    with pytest.raises(ValueError, match="depth >= 1"):
        DeepLinearNetwork([3])
    with pytest.raises(ValueError, match="batch"):
        DeepLinearNetwork([3, 3], batch=0)
    with pytest.raises(ValueError, match="init must be one of"):
        DeepLinearNetwork([3, 3], init="xavier")
    with pytest.raises(ValueError, match="scale"):
        DeepLinearNetwork([3, 3], scale=-1.0)
    with pytest.raises(ValueError, match="equal widths"):
        DeepLinearNetwork([3, 4, 3], init="balanced")
    with pytest.raises(ValueError, match="target must have shape"):
        DeepLinearNetwork([3, 3, 3], init="balanced", target=torch.zeros(2, 2, dtype=DTYPE))
    with pytest.raises(ValueError, match="spectrum"):
        DeepLinearNetwork([3, 3, 3], init="balanced", spectrum=[1.0, 2.0])
    with pytest.raises(ValueError, match="do not chain"):
        DeepLinearNetwork.from_weights([torch.zeros(2, 3, 2, dtype=DTYPE), torch.zeros(2, 4, 4, dtype=DTYPE)])
    with pytest.raises(ValueError, match="non-empty"):
        DeepLinearNetwork.from_weights([])
    net = DeepLinearNetwork([2, 3], batch=2)
    with pytest.raises(ValueError, match="x must have shape"):
        net(torch.zeros(5, 3, dtype=DTYPE))
    with pytest.raises(ValueError, match="depth"):
        balanced_weights(torch.eye(3, dtype=DTYPE), 0)
    with pytest.raises(ValueError, match="square"):
        balanced_weights(torch.zeros(3, 2, dtype=DTYPE), 2)


def test_energy_bad_input_and_shape_vs_network():
    with pytest.raises(ValueError, match="same number of samples"):
        LinearRegression(torch.zeros(3, 5, dtype=DTYPE), torch.zeros(2, 4, dtype=DTYPE))
    with pytest.raises(ValueError, match="mask shape"):
        MatrixCompletion(torch.zeros(3, 3, dtype=DTYPE), torch.ones(3, 2, dtype=DTYPE))
    with pytest.raises(ValueError, match="alpha must be positive"):
        WeightDecay(0.0)
    with pytest.raises(ValueError, match="must be a matrix"):
        MatrixRegression(torch.zeros(3, dtype=DTYPE))
    # The energy's data fixes (d_out, d_in); a network with other end widths is refused at start.
    energy = MatrixRegression(torch.zeros(3, 4, dtype=DTYPE))
    net = DeepLinearNetwork([3, 3, 3], batch=2)
    with pytest.raises(ValueError, match=r"expects X of shape \(3, 4\)"):
        GradientDescent(energy, 0.1, 2).init_state(weights=list(net.weights))
    with pytest.raises(ValueError, match=r"expects X of shape \(3, 4\)"):
        EndToEndFlow(energy, 0.1, 2).init_state(X=net.end_to_end())
    with pytest.raises(ValueError, match=r"expects X of shape"):
        LinearRegression(torch.zeros(4, 5, dtype=DTYPE), torch.zeros(2, 5, dtype=DTYPE)).check_shape(3, 4)
    with pytest.raises(ValueError, match="step_size"):
        GradientDescent(energy, 0.0, 2)
