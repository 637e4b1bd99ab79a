"""Run a resolved config into a result folder: the lifecycle around the one simulation loop.

    cfg = load_config("configs/saxe_modes.yaml")
    outcome = run(cfg)                       # -> Outcome(status, run_dir, message, exit_code)
    outcome = resume("results/saxe_modes-20250101-120000")

The objects of a run come from dlnsim.builders (build_simulation) and are driven by
dlnsim.simulation.Simulation, the loop `dlnsim.simulate` uses too. This module adds what a run
folder needs around it:
- meta.json: status running -> completed | interrupted | diverged | failed (dlnsim.lifecycle.Status),
  written last; a diverged run records the step, time and quantity and keeps the data so far;
- checkpoints (state, generator state, records) every output.checkpoint_every save points;
- output.records: large ensembles stream their records to <run>/records/ in .npy chunks
  (dlnsim.record_store) so that memory stays bounded; the checkpoint then references the records
  on disk up to its save index, a resume truncates them there, and at the end they are streamed
  into arrays.npz and the folder removed; output.metrics thins metrics.csv (summary) or drops it;
- SIGINT/SIGTERM (dlnsim.lifecycle.StopSignal): the current step finishes, everything recorded so
  far and a checkpoint are written, status 'interrupted', exit code 128 + signal (130 / 143).
  `resume` continues from the checkpoint; on CPU the resumed arrays are bit-identical to an
  uninterrupted run;
- studies (study.variants): one run folder per variant under runs/, and the study's figure.

Test hooks (environment variables, for the test suite only): DLNSIM_TEST_INTERRUPT_AT_STEP=k sends
this process SIGINT (or DLNSIM_TEST_INTERRUPT_SIGNAL=TERM, or KILL) after step k; DLNSIM_TEST_STEP_SLEEP=s
sleeps s seconds per step so that a test can signal a run from outside at a predictable point.
"""
from __future__ import annotations

import os
import shutil
import signal
import sys
import time
import traceback
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from . import results as R
from .builders import (  # noqa: F401  (the factories are part of this module's documented interface)
    batch_size,
    beta_of,
    build_energy,
    build_network,
    build_observer,
    build_scheme,
    build_simulation,
    device_dtype,
)
from .config import ConfigError, input_files, validate, variant_configs
from .lifecycle import EXIT_CODES, Status, StopSignal, kill_with_default
from .network import read_weight_file  # noqa: F401
from .run_theory import saxe_reference, theory_arrays  # noqa: F401
from .runlock import RunLock
from .safe_paths import check_showcase
from . import record_store
from .record_store import RecordStore
from .simulation import Diverged, Simulation

__all__ = [
    "Outcome",
    "run",
    "resume",
    "build_energy",
    "build_network",
    "build_scheme",
    "build_observer",
    "beta_of",
    "saxe_reference",
    "read_weight_file",
    "EXIT_CODES",
]


@dataclass
class Outcome:
    status: Status
    run_dir: str
    message: str = ""
    exit_code: int = 0


def _progress(total: int, initial: int, desc: str, quiet: bool):
    disable = quiet or not sys.stderr.isatty()
    return tqdm(total=total, initial=initial, desc=desc, unit="step", disable=disable, leave=False, file=sys.stderr)


def _test_hooks():
    """on_step callback of the test hooks (module docstring), or None when none is set."""
    at = int(os.environ.get("DLNSIM_TEST_INTERRUPT_AT_STEP", "-1"))
    sig = {"TERM": signal.SIGTERM, "KILL": signal.SIGKILL}.get(os.environ.get("DLNSIM_TEST_INTERRUPT_SIGNAL", "INT"), signal.SIGINT)
    sleep = float(os.environ.get("DLNSIM_TEST_STEP_SLEEP", "0"))
    if at < 0 and not sleep:
        return None

    def on_step(step: int) -> None:
        if step == at:
            os.kill(os.getpid(), sig)
        if sleep:
            time.sleep(sleep)

    return on_step


