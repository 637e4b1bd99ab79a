"""Figures of a result folder: simulation against theory (matplotlib, Agg backend).

Everything is drawn from the folder alone (config.yaml, meta.json, arrays.npz), so
`dlnsim plot RUN_DIR` regenerates the figures of any run or study. Each figure is written as
figures/<name>.png and .pdf (vector).

    run_figures      RUN_FIGURES, plot_run: the figures of one run
    study_figures    STUDY_FIGURES, plot_study: the comparison figure of a study (study.figure)
    common           style, colours, ensemble bands
"""
from __future__ import annotations

import os

from .. import results as R
from .common import COLORS, STYLE, band  # noqa: F401
from .run_figures import RUN_FIGURES, plot_run  # noqa: F401
from .study_figures import STUDY_FIGURES, plot_study  # noqa: F401

__all__ = ["plot_run", "plot_study", "plot_path", "band", "STYLE", "COLORS", "RUN_FIGURES", "STUDY_FIGURES"]


def plot_path(path: str, formats=None) -> list[str]:
    """Figures of a run or study folder (formats default to the folder's output.formats)."""
    meta = R.read_meta(path)
    cfg = R.read_config(path)
    formats = formats or cfg["output"]["formats"]
    if meta.get("study"):
        out = []
        for v in cfg["study"]["variants"]:
            d = os.path.join(path, R.RUNS, v["label"])
            if os.path.exists(os.path.join(d, R.ARRAYS)):
                out += plot_run(d, formats)
        return plot_study(path, formats) + out
    return plot_run(path, formats)
