"""dlnsim speed benchmark: ensembles against what a user would otherwise write, ratios from one run.

    python scripts/bench.py [--device cpu|cuda] [--quick] [--out results/bench] [--threads 1]
                            [--dtype float64|float32] [--compile] [--only a,b,c,d,e,f,g,h] [--clock wall|cpu]

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
 (f) the small-matrix kernels of dlnsim.small_svd against torch.linalg.svd (d = 2, 3, 4; B = 256,
     1024, 4096; with their backward errors), and the RLE and Metropolis steps at d = 2, 3 with those
     kernels against the same steps inside small_svd.lapack_only(); the MetropolisRLE step against the
     RLE step it adjusts (per chain-step, d = 2, 3, N = 2, 3).
 (g) time to accuracy (issue 13): for the stationary law of E = ||X||^2/2, beta = 1 at d = 2, 3 and
     N = 2, 3, each scheme (RLE in both charts, projected, Metropolis on the balanced manifold, the
     Metropolis-adjusted RLE MetropolisRLE, and torchsde running the RLE in
     the layer chart, the same Markov chain as dlnsim's default RLE) at the largest step size of a
     ladder whose bias (against dlnsim.gibbs.SingularValueLaw) is within 1% + 2 standard errors:
     the CPU time to estimate <s_min> and <||X||^2> to 1% relative standard error (the measured
     run's time scaled by (SE / 1%)^2; SE from the per-chain time averages of 1024 independent
     chains). Table rows + <out>/tta_<device>.png.
 (h) memory per trajectory of each scheme (slope of the peak RSS of a child process between two
     ensemble sizes) and the largest ensemble that fits in 24 GiB, d = 2, 8, 32, N = 4.
Targets (2-core CPU): (a) >= 30x at d=16, B=1024 and >= 100x at d=4, B=1024; (b) >= 50% of the
batched-GEMM rate at d=64, B=1024; (c) >= 10x; (d) projected <= 10x GD at d=8, <= 40x at d=16,
Metropolis <= 2x projected, exact fallback < 5% of the step at d=16; (e) >= 1000x at d=8;
(f) >= 5x LAPACK at d=2, >= 3x at d=3 (B >= 1024); (g) best scheme >= 10x torchsde in time to 1%.

Writes <out>/bench_<device>.csv, <out>/bench_<device>.png, <out>/table_<device>.md (and
<out>/tta_<device>.png with item g).
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
        from dlnsim.geometry import SVDFactors

        X = y.view(-1, self.d, self.d)
        return X, SVDFactors.of(X, self.depth)

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


class TorchsdeRLELayer(nn.Module):
    """The RLE in the layer chart Y = U diag(s^{1/N}) V^T as a torchsde user would write it (state
    y = vec Y, general noise): drift from dlnsim's public `rle_layer_drift`, diffusion as the
    (B, d^2, d^2) matrix of dB -> sqrt(2/beta) U [rho^{1/2} o sym(U^T dB V) + rho^{-1/2} o anti(U^T dB V)] V^T
    (rho = B/A of the RiemannianLangevin docstring). Euler-Maruyama on it is the same Markov chain as
    dlnsim's RiemannianLangevin(chart="layer") (one shared SVD in f_and_g)."""

    noise_type = "general"
    sde_type = "ito"

    def __init__(self, energy, depth: int, beta: float, d: int):
        super().__init__()
        self.energy, self.depth, self.beta, self.d = energy, depth, beta, d

    def f_and_g(self, t, y):
        from dlnsim.dynamics.rle import _layer_frame_drift
        from dlnsim.geometry import SVDFactors
        from dlnsim.spectral import log_kernel

        d, N = self.d, self.depth
        Y = y.view(-1, d, d)
        U, x, Vh = torch.linalg.svd(Y)
        s = x**N
        fr = SVDFactors(U, s, Vh.mT, N, log_kernel(s, N))
        X = (U * s.unsqueeze(-2)) @ Vh
        beta = torch.as_tensor(self.beta, dtype=y.dtype)
        drift_f, rho = _layer_frame_drift(fr, self.energy.grad(X), beta)
        drift = U @ drift_f @ Vh
        # Frame map M on vec(Z): M[(ij),(ij)] = (r + 1/r)/2, M[(ij),(ji)] = (r - 1/r)/2, r = rho_ij^{1/2}.
        r = rho.sqrt()
        a, b = 0.5 * (r + 1.0 / r), 0.5 * (r - 1.0 / r)
        eye = torch.eye(d * d, dtype=y.dtype, device=y.device)
        perm = torch.arange(d * d, device=y.device).view(d, d).mT.reshape(-1)
        M = a.reshape(-1, d * d, 1) * eye + b.reshape(-1, d * d, 1) * eye[perm]
        kron = (U[:, :, None, :, None] * Vh.mT[:, None, :, None, :]).reshape(-1, d * d, d * d)
        G = (2.0 / self.beta) ** 0.5 * (kron @ M @ kron.mT)
        return drift.reshape(Y.shape[0], -1), G


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
            n_steps = float(st_n["steps"].sum() if "steps" in st_n else st_n["proposals"].sum())
            fails = (f"projection failures {int(st_n['projection_failures'].sum())}, safeguard rejections "
                     f"{int(st_n['safeguard_rejections'].sum())}"
                     + (f", reverse failures {int(st_n['reverse_failures'].sum())}" if "reverse_failures" in st_n else "")
                     + f" in {int(n_steps)} trajectory-steps")
            check = (f"acceptance {acc:.3f}; " if name == "ml" else
                     f"Newton iterations/step {float(st_n['newton_iterations'].sum()) / n_steps:.2f}; ") + fails
            target = {("pl", 8): 10.0, ("pl", 16): 40.0}.get((name, d))
            rows.append(dict(
                item="d", case=f"{label} d={d} B={B}", d=d, N=DEPTH, B=B,
                dlnsim_s=t[name], baseline_s=t["gd"], ratio=ratio,
                target=target, cmp="<=", check=check,
                note="ratio = Langevin step time / GradientDescent step time (lower is better); schemes at their "
                "default options unless the case says quasi-Newton; d = 16 at B = 32",
            ))
        rows.append(dict(
            item="d", case=f"Metropolis / projected step d={d} B={B}", d=d, N=DEPTH, B=B,
            dlnsim_s=t["ml"], baseline_s=t["pl"], ratio=t["ml"] / t["pl"], target=2.0, cmp="<=",
            check="Metropolis = forward projection + reverse projection (+ frame, gradient and P grad L at y, reused "
            "by the next step when accepted)",
            note="ratio = Langevin step time / GradientDescent step time (lower is better); schemes at their "
            "default options unless the case says quasi-Newton; d = 16 at B = 32",
        ))
        if d == 16:
            share, n_fb, n_traj = _fallback_share(ProjectedLangevin(energy, h, DEPTH, beta, generator=g), weights, 5 if quick else 20)
            rows.append(dict(
                item="d", case=f"exact fallback share of the projected step d={d} B={B}", d=d, N=DEPTH, B=B,
                dlnsim_s=None, baseline_s=None, ratio=share, pct=True, target=0.05, cmp="<=",
                check=f"{n_fb} fallback calls for {n_traj} trajectories in {5 if quick else 20} steps",
                note="fallback share = CPU time in the exact (ExactConstraintSolver) Newton fallback / step time",
            ))
        quasi = f", projected quasi-Newton {t['pq'] * 1e6:9.1f} us ({t['pq'] / t['gd']:.1f}x)" if "pq" in t else ""
        print(f"  (d) d={d:2d} B={B}: GD {t['gd'] * 1e6:9.1f} us, projected {t['pl'] * 1e6:9.1f} us "
              f"({t['pl'] / t['gd']:.1f}x, Newton its/step {newton_p:.2f}), Metropolis {t['ml'] * 1e6:9.1f} us "
              f"({t['ml'] / t['gd']:.1f}x = {t['ml'] / t['pl']:.2f}x projected, acceptance {acc:.3f}){quasi}")
    return rows


