"""Records of a run streamed to disk in chunks, so that memory stays bounded for large ensembles.

A record is an array whose first axis is the save point: "t" (T,), "step" (T,), an observable
(T, B, ...). The store keeps them in the folder `<run>/records/` as plain .npy chunk files, one per
record and chunk, named `<name>-<first save index, 10 digits>.npy`: rows [start, start + n) of that
record. Every chunk is written atomically (temporary name, rename) and read with
allow_pickle=False, so no pickle is ever written or loaded.

    store = RecordStore(os.path.join(run_dir, "records"))
    store.append({"t": t_block, "loss": loss_block})    # every array with the same number of rows
    store.n_rows                                        # save points on disk
    store.truncate(n)                                   # keep rows [0, n) (resume from a checkpoint)
    for start, block in store.blocks(): ...              # chunk by chunk, in order
    write_npz_streamed(path, store, extra)              # one .npz, one chunk in memory at a time

A chunk of all records is appended at once, so the chunks of all records share their boundaries.
"""
from __future__ import annotations

import os
import re
import shutil
import zipfile
from typing import Iterator

import numpy as np

from ._io import atomic_write

__all__ = ["RecordStore", "write_npz_streamed", "RECORDS", "DISK_BYTES", "CHUNK_BYTES"]

RECORDS = "records"  # the folder name inside a run folder
# output.records: auto streams a run's records to disk when they would exceed DISK_BYTES; the store
# then receives a chunk every CHUNK_BYTES of records (and at each checkpoint). The memory estimate
# (dlnsim.resources) and the runner both read these.
DISK_BYTES = 256 * 2**20
CHUNK_BYTES = 16 * 2**20
_CHUNK = re.compile(r"(?P<name>[A-Za-z0-9_]+)-(?P<start>\d{10})\.npy$")


