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

YAML 1.1 reads `1e-3` (no dot) as a string; numeric options accept such strings.
"""
from __future__ import annotations

import copy
import difflib
import math
import os
import re
from dataclasses import dataclass
from typing import Any, Callable

import yaml

from .dynamics.gradient import FLOW_METHODS
from .observe import OBSERVABLES

__all__ = [
    "ConfigError",
    "SCHEMA",
    "SCHEMES",
    "STOCHASTIC_SCHEMES",
    "FIGURE_KINDS",
    "load_config",
    "set_key",
    "validate",
    "defaults",
    "variant_configs",
    "reference_yaml",
    "parse_override",
]


class ConfigError(ValueError):
    """A user mistake in a config: the message is one line naming the key path and the fix."""


# Scheme names of dynamics.scheme (see dlnsim.runner.build_scheme for the classes).
SCHEMES = (
    "gradient_descent",
    "gradient_flow",
    "end_to_end_flow",
    "free_energy_flow",
    "langevin_projected",
    "langevin_metropolis",
    "langevin_unprojected",
    "rle",
)
STOCHASTIC_SCHEMES = ("langevin_projected", "langevin_metropolis", "langevin_unprojected", "rle")
END_TO_END_SCHEMES = ("end_to_end_flow", "free_energy_flow", "rle")
FLOW_SCHEMES = ("gradient_flow", "end_to_end_flow", "free_energy_flow")
INITS = ("balanced", "gaussian", "orthogonal", "identity", "file")
ENERGIES = ("matrix_regression", "linear_regression", "matrix_completion", "weight_decay")
FIGURE_KINDS = ("auto", "overlay", "saxe_modes", "flows", "entropy_init", "stationary", "free_energy", "completion")
# Gram matrices of the measured entropy have (N-1) d(d-1)/2 rows; above this, "auto" skips them.
ENTROPY_MEASURED_AUTO_MAX = 60


def _fail(path: str, msg: str):
    raise ConfigError(f"{path}: {msg}")


def _show(v: Any) -> str:
    s = repr(v) if isinstance(v, str) else str(v)
    return s if len(s) <= 60 else s[:57] + "..."


def _did_you_mean(word: str, options) -> str:
    """'did you mean X?' by difflib similarity to the whole option or to its prefix of the same length
    (so 'langevn' finds the langevin_* family); all options tied for the best score are offered."""
    word, options = str(word), [str(o) for o in options]

    def score(opt: str) -> float:
        return max(difflib.SequenceMatcher(None, word, opt).ratio(),
                   difflib.SequenceMatcher(None, word, opt[: len(word)]).ratio() - 0.05)

    scores = {o: score(o) for o in options}
    best = max(scores.values(), default=0.0)
    if best < 0.6:
        return "choose from " + ", ".join(options)
    close = [o for o in options if scores[o] >= best - 1e-9]
    if len(close) == 1:
        return f"did you mean '{close[0]}'?"
    return "did you mean one of " + ", ".join(f"'{o}'" for o in close) + "?"


# ---------------------------------------------------------------------------------------------
# Value checkers: check(value, path) -> normalised value, or ConfigError.
# ---------------------------------------------------------------------------------------------

_NUM_STR = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _as_number(v, path: str, hint: str = "") -> float:
    if isinstance(v, str) and _NUM_STR.match(v.strip()):
        v = float(v)  # YAML 1.1 reads 1e-3 as a string
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        _fail(path, f"must be a number, got {_show(v)} ({type(v).__name__}){hint}")
    if not math.isfinite(v):
        _fail(path, f"must be a finite number, got {v}{hint}")
    return float(v)


def _as_int(v, path: str, hint: str = "") -> int:
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        _fail(path, f"must be an integer, got {_show(v)} ({type(v).__name__}){hint}")
    return v


def _bound(v, path: str, gt=None, ge=None, hint: str = "", shown=None):
    shown = v if shown is None else shown
    if gt is not None and not v > gt:
        _fail(path, f"must be > {gt}, got {_show(shown)}{hint}")
    if ge is not None and not v >= ge:
        _fail(path, f"must be >= {ge}, got {_show(shown)}{hint}")
    return v


def _h(hint: str) -> str:
    return f" ({hint})" if hint else ""


@dataclass(frozen=True)
class Num:
    gt: float | None = None
    ge: float | None = None
    nullable: bool = False
    hint: str = ""

    def __call__(self, v, path):
        if v is None and self.nullable:
            return None
        return _bound(_as_number(v, path, _h(self.hint)), path, self.gt, self.ge, _h(self.hint), shown=v)


@dataclass(frozen=True)
class Int:
    ge: int | None = None
    nullable: bool = False
    hint: str = ""

    def __call__(self, v, path):
        if v is None and self.nullable:
            return None
        return _bound(_as_int(v, path, _h(self.hint)), path, None, self.ge, _h(self.hint))


@dataclass(frozen=True)
class Bool:
    def __call__(self, v, path):
        if not isinstance(v, bool):
            _fail(path, f"must be true or false, got {_show(v)}")
        return v


@dataclass(frozen=True)
class Choice:
    values: tuple
    nullable: bool = False

    def __call__(self, v, path):
        if v is None and self.nullable:
            return None
        if isinstance(v, bool) and "true" in self.values:
            v = "true" if v else "false"
        if not isinstance(v, str) or v not in self.values:
            _fail(path, f"unknown value {_show(v)}; {_did_you_mean(v, self.values)}")
        return v


@dataclass(frozen=True)
class Str:
    nullable: bool = False

    def __call__(self, v, path):
        if v is None and self.nullable:
            return None
        if not isinstance(v, str) or not v:
            _fail(path, f"must be a non-empty string, got {_show(v)}")
        return v


@dataclass(frozen=True)
class NumList:
    """A number or a non-empty list of numbers (scalar_ok), or a list only."""

    gt: float | None = None
    ge: float | None = None
    nullable: bool = False
    scalar_ok: bool = False
    hint: str = ""

    def __call__(self, v, path):
        if v is None and self.nullable:
            return None
        if self.scalar_ok and not isinstance(v, (list, tuple)):
            return Num(self.gt, self.ge, hint=self.hint)(v, path)
        if not isinstance(v, (list, tuple)) or len(v) == 0:
            _fail(path, f"must be a non-empty list of numbers, got {_show(v)}{_h(self.hint)}")
        return [Num(self.gt, self.ge, hint=self.hint)(x, f"{path}[{i}]") for i, x in enumerate(v)]


@dataclass(frozen=True)
class Matrix:
    """A matrix as a list of equal-length lists of numbers, or one of `words`."""

    words: tuple = ()
    nullable: bool = False

    def __call__(self, v, path):
        if v is None and self.nullable:
            return None
        if isinstance(v, str):
            if v in self.words:
                return v
            _fail(path, f"unknown value {_show(v)}; {_did_you_mean(v, self.words)} (or give a matrix as a list of rows)")
        if not isinstance(v, (list, tuple)) or len(v) == 0 or not all(isinstance(r, (list, tuple)) for r in v):
            words = " or one of " + ", ".join(self.words) if self.words else ""
            _fail(path, f"must be a matrix given as a list of rows [[a, b], [c, d]]{words}, got {_show(v)}")
        n = len(v[0])
        if n == 0 or any(len(r) != n for r in v):
            _fail(path, f"rows must be non-empty and of equal length, got row lengths {[len(r) for r in v]}")
        return [[_as_number(x, f"{path}[{i}][{j}]") for j, x in enumerate(r)] for i, r in enumerate(v)]


@dataclass(frozen=True)
class Widths:
    def __call__(self, v, path):
        if v is None:
            return None
        if not isinstance(v, (list, tuple)) or len(v) < 2:
            _fail(path, f"must be a list [d_0, ..., d_N] of at least two positive integers, got {_show(v)}")
        return [_bound(_as_int(w, f"{path}[{i}]"), f"{path}[{i}]", ge=1) for i, w in enumerate(v)]


@dataclass(frozen=True)
class PosInt:
    def __call__(self, v, path):
        if v is None:
            return None
        return _bound(_as_int(v, path), path, ge=1)


@dataclass(frozen=True)
class Mapping:
    def __call__(self, v, path):
        if v is None:
            return {}
        if not isinstance(v, dict) or not all(isinstance(k, str) for k in v):
            _fail(path, f"must be a mapping of option names to values, got {_show(v)}")
        return dict(v)


@dataclass(frozen=True)
class NameList:
    values: tuple
    nullable: bool = True

    def __call__(self, v, path):
        if v is None and self.nullable:
            return None
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, (list, tuple)) or len(v) == 0:
            _fail(path, f"must be a list of names from {', '.join(self.values)}, got {_show(v)}")
        for i, x in enumerate(v):
            Choice(self.values)(x, f"{path}[{i}]")
        return list(v)


@dataclass(frozen=True)
class Variants:
    def __call__(self, v, path):
        if v is None:
            return []
        if not isinstance(v, (list, tuple)):
            _fail(path, f"must be a list of {{label: ..., set: {{dotted.key: value}}}}, got {_show(v)}")
        out, labels = [], set()
        for i, item in enumerate(v):
            p = f"{path}[{i}]"
            if not isinstance(item, dict):
                _fail(p, f"must be a mapping {{label: ..., set: {{dotted.key: value}}}}, got {_show(item)}")
            for k in item:
                if k not in ("label", "set"):
                    _fail(f"{p}.{k}", f"unknown key; {_did_you_mean(k, ('label', 'set'))}")
            label = Str()(item.get("label"), f"{p}.label")
            if not re.fullmatch(r"[A-Za-z0-9_.=+\-]+", label):
                _fail(f"{p}.label", f"use letters, digits and _.=+- only (it names a folder), got {label!r}")
            if label in labels:
                _fail(f"{p}.label", f"duplicate label {label!r}; labels must be unique")
            labels.add(label)
            sets = Mapping()(item.get("set"), f"{p}.set")
            for k in sets:
                if k.split(".")[0] == "study":
                    _fail(f"{p}.set.{k}", "a variant cannot change the study section")
            out.append({"label": label, "set": sets})
        return out


@dataclass(frozen=True)
class Option:
    default: Any
    doc: str
    check: Callable[[Any, str], Any]


O = Option
SCHEMA: dict[str, dict[str, Option]] = {
    "network": {
        "widths": O(None, "[d_0, ..., d_N] (input first); null: depth+1 copies of width", Widths()),
        "depth": O(None, "N, the number of layers, when widths is null (null: 2)", PosInt()),
        "width": O(None, "d, the common width, when widths is null (null: 2)", PosInt()),
        "init": O("balanced", "balanced | gaussian | orthogonal | identity | file", Choice(INITS)),
        "scale": O(1.0, "balanced: singular values of X(0) when spectrum is null; gaussian: std x sqrt(d_in); orthogonal/identity: factor",
                   Num(gt=0, hint="a positive scale of the initial weights")),
        "spectrum": O(None, "balanced: singular values of X(0) (list of d numbers >= 0); null: all equal to scale",
                      NumList(ge=0, nullable=True)),
        "target": O(None, "balanced: X(0) = null (random U,V, spectrum) | aligned (singular vectors of energy.target: the Saxe setting) | gaussian (scale * N(0,1/d)) | a matrix",
                    Matrix(words=("aligned", "gaussian"), nullable=True)),
        "file": O(None, "init: file: .pt (list of tensors W_1..W_N) or .npz (W1..WN), each (d_p, d_{p-1}) or (B, d_p, d_{p-1})",
                  Str(nullable=True)),
    },
    "energy": {
        "type": O("matrix_regression", "matrix_regression 1/2||X-Phi||^2 | linear_regression 1/(2n)||XA-Y||^2 | matrix_completion 1/2||mask o (X-Phi)||^2 | weight_decay alpha/2||X||^2",
                  Choice(ENERGIES)),
        "target": O("random", "Phi: random (U diag(spectrum) V^T, Haar U, V from energy.seed) | diag (diag(spectrum)) | identity | a matrix (d_N x d_0)",
                    Matrix(words=("random", "diag", "identity"))),
        "spectrum": O(None, "singular values of a random target / diagonal of a diag target; null: (r, r-1, ..., 1) for random, ones for diag",
                      NumList(ge=0, nullable=True)),
        "seed": O(0, "seed of the random target and of synthetic regression data (independent of dynamics.seed)", Int(ge=0)),
        "mask": O(None, "matrix_completion: observed entries: diag | offdiag | a 0/1 matrix (d_N x d_0)",
                  Matrix(words=("diag", "offdiag"), nullable=True)),
        "alpha": O(1.0, "weight_decay: alpha in alpha/2 ||X||^2", Num(gt=0, hint="a positive weight-decay strength")),
        "n_samples": O(100, "linear_regression synthetic data: number of samples n (inputs A ~ N(0, 1), outputs Y = Phi A + noise)",
                       Int(ge=1)),
        "noise": O(0.0, "linear_regression synthetic data: output noise std", Num(ge=0)),
        "data": O(None, "linear_regression: .npz file with inputs (d_0, n) and outputs (d_N, n) instead of synthetic data",
                  Str(nullable=True)),
    },
    "dynamics": {
        "scheme": O("gradient_flow", " | ".join(SCHEMES), Choice(SCHEMES)),
        "step_size": O(0.01, "h, the time step (> 0)", Num(gt=0, hint="the time step h must be positive")),
        "time": O(None, "time horizon T (steps = round(T / h)); give time or steps", Num(gt=0, nullable=True)),
        "steps": O(None, "number of steps (null: from time; 1000 when neither is given)", Int(ge=1, nullable=True)),
        "beta": O(None, "inverse temperature (> 0), or a list of them run side by side in one batch; null: none (needed by Langevin, RLE and free_energy_flow)",
                  NumList(gt=0, nullable=True, scalar_ok=True, hint="set a positive inverse temperature")),
        "ensemble": O(1, "B, trajectories per beta, run as one batch", Int(ge=1, hint="the ensemble size is at least 1")),
        "seed": O(0, "seed of the torch.Generator used for the initialisation and all noise", Int(ge=0)),
        "time_scale": O("none", "none (A as written) | depth (A/N, the Cohen-Menon-Veraszto normalisation; end-to-end schemes only)",
                        Choice(("none", "depth"))),
        "theory": O("auto", "integrate the end-to-end flow alongside (reference_* arrays): auto (deterministic parameter schemes, square widths) | true | false",
                    Choice(("auto", "true", "false"))),
        "options": O({}, "extra keyword options of the scheme class: Langevin safeguards; for gradient_flow, end_to_end_flow, free_energy_flow: method (rk4: fixed step h | dopri5: adaptive Dormand-Prince 5(4) between save-grid points) with rtol (1e-9), atol (1e-12), max_substeps (10000 per step)", Mapping()),
    },
    "observers": {
        "every": O(None, "save every k steps (null: about 200 save points)", Int(ge=1, nullable=True)),
        "include": O(None, "observables to record (null: all that apply, except X; loss is always recorded): " + ", ".join(OBSERVABLES),
                     NameList(OBSERVABLES)),
        "entropy_measured": O("auto", f"record S_measured (Gram determinant): auto (when (N-1)d(d-1)/2 <= {ENTROPY_MEASURED_AUTO_MAX}) | true | false; overrides include",
                              Choice(("auto", "true", "false"))),
    },
    "device": {
        "device": O("cpu", "cpu | cuda | auto (cuda when available)", Choice(("cpu", "cuda", "auto"))),
        "dtype": O("float64", "float64 | float32 (float64 recommended: balancedness drift is O(h^2) per step)",
                   Choice(("float64", "float32"))),
        "threads": O(None, "torch CPU threads (null: torch's default)", Int(ge=1, nullable=True)),
    },
    "output": {
        "dir": O("results", "parent folder of result folders (relative to the working directory)", Str()),
        "name": O(None, "result folder name prefix (null: the config file's stem); the folder is <dir>/<name>-<timestamp>",
                  Str(nullable=True)),
        "checkpoint_every": O(50, "write checkpoint.pt every k save points (0: only on interrupt)", Int(ge=0)),
        "figures": O(True, "draw figures at the end of the run", Bool()),
        "formats": O(["png", "pdf"], "figure formats", NameList(("png", "pdf"), nullable=False)),
        "showcase": O(None, "also copy the headline figure (PNG) to this path (e.g. results/showcase/saxe_modes.png)",
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
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {key}: cannot parse value {raw!r} as YAML ({_yaml_reason(e)})") from None
    return key.strip(), value


def set_key(cfg: dict, dotted: str, value) -> dict:
    """Set cfg[section][key] = value in place (unknown section or key: ConfigError); returns cfg."""
    _option(dotted)
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
PATH_KEYS = (("network", "file"), ("energy", "data"))


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
    Relative file paths in the config (network.file, energy.data) are taken relative to the
    config file and made absolute. Returns the resolved config (a new dict).
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
        raw["output"] = dict(raw["output"] or {}, name=stem)
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
    if out["study"]["variants"]:
        variant_configs(out)  # validates every variant
    else:
        _resolve(out)
    return out


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
    net, en, dyn, obs, dev = c["network"], c["energy"], c["dynamics"], c["observers"], c["device"]

    # --- network shape -------------------------------------------------------------------
    file_widths = None
    if net["init"] == "file":
        if net["file"] is None:
            _fail("network.file", "init is 'file': give the path of a .pt or .npz file of weights W_1..W_N")
        file_widths = _file_widths(net["file"])
    elif net["file"] is not None:
        _fail("network.file", f"is only used with network.init: file (init is {net['init']!r}); remove it or set init: file")
    widths = net["widths"] or file_widths
    if widths is None:
        depth = 2 if net["depth"] is None else net["depth"]
        width = 2 if net["width"] is None else net["width"]
        widths = [width] * (depth + 1)
    if file_widths is not None and widths != file_widths:
        _fail("network.widths", f"{widths} do not match the weights in network.file, which chain as {file_widths}")
    if net["depth"] is not None and net["depth"] != len(widths) - 1:
        _fail("network.depth", f"is {net['depth']} but network.widths {widths} has depth {len(widths) - 1}; give only one")
    if net["width"] is not None and any(w != net["width"] for w in widths):
        _fail("network.width", f"is {net['width']} but network.widths is {widths}; give only one")
    N = len(widths) - 1
    square = all(w == widths[0] for w in widths)
    d_in, d_out = widths[0], widths[-1]
    r = min(d_in, d_out)
    net["widths"], net["depth"] = widths, N
    net["width"] = widths[0] if square else None
    if net["init"] == "balanced" and not square:
        _fail("network.init", f"'balanced' needs equal widths (the balanced manifold is for square width), got widths {widths}; use gaussian or orthogonal")
    if net["spectrum"] is not None:
        if net["init"] != "balanced":
            _fail("network.spectrum", f"only applies to init: balanced (init is {net['init']!r})")
        if len(net["spectrum"]) != widths[0]:
            _fail("network.spectrum", f"needs {widths[0]} singular values (width d = {widths[0]}), got {len(net['spectrum'])}")
    tgt = net["target"]
    if tgt is not None:
        if net["init"] != "balanced":
            _fail("network.target", f"only applies to init: balanced (init is {net['init']!r})")
        if isinstance(tgt, list) and (len(tgt), len(tgt[0])) != (d_out, d_in):
            _fail("network.target", f"X(0) must be {d_out}x{d_in} for widths {widths}, got {len(tgt)}x{len(tgt[0])}")
        if tgt == "aligned" and en["type"] not in ("matrix_regression", "matrix_completion"):
            _fail("network.target", f"'aligned' needs an energy with a target matrix (matrix_regression, matrix_completion), energy.type is {en['type']!r}")

    # --- energy ----------------------------------------------------------------------------
    t = en["target"]
    if isinstance(t, list) and (len(t), len(t[0])) != (d_out, d_in):
        _fail("energy.target", f"must be d_N x d_0 = {d_out}x{d_in} for network widths {widths}, got {len(t)}x{len(t[0])}")
    if t == "identity" and d_in != d_out:
        _fail("energy.target", f"'identity' needs d_N = d_0, network widths are {widths}")
    if en["spectrum"] is not None:
        if isinstance(t, list) or t == "identity":
            _fail("energy.spectrum", "only applies to energy.target: random or diag")
        if len(en["spectrum"]) != r:
            _fail("energy.spectrum", f"needs min(d_N, d_0) = {r} values for widths {widths}, got {len(en['spectrum'])}")
    m = en["mask"]
    if en["type"] == "matrix_completion":
        if m is None:
            _fail("energy.mask", "matrix_completion needs the observed entries: diag | offdiag | a 0/1 matrix")
        if isinstance(m, list) and (len(m), len(m[0])) != (d_out, d_in):
            _fail("energy.mask", f"must be d_N x d_0 = {d_out}x{d_in}, got {len(m)}x{len(m[0])}")
    elif m is not None:
        _fail("energy.mask", f"only applies to energy.type: matrix_completion (type is {en['type']!r})")
    if en["data"] is not None:
        if en["type"] != "linear_regression":
            _fail("energy.data", f"only applies to energy.type: linear_regression (type is {en['type']!r})")
        _check_data_file(en["data"], d_in, d_out)

    # --- dynamics --------------------------------------------------------------------------
    scheme = dyn["scheme"]
    h = dyn["step_size"]
    if dyn["time"] is not None:
        steps = max(1, round(dyn["time"] / h))
        if dyn["steps"] is not None and dyn["steps"] != steps:
            _fail("dynamics.steps", f"{dyn['steps']} conflicts with dynamics.time = {dyn['time']} / step_size {h} = {steps} steps; give only one")
    else:
        steps = 1000 if dyn["steps"] is None else dyn["steps"]
    dyn["steps"], dyn["time"] = steps, steps * h
    needs_beta = scheme in STOCHASTIC_SCHEMES or scheme == "free_energy_flow"
    if needs_beta and dyn["beta"] is None:
        _fail("dynamics.beta", f"scheme {scheme!r} needs an inverse temperature; set dynamics.beta (e.g. 10)")
    if scheme in END_TO_END_SCHEMES or scheme in STOCHASTIC_SCHEMES[:2]:
        if not square:
            _fail("dynamics.scheme", f"{scheme!r} needs square widths (the theory of the end-to-end flow and the balanced manifold), got {widths}")
    if scheme in ("langevin_projected", "langevin_metropolis") and net["init"] not in ("balanced", "file"):
        _fail("network.init", f"{scheme!r} moves on the balanced manifold; start it there with init: balanced (got {net['init']!r})")
    if dyn["time_scale"] == "depth" and scheme not in END_TO_END_SCHEMES:
        _fail("dynamics.time_scale", f"'depth' applies to end-to-end schemes ({', '.join(END_TO_END_SCHEMES)}), not {scheme!r}")
    if dyn["theory"] == "true" and not (scheme in ("gradient_descent", "gradient_flow") and square):
        _fail("dynamics.theory", f"the end-to-end reference flow runs alongside deterministic parameter schemes with square widths (scheme {scheme!r}, widths {widths}); use auto or false")
    if scheme in FLOW_SCHEMES:
        dyn["options"] = _flow_options(dyn["options"], scheme)
    elif dyn["options"] and scheme not in STOCHASTIC_SCHEMES:
        _fail("dynamics.options", f"scheme {scheme!r} takes no options, got {sorted(dyn['options'])}")

    # --- observers ------------------------------------------------------------------------
    if obs["every"] is None:
        obs["every"] = max(1, steps // 200)
    elif obs["every"] > steps:
        _fail("observers.every", f"{obs['every']} is more than the {steps} steps of the run; save more often")
    param_space = scheme not in END_TO_END_SCHEMES
    if obs["entropy_measured"] == "true" and not (square and param_space):
        _fail("observers.entropy_measured", f"needs a parameter-space scheme and square widths (scheme {scheme!r}, widths {widths}); use auto or false")
    if obs["include"] is not None and "free_energy" in obs["include"] and dyn["beta"] is None:
        _fail("observers.include", "free_energy needs dynamics.beta; set it or remove free_energy")

    # --- device ---------------------------------------------------------------------------
    if dev["device"] == "cuda":
        import torch

        if not torch.cuda.is_available():
            _fail("device.device", "cuda was requested but no CUDA device is available; use cpu or auto")


def _file_widths(path: str) -> list[int]:
    """Widths [d_0..d_N] of a weight file; ConfigError naming network.file if unreadable or not chaining."""
    from .runner import read_weight_file  # torch-dependent: imported only when used

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


def _check_data_file(path: str, d_in: int, d_out: int) -> None:
    import numpy as np

    if not os.path.isfile(path):
        _fail("energy.data", f"no such file {path}")
    try:
        with np.load(path) as z:
            A, Y = z["inputs"], z["outputs"]
    except KeyError:
        _fail("energy.data", f"{path} must hold arrays 'inputs' (d_0, n) and 'outputs' (d_N, n)")
    except (OSError, ValueError) as e:
        _fail("energy.data", f"cannot read {path}: {str(e).splitlines()[0]}")
    if A.ndim != 2 or Y.ndim != 2 or A.shape[0] != d_in or Y.shape[0] != d_out or A.shape[1] != Y.shape[1]:
        _fail("energy.data", f"inputs {A.shape} and outputs {Y.shape} must be ({d_in}, n) and ({d_out}, n) for the network widths")


def _flow_options(opts: dict, scheme: str) -> dict:
    """dynamics.options of the deterministic flows: method (rk4 | dopri5) and dopri5's rtol, atol, max_substeps."""
    checks = {"method": Choice(FLOW_METHODS), "rtol": Num(gt=0), "atol": Num(gt=0), "max_substeps": Int(ge=1)}
    out = {}
    for k, v in opts.items():
        if k not in checks:
            _fail(f"dynamics.options.{k}", f"unknown option of scheme {scheme!r}; {_did_you_mean(k, checks)}")
        out[k] = checks[k](v, f"dynamics.options.{k}")
    extra = sorted(k for k in out if k != "method")
    if extra and out.get("method", "rk4") != "dopri5":
        _fail("dynamics.options", f"{', '.join(extra)} apply to method: dopri5 only; add method: dopri5 or remove them")
    return out


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
