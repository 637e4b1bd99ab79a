"""Records streamed to disk (dlnsim.record_store, output.records), thinned metrics.csv
(output.metrics), and loading result folders (dlnsim.load_run, dlnsim.load_sweep)."""
from __future__ import annotations

import csv
import os
import tracemalloc
import zipfile

import numpy as np
import pytest
import torch

import dlnsim
from dlnsim import runner
from dlnsim.config import load_config
from dlnsim.dynamics import GradientDescent
from dlnsim.energies import MatrixRegression
from dlnsim.observe import Observer
from dlnsim.record_store import RecordStore, write_npz_streamed
from dlnsim.runner import resume, run
from dlnsim.simulation import Simulation


def arrays(run_dir):
    with np.load(os.path.join(run_dir, "arrays.npz")) as z:
        return {k: z[k] for k in z.files}


def assert_identical(a, b):
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].shape == b[k].shape and a[k].dtype == b[k].dtype, k
        assert np.array_equal(a[k], b[k], equal_nan=True), f"{k} differs"


def config(scheme="langevin_projected", steps=25, ensemble=4, records="disk", **out):
    stoch = scheme.startswith(("langevin", "rle"))
    return {
        "network": {"depth": 3, "width": 2, "init": "balanced", "scale": 0.8},
        "energy": {"type": "weight_decay" if stoch else "matrix_regression"},
        "dynamics": {"scheme": scheme, "step_size": 0.01, "steps": steps, "ensemble": ensemble, "seed": 5,
                     **({"beta": [2.0, 3.0]} if stoch else {})},
        "observers": {"every": 3},
        "output": {"figures": False, "checkpoint_every": 2, "records": records, **out},
    }


# -- the store on its own ------------------------------------------------------------------------
def test_store_round_trip_truncate_and_streamed_npz(tmp_path):
    rng = np.random.default_rng(0)
    full = {"t": np.arange(23, dtype=np.float64), "step": np.arange(23, dtype=np.int64) * 3,
            "loss": rng.standard_normal((23, 5)), "singular_values": rng.standard_normal((23, 5, 2)).astype(np.float32)}
    store = RecordStore(str(tmp_path / "records"))
    for a, b in [(0, 1), (1, 8), (8, 15), (15, 23)]:  # chunks of unequal length
        store.append({k: v[a:b] for k, v in full.items()})
    assert store.n_rows == 23
    again = RecordStore(store.folder)  # the index is rebuilt from the folder alone
    assert again.n_rows == 23 and sorted(again.names) == sorted(full)
    for k, v in full.items():
        assert again.read(k).dtype == v.dtype and np.array_equal(again.read(k), v)
    write_npz_streamed(str(tmp_path / "a.npz"), again, {"beta": np.ones(5)}, order=["t", "step"])
    with np.load(tmp_path / "a.npz") as z:  # allow_pickle is False by default: nothing unpickled
        assert z.files[:2] == ["t", "step"]
        for k, v in full.items():
            assert np.array_equal(z[k], v), k
        assert np.array_equal(z["beta"], np.ones(5))
    with zipfile.ZipFile(tmp_path / "a.npz") as zf:
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())
    # truncate inside a chunk (rewritten) and at a boundary (later chunks removed)
    again.truncate(11)
    assert again.n_rows == 11 and RecordStore(store.folder).n_rows == 11
    assert np.array_equal(RecordStore(store.folder).read("loss"), full["loss"][:11])
    again.append({k: v[11:23] for k, v in full.items()})
    assert np.array_equal(again.read("singular_values"), full["singular_values"])
    with pytest.raises(ValueError, match="checkpoint needs"):
        again.truncate(40)
    with pytest.raises(ValueError, match="unequal lengths"):
        again.append({"t": full["t"][:2], "step": full["step"][:3], "loss": full["loss"][:2], "singular_values": full["singular_values"][:2]})


