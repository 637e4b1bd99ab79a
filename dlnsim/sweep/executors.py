"""Where sweep points run: a local process pool, or submitit (a SLURM job array, or its local executor).

dlnsim does not schedule anything itself. The local pool keeps at most `workers` points in flight
and isolates a crashing worker; submitit jobs run `PointJob` (one point, requeued on a SLURM
timeout or preemption, resumed from its checkpoint). Both stop on the sweep process's
StopSignal: points in flight get one SIGTERM and write their checkpoints. submitit, an optional
dependency (pip install 'dlnsim[slurm]'), is imported only by the submitit executors.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import signal
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

import torch

from .. import results as R
from .._guard import child_environment
from ..lifecycle import FINAL, Status, StopSignal
from ..runlock import RunLock
from ..options import ConfigError
from .points import now, one_line, read_json, record_path, run_point, state_on_disk, write_record
from .spec import RUNS, SUBMITIT, Sweep

__all__ = ["run_local", "run_submitit", "check_engine", "submitit_parameters", "submitit_executor", "Progress", "PointJob"]

SLURM_LIVE = ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING")
_WORKER_STOP = False


def _worker_init(sweep_pid: int | None = None) -> None:
    """Pool worker: one torch thread, own process group, SIGINT/SIGTERM handled by the runner.

    The worker leaves the terminal's process group so that Ctrl-C reaches only the parent, which
    forwards exactly one SIGTERM (a second signal makes the runner stop without its checkpoint).
    Between points the worker ignores SIGINT and only notes SIGTERM; during a run the runner's
    handlers take over (it restores these afterwards).
    """
    from tqdm import tqdm

    from .._children import die_with

    torch.set_num_threads(1)
    # tqdm's default lock is a multiprocessing RLock, i.e. semaphores registered with the pool's
    # resource tracker; a worker killed mid-point never unregisters them and the tracker then warns
    # of "leaked semaphore objects". The runner's bar is disabled in workers: a thread lock will do.
    tqdm.set_lock(threading.RLock())
    try:
        os.setpgrp()
    except OSError:
        pass
    # out of the terminal's group, nobody else would stop it: die with the sweep process (SIGTERM:
    # a point in flight finishes its step and writes its checkpoint; an idle worker exits). The
    # sweep process, not the parent: under the fork server the parent is the server, which outlives it.
    die_with(sweep_pid, signal.SIGTERM, idle=lambda: not _BUSY[0])
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def note(signum, frame):
        global _WORKER_STOP
        _WORKER_STOP = True

    signal.signal(signal.SIGTERM, note)


_BUSY = [False]


def _pool_task(task: dict) -> dict:
    if _WORKER_STOP:  # asked to stop between points: leave this one as it is
        return dict(state_on_disk(task["sweep_dir"], task["name"]), skipped=True)
    if os.environ.get("DLNSIM_TEST_KILL_POINT") == task["name"]:
        # test hook: this worker is SIGKILLed at step 3 of the point (a crash mid-run)
        os.environ.update(DLNSIM_TEST_INTERRUPT_AT_STEP="3", DLNSIM_TEST_INTERRUPT_SIGNAL="KILL")
    _BUSY[0] = True
    try:
        return run_point(task)
    finally:
        _BUSY[0] = False


class PointJob:
    """The callable a submitit job runs: one point, requeued on a SLURM timeout or preemption.

    SLURM signals the job (SIGUSR2) 90 s before its time limit or on preemption; submitit's handler
    would requeue and sys.exit at once, mid-step. This callable takes that signal first: it stops
    the runner the way SIGTERM does (finish the step, write the checkpoint, status interrupted),
    then hands over to submitit's handler, which calls `checkpoint` (the same task again) and
    requeues the job; the requeued job resumes the point from its checkpoint.
    """
    def __call__(self, task: dict) -> dict:
        usr = getattr(signal, "SIGUSR2", None)
        previous = signal.getsignal(usr) if usr is not None and threading.current_thread() is threading.main_thread() else None
        if not callable(previous):  # not inside a submitit job
            return run_point(task)
        caught: list[int] = []

        def on_usr(signum, frame):
            caught.append(signum)
            os.kill(os.getpid(), signal.SIGTERM)  # the runner's handler: stop after this step

        signal.signal(usr, on_usr)
        try:
            state = run_point(task)
        finally:
            signal.signal(usr, previous)
        if caught:
            previous(caught[0], None)  # submitit: checkpoint() and requeue (exits this process)
        return state

    def checkpoint(self, task: dict):
        """submitit's requeue hook: rerun the same task (run_point resumes from the folder)."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, task)



