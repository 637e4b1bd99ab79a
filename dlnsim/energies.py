"""Energies E(X) on the end-to-end matrix, batched: value (B,) and Euclidean gradient (B, d_out, d_in).

The loss on parameters is L(W) = E(phi(W)) (docs/theory.md section 1). Every energy has
`value(X)`, `grad(X)` and `value_and_grad(X)` for X of shape (B, d_out, d_in) (or (d_out, d_in));
data tensors (targets, masks) broadcast over the batch. `CustomEnergy` wraps any differentiable
function of X, with the gradient by autograd.

`ENERGIES` is the registry of the config's energy.type: config name -> class. A registered class
declares `name`, `from_config(section, widths)` (the energy of a resolved `energy:` section),
`check_config(section, widths)` (its own config rules, ConfigError naming the key), `config_keys`
(keys of the section that only it reads), `has_target` (it uses the target matrix Phi of
energy.target), `aligned_start` (a balanced start aligned with Phi is meaningful) and `batch_free` (its data has no batch dim: the CPU fast path of gradient descent
may cut the batch into blocks). Adding an energy is its class here plus its keys in config.SCHEMA.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from .network import random_orthogonal
from .safe_io import FileRefused, load_array_file
from .tasks import noisy_observations, random_mask, regression_problem, train_test_split
from .options import ConfigError, fail

__all__ = [
    "Energy",
    "MatrixRegression",
    "LinearRegression",
    "MatrixCompletion",
    "WeightDecay",
    "CustomEnergy",
    "SumEnergy",
    "ENERGIES",
    "target_matrix",
    "check_target_file",
]


def _sq(X: torch.Tensor) -> torch.Tensor:
    return (X * X).sum(dim=(-2, -1))


class Energy:
    """E(X): value (..., ) and gradient (..., d_out, d_in). Subclasses override value_and_grad."""

    shape: tuple[int, int] | None = None  # (d_out, d_in) the energy needs, when it has data
    orthogonally_invariant: bool = False  # E(O1 X O2) = E(X): the singular-value law applies
    # registry data (module docstring); read from the class itself, so subclasses declare their own
    name: str | None = None
    config_keys: tuple[str, ...] = ()
    has_target: bool = False
    aligned_start: bool = False
    batch_free: bool = False
    per_trajectory_data: bool = False  # from_config takes batch=B (data can have one entry per trajectory)

    @classmethod
    def from_config(cls, section: dict, widths: list[int]) -> "Energy":
        raise NotImplementedError(f"{cls.__name__} cannot be built from a config")

    @classmethod
    def check_config(cls, section: dict, widths: list[int]) -> None:
        """The energy's own rules on a resolved `energy:` section (raise ConfigError naming the key)."""

    def value_and_grad(self, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def value(self, X: torch.Tensor) -> torch.Tensor:
        return self.value_and_grad(X)[0]

    def grad(self, X: torch.Tensor) -> torch.Tensor:
        return self.value_and_grad(X)[1]

    def __call__(self, X: torch.Tensor) -> torch.Tensor:
        return self.value(X)

    def check_shape(self, d_out: int, d_in: int) -> None:
        if self.shape is not None and tuple(self.shape) != (d_out, d_in):
            raise ValueError(
                f"{type(self).__name__} expects X of shape {tuple(self.shape)} (from its data), but the network "
                f"maps d_0={d_in} to d_N={d_out}; make the network widths match the data"
            )

    def to(self, dtype=None, device=None) -> "Energy":
        """Move data tensors to dtype/device (in place); returns self."""
        for k, v in vars(self).items():
            if isinstance(v, torch.Tensor):
                setattr(self, k, v.to(dtype=dtype if v.is_floating_point() else None, device=device))
        return self

    def __add__(self, other: "Energy") -> "Energy":
        return SumEnergy([self, other])


def _as_matrix(x, name: str) -> torch.Tensor:
    t = torch.as_tensor(x, dtype=torch.float64) if not isinstance(x, torch.Tensor) else x
    if t.dim() < 2:
        raise ValueError(f"{name} must be a matrix (d_out, d_in) or a batch (B, d_out, d_in), got shape {tuple(t.shape)}")
    return t


class MatrixRegression(Energy):
    """E(X) = 1/2 ||X - Phi||_F^2, grad = X - Phi. Phi: (d_out, d_in) or (B, d_out, d_in)."""

    name = "matrix_regression"
    has_target = True
    aligned_start = True
    batch_free = True

    def __init__(self, target):
        self.target = _as_matrix(target, "target")
        self.shape = tuple(self.target.shape[-2:])

    @classmethod
    def from_config(cls, section, widths):
        return cls(target_matrix(section, widths))

    def value_and_grad(self, X):
        R = X - self.target
        return 0.5 * _sq(R), R

    def grad(self, X):  # the gradient-descent hot path needs no value
        return X - self.target


class LinearRegression(Energy):
    """E(X) = 1/(2n) ||X A - Y||_F^2 on data A (d_in, n), Y (d_out, n); grad = (X A - Y) A^T / n.

    Evaluated through the sufficient statistics Sigma = A A^T / n, C = Y A^T / n, c = ||Y||^2/(2n):
    E = 1/2 tr(X Sigma X^T) - tr(X C^T) + c, so a step costs O(d^3), not O(d^2 n).
    test_inputs (d_in, m), test_outputs (d_out, m): held-out data, not in E; the observable
    `regression_error` reports the error on them (None: no held-out set).

    From a config (`from_config`), the data are, in this order of precedence: energy.data (.npz with
    inputs, outputs and optionally test_inputs, test_outputs), energy.train_inputs / train_outputs
    (and test_inputs / test_outputs; .npy, .csv or .txt), or synthetic: a ~ N(0, input_cov),
    y = Phi a + noise * xi with Phi the energy's target (the teacher), n_samples training samples and
    n_test held-out ones drawn from the same law (generator seeded with energy.seed + 1; the training
    set does not depend on n_test). energy.test_fraction then holds out that share of the training
    data, chosen at random (seed energy.split_seed, null: energy.seed + 2).
    """

    name = "linear_regression"
    config_keys = ("data", "train_inputs", "train_outputs", "test_inputs", "test_outputs", "n_test", "test_fraction",
                   "split_seed", "input_cov")
    has_target = True  # the synthetic data's Phi
    batch_free = True

    @classmethod
    def from_config(cls, section, widths):
        A, Y, At, Yt = _regression_data(section, widths)
        return cls(A, Y, At, Yt)

    @classmethod
    def check_config(cls, section, widths):
        files = [k for k in _DATA_FILE_KEYS if section[k] is not None]
        if section["data"] is not None and files:
            fail(f"energy.{files[0]}", "give the data either as energy.data (.npz) or as train_inputs/train_outputs files, not both")
        given = section["data"] is not None or bool(files)
        for a, b in (("train_inputs", "train_outputs"), ("test_inputs", "test_outputs")):
            if (section[a] is None) != (section[b] is None):
                have, miss = (a, b) if section[a] is not None else (b, a)
                fail(f"energy.{miss}", f"energy.{have} is given: give energy.{miss} too (inputs (d_0, n) and outputs (d_N, n))")
        if section["test_inputs"] is not None and section["train_inputs"] is None:
            fail("energy.test_inputs", "held-out files need training files: give energy.train_inputs and train_outputs")
        if given:
            for k in ("n_test", "input_cov", "noise"):
                if section[k] is not None and section[k] != 0:
                    fail(f"energy.{k}", "only applies to synthetic data (no energy.data or train_inputs files); remove it")
        data = _given_data(section, widths)  # reads and checks the files
        n = section["n_samples"] if data is None else data[0].shape[1]
        has_test = section["n_test"] is not None if data is None else data[2] is not None
        if section["test_fraction"] is not None:
            if not section["test_fraction"] < 1:
                fail("energy.test_fraction", f"must be in (0, 1) (the held-out share), got {section['test_fraction']}")
            if has_test:
                src = "energy.n_test" if section["n_test"] is not None else "the held-out data given"
                fail("energy.test_fraction", f"a held-out set is already given ({src}); give one of the two")
            m = int(round(section["test_fraction"] * n))
            if not 1 <= m <= n - 1:
                fail("energy.test_fraction", f"{section['test_fraction']} of n = {n} samples leaves an empty train or test set")
        elif section["split_seed"] is not None:
            fail("energy.split_seed", "only applies with energy.test_fraction (a random train/test split)")
        cov = section["input_cov"]
        if cov is not None:
            d_in = widths[0]
            C = torch.tensor(cov, dtype=torch.float64)
            if C.shape not in ((d_in,), (d_in, d_in)):
                fail("energy.input_cov", f"give d_0 = {d_in} variances (diagonal covariance) or a {d_in}x{d_in} matrix, got shape {tuple(C.shape)}")
            if C.dim() == 2:
                scale = float(C.abs().max()) or 1.0
                if float((C - C.T).abs().max()) > 1e-12 * scale:
                    fail("energy.input_cov", "must be symmetric")
                if float(torch.linalg.eigvalsh(C).min()) < -1e-12 * scale:
                    fail("energy.input_cov", "must be positive semi-definite (a covariance)")

    def __init__(self, inputs, outputs, test_inputs=None, test_outputs=None):
        A = _as_matrix(inputs, "inputs")
        Y = _as_matrix(outputs, "outputs")
        if A.shape[-1] != Y.shape[-1]:
            raise ValueError(
                f"inputs (d_in, n) and outputs (d_out, n) need the same number of samples n, got {A.shape[-1]} and {Y.shape[-1]}"
            )
        n = A.shape[-1]
        # The samples themselves, for minibatch SGD (dlnsim.dynamics.sgd); full-batch steps use the statistics.
        self.inputs, self.outputs = A, Y
        self.sigma = A @ A.mT / n
        self.cross = Y @ A.mT / n
        self.const = _sq(Y) / (2 * n)
        self.shape = (Y.shape[-2], A.shape[-2])
        if (test_inputs is None) != (test_outputs is None):
            raise ValueError("give both test_inputs (d_in, m) and test_outputs (d_out, m), or neither")
        self.test_inputs = self.test_outputs = None
        if test_inputs is not None:
            At, Yt = _as_matrix(test_inputs, "test_inputs"), _as_matrix(test_outputs, "test_outputs")
            if At.shape[-2] != A.shape[-2] or Yt.shape[-2] != Y.shape[-2] or At.shape[-1] != Yt.shape[-1]:
                raise ValueError(f"test_inputs {tuple(At.shape)} and test_outputs {tuple(Yt.shape)} must be (d_in, m) = "
                                 f"({A.shape[-2]}, m) and (d_out, m) = ({Y.shape[-2]}, m)")
            self.test_inputs, self.test_outputs = At, Yt

    def value_and_grad(self, X):
        XS = X @ self.sigma
        G = XS - self.cross
        val = 0.5 * (XS * X).sum(dim=(-2, -1)) - (X * self.cross).sum(dim=(-2, -1)) + self.const
        return val, G

    def grad(self, X):
        return X @ self.sigma - self.cross


def _mask_file(section: dict, widths: list[int]) -> torch.Tensor:
    """The 0/1 mask (d_N, d_0) of energy.mask_file; ConfigError naming energy.mask_file on a wrong shape or value."""
    d_in, d_out = widths[0], widths[-1]
    mask = torch.as_tensor(_read_array(section["mask_file"], "energy.mask_file"), dtype=torch.float64)
    if tuple(mask.shape) != (d_out, d_in):
        fail("energy.mask_file", f"{section['mask_file']} holds shape {tuple(mask.shape)}; the mask must be d_N x d_0 = {d_out}x{d_in} for widths {widths}")
    if not bool(((mask == 0) | (mask == 1)).all()):
        fail("energy.mask_file", f"{section['mask_file']}: entries must be 0 (hidden) or 1 (observed)")
    return mask


class MatrixCompletion(Energy):
    """E(X) = 1/2 ||mask o (X - Phi)||_F^2, grad = mask o (X - Phi) (mask of 0/1 or weights).

    target, mask: (d_out, d_in) or (B, d_out, d_in) each; a batched mask is one mask per trajectory
    (random masks: `dlnsim.tasks.random_mask(..., batch=B)`), and its B must be the ensemble's.
    target is what is observed (what E fits); truth: the clean matrix the observations are noisy
    copies of (default: target), against which test errors are measured (observable
    `completion_error`). From a config with energy.noise = sigma > 0: target = mask o (Phi + sigma xi),
    xi i.i.d. N(0, 1) from energy.noise_seed (null: energy.seed + 1), one draw per trajectory with
    per-trajectory masks, and truth = Phi.
    """

    name = "matrix_completion"
    config_keys = ("mask", "mask_file", "mask_fraction", "mask_count", "mask_seed", "mask_per_trajectory", "noise_seed")
    has_target = True
    aligned_start = True
    batch_free = True  # for shared masks (a per-trajectory mask has a batch dim: see dynamics.gradient._batch_free)
    per_trajectory_data = True

    @classmethod
    def from_config(cls, section, widths, batch: int | None = None):
        Phi = target_matrix(section, widths)
        m = section["mask"]
        d_out, d_in = Phi.shape
        if m == "random":  # uniform random subset of mask_count entries (or round(mask_fraction d_N d_0))
            per = section["mask_per_trajectory"] == "true"
            mask = random_mask((d_out, d_in), fraction=section["mask_fraction"], count=section["mask_count"],
                               batch=batch if per else None, seed=section["mask_seed"] or 0)
        elif m == "diag":
            mask = torch.eye(d_out, d_in, dtype=torch.float64)
        elif m == "offdiag":
            mask = 1.0 - torch.eye(d_out, d_in, dtype=torch.float64)
        elif m == "file":
            mask = _mask_file(section, widths)
        else:
            mask = torch.tensor(m, dtype=torch.float64)
        if section["noise"] > 0:
            seed = section["noise_seed"] if section["noise_seed"] is not None else (section["seed"] + 1) % 2**64
            observed = noisy_observations(Phi, mask, section["noise"], generator=torch.Generator().manual_seed(seed))
            return cls(observed, mask, truth=Phi)
        return cls(Phi, mask)

    @classmethod
    def check_config(cls, section, widths):
        m, d_in, d_out = section["mask"], widths[0], widths[-1]
        if m is None:
            fail("energy.mask", "matrix_completion needs the observed entries: diag | offdiag | random | a 0/1 matrix")
        if isinstance(m, list) and (len(m), len(m[0])) != (d_out, d_in):
            fail("energy.mask", f"must be d_N x d_0 = {d_out}x{d_in}, got {len(m)}x{len(m[0])}")
        if isinstance(m, list):
            bad = [v for row in m for v in row if v not in (0, 1)]
            if bad:
                fail("energy.mask", f"entries must be 0 (hidden) or 1 (observed), got {bad[0]!r}")
        if (m == "file") != (section["mask_file"] is not None):
            fail("energy.mask_file", "energy.mask: file needs energy.mask_file (a .npy, .csv or .txt 0/1 matrix)" if m == "file"
                 else f"only applies to energy.mask: file (mask is {m if isinstance(m, str) else 'a matrix'}); remove it or set mask: file")
        if m == "file":
            _mask_file(section, widths)
        if section["noise_seed"] is not None and not section["noise"] > 0:
            fail("energy.noise_seed", "only applies with energy.noise > 0 (noisy observations); set energy.noise or remove it")
        random_keys = ("mask_fraction", "mask_count", "mask_seed", "mask_per_trajectory")
        if m != "random":
            for k in random_keys:
                if section[k] is not None:
                    fail(f"energy.{k}", f"only applies to energy.mask: random (mask is {m!r})")
            return
        frac, count = section["mask_fraction"], section["mask_count"]
        if (frac is None) == (count is None):
            fail("energy.mask_fraction", "mask: random needs exactly one of mask_fraction (share of entries) and mask_count")
        if frac is not None and frac > 1:
            fail("energy.mask_fraction", f"must be in (0, 1], got {frac}")
        if count is not None and count > d_out * d_in:
            fail("energy.mask_count", f"must be <= d_N d_0 = {d_out * d_in}, got {count}")

    def __init__(self, target, mask, truth=None):
        self.target = _as_matrix(target, "target")
        self.mask = _as_matrix(mask, "mask").to(self.target.dtype)
        if self.mask.shape[-2:] != self.target.shape[-2:]:
            raise ValueError(f"mask shape {tuple(self.mask.shape)} must match target shape {tuple(self.target.shape)}")
        self.shape = tuple(self.target.shape[-2:])
        self.truth = self.target if truth is None else _as_matrix(truth, "truth").to(self.target.dtype)
        if self.truth.shape[-2:] != self.shape:
            raise ValueError(f"truth shape {tuple(self.truth.shape)} must match target shape {tuple(self.target.shape)}")

    def value_and_grad(self, X):
        R = self.mask * (X - self.target)
        return 0.5 * _sq(R), R

    @property
    def batch_size(self) -> int | None:
        """B of a batched target or mask (one per trajectory), None when both are shared by the ensemble."""
        dims = [t.shape[0] for t in (self.target, self.mask) if t.dim() == 3]
        return max(dims) if dims else None

    def check_batch(self, B: int) -> None:
        """Raise unless a batched target/mask has one entry per trajectory of an ensemble of B."""
        b = self.batch_size
        if b is not None and b not in (1, B):
            raise ValueError(f"the completion mask/target has a batch of {b} (one per trajectory) but the ensemble has B = {B}; draw one mask per trajectory or one for all")

    def observed_count(self) -> torch.Tensor:
        """sum of mask entries: (B,) for a batched mask, () otherwise."""
        return self.mask.sum(dim=(-2, -1))

    def grad(self, X):
        return self.mask * (X - self.target)


class WeightDecay(Energy):
    """E(X) = alpha/2 ||X||_F^2, grad = alpha X. Orthogonally invariant (the Gibbs-law test case)."""

    orthogonally_invariant = True
    name = "weight_decay"
    batch_free = True

    @classmethod
    def from_config(cls, section, widths):
        return cls(section["alpha"])

    def __init__(self, alpha: float = 1.0):
        if not alpha > 0:
            raise ValueError(f"alpha must be positive, got {alpha!r}")
        self.alpha = float(alpha)

    def value_and_grad(self, X):
        return 0.5 * self.alpha * _sq(X), self.alpha * X

    def grad(self, X):
        return self.alpha * X


class CustomEnergy(Energy):
    """Any differentiable fn: (B, d_out, d_in) -> (B,); gradient by autograd (slower: for exploration)."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], orthogonally_invariant: bool = False):
        self.fn = fn
        self.orthogonally_invariant = orthogonally_invariant

    def value_and_grad(self, X):
        with torch.enable_grad():
            Xr = X.detach().requires_grad_(True)
            val = self.fn(Xr)
            (g,) = torch.autograd.grad(val.sum(), Xr)
        return val.detach(), g


class SumEnergy(Energy):
    """E = sum_k E_k."""

    batch_free = True  # when every term is (dlnsim.dynamics.gradient._batch_free asks the terms)

    def __init__(self, terms):
        self.terms = list(terms)
        shapes = {t.shape for t in self.terms if t.shape is not None}
        if len(shapes) > 1:
            raise ValueError(f"energies to add have incompatible shapes {shapes}")
        self.shape = shapes.pop() if shapes else None
        self.orthogonally_invariant = all(t.orthogonally_invariant for t in self.terms)

    def value_and_grad(self, X):
        vals, grads = zip(*(t.value_and_grad(X) for t in self.terms))
        return sum(vals), sum(grads)

    def grad(self, X):
        return sum(t.grad(X) for t in self.terms)

    def to(self, dtype=None, device=None):
        for t in self.terms:
            t.to(dtype, device)
        return self


ENERGIES: dict[str, type[Energy]] = {
    cls.name: cls for cls in (MatrixRegression, LinearRegression, MatrixCompletion, WeightDecay)
}


def check_target_file(section: dict, widths: list[int], used: bool = True) -> None:
    """energy.target: file and energy.target_file go together; the file holds a (d_N, d_0) matrix
    (read when the energy uses a target, `used`). ConfigError naming energy.target_file."""
    t, d_in, d_out = section["target"], widths[0], widths[-1]
    if (t == "file") != (section["target_file"] is not None):
        if t == "file":
            fail("energy.target_file", "energy.target is 'file': give the path of a .npy, .csv or .txt file of shape (d_N, d_0)")
        fail("energy.target_file", f"only applies to energy.target: file (target is {t if isinstance(t, str) else 'a matrix'}); remove it or set target: file")
    if t == "file" and used:
        Phi = target_matrix(section, widths)
        if tuple(Phi.shape) != (d_out, d_in):
            fail("energy.target_file", f"{section['target_file']} holds a {Phi.shape[0]}x{Phi.shape[1]} matrix; the target must be d_N x d_0 = {d_out}x{d_in} for widths {widths}")


def target_matrix(section: dict, widths: list[int]) -> torch.Tensor:
    """The target matrix Phi (d_N, d_0) of a resolved `energy:` section (float64, CPU).

    energy.target: a matrix | file (energy.target_file: .npy, .csv or .txt) | identity | diag (diag(spectrum), ones by default) | random
    (U diag(spectrum) V^T, Haar U, V from energy.seed, independent of the dynamics' generator and
    device; spectrum (r, r-1, ..., 1) by default, r = min(d_N, d_0)). energy.rank k (random
    target): a rank-k target, spectrum of k values (default ones), the other singular values 0.
    """
    d_in, d_out = widths[0], widths[-1]
    r = min(d_in, d_out)
    t, spectrum = section["target"], section["spectrum"]
    k = section.get("rank")
    if k is not None and t == "random":
        s = torch.ones(k, dtype=torch.float64) if spectrum is None else torch.tensor(spectrum, dtype=torch.float64)
        spectrum = torch.cat([s, s.new_zeros(r - k)]).tolist()
    if isinstance(t, list):
        return torch.tensor(t, dtype=torch.float64)
    if t == "file":
        return torch.as_tensor(_read_array(section["target_file"], "energy.target_file"))
    if t == "identity":
        return torch.eye(d_out, d_in, dtype=torch.float64)
    if t == "diag":
        s = torch.ones(r, dtype=torch.float64) if spectrum is None else torch.tensor(spectrum, dtype=torch.float64)
        out = torch.zeros(d_out, d_in, dtype=torch.float64)
        out[range(r), range(r)] = s
        return out
    g = torch.Generator().manual_seed(section["seed"])
    s = torch.arange(r, 0, -1, dtype=torch.float64) if spectrum is None else torch.tensor(spectrum, dtype=torch.float64)
    U = random_orthogonal((), d_out, generator=g)[:, :r]
    V = random_orthogonal((), d_in, generator=g)[:, :r]
    return (U * s) @ V.T


_DATA_FILE_KEYS = ("train_inputs", "train_outputs", "test_inputs", "test_outputs")


def _read_array(path: str, key: str):
    """A 2-D float64 numpy array from a .npy / .csv / .txt file named by config key `key`."""
    try:
        return load_array_file(path, key, ndim=(2,))
    except FileRefused as e:
        fail(key, str(e).split(": ", 1)[1] if str(e).startswith(key + ": ") else str(e))


def _npz_data(path: str) -> tuple:
    """inputs, outputs, test_inputs, test_outputs (the last two None if absent) of an energy.data archive."""
    import zipfile

    from .safe_io import MAX_ARRAY_BYTES, _regular_file

    try:
        size = _regular_file(path, "energy.data")
    except FileRefused as e:
        fail("energy.data", str(e).split(": ", 1)[1])
    if size > MAX_ARRAY_BYTES:
        fail("energy.data", f"{path} has {size} bytes, more than the {MAX_ARRAY_BYTES} a data file may have")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "inputs" not in z.files or "outputs" not in z.files:
                fail("energy.data", f"{path} must hold arrays 'inputs' (d_0, n) and 'outputs' (d_N, n)")
            if ("test_inputs" in z.files) != ("test_outputs" in z.files):
                fail("energy.data", f"{path} holds only one of 'test_inputs' and 'test_outputs'; give both or neither")
            arrays = tuple(z[k] if k in z.files else None for k in ("inputs", "outputs", "test_inputs", "test_outputs"))
    except ConfigError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        why = "not an .npz archive of numeric arrays" if "pickle" in str(e) else str(e).splitlines()[0][:120]
        fail("energy.data", f"cannot read {path}: {why}")
    if not isinstance(arrays[0], np.ndarray):
        fail("energy.data", f"cannot read {path}: not an .npz archive of numeric arrays")
    return arrays


def _check_pair(A, Y, d_in, d_out, keys: tuple[str, str], where: str) -> None:
    """Shapes, type and finiteness of inputs A (d_in, n), outputs Y (d_out, n); fail naming keys."""
    for arr, key, d in ((A, keys[0], d_in), (Y, keys[1], d_out)):
        if arr.ndim != 2 or arr.shape[0] != d:
            fail(key, f"{where}: must be ({d}, n) for the network widths (columns are samples), got shape {arr.shape}")
        if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
            fail(key, f"{where}: must be a numeric array, got {arr.dtype}")
        if not np.isfinite(arr).all():
            fail(key, f"{where} has non-finite entries (NaN or inf); give finite data")
    if A.shape[1] != Y.shape[1]:
        fail(keys[1], f"{where}: {A.shape[1]} input samples but {Y.shape[1]} outputs; give the same number of columns n")
    if A.shape[1] == 0:
        fail(keys[0], f"{where}: holds no samples (n = 0); give at least one column")


def _given_data(section: dict, widths: list[int]):
    """(A, Y, A_test, Y_test) float64 tensors from energy.data or the train/test files (test None if
    not given), shapes and values checked (ConfigError naming the key); None for synthetic data."""
    d_in, d_out = widths[0], widths[-1]
    t = lambda a: None if a is None else torch.as_tensor(np.asarray(a, dtype=np.float64))  # noqa: E731
    if section["data"] is not None:
        A, Y, At, Yt = _npz_data(section["data"])
        _check_pair(A, Y, d_in, d_out, ("energy.data", "energy.data"), f"{section['data']} inputs/outputs")
        if At is not None:
            _check_pair(At, Yt, d_in, d_out, ("energy.data", "energy.data"), f"{section['data']} test_inputs/test_outputs")
        return tuple(map(t, (A, Y, At, Yt)))
    if section["train_inputs"] is not None:
        A, Y = (_read_array(section[k], f"energy.{k}") for k in ("train_inputs", "train_outputs"))
        _check_pair(A, Y, d_in, d_out, ("energy.train_inputs", "energy.train_outputs"), "training data")
        At = Yt = None
        if section["test_inputs"] is not None:
            At, Yt = (_read_array(section[k], f"energy.{k}") for k in ("test_inputs", "test_outputs"))
            _check_pair(At, Yt, d_in, d_out, ("energy.test_inputs", "energy.test_outputs"), "held-out data")
        return tuple(map(t, (A, Y, At, Yt)))
    return None


def _regression_data(section: dict, widths: list[int]):
    """(A, Y, A_test, Y_test) float64 tensors of a resolved linear_regression section (test None if
    there is no held-out set): given or synthetic data, then the train/test split if asked for."""
    d_in, d_out = widths[0], widths[-1]
    given = _given_data(section, widths)
    if given is not None:
        A, Y, At, Yt = given
    else:
        Phi = target_matrix(section, widths)
        g = torch.Generator().manual_seed((section["seed"] + 1) % 2**64)
        cov = section["input_cov"]
        # the training set is drawn first, so that it does not depend on n_test (1: drawn and dropped)
        prob = regression_problem(d_in, d_out, section["n_samples"], section["n_test"] or 1, teacher=Phi,
                                  input_cov=None if cov is None else torch.tensor(cov, dtype=torch.float64),
                                  label_noise=section["noise"], generator=g)
        A, Y = prob.inputs, prob.outputs
        At, Yt = (prob.test_inputs, prob.test_outputs) if section["n_test"] is not None else (None, None)
    if section["test_fraction"] is not None:
        seed = section["split_seed"] if section["split_seed"] is not None else (section["seed"] + 2) % 2**64
        split = train_test_split(A, Y, section["test_fraction"], seed=seed)
        A, Y, At, Yt = split.inputs, split.outputs, split.test_inputs, split.test_outputs
    return A, Y, At, Yt
