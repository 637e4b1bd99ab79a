"""dlnsim speed benchmark: ensembles against what a user would otherwise write, ratios from one run.

    python scripts/bench.py [--device cpu|cuda] [--quick] [--out results/bench] [--threads 1]
                            [--dtype float64|float32] [--compile] [--only a,b,c,d,e] [--clock wall|cpu]

Items (issue 5; every ratio is measured within this run, samples of the two sides interleaved so
that both see the same machine load; each number is the median of repeated samples after warm-up;
on the CPU with one thread the clock is the process's CPU time, so that other jobs on a shared
machine do not inflate it; --clock wall for elapsed time):
 (a) gradient descent in parameter space, trajectories x steps per second: dlnsim
     `GradientDescent.step` on a (B, d, d) ensemble against the per-trajectory loop a user would
     write (one `nn.Sequential` of bias-free `nn.Linear` per trajectory, `torch.optim.SGD`, loss
     1/2 ||net(I) - Phi^T||^2, i.e. E = 1/2 ||X - Phi||^2 on the identity input; same dtype, same
     initial weights, same trajectories: checked to roundoff). N = 4, d in {4, 16, 64},
     B in {1, 64, 1024}; the user loop's cost per trajectory does not depend on B, so it is timed
     on a subset of min(B, 64) trajectories and scaled (said in the table's note).
 (b) the same dlnsim step's achieved FLOP rate (3(N-1) matmuls of 2 d^3 flops per trajectory)
     against the machine's rate measured here: one large GEMM, and torch.bmm on (B, d, d) x
     (B, d, d) (the step's shapes), into a preallocated output (the pure GEMM rate).
 (c) the Riemannian Langevin step for X (dlnsim RiemannianLangevin) against torchsde.sdeint
     (Euler, noise_type="general", same drift and diffusion as a d^2 x d^2 matrix, same
     ensemble), d in {4, 8}, B = 256, equal step counts; plus a check of identical statistics.
 (d) one Langevin step on the balanced manifold (ProjectedLangevin, MetropolisLangevin)
     relative to one GradientDescent step, d in {4, 8, 16}, N = 4.
 (e) closed-form entropy (svdvals + entropy_from_singular_values) against the Gram-determinant
     measurement orbit_log_volume (block Cholesky), per evaluation, N = 4, d in {4, 8, 16}, and
     their agreement at balanced points; a dense Gram determinant slogdet(J^T J) is timed too,
     as the form a user would write.
Targets (2-core CPU): (a) >= 30x at d=16, B=1024 and >= 100x at d=4, B=1024; (b) >= 50% of the
batched-GEMM rate at d=64, B=1024; (c) >= 10x; (d) <= 10x at d=8; (e) >= 1000x at d=8.

Writes <out>/bench_<device>.csv, <out>/bench_<device>.png and <out>/table_<device>.md.
"""
from __future__ import annotations

import argparse
import csv
import inspect
import math
import os
import platform
import statistics
import sys
import textwrap
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from dlnsim.dynamics.gradient import GradientDescent  # noqa: E402
from dlnsim.energies import MatrixRegression, WeightDecay  # noqa: E402
from dlnsim.entropy import entropy_from_singular_values, orbit_log_volume, so_basis  # noqa: E402
from dlnsim.network import balanced_weights, end_to_end  # noqa: E402

DEPTH = 4


# ----------------------------------------------------------------------------------------------
# timing
# ----------------------------------------------------------------------------------------------
class Timer:
    """Interleaved medians: time several callables round-robin so they share the machine's load.

    Each callable is first run `warmup` times, then its inner repeat count k is calibrated so one
    sample lasts >= min_sample_s; a sample is the mean over k calls; the result is the median of
    `repeats` samples (seconds per call).
    """

    def __init__(self, device: torch.device, quick: bool, clock: str = "wall"):
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        # "cpu": CPU time of this process (time.process_time). On a shared CPU machine it does not
        # count the time the benchmark waits for a core while other jobs run, which wall time does.
        self.now = time.process_time if clock == "cpu" else time.perf_counter
        self.repeats = 5 if quick else 11
        self.min_sample_s = 0.01 if quick else 0.05
        self.warmup = 2

    def _one(self, fn, k: int) -> float:
        self.sync()
        t0 = self.now()
        for _ in range(k):
            fn()
        self.sync()
        return (self.now() - t0) / k

    def run(self, fns: dict, repeats: int | None = None) -> dict:
        repeats = self.repeats if repeats is None else min(repeats, self.repeats)
        ks = {}
        for name, fn in fns.items():
            for _ in range(self.warmup):
                fn()
            t = self._one(fn, 1)
            ks[name] = max(1, math.ceil(self.min_sample_s / max(t, 1e-9)))
        samples = {name: [] for name in fns}
        for _ in range(repeats):
            for name, fn in fns.items():
                samples[name].append(self._one(fn, ks[name]))
        return {name: statistics.median(v) for name, v in samples.items()}


