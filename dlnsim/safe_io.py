"""Reading files a user hands us without running code from them, and with bounded cost.

Two readers, each failing with `FileRefused` (a ValueError) whose message is ONE line naming the
file and the reason, so that the command line reports it as a user error (exit 2):

- Checkpoints (`save_tree` / `load_tree`): a tree of dicts, lists, tuples, named tuples, plain
  objects of dlnsim classes, numbers, strings, torch dtypes / devices and tensors, written as one
  uncompressed numpy .npz archive: every tensor is one array `t<i>` (its bytes, dtype and shape;
  tensor identity, i.e. two references to one tensor, is kept), and the structure is one JSON
  document (array `__tree__`, UTF-8 bytes). Loading uses `np.load(allow_pickle=False)` and
  `json.loads`: no unpickling, so a crafted file cannot run code. Objects are rebuilt only for
  classes defined in the `dlnsim` package, by `object.__new__` and attribute assignment
  (never `__init__`, `__setstate__` or `__reduce__`); every other class name is refused.
  A torch.save / pickle file (the format dlnsim used before) is recognised and refused.
- YAML (`load_yaml_file`, `load_yaml_text`): `yaml.SafeLoader` (no Python tags) made strict:
  a key given twice in one mapping is an error (YAML would keep the last silently), and the
  document is bounded before anything walks it: at most `MAX_ALIASES` aliases, `MAX_NODES`
  nodes once aliases are expanded ("billion laughs"), `MAX_DEPTH` levels of nesting, no
  recursive alias, `MAX_YAML_BYTES` bytes, UTF-8 text without NUL bytes.
- `load_torch_tensors`: torch.load(weights_only=True) (torch's restricted unpickler: tensors and
  plain containers only), every failure turned into one line.
- `load_array_file`: a numeric array from .npy (`np.load(allow_pickle=False)`), .csv (comma
  separated) or .txt (whitespace separated): a regular file (not a folder, device or pipe) of at
  most `MAX_ARRAY_BYTES` (.npy) / `MAX_TEXT_ARRAY_BYTES` (.csv, .txt: parsing costs ~10x the
  bytes in memory) bytes, checked before reading; numeric, finite, of the expected dimensions.
  `file_sha256` fingerprints such a file for the result folder (meta.json `input_files`).
"""
from __future__ import annotations

import json
import math
import os
import zipfile

import numpy as np
import yaml

__all__ = [
    "FileRefused",
    "save_tree",
    "load_tree",
    "load_yaml_file",
    "load_yaml_text",
    "load_torch_tensors",
    "MAX_ALIASES",
    "MAX_NODES",
    "MAX_DEPTH",
    "MAX_YAML_BYTES",
    "load_array_file",
    "file_sha256",
    "file_record",
    "MAX_ARRAY_BYTES",
    "MAX_TEXT_ARRAY_BYTES",
    "ARRAY_SUFFIXES",
]

FORMAT = "dlnsim-checkpoint"
FORMAT_VERSION = 1
TREE_KEY = "__tree__"
MAX_ALIASES = 100
MAX_NODES = 10**6
MAX_DEPTH = 100
MAX_YAML_BYTES = 4 * 2**20
MAX_ARRAY_BYTES = 2 * 2**30  # a data file is read whole into memory: 2 GiB of float64 is 2.7e8 numbers
MAX_TEXT_ARRAY_BYTES = 256 * 2**20
ARRAY_SUFFIXES = (".npy", ".csv", ".txt")


class FileRefused(ValueError):
    """A file that is not read: malformed, of the wrong kind, unsafe, or too large. One line."""


# ---------------------------------------------------------------------------------------------
# checkpoints: npz of tensors + a JSON tree
# ---------------------------------------------------------------------------------------------


def _class_path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _allowed_class(path: str) -> type:
    """The class named module:qualname, if it is one of dlnsim's own (imported, not executed anew)."""
    import importlib

    module, _, qualname = path.partition(":")
    if not (module == "dlnsim" or module.startswith("dlnsim.")) or not qualname or "<" in qualname:
        raise FileRefused(f"names the class {path!r}, which is not a dlnsim class")
    try:
        obj = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        raise FileRefused(f"names the class {path!r}, which this dlnsim version does not have") from None
    if not isinstance(obj, type) or issubclass(obj, BaseException):
        raise FileRefused(f"names {path!r}, which is not a plain data class")
    return obj


def _fields(obj) -> dict:
    out = dict(vars(obj)) if hasattr(obj, "__dict__") else {}
    for cls in type(obj).__mro__:
        for name in getattr(cls, "__slots__", ()):
            if name not in ("__dict__", "__weakref__") and hasattr(obj, name):
                out[name] = getattr(obj, name)
    return out


