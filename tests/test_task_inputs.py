"""Task inputs through the config: noisy completion observations, targets and regression data from
files (.npy / .csv, relative to the config file), held-out sets (generated, given, split), the
regression_error observable, and what a result folder records about the files it read.
Every check is against a direct computation of the same numbers."""
import hashlib
import json
import math
import os

import numpy as np
import pytest
import torch
import yaml

from dlnsim import config as C
from dlnsim import safe_io
from dlnsim.builders import build_energy, build_simulation
from dlnsim.energies import target_matrix
from dlnsim.metrics import completion_errors
from dlnsim.network import random_orthogonal
from dlnsim.options import ConfigError

DT = torch.float64


def _completion(**en):
    return {
        "network": {"widths": [4, 3, 5], "init": "gaussian", "scale": 0.5},
        "energy": {"type": "matrix_completion", "target": "random", "rank": 2, "mask": "random", "mask_count": 12,
                   "mask_seed": 3, "seed": 7, **en},
        "dynamics": {"scheme": "gradient_descent", "step_size": 0.05, "steps": 10, "ensemble": 3, "seed": 1},
        "observers": {"every": 5, "include": ["loss", "completion_error"]},
        "output": {"figures": False},
    }


def _regression(**en):
    return {
        "network": {"widths": [3, 4, 2], "init": "gaussian", "scale": 0.5},
        "energy": {"type": "linear_regression", "target": "random", "seed": 4, **en},
        "dynamics": {"scheme": "gradient_descent", "step_size": 0.05, "steps": 10, "ensemble": 2, "seed": 1},
        "observers": {"every": 5, "include": ["loss", "regression_error"]},
        "output": {"figures": False},
    }


# ---------------------------------------------------------------------------------------------
# 1. noisy completion observations
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("noise_seed", [None, 11])
def test_noisy_observations_from_config_against_direct_draw(noise_seed):
    cfg = C.load_config(_completion(noise=0.1, noise_seed=noise_seed, mask_per_trajectory="true"))
    E = build_energy(cfg, "cpu", DT)
    Phi = target_matrix(cfg["energy"], cfg["network"]["widths"])
    assert torch.equal(E.truth, Phi)
    # the observations: mask o (Phi + sigma xi), xi ~ N(0, 1) of shape (B, d_N, d_0) from noise_seed (null: seed + 1)
    seed = 7 + 1 if noise_seed is None else noise_seed
    xi = torch.randn((3, 5, 4), generator=torch.Generator().manual_seed(seed), dtype=DT)
    assert torch.equal(E.target, E.mask * (Phi + 0.1 * xi))
    assert E.mask.shape == (3, 5, 4) and not torch.equal(E.target[0], E.target[1])  # one draw per trajectory


def test_noise_level_and_clean_test_error():
    # noise std: 900 observed entries of a 30x30 problem, sample std of (O - Phi)/sigma within 5 SE of 1
    # (SE of a sample std ~ 1/sqrt(2 n) = 0.024)
    c = _completion(noise=0.3, mask_count=900)
    c["network"] = {"widths": [30, 30], "init": "gaussian", "scale": 0.1}
    c["energy"]["rank"] = 3
    E = build_energy(C.load_config(c), "cpu", DT)
    resid = ((E.target - E.truth) / 0.3)[E.mask.bool()]
    assert resid.numel() == 900 and abs(float(resid.std()) - 1) < 5 / math.sqrt(2 * 900)
    assert abs(float(resid.mean())) < 5 / math.sqrt(900)
    # the observable: test / reconstruction error against the clean target, train error against the observations
    cfg = C.load_config(_completion(noise=0.2))
    sim, _ = build_simulation(cfg)
    sim.run(10)
    X, E, a = sim.state.end_to_end(), sim.scheme.energy, sim.arrays()
    M, O, P = E.mask.numpy(), E.target.numpy(), E.truth.numpy()
    for b in range(3):  # entry by entry
        x = X[b].numpy()
        test = math.sqrt(sum((x[i, j] - P[i, j]) ** 2 for i in range(5) for j in range(4) if M[i, j] == 0))
        test /= math.sqrt(sum(P[i, j] ** 2 for i in range(5) for j in range(4) if M[i, j] == 0))
        train = math.sqrt(sum((x[i, j] - O[i, j]) ** 2 for i in range(5) for j in range(4) if M[i, j] == 1))
        train /= math.sqrt(sum(O[i, j] ** 2 for i in range(5) for j in range(4) if M[i, j] == 1))
        assert abs(a["test_error"][-1, b] - test) < 1e-13 and abs(a["train_error"][-1, b] - train) < 1e-13
    # with noise the train error against the truth differs from the one recorded (it is against O)
    assert not np.allclose(a["train_error"][-1], completion_errors(X, E.truth, E.mask)["train_error_rel"].numpy())


