"""Stochastic gradient dynamics (dlnsim.dynamics.sgd): autograd oracles, full-batch limit, schedules, unbiasedness."""
import math

import pytest
import torch

from dlnsim.dynamics import GradientDescent
from dlnsim.dynamics.sgd import SGD, LRSchedule, Minibatch, make_sampler
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
    sampler = make_sampler(E, batch, replacement, 0.2)  # its own epoch state, replayed from the same seed
    for _ in range(4):
        state = scheme.step(state)
        mb = sampler.draw(4, replay, ws0[0])
        if not replacement:  # no index twice within a minibatch (b, or n mod b at an epoch's end)
            assert all(len(set(r.tolist())) == mb.idx.shape[1] for r in mb.idx)
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


@pytest.mark.parametrize("replacement,before", [(True, 3), (False, 2)])
def test_resume_from_checkpoint_is_bit_identical(replacement, before):
    # the momentum buffer is scheme cache (cache_state) and the minibatches come from the generator:
    # saving both with the state reproduces the continuation exactly; without replacement the epoch's
    # permutations and position are cache too (saved mid-epoch: 7 entries, b = 3, after 2 of 3 steps)
    import copy

    E = _completion(batch=2)
    ws = _weights([3, 4, 4], 2, 3)
    kw = dict(batch_size=3, replacement=replacement, label_noise=0.1, momentum=0.9, weight_decay=0.01, schedule={"kind": "cosine", "total_steps": 6})
    a = SGD(E, 0.05, 2, generator=torch.Generator().manual_seed(4), **kw)
    st = a.init_state(ws)
    for _ in range(before):
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


@pytest.mark.parametrize("kind", ["completion", "regression"])
def test_without_replacement_is_epochwise_reshuffling(kind):
    # direct count: with n samples and batch b, each epoch is ceil(n/b) steps whose minibatches
    # (b, ..., b, n mod b) use every sample of the trajectory's population exactly once; each epoch
    # and each trajectory draws its own permutation
    B, b = 4, 3
    if kind == "completion":
        E = _completion(batch=B)  # per-trajectory masks, 7 observed entries each
        pops = [set(E.mask[k].flatten().nonzero().squeeze(-1).tolist()) for k in range(B)]
    else:
        E = _regression()  # n = 9 data columns, shared
        pops = [set(range(9))] * B
    n = len(pops[0])
    sgd = SGD(E, 0.01, 2, batch_size=b, replacement=False, generator=torch.Generator().manual_seed(5))
    st = sgd.init_state(_weights([3, 3, 4], B, 1))
    X = end_to_end(st.weights)
    per_epoch = math.ceil(n / b)
    orders = []
    for epoch in range(6):
        draws = [sgd.sampler.draw(B, sgd.generator, X).idx for _ in range(per_epoch)]
        assert [d.shape[1] for d in draws] == [b] * (n // b) + ([n % b] if n % b else [])
        seq = torch.cat(draws, dim=1)  # (B, n): the epoch's order
        for k in range(B):
            assert sorted(seq[k].tolist()) == sorted(pops[k])  # every sample exactly once
        orders.append(seq)
    # 6 epochs x 4 trajectories: 24 permutations of 7 (or 9) samples, all distinct (a repeat among
    # 24 uniform permutations has probability < 24^2 / 2 / 7! = 0.06; with this seed there is none)
    flat = {tuple(o[k].tolist()) for o in orders for k in range(B)}
    assert len(flat) == 6 * B
    # steps go through the same sampler: one SGD step per minibatch, the epoch continues across steps
    assert sgd.sampler.shuffler.pos == n  # 6 whole epochs drawn
    sgd.step(st)
    assert sgd.sampler.shuffler.pos == b  # the step started the 7th epoch


def test_epoch_permutations_are_uniform():
    # the first minibatch of an epoch is a uniform subset: each of the n = 9 samples is in it with
    # probability b/n; K = 20000 trajectories, binomial z-scores, max |z| over 9 samples < 4.5
    E = _regression()
    K, b, n = 20000, 3, 9
    sampler = make_sampler(E, b, False)
    X = torch.zeros(K, 4, 3, dtype=DTYPE)
    idx = sampler.draw(K, torch.Generator().manual_seed(2), X).idx
    counts = torch.bincount(idx.flatten(), minlength=n).to(DTYPE)
    p = b / n
    z = (counts - K * p) / math.sqrt(K * p * (1 - p))
    assert float(z.abs().max()) < 4.5
