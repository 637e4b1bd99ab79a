"""Running a sweep: prepare its folder, run the unfinished points on an executor, write the manifest,
draw the summary; and the `dlnsim sweep` command line.

Sweep folder:

    sweep.yaml      the sweep with its base inlined (self-contained: `dlnsim sweep DIR` reruns it)
    manifest.csv    one row per point (dlnsim.sweep.points)
    runs/<point>/   ordinary run folders; points/<point>.json: the sweep's record of each point
    figures/        the summary across the axes (dlnsim.sweep.plots); submitit/: cluster job files

Re-running a sweep into the same folder skips completed and diverged points, resumes interrupted
ones from their checkpoint and reruns failed ones; a failed point is recorded with its one-line
error and never stops the others.

Exit codes of `dlnsim sweep`: 0 every point completed or diverged; 1 some point failed; 2 a user
error (malformed sweep, one line); 128 + signal when interrupted (SIGINT 130, SIGTERM 143).
"""
from __future__ import annotations

import os
import sys
import threading

from .._io import atomic_write
from ..lifecycle import FINAL, Status, StopSignal
from ..options import ConfigError, did_you_mean
from .executors import Progress, check_engine, run_local, run_submitit, submitit_parameters
from .points import MANIFEST, one_line, state_on_disk, write_manifest
from .spec import EXECUTORS, POINTS, RUNS, SWEEP_FILE, Sweep, fmt, load_sweep, short_names

__all__ = ["run_sweep", "add_arguments", "main", "prepare_folder"]


def prepare_folder(sweep: Sweep, sweep_dir: str) -> None:
    stored_path = os.path.join(sweep_dir, SWEEP_FILE)
    if os.path.exists(stored_path):
        stored = load_sweep(stored_path, validate=False)
        if stored.spec() != sweep.spec():
            diff = [k for k in sweep.spec() if stored.spec()[k] != sweep.spec()[k]]
            raise ConfigError(f"--out {sweep_dir}: holds a different sweep ({', '.join(diff)} differ); choose another "
                              "--out, or rerun the folder itself: dlnsim sweep " + sweep_dir)
    elif os.path.exists(sweep_dir) and (not os.path.isdir(sweep_dir) or os.listdir(sweep_dir)):
        raise ConfigError(f"--out {sweep_dir}: exists and is not a sweep folder; choose a new folder")
    for sub in ("", RUNS, POINTS):
        os.makedirs(os.path.join(sweep_dir, sub), exist_ok=True)
    atomic_write(stored_path, sweep.to_yaml())


def _states(sweep: Sweep, sweep_dir: str) -> dict[int, dict]:
    """Every point's state from disk; 'running'/'submitted' left by a stopped sweep become
    interrupted (with a checkpoint to resume from) or pending."""
    states = {p.index: state_on_disk(sweep_dir, p.name) for p in sweep.points}
    for st in states.values():
        if st["status"] in (Status.RUNNING, Status.SUBMITTED):
            st["status"] = Status.INTERRUPTED if st["checkpoint"] else Status.PENDING
    return states