# ----------------------------------------------------------------------------------------------
# (a) + (b): gradient descent
# ----------------------------------------------------------------------------------------------
class UserLoop:
    """The loop a user would write: one nn.Sequential of bias-free nn.Linear per trajectory + SGD.

    nn.Linear maps row inputs x -> x W^T, so net(I) = (W_N ... W_1)^T = X^T and the loss
    1/2 ||net(I) - Phi^T||^2 is E(X) = 1/2 ||X - Phi||^2: the same dynamics as dlnsim's.
    """

    def __init__(self, weights: list[torch.Tensor], target: torch.Tensor, lr: float):
        d_in = weights[0].shape[-1]
        kw = dict(dtype=weights[0].dtype, device=weights[0].device)
        self.nets, self.opts = [], []
        for b in range(weights[0].shape[0]):
            net = nn.Sequential(*[nn.Linear(W.shape[-1], W.shape[-2], bias=False, **kw) for W in weights])
            with torch.no_grad():
                for layer, W in zip(net, weights):
                    layer.weight.copy_(W[b])
            self.nets.append(net)
            self.opts.append(torch.optim.SGD(net.parameters(), lr=lr))
        self.inputs = torch.eye(d_in, **kw)
        self.target_T = target.mT.to(**kw)

    def step(self):
        for net, opt in zip(self.nets, self.opts):
            opt.zero_grad()
            loss = 0.5 * (net(self.inputs) - self.target_T).pow(2).sum()
            loss.backward()
            opt.step()

    def weights(self) -> list[torch.Tensor]:
        return [torch.stack([net[p].weight.detach() for net in self.nets]) for p in range(len(self.nets[0]))]


def gd_problem(d: int, B: int, dtype, device, seed: int = 0):
    g = torch.Generator(device=device).manual_seed(seed)
    # Gaussian layers of variance 1/d: X = W_4..W_1 has entries O(d^-1/2); a target of that scale.
    weights = [torch.randn(B, d, d, dtype=dtype, device=device, generator=g) / d**0.5 for _ in range(DEPTH)]
    target = torch.randn(d, d, dtype=dtype, device=device, generator=g) / d**0.5
    return weights, target