# -- runs ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("scheme", ["langevin_projected", "gradient_descent"])
def test_streamed_run_equals_in_memory_run_and_resumes_bit_identically(tmp_path, monkeypatch, scheme):
    mem, disk, part = (str(tmp_path / n) for n in ("mem", "disk", "part"))
    assert run(load_config(config(scheme, records="memory")), mem, quiet=True).status == "completed"
    # a small chunk size: several chunks between checkpoints, so a resume must truncate
    monkeypatch.setattr(runner, "RECORD_CHUNK_BYTES", 1)
    assert run(load_config(config(scheme)), disk, quiet=True).status == "completed"
    assert not os.path.exists(os.path.join(disk, "records"))  # folded into arrays.npz
    assert_identical(arrays(mem), arrays(disk))
    with open(os.path.join(mem, "metrics.csv")) as f, open(os.path.join(disk, "metrics.csv")) as g:
        assert f.read() == g.read()

    monkeypatch.setenv("DLNSIM_TEST_INTERRUPT_AT_STEP", "17")
    out = run(load_config(config(scheme)), part, quiet=True)
    assert (out.status, out.exit_code) == ("interrupted", 130)
    ck = dlnsim.results.load_checkpoint(part)
    assert ck["records"] == {} and ck["records_on_disk"] == 6  # steps 0, 3, ..., 15: referenced, not embedded
    assert RecordStore(os.path.join(part, "records")).n_rows == 6
    assert arrays(part)["step"].tolist() == [0, 3, 6, 9, 12, 15]
    monkeypatch.delenv("DLNSIM_TEST_INTERRUPT_AT_STEP")
    assert resume(part, quiet=True).status == "completed"
    assert_identical(arrays(mem), arrays(part))


def test_resume_truncates_records_written_after_the_checkpoint(tmp_path, monkeypatch):
    """A process killed after its last checkpoint leaves chunks beyond it: the resume drops them."""
    monkeypatch.setattr(runner, "RECORD_CHUNK_BYTES", 1)  # a chunk per save point
    full, part = str(tmp_path / "full"), str(tmp_path / "part")
    cfg = load_config(config("langevin_metropolis"))
    assert run(cfg, full, quiet=True).status == "completed"
    monkeypatch.setenv("DLNSIM_TEST_INTERRUPT_AT_STEP", "9")  # checkpoint at save points 0, 3, 6, 9
    assert run(cfg, part, quiet=True).status == "interrupted"
    monkeypatch.delenv("DLNSIM_TEST_INTERRUPT_AT_STEP")
    store = RecordStore(os.path.join(part, "records"))
    assert store.n_rows == 4
    # what a killed process would have left: two more chunks, here garbage
    store.append({k: np.full_like(store.read(k)[:2], 7) for k in store.names})
    assert RecordStore(store.folder).n_rows == 6
    assert resume(part, quiet=True).status == "completed"
    assert_identical(arrays(full), arrays(part))


def test_auto_keeps_small_runs_in_memory(tmp_path):
    out = str(tmp_path / "r")
    cfg = load_config(config("gradient_descent", records="auto"))
    assert run(cfg, out, quiet=True).status == "completed"
    assert "records_on_disk" not in (dlnsim.results.load_checkpoint(out) or {})
    assert not os.path.exists(os.path.join(out, "records"))


def test_memory_does_not_grow_with_saves():
    """A streamed simulation holds a bounded amount of records, an in-memory one grows with the saves.

    Two measures, in-process: the bytes of the record tensors the Simulation holds, taken after every
    save point (torch's CPU allocator is invisible to tracemalloc), and tracemalloc's peak of
    Python-side allocations (numpy buffers, lists, dicts: what the flushing code allocates).
    512 trajectories, d = 2, loss + singular values: 512 x 3 x 8 B = 12 KiB per save point."""
    import tempfile

    def measure(n_steps: int, streamed: bool) -> tuple[int, int]:
        energy = MatrixRegression(torch.diag(torch.tensor([2.0, 1.0], dtype=torch.float64)))
        scheme = GradientDescent(energy, 0.01, 2)
        W = [0.5 * torch.eye(2, dtype=torch.float64).expand(512, 2, 2).clone() for _ in range(2)]
        held = [0]

        def on_save(sim):
            held[0] = max(held[0], sum(v.nbytes for m in sim.saved for v in m.values()))

        with tempfile.TemporaryDirectory() as d:
            tracemalloc.start()
            sim = Simulation(scheme, scheme.init_state(weights=W), Observer(energy, 2, include=["loss", "singular_values"]), 1)
            if streamed:
                sim.attach_store(RecordStore(os.path.join(d, "records")), 16)  # 16 save points = 192 KiB a chunk
            sim.run(n_steps, on_save)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            assert sim.n_saved == n_steps + 1
            if streamed:
                assert RecordStore(os.path.join(d, "records")).n_rows + len(sim.saved) == n_steps + 1
        return held[0], peak

    (h200, p200), (h800, p800) = measure(200, True), measure(800, True)
    (m200, _), (m800, _) = measure(200, False), measure(800, False)
    per_save = 512 * 3 * 8
    # in memory: every save point stays (201 and 801 of them)
    assert (m200, m800) == (201 * per_save, 801 * per_save)
    # streamed: at most 15 save points wait for the next chunk, whatever the number of saves
    assert h200 <= 15 * per_save and h800 <= 15 * per_save
    # Python-side peak: one chunk's numpy block (16 x 12 KiB = 192 KiB) plus the lists of times and
    # steps (600 more saves x ~60 B = 36 KB) and allocator noise; measured difference under 0.1 MB.
    # A 0.5 MB margin is still 14x below the 7.4 MB the in-memory records grow by.
    assert p800 - p200 < 5e5, (p200, p800)