# output.records: auto streams the records to disk when they would exceed this many bytes; the
# store writes a chunk every RECORD_CHUNK_BYTES of records (and at each checkpoint).
RECORDS_DISK_BYTES = record_store.DISK_BYTES
RECORD_CHUNK_BYTES = record_store.CHUNK_BYTES


def _save_points(cfg: dict) -> int:
    n, every = cfg["dynamics"]["steps"], cfg["observers"]["every"]
    return n // every + 1 + (n % every != 0)


def _attach_store(cfg: dict, run_dir: str, sim: Simulation, ck: dict | None) -> RecordStore | None:
    """The record store of a run (output.records), attached to sim, or None (records in memory).
    A resumed run keeps the choice its checkpoint made; a fresh one starts with an empty store."""
    mode = cfg["output"]["records"]
    if ck is not None:
        if "records_on_disk" not in ck:
            return None
    elif mode == "memory":
        return None
    first = sim.saved[0] if sim.saved else None
    per_save = sum(v.numel() * v.element_size() for v in first.values()) if first is not None else 0
    if ck is None and mode == "auto" and per_save * _save_points(cfg) <= RECORDS_DISK_BYTES:
        return None
    store = RecordStore(os.path.join(run_dir, R.RECORDS))
    if ck is None:
        store.remove()  # a fresh run: nothing left from an earlier attempt
        store = RecordStore(store.folder)
    if per_save == 0 and ck is not None:  # resumed: measure from the records on disk
        per_save = sum(int(np.prod(store.spec(k)[0][1:])) * store.spec(k)[1].itemsize for k in store.names) if store.names else 1
    sim.attach_store(store, max(1, RECORD_CHUNK_BYTES // max(per_save, 1)), resuming=ck is not None)
    return store


def _extra_arrays(cfg: dict, t: np.ndarray) -> dict[str, np.ndarray]:
    """beta (B,) for runs with a temperature, and the theory curves on the save times t."""
    out = {}
    beta = beta_of(cfg, *device_dtype(cfg))
    if isinstance(beta, torch.Tensor):
        out["beta"] = beta.cpu().numpy()
    elif beta is not None:
        out["beta"] = np.full(batch_size(cfg), float(beta))
    out.update(theory_arrays(cfg, t))
    return out


def _write_records(cfg: dict, run_dir: str, sim: Simulation) -> None:
    """arrays.npz and metrics.csv (output.metrics), from memory or streamed from the record store."""
    every = cfg["output"]["metrics_every"]
    mode = R.metrics_mode(cfg["output"]["metrics"], len(R.thinned_saves(sim.n_saved, every)), batch_size(cfg))
    if sim.store is None:
        arrays = _arrays(cfg, sim)
        R.write_arrays(run_dir, arrays)
        R.write_metrics(run_dir, arrays, mode=mode, every=every)
        return
    sim.flush()
    t = np.asarray(sim.times, dtype=np.float64)
    extra = _extra_arrays(cfg, t)
    R.write_arrays_streamed(run_dir, sim.store, extra)

    def blocks():
        for start, block in sim.store.blocks():
            n = block["t"].shape[0]
            block.update({k: (v if k == "beta" else v[start:start + n]) for k, v in extra.items()})
            yield block

    R.write_metrics(run_dir, mode=mode, blocks=blocks(), every=every, total=sim.n_saved)


def _arrays(cfg: dict, sim: Simulation) -> dict[str, np.ndarray]:
    """arrays.npz: the records, beta (B,) for runs with a temperature, and the theory curves."""
    out = sim.arrays()
    out.update(_extra_arrays(cfg, out["t"]))
    return out


def _checkpoint(sim: Simulation, generator: torch.Generator, cfg: dict) -> dict:
    return dict(sim.state_dict(), generator=generator.get_state(), identity=R.run_identity(cfg))


# A scheme counter above this fraction of the steps is a failure a user must hear about.
WARN_FRACTION = 0.05
_FAILURE_COUNTERS = {"projection_failures": "projections failed", "safeguard_rejections": "safeguard rejections",
                     "reverse_failures": "reverse projections failed"}


def _scheme_warnings(sim: Simulation) -> list[str]:
    """One line per scheme counter (projection failures, safeguard rejections, Metropolis reverse
    failures) whose ensemble mean is above WARN_FRACTION of the steps, and for chains that never moved.

    The mean, not the worst trajectory, decides: a few hundred steps give single chains a spread of
    several per cent. What a failure means depends on the scheme: in the unadjusted projected scheme a
    rejected step biases the law; in MetropolisLangevin it is a rejection, which keeps the law exact and
    only slows mixing."""
    st, steps = sim.state.stats, max(int(sim.state.step), 1)
    adjusted = "accepted" in st
    out = []
    for k, what in _FAILURE_COUNTERS.items():
        if k in st:
            frac = st[k].double() / steps
            mean, worst = float(frac.mean()), float(frac.max())
            if mean > WARN_FRACTION:
                why = ("these proposals are rejected: the law stays exact but the chains mix more slowly (a smaller "
                       "dynamics.step_size helps)" if adjusted else
                       "the chains are not sampling the law (check dynamics.options tol, device.dtype, dynamics.step_size)")
                out.append(f"{what} in {mean:.1%} of steps (worst trajectory {worst:.1%}; above {WARN_FRACTION:.0%}): {why}")
    stuck = None
    if "accepted" in st:
        stuck = int((st["accepted"] == 0).sum())
    elif "projection_failures" in st:
        rejected = st["projection_failures"] + st.get("safeguard_rejections", torch.zeros_like(st["projection_failures"]))
        stuck = int((rejected >= steps).sum())
    if stuck:
        out.append(f"{stuck} of {st[next(iter(st))].shape[0]} chains never moved in {steps} steps: they are not samples")
    return out


def _figures_safely(run_dir: str, cfg: dict, study: bool) -> tuple[list[str], str | None]:
    """Figures, or ([], the error in one line): a figure failure never loses or relabels the data."""
    try:
        if os.environ.get("DLNSIM_TEST_FIGURE_FAIL"):
            raise RuntimeError("test hook DLNSIM_TEST_FIGURE_FAIL")
        return _figures(run_dir, cfg, study), None
    except Exception as e:  # noqa: BLE001 - any plotting error: the data and the status stand
        msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        print(f"dlnsim: warning: figures not drawn ({msg}); the data is complete: retry with dlnsim plot {run_dir}",
              file=sys.stderr)
        return [], msg


def _finish_figures(run_dir: str, cfg: dict, study: bool, status: Status, quiet: bool) -> dict:
    """The figures of a finished run or study (completed or diverged) and, when completed, its showcase
    copy; returns the meta.json fields to add ({"figure_error": ...} when drawing failed)."""
    if status not in (Status.COMPLETED, Status.DIVERGED):
        return {}
    figs, fig_error = _figures_safely(run_dir, cfg, study)
    if fig_error:
        return {"figure_error": fig_error}
    if status == Status.COMPLETED:
        _copy_showcase(cfg, figs, quiet, _SHOWCASE_ANYWHERE[0])
    return {}


def _figures(run_dir: str, cfg: dict, study: bool = False) -> list[str]:
    if not cfg["output"]["figures"]:
        return []
    from . import plotting  # matplotlib is imported only when figures are drawn

    return (plotting.plot_study if study else plotting.plot_run)(run_dir, formats=cfg["output"]["formats"])


def _copy_showcase(cfg: dict, figures: list[str], quiet: bool, allow_anywhere: bool = False) -> None:
    dest = cfg["output"]["showcase"]
    pngs = [f for f in figures if f.endswith(".png")]
    if dest and pngs:
        try:  # checked again here: a resumed folder's config.yaml may have been edited
            dest = check_showcase(dest, cfg["output"]["dir"], allow_anywhere)
        except ValueError as e:
            print(f"dlnsim: warning: figure not copied ({e})", file=sys.stderr)
            return
        os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
        shutil.copyfile(pngs[0], dest)
        if not quiet:
            print(f"dlnsim: figure copied to {dest}", file=sys.stderr)


def _run_one(cfg: dict, run_dir: str, quiet: bool, stop: StopSignal, desc: str, *, study_figure: str | None = None,
             built: tuple[Simulation, torch.Generator] | None = None) -> Outcome:
    """Run (or resume) one run folder whose config.yaml and meta.json exist. study_figure: the
    study's figure kind for a variant (no figures of its own), else None. built: a fresh simulation."""
    if cfg["device"]["threads"]:
        torch.set_num_threads(cfg["device"]["threads"])
    t0 = time.time()
    meta = R.read_meta(run_dir)
    ck = R.load_checkpoint(run_dir) if meta.get("status") != Status.COMPLETED and meta.get("started") else None
    if ck is not None:
        sim, generator = build_simulation(cfg, study_figure, fresh=False)
        try:
            _attach_store(cfg, run_dir, sim, ck)
            sim.load_state_dict(ck, device_dtype(cfg)[0])
            generator.set_state(ck["generator"])
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError, AttributeError) as e:
            raise ConfigError(f"{os.path.join(run_dir, R.CHECKPOINT)}: does not fit this run "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}); remove it to start over") from None
        R.update_meta(run_dir, resumed=meta.get("resumed", []) + [R.now()], status=Status.RUNNING)
    else:
        sim, generator = built or build_simulation(cfg, study_figure)
        R.update_meta(run_dir, started=True, status=Status.RUNNING)
    n_steps, ck_every = cfg["dynamics"]["steps"], cfg["output"]["checkpoint_every"]
    if ck is None:
        _attach_store(cfg, run_dir, sim, None)
    bar = _progress(n_steps, sim.state.step, desc, quiet)
    last = [sim.state.step]

    def on_save(s: Simulation) -> None:
        bar.update(s.state.step - last[0])
        last[0] = s.state.step
        if not bar.disable:
            bar.set_postfix(loss=f"{float(s.last['loss'].mean()):.3g}", refresh=False)
        if ck_every and s.n_saved % ck_every == 0 and s.state.step < n_steps:
            R.save_checkpoint(run_dir, _checkpoint(s, generator, cfg))

    fields: dict = {}
    try:
        sim.run(n_steps - sim.state.step, on_save, stop=stop, on_step=_test_hooks())
        status, message = Status.COMPLETED, ""
        if sim.stopped:
            status = Status.INTERRUPTED
            message = (f"interrupted by signal {signal.Signals(stop.signum).name} at step {sim.state.step} "
                       f"(t = {sim.state.t:.6g}); continue with: dlnsim run --resume {run_dir}")
    except Diverged as e:
        status, message = Status.DIVERGED, str(e)
        fields["diverged"] = {"step": e.step, "t": e.t, "quantity": e.quantity, "trajectories": e.trajectories}
    finally:
        bar.close()
    _write_records(cfg, run_dir, sim)
    if status == Status.INTERRUPTED:
        R.save_checkpoint(run_dir, _checkpoint(sim, generator, cfg))
    else:
        if os.path.exists(os.path.join(run_dir, R.CHECKPOINT)):
            os.remove(os.path.join(run_dir, R.CHECKPOINT))  # nothing left to resume
        if sim.store is not None:
            sim.store.remove()  # folded into arrays.npz
    if status != Status.INTERRUPTED:
        warnings = _scheme_warnings(sim)
        fields["warnings"] = warnings
        for w in warnings:
            print(f"dlnsim: warning: {'' if study_figure is None else os.path.basename(run_dir) + ': '}{w}", file=sys.stderr)
        R.update_meta(run_dir, warnings=warnings)  # before the figures, which show them in their title
    if study_figure is None and sim.n_saved:
        fields.update(_finish_figures(run_dir, cfg, False, status, quiet))
    R.clean_temp_files(run_dir)
    wall = meta.get("wall_time_s", 0.0) + time.time() - t0
    R.update_meta(run_dir, end_time=R.now(), wall_time_s=round(wall, 3), steps_done=sim.state.step,
                  t_reached=sim.state.t, n_saved=sim.n_saved, message=message, **fields, status=status)
    code = 128 + stop.signum if status == Status.INTERRUPTED else EXIT_CODES[status]
    return Outcome(status, run_dir, message, code)