@pytest.mark.parametrize("en,key", [
    ({"noise_seed": 3}, "energy.noise_seed"),  # without noise
    ({"noise": -0.1}, "energy.noise"),
])
def test_noise_config_errors(en, key):
    with pytest.raises(ConfigError, match=key):
        C.load_config(_completion(**en))
    with pytest.raises(ConfigError, match="energy.noise"):  # an energy without observations
        C.load_config({"energy": {"type": "matrix_regression", "noise": 0.1}})


# ---------------------------------------------------------------------------------------------
# 2. files: targets and regression data
# ---------------------------------------------------------------------------------------------


def _write_config(folder, cfg) -> str:
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "run.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return path


@pytest.mark.parametrize("suffix", [".npy", ".csv", ".txt"])
def test_target_from_file_relative_to_the_config(tmp_path, monkeypatch, suffix):
    Phi = np.random.default_rng(0).standard_normal((5, 4))
    cdir = tmp_path / "study"
    cdir.mkdir()
    if suffix == ".npy":
        np.save(cdir / "phi.npy", Phi)
    else:
        np.savetxt(cdir / f"phi{suffix}", Phi, delimiter="," if suffix == ".csv" else " ", fmt="%.17g")
    c = _completion(target="file", target_file=f"phi{suffix}")
    del c["energy"]["rank"]
    path = _write_config(cdir, c)
    monkeypatch.chdir(tmp_path)  # elsewhere: the path is taken relative to the config file's folder
    cfg = C.load_config(path)
    assert cfg["energy"]["target_file"] == str(cdir / f"phi{suffix}")
    E = build_energy(cfg, "cpu", DT)
    assert torch.equal(E.truth, torch.as_tensor(Phi))  # %.17g text round-trips float64 exactly


def test_bad_files_are_one_line_errors_naming_the_key(tmp_path, monkeypatch):
    base = _completion(target="file")
    del base["energy"]["rank"]

    def err(name, make=None):
        p = tmp_path / name
        if make is not None:
            make(p)
        c = {**base, "energy": {**base["energy"], "target_file": str(p)}}
        with pytest.raises(ConfigError) as e:
            C.load_config(c)
        msg = str(e.value)
        assert msg.startswith("energy.target_file: ") and "\n" not in msg, msg
        return msg

    assert "no such file" in err("none.npy")
    assert "3x4" in err("small.npy", lambda p: np.save(p, np.zeros((3, 4))))  # wrong shape, (5, 4) needed
    assert "non-finite" in err("nan.npy", lambda p: np.save(p, np.array([[np.nan] * 4] * 5)))
    assert "non-finite" in err("inf.csv", lambda p: p.write_text("\n".join(["1,2,3,inf"] * 5)))
    assert "numeric" in err("text.csv", lambda p: p.write_text("a,b,c,d\n" * 5))
    assert "not loaded" in err("obj.npy", lambda p: np.save(p, np.array([[{"a": 1}] * 4] * 5, dtype=object), allow_pickle=True))
    assert "pickle" in err("pickle.npy", lambda p: p.write_bytes(b"\x80\x04\x95" + b"\x00" * 20))
    assert ".npy, .csv or .txt" in err("phi.mat", lambda p: p.write_bytes(b"x"))
    assert "folder" in err("adir.npy", lambda p: p.mkdir())
    assert "3-D" in err("cube.npy", lambda p: np.save(p, np.zeros((2, 5, 4))))
    # size bounds hold before anything is read
    monkeypatch.setattr(safe_io, "MAX_ARRAY_BYTES", 100)
    assert "more than the 100" in err("big.npy", lambda p: np.save(p, np.zeros((5, 4))))
    # target_file without target: file, and target: file without a file
    with pytest.raises(ConfigError, match="energy.target_file: only applies to energy.target: file"):
        C.load_config(_completion(target_file=str(tmp_path / "small.npy")))
    with pytest.raises(ConfigError, match="energy.target_file: energy.target is 'file'"):
        C.load_config(base)


