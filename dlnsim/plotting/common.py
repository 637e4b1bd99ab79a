"""Shared pieces of the figures: style, colours, ensemble bands, saving (matplotlib, Agg backend)."""
from __future__ import annotations

import os
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .. import results as R  # noqa: E402

__all__ = ["STYLE", "COLORS", "QUANTILES", "band", "save_figure", "beta_groups", "run_title", "positive_or_nan", "finish_time_plot"]

STYLE = {
    "figure.dpi": 110,
    "savefig.dpi": 110,
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "legend.fontsize": 7.5,
    "legend.frameon": False,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "lines.linewidth": 1.4,
    "savefig.bbox": "tight",
    "pdf.fonttype": 42,
}
COLORS = plt.rcParams["axes.prop_cycle"].by_key()["color"]
QUANTILES = (0.1, 0.9)


def save_figure(fig, run_dir: str, name: str, formats) -> list[str]:
    folder = os.path.join(run_dir, R.FIGURES)
    os.makedirs(folder, exist_ok=True)
    paths = []
    for fmt in formats:
        path = os.path.join(folder, f"{name}.{fmt}")
        fig.savefig(path)
        paths.append(path)
    plt.close(fig)
    return paths


def band(ax, t, Y, color, label=None, lines_below: int = 4, **kw):
    """Ensemble Y (T, B) against t: the trajectories (B <= lines_below) or the median and a 10-90% band."""
    Y = np.asarray(Y, dtype=float)
    if Y.ndim == 1:
        Y = Y[:, None]
    if Y.shape[1] <= lines_below:
        for b in range(Y.shape[1]):
            ax.plot(t, Y[:, b], color=color, label=label if b == 0 else None, **kw)
        return
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # save points where every trajectory is NaN (e.g. log of a loss at 0)
        ok = np.isfinite(Y)
        Yf = np.where(ok, Y, np.nan)
        med = np.nanmedian(Yf, axis=1)
        lo, hi = np.nanquantile(Yf, QUANTILES, axis=1)
    # The legend says what the line and the shading are (median; 10-90% quantiles over the trajectories).
    ax.plot(t, med, color=color, label=None if label is None else f"{label} (median, 10-90% band)", **kw)
    ax.fill_between(t, lo, hi, color=color, alpha=0.2, lw=0)


def beta_groups(arrays) -> list[tuple[str, np.ndarray]]:
    """Trajectory index sets, one per beta of a multi-beta run (else one group)."""
    B = arrays["loss"].shape[1]
    if "beta" in arrays and len(np.unique(arrays["beta"])) > 1:
        return [(rf"$\beta={b:g}$", np.flatnonzero(arrays["beta"] == b)) for b in np.unique(arrays["beta"])]
    return [("", np.arange(B))]


def run_title(cfg) -> str:
    net, dyn = cfg["network"], cfg["dynamics"]
    beta = dyn["beta"]
    b = "" if beta is None else rf", $\beta$={beta}"
    f = "" if net.get("field", "real") == "real" else f", over {net['field']}"
    return f"{dyn['scheme']}, N={net['depth']}, widths={net['widths']}, h={dyn['step_size']:g}, B={dyn['ensemble']}{b}{f}"


def positive_or_nan(y):
    y = np.array(y, dtype=float)
    y[~(y > 0)] = np.nan
    return y


def finish_time_plot(fig, ax, cfg, ylabel: str):
    """The common ending of a one-panel time plot: axis labels, the run's title, the legend."""
    ax.set_xlabel("time $t$")
    ax.set_ylabel(ylabel)
    ax.set_title(run_title(cfg))
    ax.legend()
    return fig