def bench_gd(timer: Timer, device, dtype, quick: bool, use_compile: bool) -> tuple[list[dict], list[dict]]:
    rows_a, rows_b = [], []
    h = 0.01
    n_ = 1024 if quick else 2048
    A = torch.randn(n_, n_, dtype=dtype, device=device)
    C = torch.empty_like(A)
    gemm_s = timer.run({"gemm": lambda: torch.mm(A, A, out=C)})["gemm"]
    gemm_rate = 2 * n_**3 / gemm_s
    print(f"  large GEMM {n_}x{n_} ({dtype}): {gemm_rate / 1e9:.1f} GFLOP/s")
    for d in (4, 16, 64):
        for B in (1, 64, 1024):
            weights, target = gd_problem(d, B, dtype, device)
            energy = MatrixRegression(target)
            scheme = GradientDescent(energy, h, DEPTH)
            state = scheme.init_state(weights=weights)
            compiled = None
            if use_compile:
                # A fresh graph per shape (dynamo's recompile limit counts shapes per function);
                # the warm-up calls of the timer pay the compilation, the samples do not.
                torch._dynamo.reset()
                compiled = GradientDescent(energy, h, DEPTH, compile=True)
            S = min(B, 64)
            user = UserLoop([W[:S] for W in weights], target, h)
            # Same trajectories: two steps from the same start agree to roundoff.
            check_state = scheme.init_state(weights=[W[:S] for W in weights])
            check_user = UserLoop([W[:S] for W in weights], target, h)
            for _ in range(2):
                scheme.step(check_state)
                check_user.step()
            dev = max(float((a - b).abs().max()) for a, b in zip(check_state.weights, check_user.weights()))
            a1 = torch.randn(B, d, d, dtype=dtype, device=device)
            b1, c1 = torch.randn_like(a1), torch.empty_like(a1)
            fns = {
                "dlnsim": lambda: scheme.step(state),
                "user": user.step,
                "bmm": lambda: torch.bmm(a1, b1, out=c1),
                "bmm_alloc": lambda: torch.bmm(a1, b1),
            }
            if compiled is not None:
                cstate = compiled.init_state(weights=weights)
                fns["compiled"] = lambda: compiled.step(cstate)
            t = timer.run(fns)
            per_traj_user = t["user"] / S
            per_traj_dln = t["dlnsim"] / B
            ratio = per_traj_user / per_traj_dln
            target_a = {(16, 1024): 30.0, (4, 1024): 100.0}.get((d, B))
            note = f"user loop timed on {S} of {B} trajectories, scaled" if S < B else ""
            row = dict(
                item="a", case=f"GD d={d} B={B}", d=d, N=DEPTH, B=B,
                dlnsim_s=t["dlnsim"], baseline_s=per_traj_user * B, ratio=ratio,
                dlnsim_rate=B / t["dlnsim"], baseline_rate=1 / per_traj_user,
                target=target_a, cmp=">=", check=f"max|W_dlnsim - W_user| after 2 steps = {dev:.1e}", note=note,
            )
            if compiled is not None:
                row["compiled_s"] = t["compiled"]
            rows_a.append(row)
            flops = 3 * (DEPTH - 1) * 2 * d**3 * B
            rate = flops / t["dlnsim"]
            bmm_rate = 2 * d**3 * B / t["bmm"]
            rows_b.append(dict(
                item="b", case=f"GD FLOP rate d={d} B={B}", d=d, N=DEPTH, B=B,
                dlnsim_s=t["dlnsim"], baseline_s=9 * t["bmm"], ratio=rate / bmm_rate,
                dlnsim_rate=rate, baseline_rate=bmm_rate,
                target=0.5 if (d, B) == (64, 1024) else None, cmp=">=",
                check=f"bmm (fresh output) {2 * d**3 * B / t['bmm_alloc'] / 1e9:.2f} GFLOP/s; "
                f"large GEMM {gemm_rate / 1e9:.1f} GFLOP/s; step = {rate / gemm_rate:.0%} of it",
                note="rates in FLOP/s; baseline = bmm into a preallocated output",
            ))
            extra = f"  compiled {t['compiled'] * 1e6:9.1f} us" if compiled is not None else ""
            print(
                f"  (a) d={d:3d} B={B:5d}: dlnsim {t['dlnsim'] * 1e6:10.1f} us/step "
                f"({B / t['dlnsim']:.3g} traj*steps/s), user {per_traj_user * 1e6:8.1f} us/traj-step "
                f"-> {ratio:7.1f}x   (b) {rate / 1e9:6.2f} GFLOP/s = {rate / bmm_rate:5.1%} of bmm "
                f"{bmm_rate / 1e9:.2f}{extra}   [{dev:.0e}]"
            )
    return rows_a, rows_b


# ----------------------------------------------------------------------------------------------
# (e): entropy, closed form against the Gram determinant
# ----------------------------------------------------------------------------------------------
def dense_gram_log_volume(weights: list[torch.Tensor]) -> torch.Tensor:
    """(N-1) log c_d + 1/2 logdet(J^T J) with the orbit Jacobian J formed densely: the form a
    user would write from the definition (no block structure). Same quantity as orbit_log_volume."""
    from dlnsim.entropy import log_orthogonal_volume

    N, d = len(weights), weights[0].shape[-1]
    F = so_basis(d, weights[0].dtype, weights[0].device)
    m = F.shape[0]
    B = weights[0].shape[0]
    J = weights[0].new_zeros(B, N, d * d, N - 1, m)
    for q in range(1, N):  # A_q enters layer q as A_q W_q and layer q+1 as -W_{q+1} A_q
        J[:, q - 1, :, q - 1, :] = (F @ weights[q - 1].unsqueeze(1)).flatten(-2).mT
        J[:, q, :, q - 1, :] = -(weights[q].unsqueeze(1) @ F).flatten(-2).mT
    J = J.reshape(B, N * d * d, (N - 1) * m)
    return (N - 1) * log_orthogonal_volume(d) + 0.5 * torch.linalg.slogdet(J.mT @ J)[1]