def _new_meta(cfg: dict, kind: str) -> dict:
    device, dtype = device_dtype(cfg) if kind == "run" else (cfg["device"]["device"], cfg["device"]["dtype"])
    meta = R.environment()
    meta.update(kind=kind, study=kind == "study", device=str(device), dtype=str(dtype).replace("torch.", ""),
                seed=cfg["dynamics"]["seed"], start_time=R.now(), status=Status.RUNNING)
    files = input_files(cfg)  # the data files read (path, size, SHA-256): config.yaml names them by absolute path
    if files:
        meta["input_files"] = files
    return meta


def _prepare(run_dir: str | None, cfg: dict) -> str:
    """Create the run folder (one line naming the key or option on failure)."""
    if run_dir is None:
        try:
            return R.make_run_dir(cfg["output"]["dir"], cfg["output"]["name"])
        except OSError as e:
            raise ConfigError(f"output.dir: cannot create a result folder in {cfg['output']['dir']} ({e.strerror or e}); "
                              "choose a writable folder") from None
    if os.path.exists(run_dir) and (not os.path.isdir(run_dir) or os.listdir(run_dir)):
        raise ConfigError(f"--out {run_dir}: exists and is not an empty folder; results are never overwritten (choose a new folder)")
    try:
        os.makedirs(run_dir, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--out {run_dir}: cannot create the folder ({e.strerror or e}); choose another path") from None
    return run_dir


def _fail_dir(run_dir: str, exc: BaseException, user: bool) -> Outcome:
    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    try:
        R.update_meta(run_dir, end_time=R.now(), message=msg,
                      **({} if user else {"traceback": traceback.format_exc()}), status=Status.FAILED)
    except (OSError, ValueError):
        pass
    return Outcome(Status.FAILED, run_dir, msg, EXIT_CODES["user_error" if user else Status.FAILED])


def _fail_write(run_dir: str, exc: OSError) -> Outcome:
    """A write failed (full disk, quota, permissions): the last good checkpoint stays, partial
    temporary files go, and the folder says `failed` with the reason if it still can."""
    msg = f"cannot write to {run_dir}: {exc.strerror or exc}; the last checkpoint is kept: free space, then dlnsim run --resume {run_dir}"
    R.clean_temp_files(run_dir)
    try:
        R.update_meta(run_dir, end_time=R.now(), message=msg, status=Status.FAILED)
    except (OSError, ValueError):
        pass
    R.clean_temp_files(run_dir)
    return Outcome(Status.FAILED, run_dir, msg, EXIT_CODES[Status.FAILED])


_SHOWCASE_ANYWHERE = [False]  # run(..., allow_showcase_anywhere=True) for the duration of the call


def _test_signal_after_mkdir() -> None:
    """Test hook DLNSIM_TEST_SIGNAL_AFTER_MKDIR=TERM|INT: signal this process right after the run
    folder is created (the window before config.yaml and meta.json exist)."""
    which = os.environ.get("DLNSIM_TEST_SIGNAL_AFTER_MKDIR")
    if which:
        os.kill(os.getpid(), signal.SIGTERM if which == "TERM" else signal.SIGINT)


def run(cfg: dict, run_dir: str | None = None, *, quiet: bool = False, allow_showcase_anywhere: bool = False) -> Outcome:
    """Run a resolved config (a plain run or a study) into a new result folder.

    run_dir: the folder to write (must not exist or be empty); default <output.dir>/<name>-<stamp>.
    Errors in the config surface as ConfigError before any folder is created. Returns the Outcome;
    library ValueErrors during the run mark the folder 'failed' (exit code 2).
    allow_showcase_anywhere: output.showcase may name any .png path (else only <output.dir>/showcase/).
    """
    variants = variant_configs(cfg)
    try:
        check_showcase(cfg["output"]["showcase"], cfg["output"]["dir"], allow_showcase_anywhere)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    # build a plain run before creating the folder, so that errors leave nothing behind
    try:
        built = None if variants else build_simulation(cfg)
    except Diverged as e:
        raise ConfigError(f"network: the initial state is not finite ({e.quantity} at step 0); reduce network.scale "
                          "or check network.file / network.target") from None
    widths = cfg["network"]["widths"] or []
    if not variants and not quiet and cfg["observers"]["include"] is None and len(set(widths)) > 1:
        print(f"dlnsim: note: no entropy is recorded: S(X) is defined for square widths only, these are rectangular ({widths})", file=sys.stderr)
    # the signal handlers go in before anything touches the disk: a signal in between still ends
    # with a complete, resumable folder (config.yaml, meta.json, status interrupted)
    _SHOWCASE_ANYWHERE[0] = allow_showcase_anywhere
    try:
        with StopSignal(on_second=kill_with_default) as stop:
            run_dir = _prepare(run_dir, cfg)
            _test_signal_after_mkdir()
            with RunLock(run_dir):
                R.write_config(run_dir, cfg)
                R.write_meta(run_dir, _new_meta(cfg, "study" if variants else "run"))
                return _execute(run_dir, cfg, variants, quiet, built, stop)
    finally:
        _SHOWCASE_ANYWHERE[0] = False


def _folders_to_resume(run_dir: str, cfg: dict, variants) -> list[tuple[str, dict]]:
    return [(run_dir, cfg)] if not variants else [(os.path.join(run_dir, R.RUNS, lb), sub) for lb, sub in variants]


def _check_checkpoints(run_dir: str, cfg: dict, variants) -> None:
    """Before any step: every checkpoint of the folder loads safely and was written by this config
    (hash of the resolved config) and this dlnsim version; else ConfigError (one line)."""
    from ._version import __version__

    for folder, sub in _folders_to_resume(run_dir, cfg, variants):
        ck = R.load_checkpoint(folder)
        if ck is None:
            continue
        ident, want = ck.get("identity"), R.run_identity(sub)
        where = os.path.join(folder, R.CHECKPOINT)
        if not isinstance(ident, dict):
            raise ConfigError(f"--resume {run_dir}: {where} carries no run identity (written by another program or an older dlnsim); "
                              "remove it to start the run over")
        if ident.get("dlnsim") != __version__:
            raise ConfigError(f"--resume {run_dir}: the checkpoint was written by dlnsim {ident.get('dlnsim')}, this is {__version__}; "
                              "resume with that version, or start a new run")
        if ident.get("config_sha256") != want["config_sha256"]:
            raise ConfigError(f"--resume {run_dir}: config.yaml no longer matches the checkpoint {where} (the config was edited "
                              "since the run started, or the checkpoint belongs to another run); resuming would mix two runs: "
                              "start a new run with the edited config")
        weights = (ck.get("state") or {}).get("weights")
        widths, B = sub["network"]["widths"], batch_size(sub)
        if weights is not None:
            shapes = [tuple(w.shape) for w in weights] if isinstance(weights, list) and all(hasattr(w, "shape") for w in weights) else None
            need = [(B, widths[p], widths[p - 1]) for p in range(1, len(widths))]
            if shapes != need:
                raise ConfigError(f"--resume {run_dir}: {where} holds weights of shapes {shapes}, this run needs {need}; "
                                  "remove it to start over")


def resume(run_dir: str, *, quiet: bool = False) -> Outcome:
    """Continue an interrupted run or study folder from its checkpoint(s).

    The folder is locked (one writer), stale temporary files are removed, and every checkpoint is
    checked against the folder's config before any step (ConfigError on a mismatch)."""
    if not os.path.isdir(run_dir) or not os.path.exists(os.path.join(run_dir, R.META)):
        raise ConfigError(f"--resume {run_dir}: not a dlnsim result folder (no meta.json)")
    meta = R.read_meta(run_dir)
    if meta.get("status") == Status.COMPLETED:
        raise ConfigError(f"--resume {run_dir}: the run is already completed")
    if meta.get("status") == Status.DIVERGED and not meta.get("study"):
        raise ConfigError(f"--resume {run_dir}: the run diverged; start a new run with a smaller dynamics.step_size")
    with StopSignal(on_second=kill_with_default) as stop:
        with RunLock(run_dir):
            cfg = validate(R.read_config(run_dir))
            variants = variant_configs(cfg)
            for folder, _ in _folders_to_resume(run_dir, cfg, variants):
                R.clean_temp_files(folder)
            _check_checkpoints(run_dir, cfg, variants)
            R.update_meta(run_dir, commands=meta.get("commands", []) + [R.environment()["command"]], status=Status.RUNNING)
            return _execute(run_dir, cfg, variants, quiet, None, stop)


def _execute(run_dir: str, cfg: dict, variants, quiet: bool, built, stop: StopSignal) -> Outcome:
    try:
        if not variants:
            try:
                out = _run_one(cfg, run_dir, quiet, stop, cfg["output"]["name"], built=built)
            except ValueError as e:
                return _fail_dir(run_dir, e, user=True)
        else:
            out = _run_study(cfg, run_dir, variants, quiet, stop)
    except OSError as e:  # a write failed: full disk, quota, a folder removed under us
        return _fail_write(run_dir, e)
    except Exception as e:  # a bug: keep the traceback in meta.json and re-raise
        _fail_dir(run_dir, e, user=False)
        raise
    if not quiet:
        print(f"dlnsim: {out.status}: {run_dir}" + (f" ({out.message})" if out.message else ""), file=sys.stderr)
    return out


def _study_variant(label: str, sub: dict, run_dir: str, quiet: bool, stop: StopSignal, figure: str) -> Outcome:
    sub_dir = os.path.join(run_dir, R.RUNS, label)
    if not os.path.exists(os.path.join(sub_dir, R.META)):
        os.makedirs(sub_dir, exist_ok=True)
        R.write_config(sub_dir, sub)
        R.write_meta(sub_dir, _new_meta(sub, "run"))
    try:
        return _run_one(sub, sub_dir, quiet, stop, label, study_figure=figure)
    except ValueError as e:
        return _fail_dir(sub_dir, e, user=True)
    except OSError as e:
        return _fail_write(sub_dir, e)
    except Exception as e:
        _fail_dir(sub_dir, e, user=False)
        _fail_dir(run_dir, e, user=False)
        raise


def _run_study(cfg: dict, run_dir: str, variants, quiet: bool, stop: StopSignal) -> Outcome:
    t0 = time.time()
    meta = R.read_meta(run_dir)
    statuses = {v["label"]: v["status"] for v in meta.get("variants", [])}
    outcomes: list[Outcome] = []
    for label, sub in variants:
        if statuses.get(label) in (Status.COMPLETED, Status.DIVERGED):
            outcomes.append(Outcome(Status(statuses[label]), os.path.join(run_dir, R.RUNS, label)))
            continue
        out = _study_variant(label, sub, run_dir, quiet, stop, cfg["study"]["figure"])
        outcomes.append(out)
        statuses[label] = out.status
        R.update_meta(run_dir, variants=[{"label": lb, "status": statuses.get(lb, Status.PENDING)} for lb, _ in variants])
        if out.status in (Status.INTERRUPTED, Status.FAILED):
            break
    wall = meta.get("wall_time_s", 0.0) + time.time() - t0
    order = (Status.INTERRUPTED, Status.FAILED, Status.DIVERGED)
    worst = next((s for s in order if any(o.status == s for o in outcomes)), Status.COMPLETED)
    first = next((o for o in outcomes if o.status == worst), None)
    message = "" if worst == Status.COMPLETED else f"variant {os.path.basename(first.run_dir)}: {first.message}"
    if worst == Status.INTERRUPTED:
        message = f"interrupted; continue with: dlnsim run --resume {run_dir}"
    fields = _finish_figures(run_dir, cfg, True, worst, quiet)
    R.clean_temp_files(run_dir)
    R.update_meta(run_dir, end_time=R.now(), wall_time_s=round(wall, 3), message=message, **fields, status=worst)
    code = 128 + stop.signum if worst == Status.INTERRUPTED else (first.exit_code if first is not None else 0)
    return Outcome(worst, run_dir, message, code)
