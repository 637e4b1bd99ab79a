"""Nothing escapes the output folder: names that become folders, and where figures may be copied.

- `check_name(key, value)`: a name that becomes one path component (output.name, a study variant
  label, a sweep name, a sweep point label) must be 1..MAX_NAME characters of a safe alphabet
  (ASCII letters, digits, and . _ - + = , ; starting with a letter or digit), so that it can never
  be '..', an absolute path, nest folders, hide control or bidirectional characters, or start
  like a command-line option. ValueError naming the key otherwise.
- `check_showcase(dest, output_dir, allow_anywhere)`: output.showcase copies the headline figure;
  it must be a .png inside `<output.dir>/showcase/` (results/showcase/ by default), unless the user
  passed `--allow-showcase-anywhere`; symbolic links are resolved before the check.
"""
from __future__ import annotations

import os
import re

__all__ = ["MAX_NAME", "check_name", "check_showcase", "inside", "safe_stem"]

MAX_NAME = 100  # + "-YYYYmmdd-HHMMSS-k": well below the 255 bytes a path component may have
_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=,-]*")
ALPHABET = "letters, digits and . _ - + = , (starting with a letter or digit)"


def check_name(key: str, value) -> str:
    """value, if it is a safe single path component; else ValueError('<key>: ...')."""
    if not isinstance(value, str):
        raise ValueError(f"{key}: must be a name (text), got {type(value).__name__}")
    if not value:
        raise ValueError(f"{key}: is empty; give a name of {ALPHABET}")
    if len(value) > MAX_NAME:
        raise ValueError(f"{key}: is {len(value)} characters long; give at most {MAX_NAME} ({ALPHABET})")
    if not _SAFE.fullmatch(value):
        bad = next((c for c in value if not re.fullmatch(r"[A-Za-z0-9._+=,-]", c)), None)
        why = f"contains {bad!r}" if bad is not None else f"starts with {value[0]!r}"
        raise ValueError(f"{key}: {value[:40]!r} is not a safe folder name ({why}); use {ALPHABET}")
    return value


def safe_stem(stem: str) -> str:
    """A file's stem made a safe name (the default output.name): unsafe characters become '-'."""
    name = re.sub(r"[^A-Za-z0-9._+=,-]", "-", stem)[:MAX_NAME]
    name = re.sub(r"^[^A-Za-z0-9]+", "", name)
    return name or "run"


def inside(path: str, folder: str) -> bool:
    """True if `path` (symbolic links resolved) lies inside `folder` (resolved)."""
    p, f = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([p, f]) == f and p != f


def check_showcase(dest: str | None, output_dir: str, allow_anywhere: bool = False) -> str | None:
    """The absolute showcase path, if allowed; else ValueError('output.showcase: ...')."""
    if dest is None:
        return None
    if not isinstance(dest, str) or not dest:
        raise ValueError("output.showcase: give a .png path (or null)")
    if "\x00" in dest:
        raise ValueError("output.showcase: contains a NUL character")
    if not dest.lower().endswith(".png"):
        raise ValueError(f"output.showcase: {dest!r} must be a .png file (the headline figure is a PNG)")
    path = os.path.abspath(dest)
    if allow_anywhere:
        return path
    folder = os.path.join(os.path.abspath(output_dir), "showcase")
    if not inside(path, folder):
        raise ValueError(f"output.showcase: {dest!r} is outside {folder}/; showcase figures go there "
                         "(pass --allow-showcase-anywhere to write elsewhere)")
    return path