def _fallback_share(scheme, weights, n_steps: int) -> tuple[float, int, int]:
    """Fraction of the CPU time of n_steps projected steps spent in the exact Newton fallback."""
    import dlnsim.manifold as manifold

    spent = {"t": 0.0, "calls": 0, "traj": 0}
    orig = manifold.ExactConstraintSolver.newton

    def timed(self, *args, **kwargs):
        t0 = time.process_time()
        try:
            return orig(self, *args, **kwargs)
        finally:
            spent["t"] += time.process_time() - t0
            spent["calls"] += 1
            spent["traj"] += self.W.shape[0] if self.W.dim() > 3 else 1

    state = scheme.init_state(weights=weights)
    scheme.step(state)
    manifold.ExactConstraintSolver.newton = timed
    try:
        t0 = time.process_time()
        for _ in range(n_steps):
            scheme.step(state)
        total = time.process_time() - t0
    finally:
        manifold.ExactConstraintSolver.newton = orig
    return spent["t"] / total, spent["calls"], spent["traj"]


# ----------------------------------------------------------------------------------------------
# (f) small-matrix kernels, and the steps that use them at d = 2, 3
# ----------------------------------------------------------------------------------------------
def bench_small(timer: Timer, device, dtype, quick: bool) -> list[dict]:
    """dlnsim.small_svd.svd against torch.linalg.svd on (B, d, d), and the RLE and Metropolis steps
    at d = 2, 3 with the small kernels against the same steps inside small_svd.lapack_only()."""
    from dlnsim import small_svd
    from dlnsim.dynamics.langevin import MetropolisLangevin
    from dlnsim.dynamics.rle import RiemannianLangevin

    rows = []
    g = torch.Generator(device=device).manual_seed(4)
    for d in (2, 3, 4):
        for B in ((1024,) if quick else (256, 1024, 4096)):
            X = torch.randn(B, d, d, dtype=dtype, device=device, generator=g)
            if d <= 3:
                fn = (lambda X=X: small_svd.svd2(X)) if d == 2 else (lambda X=X: small_svd.jacobi_svd(X))
            else:
                fn = lambda X=X: small_svd.jacobi_svd(X)  # noqa: E731  (not used by svd() at d = 4; timed for the record)
            t = timer.run({"small": fn, "lapack": lambda X=X: torch.linalg.svd(X)})
            U, s, Vh = fn()
            be = float((((U * s.unsqueeze(-2)) @ Vh - X).flatten(-2).norm(dim=-1) / X.flatten(-2).norm(dim=-1)).max())
            Ul, sl, Vhl = torch.linalg.svd(X)
            be_l = float((((Ul * sl.unsqueeze(-2)) @ Vhl - X).flatten(-2).norm(dim=-1) / X.flatten(-2).norm(dim=-1)).max())
            kernel = "closed form" if d == 2 else "Jacobi"
            target = {2: 5.0, 3: 3.0}.get(d) if B >= 1024 else None
            rows.append(dict(
                item="f", case=f"SVD d={d} B={B} ({kernel})", d=d, N="", B=B,
                dlnsim_s=t["small"] / B, baseline_s=t["lapack"] / B, ratio=t["lapack"] / t["small"],
                target=target, cmp=">=",
                check=f"backward error {be:.1e} (LAPACK {be_l:.1e}); kernel used by small_svd.svd: "
                f"{small_svd.svd_kernel(d, device, B)}",
                note="per matrix; dlnsim.small_svd (closed form d=2, one-sided Jacobi d=3, 4) vs torch.linalg.svd",
            ))
            print(f"  (f) SVD d={d} B={B:5d}: small {t['small'] / B * 1e6:7.3f} us, LAPACK {t['lapack'] / B * 1e6:7.3f} us "
                  f"-> {t['lapack'] / t['small']:5.2f}x  (backward {be:.0e} vs {be_l:.0e})")
    energy = WeightDecay(1.0)
    B = 1024
    from dlnsim.dynamics.mala import MetropolisRLE

    for d in (2, 3):
        for N in (2, 3):
            # The Metropolis-adjusted RLE against the plain RLE step (its proposal): the price of the test.
            X0 = torch.randn(B, d, d, dtype=dtype, device=device, generator=g)
            pair = {}
            # h as in (g) (the plain RLE diverges at h = 0.1, N = 3 over a timing run; its cost does not depend on h)
            for name, cls, h in (("mrle", MetropolisRLE, 0.1), ("rle", RiemannianLangevin, 0.005)):
                sch = cls(energy, h, N, 1.0, generator=torch.Generator(device=device).manual_seed(1))
                pair[name] = (sch, sch.init_state(X=X0))
            t = timer.run({k: (lambda s=s: s[0].step(s[1])) for k, s in pair.items()}, repeats=None if not quick else 3)
            acc = float(pair["mrle"][1].stats["accepted"].sum() / pair["mrle"][1].stats["proposals"].sum())
            rows.append(dict(
                item="f", case=f"MetropolisRLE step d={d} N={N} B={B}", d=d, N=N, B=B,
                dlnsim_s=t["mrle"] / B, baseline_s=t["rle"] / B, ratio=t["rle"] / t["mrle"], target=None, cmp=">=",
                check=f"baseline: RiemannianLangevin (layer chart) step at h = 0.005, its proposal; MetropolisRLE at h = 0.1, acceptance {acc:.2f}",
                note="per chain-step; MetropolisRLE against the RLE step it adjusts (ratio < 1: the cost of the test)",
            ))
            print(f"  (f) MetropolisRLE d={d} N={N}: {t['mrle'] / B * 1e6:7.2f} us/chain-step, RLE {t['rle'] / B * 1e6:7.2f} "
                  f"-> {t['rle'] / t['mrle']:.2f}x", flush=True)
    for d in (2, 3):
        for N in (2, 3):
            X0 = torch.randn(B, d, d, dtype=dtype, device=device, generator=g)
            w = balanced_weights(X0, N, g)
            runs = {}
            for kind in ("small", "lapack"):
                rle = RiemannianLangevin(energy, 0.02, N, 1.0, generator=torch.Generator(device=device).manual_seed(1))
                ml = MetropolisLangevin(energy, 0.05, N, 1.0, generator=torch.Generator(device=device).manual_seed(1))
                runs[kind] = (rle, rle.init_state(X=X0), ml, ml.init_state(weights=w))

            def stepper(kind, which):
                rle, srle, ml, sml = runs[kind]
                if which == "rle":
                    f = lambda: rle.step(srle)  # noqa: E731
                else:
                    f = lambda: ml.step(sml)  # noqa: E731
                if kind == "small":
                    return f

                def g_():
                    with small_svd.lapack_only():
                        f()
                return g_

            t = timer.run({f"{w_}_{k}": stepper(k, w_) for w_ in ("rle", "ml") for k in ("small", "lapack")},
                          repeats=None if not quick else 3)
            for w_, label in (("rle", "RLE (layer chart)"), ("ml", "MetropolisLangevin")):
                ratio = t[f"{w_}_lapack"] / t[f"{w_}_small"]
                rows.append(dict(
                    item="f", case=f"{label} step d={d} N={N} B={B}", d=d, N=N, B=B,
                    dlnsim_s=t[f"{w_}_small"] / B, baseline_s=t[f"{w_}_lapack"] / B, ratio=ratio,
                    target=None, cmp=">=", check="same scheme, small kernels vs small_svd.lapack_only()",
                    note="per matrix; dlnsim.small_svd (closed form d=2, one-sided Jacobi d=3, 4) vs torch.linalg.svd",
                ))
                print(f"  (f) {label} d={d} N={N}: {t[f'{w_}_small'] / B * 1e6:7.2f} us/chain-step with the small kernels, "
                      f"{t[f'{w_}_lapack'] / B * 1e6:7.2f} with LAPACK -> {ratio:.2f}x")
    return rows


