"""Hostile input, faults and a fresh machine (issue 9): nothing lost, nothing executed, nothing escapes.

One section per acceptance point of the issue:
 1. the README's two commands on a fresh machine (.ci/run runs them verbatim; extras skip with a
    reason; scripts/reproduce_all finds the interpreter; the checkout folder taken for the package);
 2. no code execution from files a user opens (checkpoints, weight files, strict YAML);
 3. nothing escapes the output folder;
 4. every user error is one line, exit 2, and leaves nothing behind;
 5. the run lifecycle under signals, kills, full disks and second processes;
 6. sweeps under faults;
 7. numerics that fail must not look like success.

Most cases call dlnsim.cli.main in-process (as tests/test_cli.py does); a case runs a subprocess only
where the process boundary is the point (exit status, signals, a second process, resource limits).
Cases that would allocate a lot if the guard were missing run in a subprocess under an address-space
limit, so that a regression fails the test instead of exhausting the machine.
"""
import json
import os
import pickle
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
import yaml

from dlnsim import cli
from dlnsim.safe_io import FileRefused, load_tree, load_yaml_text, save_tree

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = {
    "network": {"depth": 2, "width": 2, "init": "balanced", "scale": 0.5},
    "energy": {"type": "matrix_regression", "target": "diag", "spectrum": [2.0, 1.0]},
    "dynamics": {"scheme": "gradient_descent", "step_size": 0.05, "steps": 12, "ensemble": 2, "seed": 3},
    "observers": {"every": 3},
    "output": {"figures": False, "checkpoint_every": 1},
}


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DLNSIM_TEST_")}
    env["PYTHONPATH"] = ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _config(tmp_path, name="c.yaml", **sections):
    """TINY with sections updated (section -> dict merged), output.dir under tmp_path; returns the path."""
    cfg = json.loads(json.dumps(TINY))
    cfg["output"]["dir"] = str(tmp_path / "results")
    for sec, body in sections.items():
        cfg.setdefault(sec, {}).update(body)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return str(path)


def _main(argv, capsys):
    """(exit code, stderr lines) of dlnsim.cli.main(argv) in this process."""
    code = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    return code, [ln for ln in err.splitlines() if ln.strip()]


def _one_line_exit_2(code, lines, *needles):
    assert code == 2, lines
    assert len(lines) == 1, lines
    assert lines[0].startswith("dlnsim: error: "), lines
    assert "Traceback" not in lines[0]
    for n in needles:
        assert n in lines[0], lines[0]


def _nothing_left(tmp_path):
    res = tmp_path / "results"
    assert not res.exists() or not any(res.iterdir()), sorted(p.name for p in res.iterdir())


def _interrupted_run(tmp_path, monkeypatch, capsys, scheme_cfg=None, at=5):
    """A run folder stopped by SIGINT after step `at` (the runner's test hook): it holds a checkpoint."""
    path = _config(tmp_path, **(scheme_cfg or {}))
    out = tmp_path / "part"
    monkeypatch.setenv("DLNSIM_TEST_INTERRUPT_AT_STEP", str(at))
    assert cli.main(["run", path, "--out", str(out), "--quiet"]) == 130
    monkeypatch.delenv("DLNSIM_TEST_INTERRUPT_AT_STEP")
    capsys.readouterr()
    assert (out / "checkpoint.pt").exists()
    return out


