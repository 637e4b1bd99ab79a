"""The `dlnsim` command: end-to-end runs, result folders, plots, and one-line user errors.

Most cases call dlnsim.cli.main(argv) in-process (the same code path as the console script, minus
~1.5 s of interpreter and torch start-up per case); a few run `python -m dlnsim` in a subprocess to
check the real process boundary (exit status, nothing but one line on stderr).
"""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from dlnsim import cli
from dlnsim.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def dlnsim_subprocess(*args, env=None, timeout=120):
    e = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {}))
    return subprocess.run([sys.executable, "-m", "dlnsim", *args], capture_output=True, text=True, env=e,
                          timeout=timeout, cwd=ROOT)


TINY = {
    "network": {"depth": 3, "width": 2, "init": "balanced", "target": "aligned", "scale": 0.1},
    "energy": {"type": "matrix_regression", "spectrum": [2.0, 1.0]},
    "dynamics": {"scheme": "gradient_flow", "step_size": 0.02, "steps": 75, "ensemble": 3},
    "observers": {"every": 5},
    "output": {"formats": ["png"]},
}


def write_yaml(path, data):
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def test_end_to_end_run_through_the_command(tmp_path):
    cfg_path = write_yaml(tmp_path / "tiny.yaml", TINY)
    out = tmp_path / "run"
    p = dlnsim_subprocess("run", cfg_path, "--out", str(out), "--quiet")
    assert p.returncode == 0, p.stderr
    assert p.stderr == "" and p.stdout == ""
    for name in ("config.yaml", "meta.json", "metrics.csv", "arrays.npz", "figures/singular_values.png",
                 "figures/loss.png", "figures/balancedness.png", "figures/entropy.png", "figures/thermodynamics.png"):
        assert (out / name).exists(), name
    assert not (out / "checkpoint.pt").exists()  # nothing left to resume

    a = np.load(out / "arrays.npz")
    T, B, N, r = 16, 3, 3, 2  # save points 0, 5, ..., 75
    assert a["t"].shape == (T,) and a["step"].tolist() == list(range(0, 76, 5))
    np.testing.assert_allclose(a["t"], 0.02 * a["step"], rtol=1e-12)
    shapes = {"singular_values": (T, B, r), "loss": (T, B), "entropy_formula": (T, B), "entropy_measured": (T, B),
              "balancedness": (T, B, N - 1), "saxe_singular_values": (T, r)}
    for k, shape in shapes.items():
        assert a[k].shape == shape, k
    # theory: auto integrates the end-to-end reference flow only where something uses it; here the
    # figure draws the Saxe closed form instead (dlnsim.run_theory.wants_reference_flow)
    assert "reference_singular_values" not in a and "reference_distance" not in a
    # the run is in the Saxe setting: RK4 has global error O(h^4); 2.0e-5 was measured at h = 0.05,
    # so (0.02/0.05)^4 x 2.0e-5 = 5e-7 is expected here
    assert np.abs(a["singular_values"] - a["saxe_singular_values"][:, None, :]).max() < 1e-6
    # on the balanced manifold the measured entropy is the closed form, to roundoff of the Gram determinant
    assert np.abs(a["entropy_measured"] - a["entropy_formula"]).max() < 1e-8

    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == T * B
    assert {"step", "t", "traj", "loss", "entropy_formula", "entropy_measured", "balancedness_max",
            "singular_values_1", "saxe_singular_values_1"} <= set(rows[0])
    assert float(rows[-1]["loss"]) == pytest.approx(a["loss"][-1, -1], rel=1e-9)

    meta = json.loads((out / "meta.json").read_text())
    assert list(meta)[-1] == "status" and meta["status"] == "completed"
    for k in ("dlnsim", "torch", "numpy", "python", "git_commit", "device", "dtype", "seed", "start_time", "end_time", "command"):
        assert k in meta, k
    assert meta["device"] == "cpu" and meta["dtype"] == "float64" and meta["steps_done"] == 75

    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved == load_config(cfg_path)
    assert resolved["network"]["widths"] == [2, 2, 2, 2]

    # `dlnsim plot` redraws the figures from the folder alone
    for f in (out / "figures").iterdir():
        f.unlink()
    assert cli.main(["plot", str(out)]) == 0
    assert (out / "figures" / "singular_values.png").exists() and (out / "figures" / "entropy.png").exists()