# -- metrics.csv ---------------------------------------------------------------------------------
def test_metrics_summary_and_off(tmp_path):
    full, summ, off = (str(tmp_path / n) for n in ("full", "summary", "off"))
    assert run(load_config(config(metrics="full", records="memory")), full, quiet=True).status == "completed"
    assert run(load_config(config(metrics="summary")), summ, quiet=True).status == "completed"
    assert run(load_config(config(metrics="off")), off, quiet=True).status == "completed"
    assert not os.path.exists(os.path.join(off, "metrics.csv"))
    with open(os.path.join(full, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    with open(os.path.join(summ, "metrics.csv")) as f:
        srows = list(csv.DictReader(f))
    assert list(srows[0]) == ["step", "t", "beta", "quantity", "n", "mean", "std", "min", "q05", "q25", "median",
                              "q75", "q95", "max"]
    # summary = the statistics of the full table's rows, per (step, beta, quantity): checked directly
    for r in srows[::7]:
        x = np.array([float(q[r["quantity"]]) for q in rows if q["step"] == r["step"] and q["beta"] == r["beta"]])
        assert int(r["n"]) == x.size == 4
        assert float(r["mean"]) == pytest.approx(x.mean(), rel=1e-8, abs=1e-12)  # %.10g formatting
        assert float(r["std"]) == pytest.approx(x.std(ddof=1), rel=1e-8, abs=1e-12)
        assert float(r["median"]) == pytest.approx(np.median(x), rel=1e-8, abs=1e-12)
        assert float(r["max"]) == pytest.approx(x.max(), rel=1e-8, abs=1e-12)


@pytest.mark.parametrize("records", ["memory", "disk"])
def test_metrics_every_thins_the_csv(tmp_path, monkeypatch, records):
    # output.metrics_every k keeps the save points 0, k, 2k, ... and the last: the thinned files are
    # exactly those rows of the full ones (full and summary, in memory and streamed in one-row chunks)
    monkeypatch.setattr(runner, "RECORD_CHUNK_BYTES", 1)
    out = {}
    for mode in ("full", "summary"):
        for every in (1, 4):
            d = str(tmp_path / f"{mode}{every}")
            cfg = load_config(config("gradient_descent", steps=28, records=records, metrics=mode, metrics_every=every))
            assert run(cfg, d, quiet=True).status == "completed"
            with open(os.path.join(d, "metrics.csv")) as f:
                out[mode, every] = f.read().splitlines()
            assert arrays(d)["step"].tolist() == list(range(0, 28, 3)) + [28]  # arrays.npz keeps every save point
    kept = {"0", "12", "24", "28"}  # saves at steps 0, 3, ..., 27 and the final 28 (11 points): indices 0, 4, 8, 10
    for mode in ("full", "summary"):
        full, thin = out[mode, 1], out[mode, 4]
        assert thin[0] == full[0]
        assert thin[1:] == [r for r in full[1:] if r.split(",")[0] in kept]
        assert {r.split(",")[0] for r in thin[1:]} == kept
    from dlnsim.results import thinned_saves

    assert thinned_saves(10, 4).tolist() == [0, 4, 8, 9] and thinned_saves(9, 4).tolist() == [0, 4, 8]
    assert thinned_saves(1, 5).tolist() == [0] and thinned_saves(5, 1).tolist() == [0, 1, 2, 3, 4]


def test_metrics_auto_threshold():
    from dlnsim.results import METRICS_FULL_MAX_ROWS, metrics_mode

    assert metrics_mode("auto", 100, METRICS_FULL_MAX_ROWS // 100) == "full"
    assert metrics_mode("auto", 400, 1024) == "summary"  # the 29 MB case of issue 12
    assert metrics_mode("off", 1, 1) == "off"


# -- load_run / load_sweep -----------------------------------------------------------------------
def test_load_run_and_table(tmp_path):
    out = str(tmp_path / "r")
    assert run(load_config(config(records="memory", metrics="full")), out, quiet=True).status == "completed"
    r = dlnsim.load_run(out)
    assert r.status == "completed" and r.config["dynamics"]["scheme"] == "langevin_projected"
    assert r.meta["status"] == "completed"
    assert_identical(r.arrays, arrays(out))
    assert r["loss"].shape == (10, 8)
    tab = r.table(as_dataframe=False)
    assert isinstance(tab, dict) and len(tab["loss"]) == 10 * 8
    with open(os.path.join(out, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    assert list(tab) == list(rows[0])
    assert np.allclose(tab["loss"], [float(q["loss"]) for q in rows], rtol=1e-9)
    try:
        import pandas  # noqa: F401
    except ImportError:
        assert isinstance(r.table(), dict)
    else:
        assert r.table().shape == (80, len(tab))


def test_load_refuses_what_is_not_a_run(tmp_path):
    with pytest.raises(ValueError, match="not a dlnsim result folder"):
        dlnsim.load_run(str(tmp_path))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "meta.json").write_text('{"status": "completed"}')
    (bad / "config.yaml").write_text("dynamics: {}\n")
    np.savez(bad / "arrays.npz", t=np.array([object()], dtype=object))  # a pickled array
    with pytest.raises(ValueError, match="pickle"):
        dlnsim.load_run(str(bad))


def test_load_sweep_of_a_tiny_sweep(tmp_path):
    import subprocess
    import sys

    import yaml

    # the tiny RLE run of tests/test_sweep.py
    TINY_RLE = {
        "network": {"depth": 2, "width": 2, "init": "balanced", "scale": 0.7},
        "energy": {"type": "weight_decay", "alpha": 1.0},
        "dynamics": {"scheme": "rle", "step_size": 0.01, "steps": 60, "ensemble": 8, "seed": 1, "beta": 1.0},
        "observers": {"every": 10},
        "output": {"figures": False},
    }
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DLNSIM_TEST_")}
    env["PYTHONPATH"] = root + os.pathsep + os.environ.get("PYTHONPATH", "")
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"base": TINY_RLE, "axes": {"network.depth": [1, 2], "dynamics.beta": [1.0, 4.0]},
                                    "batch_axes": ["dynamics.beta"]}, sort_keys=False))
    out = tmp_path / "sweep"
    p = subprocess.run([sys.executable, "-m", "dlnsim", "sweep", str(path), "--out", str(out), "--workers", "1", "--no-plot",
                        "--quiet"], capture_output=True, text=True, env=env, cwd=root, timeout=300)
    assert p.returncode == 0, p.stderr
    s = dlnsim.load_sweep(str(out))
    assert s.axes == ["network.depth", "dynamics.beta"]
    assert [pt.values["network.depth"] for pt in s.points] == [1, 2] and all(pt.status == "completed" for pt in s.points)
    assert s.spec["base"] == TINY_RLE
    for pt in s.points:
        assert_identical(pt.run.arrays, arrays(os.path.join(out, "runs", pt.name)))
    tab = s.table(as_dataframe=False)
    n = 7 * 16  # 7 save points x (2 betas x 8 trajectories) per point
    assert len(tab["loss"]) == 2 * n
    assert list(tab)[:3] == ["point", "network.depth", "dynamics.beta"]
    assert tab["network.depth"].tolist() == [1] * n + [2] * n
    assert np.array_equal(tab["loss"][n:], s.points[1].run["loss"].reshape(-1))
    with pytest.raises(ValueError, match="not a sweep folder"):
        dlnsim.load_sweep(str(tmp_path))
