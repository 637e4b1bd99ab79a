"""Config values and their checkers: one-line errors that name the key path and the fix.

`Option(default, doc, check)` declares one key of a schema (the run config, a sweep's executor
section, a scheme's options); `check(value, path)` returns the normalised value or raises
`ConfigError` with ONE line, e.g. ``dynamics.beta: must be > 0, got -1 (set a positive inverse
temperature)``. Unknown names get a did-you-mean (difflib). YAML 1.1 reads `1e-3` (no dot) as a
string; numeric checkers accept such strings. Pure Python: no torch, importable by every layer.
"""
from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from typing import Any, Callable

__all__ = [
    "ConfigError", "Option", "fail", "show", "did_you_mean", "check_options",
    "Num", "Int", "Bool", "Choice", "Str", "NumList", "Matrix", "Widths", "PosInt", "Mapping", "NameList", "Variants",
]


class ConfigError(ValueError):
    """A user mistake in a config: the message is one line naming the key path and the fix."""


def fail(path: str, msg: str):
    raise ConfigError(f"{path}: {msg}")


def show(v: Any) -> str:
    s = repr(v) if isinstance(v, str) else str(v)
    return s if len(s) <= 60 else s[:57] + "..."


def did_you_mean(word: str, options) -> str:
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
        fail(path, f"must be a number, got {show(v)} ({type(v).__name__}){hint}")
    if not math.isfinite(v):
        fail(path, f"must be a finite number, got {v}{hint}")
    return float(v)


def _as_int(v, path: str, hint: str = "") -> int:
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        fail(path, f"must be an integer, got {show(v)} ({type(v).__name__}){hint}")
    return v


def _bound(v, path: str, gt=None, ge=None, hint: str = "", shown=None):
    shown = v if shown is None else shown
    if gt is not None and not v > gt:
        fail(path, f"must be > {gt}, got {show(shown)}{hint}")
    if ge is not None and not v >= ge:
        fail(path, f"must be >= {ge}, got {show(shown)}{hint}")
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
    le: int | None = None

    def __call__(self, v, path):
        if v is None and self.nullable:
            return None
        v = _bound(_as_int(v, path, _h(self.hint)), path, None, self.ge, _h(self.hint))
        if self.le is not None and v > self.le:
            fail(path, f"must be <= {self.le}, got {show(v)}{_h(self.hint)}")
        return v


@dataclass(frozen=True)
class Bool:
    def __call__(self, v, path):
        if not isinstance(v, bool):
            fail(path, f"must be true or false, got {show(v)}")
        return v


@dataclass(frozen=True)
class Choice:
    values: tuple
    nullable: bool = False
    noun: str = "value"  # "unknown <noun> 'x'; did you mean ...?"

    def __call__(self, v, path):
        if v is None and self.nullable:
            return None
        if isinstance(v, bool) and "true" in self.values:
            v = "true" if v else "false"
        if not isinstance(v, str) or v not in self.values:
            fail(path, f"unknown {self.noun} {show(v)}; {did_you_mean(v, self.values)}")
        return v


@dataclass(frozen=True)
class Str:
    nullable: bool = False

    def __call__(self, v, path):
        if v is None and self.nullable:
            return None
        if not isinstance(v, str) or not v:
            fail(path, f"must be a non-empty string, got {show(v)}")
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
            fail(path, f"must be a non-empty list of numbers, got {show(v)}{_h(self.hint)}")
        return [Num(self.gt, self.ge, hint=self.hint)(x, f"{path}[{i}]") for i, x in enumerate(v)]


@dataclass(frozen=True)
class NumsOrMatrix:
    """A non-empty list of numbers >= 0 (e.g. variances), or a matrix (list of rows), or null."""

    def __call__(self, v, path):
        if v is None:
            return None
        if isinstance(v, (list, tuple)) and v and all(isinstance(r, (list, tuple)) for r in v):
            return Matrix()(v, path)
        return NumList(ge=0)(v, path)


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
            fail(path, f"unknown value {show(v)}; {did_you_mean(v, self.words)} (or give a matrix as a list of rows)")
        if not isinstance(v, (list, tuple)) or len(v) == 0 or not all(isinstance(r, (list, tuple)) for r in v):
            words = " or one of " + ", ".join(self.words) if self.words else ""
            fail(path, f"must be a matrix given as a list of rows [[a, b], [c, d]]{words}, got {show(v)}")
        n = len(v[0])
        if n == 0 or any(len(r) != n for r in v):
            fail(path, f"rows must be non-empty and of equal length, got row lengths {[len(r) for r in v]}")
        return [[_as_number(x, f"{path}[{i}][{j}]") for j, x in enumerate(r)] for i, r in enumerate(v)]


@dataclass(frozen=True)
class Widths:
    def __call__(self, v, path):
        if v is None:
            return None
        if not isinstance(v, (list, tuple)) or len(v) < 2:
            fail(path, f"must be a list [d_0, ..., d_N] of at least two positive integers, got {show(v)}")
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
            fail(path, f"must be a mapping of option names to values, got {show(v)}")
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
            fail(path, f"must be a list of names from {', '.join(self.values)}, got {show(v)}")
        for i, x in enumerate(v):
            Choice(self.values)(x, f"{path}[{i}]")
        return list(v)


@dataclass(frozen=True)
class Variants:
    def __call__(self, v, path):
        if v is None:
            return []
        if not isinstance(v, (list, tuple)):
            fail(path, f"must be a list of {{label: ..., set: {{dotted.key: value}}}}, got {show(v)}")
        out, labels = [], set()
        for i, item in enumerate(v):
            p = f"{path}[{i}]"
            if not isinstance(item, dict):
                fail(p, f"must be a mapping {{label: ..., set: {{dotted.key: value}}}}, got {show(item)}")
            for k in item:
                if k not in ("label", "set"):
                    fail(f"{p}.{k}", f"unknown key; {did_you_mean(k, ('label', 'set'))}")
            label = Str()(item.get("label"), f"{p}.label")
            if not re.fullmatch(r"[A-Za-z0-9_.=+\-]+", label):
                fail(f"{p}.label", f"use letters, digits and _.=+- only (it names a folder), got {label!r}")
            if label in labels:
                fail(f"{p}.label", f"duplicate label {label!r}; labels must be unique")
            labels.add(label)
            sets = Mapping()(item.get("set"), f"{p}.set")
            for k in sets:
                if k.split(".")[0] == "study":
                    fail(f"{p}.set.{k}", "a variant cannot change the study section")
            out.append({"label": label, "set": sets})
        return out


@dataclass(frozen=True)
class Option:
    default: Any
    doc: str
    check: Callable[[Any, str], Any]


def check_options(values: dict, spec: dict, path: str, owner: str = "") -> dict:
    """Check a mapping of named options against a spec {name: checker or Option}; unknown names fail
    with a did-you-mean. Returns the checked values of the names given (no defaults filled)."""
    out = {}
    for k, v in values.items():
        if k not in spec:
            fail(f"{path}.{k}", f"unknown option{' of ' + owner if owner else ''}; {did_you_mean(k, spec)}")
        check = spec[k].check if isinstance(spec[k], Option) else spec[k]
        out[k] = check(v, f"{path}.{k}")
    return out
