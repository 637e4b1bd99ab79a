"""The YAML configuration of a dlnsim run: schema, defaults, strict validation, overrides.

A config is a mapping of sections (network, energy, dynamics, observers, device, output, study),
each a mapping of keys. `SCHEMA` below is the single source of truth: every key has a default
and a one-line doc, and `configs/reference.yaml` is `reference_yaml()` written out (a test keeps
them in sync). Conventions:

- `load_config(path_or_dict, overrides=())` returns the *resolved* config: every default filled,
  derived values made explicit (widths, steps, observers.every, absolute file paths), so the copy
  written to a result folder reproduces the run on its own.
- Any mistake raises `ConfigError` (a ValueError) with ONE line that names the key path and the
  fix, e.g. ``dynamics.beta: must be > 0, got -1 (set a positive inverse temperature)``; unknown
  keys and choice values get a did-you-mean (difflib).
- Overrides `--set dynamics.beta=10` are dotted paths; the value is parsed with yaml.safe_load.
- A config with `study.variants` is several runs of one base config, each with a few dotted
  overrides (e.g. one per depth); they share one result folder and a comparison figure.

The value checkers are dlnsim.options; the rules that tie keys together ask the registries
(dlnsim.dynamics.SCHEMES, dlnsim.energies.ENERGIES, dlnsim.observe.OBSERVABLES) and the theory
decisions of dlnsim.run_theory, never a list of names kept here.
"""
from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass
from typing import Any

import torch
import yaml

from .dynamics import INFINITE_DEPTH_SCHEMES
from .dynamics import SCHEMES as SCHEME_CLASSES
from .dynamics import scheme_class
from .energies import ENERGIES as ENERGY_CLASSES
from .energies import check_target_file
from .network import read_weight_file
from .observe import ENTROPY_MEASURED_AUTO_MAX, OBSERVABLES
from .options import (  # noqa: F401  (re-exported: the checkers were defined here before)
    Bool,
    Choice,
    ConfigError,
    Int,
    Mapping,
    Matrix,
    NameList,
    Num,
    NumList,
    NumsOrMatrix,
    Option,
    PosInt,
    Str,
    Variants,
    Widths,
    did_you_mean as _did_you_mean,
    fail as _fail,
    show as _show,
)
from .resources import MAX_STEPS, check_memory, check_threads, step_count
from .run_theory import reference_flow_applies
from .field_runs import FIELD_NAMES, check_config as _field_rules
from .safe_io import FileRefused, load_yaml_text
from .safe_paths import check_name, safe_stem

__all__ = [
    "ConfigError",
    "SCHEMA",
    "SCHEMES",
    "FIGURE_KINDS",
    "load_config",
    "set_key",
    "validate",
    "defaults",
    "variant_configs",
    "reference_yaml",
    "parse_override",
    "input_files",
]

# Names of dynamics.scheme and energy.type: the registries' keys (dlnsim.dynamics.SCHEMES, dlnsim.energies.ENERGIES).
SCHEMES = tuple(SCHEME_CLASSES)
ENERGIES = tuple(ENERGY_CLASSES)
INITS = ("balanced", "gaussian", "orthogonal", "identity", "residual", "file", "balance_from_gaussian")
FIGURE_KINDS = ("auto", "overlay", "saxe_modes", "flows", "entropy_init", "stationary", "free_energy", "completion",
                "fields", "infinite_depth", "balancing", "sgd_comparison")


@dataclass(frozen=True)
class _Depth:
    """network.depth: a positive integer, or inf (.inf / inf in YAML) for the infinite-depth limit."""

    def __call__(self, v, path):
        if v is None:
            return None
        if v == math.inf or (isinstance(v, str) and v.strip().lower() in ("inf", ".inf")):
            return math.inf
        return PosInt()(v, path)


SEED_MAX = 2**64 - 1  # torch.Generator.manual_seed takes 64-bit seeds
MAX_DEPTH = 10**6  # beyond this even a list of widths is large; no run of such depth fits in memory anyway