class Progress:
    def __init__(self, total: int, quiet: bool):
        self.total, self.done, self.quiet = total, 0, quiet

    def point(self, name: str, st: dict) -> None:
        self.done += 1
        if self.quiet:
            return
        wall = st.get("wall_s")
        msg = f"[{self.done}/{self.total}] {name}: {st['status']}" + (f" ({float(wall):.1f} s)" if wall is not None else "")
        if st["status"] != Status.COMPLETED and st.get("error"):
            msg += f": {st['error']}"
        print(msg, flush=True)


def _multiprocessing_context():
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        # torch is imported once in the fork server, not once per worker
        ctx.set_forkserver_preload(["dlnsim.runner"])
        return ctx
    return mp.get_context("spawn")


def run_local(tasks: list[dict], workers: int, on_done, progress, stop: StopSignal) -> None:
    """Run tasks in a process pool with at most `workers` points in flight.

    Only as many points as workers are submitted at a time, so nothing queued starts after a
    signal. A worker that dies (out of memory, a native crash) breaks the whole pool: the points in
    flight then are rerun one at a time in a fresh one-worker pool, so that only the culprit is
    marked failed, and the others continue.
    """
    with child_environment():  # workers import this dlnsim, never a checkout folder in the current directory
        _run_local(tasks, workers, on_done, progress, stop)


def _run_local(tasks: list[dict], workers: int, on_done, progress, stop: StopSignal) -> None:
    queue, suspects = list(tasks), []
    while (queue or suspects) and stop.signum is None:
        if suspects:
            batch, n, isolate = [suspects.pop(0)], 1, True
        else:
            batch, n, isolate, queue = queue, workers, False, []
        leftover, crashed = _pool_round(batch, n, on_done, progress, stop)
        queue = leftover + queue
        for task in crashed:
            if isolate:
                st = _crashed(task)
                on_done(task, st)
                progress.point(task["name"], st)
            else:
                suspects.append(task)


def _pool_round(batch: list[dict], n: int, on_done, progress, stop: StopSignal):
    """One pool over `batch`; returns (tasks never started, tasks in flight when the pool broke)."""
    pool = ProcessPoolExecutor(max_workers=max(1, min(n, len(batch))), mp_context=_multiprocessing_context(),
                               initializer=_worker_init, initargs=(os.getpid(),))
    stop.force = lambda: [p.kill() for p in list(getattr(pool, "_processes", {}).values())]
    todo, inflight, crashed, signalled = list(batch), {}, [], False
    try:
        while todo or inflight:
            if stop.signum is not None and not signalled:
                _stop_pool(pool)
                signalled, todo = True, []
            while todo and len(inflight) < n and stop.signum is None:
                task = todo.pop(0)
                inflight[pool.submit(_pool_task, task)] = task
                on_done(task, dict(task["_state"], status=Status.RUNNING))
            if not inflight:
                break
            done, _ = wait(list(inflight), timeout=0.5, return_when=FIRST_COMPLETED)
            for fut in done:
                task = inflight.pop(fut)
                try:
                    st = fut.result()
                except BrokenProcessPool:
                    crashed.append(task)
                    continue
                on_done(task, st)
                if not st.get("skipped"):
                    progress.point(task["name"], st)
            if crashed:
                crashed += list(inflight.values())
                inflight = {}
                break
    finally:
        stop.force = None
        pool.shutdown(wait=True, cancel_futures=True)
    return todo, crashed