# ----------------------------------------------------------------------------------------------
# (g) time to accuracy for the stationary law
# ----------------------------------------------------------------------------------------------
TTA_SCHEMES = {
    # scheme -> step-size ladder, largest first (the first h whose bias passes is used). The Euler
    # schemes have O(h) bias (~8-15% in ||X||^2 at h = 0.05), the end-to-end chart O(h^1/2) in s_min
    # (+25% .. +110% at h = 0.02: 1% would need h ~ 1e-5, not tried); Metropolis has none.
    "RLE layer": (0.01, 0.005, 0.0025),
    "RLE end_to_end": (0.01,),
    "ProjectedLangevin": (0.01,),  # slower per step than the RLE at equal bias order: one rung
    "MetropolisLangevin": (0.2, 0.1, 0.05),
    # Metropolis-adjusted RLE (the layer-chart Euler step as proposal): exact at any h, so the ladder runs
    # to large steps; h = 0.4 is usually rejected for its burn-in (2 time units are 5 steps at acceptance ~0.3).
    "MetropolisRLE": (0.4, 0.2, 0.1, 0.05),
}
UNBIASED = ("MetropolisLangevin", "MetropolisRLE")  # no step-size bias: every h is run, the fastest unbiased kept
TTA_TORCHSDE = "torchsde (RLE layer chart)"