def bench_entropy(timer: Timer, device, dtype, quick: bool) -> list[dict]:
    rows = []
    for d, B in ((4, 256), (8, 1), (8, 256), (16, 16)):
        g = torch.Generator(device=device).manual_seed(1)
        X0 = torch.randn(B, d, d, dtype=dtype, device=device, generator=g)
        weights = balanced_weights(X0, DEPTH, g)
        X = end_to_end(weights)
        closed = lambda: entropy_from_singular_values(torch.linalg.svdvals(X), DEPTH)  # noqa: E731
        fns = {"closed": closed, "gram": lambda: orbit_log_volume(weights)}
        if d <= 8:
            fns["dense"] = lambda: dense_gram_log_volume(weights)
        t = timer.run(fns)
        err = float((closed() - orbit_log_volume(weights)).abs().max())
        check = f"max|S_closed - S_gram| = {err:.1e} at balanced points ({'within' if err <= 1e-10 else 'NOT within'} 1e-10)"
        if "dense" in fns:
            err_d = float((dense_gram_log_volume(weights) - orbit_log_volume(weights)).abs().max())
            check += f"; dense-J Gram {t['dense'] / B * 1e6:.1f} us/eval ({t['dense'] / t['closed']:.0f}x closed), |dense - block| = {err_d:.0e}"
        ratio = t["gram"] / t["closed"]
        rows.append(dict(
            item="e", case=f"entropy d={d} B={B}", d=d, N=DEPTH, B=B,
            dlnsim_s=t["closed"] / B, baseline_s=t["gram"] / B, ratio=ratio,
            target=1000.0 if (d == 8 and B == 256) else None, cmp=">=", check=check,
            note="per evaluation (batch of B)",
        ))
        print(
            f"  (e) d={d:2d} B={B:4d}: closed {t['closed'] / B * 1e6:8.2f} us/eval, Gram (block Cholesky) "
            f"{t['gram'] / B * 1e6:9.1f} us/eval -> {ratio:6.1f}x; {check}"
        )
    return rows


# ----------------------------------------------------------------------------------------------
# (c) and (d) need the Langevin schemes of dlnsim.dynamics.langevin / rle
# ----------------------------------------------------------------------------------------------
def bench_rle(timer: Timer, device, dtype, quick: bool) -> list[dict]:
    try:
        import torchsde  # noqa: F401
    except ImportError:
        print("  (c) skipped: torchsde is not installed (pip install 'dlnsim[bench]' or pip install torchsde)")
        return [dict(item="c", case="RLE vs torchsde", note="skipped: torchsde not installed")]
    try:
        from dlnsim.dynamics.rle import RiemannianLangevin  # noqa: F401
    except ImportError as exc:
        print(f"  (c) skipped: dlnsim.dynamics.rle is not available ({exc})")
        return [dict(item="c", case="RLE vs torchsde", note=f"skipped: {exc}")]
    return _bench_rle(timer, device, dtype, quick)


def bench_langevin(timer: Timer, device, dtype, quick: bool) -> list[dict]:
    try:
        from dlnsim.dynamics.langevin import MetropolisLangevin, ProjectedLangevin  # noqa: F401
    except ImportError as exc:
        print(f"  (d) skipped: dlnsim.dynamics.langevin is not available ({exc})")
        return [dict(item="d", case="Langevin vs GD step", note=f"skipped: {exc}")]
    return _bench_langevin(timer, device, dtype, quick)


class TorchsdeRLE(nn.Module):
    """The RLE as a torchsde user writes it: state y = vec X (B, d^2), general noise with the
    diffusion as an explicit (B, d^2, d^2) matrix sqrt(2/beta) A^{1/2} = (U (x) V) diag(K^{1/2}) (U (x) V)^T,
    drift -A(grad E) + beta^{-1} [A(grad S) + (N-1) U diag(s^{1-2/N}) V^T] from dlnsim's public
    theory functions. This class gives torchsde `f_and_g`, which shares one SVD between drift
    and diffusion (a knowledgeable user); `TorchsdeRLEStandard` is the f, g pair of torchsde's docs."""

    noise_type = "general"
    sde_type = "ito"

    def __init__(self, energy, depth: int, beta: float, d: int):
        super().__init__()
        self.energy, self.depth, self.beta, self.d = energy, depth, beta, d

    def _frame(self, y):
        from dlnsim.geometry import SpectralFrame

        X = y.view(-1, self.d, self.d)
        return X, SpectralFrame.of(X, self.depth)

    def _drift(self, X, fr):
        from dlnsim.entropy import entropy_grad_singular_values

        N, beta = self.depth, self.beta
        grad_S = fr.from_singular(entropy_grad_singular_values(fr.s, N))
        ito = (N - 1) * fr.from_singular(fr.s ** (1.0 - 2.0 / N))
        return (fr.apply(grad_S / beta - self.energy.grad(X), 1.0) + ito / beta).reshape(X.shape[0], -1)

    def _diffusion(self, fr):
        d = self.d
        kron = (fr.U[:, :, None, :, None] * fr.V[:, None, :, None, :]).reshape(-1, d * d, d * d)
        root = ((2.0 / self.beta) ** 0.5 * torch.exp(0.5 * fr.log_K)).reshape(-1, 1, d * d)
        return (kron * root) @ kron.mT

    def f_and_g(self, t, y):
        X, fr = self._frame(y)
        return self._drift(X, fr), self._diffusion(fr)


