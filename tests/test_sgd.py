"""Stochastic gradient dynamics (dlnsim.dynamics.sgd): autograd oracles, full-batch limit, schedules, unbiasedness."""
import math

import pytest
import torch

from dlnsim.dynamics import GradientDescent
from dlnsim.dynamics.sgd import SGD, LRSchedule, Minibatch
from dlnsim.energies import LinearRegression, MatrixCompletion, MatrixRegression
from dlnsim.network import DeepLinearNetwork, end_to_end
from dlnsim.tasks import completion_problem, regression_problem

DTYPE = torch.float64


def _completion(batch=None):
    prob = completion_problem((4, 3), 2, fraction=0.6, mask_batch=batch, noise=0.05, target_seed=3, mask_seed=4)
    return MatrixCompletion(prob.observed, prob.mask)


def _regression():
    prob = regression_problem(3, 4, 9, 5, label_noise=0.1, seed=5)
    return LinearRegression(prob.inputs, prob.outputs)


def _weights(widths, B, seed):
    g = torch.Generator().manual_seed(seed)
    return [W.detach() for W in DeepLinearNetwork(widths, batch=B, init="gaussian", scale=0.9, generator=g).weights]


@pytest.mark.parametrize("energy_fn", [_completion, _regression])
def test_full_batch_is_gradient_descent(energy_fn):
    E = energy_fn()
    ws = _weights([3, 5, 2, 4], 3, 0)
    sgd, gd = SGD(E, 0.05, 3), GradientDescent(E, 0.05, 3)
    assert not sgd.stochastic
    a, b = sgd.init_state(ws), gd.init_state(ws)
    for _ in range(5):
        a, b = sgd.step(a), gd.step(b)
    # same arithmetic up to association order (measured max difference ~1e-16)
    assert max(float((x - y).abs().max()) for x, y in zip(a.weights, b.weights)) < 1e-13
    assert abs(a.t - 0.25) < 1e-15


def _replay_loss(sampler, ws, mb):
    """The minibatch loss whose gradient SGD follows, written directly (autograd oracle)."""
    X = end_to_end(ws)
    B = X.shape[0]
    lam = sampler.label_noise
    if isinstance(sampler.energy, MatrixCompletion):
        E = sampler.energy
        R = (X - E.target).reshape(B, -1).gather(1, mb.idx)
        if mb.noise is not None:
            R = R - lam * mb.noise
        w = E.mask.sum(dim=(-2, -1)).expand(B) / mb.idx.shape[1]
        return (w * 0.5 * (R * R).sum(-1)).sum()
    A, Y = sampler.energy.inputs, sampler.energy.outputs
    Ab, Yb = A.T[mb.idx], Y.T[mb.idx]
    R = Ab @ X.mT - Yb
    if mb.noise is not None:
        R = R - lam * mb.noise
    return 0.5 * (R * R).sum() / mb.idx.shape[1]


@pytest.mark.parametrize(
    "energy_fn,replacement,batch",
    [(lambda: _completion(), True, 3), (lambda: _completion(batch=4), False, 5), (_regression, True, 4), (_regression, False, 6)],
)
def test_minibatch_steps_match_autograd_and_torch_sgd(energy_fn, replacement, batch):
    # SGD with label noise, weight decay and momentum against torch.optim.SGD on the autograd
    # gradient of the same minibatch loss (the minibatches replayed from an identically seeded generator)
    E = energy_fn()
    ws0 = _weights([3, 2, 5, 4], 4, 1)
    h, mu, lam = 0.03, 0.8, 0.01
    scheme = SGD(E, h, 3, batch_size=batch, replacement=replacement, label_noise=0.2, weight_decay=lam,
                 momentum=mu, generator=torch.Generator().manual_seed(7))
    state = scheme.init_state(ws0)
    params = [W.clone().requires_grad_(True) for W in ws0]
    opt = torch.optim.SGD(params, lr=h, momentum=mu, weight_decay=lam)
    replay = torch.Generator().manual_seed(7)
    for _ in range(4):
        state = scheme.step(state)
        mb = scheme.sampler.draw(4, replay, ws0[0])
        if not replacement:  # no index twice within a minibatch
            assert all(len(set(r.tolist())) == batch for r in mb.idx)
        opt.zero_grad()
        _replay_loss(scheme.sampler, params, mb).backward()
        opt.step()
    # 4 steps of O(1) arithmetic: roundoff ~1e-15 (measured <= 4e-16)
    assert max(float((W - P.detach()).abs().max()) for W, P in zip(state.weights, params)) < 1e-12
    assert scheme.stochastic


def test_schedule_factors_and_steps():
    assert [LRSchedule().factor(k) for k in (0, 5)] == [1.0, 1.0]
    s = LRSchedule("step", warmup_steps=2, step_every=3, gamma=0.5)
    assert [s.factor(k) for k in range(9)] == [0.5, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25]
    c = LRSchedule.of({"kind": "cosine", "total_steps": 10, "min_factor": 0.1})
    assert c.factor(0) == 1.0 and abs(c.factor(5) - 0.55) < 1e-15 and abs(c.factor(10) - 0.1) < 1e-15
    assert abs(c.factor(50) - 0.1) < 1e-15  # stays at the floor after total_steps
    # state.t is the sum of the step sizes, and a schedule step equals GD with that step size
    E = MatrixRegression(torch.eye(2, dtype=DTYPE))
    with pytest.raises(ValueError, match="samples"):
        SGD(E, 0.1, 2)
    Ec = _completion()
    ws = _weights([3, 3, 4], 2, 2)
    sgd = SGD(Ec, 0.1, 2, schedule={"kind": "step", "step_every": 1, "gamma": 0.5})
    st = sgd.init_state(ws)
    for _ in range(3):
        st = sgd.step(st)
    ref = ws
    for k in range(3):
        gd = GradientDescent(Ec, 0.1 * 0.5**k, 2)
        ref = gd.step(gd.init_state(ref)).weights
    assert abs(st.t - 0.175) < 1e-15
    assert max(float((a - b).abs().max()) for a, b in zip(st.weights, ref)) < 1e-14
    with pytest.raises(ValueError, match="step_every"):
        LRSchedule("step")
    with pytest.raises(ValueError, match="total_steps"):
        LRSchedule("cosine", warmup_steps=5, total_steps=5)