def test_mask_from_file_equals_the_same_matrix_inline(tmp_path):
    """energy.mask: file gives the energy (and the run) the inline 0/1 matrix gives; wrong shape, non-0/1
    entries and a mask_file without mask: file are one-line errors naming energy.mask_file."""
    M = (np.random.default_rng(1).random((5, 4)) < 0.6).astype(float)
    np.save(tmp_path / "mask.npy", M)
    base = {k: v for k, v in _completion().items()}
    en = {k: v for k, v in base["energy"].items() if k not in ("mask_count", "mask_seed")}
    from_file = C.load_config({**base, "energy": {**en, "mask": "file", "mask_file": str(tmp_path / "mask.npy")}})
    inline = C.load_config({**base, "energy": {**en, "mask": M.astype(int).tolist()}})
    Ef, Ei = build_energy(from_file, "cpu", DT), build_energy(inline, "cpu", DT)
    assert torch.equal(Ef.mask, Ei.mask) and torch.equal(Ef.target, Ei.target)
    (sf, _), (si, _) = build_simulation(from_file), build_simulation(inline)
    sf.run(10)
    si.run(10)
    assert np.array_equal(sf.arrays()["loss"], si.arrays()["loss"])

    def err(c):
        with pytest.raises(ConfigError) as e:
            C.load_config({**base, "energy": {**en, **c}})
        msg = str(e.value)
        assert msg.startswith("energy.mask_file: ") and "\n" not in msg, msg
        return msg

    np.save(tmp_path / "wide.npy", np.ones((4, 5)))
    np.save(tmp_path / "half.npy", np.full((5, 4), 0.5))
    assert "(4, 5)" in err({"mask": "file", "mask_file": str(tmp_path / "wide.npy")})
    assert "0 (hidden) or 1" in err({"mask": "file", "mask_file": str(tmp_path / "half.npy")})
    assert "only applies to energy.mask: file" in err({"mask": "diag", "mask_file": str(tmp_path / "mask.npy")})
    assert "needs energy.mask_file" in err({"mask": "file"})


def test_generated_regression_data_with_held_out_set_against_direct_draw():
    # the training data do not change when a test set is asked for, and both follow
    # a = diag(sqrt(v)) z, y = Phi a + sigma xi, drawn in order from Generator(seed + 1)
    v, n, m, sig = [0.5, 1.0, 4.0], 20, 7, 0.1
    plain = build_energy(C.load_config(_regression(n_samples=n, noise=sig, input_cov=v)), "cpu", DT)
    cfg = C.load_config(_regression(n_samples=n, noise=sig, input_cov=v, n_test=m))
    E = build_energy(cfg, "cpu", DT)
    assert torch.equal(E.inputs, plain.inputs) and torch.equal(E.outputs, plain.outputs) and plain.test_inputs is None
    Phi = target_matrix(cfg["energy"], cfg["network"]["widths"])
    g = torch.Generator().manual_seed(5)
    root = torch.diag(torch.tensor(v, dtype=DT).sqrt())
    A = root @ torch.randn(3, n, generator=g, dtype=DT)
    Y = Phi @ A + sig * torch.randn(2, n, generator=g, dtype=DT)
    At = root @ torch.randn(3, m, generator=g, dtype=DT)
    Yt = Phi @ At + sig * torch.randn(2, m, generator=g, dtype=DT)
    for got, want in ((E.inputs, A), (E.outputs, Y), (E.test_inputs, At), (E.test_outputs, Yt)):
        assert torch.equal(got, want)
    # with identity covariance the training data are those of earlier dlnsim versions: A = randn, Y = Phi A + noise
    old = build_energy(C.load_config(_regression(n_samples=n, noise=sig)), "cpu", DT)
    g = torch.Generator().manual_seed(5)
    A0 = torch.randn(3, n, generator=g, dtype=DT)
    assert torch.equal(old.inputs, A0) and torch.equal(old.outputs, Phi @ A0 + sig * torch.randn(2, n, generator=g, dtype=DT))


