"""Where reading a tensor's value back on the host is free: the one switch of data-dependent loops.

    host_reads_free(device) -> bool      True on the CPU, False on accelerators (CUDA, MPS, ...)

On the CPU a tensor's value is already in host memory, so `bool(t.any())` or `int(t.sum())` costs
nothing beyond the reduction, and the solvers use it: early exit once every trajectory has
converged, continuing on the still-active subset, an exact fallback on the trajectories that
failed, the adaptive sweep count of the Jacobi SVD. On an accelerator the same read is a host
synchronisation (the host waits for the queue to drain), so there they queue a fixed amount of
work instead (all max_iter masked iterations, LAPACK/cuSOLVER for the SVD) and make no host sync
in a step. Every such choice asks this function, so that tests/test_host_syncs.py can take the
accelerator path on the CPU (by patching it) and count the host syncs of that path.
"""
from __future__ import annotations

import torch

__all__ = ["host_reads_free"]


def host_reads_free(device: torch.device | str) -> bool:
    """True where a host read of a tensor on `device` is free (the CPU), False elsewhere."""
    return torch.device(device).type == "cpu"
