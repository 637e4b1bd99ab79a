"""Tasks of implicit-regularization studies: low-rank targets, observation masks, regression data.

- Low-rank target  Phi = U diag(s) V^T,  U (d_out, r), V (d_in, r) with Haar-distributed orthonormal
  columns and r = `rank` singular values s (a list, or a named profile), or the product of Gaussian
  factors U V^T of Arora, Cohen, Hu & Luo (arXiv 1905.13655). Rectangular everywhere.
- Matrix completion: a uniformly random observation mask with a given fraction or count of observed
  entries (exactly that many, drawn without replacement), one for the whole ensemble or one per
  trajectory (a leading batch axis B); noisy observations Phi + sigma xi on the observed entries.
  The energy is `dlnsim.energies.MatrixCompletion(observed, mask)` (the config's `mask: random`
  uses `random_mask`); the ground truth is kept for the test error (`dlnsim.metrics`).
- Regression: data A (d_in, n) (columns are samples, the convention of
  `dlnsim.energies.LinearRegression`), teacher T (d_out, d_in), labels Y = T A + sigma xi, with an
  input covariance; a held-out test set drawn from the same law, or a random split of given data.

Every random draw takes an explicit torch.Generator (or a seed), so a problem is a pure function of
its seed. Files are read without unpickling (`load_matrix`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from .network import orthonormal_columns
from .safe_io import load_array_file

__all__ = [
    "SPECTRA",
    "low_rank_target",
    "random_mask",
    "noisy_observations",
    "CompletionProblem",
    "completion_problem",
    "RegressionProblem",
    "regression_problem",
    "train_test_split",
    "load_matrix",
]

SPECTRA = ("ones", "linear", "geometric", "gaussian_factors")


def _generator(generator: torch.Generator | None, seed: int | None) -> torch.Generator:
    if generator is not None and seed is not None:
        raise ValueError("give either generator or seed, not both")
    if generator is not None:
        return generator
    if seed is None:
        raise ValueError("give a seed (int) or a torch.Generator: tasks are reproducible by construction")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    return torch.Generator().manual_seed(seed)


def _positive_int(v, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return v


def low_rank_target(
    shape: Sequence[int],
    rank: int,
    spectrum: str | Sequence[float] | torch.Tensor = "ones",
    *,
    decay: float = 0.5,
    frobenius_norm: float | None = None,
    batch: int | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """A rank-r matrix Phi = U diag(s) V^T of shape (d_out, d_in), or (batch, d_out, d_in).

    rank r <= min(d_out, d_in); U, V have Haar orthonormal columns. spectrum: the r singular values
    (a list), or a profile: "ones" (s = 1), "linear" (s_k = (r - k + 1)/r, k = 1..r), "geometric"
    (s_k = decay^(k-1)), or "gaussian_factors" (Phi = G_1 G_2^T with G_1 (d_out, r), G_2 (d_in, r) of
    i.i.d. N(0, 1) entries: the target of Arora et al. 1905.13655; its spectrum is random).
    frobenius_norm: rescale Phi to this Frobenius norm (per matrix). All randomness from
    generator (or a fresh one seeded with seed).
    """
    if len(shape) != 2:
        raise ValueError(f"shape must be (d_out, d_in), got {tuple(shape)!r}")
    d_out, d_in = (_positive_int(v, "shape entries") for v in shape)
    rank = _positive_int(rank, "rank")
    if rank > min(d_out, d_in):
        raise ValueError(f"rank must be <= min(d_out, d_in) = {min(d_out, d_in)}, got {rank}")
    g = _generator(generator, seed)
    lead = () if batch is None else (_positive_int(batch, "batch"),)
    if isinstance(spectrum, str):
        if spectrum not in SPECTRA:
            raise ValueError(f"spectrum must be a list of {rank} singular values or one of {SPECTRA}, got {spectrum!r}")
        if spectrum == "gaussian_factors":
            G1 = torch.randn(*lead, d_out, rank, generator=g, dtype=dtype)
            G2 = torch.randn(*lead, d_in, rank, generator=g, dtype=dtype)
            return _rescale(G1 @ G2.mT, frobenius_norm)
        k = torch.arange(rank, dtype=dtype)
        if spectrum == "ones":
            s = torch.ones(rank, dtype=dtype)
        elif spectrum == "linear":
            s = (rank - k) / rank
        else:
            if not 0 < decay <= 1:
                raise ValueError(f"decay must be in (0, 1] for a geometric spectrum, got {decay!r}")
            s = decay**k
    else:
        s = torch.as_tensor(spectrum, dtype=dtype)
        if s.shape != (rank,) or not bool(torch.isfinite(s).all()) or bool((s <= 0).any()):
            raise ValueError(f"spectrum must list rank = {rank} positive finite singular values, got {spectrum!r}")
    U = orthonormal_columns(lead, d_out, rank, dtype, None, g)
    V = orthonormal_columns(lead, d_in, rank, dtype, None, g)
    return _rescale((U * s) @ V.mT, frobenius_norm)


def _rescale(Phi: torch.Tensor, norm: float | None) -> torch.Tensor:
    if norm is None:
        return Phi
    if not (isinstance(norm, (int, float)) and norm > 0):
        raise ValueError(f"frobenius_norm must be a positive number, got {norm!r}")
    return Phi * (norm / torch.linalg.matrix_norm(Phi).unsqueeze(-1).unsqueeze(-1))


def random_mask(
    shape: Sequence[int],
    *,
    fraction: float | None = None,
    count: int | None = None,
    batch: int | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """A 0/1 observation mask of shape (d_out, d_in), or (batch, d_out, d_in) (one mask per trajectory).

    Exactly `count` entries are observed (uniformly among all subsets of that size), or
    count = round(fraction * d_out * d_in). Give one of fraction (in (0, 1]) and count.
    """
    if len(shape) != 2:
        raise ValueError(f"shape must be (d_out, d_in), got {tuple(shape)!r}")
    d_out, d_in = (_positive_int(v, "shape entries") for v in shape)
    n = d_out * d_in
    if (fraction is None) == (count is None):
        raise ValueError("give exactly one of fraction (observed share of entries) and count (number observed)")
    if fraction is not None:
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
        count = max(1, int(round(fraction * n)))
    count = _positive_int(count, "count")
    if count > n:
        raise ValueError(f"count must be <= d_out * d_in = {n}, got {count}")
    g = _generator(generator, seed)
    B = 1 if batch is None else _positive_int(batch, "batch")
    # The first `count` entries of a uniform random permutation: a uniform subset of that size.
    order = torch.rand(B, n, generator=g, dtype=torch.float64).argsort(dim=-1)[:, :count]
    mask = torch.zeros(B, n, dtype=dtype).scatter_(1, order, 1.0).reshape(B, d_out, d_in)
    return mask[0] if batch is None else mask


def noisy_observations(
    target: torch.Tensor, mask: torch.Tensor, noise: float = 0.0, *, seed: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """mask o (Phi + noise * xi), xi i.i.d. N(0, 1): what a completion energy sees (zeros where unobserved).

    target (d_out, d_in) or (B, d_out, d_in); mask broadcastable to it (batched masks give a batch).
    noise = 0 needs no generator.
    """
    if not (isinstance(noise, (int, float)) and not isinstance(noise, bool) and noise >= 0):
        raise ValueError(f"noise must be a non-negative number (std of the observation noise), got {noise!r}")
    shape = torch.broadcast_shapes(target.shape, mask.shape)
    obs = target.expand(shape).clone()
    if noise > 0:
        g = _generator(generator, seed)
        obs = obs + noise * torch.randn(shape, generator=g, dtype=target.dtype)
    return mask.to(target.dtype) * obs


@dataclass
class CompletionProblem:
    """A completion problem: ground truth (d_out, d_in) or (B, ...), mask, observed values (noisy or not).
    Its energy: `dlnsim.energies.MatrixCompletion(observed, mask)`."""

    truth: torch.Tensor
    mask: torch.Tensor
    observed: torch.Tensor


def completion_problem(
    shape: Sequence[int], rank: int, *, fraction: float | None = None, count: int | None = None,
    spectrum="ones", frobenius_norm: float | None = None, mask_batch: int | None = None, noise: float = 0.0,
    target_seed: int = 0, mask_seed: int = 1, noise_seed: int = 2,
) -> CompletionProblem:
    """A low-rank target, a uniform random mask (one, or `mask_batch` of them: one per trajectory) and
    the observations; three seeds so that target, mask and noise vary independently in a sweep."""
    truth = low_rank_target(shape, rank, spectrum, frobenius_norm=frobenius_norm, seed=target_seed)
    mask = random_mask(shape, fraction=fraction, count=count, batch=mask_batch, seed=mask_seed)
    return CompletionProblem(truth, mask, noisy_observations(truth, mask, noise, seed=noise_seed))


@dataclass
class RegressionProblem:
    """Training data A (d_in, n), Y (d_out, n); held-out A_test (d_in, m), Y_test (d_out, m); teacher or None.
    Its energy: `dlnsim.energies.LinearRegression(inputs, outputs)`."""

    inputs: torch.Tensor
    outputs: torch.Tensor
    test_inputs: torch.Tensor
    test_outputs: torch.Tensor
    teacher: torch.Tensor | None = None


def regression_problem(
    d_in: int, d_out: int, n_train: int, n_test: int, *, teacher: torch.Tensor | None = None,
    teacher_rank: int | None = None, input_cov: torch.Tensor | Sequence[float] | None = None,
    label_noise: float = 0.0, seed: int | None = None, generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
) -> RegressionProblem:
    """Generated regression data: a ~ N(0, Sigma), y = T a + label_noise * xi.

    teacher: T (d_out, d_in), or None for a random one of rank teacher_rank (default min(d_in, d_out),
    unit singular values). input_cov: Sigma (d_in, d_in) (symmetric PSD), a list of its d_in
    eigenvalues (diagonal Sigma), or None for I. The test set is drawn from the same law.
    """
    d_in, d_out = _positive_int(d_in, "d_in"), _positive_int(d_out, "d_out")
    n_train, n_test = _positive_int(n_train, "n_train"), _positive_int(n_test, "n_test")
    g = _generator(generator, seed)
    if teacher is None:
        teacher = low_rank_target((d_out, d_in), teacher_rank or min(d_in, d_out), "ones", generator=g, dtype=dtype)
    else:
        teacher = torch.as_tensor(teacher, dtype=dtype)
        if teacher.shape != (d_out, d_in):
            raise ValueError(f"teacher must have shape (d_out, d_in) = ({d_out}, {d_in}), got {tuple(teacher.shape)}")
    if input_cov is None:
        root = torch.eye(d_in, dtype=dtype)
    else:
        C = torch.as_tensor(input_cov, dtype=dtype)
        if C.shape == (d_in,):
            if bool((C < 0).any()):
                raise ValueError("input_cov eigenvalues must be non-negative")
            root = torch.diag(C.sqrt())
        elif C.shape == (d_in, d_in):
            evals, evecs = torch.linalg.eigh(0.5 * (C + C.mT))
            if bool((evals < -1e-12 * evals.abs().max()).any()):
                raise ValueError("input_cov must be positive semi-definite")
            root = (evecs * evals.clamp(min=0).sqrt()) @ evecs.mT
        else:
            raise ValueError(f"input_cov must be ({d_in}, {d_in}) or a list of {d_in} eigenvalues, got shape {tuple(C.shape)}")
    if not (isinstance(label_noise, (int, float)) and label_noise >= 0):
        raise ValueError(f"label_noise must be a non-negative number, got {label_noise!r}")

    def draw(n):
        A = root @ torch.randn(d_in, n, generator=g, dtype=dtype)
        Y = teacher @ A
        if label_noise > 0:
            Y = Y + label_noise * torch.randn(d_out, n, generator=g, dtype=dtype)
        return A, Y

    A, Y = draw(n_train)
    At, Yt = draw(n_test)
    return RegressionProblem(A, Y, At, Yt, teacher)


def train_test_split(
    inputs: torch.Tensor, outputs: torch.Tensor, test_fraction: float, *, seed: int | None = None,
    generator: torch.Generator | None = None,
) -> RegressionProblem:
    """A random split of given data A (d_in, n), Y (d_out, n) into train and held-out columns."""
    if inputs.dim() != 2 or outputs.dim() != 2 or inputs.shape[1] != outputs.shape[1]:
        raise ValueError(
            f"inputs (d_in, n) and outputs (d_out, n) need the same n, got shapes {tuple(inputs.shape)} and {tuple(outputs.shape)}"
        )
    n = inputs.shape[1]
    if not (isinstance(test_fraction, (int, float)) and 0 < test_fraction < 1):
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    m = int(round(test_fraction * n))
    if not 1 <= m <= n - 1:
        raise ValueError(f"test_fraction {test_fraction} of n = {n} samples leaves an empty train or test set")
    perm = torch.randperm(n, generator=_generator(generator, seed))
    te, tr = perm[:m], perm[m:]
    return RegressionProblem(inputs[:, tr], outputs[:, tr], inputs[:, te], outputs[:, te], None)


def load_matrix(path: str | Path, dtype: torch.dtype = torch.float64, what: str = "matrix file") -> torch.Tensor:
    """A matrix (2-D) or batch of matrices (3-D) from .npy (no pickles), .csv or .txt (whitespace
    separated): a target, mask or data. Read by `dlnsim.safe_io.load_array_file` (regular files of
    bounded size, finite numbers); errors are one line starting with `what`."""
    return torch.as_tensor(load_array_file(os.fspath(path), what, ndim=(2, 3)), dtype=dtype)