def test_regression_from_files_and_the_regression_error_observable(tmp_path):
    rng = np.random.default_rng(1)
    A, Y, At, Yt = rng.standard_normal((3, 12)), rng.standard_normal((2, 12)), rng.standard_normal((3, 5)), rng.standard_normal((2, 5))
    np.save(tmp_path / "A.npy", A)
    np.savetxt(tmp_path / "Y.csv", Y, delimiter=",", fmt="%.17g")
    np.save(tmp_path / "At.npy", At)
    np.save(tmp_path / "Yt.npy", Yt)
    c = _regression(train_inputs="A.npy", train_outputs="Y.csv", test_inputs="At.npy", test_outputs="Yt.npy")
    cfg = C.load_config(_write_config(tmp_path, c))
    sim, _ = build_simulation(cfg)
    E = sim.scheme.energy
    for got, want in ((E.inputs, A), (E.outputs, Y), (E.test_inputs, At), (E.test_outputs, Yt)):
        assert torch.equal(got, torch.as_tensor(want))
    sim.run(10)
    X, a = sim.state.end_to_end().numpy(), sim.arrays()
    for b in range(2):  # relative errors ||X A - Y||_F / ||Y||_F with numpy
        assert abs(a["train_error"][-1, b] - np.linalg.norm(X[b] @ A - Y) / np.linalg.norm(Y)) < 1e-13
        assert abs(a["test_error"][-1, b] - np.linalg.norm(X[b] @ At - Yt) / np.linalg.norm(Yt)) < 1e-13
    # the same data as one .npz (energy.data) with test arrays give the same energy
    np.savez(tmp_path / "d.npz", inputs=A, outputs=Y, test_inputs=At, test_outputs=Yt)
    E2 = build_energy(C.load_config(_write_config(tmp_path, _regression(data="d.npz"))), "cpu", DT)
    assert all(torch.equal(getattr(E, k), getattr(E2, k)) for k in ("inputs", "outputs", "test_inputs", "test_outputs"))


def test_train_test_split_of_given_and_generated_data(tmp_path):
    rng = np.random.default_rng(2)
    A, Y = rng.standard_normal((3, 20)), rng.standard_normal((2, 20))
    np.save(tmp_path / "A.npy", A)
    np.save(tmp_path / "Y.npy", Y)
    c = _regression(train_inputs="A.npy", train_outputs="Y.npy", test_fraction=0.25, split_seed=3)
    E = build_energy(C.load_config(_write_config(tmp_path, c)), "cpu", DT)
    assert E.inputs.shape == (3, 15) and E.test_inputs.shape == (3, 5)
    # a partition of the given columns: each column (input and its output together) exactly once
    cols = sorted(map(tuple, np.vstack([np.hstack([E.inputs, E.test_inputs]), np.hstack([E.outputs, E.test_outputs])]).T.tolist()))
    assert cols == sorted(map(tuple, np.vstack([A, Y]).T.tolist()))
    # the split is the seed's permutation: the first round(f n) of randperm(n) are held out
    perm = torch.randperm(20, generator=torch.Generator().manual_seed(3))
    assert torch.equal(E.test_inputs, torch.as_tensor(A)[:, perm[:5]])
    other = build_energy(C.load_config(_write_config(tmp_path, {**c, "energy": {**c["energy"], "split_seed": 4}})), "cpu", DT)
    assert not torch.equal(other.test_inputs, E.test_inputs)
    # generated data: split_seed null -> energy.seed + 2
    gen = build_energy(C.load_config(_regression(n_samples=10, test_fraction=0.3)), "cpu", DT)
    full = build_energy(C.load_config(_regression(n_samples=10)), "cpu", DT)
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(4 + 2))
    assert torch.equal(gen.test_inputs, full.inputs[:, perm[:3]]) and torch.equal(gen.inputs, full.inputs[:, perm[3:]])