class TorchsdeRLEStandard(nn.Module):
    """The same SDE through torchsde's standard interface: separate f(t, y) and g(t, y) (one SVD each)."""

    noise_type = "general"
    sde_type = "ito"

    def __init__(self, *args):
        super().__init__()
        self.impl = TorchsdeRLE(*args)

    def f(self, t, y):
        return self.impl._drift(*self.impl._frame(y))

    def g(self, t, y):
        return self.impl._diffusion(self.impl._frame(y)[1])


def _bench_rle(timer, device, dtype, quick):
    import torchsde

    from dlnsim.dynamics.rle import RiemannianLangevin, rle_drift
    from dlnsim.geometry import metric_operator_sqrt

    rows = []
    N, beta, h, B = DEPTH, 4.0, 0.01, 256
    energy = WeightDecay(1.0)
    for d in (4, 8, 16):
        n_time = 10 if d <= 8 else 1  # steps per timed call (torchsde: one sdeint call of n_time steps)
        g = torch.Generator(device=device).manual_seed(2)
        X0 = torch.eye(d, dtype=dtype, device=device) + 0.3 * torch.randn(B, d, d, dtype=dtype, device=device, generator=g)
        sde = TorchsdeRLE(energy, N, beta, d)
        sde_std = TorchsdeRLEStandard(energy, N, beta, d)
        # The torchsde side is Euler-Maruyama in X; dlnsim's literal X scheme is the same Markov
        # chain (chart="end_to_end"); its default chart (Euler in the layer coordinates) is timed too.
        charts = inspect.signature(RiemannianLangevin).parameters.get("chart")
        opts = {"chart": "end_to_end"} if charts is not None else {}
        scheme = RiemannianLangevin(energy, h, N, beta, generator=g, **opts)
        state = scheme.init_state(X=X0)
        default_scheme = RiemannianLangevin(energy, h, N, beta, generator=g)
        default_state = default_scheme.init_state(X=X0)
        # Same drift and diffusion: the user's f and g against dlnsim's rle_drift and A^{1/2}.
        f, G = sde.f_and_g(0.0, X0.reshape(B, -1))
        P = torch.randn(B, d, d, dtype=dtype, device=device, generator=g)
        err_f = float((f.view(B, d, d) - rle_drift(X0, energy, N, beta)).abs().max())
        err_g = float(((G @ P.reshape(B, -1, 1)).view(B, d, d) - (2 / beta) ** 0.5 * metric_operator_sqrt(X0, P, N)).abs().max())
        del G
        ts = torch.tensor([0.0, n_time * h], dtype=dtype, device=device)
        y0 = X0.reshape(B, -1)

        def run_dlnsim():
            for _ in range(n_time):
                scheme.step(state)

        def run_default():
            for _ in range(n_time):
                default_scheme.step(default_state)

        t = timer.run({
            "dlnsim": run_dlnsim,
            "dlnsim_default": run_default,
            "torchsde": lambda: torchsde.sdeint(sde_std, y0, ts, method="euler", dt=h),
            "torchsde_fg": lambda: torchsde.sdeint(sde, y0, ts, method="euler", dt=h),
        })
        stats = _rle_same_statistics(sde, scheme, X0, h, quick, torchsde) if d <= 8 else "statistics not run at d=16"
        check = f"|f - rle_drift| = {err_f:.0e}, |g dB - sqrt(2/beta) A^1/2(dB)| = {err_g:.0e}; {stats}"
        if opts:
            check += f"; default chart step {t['dlnsim_default'] / n_time * 1e6:.1f} us"
        for key, label in (("torchsde", "f, g"), ("torchsde_fg", "f_and_g")):
            ratio = t[key] / t["dlnsim"]
            rows.append(dict(
                item="c", case=f"RLE d={d} B={B} vs torchsde {label}", d=d, N=N, B=B,
                dlnsim_s=t["dlnsim"] / n_time, baseline_s=t[key] / n_time, ratio=ratio,
                target=10.0 if d <= 8 else None, cmp=">=", check=check,
                note="per Euler step; dlnsim RiemannianLangevin(chart='end_to_end'), Euler-Maruyama in X like "
                "torchsde.sdeint(method='euler', dt=h), noise_type='general', its default BrownianInterval; "
                "'f, g': torchsde's standard interface (one SVD in each), 'f_and_g': one shared SVD",
            ))
        print(f"  (c) d={d:2d} B={B}: dlnsim {t['dlnsim'] / n_time * 1e6:9.1f} us/step "
              f"(default chart {t['dlnsim_default'] / n_time * 1e6:9.1f}), torchsde f,g "
              f"{t['torchsde'] / n_time * 1e6:9.1f} us/step ({t['torchsde'] / t['dlnsim']:.1f}x), f_and_g "
              f"{t['torchsde_fg'] / n_time * 1e6:9.1f} us/step ({t['torchsde_fg'] / t['dlnsim']:.1f}x); {check}")
    return rows


