"""Summary figures of a sweep folder (kept as a module name; the code is dlnsim.sweep.plots)."""
from .sweep.plots import plot_sweep

__all__ = ["plot_sweep"]