def _crashed(task: dict) -> dict:
    msg = "the worker process died while running this point (killed, out of memory, or a crash in native code)"
    write_record(task["sweep_dir"], task["name"], status=Status.FAILED, error=msg, finished=now(), pid=None)
    # its run folder still says `running`: say what happened there too (its writer is dead, so the
    # lock is free; a live writer keeps it and the folder is left alone)
    run_dir = os.path.join(task["sweep_dir"], RUNS, task["name"])
    if os.path.exists(os.path.join(run_dir, R.META)):
        try:
            with RunLock(run_dir):
                if R.read_meta(run_dir).get("status") == Status.RUNNING:
                    R.update_meta(run_dir, end_time=R.now(), message=msg, status=Status.FAILED)
                R.clean_temp_files(run_dir)
        except (OSError, ValueError):
            pass
    return state_on_disk(task["sweep_dir"], task["name"])


def _stop_pool(pool) -> None:
    """Send each worker one SIGTERM: a running point stops after its current step and writes its
    checkpoint (status interrupted); an idle worker notes it and starts nothing new."""
    for p in list(getattr(pool, "_processes", {}).values()):
        try:
            if p.is_alive():
                os.kill(p.pid, signal.SIGTERM)
        except (OSError, ValueError):
            pass


def check_engine(kind: str) -> None:
    """Fail before anything is written if the chosen engine cannot run here."""
    if kind == "local":
        return
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise ConfigError(f"--executor {kind} needs submitit: pip install 'dlnsim[slurm]' (or pip install submitit)") from None
    if kind == "slurm" and shutil.which("srun") is None:
        raise ConfigError("--executor slurm: no srun on this machine; run the sweep on a SLURM login node "
                          "(or use --executor local / submitit-local here)")


def submitit_executor(kind: str, sweep_dir: str, ex: dict, name: str):
    try:
        import submitit
    except ImportError:
        raise ConfigError(f"--executor {kind} needs submitit: pip install 'dlnsim[slurm]' (or pip install submitit)") from None
    folder = os.path.join(sweep_dir, SUBMITIT)
    cluster = "slurm" if kind == "slurm" else "local"
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    except RuntimeError as e:  # e.g. no srun on this machine
        raise ConfigError(f"--executor {kind}: {one_line(e)} (run it on a SLURM login node, or use local / submitit-local)") from None
    executor.update_parameters(**submitit_parameters(ex, name))
    return executor


def submitit_parameters(ex: dict, name: str) -> dict:
    """executor: options -> submitit AutoExecutor.update_parameters keywords (slurm_* apply on SLURM only)."""
    params = {"name": f"dlnsim-{name}"[:64], "timeout_min": ex["time"], "cpus_per_task": ex["cpus_per_task"],
              "slurm_array_parallelism": ex["array_parallelism"]}
    if ex["gpus_per_node"]:
        params["gpus_per_node"] = ex["gpus_per_node"]
    if ex["mem_gb"] is not None:
        params["mem_gb"] = ex["mem_gb"]
    if ex["partition"]:
        params["slurm_partition"] = ex["partition"]
    if ex["setup"]:
        params["slurm_setup"] = list(ex["setup"])
    if ex["slurm_additional_parameters"]:
        params["slurm_additional_parameters"] = dict(ex["slurm_additional_parameters"])
    return params


def _job_error(job) -> str | None:
    """None if the submitit job returned, else one line on why the job itself failed."""
    try:
        job.result()
        return None
    except Exception as e:  # noqa: BLE001 -- killed by the scheduler, timed out without requeue, ...
        lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
        return f"job {job.job_id} failed: {lines[-1] if lines else type(e).__name__}"[:400]


