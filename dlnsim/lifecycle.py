"""How runs and sweep points end: the `Status` of a folder, exit codes, and the one stop-signal handler.

    running -> completed | interrupted | diverged | failed          (a run folder's meta.json)
    pending -> submitted -> running -> ...                          (a sweep point, before its run folder)

`Status` is a str enum: it compares equal to, and is written to JSON/CSV as, its lowercase name.
`StopSignal` turns the first SIGINT/SIGTERM into a request (`signum` set; the loop stops after the
current step and writes a checkpoint); what a second signal does is the owner's choice.
"""
from __future__ import annotations

import enum
import os
import signal
import threading
from typing import Callable

__all__ = ["Status", "FINAL", "EXIT_CODES", "StopSignal", "kill_with_default"]


class Status(enum.StrEnum):
    PENDING = "pending"  # a sweep point not started
    SUBMITTED = "submitted"  # a sweep point queued on a cluster
    RUNNING = "running"
    DONE = "done"  # a sweep point's own record once its run returned (the run folder has the real status)
    COMPLETED = "completed"
    INTERRUPTED = "interrupted"
    DIVERGED = "diverged"
    FAILED = "failed"


FINAL = (Status.COMPLETED, Status.DIVERGED)  # nothing left to do: a rerun skips these
# exit codes of `dlnsim run`; interrupted runs exit with 128 + the signal number instead.
EXIT_CODES = {Status.COMPLETED: 0, Status.FAILED: 1, "user_error": 2, Status.DIVERGED: 3}


def kill_with_default(signum: int) -> None:
    """A second signal stops the process now, the default way (no checkpoint)."""
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


class StopSignal:
    """SIGINT/SIGTERM handler: the first signal sets `signum` (stop after the current step); a
    second one calls `on_second(signum)`, by default `force()` if set (e.g. kill pool workers) and
    then raise KeyboardInterrupt.

    `install()` sets the handlers (main thread only; elsewhere a no-op) and `restore()` puts the
    previous ones back; `with StopSignal(...) as stop:` does both.
    """
    def __init__(self, on_second: Callable[[int], None] | None = None):
        self.signum: int | None = None
        self.on_second = on_second
        self.force: Callable[[], None] | None = None
        self._previous: dict = {}

    def handler(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum
        elif self.on_second is not None:
            self.on_second(signum)
        else:
            if self.force is not None:
                self.force()
            raise KeyboardInterrupt

    def install(self) -> "StopSignal":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self.handler) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def restore(self) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous = {}

    def __enter__(self) -> "StopSignal":
        return self.install()

    def __exit__(self, *exc) -> None:
        self.restore()