def test_regression_data_errors(tmp_path):
    np.save(tmp_path / "A.npy", np.zeros((3, 6)))
    np.save(tmp_path / "Y.npy", np.zeros((2, 6)))
    np.save(tmp_path / "Y5.npy", np.zeros((2, 5)))
    np.save(tmp_path / "A4.npy", np.zeros((4, 6)))
    np.savez(tmp_path / "half.npz", inputs=np.zeros((3, 6)), outputs=np.zeros((2, 6)), test_inputs=np.zeros((3, 2)))
    cases = [
        ({"train_inputs": "A.npy"}, "energy.train_outputs: energy.train_inputs is given"),
        ({"train_inputs": "A4.npy", "train_outputs": "Y.npy"}, r"energy.train_inputs: training data: must be \(3, n\)"),
        ({"train_inputs": "A.npy", "train_outputs": "Y5.npy"}, "energy.train_outputs: training data: 6 input samples but 5"),
        ({"test_inputs": "A.npy", "test_outputs": "Y.npy"}, "energy.test_inputs: held-out files need training files"),
        ({"train_inputs": "A.npy", "train_outputs": "Y.npy", "n_test": 3}, "energy.n_test: only applies to synthetic data"),
        ({"train_inputs": "A.npy", "train_outputs": "Y.npy", "noise": 0.1}, "energy.noise: only applies to synthetic data"),
        ({"train_inputs": "A.npy", "train_outputs": "Y.npy", "data": "half.npz"}, "energy.train_inputs: give the data either"),
        ({"data": "half.npz"}, "energy.data: .* only one of 'test_inputs' and 'test_outputs'"),
        ({"n_test": 3, "test_fraction": 0.5}, "energy.test_fraction: a held-out set is already given"),
        ({"test_fraction": 1.0}, r"energy.test_fraction: must be in \(0, 1\)"),
        ({"n_samples": 3, "test_fraction": 0.1}, "energy.test_fraction: .* leaves an empty"),
        ({"split_seed": 1}, "energy.split_seed: only applies with energy.test_fraction"),
        ({"input_cov": [1.0, 2.0]}, "energy.input_cov: give d_0 = 3 variances"),
        ({"input_cov": [[1, 0, 0], [0, -1, 0], [0, 0, 1]]}, "energy.input_cov: must be positive semi-definite"),
        ({"input_cov": [[1, 0.5, 0], [0, 1, 0], [0, 0, 1]]}, "energy.input_cov: must be symmetric"),
        ({"input_cov": [1, -1, 1]}, r"energy.input_cov\[1\]"),
    ]
    for en, match in cases:
        with pytest.raises(ConfigError, match=match) as e:
            C.load_config(_write_config(tmp_path, _regression(**en)))
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="energy.test_fraction: only applies to energy.type: linear_regression"):
        C.load_config(_completion(test_fraction=0.5))


