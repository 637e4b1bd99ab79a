"""Sweeps (dlnsim.sweep): expansion and validation, the local pool, submitit's local executor,
interrupt and resume, failing points, and the summary figure.

The end-to-end tests run `python -m dlnsim sweep` in a subprocess (as a user would) on tiny RLE and
gradient runs; they check files, statuses and which points ran, not statistics (the showcase sweep
configs/sweep_gibbs.yaml is the statistical comparison, with z-scores in its gibbs.csv).
"""
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import yaml

from dlnsim import cli
from dlnsim.config import ConfigError
from dlnsim.sweep import load_sweep, prepare_folder, read_manifest
from dlnsim.sweep.executors import PointJob, submitit_parameters
from dlnsim.sweep.spec import minutes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A tiny Langevin (RLE) run: 2x2, E = ||X||^2 / 2, a few trajectories and steps.
TINY_RLE = {
    "network": {"depth": 2, "width": 2, "init": "balanced", "scale": 0.7},
    "energy": {"type": "weight_decay", "alpha": 1.0},
    "dynamics": {"scheme": "rle", "step_size": 0.01, "steps": 60, "ensemble": 8, "seed": 1, "beta": 1.0},
    "observers": {"every": 10},
    "output": {"figures": False},
}


def _write(path, data) -> str:
    with open(path, "w") as f:
        yaml.safe_dump(data, f, sort_keys=False)
    return str(path)


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DLNSIM_TEST_")}
    env["PYTHONPATH"] = ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")
    env.update(extra)
    return env


def _sweep_cmd(*args):
    return [sys.executable, "-m", "dlnsim", "sweep", *map(str, args)]


def _run(*args, timeout=120, **env):
    return subprocess.run(_sweep_cmd(*args), capture_output=True, text=True, timeout=timeout, env=_env(**env), cwd=ROOT)


def _rows(out) -> dict:
    return {int(r["index"]): r for r in read_manifest(str(out))}


# ---------------------------------------------------------------------------------------------
# sweep files: expansion and validation (in-process, fast)
# ---------------------------------------------------------------------------------------------


def test_grid_and_zip_expansion_order_names_and_batching():
    sweep = load_sweep({
        "base": TINY_RLE,
        "axes": {"network.depth": [1, 2], "dynamics.beta": [0.5, 2.0]},
        "zip": [{"dynamics.seed": [3, 4, 5], "dynamics.step_size": [0.01, 0.02, 0.04]}],
    })
    pts = sweep.points
    assert len(pts) == 2 * 2 * 3
    # first axis slowest, zip group fastest, values set in the resolved configs
    assert [p.values["network.depth"] for p in pts[:6]] == [1] * 6
    assert [(p.values["dynamics.seed"], p.values["dynamics.step_size"]) for p in pts[:3]] == [(3, 0.01), (4, 0.02), (5, 0.04)]
    assert pts[7].config["network"]["depth"] == 2 and pts[7].config["dynamics"]["beta"] == 0.5
    assert pts[7].config["dynamics"]["seed"] == 4 and pts[7].config["network"]["widths"] == [2, 2, 2]
    assert len({p.name for p in pts}) == len(pts) and pts[0].name == "000_depth=1_beta=0.5_seed=3_step_size=0.01"

    batched = load_sweep({"base": TINY_RLE, "axes": {"network.depth": [1, 2], "dynamics.beta": [0.5, 2.0]},
                          "batch_axes": ["dynamics.beta"]})
    assert [p.name for p in batched.points] == ["000_depth=1", "001_depth=2"]
    assert all(p.config["dynamics"]["beta"] == [0.5, 2.0] for p in batched.points)


def test_executor_options_map_to_submitit_parameters():
    sweep = load_sweep({"base": TINY_RLE, "axes": {"dynamics.seed": [1]}, "executor": {
        "kind": "slurm", "partition": "cpu", "time": "1:30:00", "cpus_per_task": 2, "gpus_per_node": 1,
        "mem_gb": 8, "array_parallelism": 5, "setup": ["module load python"],
        "slurm_additional_parameters": {"account": "dln"}}})
    params = submitit_parameters(sweep.executor, sweep.name)
    assert params == {"name": "dlnsim-sweep", "timeout_min": 90, "cpus_per_task": 2, "slurm_array_parallelism": 5,
                      "gpus_per_node": 1, "mem_gb": 8, "slurm_partition": "cpu", "slurm_setup": ["module load python"],
                      "slurm_additional_parameters": {"account": "dln"}}
    # sbatch --time forms: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM:SS
    assert [minutes(v) for v in (45, "45", "10:30", "2:00:00", "1-2", "1-00:00:30")] == [45, 45, 11, 120, 1560, 1441]