class _Encoder:
    def __init__(self):
        self.arrays: dict[str, np.ndarray] = {}
        self.tensor_ids: dict[int, int] = {}
        self.keep: list = []  # keeps encoded objects alive, so id() stays unique during the walk

    def tensor(self, t) -> dict:
        import torch

        key = id(t)
        if key not in self.tensor_ids:
            self.keep.append(t)
            i = len(self.tensor_ids)
            self.tensor_ids[key] = i
            c = t.detach().cpu().contiguous()
            try:
                self.arrays[f"t{i}"] = c.numpy()
            except TypeError:  # a dtype numpy lacks (bfloat16, ...): its raw bytes
                self.arrays[f"t{i}"] = c.reshape(-1).view(torch.uint8).numpy()
        return {"$": "tensor", "i": self.tensor_ids[key], "dtype": str(t.dtype).replace("torch.", ""),
                "shape": list(t.shape)}

    def __call__(self, obj, depth: int = 0):
        import torch

        if depth > MAX_DEPTH:
            raise TypeError("the tree is nested too deeply")
        enc = lambda v: self(v, depth + 1)  # noqa: E731
        if obj is None or isinstance(obj, (bool, str)):
            return obj
        if isinstance(obj, (int, np.integer)):
            return int(obj)
        if isinstance(obj, (float, np.floating)):
            f = float(obj)
            return f if math.isfinite(f) else {"$": "float", "v": repr(f)}
        if isinstance(obj, complex):
            return {"$": "complex", "re": enc(obj.real), "im": enc(obj.imag)}
        if isinstance(obj, torch.Tensor):
            return self.tensor(obj)
        if isinstance(obj, np.ndarray):
            if obj.dtype.hasobject:
                raise TypeError("object arrays cannot be stored")
            return {"$": "ndarray", "t": self.tensor(torch.from_numpy(np.ascontiguousarray(obj)))}
        if isinstance(obj, torch.dtype):
            return {"$": "dtype", "name": str(obj).replace("torch.", "")}
        if isinstance(obj, torch.device):
            return {"$": "device", "name": str(obj)}
        if isinstance(obj, list):
            return [enc(v) for v in obj]
        if isinstance(obj, tuple) and hasattr(obj, "_fields"):
            return {"$": "namedtuple", "class": _class_path(type(obj)), "items": [enc(v) for v in obj]}
        if type(obj) is tuple:
            return {"$": "tuple", "items": [enc(v) for v in obj]}
        if type(obj) is dict:
            return {"$": "dict", "items": [[enc(k), enc(v)] for k, v in obj.items()]}
        cls = type(obj)
        if cls.__module__.split(".")[0] == "dlnsim" and not isinstance(obj, type) and not callable(obj):
            return {"$": "object", "class": _class_path(cls), "fields": {k: enc(v) for k, v in _fields(obj).items()}}
        raise TypeError(f"cannot store an object of type {cls.__module__}.{cls.__qualname__} in a checkpoint")


def save_tree(path_or_file, tree) -> None:
    """Write `tree` (see the module docstring for what it may hold) to an .npz archive.

    Raises TypeError for an object that cannot be stored (the caller may drop it and retry).
    """
    enc = _Encoder()
    doc = {"format": FORMAT, "version": FORMAT_VERSION, "tree": enc(tree)}
    text = json.dumps(doc, allow_nan=False, separators=(",", ":"))
    arrays = dict(enc.arrays)
    arrays[TREE_KEY] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    np.savez(path_or_file, **arrays)