def test_result_folder_records_the_files_it_read(tmp_path):
    from dlnsim.loaders import load_run
    from dlnsim.runner import run

    rng = np.random.default_rng(3)
    np.save(tmp_path / "A.npy", rng.standard_normal((3, 8)))
    np.save(tmp_path / "Y.npy", rng.standard_normal((2, 8)))
    c = _regression(train_inputs="A.npy", train_outputs="Y.npy", test_fraction=0.25)
    c["output"]["dir"] = str(tmp_path / "results")
    out = run(C.load_config(_write_config(tmp_path / "cfg", {**c, "energy": {**c["energy"], "train_inputs": "../A.npy",
                                                                               "train_outputs": "../Y.npy"}})), quiet=True)
    assert out.exit_code == 0
    with open(os.path.join(out.run_dir, "meta.json")) as f:
        meta = json.load(f)
    for key, name in (("energy.train_inputs", "A.npy"), ("energy.train_outputs", "Y.npy")):
        rec = meta["input_files"][key]
        raw = (tmp_path / name).read_bytes()
        assert rec == {"path": str(tmp_path / name), "bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
    r = load_run(out.run_dir)
    assert r.config["energy"]["train_inputs"] == str(tmp_path / "A.npy")  # absolute: the folder reruns on its own
    assert r["test_error"].shape == (3, 2) and r["train_error"].shape == (3, 2)


# ---------------------------------------------------------------------------------------------
# sweeps over the axes of implicit-regularization studies
# ---------------------------------------------------------------------------------------------


def test_sweep_over_mask_count_mask_seed_init_std_and_batch_size():
    # a 2x2x2x2 grid: every point gets the mask its own (count, seed) draw, its init std, its batch
    # size, and (seed_mode derived, the default) a dynamics.seed of its own; each point runs 4 SGD steps
    from dlnsim.sweep import load_sweep
    from dlnsim.tasks import random_mask

    base = {
        "network": {"widths": [4, 4, 4], "init": "gaussian", "std": 0.01},
        "energy": {"type": "matrix_completion", "target": "random", "rank": 1, "mask": "random", "mask_count": 8},
        "dynamics": {"scheme": "sgd", "step_size": 0.1, "steps": 4, "ensemble": 2, "seed": 3,
                     "options": {"batch_size": 2, "label_noise": 0.1}},
        "observers": {"every": 2, "include": ["loss", "completion_error"]},
        "output": {"figures": False},
    }
    axes = {"energy.mask_count": [6, 10], "energy.mask_seed": [1, 2], "network.std": [0.01, 0.1],
            "dynamics.options.batch_size": [2, 4]}
    points = load_sweep({"base": base, "axes": axes}).points
    assert len(points) == 16 and points[0].name == "000_mask_count=6_mask_seed=1_std=0.01_batch_size=2"
    assert len({p.config["dynamics"]["seed"] for p in points}) == 16  # distinct per-point seeds
    finals = []
    for p in points:
        v = p.values
        assert p.config["dynamics"]["options"] == {"batch_size": v["dynamics.options.batch_size"], "label_noise": 0.1}
        sim, _ = build_simulation(p.config)
        E = sim.scheme.energy
        # the mask is the (count, seed) draw itself: exactly mask_count observed entries
        direct = random_mask((4, 4), count=v["energy.mask_count"], seed=v["energy.mask_seed"])
        assert torch.equal(E.mask, direct) and int(E.mask.sum()) == v["energy.mask_count"]
        assert sim.scheme.sampler.batch_size == v["dynamics.options.batch_size"]
        # the initial weights have the point's std: 2 layers x 2 trajectories x 16 = 64 N(0, std^2) entries,
        # sample std / std within 5 standard errors (SE ~ 1/sqrt(2 x 64) = 0.09)
        W = torch.cat([w.flatten() for w in sim.state.weights])
        assert abs(float(W.std()) / v["network.std"] - 1) < 5 / math.sqrt(2 * 64)
        mb = sim.scheme.sampler.draw(2, torch.Generator().manual_seed(0), sim.state.weights[0])
        assert mb.idx.shape == (2, v["dynamics.options.batch_size"])
        assert bool((E.mask.flatten()[mb.idx] == 1).all())  # minibatches are observed entries
        sim.run(4)
        finals.append(sim.arrays()["loss"][-1])
    masks = {(p.values["energy.mask_count"], p.values["energy.mask_seed"]):
             random_mask((4, 4), count=p.values["energy.mask_count"], seed=p.values["energy.mask_seed"]) for p in points}
    assert not torch.equal(masks[6, 1], masks[6, 2]) and not torch.equal(masks[10, 1], masks[10, 2])
    assert len({tuple(f.tolist()) for f in finals}) == 16  # every point ran its own trajectory
    # seed_mode common: the same dynamics.seed everywhere, so the std axis scales the same draw exactly
    common = load_sweep({"base": base, "axes": {"network.std": [0.01, 0.1]}, "seed_mode": "common"}).points
    w0, w1 = (build_simulation(p.config)[0].state.weights for p in common)
    assert all(torch.allclose(b, 10 * a, rtol=1e-14, atol=0) for a, b in zip(w0, w1))


def test_one_scheme_option_as_an_override():
    base = _completion()
    base["dynamics"].update(scheme="sgd", options={"batch_size": 2, "label_noise": 0.1})
    cfg = C.load_config(base, ["dynamics.options.batch_size=4"])
    assert cfg["dynamics"]["options"]["batch_size"] == 4 and cfg["dynamics"]["options"]["label_noise"] == 0.1
    with pytest.raises(ConfigError, match="batch_sise"):  # the scheme's option check names the unknown option
        C.load_config(base, ["dynamics.options.batch_sise=4"])
    with pytest.raises(ConfigError, match="give a key as section.key"):
        C.load_config(base, ["dynamics.options.batch_size.x=4"])
