"""One writer per result folder: an exclusive lock held while a process writes a run folder.

The lock is the file `<folder>/.lock`, locked with flock(2) for the lifetime of the writer and
holding its pid, host and start time (JSON) so that a refused process can say who holds it. The
kernel drops a flock when its holder exits, however it exits (SIGKILL, a crash, out of memory), so
a lock file left behind by a dead process is stale by construction: the next writer takes it over.

Guaranteed: on one machine (any local file system), two processes never hold the lock of one
folder at once. Not guaranteed: across NFS clients (flock over NFS is emulated with byte-range
locks on Linux >= 2.6.12 with NFSv4, but older servers and other systems do not honour it), nor on
systems without fcntl (Windows): there the lock is advisory only (the pid file is still written
and a live pid on this host is still refused).
"""
from __future__ import annotations

import json
import os
import socket
import time

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = ["RunLock", "FolderInUse", "LOCK_NAME"]

LOCK_NAME = ".lock"


class FolderInUse(ValueError):
    """Another live process writes this folder (one line: who, since when)."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0  # exists but not ours (or an absurd number: treat as alive only if plausible)
    return True


def _holder(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


class RunLock:
    """`with RunLock(folder):` holds the folder's lock, or raises FolderInUse at once (never waits)."""

    def __init__(self, folder: str):
        self.folder = folder
        self.path = os.path.join(folder, LOCK_NAME)
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        for _ in range(20):  # a holder may remove the file between our open and our flock: retry
            fd = self._try_acquire()
            if fd is not None:
                self._fd = fd
                return self
        raise FolderInUse(f"{self.folder}: its lock file keeps changing (another dlnsim starts and stops here); retry")

    def _try_acquire(self) -> int | None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise self._in_use(_holder(self.path)) from None
            else:  # no flock: trust a live pid on this host
                info = _holder(self.path)
                if info.get("host") == socket.gethostname() and isinstance(info.get("pid"), int) \
                        and info["pid"] != os.getpid() and _pid_alive(info["pid"]):
                    raise self._in_use(info)
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # we locked a file its holder had just removed
                os.close(fd)
                return None
            info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _in_use(self, info: dict) -> FolderInUse:
        who = f"process {info.get('pid', '?')} on {info.get('host', '?')}"
        since = f" since {info['since']}" if info.get("since") else ""
        return FolderInUse(f"{self.folder}: in use by {who}{since} (another dlnsim writes this folder); "
                           "wait for it to finish or stop it, then retry")

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.remove(self.path)  # before unlocking: a waiter then creates a fresh file
        except OSError:
            pass
        try:
            if fcntl is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