def run_submitit(kind: str, sweep: Sweep, sweep_dir: str, tasks: list[dict], ex: dict, workers: int,
                  on_done, progress, stop: StopSignal, detach: bool, quiet: bool) -> bool:
    """Submit the points as submitit jobs (SLURM: one job array) and wait for them; False if detached.

    submitit-local keeps at most `workers` jobs running. On a signal, local jobs are cancelled
    (submitit sends SIGINT; the runner checkpoints); SLURM jobs keep running on the cluster.
    """
    executor = submitit_executor(kind, sweep_dir, ex, sweep.name)
    fn = PointJob()
    jobs: dict = {}  # job -> task
    live = _reattach(kind, sweep_dir, tasks)
    for job, task in live:
        jobs[job] = task
    queue = [t for t in tasks if all(t is not lt for _, lt in live)]

    def submit(batch):
        out = executor.map_array(fn, batch) if kind == "slurm" else [executor.submit(fn, t) for t in batch]
        for job, task in zip(out, batch):
            jobs[job] = task
            write_record(sweep_dir, task["name"], status=Status.SUBMITTED, job=str(job.job_id))
            on_done(task, dict(task["_state"], status=Status.SUBMITTED, job=str(job.job_id)))
        return out

    if kind == "slurm" and queue:
        out = submit(queue)
        queue = []
        if not quiet:
            ids = sorted({str(j.job_id).split("_")[0] for j in out})
            print(f"submitted {len(out)} points as SLURM job array {', '.join(ids)} "
                  f"(logs: {os.path.join(sweep_dir, SUBMITIT)})", flush=True)
    if detach:
        if not quiet:
            print(f"detached; rerun the same command to wait for and collect the results in {sweep_dir}", flush=True)
        return False
    poll, cancelled, deadline = (10.0 if kind == "slurm" else 0.2), False, None
    while jobs or queue:
        if stop.signum is not None:
            if kind == "slurm":
                if not quiet:
                    print("stopped waiting; the SLURM jobs keep running (scancel to stop them); rerun the same "
                          "command to collect the results", file=sys.stderr, flush=True)
                return True
            queue = []
            if not cancelled:
                for job in jobs:
                    try:
                        job.cancel(check=False)  # SIGINT: the runner writes its checkpoint and stops
                    except Exception:  # noqa: BLE001
                        pass
                cancelled, deadline = True, time.time() + 60
            if time.time() > deadline:
                return True
        while queue and len(jobs) < workers:
            submit([queue.pop(0)])
        finished = [j for j in jobs if j.done()]
        for job in finished:
            task = jobs.pop(job)
            err = _job_error(job)
            st = state_on_disk(sweep_dir, task["name"])
            if err and st["status"] not in FINAL + (Status.INTERRUPTED,):
                write_record(sweep_dir, task["name"], status=Status.FAILED, error=err, finished=now(), pid=None)
                st = state_on_disk(sweep_dir, task["name"])
            on_done(task, st)
            progress.point(task["name"], st)
        if not finished:
            time.sleep(poll)
    return True


def _reattach(kind: str, sweep_dir: str, tasks: list[dict]) -> list:
    """SLURM jobs of an earlier invocation that are still queued or running (not resubmitted)."""
    if kind != "slurm":
        return []
    import submitit

    out = []
    for task in tasks:
        rec = read_json(record_path(sweep_dir, task["name"])) or {}
        if rec.get("status") in (Status.SUBMITTED, Status.RUNNING) and rec.get("job"):
            job = submitit.SlurmJob(folder=os.path.join(sweep_dir, SUBMITIT), job_id=str(rec["job"]))
            try:
                state = str(job.state)
            except Exception:  # noqa: BLE001 -- sacct unavailable: treat as finished
                state = "UNKNOWN"
            if state.split(" ")[0] in SLURM_LIVE:
                out.append((job, task))
    return out