@pytest.mark.parametrize("energy_fn,replacement", [(lambda: _completion(), False), (_regression, True)])
def test_minibatch_gradient_is_unbiased(energy_fn, replacement):
    # mean of K independent minibatch gradients (X-space) vs grad E: per-entry z-scores with the
    # sample standard deviation; 12 entries, max |z| < 4.5 fails with probability ~1e-4 by chance
    E = energy_fn()
    K = 20000
    scheme = SGD(E, 0.1, 1, batch_size=3, replacement=replacement, label_noise=0.3,
                 generator=torch.Generator().manual_seed(11))
    X = torch.randn(4, 3, dtype=DTYPE, generator=torch.Generator().manual_seed(3))
    XK = X.expand(K, -1, -1)
    G = scheme.sampler.grad(XK, scheme.sampler.draw(K, scheme.generator, XK))
    sd = G.std(0)
    live = sd > 0  # unobserved entries: never sampled, exactly zero in every draw and in grad E
    assert bool((G.mean(0)[~live] == 0).all()) and bool((E.grad(X)[~live] == 0).all())
    z = (G.mean(0) - E.grad(X))[live] / (sd[live] / math.sqrt(K))
    assert float(z.abs().max()) < 4.5


def test_errors_and_batched_masks():
    E = _completion(batch=4)
    ws = _weights([3, 3, 4], 2, 0)
    with pytest.raises(ValueError, match="ensemble has B = 2"):
        SGD(E, 0.1, 2, batch_size=2).init_state(ws)
    with pytest.raises(ValueError, match="exceeds"):
        SGD(E, 0.1, 2, batch_size=100, replacement=False)
    with pytest.raises(ValueError, match="batch_size"):
        SGD(E, 0.1, 2, batch_size=0)
    with pytest.raises(ValueError, match="momentum"):
        SGD(E, 0.1, 2, momentum=1.0)
    with pytest.raises(ValueError, match="label_noise"):
        SGD(E, 0.1, 2, label_noise=-1.0)
    # per-trajectory masks: trajectory b only ever samples entries observed in mask b
    sgd = SGD(E, 0.1, 2, batch_size=5, generator=torch.Generator().manual_seed(0))
    mb = sgd.sampler.draw(4, sgd.generator, ws[0])
    flat = E.mask.reshape(4, -1)
    assert bool((flat.gather(1, mb.idx) == 1).all())
    assert isinstance(mb, Minibatch)


def test_resume_from_checkpoint_is_bit_identical():
    # the momentum buffer is scheme cache (cache_state) and the minibatches come from the generator:
    # saving both with the state reproduces the continuation exactly
    import copy

    E = _completion(batch=2)
    ws = _weights([3, 4, 4], 2, 3)
    kw = dict(batch_size=3, label_noise=0.1, momentum=0.9, weight_decay=0.01, schedule={"kind": "cosine", "total_steps": 6})
    a = SGD(E, 0.05, 2, generator=torch.Generator().manual_seed(4), **kw)
    st = a.init_state(ws)
    for _ in range(3):
        st = a.step(st)
    saved = (copy.deepcopy(st.state_dict()), copy.deepcopy(a.cache_state()), a.generator.get_state())
    for _ in range(3):
        st = a.step(st)
    b = SGD(E, 0.05, 2, generator=torch.Generator(), **kw)
    b.init_state(ws)
    from dlnsim.dynamics.base import State

    sb = State.from_state_dict(saved[0])
    b.load_cache_state(saved[1])
    b.generator.set_state(saved[2])
    for _ in range(3):
        sb = b.step(sb)
    assert all(torch.equal(x, y) for x, y in zip(st.weights, sb.weights)) and st.t == sb.t


def test_sum_with_deterministic_regularizer():
    # E = completion + alpha/2 ||X||^2: the regularizer's gradient is added in full, the noise is unchanged
    from dlnsim.energies import WeightDecay
    from dlnsim.gradient_noise import noise_factor

    Ec, R = _completion(), WeightDecay(0.3)
    ws = _weights([3, 3, 4], 3, 5)
    a = SGD(Ec + R, 0.05, 2, batch_size=3, generator=torch.Generator().manual_seed(1))
    b = SGD(Ec, 0.05, 2, batch_size=3, generator=torch.Generator().manual_seed(1))
    X = end_to_end(ws)
    mb = a.sampler.draw(3, torch.Generator().manual_seed(0), X)
    assert torch.allclose(a.sampler.grad(X, mb), b.sampler.grad(X, mb) + 0.3 * X, atol=1e-15)
    w0 = [W[0] for W in ws]
    ga, Fa = noise_factor(w0, a.sampler)
    gb, Fb = noise_factor(w0, b.sampler)
    assert torch.allclose(Fa, Fb, atol=1e-14) and not torch.allclose(ga, gb)
    with pytest.raises(ValueError, match="exactly one term"):
        SGD(R + R, 0.05, 2)
