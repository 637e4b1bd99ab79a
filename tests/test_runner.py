"""Runs that stop early: interrupt (SIGINT / SIGTERM) and resume bit-identically, divergence.

Interrupts use the runner's test hook DLNSIM_TEST_INTERRUPT_AT_STEP=k (the process sends itself the
signal after step k, through the real signal handler) or DLNSIM_TEST_STEP_SLEEP (slow steps, so
that the test can signal the process from outside once its first checkpoint exists). On CPU with
the same seed a resumed run must reproduce an uninterrupted one exactly: every array is compared
with ==, not with a tolerance (same operations on the same numbers, and the generator state is
restored from the checkpoint).
"""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from dlnsim import cli
from dlnsim.config import load_config
from dlnsim.runner import resume, run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def env_with(**extra):
    return dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra)


def dlnsim_cmd(*args):
    return [sys.executable, "-m", "dlnsim", *args]


def arrays(run_dir):
    with np.load(os.path.join(run_dir, "arrays.npz")) as z:
        return {k: z[k] for k in z.files}


def meta(run_dir):
    with open(os.path.join(run_dir, "meta.json")) as f:
        return json.load(f)


def assert_identical(a, b):
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].shape == b[k].shape, k
        assert np.array_equal(a[k], b[k], equal_nan=True), f"{k} differs after resume"


def config(scheme, steps=40, **dyn):
    return {
        "network": {"depth": 3, "width": 2, "init": "balanced", "scale": 0.8},
        "energy": {"type": "weight_decay" if scheme.startswith(("langevin", "rle")) else "matrix_regression"},
        "dynamics": {"scheme": scheme, "step_size": 0.01, "steps": steps, "ensemble": 4, "seed": 5,
                     **({"beta": 3.0} if scheme.startswith(("langevin", "rle")) else {}), **dyn},
        "observers": {"every": 3},  # steps is not a multiple: the last step is an extra save point
        "output": {"figures": False, "checkpoint_every": 2},
    }


