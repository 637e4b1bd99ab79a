"""What a run will cost, known before anything is allocated: memory estimate, step count, threads.

A config that asks for more than the machine has must fail in one line naming the key to change,
before a result folder exists, rather than after minutes of swapping, a MemoryError traceback or a
libgomp abort. The estimate is an upper-end order of magnitude (not an exact count): it counts
the tensors a run holds at once:

    state       B P s          B trajectories (ensemble x betas), P = sum_p d_p d_{p-1} parameters,
                               s bytes per number; x WORK copies alive inside a step (scheme stages,
                               gradients, frames)
    manifold    B N d^2 m s    the dense constraint Jacobian of the manifold Langevin schemes,
                               m = (N-1) d(d+1)/2 constraints (held dense when m <= 24)
    gram        B k P s        the orbit tangents of entropy_measured, k = (N-1) d(d-1)/2
    records     T B q 8        T save points of q recorded numbers per trajectory, twice (the
                               list of records and the stacked arrays); records streamed to disk
                               (output.records) cost two chunks instead
    data        (d_0+d_N) n 8 + B d_N n s   regression inputs/outputs and X A

and compares it with `device.max_memory_gb` (default: 80% of the physical memory, or of the
address-space limit when one is set, or of the GPU's memory on CUDA). The user raises the limit
with that key; nothing else depends on it.
"""
from __future__ import annotations

import math
import os
import resource

from .record_store import CHUNK_BYTES, DISK_BYTES

__all__ = ["MAX_STEPS", "step_count", "available_cpus", "check_threads", "memory_estimate",
           "memory_limit_bytes", "check_memory", "fmt_bytes"]

MAX_STEPS = 10**12  # a run of more steps could not finish (1e12 steps at 1 us each: 11 days)
WORK = 12  # tensors of the state's size alive at once inside a step (RK4 stages, Newton iterates, ...)
DENSE_MAX = 24


def step_count(time: float, step_size: float) -> int:
    """round(time / step_size) >= 1, or ValueError('dynamics.time: ...') when it overflows or is absurd."""
    ratio = float(time) / float(step_size)
    if not math.isfinite(ratio) or ratio > MAX_STEPS:
        shown = "more than 10^308" if not math.isfinite(ratio) else f"{ratio:.3g}"
        raise ValueError(f"dynamics.time: time / step_size = {time:g} / {step_size:g} is {shown} steps, "
                         f"more than any run can take ({MAX_STEPS:.0e}); shorten dynamics.time or enlarge dynamics.step_size")
    return max(1, round(ratio))


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def check_threads(threads: int | None) -> None:
    if threads is not None and threads > available_cpus():
        raise ValueError(f"device.threads: {threads} is more than the {available_cpus()} CPUs available here; "
                         f"set device.threads <= {available_cpus()} (or null for torch's default)")


def fmt_bytes(n: float) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} B"


def _n_betas(beta) -> int:
    return len(beta) if isinstance(beta, (list, tuple)) else 1


