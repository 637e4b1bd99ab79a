"""Tasks of implicit-regularization studies (dlnsim.tasks) and the general-width inits (dlnsim.network)."""
import math

import numpy as np
import pytest
import torch

from dlnsim.energies import MatrixCompletion
from dlnsim.network import DeepLinearNetwork, balanced_weights, balancedness, end_to_end
from dlnsim.tasks import (
    completion_problem,
    load_matrix,
    low_rank_target,
    noisy_observations,
    random_mask,
    regression_problem,
    train_test_split,
)

DTYPE = torch.float64
EPS = torch.finfo(DTYPE).eps


@pytest.mark.parametrize("shape,rank", [((5, 5), 2), ((4, 7), 3), ((8, 3), 3), ((6, 6), 1)])
def test_low_rank_target_rank_and_spectrum(shape, rank):
    Phi = low_rank_target(shape, rank, [3.0, 2.0, 1.0][:rank], seed=0)
    s = torch.linalg.svdvals(Phi)
    assert Phi.shape == shape
    # exact spectrum up to roundoff of the two orthonormal factors (measured ~1e-15)
    assert torch.allclose(s[:rank], torch.tensor([3.0, 2.0, 1.0][:rank], dtype=DTYPE), atol=1e-13)
    assert float(torch.cat([s[rank:], s.new_zeros(1)]).abs().max()) < 1e-14


def test_low_rank_target_profiles_seed_and_batch():
    s = torch.linalg.svdvals(low_rank_target((6, 5), 4, "linear", seed=3))[:4]
    assert torch.allclose(s, torch.tensor([1.0, 0.75, 0.5, 0.25], dtype=DTYPE), atol=1e-13)
    s = torch.linalg.svdvals(low_rank_target((6, 5), 3, "geometric", decay=0.1, seed=3))[:3]
    assert torch.allclose(s, torch.tensor([1.0, 0.1, 0.01], dtype=DTYPE), atol=1e-13)
    A = low_rank_target((10, 10), 5, "gaussian_factors", frobenius_norm=10.0, seed=7)
    assert torch.linalg.matrix_rank(A) == 5 and abs(float(torch.linalg.matrix_norm(A)) - 10.0) < 1e-12
    # same seed, same matrix; another seed, another matrix
    assert torch.equal(low_rank_target((4, 3), 2, seed=1), low_rank_target((4, 3), 2, seed=1))
    assert not torch.allclose(low_rank_target((4, 3), 2, seed=1), low_rank_target((4, 3), 2, seed=2))
    Bt = low_rank_target((4, 3), 2, batch=5, seed=1)
    assert Bt.shape == (5, 4, 3) and int((torch.linalg.matrix_rank(Bt) == 2).sum()) == 5
    with pytest.raises(ValueError, match="rank must be <="):
        low_rank_target((4, 3), 4, seed=0)
    with pytest.raises(ValueError, match="spectrum must list"):
        low_rank_target((4, 3), 2, [1.0], seed=0)
    with pytest.raises(ValueError, match="seed"):
        low_rank_target((4, 3), 2)


def test_random_mask_counts_uniformity_and_batch():
    m = random_mask((6, 7), fraction=0.3, seed=0)
    assert m.shape == (6, 7) and int(m.sum()) == round(0.3 * 42) and set(m.unique().tolist()) <= {0.0, 1.0}
    mb = random_mask((6, 7), count=10, batch=2000, seed=1)
    assert mb.shape == (2000, 6, 7) and bool((mb.sum(dim=(-2, -1)) == 10).all())
    # every entry observed with probability 10/42: z-score of the per-entry frequency over 2000 masks
    p = 10 / 42
    z = (mb.mean(0) - p) / math.sqrt(p * (1 - p) / 2000)
    assert float(z.abs().max()) < 4.5  # 42 entries, max |z| of 42 N(0,1): P(>4.5) ~ 3e-4
    assert not torch.equal(mb[0], mb[1])
    with pytest.raises(ValueError, match="exactly one of"):
        random_mask((3, 3), fraction=0.5, count=2, seed=0)
    with pytest.raises(ValueError, match="count must be <="):
        random_mask((3, 3), count=10, seed=0)


def test_noisy_observations_and_problem():
    prob = completion_problem((8, 8), 2, fraction=0.5, noise=0.1, mask_batch=3)
    assert prob.mask.shape == (3, 8, 8) and prob.observed.shape == (3, 8, 8)
    assert bool((prob.observed[prob.mask == 0] == 0).all())
    resid = (prob.observed - prob.truth)[prob.mask == 1]
    # noise std 0.1 on 96 observed entries: sample std within ~4 standard errors (0.1/sqrt(2*96) each)
    assert abs(float(resid.std()) - 0.1) < 4 * 0.1 / math.sqrt(2 * resid.numel())
    E = MatrixCompletion(prob.observed, prob.mask)
    assert isinstance(E, MatrixCompletion) and E.batch_size == 3
    E.check_batch(3)
    with pytest.raises(ValueError, match="ensemble has B = 4"):
        E.check_batch(4)
    assert torch.equal(E.observed_count(), torch.full((3,), 32.0, dtype=DTYPE))
    clean = noisy_observations(prob.truth, prob.mask[0])
    assert torch.equal(clean, prob.mask[0] * prob.truth)