def test_slurm_job_script_has_the_executor_options(tmp_path, monkeypatch):
    submitit = pytest.importorskip("submitit", reason="submitit is the optional cluster backend: pip install 'dlnsim[slurm]'")
    from dlnsim.sweep.executors import submitit_executor

    # submitit refuses to build a SLURM executor without srun on PATH; a stub stands in for it.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bindir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    sweep = load_sweep({"base": TINY_RLE, "axes": {"dynamics.seed": [1, 2]}, "executor": {
        "partition": "cpu", "time": 90, "mem_gb": 4, "array_parallelism": 3, "setup": ["source venv/bin/activate"],
        "slurm_additional_parameters": {"account": "dln"}}})
    ex = submitit_executor("slurm", str(tmp_path / "sw"), sweep.executor, sweep.name)
    assert isinstance(ex, submitit.AutoExecutor)
    # the sbatch script submitit would submit (private helper: the only offline view of it)
    script = ex._executor._make_submission_file_text("python -m x", "uid")
    for line in ("#SBATCH --partition=cpu", "#SBATCH --time=90", "#SBATCH --mem=4GB", "#SBATCH --account=dln",
                 "#SBATCH --cpus-per-task=1", "#SBATCH --job-name=dlnsim-sweep", "source venv/bin/activate"):
        assert line in script
    # on a timeout submitit requeues the same task (run_point then resumes it from the folder)
    task = {"name": "000_seed=1"}
    delayed = PointJob().checkpoint(task)
    assert isinstance(delayed.function, PointJob) and delayed.args == (task,)


def test_point_job_checkpoints_then_hands_the_cluster_signal_to_submitit(tmp_path, monkeypatch):
    """SLURM's pre-timeout/preemption signal (SIGUSR2) first stops the runner cleanly (checkpoint,
    status interrupted), then goes to submitit's handler (here a stand-in that records the call);
    the requeued job resumes the point."""
    base = dict(TINY_RLE, dynamics=dict(TINY_RLE["dynamics"], steps=100), output={"figures": False, "checkpoint_every": 1})
    sweep = load_sweep({"base": base, "axes": {"dynamics.beta": [1.0]}})
    sweep_dir = tmp_path / "sweep"
    prepare_folder(sweep, str(sweep_dir))
    p = sweep.points[0]
    task = {"sweep_dir": str(sweep_dir), "name": p.name, "config": p.config, "threads": 1, "index": 0}
    ckpt = sweep_dir / "runs" / p.name / "checkpoint.pt"

    def signal_when_checkpointed():
        deadline = time.time() + 30
        while not ckpt.exists() and time.time() < deadline:
            time.sleep(0.005)
        os.kill(os.getpid(), signal.SIGUSR2)

    calls = []
    monkeypatch.setenv("DLNSIM_TEST_STEP_SLEEP", "0.01")
    old = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))
    sender = threading.Thread(target=signal_when_checkpointed)
    sender.start()
    try:
        state = PointJob()(task)
    finally:
        sender.join()
        signal.signal(signal.SIGUSR2, old)
    assert state["status"] == "interrupted" and state["checkpoint"]
    assert calls == [signal.SIGUSR2]
    monkeypatch.delenv("DLNSIM_TEST_STEP_SLEEP")
    state = PointJob()(task)  # the requeued job
    assert state["status"] == "completed" and state["attempts"] == 2
    meta = json.loads((sweep_dir / "runs" / p.name / "meta.json").read_text())
    assert len(meta["resumed"]) == 1 and meta["steps_done"] == 100