O = Option
SCHEMA: dict[str, dict[str, Option]] = {
    "network": {
        "widths": O(None, "[d_0, ..., d_N] (input first); null: depth+1 copies of width", Widths()),
        "depth": O(None, "N, the number of layers, when widths is null (null: 2); inf: the infinite-depth limit of the end-to-end schemes (time_scale: depth; the network, widths [d, d], only draws X(0))",
                   _Depth()),
        "width": O(None, "d, the common width, when widths is null (null: 2)", PosInt()),
        "init": O("balanced", "balanced (any widths: rank <= min width) | gaussian | orthogonal | identity | residual (scale I + std N(0,1)) | file | balance_from_gaussian (gaussian weights flowed along their fiber to its balanced point)", Choice(INITS)),
        "scale": O(1.0, "balanced: singular values of X(0) when spectrum is null; gaussian: std x sqrt(d_in); orthogonal/identity: factor",
                   Num(gt=0, hint="a positive scale of the initial weights")),
        "spectrum": O(None, "balanced: singular values of X(0) (list of d numbers >= 0; rectangular widths: 1 to min(widths) numbers, a low-rank start); null: all equal to scale",
                      NumList(ge=0, nullable=True)),
        "std": O(None, "gaussian: i.i.d. N(0, std^2) entries (instead of std = scale / sqrt(d_in)); residual: std of the perturbation of scale * I",
                 Num(ge=0, nullable=True)),
        "target": O(None, "balanced: X(0) = null (random U,V, spectrum) | aligned (singular vectors of energy.target: the Saxe setting) | gaussian (scale * N(0,1/d)) | a matrix",
                    Matrix(words=("aligned", "gaussian"), nullable=True)),
        "file": O(None, "init: file: .pt (list of tensors W_1..W_N) or .npz (W1..WN), each (d_p, d_{p-1}) or (B, d_p, d_{p-1})",
                  Str(nullable=True)),
        "field": O("real", "number system of the weights: real | complex | quaternion (docs/theory.md §13; complex/quaternion: "
                   "square widths, init balanced|gaussian, matrix_regression, gradient_descent|gradient_flow|end_to_end_flow|free_energy_flow)",
                   Choice(FIELD_NAMES)),
    },
    "energy": {
        "type": O("matrix_regression", "matrix_regression 1/2||X-Phi||^2 | linear_regression 1/(2n)||XA-Y||^2 | matrix_completion 1/2||mask o (X-Phi)||^2 | weight_decay alpha/2||X||^2",
                  Choice(ENERGIES)),
        "target": O("random", "Phi: random (U diag(spectrum) V^T, Haar U, V from energy.seed) | diag (diag(spectrum)) | identity | file (energy.target_file) | a matrix (d_N x d_0)",
                    Matrix(words=("random", "diag", "identity", "file"))),
        "target_file": O(None, "target: file: Phi from a .npy (no pickles), .csv or .txt file of shape (d_N, d_0); relative to the config file; its SHA-256 goes to meta.json", Str(nullable=True)),
        "spectrum": O(None, "singular values of a random target / diagonal of a diag target; null: (r, r-1, ..., 1) for random, ones for diag",
                      NumList(ge=0, nullable=True)),
        "rank": O(None, "random target: its rank k <= min(d_N, d_0) (spectrum then lists k values, default ones); null: full rank",
                  Int(ge=1, nullable=True)),
        "seed": O(0, "seed of the random target and of synthetic regression data (independent of dynamics.seed)", Int(ge=0, le=SEED_MAX)),
        "mask": O(None, "matrix_completion: observed entries: diag | offdiag | random (uniform, mask_fraction or mask_count) | file (energy.mask_file) | a 0/1 matrix (d_N x d_0)",
                  Matrix(words=("diag", "offdiag", "random", "file"), nullable=True)),
        "mask_file": O(None, "mask: file: a 0/1 matrix (d_N, d_0) from a .npy (no pickles), .csv or .txt file; relative to the config file; SHA-256 in meta.json", Str(nullable=True)),
        "mask_fraction": O(None, "mask: random: the observed share of the entries, in (0, 1]", Num(gt=0, nullable=True)),
        "mask_count": O(None, "mask: random: the number of observed entries (instead of mask_fraction)", Int(ge=1, nullable=True)),
        "mask_seed": O(None, "mask: random: seed of the mask (null: 0; independent of energy.seed and dynamics.seed)", Int(ge=0, le=SEED_MAX, nullable=True)),
        "mask_per_trajectory": O(None, "mask: random: true draws one mask per trajectory (a batch of masks), false/null one for all", Choice(("true", "false"), nullable=True)),
        "alpha": O(1.0, "weight_decay: alpha in alpha/2 ||X||^2", Num(gt=0, hint="a positive weight-decay strength")),
        "confinement": O(None, "c in c/2 ||X||_F^2 added to the energy (null: none; not with weight_decay, which is that term): "
                         "makes the Gibbs law exp(-beta E + S) of an energy flat in some directions (matrix_completion) normalizable",
                         Num(gt=0, nullable=True, hint="a positive confinement strength, or null")),
        "n_samples": O(100, "linear_regression synthetic data: number of samples n (inputs A ~ N(0, 1), outputs Y = Phi A + noise)",
                       Int(ge=1)),
        "noise": O(0.0, "noise std: linear_regression synthetic data: label noise on the outputs (train and test); matrix_completion: observation noise, "
                   "observed = mask o (Phi + noise N(0,1)) (test errors stay against the clean Phi)", Num(ge=0)),
        "noise_seed": O(None, "matrix_completion with noise > 0: seed of the observation noise (null: energy.seed + 1)", Int(ge=0, le=SEED_MAX, nullable=True)),
        "input_cov": O(None, "linear_regression synthetic data: covariance of the inputs a ~ N(0, input_cov): d_0 variances (diagonal) or a d_0 x d_0 PSD matrix; null: identity", NumsOrMatrix()),
        "n_test": O(None, "linear_regression synthetic data: held-out samples drawn from the same law as the n_samples training ones (observable regression_error)", Int(ge=1, nullable=True)),
        "test_fraction": O(None, "linear_regression: hold out this share (in (0, 1)) of the training data, generated or given, chosen at random (instead of n_test or test files)", Num(gt=0, nullable=True)),
        "split_seed": O(None, "linear_regression with test_fraction: seed of the random split (null: energy.seed + 2)", Int(ge=0, le=SEED_MAX, nullable=True)),
        "data": O(None, "linear_regression: .npz file with inputs (d_0, n) and outputs (d_N, n), optionally test_inputs (d_0, m) and test_outputs (d_N, m), instead of synthetic data",
                  Str(nullable=True)),
        "train_inputs": O(None, "linear_regression: training inputs A (d_0, n; columns are samples) from .npy, .csv or .txt (with train_outputs; instead of energy.data)", Str(nullable=True)),
        "train_outputs": O(None, "linear_regression: training outputs Y (d_N, n), .npy, .csv or .txt", Str(nullable=True)),
        "test_inputs": O(None, "linear_regression: held-out inputs (d_0, m), .npy, .csv or .txt (with test_outputs and train_inputs)", Str(nullable=True)),
        "test_outputs": O(None, "linear_regression: held-out outputs (d_N, m), .npy, .csv or .txt", Str(nullable=True)),
    },
    "dynamics": {
        "scheme": O("gradient_flow", " | ".join(SCHEMES), Choice(SCHEMES)),
        "step_size": O(0.01, "h, the time step (> 0)", Num(gt=0, hint="the time step h must be positive")),
        "time": O(None, "time horizon T (steps = round(T / h)); give time or steps", Num(gt=0, nullable=True)),
        "steps": O(None, "number of steps (null: from time; 1000 when neither is given)", Int(ge=1, nullable=True)),
        "beta": O(None, "inverse temperature (> 0), or a list of them run side by side in one batch; null: none (needed by Langevin, RLE and free_energy_flow)",
                  NumList(gt=0, nullable=True, scalar_ok=True, hint="set a positive inverse temperature")),
        "ensemble": O(1, "B, trajectories per beta, run as one batch", Int(ge=1, hint="the ensemble size is at least 1")),
        "seed": O(0, "seed of the torch.Generator used for the initialisation and all noise", Int(ge=0, le=SEED_MAX)),
        "time_scale": O("none", "none (A as written) | depth (A/N, the Cohen-Menon-Veraszto normalisation; end-to-end schemes only)",
                        Choice(("none", "depth"))),
        "theory": O("auto", "integrate the end-to-end flow alongside deterministic parameter schemes with square widths (reference_* arrays): auto (only when a figure or observers.include uses it) | true | false",
                    Choice(("auto", "true", "false"))),
        "options": O({}, "extra keyword options of the scheme class: Langevin safeguards and det-sign components (langevin_projected, langevin_metropolis: keep_component, reflect_every; rle: chart, keep_component; rle_metropolis: keep_component; docs/theory.md section 8); for gradient_flow, end_to_end_flow, free_energy_flow: method (rk4: fixed step h | dopri5: adaptive Dormand-Prince 5(4) between save-grid points) with rtol (1e-9), atol (1e-12), max_substeps (10000 per step); for sgd: batch_size (null: full batch), replacement, label_noise, weight_decay, momentum, schedule (constant | step | cosine) with warmup_steps, step_every, gamma, total_steps, min_factor", Mapping()),
    },
    "observers": {
        "every": O(None, "save every k steps (null: about 200 save points)", Int(ge=1, nullable=True)),
        "include": O(None, "observables to record (null: all that apply, except "
                   + ", ".join(k for k, o in OBSERVABLES.items() if not o.default)
                   + "; loss is always recorded): " + ", ".join(OBSERVABLES),
                     NameList(tuple(OBSERVABLES))),
        "entropy_measured": O("auto", f"record S_measured (Gram determinant): auto (when (N-1)d(d-1)/2 <= {ENTROPY_MEASURED_AUTO_MAX}) | true | false; overrides include",
                              Choice(("auto", "true", "false"))),
    },
    "device": {
        "device": O("cpu", "cpu | cuda | auto (cuda when available)", Choice(("cpu", "cuda", "auto"))),
        "dtype": O("float64", "float64 | float32 (float64 recommended: balancedness drift is O(h^2) per step)",
                   Choice(("float64", "float32"))),
        "threads": O(None, "torch CPU threads (null: torch's default), at most the CPUs available", Int(ge=1, nullable=True)),
        "max_memory_gb": O(None, "refuse a run whose memory estimate exceeds this many GiB (null: 80% of the machine's memory, or of the GPU's)",
                           Num(gt=0, nullable=True)),
    },
    "output": {
        "dir": O("results", "parent folder of result folders (relative to the working directory)", Str()),
        "name": O(None, "result folder name prefix (null: the config file's stem): 1-100 of A-Z a-z 0-9 . _ - + = , (starting with a letter or digit); the folder is <dir>/<name>-<timestamp>",
                  Str(nullable=True)),
        "checkpoint_every": O(50, "write checkpoint.pt every k save points (0: only on interrupt)", Int(ge=0)),
        "figures": O(True, "draw figures at the end of the run", Bool()),
        "formats": O(["png", "pdf"], "figure formats", NameList(("png", "pdf"), nullable=False)),
        "metrics": O("auto", "metrics.csv: full (one row per save point x trajectory) | summary (one row per save point x quantity [x beta]: "
                     "ensemble n, mean, std, min, q05, q25, median, q75, q95, max) | off | auto (full up to 100000 rows = saves x trajectories, summary above)",
                     Choice(("auto", "full", "summary", "off"))),
        "metrics_every": O(1, "metrics.csv keeps every k-th save point (0, k, 2k, ... and the last), full or summary; arrays.npz keeps them all", Int(ge=1)),
        "records": O("auto", "where the records grow during a run: memory | disk (records/*.npy chunks, bounded memory; folded into arrays.npz at the end) | "
                     "auto (disk when the records would exceed 256 MiB)", Choice(("auto", "memory", "disk"))),
        "showcase": O(None, "also copy the headline figure (PNG) to this path, inside <output.dir>/showcase/ (e.g. results/showcase/saxe_modes.png; elsewhere only with --allow-showcase-anywhere)",
                      Str(nullable=True)),
    },
    "study": {
        "variants": O([], "several runs in one folder: a list of {label: name, set: {dotted.key: value}} applied to this config",
                      Variants()),
        "figure": O("auto", "comparison figure of a study: " + " | ".join(FIGURE_KINDS), Choice(FIGURE_KINDS)),
    },
}
del O


