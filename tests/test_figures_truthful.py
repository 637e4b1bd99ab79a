"""Every figure says what is in it, for runs the showcases do not cover (issue 10, sections 2-3).

Runs: gradient descent from a random (Gaussian) start with a non-invariant energy at d = 12; the RLE
with E = 1/2 ||X - Phi||^2 at two batched betas (the stationary figure must carry THAT energy's law,
not the weight-decay law); the RLE at d = 6 (no reference: the figure says so); a saxe_modes study
whose variants are not all in the Saxe setting; a sweep overview with batched betas and a loss at
roundoff level; and `dlnsim run --bias-check`. Titles and labels are checked against the configs.
"""
import csv
import os

import matplotlib
import numpy as np
import pytest
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from dlnsim import cli  # noqa: E402
from dlnsim import results as R  # noqa: E402
from dlnsim.config import load_config  # noqa: E402
from dlnsim.gibbs import SingularValueLaw  # noqa: E402
from dlnsim.plotting.run_figures import RUN_FIGURES  # noqa: E402
from dlnsim.plotting.study_figures import STUDY_FIGURES, _variants  # noqa: E402
from dlnsim.run_theory import gibbs_reference  # noqa: E402
from dlnsim.runner import run  # noqa: E402
from dlnsim.sweep.plots import LOSS_FLOOR, _fig_overview  # noqa: E402

PHI = [[1.0, 0.3], [-0.2, 0.5]]


def _texts(fig) -> str:
    """Every title, suptitle, axis label, legend entry and free text of a figure, joined."""
    out = [t.get_text() for t in fig.texts]
    for ax in fig.axes:
        out += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()] + [t.get_text() for t in ax.texts]
        leg = ax.get_legend()
        if leg is not None:
            out += [t.get_text() for t in leg.get_texts()]
    return "\n".join(out)


def _run(tmp_path, name, cfg):
    cfg = load_config({**cfg, "output": {"name": name, "figures": False, **cfg.get("output", {})}})
    out = run(cfg, str(tmp_path / name), quiet=True)
    assert out.status == "completed", out.message
    return out.run_dir, R.read_config(out.run_dir), R.read_arrays(out.run_dir)


def test_gradient_descent_random_start_d12(tmp_path):
    d = 12
    _, cfg, a = _run(tmp_path, "gd12", {
        "network": {"depth": 2, "width": d, "init": "gaussian", "scale": 0.3},
        "energy": {"type": "matrix_regression", "target": "random"},
        "dynamics": {"scheme": "gradient_descent", "step_size": 0.02, "steps": 40, "ensemble": 6, "seed": 1},
        "observers": {"every": 10}})
    drawn = [k for k, f in RUN_FIGURES.items() if f.applies(cfg, a)]
    assert "stationary" not in drawn  # a deterministic run samples no Gibbs law
    for name in drawn:
        fig = RUN_FIGURES[name].draw(cfg, a)
        text = _texts(fig)
        assert "gradient_descent" in text and "h=0.02" in text, (name, text)
        assert "Saxe" not in text  # random start: no closed form
        if name == "singular_values":
            # 12 singular values: a colour map with a colour bar, no per-value legend, no "s_1 0"
            assert len(fig.axes) == 2 and "index $i$" in fig.axes[1].get_ylabel()
            assert "s_1" not in text.replace("s_{1", "")  # only braced indices, never "$s_10$"
            labels = fig.axes[0].get_legend().get_texts()
            assert len(labels) <= 2
        if name == "thermodynamics":
            assert r"\|X-\Phi\|" in text  # the energy the run used, named
        if name in ("loss", "singular_values", "thermodynamics"):
            assert "median, 10-90% band" in text  # B = 6 > 4: the band is explained
        plt.close(fig)