MALFORMED = [
    ({"axes": {"dynamics.bta": [1, 2]}}, "axes.dynamics.bta: unknown key; did you mean 'beta'?"),
    ({"axes": {"dynamic.beta": [1, 2]}}, "did you mean 'dynamics'?"),
    ({"axes": {"dynamics.beta": []}}, "axes.dynamics.beta: is empty"),
    ({"axes": {"dynamics.beta": 2}}, "axes.dynamics.beta: must be a list"),
    ({"axes": {}}, "the sweep has no axes"),
    ({"zip": {"dynamics.beta": [1, 2], "dynamics.seed": [1]}}, "zip[0]: lists of a zip group must have equal lengths"),
    ({"axes": {"dynamics.beta": [1, -2]}}, "sweep point 1 (dynamics.beta=-2): dynamics.beta: must be > 0"),
    ({"axes": {"network.depth": [2, 0]}}, "sweep point 1 (network.depth=0): network.depth: must be >= 1"),
    ({"axes": {"dynamics.beta": [1]}, "zip": {"dynamics.beta": [2]}}, "dynamics.beta: appears on two axes"),
    ({"axes": {"network.depth": [1, 2]}, "batch_axes": ["network.depth"]}, "batch_axes: 'network.depth' cannot be batched"),
    ({"axes": {"dynamics.seed": [1]}, "batch_axes": ["dynamics.beta"]}, "batch_axes: dynamics.beta must be one of the grid axes"),
    ({"axis": {"dynamics.beta": [1]}}, "axis: unknown sweep key; did you mean 'axes'?"),
    ({"axes": {"dynamics.beta": [1]}, "executor": {"kind": "slurmm"}}, "executor.kind: unknown executor 'slurmm'; did you mean 'slurm'?"),
    ({"axes": {"dynamics.beta": [1]}, "executor": {"time": "soon"}}, "executor.time: must be minutes"),
    ({"axes": {"dynamics.beta": [1]}, "executor": {"partitions": "x"}}, "executor.partitions: unknown option; did you mean 'partition'?"),
    ({"axes": {"study.figure": ["overlay"]}}, "study.figure: a sweep cannot vary the study section"),
    ({"base": None, "axes": {"dynamics.beta": [1]}}, "base: missing"),
    ({"base": "missing.yaml", "axes": {"dynamics.beta": [1]}}, "missing.yaml: no such base config"),
]