def _subprocess(args, cwd, timeout=120, memory_gb=None, **env):
    """`python -m dlnsim ARGS` in a subprocess, optionally under an address-space limit."""
    def limit():
        if memory_gb:
            b = int(memory_gb * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (b, b))

    return subprocess.run([sys.executable, "-m", "dlnsim", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=_env(**env), preexec_fn=limit)


def _stderr_lines(p):
    return [ln for ln in p.stderr.splitlines() if ln.strip()]


# =============================================================================================
# 1. the README's two commands pass on a fresh machine
# =============================================================================================


def _readme_quickstart_lines():
    text = _read(os.path.join(ROOT, "README.md"))
    block = text.split("## Quickstart", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    return [ln for ln in block.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def test_ci_runs_the_readme_quickstart_lines_verbatim():
    lines = _readme_quickstart_lines()
    assert len(lines) == 2, lines  # the Quickstart stays two lines
    assert lines[1].endswith("-m pytest")
    p = subprocess.run([os.path.join(ROOT, ".ci", "quickstart_commands")], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == lines
    ci = _read(os.path.join(ROOT, ".ci", "run"))
    # .ci/run executes what the extractor prints, and installs nothing before it (a fresh machine)
    body = ci[ci.index(".ci/quickstart_commands"):]
    assert 'bash -c "$c"' in body
    assert "pip install" not in ci[:ci.index('bash -c "$c"')]
    assert '".[dev,slurm,bench]"' in ci  # then the extras, and the tests that need them


def test_ci_finds_the_tests_skipped_for_a_missing_extra(tmp_path):
    report = tmp_path / "r.xml"
    report.write_text(textwrap.dedent("""\
        <testsuites><testsuite>
          <testcase classname="tests.test_sweep" name="test_dry_run[x]"><skipped message="could not import 'submitit': No module named 'submitit'"/></testcase>
          <testcase classname="tests.test_cli" name="test_other"><skipped message="no GPU"/></testcase>
          <testcase classname="" name="tests.test_gibbs_stats"><skipped message="collection skipped">(..., "Skipped: mpmath is a test dependency: pip install -e '.[dev]'")</skipped></testcase>
          <testcase classname="tests.test_cli" name="test_passes"/>
        </testsuite></testsuites>"""))
    p = subprocess.run([sys.executable, os.path.join(ROOT, ".ci", "skipped_for_extras.py"), str(report)],
                       capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["tests/test_sweep.py::test_dry_run[x]", "tests/test_gibbs_stats.py"]


def test_tests_needing_an_extra_skip_with_the_reason_when_it_is_absent(tmp_path):
    # Hide submitit, torchsde and mpmath (sys.modules[name] = None makes `import name` fail) and run the
    # tests that need them: each must be skipped, naming the missing module, none may fail or error.
    (tmp_path / "hide_extras.py").write_text("import sys\nfor m in ('submitit', 'torchsde', 'mpmath'):\n    sys.modules[m] = None\n")
    nodes = ["tests/test_sweep.py::test_dry_run_lists_the_points_of_a_slurm_sweep",
             "tests/test_sweep.py::test_submitit_local_executor_runs_the_points",
             "tests/test_gibbs_stats.py", "tests/test_entropy.py", "tests/test_infinite_depth.py",
             "tests/test_spectral_geometry.py", "tests/test_theory.py"]
    env = _env()
    env["PYTHONPATH"] = str(tmp_path) + os.pathsep + env["PYTHONPATH"]
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "hide_extras", "-p", "no:cacheprovider", *nodes],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:]
    assert " passed" not in p.stdout.splitlines()[-1] and "failed" not in p.stdout and "error" not in p.stdout.splitlines()[-1]
    skipped = [ln for ln in p.stdout.splitlines() if ln.startswith("SKIPPED")]
    assert len(skipped) >= 7, p.stdout[-3000:]
    assert all("could not import" in ln or "pip install" in ln for ln in skipped), skipped


def test_readme_says_which_torch_build_pip_installs():
    text = _read(os.path.join(ROOT, "README.md"))
    assert "pinned to the CPU build" not in text
    assert "--index-url https://download.pytorch.org/whl/cpu" in text
    assert "CUDA build" in text


def test_reproduce_all_finds_the_projects_interpreter(tmp_path):
    # A copy of the script in a project without dlnsim: it must pick .venv/bin/python (no venv active).
    (tmp_path / "scripts").mkdir()
    shutil.copy(os.path.join(ROOT, "scripts", "reproduce_all"), tmp_path / "scripts")
    venv_py = tmp_path / ".venv" / "bin" / "python"
    venv_py.parent.mkdir(parents=True)
    venv_py.write_text(f"#!/bin/sh\necho used >> {tmp_path}/used\nPYTHONPATH={ROOT} exec {sys.executable} \"$@\"\n")
    venv_py.chmod(0o755)
    env = {k: v for k, v in _env().items() if k not in ("PYTHON", "VIRTUAL_ENV", "PYTHONPATH")}
    p = subprocess.run([str(tmp_path / "scripts" / "reproduce_all"), "no_such_showcase"], capture_output=True,
                       text=True, cwd=tmp_path, env=env, timeout=120)
    assert (tmp_path / "used").exists(), p.stderr
    assert p.returncode == 1 and "no_such_showcase" in p.stdout and "FAILED (exit 2)" in p.stdout, p.stdout + p.stderr
    # an interpreter without torch: one line saying what to do, exit 2
    p = subprocess.run([str(tmp_path / "scripts" / "reproduce_all")], capture_output=True, text=True, cwd=tmp_path,
                       env=dict(env, PYTHON="/bin/false"), timeout=60)
    assert p.returncode == 2 and len(_stderr_lines(p)) == 1 and "Quickstart" in p.stderr, p.stderr


# An editable install's import hook comes after Python's path finder on sys.meta_path: a folder named
# dlnsim in the current directory then wins as a namespace package, and submodules still resolve
# through the hook. This emulation of that hook reproduces it without installing anything.
_EDITABLE_HOOK = """
import importlib.machinery, os, sys
ROOT = {root!r}
class _EditableFinder:
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name == "dlnsim" or name.startswith("dlnsim."):
            parent = os.path.join(ROOT, *name.split(".")[:-1])
            return importlib.machinery.PathFinder.find_spec(name, [parent])
        return None
sys.meta_path.append(_EditableFinder)
"""


def _shadowing_checkout(tmp_path):
    """tmp/work/dlnsim: a folder named like the package, holding a results/ folder (as a checkout does)."""
    work = tmp_path / "work"
    (work / "dlnsim" / "results").mkdir(parents=True)
    (work / "dlnsim" / "README.md").write_text("a checkout\n")
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_EDITABLE_HOOK.format(root=ROOT))
    env = {k: v for k, v in _env().items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = str(site)  # the hook only: dlnsim itself is not on the path
    return work, env


def test_checkout_folder_taken_for_the_package_is_one_line(tmp_path):
    work, env = _shadowing_checkout(tmp_path)
    cfg = _config(tmp_path)
    p = subprocess.run([sys.executable, "-m", "dlnsim", "run", cfg, "--quiet"], capture_output=True, text=True,
                       cwd=work, env=env, timeout=120)
    lines = _stderr_lines(p)
    assert p.returncode == 2 and len(lines) == 1, p.stderr[-2000:]
    assert "namespace package" in lines[0] and str(work / "dlnsim") in lines[0]
    _nothing_left(tmp_path)


def test_sweep_workers_import_this_package_not_the_checkout_folder(tmp_path):
    # The console script has no current directory on its path, but multiprocessing's fork server and
    # spawned workers start with `python -c`, which puts it first: workers must still import dlnsim.
    work, env = _shadowing_checkout(tmp_path)
    script = tmp_path / "bin" / "dlnsim"
    script.parent.mkdir()
    script.write_text("import sys\nfrom dlnsim.cli import main\nif __name__ == '__main__':\n    sys.exit(main())\n")  # as pip writes it
    sweep = tmp_path / "s.yaml"
    base = dict(TINY, output={"figures": False})
    sweep.write_text(yaml.safe_dump({"base": base, "axes": {"dynamics.seed": [1, 2]}}))
    out = tmp_path / "sw"
    p = subprocess.run([sys.executable, str(script), "sweep", str(sweep), "--out", str(out), "--workers", "2",
                        "--no-plot", "--quiet"], capture_output=True, text=True, cwd=work, env=env, timeout=240)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    rows = list(csv_rows(out / "manifest.csv"))
    assert [r["status"] for r in rows] == ["completed", "completed"]


def csv_rows(path):
    import csv

    with open(path, newline="") as f:
        yield from csv.DictReader(f)


def test_child_environment_keeps_children_on_this_package(tmp_path, monkeypatch):
    from dlnsim import _guard

    (tmp_path / "dlnsim").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [""] + list(sys.path))
    before_env = {k: os.environ.get(k) for k in ("PYTHONSAFEPATH", "PYTHONPATH")}
    with _guard.child_environment():
        assert os.environ["PYTHONSAFEPATH"] == "1"
        assert os.environ["PYTHONPATH"].split(os.pathsep)[0] == ROOT
        assert "" not in sys.path and sys.path[0] == ROOT
        p = subprocess.run([sys.executable, "-c", "import dlnsim; print(dlnsim.__file__)"], capture_output=True, text=True)
        assert p.stdout.strip() == os.path.join(ROOT, "dlnsim", "__init__.py"), p.stderr
    assert {k: os.environ.get(k) for k in before_env} == before_env and sys.path[0] == ""


# =============================================================================================
# 2. no code execution from files a user opens
# =============================================================================================


class _Payload:
    """Unpickling this creates the file `marker` (what an attacker's payload would do, harmlessly)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_crafted_checkpoint_is_refused_and_runs_nothing(tmp_path, monkeypatch, capsys, writer):
    out = _interrupted_run(tmp_path, monkeypatch, capsys)
    marker = tmp_path / "pwned"
    payload = {"state": _Payload(marker), "records": {}}
    with open(out / "checkpoint.pt", "wb") as f:
        torch.save(payload, f) if writer == "torch.save" else pickle.dump(payload, f)
    code, lines = _main(["run", "--resume", out, "--quiet"], capsys)
    _one_line_exit_2(code, lines, "checkpoint.pt", "pickle")
    assert not marker.exists()
    # a pickle disguised as the npz layout (an npy entry holding an object array) is refused too
    np.savez(out / "evil.npz", __tree__=np.array([_Payload(marker)], dtype=object))
    os.replace(out / "evil.npz", out / "checkpoint.pt")
    code, lines = _main(["run", "--resume", out, "--quiet"], capsys)
    _one_line_exit_2(code, lines, "checkpoint.pt")
    assert not marker.exists()


def test_checkpoint_tree_names_only_dlnsim_classes(tmp_path):
    path = tmp_path / "c.npz"
    save_tree(str(path), {"x": torch.zeros(2)})
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    doc = json.loads(arrays["__tree__"].tobytes())
    for cls in ("os:system", "builtins:eval", "subprocess:Popen", "dlnsim.results:os"):
        doc["tree"] = {"$": "object", "class": cls, "fields": {}}
        arrays["__tree__"] = np.frombuffer(json.dumps(doc).encode(), dtype=np.uint8)
        np.savez(path, **arrays)
        with pytest.raises(FileRefused, match="not a dlnsim class|not a plain data class|does not have"):
            load_tree(str(path))


def test_checkpoint_round_trip_keeps_types_identity_and_bits(tmp_path):
    from dlnsim.geometry import SVDFactors
    from dlnsim.manifold import NewtonResult

    g = torch.Generator().manual_seed(0)
    W = torch.randn(3, 2, 2, dtype=torch.float64, generator=g)
    frame = SVDFactors.of(W, 2)
    gen_state = g.get_state()
    tree = {
        "weights": [W, W[1]], "same": W, "frame": frame, "gen": gen_state,
        "half": torch.randn(3, generator=g).to(torch.bfloat16), "c": torch.randn(2, dtype=torch.complex128, generator=g),
        "nt": NewtonResult(W, torch.ones(3, dtype=torch.bool), torch.zeros(3), torch.zeros(3)) if len(NewtonResult._fields) == 4 else None,
        (torch.float64, torch.device("cpu")): (1, 2.5, float("inf"), float("nan"), None, "s", True, 2**70),
        "empty": torch.zeros(0, 3), "scalar": torch.tensor(7),
    }
    path = tmp_path / "c.npz"
    save_tree(str(path), tree)
    back = load_tree(str(path))
    assert back["same"] is back["weights"][0]  # identity kept (scheme caches compare tensors with `is`)
    assert torch.equal(back["same"], W) and back["same"].dtype == torch.float64
    assert torch.equal(back["weights"][1], W[1])
    assert isinstance(back["frame"], SVDFactors) and torch.equal(back["frame"].log_K, frame.log_K) and back["frame"].depth == 2
    assert torch.equal(back["gen"], gen_state)
    assert back["half"].dtype == torch.bfloat16 and torch.equal(back["half"], tree["half"])
    assert torch.equal(back["c"], tree["c"])
    t = back[(torch.float64, torch.device("cpu"))]
    assert t[:3] == (1, 2.5, float("inf")) and t[3] != t[3] and t[4:] == (None, "s", True, 2**70)
    assert back["empty"].shape == (0, 3) and back["scalar"].item() == 7


def test_resumed_metropolis_keeps_its_scheme_cache(tmp_path, monkeypatch, capsys):
    # the Metropolis scheme carries its factorised frame between steps; the checkpoint must keep it
    # (without pickle), or the resumed run is correct but not bit-identical
    from dlnsim.results import load_checkpoint

    out = _interrupted_run(tmp_path, monkeypatch, capsys, scheme_cfg={
        "energy": {"type": "weight_decay"}, "dynamics": {"scheme": "langevin_metropolis", "beta": 3.0, "step_size": 0.01}})
    ck = load_checkpoint(str(out))
    cache = ck["scheme_private"]["_cache"]
    assert type(cache).__name__ == "_Point"
    assert all(a is b for a, b in zip(cache.weights, ck["state"]["weights"]))


def test_crafted_weight_file_is_refused_and_runs_nothing(tmp_path, capsys):
    marker = tmp_path / "pwned"
    bad = tmp_path / "w.pt"
    torch.save([_Payload(marker)], bad)
    path = _config(tmp_path, network={"init": "file", "file": str(bad), "depth": None, "width": None, "scale": 1.0})
    code, lines = _main(["run", path, "--quiet"], capsys)
    _one_line_exit_2(code, lines, "network.file")
    assert not marker.exists()
    _nothing_left(tmp_path)
    # not a torch file at all
    bad.write_bytes(b"\x00\x01garbage" * 10)
    code, lines = _main(["run", path, "--quiet"], capsys)
    _one_line_exit_2(code, lines, "network.file")
    _nothing_left(tmp_path)


YAML_LAUGHS = 'a: &a ["l","l","l","l","l","l","l","l","l"]\n' + "".join(
    f"{c}: &{c} [" + ",".join([f"*{p}"] * 9) + "]\n" for p, c in zip("abcdefgh", "bcdefghi"))


@pytest.mark.parametrize("what,text,needle", [
    ("duplicate section", "network: {depth: 2}\ndynamics: {steps: 3}\nnetwork: {depth: 3}\n", "duplicate key 'network'"),
    ("duplicate key", "dynamics: {steps: 3, steps: 4}\n", "duplicate key 'steps'"),
    ("billion laughs", YAML_LAUGHS, "expands to more than"),
    ("too many aliases", "a: &a 1\nb: [" + ", ".join(["*a"] * 101) + "]\n", "more than 100 aliases"),
    ("nested 5000 deep", "a: " + "[" * 5000 + "]" * 5000 + "\n", "nested deeper than 100"),
    ("recursive alias", "a: &a [*a]\n", "recursive alias"),
    ("python tag", "a: !!python/object/apply:os.system ['echo hi']\n", "could not determine a constructor"),
])
def test_strict_yaml_is_one_line(tmp_path, capsys, what, text, needle):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    code, lines = _main(["run", path, "--quiet"], capsys)
    _one_line_exit_2(code, lines, needle)
    assert len(lines[0]) < 400  # the value is never printed expanded
    code, lines = _main(["validate", path], capsys)
    _one_line_exit_2(code, lines, needle)


def test_yaml_merge_keys_may_override_and_binary_files_are_refused(tmp_path, capsys):
    assert load_yaml_text("base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  x: 3\n") == {"base": {"x": 1, "y": 2}, "other": {"x": 3, "y": 2}}
    path = tmp_path / "c.yaml"
    path.write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)))
    _one_line_exit_2(*_main(["run", path, "--quiet"], capsys), "binary file")
    path.write_bytes("network: {depth: 2}\n# caf\xe9\n".encode("latin-1"))
    _one_line_exit_2(*_main(["run", path, "--quiet"], capsys), "UTF-8")
    _nothing_left(tmp_path)


def test_set_override_values_are_strict_yaml_too(tmp_path, capsys):
    path = _config(tmp_path)
    code, lines = _main(["run", path, "--set", "dynamics.seed={a: 1, a: 2}", "--quiet"], capsys)
    _one_line_exit_2(code, lines, "duplicate key")


# =============================================================================================
# 3. nothing escapes the output folder
# =============================================================================================


@pytest.mark.parametrize("name", ["../../x", "/tmp/abs_name", "a/b", "..", ".", "x" * 300, "a\x00b", "-rf", "name with\nnewline"])
def test_output_name_is_one_safe_path_component(tmp_path, capsys, name):
    path = _config(tmp_path, output={"name": name})
    code, lines = _main(["run", path, "--quiet"], capsys)
    _one_line_exit_2(code, lines, "output.name")
    _nothing_left(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["c.yaml"]


def test_study_label_and_sweep_name_cannot_escape(tmp_path, capsys):
    path = _config(tmp_path, study={"variants": [{"label": "..", "set": {"dynamics.seed": 1}}]})
    _one_line_exit_2(*_main(["run", path, "--quiet"], capsys), "label")
    _nothing_left(tmp_path)
    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump({"name": "..", "base": TINY, "axes": {"dynamics.seed": [1]}}))
    _one_line_exit_2(*_main(["sweep", sweep, "--quiet"], capsys), "name")


def test_showcase_writes_only_a_png_under_results_showcase(tmp_path, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    for dest in (str(victim), "../../victim.png", "results/showcase/x.txt"):
        path = _config(tmp_path, output={"showcase": dest, "figures": True, "formats": ["png"]})
        code, lines = _main(["run", path, "--quiet"], capsys)
        _one_line_exit_2(code, lines, "output.showcase")
        _nothing_left(tmp_path)
    assert victim.read_text() == "precious"


# =============================================================================================
# 4. every user error is one line, exit 2, and leaves nothing behind
# =============================================================================================


def _case(sections, needle, id=None):
    return pytest.param(sections, needle, id=id)


HOSTILE = [
    _case({"dynamics": {"time": 1e308, "steps": None}}, "dynamics.time", id="time-1e308"),
    _case({"dynamics": {"step_size": 1e-310, "time": 1, "steps": None}}, "dynamics.step_size", id="h-1e-310"),
    _case({"dynamics": {"seed": 2**70}}, "dynamics.seed", id="seed-2^70"),
    _case({"energy": {"seed": -1}}, "energy.seed", id="energy-seed-negative"),
    _case({"network": {"scale": 1e200}}, "network.scale", id="scale-1e200"),
    _case({"energy": {"type": "matrix_completion", "target": "identity", "spectrum": None, "mask": [[1, 0.5], [0, 1]]}}, "energy.mask", id="mask-not-0-1"),
    _case({"dynamics": {"scheme": "langevin_projected", "beta": 1.0, "options": {"tol": float("inf")}}}, "tol", id="newton-tol-inf"),
    _case({"dynamics": {"scheme": "langevin_projected", "beta": 1.0, "options": {"max_iter": True}}}, "max_iter", id="max-iter-bool"),
    _case({"dynamics": {"scheme": "gradient_flow", "options": {"method": "dopri5", "max_substeps": 1}}}, "max_substeps", id="dopri5-max-substeps-1"),
    _case({"dynamics": {"scheme": "gradient_flow", "options": {"method": "dopri5", "rtol": 1e-300}}}, "rtol", id="dopri5-rtol-1e-300"),
    _case({"network": {"widths": [3, 2, 2], "depth": None, "width": None, "init": "gaussian"},
           "energy": {"target": "random", "spectrum": None}, "observers": {"entropy_measured": "true"}}, "entropy", id="entropy-rectangular-asked"),
]


@pytest.mark.parametrize("sections,needle", HOSTILE)
def test_hostile_config_is_one_line_exit_2_and_leaves_nothing(tmp_path, capsys, sections, needle):
    path = _config(tmp_path, **sections)
    code, lines = _main(["run", path, "--quiet"], capsys)
    _one_line_exit_2(code, lines, needle)
    _nothing_left(tmp_path)


RESOURCES = [
    _case({"network": {"width": 10**6}, "energy": {"target": "identity", "spectrum": None}}, "network.width", id="width-1e6"),
    _case({"dynamics": {"ensemble": 10**9}}, "dynamics.ensemble", id="ensemble-1e9"),
    _case({"dynamics": {"ensemble": 10**20}}, "dynamics.ensemble", id="ensemble-1e20"),
    _case({"network": {"depth": 10**9}}, "network.depth", id="depth-1e9"),
    _case({"energy": {"type": "linear_regression", "n_samples": 10**10, "target": "random", "spectrum": None}}, "energy.n_samples", id="n-samples-1e10"),
    _case({"energy": {"type": "weight_decay"}, "dynamics": {"scheme": "rle", "beta": [1.0 + i for i in range(100)], "ensemble": 10**7}},
          "dynamics.ensemble", id="beta-100-x-ensemble-1e7"),
    _case({"device": {"threads": 1000000}}, "device.threads", id="threads-1e6"),
]


_RESOURCE_RUNNER = """
import contextlib, io, json, os, sys
from dlnsim import cli
out = []
for path in sys.argv[1:]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.main(["run", path, "--quiet"])
    out.append({"code": code, "stderr": err.getvalue()})
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def resource_outcomes(tmp_path_factory):
    """Every RESOURCES case through dlnsim.cli.main in ONE subprocess limited to 3 GiB of address
    space (one interpreter and torch start-up for all): a missing guard fails here, not the machine."""
    root = tmp_path_factory.mktemp("resources")
    paths = []
    for i, case in enumerate(RESOURCES):
        d = root / f"c{i}"
        d.mkdir()
        paths.append(_config(d, **case.values[0]))

    def limit():
        b = 3 * 2**30
        resource.setrlimit(resource.RLIMIT_AS, (b, b))

    p = subprocess.run([sys.executable, "-c", _RESOURCE_RUNNER, *paths], capture_output=True, text=True, timeout=180,
                       cwd=root, env=_env(), preexec_fn=limit)
    assert p.returncode == 0, p.stderr[-3000:]
    return root, json.loads(p.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("i", range(len(RESOURCES)), ids=[c.id for c in RESOURCES])
def test_resource_estimate_refuses_before_allocating(resource_outcomes, i):
    root, outcomes = resource_outcomes
    got, needle = outcomes[i], RESOURCES[i].values[1]
    lines = [ln for ln in got["stderr"].splitlines() if ln.strip()]
    assert got["code"] == 2 and len(lines) == 1 and lines[0].startswith("dlnsim: error: "), got
    assert needle in lines[0] and "Traceback" not in got["stderr"]
    _nothing_left(root / f"c{i}")


def test_memory_limit_can_be_raised_by_the_user(tmp_path, capsys):
    # the estimate names the key that raises the limit; a tiny limit refuses even TINY
    path = _config(tmp_path, device={"max_memory_gb": 1e-6})
    code, lines = _main(["run", path, "--quiet"], capsys)
    _one_line_exit_2(code, lines, "device.max_memory_gb", "needs about")
    _nothing_left(tmp_path)


def _write_npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


@pytest.mark.parametrize("what", [
    "nan-weights", "not-a-torch-file", "nan-data",
    "zero-samples", "no-such-file"])
def test_bad_input_files_are_refused_before_the_folder_exists(tmp_path, capsys, what):
    if what == "nan-weights":
        w = _write_npz(tmp_path / "w.npz", W1=np.full((2, 2), np.nan), W2=np.eye(2))
        sections, needle = {"network": {"init": "file", "file": w, "depth": None, "width": None}}, "network.file"
    elif what == "not-a-torch-file":
        (tmp_path / "w.pt").write_text("just text\n")
        sections, needle = {"network": {"init": "file", "file": str(tmp_path / "w.pt"), "depth": None, "width": None}}, "network.file"
    elif what == "no-such-file":
        sections, needle = {"network": {"init": "file", "file": str(tmp_path / "nope.npz"), "depth": None, "width": None}}, "network.file"
    else:
        n = 0 if what == "zero-samples" else 5
        inputs = np.full((2, n), np.nan) if what == "nan-data" else np.zeros((2, n))
        d = _write_npz(tmp_path / "d.npz", inputs=inputs, outputs=np.zeros((2, n)))
        sections, needle = {"energy": {"type": "linear_regression", "data": d, "target": "random", "spectrum": None}}, "energy.data"
    path = _config(tmp_path, **sections)
    code, lines = _main(["run", path, "--quiet"], capsys)
    _one_line_exit_2(code, lines, needle)
    _nothing_left(tmp_path)


@pytest.mark.parametrize("where", ["out-under-a-file", "dir-is-a-file"])
def test_output_paths_through_files_are_one_line(tmp_path, capsys, where):
    (tmp_path / "f.txt").write_text("x")
    if where == "out-under-a-file":
        path = _config(tmp_path)
        code, lines = _main(["run", path, "--out", tmp_path / "f.txt" / "sub", "--quiet"], capsys)
    else:
        path = _config(tmp_path, output={"dir": str(tmp_path / "f.txt")})
        code, lines = _main(["run", path, "--quiet"], capsys)
    _one_line_exit_2(code, lines)
    assert (tmp_path / "f.txt").read_text() == "x"


def test_entropy_dropped_for_rectangular_widths_is_said(tmp_path, capsys):
    path = _config(tmp_path, network={"widths": [3, 2, 2], "depth": None, "width": None, "init": "gaussian"},
                   energy={"target": "random", "spectrum": None})
    code = cli.main(["run", path, "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 0
    assert sum("entropy" in ln and "rectangular" in ln for ln in err.splitlines()) == 1, err


# =============================================================================================
# 5. the run lifecycle: signals, kills, full disks, second processes
# =============================================================================================


def test_signal_before_the_handlers_leaves_no_unusable_folder(tmp_path):
    # the runner's test hook sends SIGTERM right after the folder is created
    path = _config(tmp_path)
    p = _subprocess(["run", path, "--quiet"], cwd=tmp_path, DLNSIM_TEST_SIGNAL_AFTER_MKDIR="TERM")
    assert p.returncode == 143, p.stderr
    runs = list((tmp_path / "results").iterdir()) if (tmp_path / "results").exists() else []
    for d in runs:  # whatever is left is a resumable folder
        assert (d / "meta.json").exists() and (d / "config.yaml").exists()
        assert not [f for f in os.listdir(d) if ".tmp" in f]
        assert _subprocess(["run", "--resume", d, "--quiet"], cwd=tmp_path).returncode == 0


def test_stale_temp_files_are_cleaned_on_resume_and_completion(tmp_path, monkeypatch, capsys):
    out = _interrupted_run(tmp_path, monkeypatch, capsys)
    (out / "checkpoint.pt.tmp999999").write_bytes(b"partial")
    (out / "meta.json.tmp999999").write_text("{")
    assert cli.main(["run", "--resume", str(out), "--quiet"]) == 0
    assert not [f for f in os.listdir(out) if ".tmp" in f]


@pytest.mark.parametrize("edit", ["network.depth", "dynamics.ensemble"])
def test_resume_refuses_a_changed_config_before_any_step(tmp_path, monkeypatch, capsys, edit):
    out = _interrupted_run(tmp_path, monkeypatch, capsys)
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    sec, key = edit.split(".")
    cfg[sec][key] = cfg[sec][key] + 1
    if edit == "network.depth":
        cfg["network"]["widths"] = cfg["network"]["widths"] + [cfg["network"]["widths"][-1]]
    (out / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    before = (out / "checkpoint.pt").read_bytes()
    code, lines = _main(["run", "--resume", out, "--quiet"], capsys)
    _one_line_exit_2(code, lines, "config")
    assert (out / "checkpoint.pt").read_bytes() == before  # nothing lost
    assert json.loads((out / "meta.json").read_text())["status"] == "interrupted"


def test_checkpoint_from_another_run_is_refused(tmp_path, monkeypatch, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = _interrupted_run(tmp_path / "a", monkeypatch, capsys)
    b = _interrupted_run(tmp_path / "b", monkeypatch, capsys, scheme_cfg={"dynamics": {"seed": 99}})
    shutil.copy(b / "checkpoint.pt", a / "checkpoint.pt")
    code, lines = _main(["run", "--resume", a, "--quiet"], capsys)
    _one_line_exit_2(code, lines, "checkpoint")


def test_second_writer_of_a_run_folder_is_refused(tmp_path, monkeypatch, capsys):
    out = _interrupted_run(tmp_path, monkeypatch, capsys)
    first = subprocess.Popen([sys.executable, "-m", "dlnsim", "run", "--resume", str(out), "--quiet"], cwd=tmp_path,
                             env=_env(DLNSIM_TEST_STEP_SLEEP=1.0), stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while not (out / ".lock").exists() and time.time() < deadline:
            time.sleep(0.1)
        assert (out / ".lock").exists()
        second = _subprocess(["run", "--resume", out, "--quiet"], cwd=tmp_path)
        lines = _stderr_lines(second)
        assert second.returncode == 2 and len(lines) == 1 and "in use" in lines[0], second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=60)
    # a stale lock (a pid that is gone) is taken over
    (out / ".lock").write_text(json.dumps({"pid": 2**22 + 12345, "host": os.uname().nodename}))
    assert cli.main(["run", "--resume", str(out), "--quiet"]) == 0


def test_full_disk_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    # the runner's test hook makes every write after the first periodic checkpoint fail with ENOSPC
    path = _config(tmp_path)
    out = tmp_path / "r"
    monkeypatch.setenv("DLNSIM_TEST_ENOSPC_AFTER_CHECKPOINTS", "1")
    code, lines = _main(["run", path, "--out", out, "--quiet"], capsys)
    monkeypatch.delenv("DLNSIM_TEST_ENOSPC_AFTER_CHECKPOINTS")
    assert code != 0 and len(lines) == 1 and "No space left" in lines[0], lines
    assert (out / "checkpoint.pt").exists() and not [f for f in os.listdir(out) if ".tmp" in f]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] in ("failed", "interrupted") and "No space left" in meta.get("message", "")
    assert cli.main(["run", "--resume", str(out), "--quiet"]) == 0


@pytest.mark.parametrize("study", [False, True])
def test_figure_failure_keeps_the_data_and_the_status(tmp_path, monkeypatch, capsys, study):
    # the runner's test hook makes drawing raise; the data and the status must stand
    extra = {"study": {"variants": [{"label": "a", "set": {"dynamics.seed": 1}}]}} if study else {}
    path = _config(tmp_path, output={"figures": True, "formats": ["png"]}, **extra)
    out = tmp_path / "s"
    monkeypatch.setenv("DLNSIM_TEST_FIGURE_FAIL", "1")
    code, lines = _main(["run", path, "--out", out, "--quiet"], capsys)
    assert code == 0 and len(lines) == 1 and "figures not drawn" in lines[0], lines
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "completed" and "DLNSIM_TEST_FIGURE_FAIL" in meta["figure_error"]
    assert (out / ("runs/a/arrays.npz" if study else "arrays.npz")).exists()


# =============================================================================================
# 6. sweeps under faults
# =============================================================================================


def _sweep_file(tmp_path, axes, **extra):
    base = json.loads(json.dumps(TINY))
    base["output"] = {"figures": False}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"base": base, "axes": axes, **extra}, sort_keys=False))
    return str(path)


def _sweep(args, cwd, timeout=180, **env):
    return subprocess.run([sys.executable, "-m", "dlnsim", "sweep", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=_env(**env))


def _alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def test_sweep_workers_die_with_the_sweep_process(tmp_path):
    path = _sweep_file(tmp_path, {"dynamics.seed": [1, 2]})
    out = tmp_path / "sw"
    p = subprocess.Popen([sys.executable, "-m", "dlnsim", "sweep", path, "--out", str(out), "--workers", "2", "--quiet"],
                         cwd=tmp_path, env=_env(DLNSIM_TEST_STEP_SLEEP=0.5), start_new_session=True)
    try:
        deadline = time.time() + 90
        pids = []
        while time.time() < deadline and len(pids) < 2:
            pids = [int(x) for x in subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split()]
            pids += [int(x) for q in list(pids) for x in subprocess.run(["pgrep", "-P", str(q)], capture_output=True, text=True).stdout.split()]
            time.sleep(0.2)
        p.kill()
        p.wait()
        deadline = time.time() + 20
        while time.time() < deadline and any(_alive(q) for q in pids):
            time.sleep(0.2)
        assert not [q for q in pids if _alive(q)]
    finally:
        if p.poll() is None:
            p.kill()


def test_killed_worker_makes_the_sweep_exit_non_zero_and_records_the_point(tmp_path):
    path = _sweep_file(tmp_path, {"dynamics.seed": [1, 2]})
    out = tmp_path / "sw"
    r = _sweep([path, "--out", out, "--workers", "1", "--quiet", "--no-plot"], cwd=tmp_path, DLNSIM_TEST_KILL_POINT="000_seed=1")
    assert r.returncode != 0, r.stdout + r.stderr
    rows = list(csv_rows(out / "manifest.csv"))
    assert rows[0]["status"] in ("failed", "interrupted") and rows[1]["status"] == "completed"
    meta = json.loads(_read(out / rows[0]["run"] / "meta.json"))
    assert meta["status"] == "failed" and "worker process died" in meta["message"]
    assert "leaked semaphore" not in r.stderr


def test_points_get_distinct_reproducible_seeds(tmp_path):
    from dlnsim.sweep import load_sweep
    from dlnsim.sweep.points import read_manifest

    base = dict(TINY, output={"figures": False})
    s1 = load_sweep({"base": base, "axes": {"dynamics.step_size": [0.01, 0.02], "network.depth": [2, 3]}})
    s2 = load_sweep({"base": base, "axes": {"dynamics.step_size": [0.01, 0.02, 0.04], "network.depth": [2, 3]}})
    key = lambda p: json.dumps(p.values, sort_keys=True)  # noqa: E731
    seeds1 = {key(p): p.config["dynamics"]["seed"] for p in s1.points}
    seeds2 = {key(p): p.config["dynamics"]["seed"] for p in s2.points}
    assert len(set(seeds1.values())) == len(seeds1) == 4  # distinct
    assert all(seeds2[k] == v for k, v in seeds1.items())  # adding points leaves existing seeds alone
    again = load_sweep({"base": base, "axes": {"dynamics.step_size": [0.01, 0.02], "network.depth": [2, 3]}})
    assert [p.config["dynamics"]["seed"] for p in again.points] == [p.config["dynamics"]["seed"] for p in s1.points]
    crn = load_sweep({"base": base, "axes": {"dynamics.step_size": [0.01, 0.02]}, "seed_mode": "common"})
    assert {p.config["dynamics"]["seed"] for p in crn.points} == {TINY["dynamics"]["seed"]}
    explicit = load_sweep({"base": base, "axes": {"dynamics.seed": [7, 8]}})  # an axis over seeds is taken as given
    assert [p.config["dynamics"]["seed"] for p in explicit.points] == [7, 8]
    # the seed is recorded in the manifest
    path = _sweep_file(tmp_path, {"dynamics.step_size": [0.01, 0.02]})
    out = tmp_path / "sw"
    assert cli.main(["sweep", path, "--out", str(out), "--workers", "1", "--no-plot", "--quiet"]) == 0
    rows = read_manifest(str(out))
    assert len({r["seed"] for r in rows}) == 2 and all(int(r["seed"]) >= 0 for r in rows)


# =============================================================================================
# 7. numerics that fail must not look like success
# =============================================================================================


def test_float32_manifold_langevin_moves_and_failures_are_reported(tmp_path, capsys):
    path = _config(tmp_path, energy={"type": "weight_decay"}, device={"dtype": "float32"},
                   dynamics={"scheme": "langevin_projected", "beta": 2.0, "step_size": 0.01, "steps": 60, "ensemble": 8})
    out = tmp_path / "r"
    assert cli.main(["run", path, "--out", str(out), "--quiet"]) == 0
    a = dict(np.load(out / "arrays.npz"))
    fails = a["projection_failures"][-1] / 60
    assert float(fails.max()) < 0.05  # tolerance scaled with float32: the projection converges
    assert not np.allclose(a["singular_values"][-1], a["singular_values"][0])  # the chains moved


def test_failure_fraction_is_warned_in_stderr_meta_and_figure(tmp_path, capsys, monkeypatch):
    # a Newton tolerance below roundoff (what 1e-10 was for float32): every projection fails; the run says so everywhere
    path = _config(tmp_path, energy={"type": "weight_decay"}, output={"figures": True, "formats": ["png"]},
                   dynamics={"scheme": "langevin_projected", "beta": 2.0, "step_size": 0.05, "steps": 30, "ensemble": 4,
                             "options": {"tol": 1e-30, "max_iter": 2}})
    out = tmp_path / "r"
    code = cli.main(["run", path, "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 0 and "warning" in err and "projection" in err
    meta = json.loads((out / "meta.json").read_text())
    assert meta["warnings"] and any("projection" in w for w in meta["warnings"])
    # and in the title of every run figure
    from dlnsim.plotting import run_figures

    titles = []
    monkeypatch.setattr(run_figures, "save_figure", lambda fig, *a, **k: titles.append(fig._suptitle.get_text()) or [])
    run_figures.plot_run(str(out), formats=("png",))
    assert titles and all("WARNING: projections failed" in t for t in titles)


def test_zero_X_has_defined_relative_observables(tmp_path):
    path = _config(tmp_path, network={"init": "balanced", "scale": 1.0, "spectrum": [0.0, 0.0]},
                   dynamics={"scheme": "gradient_flow", "steps": 6})
    out = tmp_path / "r"
    assert cli.main(["run", path, "--out", str(out), "--quiet"]) == 0
    a = dict(np.load(out / "arrays.npz"))
    for k in ("balancedness_rel", "reference_distance"):
        if k in a:
            assert np.isfinite(a[k]).all(), k


def test_time_is_t0_plus_step_times_h(tmp_path):
    path = _config(tmp_path, dynamics={"scheme": "gradient_descent", "step_size": 0.0025, "steps": 3200},
                   observers={"every": 400})
    out = tmp_path / "r"
    assert cli.main(["run", path, "--out", str(out), "--quiet"]) == 0
    a = dict(np.load(out / "arrays.npz"))
    assert a["t"][-1] == 8.0 and np.array_equal(a["t"], a["step"] * 0.0025)


# =============================================================================================
# building blocks of 3-6, tested on their own
# =============================================================================================


@pytest.mark.parametrize("name", ["../../x", "/abs", "a/b", "..", ".", "", "x" * 101, "a\x00b", "-rf", "new\nline",
                                  "run\u202egnp", "caf\u00e9", "a b", "~", "$HOME", "a\\b"])
def test_unsafe_names_are_refused(name):
    from dlnsim.safe_paths import check_name

    with pytest.raises(ValueError, match=r"^output\.name: "):
        check_name("output.name", name)


@pytest.mark.parametrize("name", ["saxe_modes", "N=3", "001_beta=2.5", "beta=1e-3,depth=2", "a+b", "x" * 100])
def test_safe_names_pass(name):
    from dlnsim.safe_paths import check_name

    assert check_name("output.name", name) == name


def test_default_name_from_an_unsafe_file_stem_is_made_safe(tmp_path, capsys):
    # output.name defaults to the config file's stem: a file named "my run.yaml" still runs
    from dlnsim.safe_paths import safe_stem

    assert [safe_stem(s) for s in ("my run", "..x", "caf\u00e9", "")] == ["my-run", "x", "caf-", "run"]
    path = tmp_path / "my run.yaml"
    os.replace(_config(tmp_path), path)
    assert cli.main(["run", str(path), "--quiet"]) == 0
    assert [p.name.startswith("my-run-") for p in (tmp_path / "results").iterdir()] == [True]


def test_showcase_must_be_a_png_inside_output_dir_showcase(tmp_path):
    from dlnsim.safe_paths import check_showcase

    out = tmp_path / "results"
    assert check_showcase(str(out / "showcase" / "a.png"), str(out)) == str(out / "showcase" / "a.png")
    for bad in (str(tmp_path / "victim.png"), str(out / "showcase" / ".." / "x.png"), str(out / "showcase" / "a.txt"),
                str(out / "showcase")):
        with pytest.raises(ValueError, match="output.showcase"):
            check_showcase(bad, str(out))
    # a symbolic link inside showcase/ pointing outside is resolved first
    (out / "showcase").mkdir(parents=True)
    os.symlink(tmp_path, out / "showcase" / "link")
    with pytest.raises(ValueError, match="outside"):
        check_showcase(str(out / "showcase" / "link" / "x.png"), str(out))
    assert check_showcase(str(tmp_path / "victim.png"), str(out), allow_anywhere=True) == str(tmp_path / "victim.png")


def test_run_lock_is_exclusive_and_stale_locks_are_taken_over(tmp_path):
    from dlnsim.runlock import FolderInUse, RunLock

    with RunLock(str(tmp_path)):
        info = json.loads((tmp_path / ".lock").read_text())
        assert info["pid"] == os.getpid() and info["host"] == os.uname().nodename
        with pytest.raises(FolderInUse, match=f"in use by process {os.getpid()}"):
            RunLock(str(tmp_path)).acquire()
        # another process is refused too
        code = f"from dlnsim.runlock import RunLock; RunLock({str(tmp_path)!r}).acquire()"
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env())
        assert p.returncode != 0 and "FolderInUse" in p.stderr
    assert not (tmp_path / ".lock").exists()
    # a lock file left by a killed process: its flock died with it, the file is taken over
    p = subprocess.Popen([sys.executable, "-c", f"from dlnsim.runlock import RunLock; import time; RunLock({str(tmp_path)!r}).acquire(); print('ok', flush=True); time.sleep(60)"],
                         stdout=subprocess.PIPE, text=True, env=_env())
    assert p.stdout.readline().strip() == "ok"
    p.kill()
    p.wait()
    p.stdout.close()
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == p.pid
    with RunLock(str(tmp_path)):
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()


def test_step_count_refuses_overflow():
    from dlnsim.resources import MAX_STEPS, step_count

    assert step_count(1.0, 0.01) == 100 and step_count(8.0, 0.0025) == 3200
    for t, h in ((1e308, 0.01), (1.0, 1e-310), (1e13, 1.0)):
        with pytest.raises(ValueError, match=r"^dynamics\.time: .*steps"):
            step_count(t, h)
    assert step_count(float(MAX_STEPS), 1.0) == MAX_STEPS


def _resolved(**kw):
    cfg = {"network": {"widths": [2, 2, 2]}, "dynamics": {"ensemble": 2, "beta": None, "steps": 100, "scheme": "gradient_flow"},
           "energy": {"type": "matrix_regression"}, "observers": {"every": 1, "include": None, "entropy_measured": "auto"},
           "device": {"dtype": "float64", "device": "cpu", "max_memory_gb": None}}
    for k, v in kw.items():
        sec, key = k.split("__")
        cfg[sec][key] = v
    return cfg


@pytest.mark.parametrize("kw,key", [
    ({"network__widths": [10**6, 10**6, 10**6]}, "network.width"),
    ({"dynamics__ensemble": 10**9}, "dynamics.ensemble"),
    ({"dynamics__ensemble": 10**7, "dynamics__beta": [1.0] * 100}, "dynamics.ensemble"),
    ({"network__widths": [2] * (10**6 + 1), "dynamics__ensemble": 100}, "network.depth"),
    ({"energy__type": "linear_regression", "energy__n_samples": 10**10, "energy__data": None}, "energy.n_samples"),
    ({"dynamics__steps": 10**10}, "observers.every"),
])
def test_memory_estimate_names_the_key_to_change(kw, key):
    from dlnsim.resources import check_memory

    with pytest.raises(ValueError, match=rf"^{key.replace('.', '[.]')}: the run needs about .* raise device.max_memory_gb"):
        check_memory(_resolved(**kw))
    assert check_memory(_resolved()) < 2**20  # the tiny run: well under a MiB
    with pytest.raises(ValueError, match="device.max_memory_gb = 1e-09"):
        check_memory(_resolved(device__max_memory_gb=1e-9))


def test_threads_are_bounded_by_the_cpus():
    from dlnsim.resources import available_cpus, check_threads

    check_threads(None)
    check_threads(available_cpus())
    with pytest.raises(ValueError, match=r"^device\.threads: 1000000 is more than"):
        check_threads(10**6)


def test_worker_dies_with_its_parent(tmp_path):
    # parent: starts a child that asked for its parent's death signal, prints its pid, exits at once
    child = "from dlnsim._children import die_with; import time; die_with(); print('armed', flush=True); time.sleep(60)"
    parent = (f"import subprocess, sys, os; p = subprocess.Popen([sys.executable, '-c', {child!r}], stdout=subprocess.PIPE, text=True); "
              "assert p.stdout.readline().strip() == 'armed'; print(p.pid, flush=True); os._exit(0)")
    out = subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True, env=_env(), timeout=60)
    pid = int(out.stdout.split()[0])
    deadline = time.time() + 10
    while time.time() < deadline and _alive(pid):
        time.sleep(0.05)
    assert not _alive(pid)


def test_a_sweep_of_a_million_points_is_refused_before_expanding(tmp_path, capsys):
    # each point is a validated config: 10^6 of them would take hours to expand
    path = _sweep_file(tmp_path, {"dynamics.seed": list(range(1000)), "energy.seed": list(range(1000))})
    code, lines = _main(["sweep", path, "--out", tmp_path / "sw", "--quiet"], capsys)
    _one_line_exit_2(code, lines, "axes: 1000000 points")
    assert not (tmp_path / "sw").exists()


def test_package_version_is_read_without_importing_the_package():
    # pip builds the editable install in an isolated environment without numpy or torch: setuptools
    # must find `version = attr: ...` statically (a string literal in the module the attr names),
    # else it imports dlnsim, which imports numpy, and the README's first command fails.
    import ast
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    attr = cfg["metadata"]["version"].split("attr:")[1].strip()
    module, name = attr.rsplit(".", 1)
    path = os.path.join(ROOT, *module.split(".")) + ".py"
    if not os.path.exists(path):
        path = os.path.join(ROOT, *module.split("."), "__init__.py")
    tree = ast.parse(_read(path))
    literals = [n.value.value for n in tree.body if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant)
                and any(isinstance(t, ast.Name) and t.id == name for t in n.targets)]
    assert literals and isinstance(literals[0], str), f"{attr} is not a string literal in {path}"


def test_failure_warnings_use_the_ensemble_mean_and_say_what_a_metropolis_rejection_means():
    # langevin_gibbs's Metropolis variant: 1.8% reverse failures on average, 16% in its worst chain over
    # 200 steps; a rejection keeps the Metropolis law exact, so that is no warning. Above 5% on average it
    # is, and it must not claim that the chains miss the law.
    from types import SimpleNamespace

    from dlnsim.runner import _scheme_warnings

    def sim(stats, steps=200):
        return SimpleNamespace(state=SimpleNamespace(step=steps, stats={k: torch.tensor(v, dtype=torch.float64)
                                                                         for k, v in stats.items()}))

    ok = sim({"accepted": [150.0, 180.0, 190.0, 170.0], "reverse_failures": [32.0, 0.0, 0.0, 0.0]})
    assert _scheme_warnings(ok) == []
    slow = sim({"accepted": [100.0, 120.0], "reverse_failures": [30.0, 20.0]})
    (w,) = _scheme_warnings(slow)
    assert "reverse projections failed in 12.5%" in w and "law stays exact" in w
    biased = sim({"projection_failures": [30.0, 20.0]})
    (w,) = _scheme_warnings(biased)
    assert "not sampling the law" in w
