"""Statistics for checking simulated ensembles against an analytic law: KS tests, standard errors, z-scores.

- ks_test(samples, cdf) -> (D, p): one-sample Kolmogorov-Smirnov test. D = sup_x |F_n(x) - F(x)|;
  p from the asymptotic Kolmogorov distribution P(K > t) evaluated at Stephens' finite-n
  corrected argument t = D (sqrt(n) + 0.12 + 0.11/sqrt(n)) (Stephens 1970). Against the exact
  finite-n distribution (Marsaglia, Tsang & Wang 2003; the test oracle): absolute error of p
  below 0.015 for n >= 10, relative error below 6% for n >= 20 and 1e-3 <= p <= 0.5.
- independent_chain_stderr(values): standard error of the mean of per-chain time averages,
  values (T, C, ...) from C independent chains (exact up to the estimate of the chains' spread;
  no assumption on the autocorrelation within a chain).
- batch_means_stderr(values, n_batches): standard error of the mean of one long correlated series.
- zscore(estimate, truth, stderr) = (estimate - truth) / stderr.
- richardson(m_h, se_h, m_half, se_half, order): extrapolation to h -> 0 from runs at h and h/2.
- split_rhat(values), effective_sample_size(values): MCMC convergence diagnostics across C chains,
  values (T, C) or (T, C, k): split R-hat (Gelman et al., BDA3 section 11.4) and the ESS from the
  multi-chain autocorrelation truncated by Geyer's initial monotone sequence (as in Stan).

These run once per analysis on the host (they return Python floats or small tensors); they are
not part of any per-step code.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

__all__ = [
    "kolmogorov_sf", "ks_test", "independent_chain_stderr", "batch_means_stderr", "zscore", "mean_and_stderr",
    "split_rhat", "effective_sample_size", "richardson",
]


def kolmogorov_sf(t: float) -> float:
    """P(K > t) for the Kolmogorov distribution K = sup |Brownian bridge|.

    Two series, each used where it converges in a handful of terms (both are accurate to ~1e-16 at t = 1):
    t >= 1: 2 sum_{k>=1} (-1)^{k-1} exp(-2 k^2 t^2);
    t <  1: 1 - sqrt(2 pi)/t sum_{k>=1} exp(-(2k-1)^2 pi^2 / (8 t^2)).
    """
    t = float(t)
    if t <= 0:
        return 1.0
    if t >= 1.0:
        total = 0.0
        for k in range(1, 101):
            term = math.exp(-2.0 * k * k * t * t)
            total += term if k % 2 == 1 else -term
            if term < 1e-300:
                break
        return min(max(2.0 * total, 0.0), 1.0)
    total = 0.0
    for k in range(1, 101):
        term = math.exp(-((2 * k - 1) ** 2) * math.pi**2 / (8.0 * t * t))
        total += term
        if term < 1e-300 or term < 1e-17 * total:
            break
    return min(max(1.0 - math.sqrt(2.0 * math.pi) / t * total, 0.0), 1.0)


def ks_test(samples: torch.Tensor, cdf: Callable[[torch.Tensor], torch.Tensor]) -> tuple[float, float]:
    """One-sample KS test of `samples` (n,) against the continuous CDF `cdf` (tensor -> tensor).

    Returns (D, p_value) as Python floats. Non-finite samples are an error (a NaN would silently
    sort to the end): filter them, and report how many, before testing.
    """
    x = torch.as_tensor(samples).detach().reshape(-1)
    n = x.numel()
    if n == 0:
        raise ValueError("ks_test needs at least one sample, got an empty tensor")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"ks_test samples contain {int((~torch.isfinite(x)).sum())} non-finite values; filter them first")
    x = x.to(torch.float64).cpu().sort().values  # a statistic, not a hot path: host is fine
    F = torch.as_tensor(cdf(x), dtype=torch.float64).cpu().reshape(-1)
    if F.numel() != n:
        raise ValueError(f"cdf must map a tensor of shape ({n},) to one of the same shape, got {F.numel()} values")
    i = torch.arange(1, n + 1, dtype=torch.float64)
    D = float(torch.maximum(i / n - F, F - (i - 1) / n).max())
    rn = math.sqrt(n)
    return D, kolmogorov_sf(D * (rn + 0.12 + 0.11 / rn))


def independent_chain_stderr(values: torch.Tensor) -> torch.Tensor:
    """Standard error of the grand mean from C independent chains: std_c(mean_t values) / sqrt(C).

    values: (T, C, ...) (T samples along each of C chains) or (C,) (one sample per chain).
    Returns a tensor of shape values.shape[2:] (a 0-dim tensor for (T, C) or (C,)). The chains
    must be independent of each other; correlation along a chain is allowed (it is averaged out
    before the spread across chains is taken). Needs C >= 2.
    """
    v = torch.as_tensor(values)
    if v.dim() == 1:
        v = v.unsqueeze(0)
    if v.dim() < 2 or v.shape[1] < 2:
        raise ValueError(f"values must have shape (T, C, ...) with C >= 2 independent chains, got {tuple(v.shape)}")
    chain_means = v.to(torch.float64).mean(dim=0)
    return chain_means.std(dim=0, unbiased=True) / math.sqrt(v.shape[1])


def mean_and_stderr(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(grand mean, independent_chain_stderr) of values (T, C, ...) or (C,)."""
    v = torch.as_tensor(values)
    v2 = v.unsqueeze(0) if v.dim() == 1 else v
    return v2.to(torch.float64).mean(dim=(0, 1)), independent_chain_stderr(v)