def defaults() -> dict:
    """A config with every key at its default (unresolved: derived values still null)."""
    return {sec: {k: copy.deepcopy(o.default) for k, o in opts.items()} for sec, opts in SCHEMA.items()}


def _option(path: str) -> Option:
    parts = path.split(".")
    if parts[0] not in SCHEMA:
        _fail(parts[0], f"unknown section; {_did_you_mean(parts[0], SCHEMA)}")
    if len(parts) == 3 and parts[:2] == ["dynamics", "options"] and parts[2]:
        return SCHEMA["dynamics"]["options"]  # one scheme option (checked by the scheme's option_spec)
    if len(parts) != 2:
        _fail(path, f"give a key as section.key, e.g. {parts[0]}.{next(iter(SCHEMA[parts[0]]))}")
    if parts[1] not in SCHEMA[parts[0]]:
        _fail(path, f"unknown key; {_did_you_mean(parts[1], SCHEMA[parts[0]])}")
    return SCHEMA[parts[0]][parts[1]]


def parse_override(text: str) -> tuple[str, Any]:
    """'dynamics.beta=10' -> ('dynamics.beta', 10): the value is parsed by yaml.safe_load."""
    if "=" not in text:
        raise ConfigError(f"--set {text}: expected KEY=VALUE, e.g. dynamics.beta=10")
    key, raw = text.split("=", 1)
    try:
        value = load_yaml_text(raw, f"--set {key}") if raw.strip() else None  # strict: no alias bombs, no duplicate keys
    except FileRefused as e:
        raise ConfigError(str(e)) from None
    return key.strip(), value