class RecordStore:
    """The chunk files of one records/ folder (module docstring). Create with the folder path; the
    folder is made on the first append."""

    def __init__(self, folder: str):
        self.folder = folder
        self._chunks: dict[str, list[tuple[int, int]]] = {}  # name -> [(start, rows)] in order
        self._scan()

    # -- the index of chunks, rebuilt from the folder ------------------------------------------
    def _scan(self) -> None:
        self._chunks = {}
        if not os.path.isdir(self.folder):
            return
        for fn in sorted(os.listdir(self.folder)):
            m = _CHUNK.fullmatch(fn)
            if m is None:
                continue
            rows = self._rows(os.path.join(self.folder, fn))
            self._chunks.setdefault(m["name"], []).append((int(m["start"]), rows))
        for v in self._chunks.values():
            v.sort()

    @staticmethod
    def _rows(path: str) -> int:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            shape, _, _ = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                           else np.lib.format.read_array_header_2_0(f))
        return int(shape[0])

    def _path(self, name: str, start: int) -> str:
        return os.path.join(self.folder, f"{name}-{start:010d}.npy")

    @property
    def names(self) -> list[str]:
        return list(self._chunks)

    @property
    def n_rows(self) -> int:
        """Save points held by every record (the shortest one, should a write have been cut short)."""
        if not self._chunks:
            return 0
        return min(self._contiguous(v) for v in self._chunks.values())

    @staticmethod
    def _contiguous(chunks: list[tuple[int, int]]) -> int:
        n = 0
        for start, rows in chunks:
            if start != n:
                break
            n += rows
        return n

    # -- writing -------------------------------------------------------------------------------
    def append(self, block: dict[str, np.ndarray]) -> None:
        """Append rows to every record: block maps names to arrays of equal first-axis length.
        Written at save index n_rows (a record missing from block is an error)."""
        lengths = {np.shape(v)[0] for v in block.values()}
        if len(lengths) != 1:
            raise ValueError(f"record block of unequal lengths {sorted(lengths)}")
        if self._chunks and set(block) != set(self._chunks):
            raise ValueError(f"record block names {sorted(block)} differ from the store's {sorted(self._chunks)}")
        (rows,) = lengths
        if rows == 0:
            return
        start = self.n_rows
        os.makedirs(self.folder, exist_ok=True)
        for name, arr in block.items():
            if not _CHUNK.fullmatch(f"{name}-{0:010d}.npy"):
                raise ValueError(f"record name {name!r}: letters, digits and _ only")
            a = np.ascontiguousarray(arr)
            atomic_write(self._path(name, start), lambda f, a=a: np.lib.format.write_array(f, a, allow_pickle=False), mode="wb")
            self._chunks.setdefault(name, []).append((start, rows))

    def truncate(self, n: int) -> None:
        """Keep save points [0, n) of every record: later chunks are removed, a chunk that straddles
        n is rewritten with its first rows. ValueError if fewer than n rows are on disk."""
        if n > self.n_rows:
            raise ValueError(f"{self.folder}: holds {self.n_rows} save points, the checkpoint needs {n}")
        for name, chunks in self._chunks.items():
            kept = []
            for start, rows in chunks:
                path = self._path(name, start)
                if start >= n:
                    os.remove(path)
                elif start + rows > n:
                    a = np.load(path, allow_pickle=False)[: n - start]
                    atomic_write(path, lambda f, a=a: np.lib.format.write_array(f, a, allow_pickle=False), mode="wb")
                    kept.append((start, n - start))
                else:
                    kept.append((start, rows))
            self._chunks[name] = kept
        self._chunks = {k: v for k, v in self._chunks.items() if v}

    def remove(self) -> None:
        """Delete the folder (after its records went into arrays.npz)."""
        shutil.rmtree(self.folder, ignore_errors=True)
        self._chunks = {}

    # -- reading -------------------------------------------------------------------------------
    def blocks(self, names: list[str] | None = None) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """(start, {name: rows of that chunk}) for each chunk up to n_rows, in order."""
        names = self.names if names is None else names
        n = self.n_rows
        if not names:
            return
        for start, rows in self._chunks[names[0]]:
            if start >= n:
                break
            yield start, {k: np.load(self._path(k, start), allow_pickle=False)[: n - start] for k in names}

    def spec(self, name: str) -> tuple[tuple[int, ...], np.dtype]:
        """(shape of the whole record, dtype), read from its first chunk's header."""
        start = self._chunks[name][0][0]
        a = np.load(self._path(name, start), mmap_mode="r", allow_pickle=False)
        return (self.n_rows,) + tuple(a.shape[1:]), a.dtype

    def read(self, name: str) -> np.ndarray:
        """The whole record in memory (use blocks() for large ones)."""
        parts = [b[name] for _, b in self.blocks([name])]
        if not parts:
            raise KeyError(name)
        return np.concatenate(parts)


def write_npz_streamed(path: str, store: RecordStore, extra: dict[str, np.ndarray], order: list[str] | None = None) -> None:
    """Write an .npz (uncompressed, zip64) holding the store's records and the arrays of `extra`,
    holding one chunk in memory at a time; np.load reads it as any .npz. Atomic (temporary name).

    order: names written first (e.g. t, step), then the rest of the store's records, then extra."""
    names = [k for k in (order or []) if k in store.names] + [k for k in store.names if k not in (order or [])]

    def write(f):
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name in names:
                shape, dtype = store.spec(name)
                header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
                with zf.open(f"{name}.npy", "w", force_zip64=True) as out:
                    np.lib.format.write_array_header_2_0(out, header)
                    for _, block in store.blocks([name]):
                        out.write(np.ascontiguousarray(block[name], dtype=dtype).tobytes())
            for name, arr in extra.items():
                with zf.open(f"{name}.npy", "w", force_zip64=True) as out:
                    np.lib.format.write_array(out, np.asanyarray(arr), allow_pickle=False)

    atomic_write(path, write, mode="wb")
