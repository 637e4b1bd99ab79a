"""Worker processes die with the process that started them.

A sweep's pool workers leave the terminal's process group (so that Ctrl-C reaches the sweep
process only, which forwards one SIGTERM); if the sweep process is killed outright (SIGKILL, out of
memory) nobody would stop them, and they would finish their points into folders that a rerun
writes too. Worse, with multiprocessing's fork server the workers are children of the fork server,
which in turn lives as long as any worker holds its "alive" pipe: neither ever exits by itself.

`die_with(pid)` watches the process `pid` (the sweep process, passed to the worker) from a daemon
thread, and when it is gone sends this process `sig` (SIGTERM: the runner finishes its step, writes
the checkpoint and marks the run interrupted), then exits as soon as the process is idle (or after
`grace_s`). With pid None it watches the parent, and on Linux also asks the kernel to send `sig`
at once when the parent exits (prctl(PR_SET_PDEATHSIG)).
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time

__all__ = ["die_with", "pid_alive"]

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


def pid_alive(pid: int) -> bool:
    """True if process `pid` exists and is not a zombie (a killed process its parent has not reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


def die_with(pid: int | None = None, sig: int = signal.SIGTERM, idle=None, poll_s: float = 0.5,
             grace_s: float = 300.0) -> None:
    """Deliver `sig` to this process when process `pid` (default: the parent) is gone; see the module
    docstring. idle: a callable saying whether nothing is in flight (then exit at once)."""
    parent = os.getppid()
    armed = pid is None and _prctl_pdeathsig(sig)
    gone = (lambda: os.getppid() != parent) if pid is None else (lambda: not pid_alive(pid))  # noqa: E731

    def watch():
        while not gone():
            time.sleep(poll_s)
        if not armed:
            os.kill(os.getpid(), sig)
        if idle is not None:
            deadline = time.monotonic() + grace_s
            while not idle() and time.monotonic() < deadline:
                time.sleep(poll_s)
            os._exit(128 + int(sig))

    if idle is not None or not armed:
        threading.Thread(target=watch, name="dlnsim-parent-watch", daemon=True).start()
    if gone():  # already gone before the watch began
        os.kill(os.getpid(), sig)