def test_regression_problem_law():
    cov = torch.tensor([4.0, 1.0, 0.25], dtype=DTYPE)
    prob = regression_problem(3, 2, 20000, 50, input_cov=cov, label_noise=0.5, seed=4)
    A, Y = prob.inputs, prob.outputs
    assert A.shape == (3, 20000) and Y.shape == (2, 20000) and prob.test_inputs.shape == (3, 50)
    emp = A @ A.T / A.shape[1]
    # Wishart standard error of the diagonal: sqrt(2/n) * var
    assert torch.allclose(emp.diagonal(), cov, rtol=5 * math.sqrt(2 / 20000))
    noise = Y - prob.teacher @ A
    assert abs(float(noise.std()) - 0.5) < 5 * 0.5 / math.sqrt(2 * noise.numel())
    assert torch.linalg.matrix_rank(prob.teacher) == 2
    split = train_test_split(A[:, :10], Y[:, :10], 0.3, seed=0)
    assert split.inputs.shape == (3, 7) and split.test_inputs.shape == (3, 3)
    both = torch.cat([split.inputs, split.test_inputs], 1)
    assert sorted(both[0].tolist()) == sorted(A[0, :10].tolist())  # a partition of the columns


def test_load_matrix(tmp_path):
    M = np.arange(6.0).reshape(2, 3)
    np.save(tmp_path / "m.npy", M)
    np.savetxt(tmp_path / "m.csv", M, delimiter=",")
    assert torch.equal(load_matrix(tmp_path / "m.npy"), torch.as_tensor(M))
    assert torch.equal(load_matrix(tmp_path / "m.csv"), torch.as_tensor(M))
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="not loaded"):  # object arrays would need unpickling
        load_matrix(tmp_path / "o.npy")
    with pytest.raises(ValueError, match="no such file"):
        load_matrix(tmp_path / "none.npy")


@pytest.mark.parametrize("widths", [[3, 5, 4, 2], [4, 2, 6], [2, 7, 7, 3], [4, 4, 4]])
def test_rectangular_balanced_weights(widths, gen):
    N, r = len(widths) - 1, min(widths)
    X = low_rank_target((widths[-1], widths[0]), r, torch.linspace(2.0, 0.5, r).tolist(), batch=3, generator=gen)
    ws = balanced_weights(X, N, gen, widths=widths)
    assert [tuple(W.shape) for W in ws] == [(3, widths[p], widths[p - 1]) for p in range(1, N + 1)]
    # phi(W) = X and G_p = 0 to roundoff of N products of O(1) matrices (measured ~1e-15)
    assert float((end_to_end(ws) - X).abs().max()) < 1e-13
    G = balancedness(ws)
    G = G if isinstance(G, list) else list(G.unbind(-3))
    assert max(float(g.abs().max()) for g in G) < 1e-13
    # each layer has the spectrum s^{1/N} (r nonzero singular values)
    sX = torch.linalg.svdvals(X)[..., :r]
    for W in ws:
        sW = torch.linalg.svdvals(W)
        assert torch.allclose(sW[..., :r], sX ** (1.0 / N), atol=1e-13)
        assert float(torch.cat([sW[..., r:].flatten(), sW.new_zeros(1)]).abs().max()) < 1e-13


def test_square_balanced_weights_unchanged_stream():
    # widths=None and widths=[d]*(N+1) draw the same Haar factors: existing seeds keep their runs
    X = torch.randn(2, 3, 3, dtype=DTYPE, generator=torch.Generator().manual_seed(0))
    a = balanced_weights(X, 3, torch.Generator().manual_seed(5))
    b = balanced_weights(X, 3, torch.Generator().manual_seed(5), widths=[3, 3, 3, 3])
    assert all(torch.equal(u, v) for u, v in zip(a, b))


def test_network_inits_general_widths(gen):
    net = DeepLinearNetwork([3, 5, 2], batch=4, init="balanced", scale=0.01, generator=gen)
    G = net.balancedness().detach()
    assert float(G.abs().max()) < 1e-16  # entries ~ 1e-2^2: roundoff 1e-20
    s = torch.linalg.svdvals(net.end_to_end().detach())
    assert torch.allclose(s, torch.full_like(s, 0.01), atol=1e-15)
    net = DeepLinearNetwork([3, 5, 2], batch=2, init="balanced", spectrum=[1.0], generator=gen)
    s = torch.linalg.svdvals(net.end_to_end().detach())
    assert torch.allclose(s, torch.tensor([[1.0, 0.0]] * 2, dtype=DTYPE), atol=1e-14)  # rank-1 start
    # gaussian with an entry std (Arora et al.: 1e-3): sample std of 4 * 60 entries
    net = DeepLinearNetwork([6, 10, 6], batch=4, init="gaussian", std=1e-3, generator=gen)
    w = torch.cat([W.detach().flatten() for W in net.weights])
    assert abs(float(w.std()) / 1e-3 - 1) < 5 / math.sqrt(2 * w.numel())
    net = DeepLinearNetwork([3, 3, 3], batch=2, init="residual", std=0.01, generator=gen)
    dev = torch.stack([W.detach() - torch.eye(3, dtype=DTYPE) for W in net.weights])
    assert 0.003 < float(dev.std()) < 0.03 and float(dev.abs().max()) < 0.06
