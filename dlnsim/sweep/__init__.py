"""Sweeps: many ordinary runs from one file, run by a local process pool or handed to a cluster engine.

A sweep is a base config and axes over dotted config keys. Every point of the grid is an ordinary
run folder (dlnsim.runner.run) under one sweep folder; dlnsim does not schedule anything itself:
points run in a local process pool (default), or as a SLURM job array through `submitit`
(`pip install dlnsim[slurm]`), whose local executor is how the cluster path is tested.

The package follows the data flow of a sweep:

    spec           the sweep file: schema (executor section included), validation, points
    points         each point on disk: records, state, manifest, run_point
    executors      where points run: local process pool, submitit (SLURM / local)
    orchestration  run_sweep and the `dlnsim sweep` command line
    plots          summary figures across the axes (gibbs, saxe, overview)
"""
from .orchestration import add_arguments, main, prepare_folder, run_sweep
from .points import read_manifest, run_point
from .spec import BATCHABLE, EXECUTORS, Point, Sweep, expand, load_sweep

__all__ = [
    "Sweep",
    "Point",
    "load_sweep",
    "expand",
    "run_sweep",
    "read_manifest",
    "run_point",
    "add_arguments",
    "main",
    "prepare_folder",
    "EXECUTORS",
    "BATCHABLE",
]