@pytest.fixture(scope="module")
def rle_mr(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rle_mr")
    return _run(tmp, "rle_mr", {
        "network": {"depth": 2, "width": 2, "init": "balanced", "scale": 0.8},
        "energy": {"type": "matrix_regression", "target": PHI},
        "dynamics": {"scheme": "rle", "beta": [1.0, 4.0], "ensemble": 100, "steps": 600, "step_size": 0.01, "seed": 3},
        "observers": {"every": 20}})


def test_stationary_figure_carries_the_law_of_the_energy_used(rle_mr):
    run_dir, cfg, a = rle_mr
    assert "det_sign" in a and set(np.unique(a["det_sign"])) <= {-1.0, 1.0}
    fig = RUN_FIGURES["stationary"].draw(cfg, a)
    text = _texts(fig)
    assert r"\|X-\Phi\|" in text and "rle" in text and "alpha" not in text
    assert "Gibbs law" in text and "P(\\det X>0)" in text
    # The line drawn on the s_max panel of beta = 1 is the reference of E = 1/2 ||X - Phi||^2 ...
    ax = fig.axes[0]
    line = next(ln for ln in ax.get_lines() if "Gibbs law" in ln.get_label())
    u, y = line.get_data()
    ref, _ = gibbs_reference(cfg, 1.0)
    assert np.allclose(y, ref.pdf_layer("max", torch.tensor(u)).numpy(), rtol=1e-10, atol=1e-12)
    # ... and not the weight-decay law the old figure drew for every energy (they differ by > 0.1 here).
    wd = SingularValueLaw(2, 1.0, 1.0, 2)
    wd_y = (wd.pdf_max(torch.tensor(u) ** 2) * 2 * torch.tensor(u)).numpy()
    assert np.abs(y - wd_y).max() > 0.1
    plt.close(fig)
    # z-scores of the headline moments in the CSV, one block per beta
    from dlnsim.plotting.run_figures import write_stationary_csv
    from dlnsim.run_theory import stationary_rows

    path = write_stationary_csv(os.path.join(run_dir, R.FIGURES, "stationary.csv"), stationary_rows(cfg, a))
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert {r["beta"] for r in rows} == {"1.0", "4.0"} and len(rows) == 8
    # 100 trajectories x 7 time units at h = 0.01: statistical agreement (bias ~1%, s.e. ~2%)
    assert all(abs(float(r["z"])) < 5 for r in rows), rows


def test_no_reference_is_said_on_the_figure(tmp_path):
    _, cfg, a = _run(tmp_path, "rle6", {
        "network": {"depth": 2, "width": 6, "init": "balanced", "scale": 0.8},
        "energy": {"type": "weight_decay", "alpha": 1.0},
        "dynamics": {"scheme": "rle", "beta": 2.0, "ensemble": 8, "steps": 30, "step_size": 0.01, "seed": 1},
        "observers": {"every": 10}})
    fig = RUN_FIGURES["stationary"].draw(cfg, a)
    text = _texts(fig)
    assert "no reference" in text and "d = 6" in text
    assert not any("Gibbs law" in ln.get_label() for ax in fig.axes for ln in ax.get_lines())
    plt.close(fig)


def test_saxe_study_figure_names_its_variants(tmp_path):
    cfg = load_config({
        "network": {"depth": 2, "width": 2, "init": "balanced", "target": "aligned", "scale": 0.1},
        "energy": {"type": "matrix_regression", "target": "random", "spectrum": [2.0, 1.0]},
        "dynamics": {"scheme": "gradient_flow", "step_size": 0.01, "steps": 100, "ensemble": 5},
        "observers": {"every": 10}, "output": {"name": "saxe_mixed", "figures": False},
        "study": {"figure": "saxe_modes", "variants": [
            {"label": "flow", "set": {}},
            {"label": "gd_random", "set": {"dynamics.scheme": "gradient_descent", "network.init": "gaussian",
                                                "network.target": None}}]}})
    out = run(cfg, str(tmp_path / "study"), quiet=True)
    vs = _variants(out.run_dir)
    fig = STUDY_FIGURES["saxe_modes"](vs)
    text = _texts(fig)
    top = [ax for ax in fig.axes if ax.get_title()]
    assert "flow" in top[0].get_title() and "gradient_flow" in top[0].get_title()
    assert "gd_random" in top[1].get_title() and "gradient_descent" in top[1].get_title() and "gaussian" in top[1].get_title()
    assert "no closed form applies" in "\n".join(t.get_text() for t in top[1].texts)
    assert "Saxe closed form" in "\n".join(t.get_text() for t in top[0].get_legend().get_texts())
    assert "variants as titled" in text and "RK4" not in text
    plt.close(fig)


def test_sweep_overview_splits_batched_betas_and_floors_roundoff():
    cfg = {"dynamics": {"scheme": "rle"}}
    points = []
    for depth in (1, 2):
        loss = np.array([[1e-28, 2e-28, 0.5, 0.6]])  # beta = 1 converged to roundoff, beta = 4 not
        points.append(({"index": depth, "network.depth": depth, "dynamics.beta": "1|4"}, cfg,
                       {"loss": loss, "beta": np.array([1.0, 1.0, 4.0, 4.0])}))
    fig = _fig_overview(points, ["network.depth", "dynamics.beta"], {"network.depth": "depth", "dynamics.beta": "beta"})
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("beta$=1" in s for s in labels) and any("beta$=4" in s for s in labels), labels
    assert any("roundoff floor" in s for s in labels)
    ys = np.concatenate([ln.get_ydata() for ln in ax.get_lines() if ln.get_label().startswith("$")])
    assert ys.min() >= LOSS_FLOOR and np.isclose(ys.max(), 0.55)  # never averaged across betas
    plt.close(fig)


def test_bias_check_from_the_command_line(tmp_path, capsys):
    import yaml

    cfg = {"network": {"depth": 2, "width": 1, "init": "balanced", "scale": 0.8},
           "energy": {"type": "weight_decay", "alpha": 1.0},
           "dynamics": {"scheme": "rle", "beta": 1.0, "ensemble": 200, "steps": 200, "step_size": 0.02, "seed": 2},
           "observers": {"every": 10}, "output": {"figures": False}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    assert cli.main(["run", str(path), "--out", str(out), "--quiet", "--bias-check"]) == 0
    printed = capsys.readouterr().out
    assert "m0 (h->0)" in printed and "E||X||^2" in printed
    with open(out / "bias_check.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["observable"] for r in rows] == ["E||X||^2", "E s_max", "E s_min", "P(det X > 0)"]
    # the rerun used h/2 over the same time, inside the run's own folder
    half = R.read_config(str(out / "bias_check_h2"))
    assert half["dynamics"]["step_size"] == 0.01 and half["dynamics"]["steps"] == 400
    for r in rows[:3]:
        m1, m2, m0 = float(r["value_h"]), float(r["value_h2"]), float(r["extrapolated"])
        assert m0 == pytest.approx(2 * m2 - m1)  # first order (RLE): Richardson with p = 1
        assert float(r["se_extrapolated"]) > 0 and np.isfinite(float(r["reference"]))
    # not for studies, not with --resume
    study = dict(cfg, study={"figure": "auto", "variants": [{"label": "a", "set": {}}]})
    path.write_text(yaml.safe_dump(study))
    assert cli.main(["run", str(path), "--out", str(tmp_path / "s"), "--quiet", "--bias-check"]) == 2
    assert cli.main(["run", "--resume", str(out), "--bias-check"]) == 2