# One distinct mistake per case: (description, config or raw YAML text, extra argv, expected key path).
MALFORMED = [
    ("unknown section", {"netwrok": {"depth": 2}}, [], "netwrok: unknown section; did you mean 'network'?"),
    ("unknown key", {"dynamics": {"step_sise": 0.1}}, [], "dynamics.step_sise: unknown key; did you mean 'step_size'?"),
    ("negative step", {"dynamics": {"step_size": -0.1}}, [], "dynamics.step_size: must be > 0"),
    ("non-positive beta", {"dynamics": {"beta": -1}}, [], "dynamics.beta: must be > 0, got -1 (set a positive inverse temperature)"),
    ("zero in a beta list", {"dynamics": {"beta": [1, 0]}}, [], "dynamics.beta[1]: must be > 0"),
    ("widths not a list", {"network": {"widths": "2,2"}}, [], "network.widths: must be a list"),
    ("zero width", {"network": {"widths": [2, 0, 2]}}, [], "network.widths[1]: must be >= 1"),
    ("empty ensemble", {"dynamics": {"ensemble": 0}}, [], "dynamics.ensemble: must be >= 1"),
    ("bool as integer", {"dynamics": {"ensemble": True}}, [], "dynamics.ensemble: must be an integer"),
    ("text as number", {"dynamics": {"step_size": "fast"}}, [], "dynamics.step_size: must be a number"),
    ("unknown scheme", {"dynamics": {"scheme": "langevn"}}, [], "dynamics.scheme: unknown value 'langevn'; did you mean"),
    ("unknown init", {"network": {"init": "xavier"}}, [], "network.init: unknown value 'xavier'"),
    ("target shape vs widths", {"energy": {"target": [[1, 2, 3], [4, 5, 6]]}}, [], "energy.target: must be d_N x d_0 = 2x2"),
    ("ragged matrix", {"energy": {"target": [[1, 2], [3]]}}, [], "energy.target: rows must be non-empty and of equal length"),
    ("completion without mask", {"energy": {"type": "matrix_completion"}}, [], "energy.mask: matrix_completion needs"),
    ("langevin without beta", {"dynamics": {"scheme": "rle"}}, [], "dynamics.beta: scheme 'rle' needs an inverse temperature"),
    ("time and steps disagree", {"dynamics": {"time": 1.0, "steps": 7, "step_size": 0.1}}, [], "dynamics.steps: 7 conflicts with dynamics.time"),
    ("depth vs widths", {"network": {"widths": [2, 2, 2], "depth": 3}}, [], "network.depth: is 3 but network.widths"),
    ("balanced rectangular gaussian X(0)", {"network": {"widths": [2, 3, 2], "init": "balanced", "target": "gaussian"}}, [],
     "network.target: 'gaussian' is for square widths"),
    ("spectrum length", {"network": {"spectrum": [1, 2, 3]}}, [], "network.spectrum: needs 2 singular values"),
    ("save interval too long", {"dynamics": {"steps": 10}, "observers": {"every": 20}}, [], "observers.every: 20 is more than the 10 steps"),
    ("unknown observable", {"observers": {"include": ["loss", "entropie"]}}, [], "observers.include[1]: unknown value 'entropie'; did you mean one of 'entropy_formula', 'entropy_measured'?"),
    ("unknown dtype", {"device": {"dtype": "float16"}}, [], "device.dtype: unknown value 'float16'"),
    ("time scale for a parameter scheme", {"dynamics": {"time_scale": "depth"}}, [], "dynamics.time_scale: 'depth' applies to end-to-end schemes"),
    ("missing weight file", {"network": {"init": "file", "file": "/nonexistent/w.pt"}}, [], "network.file: no such file"),
    ("weights that do not chain", {"network": {"init": "file", "file": "bad.npz"}}, [], "network.file: widths do not chain: W_2 has shape (2, 2)"),
    ("section not a mapping", {"dynamics": 5}, [], "dynamics: must be a mapping of keys"),
    ("bad override key", {}, ["--set", "dynamics.bta=1"], "dynamics.bta: unknown key; did you mean 'beta'?"),
    ("bad override value", {}, ["--set", "dynamics.ensemble=-2"], "dynamics.ensemble: must be >= 1"),
    ("bad study variant", {"study": {"variants": [{"label": "x", "set": {"dynamics.step_size": 0}}]}}, [],
     "study.variants[0] (x): dynamics.step_size: must be > 0"),
    ("theory for an end-to-end scheme", {"dynamics": {"scheme": "end_to_end_flow", "theory": True}}, [], "dynamics.theory: the end-to-end reference flow"),
    ("unknown figure format", {"output": {"formats": ["png", "svg"]}}, [], "output.formats[1]: unknown value 'svg'"),
    ("options for a deterministic scheme", {"dynamics": {"scheme": "gradient_descent", "options": {"tol": 1e-8}}}, [], "dynamics.options: scheme 'gradient_descent' takes no options"),
    ("unknown flow option", {"dynamics": {"options": {"tol": 1e-8}}}, [], "dynamics.options.tol: unknown option of scheme 'gradient_flow'; did you mean one of 'rtol', 'atol'?"),
    ("unknown flow method", {"dynamics": {"options": {"method": "rk45"}}}, [], "dynamics.options.method: unknown value 'rk45'"),
    ("tolerance without dopri5", {"dynamics": {"options": {"rtol": 1e-6}}}, [], "dynamics.options: rtol apply to method: dopri5 only"),
    ("manifold Langevin off the manifold", {"dynamics": {"scheme": "langevin_projected", "beta": 1}, "network": {"init": "gaussian"}}, [],
     "network.init: 'langevin_projected' moves on the balanced manifold"),
    ("malformed YAML", "network: {depth: 2\nenergy: [", [], "malformed YAML"),
    ("top level not a mapping", "- 1\n- 2\n", [], "the top level of a config file must be a mapping"),
    ("unknown scheme option", {"dynamics": {"scheme": "rle", "beta": 1.0, "options": {"stepcontrol": "none"}}}, [], "dynamics.options:"),
    ("cuda unavailable", {"device": {"device": "cuda"}}, [], "device.device: cuda was requested but no CUDA device is available"),
]


