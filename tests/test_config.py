"""The YAML config: defaults, resolution, overrides, the reference config and the showcases.

Malformed configs through the command line are in test_cli.py; here the schema is tested directly
(fast, in-process, no torch work).
"""
import glob
import os

import pytest
import yaml

from dlnsim.config import (
    SCHEMA,
    ConfigError,
    defaults,
    load_config,
    parse_override,
    reference_yaml,
    set_key,
    validate,
    variant_configs,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")


def test_defaults_resolve_to_a_complete_config():
    cfg = load_config({})
    assert cfg["network"]["widths"] == [2, 2, 2]
    assert (cfg["network"]["depth"], cfg["network"]["width"]) == (2, 2)
    assert cfg["dynamics"]["steps"] == 1000 and cfg["dynamics"]["time"] == pytest.approx(10.0)
    assert cfg["observers"]["every"] == 5  # steps // 200
    assert cfg["output"]["name"] == "run"
    for sec, opts in SCHEMA.items():
        assert set(cfg[sec]) == set(opts), sec


def test_resolution_is_idempotent():
    cfg = load_config({"network": {"depth": 4, "width": 3}, "dynamics": {"time": 2.5, "step_size": 0.05}})
    assert cfg["network"]["widths"] == [3] * 5
    assert cfg["dynamics"]["steps"] == 50
    assert validate(cfg) == cfg


def test_reference_yaml_is_in_sync_with_the_schema():
    with open(os.path.join(CONFIGS, "reference.yaml"), encoding="utf-8") as f:
        text = f.read()
    assert text == reference_yaml(), "regenerate configs/reference.yaml from dlnsim.config.reference_yaml()"
    assert yaml.safe_load(text) == defaults()
    # every key carries a doc line just above it
    for sec, opts in SCHEMA.items():
        for key, opt in opts.items():
            assert f"  # {opt.doc}\n  {key}:" in text


def test_every_config_in_configs_validates():
    paths = sorted(glob.glob(os.path.join(CONFIGS, "*.yaml")))
    checked = 0
    for path in paths:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
        if "axes" in raw or "base" in raw:
            continue  # a sweep config (dlnsim.sweep), not a run config
        checked += 1
        cfg = load_config(path)
        for label, sub in variant_configs(cfg):
            assert validate(sub) == sub, (path, label)
    assert checked >= 7  # reference + the six showcases


def test_overrides_are_parsed_as_yaml():
    assert parse_override("dynamics.beta=10") == ("dynamics.beta", 10)
    assert parse_override("dynamics.beta=[1, 2.5]") == ("dynamics.beta", [1, 2.5])
    assert parse_override("output.name=abc") == ("output.name", "abc")
    cfg = load_config({"dynamics": {"scheme": "free_energy_flow", "beta": 1.0}}, ["dynamics.beta=[1, 4]", "dynamics.ensemble=3"])
    assert cfg["dynamics"]["beta"] == [1.0, 4.0] and cfg["dynamics"]["ensemble"] == 3
    with pytest.raises(ConfigError, match=r"^dynamics\.bta: unknown key; did you mean 'beta'\?"):
        load_config({}, ["dynamics.bta=3"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("dynamics.beta")


def test_set_key_checks_the_path():
    cfg = {}
    set_key(cfg, "network.depth", 3)
    assert cfg == {"network": {"depth": 3}}
    with pytest.raises(ConfigError, match=r"^netwrk: unknown section; did you mean 'network'\?"):
        set_key(cfg, "netwrk.depth", 3)


def test_yaml_exponent_without_dot_is_accepted_as_a_number():
    # YAML 1.1 reads 1e-3 as the string '1e-3'; numeric options accept it.
    cfg = load_config(yaml.safe_load("dynamics: {step_size: 1e-3, steps: 10}"))
    assert cfg["dynamics"]["step_size"] == 1e-3


def test_variants_are_resolved_on_their_own():
    cfg = load_config({
        "network": {"width": 2, "init": "balanced"},
        "dynamics": {"time": 1.0, "step_size": 0.1},
        "study": {"variants": [{"label": "N1", "set": {"network.depth": 1}},
                               {"label": "N4", "set": {"network.depth": 4, "dynamics.step_size": 0.05}}]},
    })
    (l1, c1), (l4, c4) = variant_configs(cfg)
    assert (l1, c1["network"]["widths"]) == ("N1", [2, 2])
    assert (l4, c4["network"]["widths"], c4["dynamics"]["steps"]) == ("N4", [2] * 5, 20)
    assert "study" not in c1 or not c1["study"]["variants"]


def test_a_bad_variant_names_its_index_and_key():
    with pytest.raises(ConfigError, match=r"^study\.variants\[1\] \(b\): dynamics\.step_size: must be > 0"):
        load_config({"study": {"variants": [{"label": "a", "set": {}}, {"label": "b", "set": {"dynamics.step_size": -1}}]}})


def test_relative_file_paths_are_taken_from_the_config_folder(tmp_path):
    import numpy as np

    np.savez(tmp_path / "w.npz", W1=np.eye(2), W2=2 * np.eye(2))
    (tmp_path / "c.yaml").write_text("network: {init: file, file: w.npz}\n")
    cfg = load_config(str(tmp_path / "c.yaml"))
    assert cfg["network"]["file"] == str(tmp_path / "w.npz")
    assert cfg["network"]["widths"] == [2, 2, 2]
    assert cfg["output"]["name"] == "c"
