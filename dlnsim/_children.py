"""Worker processes die with the process that started them.

A sweep's pool workers leave the terminal's process group (so that Ctrl-C reaches the sweep
process only, which forwards one SIGTERM); if the sweep process is killed outright (SIGKILL, out of
memory) nobody would stop them, and they would finish their points into folders that a rerun
writes too. `die_with_parent()` asks the kernel to send this process SIGTERM when its parent exits
(Linux: prctl(PR_SET_PDEATHSIG); the runner's SIGTERM handler then finishes the step, writes the
checkpoint and marks the run interrupted), and everywhere else starts a daemon thread that polls
the parent pid once a second and does the same. If the parent is already gone, SIGTERM at once.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time

__all__ = ["die_with_parent"]

PR_SET_PDEATHSIG = 1


def _prctl_pdeathsig(sig: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def die_with_parent(sig: int = signal.SIGTERM, poll_s: float = 1.0) -> None:
    """Deliver `sig` to this process when its parent exits (see the module docstring)."""
    parent = os.getppid()
    if not _prctl_pdeathsig(sig):
        def watch():
            while os.getppid() == parent:
                time.sleep(poll_s)
            os.kill(os.getpid(), sig)

        threading.Thread(target=watch, name="dlnsim-parent-watch", daemon=True).start()
    # the parent may have died before prctl took effect: then the signal was never scheduled
    if os.getppid() != parent or parent == 1:
        os.kill(os.getpid(), sig)
