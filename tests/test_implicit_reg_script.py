"""Smoke test of scripts/implicit_regularization.py at toy sizes (the full runs take minutes: see docs)."""
import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "implicit_regularization.py"


@pytest.fixture(scope="module")
def mod():
    spec = importlib.util.spec_from_file_location("implicit_regularization", SCRIPT)
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    return m


def test_reproductions_run_at_toy_size(mod, tmp_path):
    n = mod.noise_comparison(tmp_path, steps=20, saves=4, B=2)
    assert len(n["final"]) == 4 and abs(n["summary"]["vertical_fraction"]) < 1e-10
    v = mod.varre(tmp_path, steps=40, saves=4, B=2)
    assert len(v["final"]) == 2
    assert {p.name for p in tmp_path.iterdir()} == {"sgd_noise_comparison.png", "varre_label_noise.png"}