@pytest.mark.parametrize("what, config, argv, expected", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_config_gives_one_line_and_exit_2(tmp_path, capsys, what, config, argv, expected):
    if what == "cuda unavailable" and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    results = tmp_path / "results"
    np.savez(tmp_path / "bad.npz", W1=np.ones((3, 2)), W2=np.ones((2, 2)))  # W_2 takes 2 inputs, W_1 gives 3
    path = tmp_path / "bad.yaml"
    if isinstance(config, str):
        path.write_text(config)
    else:
        write_yaml(path, config)
    code = cli.main(["run", str(path), "--quiet", "--set", f"output.dir={results}"] + argv)
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1, err
    assert lines[0].startswith("dlnsim: error: ")
    assert expected in lines[0], lines[0]
    assert "Traceback" not in err
    # no result folder at all, hence none claiming success
    assert not results.exists() or not any(results.iterdir())


def test_user_errors_in_a_real_process(tmp_path):
    bad = write_yaml(tmp_path / "bad.yaml", {"dynamics": {"beta": -1}})
    for argv, expected in (
        (["run", bad], "dynamics.beta: must be > 0"),
        (["validate", str(tmp_path / "missing.yaml")], "no such config file"),
        (["plot", str(tmp_path)], "not a dlnsim result folder"),
    ):
        p = dlnsim_subprocess(*argv)
        assert p.returncode == 2, p.stderr
        assert p.stderr.count("\n") == 1 and p.stderr.startswith("dlnsim: error: ") and expected in p.stderr, p.stderr
        assert p.stdout == ""


def test_out_folder_is_never_overwritten(tmp_path, capsys):
    cfg = write_yaml(tmp_path / "tiny.yaml", dict(TINY, dynamics=dict(TINY["dynamics"], steps=5), output={"figures": False}))
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert cli.main(["run", cfg, "--out", str(out), "--quiet"]) == 2
    assert "never overwritten" in capsys.readouterr().err
    assert os.listdir(out) == ["keep.txt"]
    # default naming: <dir>/<name>-<timestamp>, a suffix when the second is the same
    for _ in range(2):
        assert cli.main(["run", cfg, "--quiet", "--set", f"output.dir={tmp_path / 'res'}"]) == 0
    names = sorted(os.listdir(tmp_path / "res"))
    assert len(names) == 2 and all(n.startswith("tiny-") for n in names)


def test_overridden_runs_leave_the_showcase_figure_alone(tmp_path):
    # A config's output.showcase names a curated figure; a run modified with --set is not that
    # showcase, so it must not overwrite the figure unless output.showcase is set explicitly.
    showcase = tmp_path / "results" / "showcase" / "tiny.png"  # showcase figures live in <output.dir>/showcase/
    cfg = write_yaml(tmp_path / "tiny.yaml", dict(TINY, dynamics=dict(TINY["dynamics"], steps=5),
                                                 output={"showcase": str(showcase), "formats": ["png"],
                                                         "dir": str(tmp_path / "results")}))
    assert cli.main(["run", cfg, "--quiet", "--set", f"output.dir={tmp_path / 'a'}", "--set", "dynamics.seed=5"]) == 0
    assert not showcase.exists()
    assert cli.main(["run", cfg, "--quiet", "--out", str(tmp_path / "b")]) == 0
    assert showcase.exists()


def test_theory_true_records_the_reference_flow(tmp_path):
    cfg = write_yaml(tmp_path / "tiny.yaml", dict(TINY, output={"figures": False}))
    out = tmp_path / "run"
    assert cli.main(["run", cfg, "--quiet", "--out", str(out), "--set", "dynamics.theory=true"]) == 0
    a = np.load(out / "arrays.npz")
    T, B, r = 16, 3, 2
    assert a["reference_singular_values"].shape == (T, B, r) and a["reference_distance"].shape == (T, B)
    # on the balanced manifold the parameter flow is the end-to-end flow: both RK4 at h = 0.02 from the
    # same X(0), they differ by the two integrators' O(h^4) errors (measured: at most 4.8e-7 relative,
    # early on, where X is small; 2e-9 at t = T)
    assert float(a["reference_distance"].max()) < 2e-6
    np.testing.assert_allclose(a["reference_singular_values"], a["singular_values"], rtol=2e-6)


def test_validate_prints_the_resolved_run(tmp_path, capsys):
    cfg = write_yaml(tmp_path / "tiny.yaml", TINY)
    assert cli.main(["validate", cfg]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok: ") and "gradient_flow" in out and "widths [2, 2, 2, 2]" in out
    assert cli.main(["validate", cfg, "--print", "--set", "dynamics.ensemble=7"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["dynamics"]["ensemble"] == 7


def test_sweep_subcommand(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["sweep", "--help"])
    assert e.value.code == 0
    assert "--executor" in capsys.readouterr().out


def test_study_writes_one_folder_per_variant_and_a_figure(tmp_path, capsys):
    cfg = dict(TINY, dynamics=dict(TINY["dynamics"], steps=20, ensemble=1),
               study={"figure": "saxe_modes", "variants": [{"label": "N1", "set": {"network.depth": 1}},
                                                          {"label": "N2", "set": {"network.depth": 2}}]})
    out = tmp_path / "study"
    assert cli.main(["run", write_yaml(tmp_path / "s.yaml", cfg), "--out", str(out), "--quiet"]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "completed" and meta["study"] is True
    assert [v["status"] for v in meta["variants"]] == ["completed", "completed"]
    for label, N in (("N1", 1), ("N2", 2)):
        a = np.load(out / "runs" / label / "arrays.npz")
        assert a["singular_values"].shape == (5, 1, 2) and a["saxe_singular_values"].shape == (5, 2)
        assert yaml.safe_load((out / "runs" / label / "config.yaml").read_text())["network"]["depth"] == N
    assert (out / "figures" / "saxe_modes.png").exists()


def test_beta_list_runs_side_by_side(tmp_path):
    cfg = {"network": {"depth": 2, "width": 2, "scale": 0.5},
           "energy": {"type": "weight_decay"},
           "dynamics": {"scheme": "free_energy_flow", "beta": [1.0, 4.0], "ensemble": 2, "steps": 10, "step_size": 0.01},
           "output": {"figures": False}}
    out = tmp_path / "r"
    assert cli.main(["run", write_yaml(tmp_path / "b.yaml", cfg), "--out", str(out), "--quiet"]) == 0
    a = np.load(out / "arrays.npz")
    assert a["beta"].tolist() == [1.0, 1.0, 4.0, 4.0]
    np.testing.assert_allclose(a["free_energy"], a["loss"] - a["entropy_formula"] / a["beta"], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("scheme", ["langevin_projected", "langevin_metropolis", "langevin_unprojected", "rle"])
def test_stochastic_schemes_run_from_a_config(tmp_path, scheme):
    cfg = {"network": {"depth": 2, "width": 2, "scale": 0.8},
           "energy": {"type": "weight_decay"},
           "dynamics": {"scheme": scheme, "beta": 2.0, "ensemble": 4, "steps": 10, "step_size": 0.01},
           "observers": {"every": 5}, "output": {"figures": False}}
    out = tmp_path / "r"
    assert cli.main(["run", write_yaml(tmp_path / "l.yaml", cfg), "--out", str(out), "--quiet"]) == 0
    a = np.load(out / "arrays.npz")
    assert a["singular_values"].shape == (3, 4, 2) and a["free_energy"].shape == (3, 4)
    assert np.isfinite(a["loss"]).all()


def test_other_energies_widths_and_inits(tmp_path):
    """Rectangular widths, linear regression, matrix completion with an explicit mask, weights from a file."""
    torch.save([torch.eye(2), 2 * torch.eye(2)], tmp_path / "w.pt")
    cases = {
        "rectangular_linear_regression": {
            "network": {"widths": [3, 4, 2], "init": "gaussian", "scale": 0.5},
            "energy": {"type": "linear_regression", "n_samples": 20, "noise": 0.1},
            "dynamics": {"scheme": "gradient_descent", "steps": 6, "ensemble": 2}},
        "completion_explicit_mask": {
            "network": {"depth": 2, "width": 2, "init": "orthogonal"},
            "energy": {"type": "matrix_completion", "target": [[1, 2], [3, 4]], "mask": [[1, 0], [1, 1]]},
            "dynamics": {"scheme": "gradient_flow", "steps": 6}},
        "weights_from_file": {
            "network": {"init": "file", "file": "w.pt"},
            "energy": {"type": "matrix_regression", "target": "identity"},
            "dynamics": {"scheme": "gradient_flow", "steps": 6, "ensemble": 3}},
    }
    for name, cfg in cases.items():
        cfg["output"] = {"figures": False}
        cfg["observers"] = {"every": 3}
        out = tmp_path / name
        assert cli.main(["run", write_yaml(tmp_path / f"{name}.yaml", cfg), "--out", str(out), "--quiet"]) == 0, name
        a = np.load(out / "arrays.npz")
        assert a["loss"].shape[0] == 3 and np.isfinite(a["loss"]).all(), name
    a = np.load(tmp_path / "rectangular_linear_regression" / "arrays.npz")
    assert a["singular_values"].shape == (3, 2, 2) and "entropy_formula" not in a  # S needs square X
    a = np.load(tmp_path / "weights_from_file" / "arrays.npz")
    # X(0) = 2 I for every trajectory: loss 1/2 ||2I - I||^2 = 1
    np.testing.assert_allclose(a["loss"][0], [1.0, 1.0, 1.0], rtol=0, atol=1e-15)
