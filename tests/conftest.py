"""Shared fixtures for the dlnsim test suite.

Every test works in float64 with explicit dtypes (the library's default) and seeds its own
torch.Generator, so tests are reproducible and independent of execution order.
"""
import pytest
import torch

# The CI machine has 2 cores shared by several jobs; the matrices here are tiny, so one thread
# is also the fastest setting.
torch.set_num_threads(1)

DTYPE = torch.float64


@pytest.fixture
def gen():
    """A fresh CPU torch.Generator with a fixed seed (one per test)."""
    return torch.Generator().manual_seed(20240611)


def make_generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_orthogonal(d: int, batch=(), generator=None) -> torch.Tensor:
    """Haar O(d) matrices (*batch, d, d) by QR of a Gaussian with the sign fix (test-side copy)."""
    Z = torch.randn(*batch, d, d, dtype=DTYPE, generator=generator)
    Q, R = torch.linalg.qr(Z)
    return Q * torch.sign(torch.diagonal(R, dim1=-2, dim2=-1)).unsqueeze(-2)


def matrix_with_spectrum(s: torch.Tensor, generator=None) -> torch.Tensor:
    """X = U diag(s) V^T with Haar U, V; s of shape (*batch, d)."""
    d = s.shape[-1]
    U = random_orthogonal(d, s.shape[:-1], generator)
    V = random_orthogonal(d, s.shape[:-1], generator)
    return (U * s.unsqueeze(-2)) @ V.mT


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max over the batch of ||a - b|| / ||b|| (Frobenius over the trailing matrix dims)."""
    if a.dim() < 2:
        return float((a - b).abs().max() / b.abs().max())
    num = (a - b).flatten(-2).norm(dim=-1)
    den = b.flatten(-2).norm(dim=-1)
    return float((num / den).max())