def batch_means_stderr(values: torch.Tensor, n_batches: int = 20) -> torch.Tensor:
    """Standard error of the mean of one correlated series (T, ...) by non-overlapping batch means.

    Valid when each batch (T // n_batches samples; a remainder at the start is dropped) is much
    longer than the autocorrelation time. Returns shape values.shape[1:].
    """
    v = torch.as_tensor(values).to(torch.float64)
    if isinstance(n_batches, bool) or not isinstance(n_batches, int) or n_batches < 2:
        raise ValueError(f"n_batches must be an integer >= 2, got {n_batches!r}")
    T = v.shape[0]
    m = T // n_batches
    if m < 1:
        raise ValueError(f"a series of length {T} cannot be split into {n_batches} batches; use fewer batches")
    v = v[T - m * n_batches:].reshape(n_batches, m, *v.shape[1:]).mean(dim=1)
    return v.std(dim=0, unbiased=True) / math.sqrt(n_batches)


def zscore(estimate, truth, stderr):
    """(estimate - truth) / stderr; floats or broadcastable tensors."""
    return (estimate - truth) / stderr


def _chains(values) -> torch.Tensor:
    v = torch.as_tensor(values).to(torch.float64)
    if v.dim() == 2:
        v = v.unsqueeze(-1)
    if v.dim() != 3 or v.shape[1] < 2 or v.shape[0] < 4:
        raise ValueError(f"values must have shape (T, C) or (T, C, k) with C >= 2 chains and T >= 4, got {tuple(v.shape)}")
    return v


def split_rhat(values) -> torch.Tensor:
    """Split R-hat: each chain cut in halves, sqrt(var_plus / W) with W the mean within-half variance and
    var_plus = (n-1)/n W + var(half means). values (T, C) or (T, C, k); returns (k,) (or (1,))."""
    v = _chains(values)
    n = v.shape[0] // 2
    halves = torch.cat([v[:n], v[v.shape[0] - n:]], dim=1)  # (n, 2C, k)
    W = halves.var(dim=0, unbiased=True).mean(dim=0)
    B_n = halves.mean(dim=0).var(dim=0, unbiased=True)
    return torch.sqrt(((n - 1) / n * W + B_n) / W)


def effective_sample_size(values) -> torch.Tensor:
    """ESS = C T / tau, tau = -1 + 2 sum_t P_t, P_t = rho_{2t} + rho_{2t+1} summed while positive and made
    monotone (Geyer's initial monotone sequence); rho_t = 1 - (W - mean_c acov_c(t)) / var_plus combines the
    chains (Stan's estimator). values (T, C) or (T, C, k); returns (k,)."""
    v = _chains(values)
    T, C, k = v.shape
    x = v - v.mean(dim=0)
    nfft = 1 << (2 * T - 1).bit_length()
    f = torch.fft.rfft(x, n=nfft, dim=0)
    acov = torch.fft.irfft(f * f.conj(), n=nfft, dim=0)[:T] / T  # (T, C, k), biased autocovariance
    W = v.var(dim=0, unbiased=True).mean(dim=0)
    var_plus = (T - 1) / T * W + (v.mean(dim=0).var(dim=0, unbiased=True) if C > 1 else 0.0)
    rho = 1.0 - (W - acov.mean(dim=1)) / var_plus  # (T, k)
    out = torch.empty(k, dtype=torch.float64)
    for j in range(k):
        r = rho[:, j].tolist()
        total, prev = 0.0, float("inf")
        for t in range(0, T - 1, 2):
            P = r[t] + r[t + 1]
            if P <= 0:
                break
            P = min(P, prev)
            total += P
            prev = P
        tau = max(-1.0 + 2.0 * total, 1.0 / math.log10(max(C * T, 10)))
        out[j] = C * T / tau
    return out


def richardson(m_h, se_h, m_half, se_half, order: int = 1):
    """Richardson extrapolation to h -> 0 from runs at h and h/2 with independent noise.

    m0 = m_half + (m_half - m_h) / (2^p - 1), p = order; its standard error
    sqrt((c se_half)^2 + ((c - 1) se_h)^2), c = 2^p / (2^p - 1). Floats or broadcastable tensors.
    Returns (m0, se0, difference m_half - m_h).
    """
    c = 2.0**order / (2.0**order - 1.0)
    m0 = c * m_half - (c - 1.0) * m_h
    se0 = ((c * se_half) ** 2 + ((c - 1.0) * se_h) ** 2) ** 0.5
    return m0, se0, m_half - m_h