def _tta_run(kind: str, d: int, N: int, h: float, B: int, T: float, T_burn: float, dtype, device, seed: int):
    """Run B chains of `kind` for T_burn + T time units at step h (E = ||X||^2/2, beta = 1) from
    X0 ~ Gaussian; returns (s_min, ||X||^2) samples (n_obs, B) thinned to ~0.05 time units, the CPU
    time of the measured part (steps only, observation excluded), the number of steps, and extra info."""
    from dlnsim.dynamics.langevin import MetropolisLangevin, ProjectedLangevin
    from dlnsim.dynamics.mala import MetropolisRLE
    from dlnsim.dynamics.rle import RiemannianLangevin

    energy = WeightDecay(1.0)
    g = torch.Generator(device=device).manual_seed(seed)
    X0 = torch.randn(B, d, d, dtype=dtype, device=device, generator=g)
    n_burn, n = max(1, round(T_burn / h)), max(1, round(T / h))
    every = max(1, round(0.05 / h))
    obs_s, obs_x = [], []
    info = ""
    if kind == "torchsde":
        import torchsde

        from dlnsim.dynamics.rle import from_layer_coordinates, layer_coordinates

        sde = TorchsdeRLELayer(energy, N, 1.0, d)
        y0 = layer_coordinates(X0, N).reshape(B, -1)
        ts = torch.tensor([0.0, n_burn * h], dtype=dtype, device=device)
        y0 = torchsde.sdeint(sde, y0, ts, method="euler", dt=h)[-1]
        ts = torch.arange(0, n + 1, every, dtype=dtype, device=device) * h
        t0 = time.process_time()
        ys = torchsde.sdeint(sde, y0, ts, method="euler", dt=h)
        cpu = time.process_time() - t0
        X = from_layer_coordinates(ys[1:].reshape(-1, B, d, d), N)
        s = torch.linalg.svdvals(X)
        return s[..., -1], (X * X).sum(dim=(-2, -1)), cpu, n, info
    if kind.startswith("RLE") or kind == "MetropolisRLE":
        if kind == "MetropolisRLE":
            scheme = MetropolisRLE(energy, h, N, 1.0, generator=g)
        else:
            scheme = RiemannianLangevin(energy, h, N, 1.0, generator=g, chart="layer" if kind == "RLE layer" else "end_to_end")
        state = scheme.init_state(X=X0)
        get_X = lambda: state.X  # noqa: E731
    else:
        cls = ProjectedLangevin if kind == "ProjectedLangevin" else MetropolisLangevin
        scheme = cls(energy, h, N, 1.0, generator=g)
        state = scheme.init_state(weights=balanced_weights(X0, N, g))
        get_X = lambda: end_to_end(state.weights)  # noqa: E731
    for _ in range(n_burn):
        scheme.step(state)
    cpu = 0.0
    for k in range(1, n + 1):
        t0 = time.process_time()
        scheme.step(state)
        cpu += time.process_time() - t0
        if k % every == 0:
            X = get_X()
            s = torch.linalg.svdvals(X)
            obs_s.append(s[..., -1])
            obs_x.append((X * X).sum(dim=(-2, -1)))
    st = state.stats
    if "accepted" in st and "projection_failures" not in st:
        info = f"acceptance {float(st['accepted'].sum() / st['proposals'].sum()):.3f}, {1e6 * cpu / (n * B):.2f} us per chain-step"
    elif "accepted" in st:
        info = (f"acceptance {float(st['accepted'].sum() / st['proposals'].sum()):.3f}, projection failures "
                f"{int(st['projection_failures'].sum())}, reverse failures {int(st['reverse_failures'].sum())}")
    elif "projection_failures" in st:
        info = f"projection failures {int(st['projection_failures'].sum())} of {int(st['steps'].sum())}"
    return torch.stack(obs_s), torch.stack(obs_x), cpu, n, info