def run_sweep(sweep: Sweep, sweep_dir: str, *, executor: str | None = None, workers: int | None = None,
              quiet: bool = False, detach: bool = False, plot: bool = True) -> tuple[str, dict[str, int]]:
    """Run every point of `sweep` not yet finished in `sweep_dir`; returns (outcome, counts by status).

    outcome: 'done' (every point completed or diverged), 'failed' (some point failed),
    'interrupted:<signum>' (SIGINT/SIGTERM stopped the sweep; points in flight were checkpointed),
    'detached' (slurm with detach=True: submitted, not waited for).
    """
    ex = dict(sweep.executor)
    kind = executor or ex["kind"]
    if kind not in EXECUTORS:
        raise ConfigError(f"--executor: unknown executor {kind!r}; {did_you_mean(kind, EXECUTORS)}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ConfigError(f"--workers: must be a positive integer, got {workers}")
    check_engine(kind)
    prepare_folder(sweep, sweep_dir)
    states = _states(sweep, sweep_dir)
    todo = [p for p in sweep.points if states[p.index]["status"] not in FINAL]
    threads = ex["cpus_per_task"] if kind != "local" else None
    tasks = [{"sweep_dir": os.path.abspath(sweep_dir), "name": p.name, "config": p.config, "threads": threads,
              "index": p.index, "_state": states[p.index]} for p in todo]
    n_workers = workers or ex["workers"] or os.cpu_count() or 1
    lock = threading.Lock()

    def on_done(task, st):
        with lock:
            st = {k: v for k, v in st.items() if k != "skipped"}
            states[task["index"]] = task["_state"] = st
            write_manifest(sweep_dir, sweep, states)

    if not quiet:
        where = {"local": f"a local pool of {min(n_workers, max(1, len(todo)))} workers", "slurm": "SLURM (submitit)",
                 "submitit-local": f"submitit's local executor ({n_workers} at a time)"}[kind]
        done_before = len(sweep.points) - len(todo)
        print(f"sweep {sweep.name}: {len(sweep.points)} points, {len(todo)} to run"
              + (f" ({done_before} already finished)" if done_before else "") + f", on {where} -> {sweep_dir}", flush=True)
    write_manifest(sweep_dir, sweep, states)

    progress, outcome = Progress(len(todo), quiet), None
    with StopSignal() as stop:  # a second signal: kill the workers (stop.force) and stop at once
        if tasks and kind == "local":
            run_local(tasks, n_workers, on_done, progress, stop)
        elif tasks and not run_submitit(kind, sweep, sweep_dir, tasks, ex, n_workers, on_done, progress, stop,
                                        detach, quiet):
            outcome = "detached"
    if stop.signum is not None:
        outcome = f"interrupted:{stop.signum}"
    if outcome != "detached":
        states = _states(sweep, sweep_dir)
        write_manifest(sweep_dir, sweep, states)
    counts: dict[str, int] = {}
    for st in states.values():
        counts[st["status"]] = counts.get(st["status"], 0) + 1
    if outcome is None:
        # exit 0 means every point completed or diverged: anything else (failed, interrupted by a
        # signal to its worker, never run) is a failed sweep
        outcome = "failed" if any(s not in FINAL for s in counts) else "done"
        if plot and any(counts.get(s) for s in FINAL):
            try:
                from .plots import plot_sweep  # matplotlib is imported only to draw

                figs = plot_sweep(sweep_dir)
            except Exception as e:  # noqa: BLE001 -- a figure must not lose a finished sweep
                figs = []
                print(f"dlnsim: warning: the summary figure failed: {one_line(e)}", file=sys.stderr)
            if figs and not quiet:
                print("figures: " + ", ".join(f for f in figs if f.endswith(".png")), flush=True)
    if not quiet:
        summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        print(f"sweep {sweep.name}: {summary} (manifest: {os.path.join(sweep_dir, MANIFEST)})", flush=True)
    return outcome, counts



def add_arguments(parser) -> None:
    parser.add_argument("sweep", metavar="SWEEP", help="sweep YAML file, or a sweep folder to rerun (its sweep.yaml)")
    parser.add_argument("--out", metavar="DIR", help="sweep folder (default: results/sweeps/<name>); rerunning into it "
                        "skips finished points and resumes interrupted ones")
    parser.add_argument("--executor", choices=EXECUTORS, help="where points run (default: executor.kind of the sweep, else local)")
    parser.add_argument("--workers", type=int, metavar="K", help="points run at once locally (default: executor.workers, else CPU cores)")
    parser.add_argument("--detach", action="store_true", help="slurm: submit the job array and return without waiting")
    parser.add_argument("--dry-run", action="store_true", help="validate and list the points; run nothing")
    parser.add_argument("--no-plot", action="store_true", help="skip the summary figures at the end")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress lines")


def main(args) -> int:
    """`dlnsim sweep` with parsed arguments; returns the exit code (user errors raise ConfigError)."""
    path = args.sweep
    out = args.out
    if os.path.isdir(path):
        if not os.path.exists(os.path.join(path, SWEEP_FILE)):
            raise ConfigError(f"{path}: is a folder without {SWEEP_FILE}; give a sweep YAML file or a sweep folder")
        out = out or path
        path = os.path.join(path, SWEEP_FILE)
    sweep = load_sweep(path)
    out = out or os.path.join("results", "sweeps", sweep.name)
    if args.detach and (args.executor or sweep.executor["kind"]) != "slurm":
        raise ConfigError("--detach only applies to --executor slurm (local points run in this process's pool)")
    if args.dry_run:
        short = short_names(sweep.axis_keys)
        print(f"ok: sweep {sweep.name}: {len(sweep.points)} points -> {out}")
        for p in sweep.points:
            c = p.config
            print(f"  {p.name}: " + ", ".join(f"{short[k]}={fmt(v)}" for k, v in p.values.items())
                  + f"  [{c['dynamics']['scheme']}, widths {c['network']['widths']}, {c['dynamics']['steps']} steps]")
        kind = args.executor or sweep.executor["kind"]
        if kind != "local":
            print(f"  submitit parameters: {submitit_parameters(sweep.executor, sweep.name)}")
        return 0
    outcome, counts = run_sweep(sweep, out, executor=args.executor, workers=args.workers, quiet=args.quiet,
                                detach=args.detach, plot=not args.no_plot)
    if outcome.startswith("interrupted"):
        signum = int(outcome.split(":")[1])
        if not args.quiet:
            print(f"dlnsim: sweep interrupted; rerun the same command to continue ({out})", file=sys.stderr)
        return 128 + signum
    if outcome == "failed":
        unfinished = {s: n for s, n in counts.items() if s not in FINAL}
        n, where = sum(unfinished.values()), os.path.join(out, MANIFEST)
        if set(unfinished) == {Status.FAILED}:
            print(f"dlnsim: error: {n} point(s) failed; see {where}", file=sys.stderr)
        else:
            bad = ", ".join(f"{k} {s}" for s, k in sorted(unfinished.items()))
            print(f"dlnsim: error: {n} point(s) did not finish ({bad}); see {where}", file=sys.stderr)
        return 1
    return 0
