"""Which `dlnsim` Python imports: refuse a checkout folder taken for the package, and keep child
processes on the package the parent runs.

The trap: Python puts the current directory first on sys.path for `python -m ...` and `python -c
...` (the latter is how multiprocessing starts its fork server). Run from a directory that holds the
checkout folder `dlnsim/` (the repository root, no __init__.py), `import dlnsim` then finds that
folder as a *namespace package* before an editable install's finder is consulted; its submodules
still resolve through that finder, so the failure surfaces later as "module 'dlnsim' has no attribute
...", or `dlnsim.results` resolving to the results/ folder of the checkout.

- `namespace_problem()`: the one-line reason when `dlnsim` is such a namespace package (None when
  all is well); the command line calls it first.
- `child_environment()`: a context manager for the process pools of sweeps: children get
  PYTHONSAFEPATH=1 (no current directory put first on their path, Python >= 3.11), the root of the
  package this process runs first on PYTHONPATH (so they import the same dlnsim), and sys.path
  entries that would shadow the package are dropped for the pool's lifetime (multiprocessing's spawn
  start method copies sys.path into the child).
"""
from __future__ import annotations

import contextlib
import os
import sys

__all__ = ["namespace_problem", "package_root", "child_environment"]


def namespace_problem() -> str | None:
    """A one-line reason if `dlnsim` was imported as a namespace package (a folder without
    __init__.py, e.g. the checkout folder seen from its parent directory), else None."""
    mod = sys.modules.get("dlnsim")
    if mod is None or getattr(mod, "__file__", None):
        return None
    where = next(iter(getattr(mod, "__path__", []) or []), "?")
    return (f"Python imported the folder {where} as the package 'dlnsim' (a namespace package: the current "
            f"directory {os.getcwd()} comes first on Python's path and holds a folder named dlnsim); "
            "run from another directory, e.g. inside the checkout, or use the installed `dlnsim` command")


def package_root() -> str:
    """The directory holding this dlnsim package (what PYTHONPATH needs to import it)."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _shadows(entry: str, pkg_dir: str) -> bool:
    """True if sys.path entry `entry` holds a folder named dlnsim that is not this package."""
    base = os.path.abspath(entry or os.getcwd())
    cand = os.path.join(base, "dlnsim")
    if not os.path.isdir(cand):
        return False
    try:
        return not os.path.samefile(cand, pkg_dir)
    except OSError:
        return True


@contextlib.contextmanager
def child_environment():
    """Within the block, processes started from this one import this process's dlnsim package."""
    pkg_dir = os.path.dirname(os.path.abspath(__file__))
    root = package_root()
    saved_env = {k: os.environ.get(k) for k in ("PYTHONSAFEPATH", "PYTHONPATH")}
    saved_path = list(sys.path)
    try:
        os.environ["PYTHONSAFEPATH"] = "1"
        rest = [p for p in (os.environ.get("PYTHONPATH") or "").split(os.pathsep) if p and p != root]
        os.environ["PYTHONPATH"] = os.pathsep.join([root] + rest)
        sys.path[:] = [root] + [p for p in saved_path if p != root and not _shadows(p, pkg_dir)]
        yield
    finally:
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        sys.path[:] = saved_path
