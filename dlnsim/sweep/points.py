"""Sweep points on disk: each point's record, its state read from its run folder, the manifest, and
running one point (in a pool worker or a cluster job).

    points/<point>.json   the sweep's record of each point (status, attempts, job id, error)
    runs/<point>/         the point's ordinary run folder (dlnsim.runner)
    manifest.csv          one row per point: index, run, <axis values>, status, wall_s, attempts, job, error

Statuses (dlnsim.lifecycle.Status): pending, submitted (queued on the cluster), running, and the
runner's completed, interrupted, diverged, failed. Every file is written atomically (dlnsim._io).
"""
from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import os
import shutil
import socket
import time

import torch

from .. import results as R
from .._io import atomic_write
from ..lifecycle import FINAL, Status
from ..options import ConfigError
from ..runlock import RunLock
from ..runner import resume, run
from .spec import MANIFEST, POINTS, RUNS, Sweep, fmt

__all__ = ["read_manifest", "run_point", "write_record", "state_on_disk", "write_manifest", "read_json",
           "record_path", "one_line", "now"]


def now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="microseconds")


def record_path(sweep_dir: str, name: str) -> str:
    return os.path.join(sweep_dir, POINTS, f"{name}.json")


def read_json(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write_record(sweep_dir: str, name: str, **fields) -> dict:
    path = record_path(sweep_dir, name)
    rec = read_json(path) or {}
    rec.update(fields)
    atomic_write(path, json.dumps(rec, indent=1, default=str))
    return rec


def one_line(e: BaseException) -> str:
    text = str(e).strip()
    line = text.splitlines()[0] if text else ""
    if not isinstance(e, ValueError) or not line:
        line = f"{type(e).__name__}: {line}" if line else type(e).__name__
    return line[:400]


def state_on_disk(sweep_dir: str, name: str) -> dict:
    """{status, wall_s, attempts, job, error, checkpoint} of a point, from its run folder and record."""
    run_dir = os.path.join(sweep_dir, RUNS, name)
    rec = read_json(record_path(sweep_dir, name)) or {}
    meta = read_json(os.path.join(run_dir, R.META))
    out = {"attempts": rec.get("attempts", 0), "job": rec.get("job", ""), "error": "", "wall_s": rec.get("wall_s")}
    if meta is not None and meta.get("status"):
        status = meta["status"]
        out["wall_s"] = meta.get("wall_time_s", out["wall_s"])
        if status in (Status.FAILED, Status.DIVERGED, Status.INTERRUPTED):
            out["error"] = meta.get("message", "") or rec.get("error", "")
        if status == Status.RUNNING and rec.get("status") == Status.FAILED:  # the process died mid-run
            status, out["error"] = Status.FAILED, rec.get("error", "")
    else:
        status = rec.get("status", Status.PENDING)
        out["error"] = rec.get("error", "")
        if status in (Status.RUNNING, Status.INTERRUPTED, Status.COMPLETED, Status.DIVERGED):  # no run folder behind it
            status = Status.PENDING
    out["status"] = status
    out["checkpoint"] = os.path.exists(os.path.join(run_dir, R.CHECKPOINT))
    return out


def _manifest_rows(sweep: Sweep, states: dict[int, dict]) -> list[dict]:
    rows = []
    for p in sweep.points:
        st = states[p.index]
        row = {"index": p.index, "run": f"{RUNS}/{p.name}"}
        row.update({k: fmt(v) for k, v in p.values.items()})
        row["seed"] = p.config["dynamics"]["seed"]
        wall = st.get("wall_s")
        row.update(status=st["status"], wall_s="" if wall is None else f"{float(wall):.2f}",
                   attempts=st.get("attempts", 0), job=st.get("job", ""), error=st.get("error", ""))
        rows.append(row)
    return rows


def write_manifest(sweep_dir: str, sweep: Sweep, states: dict[int, dict]) -> None:
    rows = _manifest_rows(sweep, states)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write(os.path.join(sweep_dir, MANIFEST), buf.getvalue())


def read_manifest(sweep_dir: str) -> list[dict]:
    """The rows of <sweep_dir>/manifest.csv as dicts of strings."""
    path = os.path.join(sweep_dir, MANIFEST)
    if not os.path.exists(path):
        raise ConfigError(f"{sweep_dir}: not a sweep folder (no {MANIFEST})")
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))



def run_point(task: dict) -> dict:
    """Run or resume one point; never raises for a failing run. Returns its state (see _state_on_disk).

    task: {sweep_dir, name, config (resolved), threads (or None)}. What happens depends on the
    folder: completed/diverged -> nothing; interrupted with a checkpoint -> resume; otherwise
    (new, failed, killed before its first checkpoint) -> a fresh run in an emptied folder.
    """
    sweep_dir, name = task["sweep_dir"], task["name"]
    if task.get("threads"):
        torch.set_num_threads(int(task["threads"]))
    run_dir = os.path.join(sweep_dir, RUNS, name)
    before = state_on_disk(sweep_dir, name)
    if before["status"] in FINAL:
        return before
    attempts = before["attempts"] + 1
    job = os.environ.get("SLURM_ARRAY_JOB_ID", "")
    job = f"{job}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}" if job else os.environ.get("SLURM_JOB_ID", before["job"])
    write_record(sweep_dir, name, status=Status.RUNNING, attempts=attempts, pid=os.getpid(), host=socket.gethostname(),
                  job=job, started=now(), error="")
    t0 = time.time()
    error = ""
    try:
        if before["status"] in (Status.INTERRUPTED, Status.RUNNING) and before["checkpoint"]:
            resume(run_dir, quiet=True)
        else:
            if os.path.exists(run_dir):
                with RunLock(run_dir):  # FolderInUse if a live process still writes it
                    shutil.rmtree(run_dir)
            run(task["config"], run_dir, quiet=True)
    except Exception as e:  # noqa: BLE001 -- a failing point must not stop the sweep
        error = one_line(e)
    wall = time.time() - t0
    fields = dict(finished=now(), pid=None)
    if error:
        fields.update(status=Status.FAILED, error=error, wall_s=round((before["wall_s"] or 0.0) + wall, 3))
    else:
        fields.update(status=Status.DONE)
    write_record(sweep_dir, name, **fields)
    return state_on_disk(sweep_dir, name)