def _tta_stats(samples: torch.Tensor, ref: float, cpu: float) -> dict:
    """Mean, standard error (from the B independent per-chain time averages), integrated
    autocorrelation time in units of recorded samples (n Var(chain mean) / Var(sample)), and the
    CPU time to reach 1% relative standard error: the measured run's time scaled by (SE / 1%)^2."""
    x = samples.double()
    chain_means = x.mean(0)
    B = x.shape[1]
    mean = float(chain_means.mean())
    se = float(chain_means.std() / B**0.5)
    var = float(x.var())
    tau = x.shape[0] * float(chain_means.var()) / var if var > 0 else float("nan")
    target = 0.01 * abs(ref)
    return dict(mean=mean, se=se, bias=mean - ref, tau=tau, ess_per_s=var / se**2 / cpu,
                time_to_1pct=cpu * (se / target) ** 2)


def bench_tta(timer: Timer, device, dtype, quick: bool) -> list[dict]:
    from dlnsim.gibbs import SingularValueLaw

    rows = []
    # B = 1024 chains: at small B every scheme is launch-bound (a d = 2 RLE step costs ~as much at B = 128
    # as at B = 1024), which is not how a stationary study is run.
    B = 128 if quick else 1024
    T, T_burn = (6.0, 2.0) if quick else (8.0, 2.0)
    results = []
    for d in (2, 3):
        for N in (2, 3):
            law = SingularValueLaw(N, 1.0, 1.0, d)
            refs = {"s_min": float(law.moment(lambda s: s[:, -1])), "X2": float(law.moment(lambda s: (s * s).sum(-1)))}
            chosen = {}
            for kind, ladder in TTA_SCHEMES.items():
                for h in (ladder[:1] if quick else ladder):
                    s_min, x2, cpu, n, info = _tta_run(kind, d, N, h, B, T, T_burn, dtype, device, seed=10 + d + 3 * N)
                    st = {"s_min": _tta_stats(s_min, refs["s_min"], cpu), "X2": _tta_stats(x2, refs["X2"], cpu)}
                    # Bias test: |bias| <= 1% of the value + 2 standard errors of this run (bias not
                    # detectably above the 1% target); both observables.
                    ok = all(abs(v["bias"]) <= 0.01 * abs(refs[k]) + 2 * v["se"] for k, v in st.items())
                    cand = (h, st, ok, cpu, n, info)
                    prev = chosen.get(kind)
                    t_c = max(v["time_to_1pct"] for v in st.values())
                    # Metropolis has no step-size bias: every h on its ladder is run, the fastest unbiased kept.
                    if prev is None or (ok and (not prev[2] or t_c < max(v["time_to_1pct"] for v in prev[1].values()))):
                        chosen[kind] = cand
                    print(f"  (g) d={d} N={N} {kind:18s} h={h:<6g} bias s_min {st['s_min']['bias'] / refs['s_min']:+.2%} "
                          f"(se {st['s_min']['se'] / refs['s_min']:.2%}), ||X||^2 {st['X2']['bias'] / refs['X2']:+.2%} "
                          f"(se {st['X2']['se'] / refs['X2']:.2%}) {'ok' if ok else 'BIASED'}; time to 1% "
                          f"{max(v['time_to_1pct'] for v in st.values()):.2f} s; cpu {cpu:.1f} s / {n} steps {info}", flush=True)
                    if ok and kind not in UNBIASED:
                        break
            # torchsde runs the same chain as "RLE layer" (Euler-Maruyama in the layer chart, the unbiased-at-
            # small-h form of the RLE): at that scheme's h, so that both have the same bias.
            h_l = chosen["RLE layer"][0]
            s_min, x2, cpu, n, info = _tta_run("torchsde", d, N, h_l, B, T / 2, T_burn, dtype, device, 99)
            st = {"s_min": _tta_stats(s_min, refs["s_min"], cpu), "X2": _tta_stats(x2, refs["X2"], cpu)}
            ok = all(abs(v["bias"]) <= 0.01 * abs(refs[k]) + 2 * v["se"] for k, v in st.items())
            chosen[TTA_TORCHSDE] = (h_l, st, ok, cpu, n, info)
            print(f"  (g) d={d} N={N} torchsde h={h_l:g}: time to 1% {max(v['time_to_1pct'] for v in st.values()):.2f} s "
                  f"{'ok' if ok else 'BIASED'}; cpu {cpu:.1f} s / {n} steps", flush=True)
            best = min((k for k in chosen if chosen[k][2] and k != TTA_TORCHSDE),
                       key=lambda k: max(v["time_to_1pct"] for v in chosen[k][1].values()), default=None)
            t_sde = max(v["time_to_1pct"] for v in chosen[TTA_TORCHSDE][1].values())
            for kind, (h, st, ok, cpu, n, info) in chosen.items():
                ttime = max(v["time_to_1pct"] for v in st.values())
                results.append(dict(d=d, N=N, kind=kind, h=h, ok=ok, time=ttime, best=kind == best))
                check = "; ".join(
                    f"{k}: bias {v['bias'] / refs[k]:+.2%} +- {v['se'] / refs[k]:.2%} (ref {refs[k]:.4f}), tau {v['tau']:.1f} samples, "
                    f"ESS/s {v['ess_per_s']:.0f}" for k, v in st.items())
                rows.append(dict(
                    item="g", case=f"time to 1% d={d} N={N} {kind} h={h:g}{'' if ok else ' (biased)'}{' BEST' if kind == best else ''}",
                    d=d, N=N, B=B, dlnsim_s=ttime, baseline_s=t_sde, ratio=t_sde / ttime,
                    target=10.0 if kind == best else None, cmp=">=", check=f"{check}; {info}".rstrip("; "),
                    note="CPU seconds to estimate <s_min> and <||X||^2> to 1% relative standard error (the larger of "
                    "the two), E = ||X||^2/2, beta = 1, reference dlnsim.gibbs.SingularValueLaw; ratio = torchsde's time / "
                    "this scheme's; h = the largest on the ladder whose bias is within 1% + 2 SE",
                ))
    return rows, results