def write(tmp_path, name, cfg):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_sigint_then_resume_is_bit_identical_in_a_subprocess(tmp_path):
    cfg = write(tmp_path, "rle.yaml", config("rle"))
    full, part = str(tmp_path / "full"), str(tmp_path / "part")
    p = subprocess.run(dlnsim_cmd("run", cfg, "--out", full, "--quiet"), env=env_with(), capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    p = subprocess.run(dlnsim_cmd("run", cfg, "--out", part, "--quiet"), capture_output=True, text=True, cwd=ROOT,
                       env=env_with(DLNSIM_TEST_INTERRUPT_AT_STEP="17"))
    assert p.returncode == 130, p.stderr
    m = meta(part)
    assert m["status"] == "interrupted" and list(m)[-1] == "status"
    assert m["steps_done"] == 17
    assert os.path.exists(os.path.join(part, "checkpoint.pt"))
    # everything recorded so far is in the folder: save points 0, 3, ..., 15
    assert arrays(part)["step"].tolist() == [0, 3, 6, 9, 12, 15]
    p = subprocess.run(dlnsim_cmd("run", "--resume", part, "--quiet"), env=env_with(), capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert meta(part)["status"] == "completed" and len(meta(part)["resumed"]) == 1
    a, b = arrays(full), arrays(part)
    assert a["step"].tolist()[-2:] == [39, 40]
    assert_identical(a, b)
    # a completed run cannot be resumed
    p = subprocess.run(dlnsim_cmd("run", "--resume", part), env=env_with(), capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 2 and "already completed" in p.stderr and "Traceback" not in p.stderr


def test_sigterm_from_outside_leaves_a_resumable_folder(tmp_path):
    cfg_dict = config("gradient_descent", steps=60)
    cfg = write(tmp_path, "gd.yaml", cfg_dict)
    part = tmp_path / "part"
    proc = subprocess.Popen(dlnsim_cmd("run", cfg, "--out", str(part), "--quiet"), cwd=ROOT,
                            env=env_with(DLNSIM_TEST_STEP_SLEEP="0.02"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (part / "checkpoint.pt").exists():  # the first periodic checkpoint (2nd save point: step 3)
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    m = meta(str(part))
    assert m["status"] == "interrupted" and "SIGTERM" in m["message"] and 3 <= m["steps_done"] < 60
    # resume in-process and compare with an uninterrupted in-process run
    assert resume(str(part), quiet=True).status == "completed"
    full = str(tmp_path / "full")
    assert run(load_config(cfg), full, quiet=True).status == "completed"
    assert_identical(arrays(full), arrays(str(part)))


@pytest.mark.parametrize("scheme", ["langevin_projected", "langevin_metropolis", "langevin_unprojected", "gradient_flow",
                                    "rle_metropolis"])
def test_interrupt_and_resume_in_process_is_bit_identical(tmp_path, monkeypatch, scheme):
    cfg = load_config(config(scheme, steps=25))
    full, part = str(tmp_path / "full"), str(tmp_path / "part")
    assert run(cfg, full, quiet=True).status == "completed"
    monkeypatch.setenv("DLNSIM_TEST_INTERRUPT_AT_STEP", "11")
    out = run(cfg, part, quiet=True)
    assert (out.status, out.exit_code) == ("interrupted", 130)
    monkeypatch.delenv("DLNSIM_TEST_INTERRUPT_AT_STEP")
    assert resume(part, quiet=True).status == "completed"
    assert_identical(arrays(full), arrays(part))


def test_study_resumes_where_it_stopped(tmp_path, monkeypatch):
    cfg = config("gradient_flow", steps=12)
    cfg["study"] = {"variants": [{"label": "a", "set": {"dynamics.seed": 1}}, {"label": "b", "set": {"dynamics.seed": 2}}]}
    cfg = load_config(cfg)
    full, part = str(tmp_path / "full"), str(tmp_path / "part")
    assert run(cfg, full, quiet=True).status == "completed"
    monkeypatch.setenv("DLNSIM_TEST_INTERRUPT_AT_STEP", "5")  # stops variant a at step 5
    assert run(cfg, part, quiet=True).status == "interrupted"
    assert [v["status"] for v in meta(part)["variants"]] == ["interrupted", "pending"]
    monkeypatch.delenv("DLNSIM_TEST_INTERRUPT_AT_STEP")
    assert resume(part, quiet=True).status == "completed"
    for label in ("a", "b"):
        assert_identical(arrays(os.path.join(full, "runs", label)), arrays(os.path.join(part, "runs", label)))


@pytest.mark.parametrize("scheme", ["gradient_descent", "end_to_end_flow"])
def test_divergence_stops_with_status_and_keeps_the_data(tmp_path, capsys, scheme):
    cfg = config(scheme, steps=200, step_size=3.0)
    cfg["energy"] = {"type": "matrix_regression", "spectrum": [4.0, 2.0]}
    cfg["observers"] = {"every": 2}
    out = tmp_path / "div"
    code = cli.main(["run", write(tmp_path, "div.yaml", cfg), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 3
    assert err.count("\n") == 1 and err.startswith("dlnsim: error: diverged at step ") and "Traceback" not in err
    m = meta(str(out))
    assert m["status"] == "diverged" and list(m)[-1] == "status"
    d = m["diverged"]
    assert d["quantity"].startswith(("X (", "the loss E(X)"))
    assert d["t"] == pytest.approx(3.0 * d["step"])
    a = arrays(str(out))
    # the data up to the last finite save point are kept
    assert len(a["t"]) >= 1 and a["step"][-1] < d["step"] and np.isfinite(a["loss"]).all()
    assert a["singular_values"].shape == (len(a["t"]), 4, 2)
    assert not os.path.exists(os.path.join(out, "checkpoint.pt"))