class _Decoder:
    def __init__(self, arrays, where: str):
        self.arrays, self.where, self.tensors = arrays, where, {}

    def fail(self, why: str):
        raise FileRefused(f"{self.where}: {why}")

    def tensor(self, node) -> "object":
        import torch

        i, dtype_name, shape = node.get("i"), node.get("dtype"), node.get("shape")
        if not isinstance(i, int) or isinstance(i, bool) or f"t{i}" not in self.arrays:
            self.fail("a tensor entry names no stored array")
        if i in self.tensors:
            return self.tensors[i]
        dtype = getattr(torch, dtype_name, None) if isinstance(dtype_name, str) else None
        if not isinstance(dtype, torch.dtype):
            self.fail(f"unknown tensor dtype {dtype_name!r}")
        if not (isinstance(shape, list) and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)):
            self.fail("a tensor entry has a malformed shape")
        arr = self.arrays[f"t{i}"]
        if arr.dtype.hasobject:
            self.fail("holds an object array")
        try:
            if arr.dtype == np.uint8 and dtype != torch.uint8:
                t = torch.frombuffer(bytearray(arr.tobytes()), dtype=dtype) if arr.size else torch.empty(0, dtype=dtype)
            else:
                t = torch.from_numpy(np.array(arr))
            if t.dtype != dtype:
                self.fail(f"tensor t{i} is stored as {t.dtype}, its entry says {dtype}")
            t = t.reshape(shape)
        except (RuntimeError, TypeError, ValueError) as e:
            self.fail(f"tensor t{i} does not match its entry ({str(e).splitlines()[0]})")
        self.tensors[i] = t
        return t

    def __call__(self, node, depth: int = 0):
        import torch

        if depth > MAX_DEPTH:
            self.fail(f"nested deeper than {MAX_DEPTH} levels")
        dec = lambda v: self(v, depth + 1)  # noqa: E731
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        if isinstance(node, list):
            return [dec(v) for v in node]
        if not isinstance(node, dict) or not isinstance(node.get("$"), str):
            self.fail("malformed structure (an untagged object)")
        kind = node["$"]
        try:
            if kind == "tensor":
                return self.tensor(node)
            if kind == "ndarray":
                return self.tensor(node["t"]).numpy()
            if kind == "float":
                if node["v"] not in ("inf", "-inf", "nan"):
                    self.fail("malformed float entry")
                return float(node["v"])
            if kind == "complex":
                return complex(float(dec(node["re"])), float(dec(node["im"])))
            if kind == "dtype":
                dtype = getattr(torch, str(node["name"]), None)
                if not isinstance(dtype, torch.dtype):
                    self.fail(f"unknown dtype {node['name']!r}")
                return dtype
            if kind == "device":
                return torch.device(str(node["name"]))
            if kind == "tuple":
                return tuple(dec(v) for v in node["items"])
            if kind == "dict":
                out = {}
                for k, v in node["items"]:
                    out[dec(k)] = dec(v)
                return out
            if kind == "namedtuple":
                cls = _allowed_class(node["class"])
                if not (issubclass(cls, tuple) and hasattr(cls, "_fields")):
                    self.fail(f"{node['class']} is not a named tuple")
                items = [dec(v) for v in node["items"]]
                if len(items) != len(cls._fields):
                    self.fail(f"{node['class']} needs {len(cls._fields)} fields, got {len(items)}")
                return tuple.__new__(cls, items)
            if kind == "object":
                cls = _allowed_class(node["class"])
                if cls.__new__ is not object.__new__:
                    self.fail(f"{node['class']} is not a plain data class")
                obj = object.__new__(cls)
                for k, v in node["fields"].items():
                    if not isinstance(k, str) or k.startswith("__"):
                        self.fail(f"{node['class']} has a malformed field name {k!r}")
                    object.__setattr__(obj, k, dec(v))
                return obj
        except FileRefused as e:
            if str(e).startswith(self.where):
                raise
            self.fail(str(e))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            self.fail(f"malformed {kind} entry ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
        self.fail(f"unknown entry kind {kind!r}")


def _is_pickle(head: bytes) -> bool:
    return head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5


def load_tree(path: str, what: str = "checkpoint"):
    """Read a tree written by `save_tree`; raises FileRefused (one line) on anything else."""
    where = f"{path}"
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise FileRefused(f"{where}: cannot read the {what} ({e.strerror or e})") from None
    if _is_pickle(head):
        raise FileRefused(f"{where}: is a Python pickle, not a dlnsim {what}; not loaded (unpickling can run code)")
    if head[:2] != b"PK":
        raise FileRefused(f"{where}: not a dlnsim {what} (not an .npz archive)")
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise FileRefused(f"{where}: not a dlnsim {what} (damaged archive: {str(e).splitlines()[0]})") from None
    if any(n.endswith(".pkl") or n.endswith("/data.pkl") for n in names):
        raise FileRefused(f"{where}: written by torch.save (a pickle), not a dlnsim {what}; not loaded "
                          "(unpickling can run code): remove it to start the run again")
    if f"{TREE_KEY}.npy" not in names:
        raise FileRefused(f"{where}: not a dlnsim {what} (no {TREE_KEY} entry)")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise FileRefused(f"{where}: damaged {what} ({str(e).splitlines()[0]})") from None
    raw = arrays.pop(TREE_KEY)
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise FileRefused(f"{where}: damaged {what} (malformed {TREE_KEY})")
    try:
        doc = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise FileRefused(f"{where}: damaged {what} (its structure is not valid JSON: {str(e).splitlines()[0][:80]})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise FileRefused(f"{where}: not a dlnsim {what}")
    if doc.get("version") != FORMAT_VERSION:
        raise FileRefused(f"{where}: {what} format version {doc.get('version')!r}; this dlnsim reads version {FORMAT_VERSION}")
    return _Decoder(arrays, where)(doc.get("tree"))


# ---------------------------------------------------------------------------------------------
# torch tensor files (network.file)
# ---------------------------------------------------------------------------------------------


def load_torch_tensors(path: str, what: str = "file"):
    """torch.load(path, weights_only=True) on CPU; any failure is one line naming `what`."""
    import pickle

    import torch

    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise FileRefused(f"{what}: cannot read {path} ({e.strerror or e})") from None
    if head[:2] != b"PK" and not _is_pickle(head):
        raise FileRefused(f"{what}: {path} is not a torch file (.pt) or an .npz archive")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()
        why = next((ln.strip() for ln in first if "Unsupported" in ln or "global" in ln.lower()), first[0] if first else "")
        raise FileRefused(f"{what}: {path} holds objects other than tensors; refused ({why[:160]})") from None
    except Exception as e:  # noqa: BLE001 - a damaged file can fail in many ways; none is a bug of ours
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FileRefused(f"{what}: cannot read {path} as a torch file ({msg[:160]})") from None


# ---------------------------------------------------------------------------------------------
# strict YAML
# ---------------------------------------------------------------------------------------------


class StrictYAMLError(yaml.MarkedYAMLError):
    """A YAML document refused by StrictLoader (duplicate key, too many aliases, too deep...)."""


class StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses duplicate keys and bounds aliases, size and nesting."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise StrictYAMLError(None, None, f"more than {MAX_ALIASES} aliases (*name); refused",
                                      self.peek_event().start_mark)
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise StrictYAMLError(None, None, f"nested deeper than {MAX_DEPTH} levels; refused",
                                  self.peek_event().start_mark)
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_document(self, node):
        _check_expanded_size(node)
        return super().construct_document(node)

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    hash(key)
                except TypeError:
                    continue  # the base class reports unhashable keys
                if key in seen:
                    raise StrictYAMLError("while reading a mapping", node.start_mark,
                                          f"duplicate key {str(key)[:60]!r} (first given at line {seen[key].line + 1})",
                                          key_node.start_mark)
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def _check_expanded_size(root) -> None:
    """Count the nodes of the document with aliases expanded (memoised on the node graph, so a
    billion-laughs document costs as many operations as it has distinct nodes); refuse cycles."""
    size: dict[int, int] = {}
    on_path: set[int] = set()
    # iterative post-order walk (the graph may be deep; depth is bounded by compose_node anyway)
    stack = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            kids = _children(node)
            n = 1 + sum(size[id(k)] for k in kids)
            size[key] = n
            if n > MAX_NODES:
                raise StrictYAMLError(None, None, f"expands to more than {MAX_NODES} values (aliases of aliases); refused",
                                      node.start_mark)
            continue
        if key in size:
            continue
        if key in on_path:
            raise StrictYAMLError(None, None, "a recursive alias (a value that contains itself); refused", node.start_mark)
        on_path.add(key)
        stack.append((node, True))
        for k in _children(node):
            if id(k) in on_path:
                raise StrictYAMLError(None, None, "a recursive alias (a value that contains itself); refused", k.start_mark)
            if id(k) not in size:
                stack.append((k, False))


def _children(node) -> list:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [x for pair in node.value for x in pair]
    return []


def _yaml_reason(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or (str(e).splitlines() or [type(e).__name__])[0]
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else str(problem)


def load_yaml_text(text: str, where: str = "YAML"):
    """Parse one YAML document with StrictLoader; FileRefused('<where>: malformed YAML: ...')."""
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - StrictLoader is a SafeLoader
    except StrictYAMLError as e:
        raise FileRefused(f"{where}: {_yaml_reason(e)}") from None
    except yaml.YAMLError as e:
        raise FileRefused(f"{where}: malformed YAML: {_yaml_reason(e)}") from None
    except RecursionError:
        raise FileRefused(f"{where}: nested too deeply; refused") from None


def load_yaml_file(path: str, what: str = "config file"):
    """Read one YAML document from `path` (UTF-8 text, at most MAX_YAML_BYTES); FileRefused on failure."""
    if not os.path.exists(path):
        raise FileRefused(f"{path}: no such {what}")
    if os.path.isdir(path):
        raise FileRefused(f"{path}: is a folder, expected a YAML {what}")
    try:
        size = os.path.getsize(path)
        if size > MAX_YAML_BYTES:
            raise FileRefused(f"{path}: {size} bytes, larger than any {what} ({MAX_YAML_BYTES} bytes at most)")
        with open(path, "rb") as f:
            data = f.read(MAX_YAML_BYTES + 1)
    except OSError as e:
        raise FileRefused(f"{path}: cannot read the {what} ({e.strerror or e})") from None
    if len(data) > MAX_YAML_BYTES:
        raise FileRefused(f"{path}: larger than any {what} ({MAX_YAML_BYTES} bytes at most)")
    if b"\x00" in data:
        raise FileRefused(f"{path}: a binary file, not a YAML {what}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise FileRefused(f"{path}: not a text (UTF-8) YAML {what}") from None
    return load_yaml_text(text, path)



# ---------------------------------------------------------------------------------------------
# numeric arrays (targets, regression data): .npy without pickles, .csv, .txt
# ---------------------------------------------------------------------------------------------


def _regular_file(path: str, what: str) -> int:
    """The size of `path` if it is a regular file (symbolic links followed); FileRefused otherwise."""
    import stat

    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileRefused(f"{what}: no such file {path}") from None
    except OSError as e:
        raise FileRefused(f"{what}: cannot read {path} ({e.strerror or e})") from None
    if stat.S_ISDIR(st.st_mode):
        raise FileRefused(f"{what}: {path} is a folder; give a .npy, .csv or .txt file")
    if not stat.S_ISREG(st.st_mode):
        raise FileRefused(f"{what}: {path} is not a regular file (a device, pipe or socket); give a .npy, .csv or .txt file")
    return st.st_size


def load_array_file(path: str, what: str = "file", ndim: tuple[int, ...] = (2,)) -> np.ndarray:
    """A finite float64 array from .npy (no pickles), .csv or .txt, with ndim in `ndim`.

    what: the config key (or name) every FileRefused message starts with. Size bounds, the file
    kind and the suffix are checked before anything is read.
    """
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in ARRAY_SUFFIXES:
        raise FileRefused(f"{what}: {path} must be a .npy, .csv or .txt file (got {suffix or 'no suffix'!r})")
    size = _regular_file(path, what)
    limit = MAX_ARRAY_BYTES if suffix == ".npy" else MAX_TEXT_ARRAY_BYTES
    if size > limit:
        raise FileRefused(f"{what}: {path} has {size} bytes, more than the {limit} a {suffix} data file may have; "
                          + ("give a smaller array" if suffix == ".npy" else "save large data as .npy"))
    try:
        if suffix == ".npy":
            with open(path, "rb") as f:
                if _is_pickle(f.read(4)):
                    raise FileRefused(f"{what}: {path} is a Python pickle, not a .npy array; not loaded (unpickling can run code)")
            arr = np.load(path, allow_pickle=False)
        else:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("error")  # an empty file is a warning in numpy: make it an error
                arr = np.loadtxt(path, delimiter="," if suffix == ".csv" else None, ndmin=2, dtype=np.float64)
    except FileRefused:
        raise
    except (OSError, ValueError, EOFError, UserWarning) as e:
        msg = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        if "allow_pickle" in msg or "Object arrays" in msg:
            msg = "it holds Python objects (pickled); not loaded (unpickling can run code)"
        raise FileRefused(f"{what}: cannot read {path} as a numeric array ({msg})") from None
    if not isinstance(arr, np.ndarray):
        raise FileRefused(f"{what}: {path} holds an archive, not one array; give a .npy file of one array")
    if arr.dtype.hasobject or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
                                   or arr.dtype == np.bool_):
        raise FileRefused(f"{what}: {path} holds {arr.dtype} values; give real numbers")
    if arr.ndim not in ndim:
        want = " or ".join(f"{n}-D" for n in ndim)
        raise FileRefused(f"{what}: {path} holds a {arr.ndim}-D array of shape {arr.shape}; give a {want} array")
    if arr.size == 0:
        raise FileRefused(f"{what}: {path} holds an empty array (shape {arr.shape})")
    arr = arr.astype(np.float64, copy=False)
    if not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise FileRefused(f"{what}: {path} has a non-finite entry (NaN or inf) at index {tuple(int(i) for i in bad)}; give finite data")
    return arr


def file_record(path: str) -> dict:
    """{path, bytes, sha256} of a file: what meta.json keeps of each input file of a run."""
    return {"path": path, "bytes": os.path.getsize(path), "sha256": file_sha256(path)}


def file_sha256(path: str) -> str:
    """The SHA-256 of a file's bytes (read in 1 MiB blocks)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            h.update(block)
    return h.hexdigest()