def plot_tta(results: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    combos = sorted({(r["d"], r["N"]) for r in results})
    kinds = list(dict.fromkeys(r["kind"] for r in results))
    fig, ax = plt.subplots(figsize=(11, 5))
    width = 0.8 / len(kinds)
    for k, kind in enumerate(kinds):
        xs, ys, hatch = [], [], []
        for c, (d, N) in enumerate(combos):
            r = next((r for r in results if (r["d"], r["N"], r["kind"]) == (d, N, kind)), None)
            if r is None:
                continue
            xs.append(c + (k - len(kinds) / 2 + 0.5) * width)
            ys.append(r["time"])
            hatch.append(r["ok"])
        bars = ax.bar(xs, ys, width, label=kind, color=f"C{k}")
        for b, ok in zip(bars, hatch):
            if not ok:
                b.set_hatch("//")
                b.set_alpha(0.5)
    ax.set_yscale("log")
    ax.set_xticks(range(len(combos)), [f"d={d}, N={N}" for d, N in combos])
    ax.set_ylabel("CPU s to 1% rel. SE of <s_min> and <||X||^2>")
    ax.set_title("(g) time to accuracy, stationary law of E = ||X||^2/2, beta = 1 (hatched: |bias| > 1% + 2 SE at every h tried)", fontsize=9)
    ax.legend(fontsize=8)
    fig.suptitle(textwrap.fill(title, 150), fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# (h) memory per trajectory
# ----------------------------------------------------------------------------------------------
_MEM_CHILD = r"""
import resource, sys, torch
sys.path.insert(0, {root!r})
torch.set_num_threads(1)
from dlnsim.energies import WeightDecay
from dlnsim.network import balanced_weights
kind, d, B, N = {kind!r}, {d}, {B}, {N}
g = torch.Generator().manual_seed(0)
X0 = torch.eye(d, dtype=torch.float64) + 0.3 * torch.randn(B, d, d, dtype=torch.float64, generator=g)
energy = WeightDecay(1.0)
def status(key):
    return int(next(ln.split()[1] for ln in open("/proc/self/status") if ln.startswith(key + ":"))) * 1024
# Reset the resident high-water mark (Linux >= 4.0): the import of torch peaks above the steady state,
# which would hide the step's memory at small B.
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
base = status("VmRSS")
if kind == "GradientDescent":
    from dlnsim.dynamics.gradient import GradientDescent
    s = GradientDescent(energy, 0.01, N); st = s.init_state(weights=balanced_weights(X0, N, g)); step = lambda: s.step(st)
elif kind == "RLE":
    from dlnsim.dynamics.rle import RiemannianLangevin
    s = RiemannianLangevin(energy, 0.01, N, 1.0, generator=g); st = s.init_state(X=X0); step = lambda: s.step(st)
elif kind == "torchsde":
    import torchsde
    sys.path.insert(0, {scripts!r})
    from bench import TorchsdeRLE
    sde = TorchsdeRLE(energy, N, 1.0, d); y0 = X0.reshape(B, -1)
    ts = torch.tensor([0.0, 0.03], dtype=torch.float64)
    step = lambda: torchsde.sdeint(sde, y0, ts, method="euler", dt=0.01)
else:
    from dlnsim.dynamics.langevin import MetropolisLangevin, ProjectedLangevin
    cls = ProjectedLangevin if kind == "ProjectedLangevin" else MetropolisLangevin
    s = cls(energy, 0.01, N, 10.0, generator=g); st = s.init_state(weights=balanced_weights(X0, N, g)); step = lambda: s.step(st)
for _ in range(3):
    step()
print(status("VmHWM") - base)
"""


def bench_memory(quick: bool) -> list[dict]:
    """Peak resident memory of a child process while it builds the state and runs 3 steps (the
    high-water mark reset after the imports), at two ensemble sizes: the slope is the memory per
    trajectory (state + the step's temporaries; records of a run are not included), the intercept
    a fixed cost. Largest ensemble in 24 GiB = (24 GiB - Python/torch (~0.3 GiB) - fixed) / slope."""
    import subprocess

    rows = []
    root = str(Path(__file__).resolve().parents[1])
    scripts = str(Path(__file__).resolve().parent)
    sizes = {2: (8192, 65536), 8: (512, 4096), 32: (16, 128)}
    kinds = ("GradientDescent", "RLE", "ProjectedLangevin", "MetropolisLangevin", "torchsde")
    budget = 24 * 2**30
    for d, (B1, B2) in sizes.items():
        for kind in kinds:
            if quick and d == 32:
                continue
            if kind == "torchsde" and d == 32:
                B1, B2 = 4, 32  # its (B, d^2, d^2) diffusion products cost 2 GFLOP per trajectory-step here
            rss = []
            for B in (B1, B2):
                code = _MEM_CHILD.format(root=root, scripts=scripts, kind=kind, d=d, B=B, N=DEPTH)
                try:
                    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
                    rss.append(int(out.stdout.strip().splitlines()[-1]))
                except (subprocess.SubprocessError, ValueError, IndexError) as exc:
                    print(f"  (h) {kind} d={d} B={B}: failed ({exc})")
                    rss.append(None)
            if None in rss:
                continue
            per = max((rss[1] - rss[0]) / (B2 - B1), 1.0)
            fixed = max(rss[0] - per * B1, 0.0)
            bmax = int((budget - 0.3 * 2**30 - fixed) / per)
            state_bytes = (DEPTH if kind not in ("RLE", "torchsde") else 1) * d * d * 8
            rows.append(dict(
                item="h", case=f"memory {kind} d={d} N={DEPTH}", d=d, N=DEPTH, B=B2,
                dlnsim_s=None, baseline_s=None, ratio=None, mem_per_traj=per, max_ensemble=bmax,
                check=f"peak RSS above the post-import level {rss[0] / 2**20:.1f} MiB at B={B1}, {rss[1] / 2**20:.1f} MiB at B={B2}; state alone "
                f"{state_bytes} B/trajectory; fixed {fixed / 2**20:.0f} MiB",
                note="bytes per trajectory = slope of the peak RSS (state + 3 steps) between two ensemble sizes (float64, "
                "N = 4; the step's temporaries included, run records not); max ensemble = (24 GiB - 0.3 GiB - fixed) / slope",
            ))
            print(f"  (h) {kind:18s} d={d:2d}: {per / 1024:9.1f} KiB/trajectory (state {state_bytes} B), "
                  f"largest ensemble in 24 GiB ~ {bmax:.3g}", flush=True)
    return rows


# ----------------------------------------------------------------------------------------------
# output
# ----------------------------------------------------------------------------------------------
FIELDS = ["item", "case", "d", "N", "B", "dlnsim_s", "baseline_s", "ratio", "dlnsim_rate", "baseline_rate",
          "compiled_s", "mem_per_traj", "max_ensemble", "target", "cmp", "met", "check", "note"]


def finish_rows(rows: list[dict]) -> None:
    for r in rows:
        tgt, ratio = r.get("target"), r.get("ratio")
        if tgt is not None and ratio is not None:
            r["met"] = ratio >= tgt if r.get("cmp") == ">=" else ratio <= tgt


def _pct(r: dict) -> bool:
    return r["item"] == "b" or bool(r.get("pct"))


def fmt_ratio(r: dict) -> str:
    if r.get("ratio") is None:
        return "-"
    return f"{r['ratio']:.0%}" if _pct(r) else f"{r['ratio']:.1f}x"


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
        tgt_s = "" if tgt is None else (f"{r['cmp']} {tgt:.0%}" if _pct(r) else f"{r['cmp']} {tgt:g}x")
        if r["item"] == "b":
            dl = f"{r['dlnsim_rate'] / 1e9:.2f} GFLOP/s" if "dlnsim_rate" in r else "-"
            bl = f"{r['baseline_rate'] / 1e9:.2f} GFLOP/s (bmm)" if "baseline_rate" in r else "-"
        elif r["item"] == "g":
            dl, bl = f"{r['dlnsim_s']:.3g} s", f"{r['baseline_s']:.3g} s (torchsde)"
        elif r["item"] == "h":
            dl, bl = f"{r['mem_per_traj'] / 1024:.1f} KiB/trajectory", f"max B in 24 GiB ~ {r['max_ensemble']:.2g}"
        else:
            dl = f"{r['dlnsim_s'] * 1e6:.2f} us" if r.get("dlnsim_s") is not None else "-"
            bl = f"{r['baseline_s'] * 1e6:.2f} us" if r.get("baseline_s") is not None else "-"
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
    rc = [r for r in rows if r["item"] in "cdef" and r.get("ratio") is not None and not r.get("pct")]
    if rc:
        ax.bar(range(len(rc)), [r["ratio"] for r in rc], color=[{"c": "C1", "d": "C2", "e": "C3", "f": "C4"}[r["item"]] for r in rc])
        for k, r in enumerate(rc):
            if r.get("target") is not None:
                ax.plot([k - 0.4, k + 0.4], [r["target"]] * 2, "k-", lw=2)
        ax.set_yscale("log")
        ax.set_xticks(range(len(rc)), [f"({r['item']}) {r['case']}" for r in rc], rotation=60, ha="right", fontsize=6)
        ax.set(ylabel="ratio (black bar: target)", title="(c) torchsde/dlnsim  (d) Langevin/GD  (e) Gram/closed  (f) LAPACK/small")
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
    ap.add_argument("--only", default="a,b,c,d,e,f,g,h", help="comma-separated subset of items a,b,c,d,e,f,g,h")
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
    if "f" in only:
        rows += bench_small(timer, device, dtype, args.quick)
    tta = []
    if "g" in only:
        rows_g, tta = bench_tta(timer, device, dtype, args.quick)
        rows += rows_g
    if "h" in only and device.type == "cpu":
        rows += bench_memory(args.quick)
    finish_rows(rows)
    if hasattr(os, "getloadavg"):
        header += f", at end={os.getloadavg()[0]:.2f}"
    tag = args.device + ("" if args.dtype == "float64" else f"_{args.dtype}")
    write_outputs(rows, Path(args.out), tag, header)
    if tta:
        plot_tta(tta, Path(args.out) / f"tta_{tag}.png", header)
    print()
    print(f"{'item':4} {'case':40} {'ratio':>10} {'target':>10}  met")
    for r in rows:
        tgt = r.get("target")
        tgt_s = "" if tgt is None else (f"{r['cmp']}{tgt:.0%}" if _pct(r) else f"{r['cmp']}{tgt:g}x")
        met = {True: "yes", False: "NO"}.get(r.get("met"), "")
        print(f"{r['item']:4} {r['case']:40} {fmt_ratio(r):>10} {tgt_s:>10}  {met}")
    print(f"\nwrote {args.out}/bench_{tag}.csv, bench_{tag}.png, table_{tag}.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
