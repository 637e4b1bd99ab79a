"""The one atomic file writer: write to a temporary name next to the target, fsync, rename.

An interrupted write never leaves a truncated file under the final name. The temporary name holds
the process and thread id, so concurrent writers (pool workers, the sweep's manifest thread) never
share one.
"""
from __future__ import annotations

import os
import threading

__all__ = ["atomic_write"]


def atomic_write(path: str, write, mode: str = "w") -> None:
    """Write `path` atomically. write: a str (text), bytes, or a callable write(f) given the open file."""
    tmp = f"{path}.tmp{os.getpid()}-{threading.get_ident()}"
    text = "b" not in mode
    try:
        with open(tmp, mode, **({"encoding": "utf-8", "newline": ""} if text else {})) as f:
            if callable(write):
                write(f)
            else:
                f.write(write)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