@pytest.mark.parametrize("sweep,expected", MALFORMED, ids=[m[1][:40] for m in MALFORMED])
def test_malformed_sweep_is_one_line_error_exit_2(tmp_path, capsys, sweep, expected):
    data = {"base": TINY_RLE, **sweep}
    path = _write(tmp_path / "bad.yaml", data)
    out = tmp_path / "out"
    code = cli.main(["sweep", path, "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("dlnsim: error: ") and err.count("\n") == 1, err
    assert expected in err, err
    assert not out.exists()


def test_malformed_yaml_and_foreign_folders(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("axes: {dynamics.beta: [1, 2\n")
    assert cli.main(["sweep", str(bad)]) == 2
    assert "malformed YAML" in capsys.readouterr().err
    good = _write(tmp_path / "good.yaml", {"base": TINY_RLE, "axes": {"dynamics.beta": [1, 2]}})
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "something.txt").write_text("x")
    assert cli.main(["sweep", good, "--out", str(busy)]) == 2
    assert "is not a sweep folder" in capsys.readouterr().err
    # a folder holding another sweep is not reused
    other = tmp_path / "other"
    other.mkdir()
    (other / "sweep.yaml").write_text(load_sweep({"base": TINY_RLE, "axes": {"dynamics.beta": [3]}}).to_yaml())
    assert cli.main(["sweep", good, "--out", str(other)]) == 2
    assert "holds a different sweep (axes differ)" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="batch_axes"):
        load_sweep({"base": TINY_RLE, "axes": {"dynamics.beta": [1]}, "batch_axes": "dynamics.seed"})


def test_dry_run_lists_the_points_of_a_slurm_sweep(tmp_path, capsys):
    pytest.importorskip("submitit", reason="submitit is the optional cluster backend: pip install 'dlnsim[slurm]'")
    good = _write(tmp_path / "good.yaml", {"base": TINY_RLE, "axes": {"dynamics.beta": [1, 2]}})
    # an engine that cannot run here is refused before anything is written
    if shutil.which("srun") is None:
        assert cli.main(["sweep", good, "--out", str(tmp_path / "slurm"), "--executor", "slurm"]) == 2
        assert "no srun on this machine" in capsys.readouterr().err
        assert not (tmp_path / "slurm").exists()
    # --dry-run validates and lists the points, runs nothing
    assert cli.main(["sweep", good, "--out", str(tmp_path / "dry"), "--dry-run", "--executor", "slurm"]) == 0
    listing = capsys.readouterr().out
    assert "2 points" in listing and "001_beta=2: beta=2" in listing and "timeout_min" in listing
    assert not (tmp_path / "dry").exists()


# ---------------------------------------------------------------------------------------------
# running sweeps (subprocesses, as a user runs them)
# ---------------------------------------------------------------------------------------------


def test_local_pool_sweep_writes_runs_manifest_and_summary_figure(tmp_path):
    path = _write(tmp_path / "gibbs.yaml", {
        "base": TINY_RLE, "axes": {"network.depth": [1, 2], "dynamics.beta": [1.0, 4.0]},
        "batch_axes": ["dynamics.beta"]})
    out = tmp_path / "sweep"
    res = _run(path, "--out", out, "--workers", 2, "--no-plot", "--quiet")
    assert res.returncode == 0, res.stderr
    rows = _rows(out)
    assert [r["status"] for r in rows.values()] == ["completed", "completed"]
    assert rows[1]["network.depth"] == "2" and rows[1]["dynamics.beta"] == "1|4" and rows[1]["attempts"] == "1"
    assert float(rows[0]["wall_s"]) > 0 and rows[0]["error"] == ""
    for r in rows.values():
        run_dir = out / r["run"]
        assert json.loads((run_dir / "meta.json").read_text())["status"] == "completed"
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert cfg["network"]["depth"] == int(r["network.depth"]) and cfg["dynamics"]["beta"] == [1.0, 4.0]
        with np.load(run_dir / "arrays.npz") as a:
            assert a["singular_values"].shape == (7, 16, 2)  # 6 saves + t=0; 2 betas x 8 trajectories
            assert sorted(set(a["beta"])) == [1.0, 4.0]
    assert yaml.safe_load((out / "sweep.yaml").read_text())["base"] == TINY_RLE
    # `dlnsim plot SWEEP_DIR` draws the summary across the axes (the sweep does it itself without --no-plot)
    res = subprocess.run([sys.executable, "-m", "dlnsim", "plot", str(out), "--format", "png"], capture_output=True,
                         text=True, env=_env(), cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "gibbs.png" in res.stdout
    for name in ("gibbs.png", "overview.png"):  # (PDFs: checked by the Saxe sweep, drawn by the sweep itself)
        assert (out / "figures" / name).stat().st_size > 1000
    with open(out / "figures" / "gibbs.csv") as f:
        summary = list(csv.DictReader(f))
    assert sorted((int(r["depth"]), float(r["beta"])) for r in summary) == [(1, 1.0), (1, 4.0), (2, 1.0), (2, 4.0)]
    # at N = 1 the Gibbs law is Gaussian: E||X||^2 = d^2 / (alpha beta)
    assert {float(r["beta"]): float(r["sq_norm_theory"]) for r in summary if r["depth"] == "1"} == pytest.approx({1.0: 4.0, 4.0: 1.0}, rel=1e-6)


def test_depth_sweep_of_saxe_modes_matches_the_closed_form(tmp_path):
    base = {
        "network": {"width": 2, "init": "balanced", "target": "aligned", "scale": 0.05},
        "energy": {"type": "matrix_regression", "target": "random", "spectrum": [2.0, 1.0]},
        "dynamics": {"scheme": "gradient_flow", "step_size": 0.005, "time": 3.0},
        "observers": {"every": 4, "entropy_measured": "false"},
        "output": {"figures": False},
    }
    out = tmp_path / "sweep"
    res = _run(_write(tmp_path / "saxe.yaml", {"base": base, "axes": {"network.depth": [1, 3]}}), "--out", out, "--quiet")
    assert res.returncode == 0, res.stderr
    assert (out / "figures" / "saxe.png").exists() and (out / "figures" / "saxe.pdf").exists()
    with open(out / "figures" / "saxe.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted((int(r["depth"]), int(r["mode"])) for r in rows) == [(1, 1), (1, 2), (3, 1), (3, 2)]
    # RK4 at h = 0.005 is exact to ~1e-9 here; the simulated crossing time is linearly interpolated between
    # save points 0.02 apart, an O(dt^2 |u''/u'|) ~ 1e-3 relative error at most (measured: <= 3e-4)
    for r in rows:
        assert abs(float(r["rel_err"])) < 2e-3, r


def test_submitit_local_executor_runs_the_points(tmp_path):
    pytest.importorskip("submitit", reason="submitit is the optional cluster backend: pip install 'dlnsim[slurm]'")
    path = _write(tmp_path / "s.yaml", {"base": TINY_RLE, "axes": {"dynamics.beta": [1.0, 2.0]}})
    out = tmp_path / "sweep"
    res = _run(path, "--out", out, "--executor", "submitit-local", "--workers", 2, "--no-plot", "--quiet")
    assert res.returncode == 0, res.stderr
    rows = _rows(out)
    assert [r["status"] for r in rows.values()] == ["completed", "completed"]
    jobs = [r["job"] for r in rows.values()]
    assert all(jobs) and len(set(jobs)) == 2  # one submitit job per point
    logs = os.listdir(out / "submitit")
    assert any(name.endswith("_result.pkl") for name in logs)
    for r in rows.values():
        assert (out / r["run"] / "arrays.npz").exists()


def test_killed_sweep_reruns_only_the_missing_points(tmp_path):
    base = dict(TINY_RLE, dynamics=dict(TINY_RLE["dynamics"], steps=60), output={"figures": False, "checkpoint_every": 1})
    path = _write(tmp_path / "s.yaml", {"base": base, "axes": {"dynamics.beta": [1.0, 2.0, 4.0]}})
    out = tmp_path / "sweep"
    # one worker and 20 ms per step (the runner's test hook): point 0 finishes, point 1 is mid-run
    proc = subprocess.Popen(_sweep_cmd(path, "--out", out, "--workers", 1, "--no-plot", "--quiet"), cwd=ROOT,
                            env=_env(DLNSIM_TEST_STEP_SLEEP="0.02"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 90
    ckpt = out / "runs" / "001_beta=2" / "checkpoint.pt"
    while time.time() < deadline and not ckpt.exists():
        time.sleep(0.1)
    assert ckpt.exists(), "point 1 never wrote a checkpoint"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    rows = _rows(out)
    assert [rows[i]["status"] for i in range(3)] == ["completed", "interrupted", "pending"]
    assert "interrupted by signal SIGTERM" in rows[1]["error"]
    first = out / "runs" / "000_beta=1"
    stamps = {f: os.stat(first / f).st_mtime_ns for f in ("meta.json", "arrays.npz", "config.yaml")}

    res = _run(out, "--workers", 2, "--no-plot", "--quiet")  # rerun the folder itself
    assert res.returncode == 0, res.stderr
    rows = _rows(out)
    assert [rows[i]["status"] for i in range(3)] == ["completed"] * 3
    assert [rows[i]["attempts"] for i in range(3)] == ["1", "2", "1"]
    assert {f: os.stat(first / f).st_mtime_ns for f in stamps} == stamps  # the finished point did not run again
    second = out / "runs" / "001_beta=2"
    meta = json.loads((second / "meta.json").read_text())
    assert len(meta["resumed"]) == 1 and meta["steps_done"] == 60  # continued from its checkpoint
    # and the resumed point equals an uninterrupted run of its config (CPU, same seed: bit-identical)
    from dlnsim.results import read_config
    from dlnsim.runner import run

    fresh = run(read_config(str(second)), str(tmp_path / "fresh"), quiet=True)
    with np.load(second / "arrays.npz") as a, np.load(tmp_path / "fresh" / "arrays.npz") as b:
        np.testing.assert_array_equal(a["step"], np.arange(0, 61, 10))
        np.testing.assert_array_equal(a["singular_values"], b["singular_values"])
    assert fresh.status == "completed"


def test_failing_points_are_recorded_and_do_not_stop_the_others(tmp_path):
    base = {
        "network": {"depth": 2, "width": 2, "init": "balanced", "scale": 0.5},
        "energy": {"type": "matrix_regression", "target": "diag", "spectrum": [2.0, 1.0]},
        "dynamics": {"scheme": "gradient_descent", "steps": 50, "ensemble": 2, "beta": 1.0, "theory": "false"},
        "observers": {"every": 10},
        "output": {"figures": False},
    }
    path = _write(tmp_path / "s.yaml", {"base": base, "zip": {
        # a stable step, a step far beyond 2/L (gradient descent blows up), an option the scheme rejects
        "dynamics.scheme": ["gradient_descent", "gradient_descent", "rle"],
        "dynamics.step_size": [0.01, 3.0, 0.01],
        "dynamics.options": [{}, {}, {"bogus": 1}],
    }})
    out = tmp_path / "sweep"
    res = _run(path, "--out", out, "--workers", 2, "--no-plot", "--quiet")
    assert res.returncode == 1
    assert res.stderr.strip() == f"dlnsim: error: 1 point(s) failed; see {out}/manifest.csv"
    rows = _rows(out)
    assert [rows[i]["status"] for i in range(3)] == ["completed", "diverged", "failed"]
    assert rows[1]["error"].startswith("diverged at step") and "reduce dynamics.step_size" in rows[1]["error"]
    assert rows[2]["error"].startswith("dynamics.options:") and "bogus" in rows[2]["error"]  # the runner's one line
    assert all("\n" not in r["error"] for r in rows.values())
    # a rerun retries only the failed point; completed and diverged points are final
    res = _run(out, "--no-plot", "--quiet")
    assert res.returncode == 1
    assert [r["attempts"] for r in _rows(out).values()] == ["1", "1", "2"]