def memory_estimate(cfg: dict) -> tuple[float, dict[str, float], str]:
    """(bytes, {component: bytes}, key to blame) for a resolved run config (not a study)."""
    net, dyn, en, obs, dev = cfg["network"], cfg["dynamics"], cfg["energy"], cfg["observers"], cfg["device"]
    widths = [int(w) for w in net["widths"]]
    N = len(widths) - 1
    s = 4 if dev.get("dtype") == "float32" else 8
    ens, nb = int(dyn["ensemble"]), _n_betas(dyn.get("beta"))
    B = ens * nb
    layer_sizes = [widths[p] * widths[p - 1] for p in range(1, N + 1)]
    P = sum(layer_sizes)
    d = max(widths)
    r = min(widths[0], widths[-1])
    parts: dict[str, float] = {}
    # a tensor object costs about 200 bytes beyond its data; a list of N layers, WORK times over
    parts["state"] = float(B) * P * s * WORK + 200.0 * N * WORK
    scheme = str(dyn.get("scheme", ""))
    if scheme in ("langevin_projected", "langevin_metropolis"):
        m = (N - 1) * d * (d + 1) // 2
        if m <= DENSE_MAX:
            parts["manifold"] = float(B) * N * d * d * m * s * 3
    include = obs.get("include") or ()
    if "entropy_measured" in include or obs.get("entropy_measured") == "true":
        k = (N - 1) * d * (d - 1) // 2
        parts["gram"] = float(B) * k * P * s * 2
    steps, every = int(dyn["steps"]), int(obs["every"] or 1)
    T = steps // every + 2
    q = 2 * r + max(N - 1, 1) + 16 + (widths[-1] * widths[0] if "X" in include else 0)
    parts["records"] = float(T) * B * q * 8 * 2
    streamed = cfg.get("output", {}).get("records", "auto")
    if streamed == "disk" or (streamed == "auto" and float(T) * B * q * 8 > DISK_BYTES):
        # streamed to disk (dlnsim.record_store): a chunk in memory and its copy, plus the save times
        parts["records"] = 2.0 * (CHUNK_BYTES + B * q * 8) + T * 16.0
    if en.get("type") == "linear_regression":
        n = int(en.get("n_samples") or 0) + int(en.get("n_test") or 0) if not (en.get("data") or en.get("train_inputs")) else 0
        if n:
            parts["data"] = float(widths[0] + widths[-1]) * n * 8 * 2 + float(B) * widths[-1] * n * s * 3
    total = sum(parts.values())
    # blame the key whose value is furthest above the ordinary (ensemble 1000, width 100, depth 100,
    # n_samples 10^5, 1000 save points): a guide to what to reduce, not a proof
    big = max(parts, key=parts.get)
    if big == "data":
        key = "energy.n_samples"
    elif big == "records" and T > 10 * B:
        key = "observers.every"
    else:
        score = {"dynamics.ensemble": B / 1e3, "network.width": max(layer_sizes) / 1e4, "network.depth": N / 1e2}
        key = max(score, key=score.get)
    return total, parts, key


def memory_limit_bytes(cfg: dict) -> tuple[float, str]:
    """(limit, how it was set) from device.max_memory_gb or the machine."""
    given = cfg["device"].get("max_memory_gb")
    if given is not None:
        return float(given) * 2**30, f"device.max_memory_gb = {given:g}"
    if str(cfg["device"].get("device", "cpu")).startswith("cuda"):
        try:
            import torch

            if torch.cuda.is_available():
                total = torch.cuda.get_device_properties(0).total_memory
                return 0.8 * total, f"80% of the GPU's {fmt_bytes(total)} (device.max_memory_gb to change)"
        except Exception:  # noqa: BLE001 - no GPU information: fall back to the host's
            pass
    try:
        phys = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        phys = 16 * 2**30
    limit, what = 0.8 * phys, f"80% of this machine's {fmt_bytes(phys)}"
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY and 0.8 * soft < limit:
        limit, what = 0.8 * soft, f"80% of this process's address-space limit {fmt_bytes(soft)}"
    return limit, what + " (device.max_memory_gb to change)"


def check_memory(cfg: dict) -> float:
    """Raise ValueError (one line, naming the key) if the run would need more memory than allowed;
    returns the estimate in bytes."""
    total, parts, key = memory_estimate(cfg)
    limit, what = memory_limit_bytes(cfg)
    if total > limit:
        top = ", ".join(f"{k} {fmt_bytes(v)}" for k, v in sorted(parts.items(), key=lambda kv: -kv[1])[:3])
        raise ValueError(f"{key}: the run needs about {fmt_bytes(total)} of memory ({top}), more than "
                         f"{fmt_bytes(limit)} ({what}); reduce {key} or raise device.max_memory_gb")
    return total