def set_key(cfg: dict, dotted: str, value) -> dict:
    """Set cfg[section][key] = value in place (unknown section or key: ConfigError); returns cfg.

    dynamics.options.<name> sets one scheme option and keeps the others (an override or sweep axis
    such as dynamics.options.batch_size); the option name is checked with the scheme's options."""
    _option(dotted)
    if dotted.count(".") == 2:
        if not isinstance(cfg.get("dynamics"), dict):
            cfg["dynamics"] = {}
        opts = cfg["dynamics"].get("options")
        cfg["dynamics"]["options"] = dict(opts if isinstance(opts, dict) else {}, **{dotted.split(".")[2]: value})
        return cfg
    sec, key = dotted.split(".")
    if not isinstance(cfg.get(sec), dict):
        cfg[sec] = {}
    cfg[sec][key] = value
    return cfg


def _yaml_reason(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else str(problem)


# Config keys holding file paths; relative paths are taken relative to the YAML file naming them.
PATH_KEYS = (("network", "file"), ("energy", "data"), ("energy", "target_file"), ("energy", "mask_file"),
             ("energy", "train_inputs"), ("energy", "train_outputs"), ("energy", "test_inputs"), ("energy", "test_outputs"))


def input_files(cfg: dict) -> dict:
    """{dotted key: {path, bytes, sha256}} of every file a (resolved) config reads (PATH_KEYS), for
    meta.json: with config.yaml (absolute paths) it says exactly which data a run used."""
    from .safe_io import file_record

    paths = {f"{sec}.{key}": (cfg.get(sec) or {}).get(key) for sec, key in PATH_KEYS}
    return {k: file_record(p) for k, p in paths.items() if isinstance(p, str) and os.path.isfile(p)}


def read_yaml(path: str, what: str = "config file") -> dict:
    """Read a YAML mapping from `path`, or raise ConfigError with a one-line reason (strict YAML:
    duplicate keys, alias bombs, deep nesting and binary files are refused; dlnsim.safe_io)."""
    from .safe_io import FileRefused, load_yaml_file

    try:
        data = load_yaml_file(path, what)
    except FileRefused as e:
        raise ConfigError(str(e)) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level of a {what} must be a mapping, got {type(data).__name__}")
    return data


def absolutize_paths(raw: dict, base_dir: str) -> dict:
    """Make the relative file paths of a raw config (PATH_KEYS) absolute, relative to base_dir; in place."""
    for sec, key in PATH_KEYS:
        v = (raw.get(sec) or {}).get(key)
        if isinstance(v, str) and v and not os.path.isabs(v):
            raw[sec][key] = os.path.normpath(os.path.join(base_dir, v))
    return raw


def load_config(path_or_dict, overrides=()) -> dict:
    """Read a YAML file (or take a dict), apply dotted overrides, validate and resolve.

    overrides: strings 'section.key=value' (value parsed by yaml.safe_load) or (key, value) pairs.
    Relative file paths in the config (PATH_KEYS: network.file, energy.data, energy.target_file,
    energy.train_inputs, ...) are taken relative to the config file and made absolute. Returns the resolved config (a new dict).
    """
    if isinstance(path_or_dict, dict):
        raw, base_dir, stem = copy.deepcopy(path_or_dict), os.getcwd(), "run"
    else:
        path = os.fspath(path_or_dict)
        raw = read_yaml(path)
        base_dir = os.path.dirname(os.path.abspath(path))
        stem = os.path.splitext(os.path.basename(path))[0]
    for sec, body in raw.items():
        if sec not in SCHEMA:
            _fail(str(sec), f"unknown section; {_did_you_mean(sec, SCHEMA)}")
        if body is not None and not isinstance(body, dict):
            _fail(sec, f"must be a mapping of keys, got {_show(body)}")
    for ov in overrides:
        key, value = parse_override(ov) if isinstance(ov, str) else ov
        set_key(raw, key, value)
    absolutize_paths(raw, base_dir)
    if (raw.get("output") or {}).get("name") is None:
        raw.setdefault("output", {})
        raw["output"] = dict(raw["output"] or {}, name=safe_stem(stem))
    return validate(raw)


def validate(cfg: dict) -> dict:
    """Check every key of `cfg` and resolve derived values; returns a new, fully resolved config.

    A study (study.variants non-empty) is returned with defaults filled but derived keys as given:
    each variant is resolved on its own (see `variant_configs`), so a variant may change the depth
    or the scheme. Raises ConfigError (one line, naming the key path) on the first mistake.
    """
    if not isinstance(cfg, dict):
        raise ConfigError(f"config: must be a mapping of sections, got {type(cfg).__name__}")
    out = {}
    for sec, body in cfg.items():
        if sec not in SCHEMA:
            _fail(str(sec), f"unknown section; {_did_you_mean(sec, SCHEMA)}")
        if body is not None and not isinstance(body, dict):
            _fail(sec, f"must be a mapping of keys, got {_show(body)}")
        for key in body or {}:
            if key not in SCHEMA[sec]:
                _fail(f"{sec}.{key}", f"unknown key; {_did_you_mean(key, SCHEMA[sec])}")
    for sec, opts in SCHEMA.items():
        body = cfg.get(sec) or {}
        out[sec] = {k: o.check(copy.deepcopy(body.get(k, o.default)), f"{sec}.{k}") for k, o in opts.items()}
    if out["output"]["name"] is not None:
        _user_error(check_name, "output.name", out["output"]["name"])
    for i, var in enumerate(out["study"]["variants"]):
        _user_error(check_name, f"study.variants[{i}].label", var["label"])
    if out["study"]["variants"]:
        variant_configs(out)  # validates every variant
    else:
        _resolve(out)
    return out


def _user_error(check, *args):
    """check(*args), its ValueError turned into a ConfigError (the message already names the key)."""
    try:
        return check(*args)
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(str(e)) from None


def variant_configs(cfg: dict) -> list[tuple[str, dict]]:
    """[(label, resolved config)] of a study, one per variant (study section emptied); [] for a run."""
    out = []
    for i, var in enumerate(cfg["study"]["variants"]):
        sub = {k: copy.deepcopy(v) for k, v in cfg.items() if k != "study"}
        try:
            for k, v in var["set"].items():
                set_key(sub, k, v)
            sub = validate(sub)
        except ConfigError as e:
            raise ConfigError(f"study.variants[{i}] ({var['label']}): {e}") from None
        out.append((var["label"], sub))
    return out


def _resolve(c: dict) -> None:
    """Resolve derived values in place (widths, steps, save interval, options) and apply the rules
    that tie keys together; each section's rules are one function, asking the registries."""
    _resolve_network(c["network"], c["energy"])
    _energy_rules(c["energy"], c["network"]["widths"])
    _resolve_dynamics(c)
    _resolve_observers(c)
    _field_rules(c)
    if c["energy"]["confinement"] is not None and c["network"].get("field", "real") != "real":
        _fail("energy.confinement", "applies to real networks only (network.field: real)")
    if c["device"]["device"] == "cuda":
        if not torch.cuda.is_available():
            _fail("device.device", "cuda was requested but no CUDA device is available; use cpu or auto")
    _user_error(check_threads, c["device"]["threads"])
    _user_error(check_memory, c)  # before anything is allocated: estimate against the limit


def _widths(net: dict) -> list[int]:
    """network.widths from widths, depth/width, or the weight file, checked against each other."""
    file_widths = None
    if net["init"] == "file":
        if net["file"] is None:
            _fail("network.file", "init is 'file': give the path of a .pt or .npz file of weights W_1..W_N")
        file_widths = _file_widths(net["file"])
    elif net["file"] is not None:
        _fail("network.file", f"is only used with network.init: file (init is {net['init']!r}); remove it or set init: file")
    if net["depth"] == math.inf:
        w = net["widths"]
        if (w is not None and (len(w) != 2 or w[0] != w[1])) or net["init"] in ("file", "balance_from_gaussian"):
            key = "network.init" if w is None or (len(w) == 2 and w[0] == w[1]) else "network.widths"
            _fail(key, "depth inf describes only X(0) (widths [d, d]): give network.width, and init balanced, gaussian, orthogonal or identity")
        width = w[0] if w is not None else (2 if net["width"] is None else net["width"])
        if net["width"] is not None and net["width"] != width:
            _fail("network.width", f"is {net['width']} but network.widths is {w}; give only one")
        return [width, width]
    widths = net["widths"] or file_widths
    if widths is None:
        depth = 2 if net["depth"] is None else net["depth"]
        if depth > MAX_DEPTH:
            _fail("network.depth", f"{depth} is more than {MAX_DEPTH} layers, far beyond any memory; reduce network.depth")
        width = 2 if net["width"] is None else net["width"]
        widths = [width] * (depth + 1)
    if file_widths is not None and widths != file_widths:
        _fail("network.widths", f"{widths} do not match the weights in network.file, which chain as {file_widths}")
    if net["depth"] is not None and net["depth"] != len(widths) - 1:
        _fail("network.depth", f"is {net['depth']} but network.widths {widths} has depth {len(widths) - 1}; give only one")
    if net["width"] is not None and any(w != net["width"] for w in widths):
        _fail("network.width", f"is {net['width']} but network.widths is {widths}; give only one")
    return widths


def _resolve_network(net: dict, en: dict) -> None:
    widths = _widths(net)
    square = all(w == widths[0] for w in widths)
    d_in, d_out = widths[0], widths[-1]
    net["widths"], net["depth"] = widths, (math.inf if net["depth"] == math.inf else len(widths) - 1)
    net["width"] = widths[0] if square else None
    if net["init"] == "balance_from_gaussian" and not square:
        _fail("network.init", f"'balance_from_gaussian' needs equal widths (the balanced manifold is for square width), got widths {widths}; use gaussian or orthogonal")
    if net["init"] == "balanced" and not square and net["target"] in ("gaussian", "aligned"):
        _fail("network.target", f"{net['target']!r} is for square widths; with widths {widths} give X(0) as a matrix of rank <= {min(widths)} or null (random, spectrum)")
    if net["std"] is not None and net["init"] not in ("gaussian", "residual"):
        _fail("network.std", f"only applies to init: gaussian or residual (init is {net['init']!r}); use scale")
    if net["init"] == "residual" and net["std"] is None:
        _fail("network.std", "init: residual (W_p = scale I + std N(0, 1)) needs std, e.g. 0.01")
    if net["spectrum"] is not None:
        if net["init"] != "balanced":
            _fail("network.spectrum", f"only applies to init: balanced (init is {net['init']!r})")
        if square and len(net["spectrum"]) != widths[0]:
            _fail("network.spectrum", f"needs {widths[0]} singular values (width d = {widths[0]}), got {len(net['spectrum'])}")
        if not square and not 1 <= len(net["spectrum"]) <= min(widths):
            _fail("network.spectrum", f"needs 1 to min(widths) = {min(widths)} singular values for widths {widths}, got {len(net['spectrum'])}")
    tgt = net["target"]
    if tgt is not None:
        if net["init"] != "balanced":
            _fail("network.target", f"only applies to init: balanced (init is {net['init']!r})")
        if isinstance(tgt, list) and (len(tgt), len(tgt[0])) != (d_out, d_in):
            _fail("network.target", f"X(0) must be {d_out}x{d_in} for widths {widths}, got {len(tgt)}x{len(tgt[0])}")
        aligned = [k for k, cls in ENERGY_CLASSES.items() if cls.aligned_start]
        if tgt == "aligned" and en["type"] not in aligned:
            _fail("network.target", f"'aligned' needs an energy with a target matrix ({', '.join(aligned)}), energy.type is {en['type']!r}")


def _energy_rules(en: dict, widths: list[int]) -> None:
    """Rules of the energy section: the shared target keys here, each energy's own in its check_config."""
    d_in, d_out = widths[0], widths[-1]
    t = en["target"]
    if isinstance(t, list) and (len(t), len(t[0])) != (d_out, d_in):
        _fail("energy.target", f"must be d_N x d_0 = {d_out}x{d_in} for network widths {widths}, got {len(t)}x{len(t[0])}")
    if t == "identity" and d_in != d_out:
        _fail("energy.target", f"'identity' needs d_N = d_0, network widths are {widths}")
    check_target_file(en, widths, ENERGY_CLASSES[en["type"]].has_target)
    if en["noise"] > 0 and en["type"] not in ("linear_regression", "matrix_completion"):
        _fail("energy.noise", f"applies to linear_regression (label noise) and matrix_completion (observation noise), not {en['type']!r}; remove it")
    if en["rank"] is not None:
        if t != "random":
            _fail("energy.rank", f"only applies to energy.target: random (target is {t if isinstance(t, str) else 'a matrix'})")
        if en["rank"] > min(d_in, d_out):
            _fail("energy.rank", f"must be <= min(d_N, d_0) = {min(d_in, d_out)} for widths {widths}, got {en['rank']}")
    if en["spectrum"] is not None:
        if isinstance(t, list) or t in ("identity", "file"):
            _fail("energy.spectrum", "only applies to energy.target: random or diag")
        need = min(d_in, d_out) if en["rank"] is None else en["rank"]
        if len(en["spectrum"]) != need:
            what = "min(d_N, d_0)" if en["rank"] is None else "energy.rank"
            _fail("energy.spectrum", f"needs {what} = {need} values for widths {widths}, got {len(en['spectrum'])}")
    for name, cls in ENERGY_CLASSES.items():
        for key in cls.config_keys:
            if name != en["type"] and en[key] is not None:
                _fail(f"energy.{key}", f"only applies to energy.type: {name} (type is {en['type']!r})")
    if en["confinement"] is not None and en["type"] == "weight_decay":
        _fail("energy.confinement", "weight_decay already is alpha/2 ||X||^2: raise energy.alpha instead")
    ENERGY_CLASSES[en["type"]].check_config(en, widths)


def _resolve_dynamics(c: dict) -> None:
    net, dyn = c["network"], c["dynamics"]
    widths, name, h = net["widths"], dyn["scheme"], dyn["step_size"]
    if net["depth"] == math.inf:
        if name not in INFINITE_DEPTH_SCHEMES:
            _fail("dynamics.scheme", f"{name!r} has no infinite-depth limit; with network.depth: inf use {' | '.join(INFINITE_DEPTH_SCHEMES)}")
        if dyn["time_scale"] != "depth":
            _fail("dynamics.time_scale", "network.depth: inf needs time_scale: depth (time in units of N: A_N/N has a limit, A_N does not)")
    scheme = scheme_class(name, net["depth"])
    if dyn["time"] is not None:
        steps = _user_error(step_count, dyn["time"], h)
        if dyn["steps"] is not None and dyn["steps"] != steps:
            _fail("dynamics.steps", f"{dyn['steps']} conflicts with dynamics.time = {dyn['time']} / step_size {h} = {steps} steps; give only one")
    else:
        steps = 1000 if dyn["steps"] is None else dyn["steps"]
        if steps > MAX_STEPS:
            _fail("dynamics.steps", f"{steps} is more than any run can take ({MAX_STEPS:.0e}); reduce dynamics.steps")
    dyn["steps"], dyn["time"] = steps, steps * h
    if scheme.needs_beta and dyn["beta"] is None:
        _fail("dynamics.beta", f"scheme {name!r} needs an inverse temperature; set dynamics.beta (e.g. 10)")
    if scheme.square_only and not all(w == widths[0] for w in widths):
        _fail("dynamics.scheme", f"{name!r} needs square widths (the theory of the end-to-end flow and the balanced manifold), got {widths}")
    if scheme.on_manifold and net["init"] not in ("balanced", "file"):
        _fail("network.init", f"{name!r} moves on the balanced manifold; start it there with init: balanced (got {net['init']!r})")
    end_to_end = [k for k, cls in SCHEME_CLASSES.items() if cls.space == "end_to_end"]
    if dyn["time_scale"] == "depth" and scheme.space != "end_to_end":
        _fail("dynamics.time_scale", f"'depth' applies to end-to-end schemes ({', '.join(end_to_end)}), not {name!r}")
    if dyn["theory"] == "true" and not reference_flow_applies(c):
        _fail("dynamics.theory", f"the end-to-end reference flow runs alongside deterministic parameter schemes with square widths (scheme {name!r}, widths {widths}); use auto or false")
    dyn["options"] = scheme.config_options(dyn["options"])


def _resolve_observers(c: dict) -> None:
    obs, steps, widths = c["observers"], c["dynamics"]["steps"], c["network"]["widths"]
    scheme = SCHEME_CLASSES[c["dynamics"]["scheme"]]
    if obs["every"] is None:
        obs["every"] = max(1, steps // 200)
    elif obs["every"] > steps:
        _fail("observers.every", f"{obs['every']} is more than the {steps} steps of the run; save more often")
    square = all(w == widths[0] for w in widths)
    if obs["entropy_measured"] == "true" and not (square and scheme.space == "parameters"):
        _fail("observers.entropy_measured", f"needs a parameter-space scheme and square widths (scheme {scheme.name!r}, widths {widths}); use auto or false")
    asked = [n for n in (obs["include"] or ()) if n in ("entropy_formula", "entropy_measured")]
    if asked and not square:
        _fail("observers.include", f"{', '.join(asked)}: S(X) is defined for square widths only, widths are {widths}; remove them")
    if obs["include"] is not None and "free_energy" in obs["include"] and c["dynamics"]["beta"] is None:
        _fail("observers.include", "free_energy needs dynamics.beta; set it or remove free_energy")


def _file_widths(path: str) -> list[int]:
    """Widths [d_0..d_N] of a weight file; ConfigError naming network.file if unreadable or not chaining."""
    try:
        weights = read_weight_file(path)
    except ConfigError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        _fail("network.file", f"cannot read weights from {path}: {str(e).splitlines()[0]}")
    widths = [weights[0].shape[-1]]
    for p, W in enumerate(weights, start=1):
        if W.shape[-1] != widths[-1]:
            _fail("network.file", f"widths do not chain: W_{p} has shape {tuple(W.shape[-2:])} but W_{p - 1} outputs {widths[-1]} (need W_{p}.shape[-1] == W_{p - 1}.shape[-2])")
        widths.append(W.shape[-2])
    return widths


def reference_yaml() -> str:
    """The commented reference config (every key, its default and its doc), as YAML text."""
    lines = [
        "# dlnsim reference config: every key with its default and meaning.",
        "# Generated from dlnsim.config.SCHEMA by dlnsim.config.reference_yaml(); a test keeps it in sync.",
        "# Run it:  dlnsim run configs/reference.yaml     Validate:  dlnsim validate CONFIG",
        "# Override any key on the command line:  --set dynamics.beta=10",
        "",
    ]
    for sec, opts in SCHEMA.items():
        lines.append(f"{sec}:")
        for key, o in opts.items():
            val = yaml.safe_dump(o.default, default_flow_style=True).strip()
            if val.endswith("..."):
                val = val[:-3].strip()
            val = val.splitlines()[0]
            lines.append(f"  # {o.doc}")
            lines.append(f"  {key}: {val}")
        lines.append("")
    return "\n".join(lines)