def _rle_same_statistics(sde, scheme, X0, h, quick, torchsde) -> str:
    """Run both from X0 and compare the stationary mean of ||X||_F^2 (second half of the run):
    per-chain time averages are independent across the B chains, so their standard error is the
    across-chain std / sqrt(B); the two implementations are the same Markov chain in law, so
    z = (m_dlnsim - m_torchsde) / sqrt(se_1^2 + se_2^2) is ~ N(0, 1)."""
    n_steps = 200 if quick else 600
    every = 10
    B = X0.shape[0]
    state = scheme.init_state(X=X0)
    traces = []
    for k in range(1, n_steps + 1):
        scheme.step(state)
        if k % every == 0:
            traces.append((state.X**2).sum(dim=(-2, -1)))
    a = torch.stack(traces[len(traces) // 2 :]).mean(0)
    ts = torch.arange(0, n_steps + 1, every, dtype=X0.dtype, device=X0.device) * h
    ys = torchsde.sdeint(sde, X0.reshape(B, -1), ts, method="euler", dt=h)
    b = (ys[1:] ** 2).sum(-1)
    b = b[len(traces) // 2 :].mean(0)
    ok_a, ok_b = torch.isfinite(a), torch.isfinite(b)
    a, b = a[ok_a], b[ok_b]
    se = (a.var() / a.numel() + b.var() / b.numel()).sqrt()
    z = float((a.mean() - b.mean()) / se)
    bad = f", non-finite chains {int((~ok_a).sum())}/{int((~ok_b).sum())}" if not (ok_a.all() and ok_b.all()) else ""
    return (f"stationary E||X||^2 over t in [{n_steps * h / 2:g}, {n_steps * h:g}]: dlnsim {float(a.mean()):.4f}, "
            f"torchsde {float(b.mean()):.4f}, z = {z:+.2f}{bad}")


def _bench_langevin(timer, device, dtype, quick):
    from dlnsim.dynamics.langevin import MetropolisLangevin, ProjectedLangevin

    rows = []
    beta, h = 10.0, 0.01
    for d in (4, 8, 16):
        B = 256 if d <= 8 else 32  # a d = 16 projected step takes seconds at B = 256
        g = torch.Generator(device=device).manual_seed(3)
        X0 = torch.eye(d, dtype=dtype, device=device) + 0.3 * torch.randn(B, d, d, dtype=dtype, device=device, generator=g)
        weights = balanced_weights(X0, DEPTH, g)
        energy = MatrixRegression(torch.eye(d, dtype=dtype, device=device))
        gd = GradientDescent(energy, h, DEPTH)
        pl = ProjectedLangevin(energy, h, DEPTH, beta, generator=g)
        ml = MetropolisLangevin(energy, h, DEPTH, beta, generator=g)
        schemes = {"gd": gd, "pl": pl, "ml": ml}
        try:  # the cheaper projection (J J^T factorised once per step), when the scheme offers it
            schemes["pq"] = ProjectedLangevin(energy, h, DEPTH, beta, generator=g, method="quasi")
        except (TypeError, ValueError):
            pass
        states = {name: s.init_state(weights=weights) for name, s in schemes.items()}
        t = timer.run(
            {name: (lambda s=s, st=states[name]: s.step(st)) for name, s in schemes.items()},
            repeats=None if d <= 8 else 5,
        )
        st_p, st_m = states["pl"].stats, states["ml"].stats
        newton_p = float(st_p["newton_iterations"].sum() / st_p["steps"].sum())
        acc = float(st_m["accepted"].sum() / st_m["proposals"].sum())
        labels = (("pl", "ProjectedLangevin"), ("ml", "MetropolisLangevin"), ("pq", "ProjectedLangevin quasi-Newton"))
        for name, label in labels:
            if name not in t:
                continue
            ratio = t[name] / t["gd"]
            st_n = states[name].stats
            check = (f"acceptance {acc:.3f}" if name == "ml" else
                     f"Newton iterations/step {float(st_n['newton_iterations'].sum() / st_n['steps'].sum()):.2f}")
            rows.append(dict(
                item="d", case=f"{label} d={d} B={B}", d=d, N=DEPTH, B=B,
                dlnsim_s=t[name], baseline_s=t["gd"], ratio=ratio,
                target=10.0 if (name == "pl" and d == 8) else None, cmp="<=", check=check,
                note="ratio = Langevin step time / GradientDescent step time (lower is better); schemes at their "
                "default options unless the case says quasi-Newton; d = 16 at B = 32",
            ))
        quasi = f", projected quasi-Newton {t['pq'] * 1e6:9.1f} us ({t['pq'] / t['gd']:.1f}x)" if "pq" in t else ""
        print(f"  (d) d={d:2d} B={B}: GD {t['gd'] * 1e6:9.1f} us, projected {t['pl'] * 1e6:9.1f} us "
              f"({t['pl'] / t['gd']:.1f}x, Newton its/step {newton_p:.2f}), Metropolis {t['ml'] * 1e6:9.1f} us "
              f"({t['ml'] / t['gd']:.1f}x, acceptance {acc:.3f}){quasi}")
    return rows


# ----------------------------------------------------------------------------------------------
# output
# ----------------------------------------------------------------------------------------------
FIELDS = ["item", "case", "d", "N", "B", "dlnsim_s", "baseline_s", "ratio", "dlnsim_rate", "baseline_rate",
          "compiled_s", "target", "cmp", "met", "check", "note"]


def finish_rows(rows: list[dict]) -> None:
    for r in rows:
        tgt, ratio = r.get("target"), r.get("ratio")
        if tgt is not None and ratio is not None:
            r["met"] = ratio >= tgt if r.get("cmp") == ">=" else ratio <= tgt


def fmt_ratio(r: dict) -> str:
    if r.get("ratio") is None:
        return "-"
    return f"{r['ratio']:.0%}" if r["item"] == "b" else f"{r['ratio']:.1f}x"


def write_outputs(rows: list[dict], out: Path, tag: str, header: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / f"bench_{tag}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in FIELDS})
    lines = [header, "", "| item | case | dlnsim | baseline | ratio | target | met |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        tgt = r.get("target")
        tgt_s = "" if tgt is None else (f"{r['cmp']} {tgt:.0%}" if r["item"] == "b" else f"{r['cmp']} {tgt:g}x")
        if r["item"] == "b":
            dl = f"{r['dlnsim_rate'] / 1e9:.2f} GFLOP/s" if "dlnsim_rate" in r else "-"
            bl = f"{r['baseline_rate'] / 1e9:.2f} GFLOP/s (bmm)" if "baseline_rate" in r else "-"
        else:
            dl = f"{r['dlnsim_s'] * 1e6:.1f} us" if "dlnsim_s" in r else "-"
            bl = f"{r['baseline_s'] * 1e6:.1f} us" if "baseline_s" in r else "-"
        met = {True: "yes", False: "**no**"}.get(r.get("met"), "")
        lines.append(f"| {r['item']} | {r['case']} | {dl} | {bl} | {fmt_ratio(r)} | {tgt_s} | {met} |")
    notes = sorted({f"({r['item']}) {r['note']}" for r in rows if r.get("note")})
    lines += ["", *[f"- {n}" for n in notes]]
    (out / f"table_{tag}.md").write_text("\n".join(lines) + "\n")
    plot(rows, out / f"bench_{tag}.png", header)


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 6))
    ax = axes[0]
    for d in sorted({r["d"] for r in rows if r["item"] == "a"}):
        rs = [r for r in rows if r["item"] == "a" and r["d"] == d]
        Bs = [r["B"] for r in rs]
        (line,) = ax.loglog(Bs, [r["dlnsim_rate"] for r in rs], "o-", label=f"dlnsim d={d}")
        ax.loglog(Bs, [r["baseline_rate"] for r in rs], "s--", color=line.get_color(), label=f"nn+SGD loop d={d}")
    ax.set(xlabel="ensemble size B", ylabel="trajectories x steps / s", title="(a) gradient descent, N=4")
    if any(r["item"] == "a" for r in rows):
        ax.legend(fontsize=7)
    else:
        ax.set_axis_off()
    ax = axes[1]
    rb = [r for r in rows if r["item"] == "b"]
    if rb:
        labels = [f"d={r['d']}\nB={r['B']}" for r in rb]
        ax.bar(range(len(rb)), [100 * r["ratio"] for r in rb])
        ax.axhline(50, color="k", ls=":", label="target at d=64, B=1024")
        ax.set_xticks(range(len(rb)), labels, fontsize=6)
        ax.set(ylabel="% of the bmm rate (same shapes)", title="(b) GD step FLOP rate")
        ax.legend(fontsize=7)
    else:
        ax.set_axis_off()
    ax = axes[2]
    rc = [r for r in rows if r["item"] in "cde" and r.get("ratio") is not None]
    if rc:
        ax.bar(range(len(rc)), [r["ratio"] for r in rc], color=[{"c": "C1", "d": "C2", "e": "C3"}[r["item"]] for r in rc])
        for k, r in enumerate(rc):
            if r.get("target") is not None:
                ax.plot([k - 0.4, k + 0.4], [r["target"]] * 2, "k-", lw=2)
        ax.set_yscale("log")
        ax.set_xticks(range(len(rc)), [f"({r['item']}) {r['case']}" for r in rc], rotation=60, ha="right", fontsize=6)
        ax.set(ylabel="ratio (black bar: target)", title="(c) torchsde/dlnsim  (d) Langevin/GD  (e) Gram/closed")
    fig.suptitle(textwrap.fill(title, 150), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--quick", action="store_true", help="fewer and shorter samples (a smoke run)")
    ap.add_argument("--out", default="results/bench", help="folder for the CSV, the plot and the table")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (fixed for the whole run)")
    ap.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    ap.add_argument("--compile", action="store_true", help="also time GradientDescent(compile=True) in (a)")
    ap.add_argument("--only", default="a,b,c,d,e", help="comma-separated subset of items a,b,c,d,e")
    ap.add_argument(
        "--clock", default=None, choices=["wall", "cpu"],
        help="wall (perf_counter) or cpu (process CPU time: robust to other jobs on a shared machine). "
        "Default: cpu on --device cpu with --threads 1, wall otherwise",
    )
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch (torch.cuda.is_available() is False)")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    clock = args.clock or ("cpu" if args.device == "cpu" and args.threads == 1 else "wall")
    if clock == "cpu" and (args.device != "cpu" or args.threads != 1):
        raise SystemExit("--clock cpu needs --device cpu --threads 1 (CPU time of several threads, or of a "
                         "process waiting on a GPU, is not the elapsed time)")
    dtype = getattr(torch, args.dtype)
    only = set(args.only.split(","))
    if device.type == "cuda":
        hw = torch.cuda.get_device_name(device)
    else:
        hw = platform.processor() or platform.machine()
        try:
            hw = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
        except (OSError, StopIteration):
            pass
        hw = f"{hw}, {os.cpu_count()} cores"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    header = (
        f"dlnsim bench: device={args.device} ({hw}), torch {torch.__version__}, threads={torch.get_num_threads()}, "
        f"dtype={args.dtype}, clock={clock}, quick={args.quick}, load(1 min) at start={load:.2f}"
    )
    print(header)
    timer = Timer(device, args.quick, clock)
    rows: list[dict] = []
    if only & {"a", "b"}:
        ra, rb = bench_gd(timer, device, dtype, args.quick, args.compile)
        rows += (ra if "a" in only else []) + (rb if "b" in only else [])
    if "c" in only:
        rows += bench_rle(timer, device, dtype, args.quick)
    if "d" in only:
        rows += bench_langevin(timer, device, dtype, args.quick)
    if "e" in only:
        rows += bench_entropy(timer, device, dtype, args.quick)
    finish_rows(rows)
    if hasattr(os, "getloadavg"):
        header += f", at end={os.getloadavg()[0]:.2f}"
    tag = args.device + ("" if args.dtype == "float64" else f"_{args.dtype}")
    write_outputs(rows, Path(args.out), tag, header)
    print()
    print(f"{'item':4} {'case':40} {'ratio':>10} {'target':>10}  met")
    for r in rows:
        tgt = r.get("target")
        tgt_s = "" if tgt is None else (f"{r['cmp']}{tgt:.0%}" if r["item"] == "b" else f"{r['cmp']}{tgt:g}x")
        met = {True: "yes", False: "NO"}.get(r.get("met"), "")
        print(f"{r['item']:4} {r['case']:40} {fmt_ratio(r):>10} {tgt_s:>10}  {met}")
    print(f"\nwrote {args.out}/bench_{tag}.csv, bench_{tag}.png, table_{tag}.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
