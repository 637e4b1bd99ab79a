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
    r = mod.razin_cohen(tmp_path, t_end=3.0)
    assert r["w11"] > 0.01 and r["det"] > 0  # |w11| leaves its start, det X stays positive
    a = mod.arora(tmp_path, size=6, rank=1, seeds=1, steps=50, depths=(2, 3), counts=[12, 20])
    assert set(a["results"]) == {"depth 2", "depth 3", "min nuclear norm"}
    v = mod.varre(tmp_path, steps=40, saves=4, B=2)
    assert len(v["final"]) == 2
    assert {p.name for p in tmp_path.iterdir()} == {"razin_cohen.png", "arora_completion.png", "varre_label_noise.png"}
