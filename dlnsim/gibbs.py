"""The stationary (Gibbs) law of the DLN Langevin dynamics, on X and on its singular values.

Both Langevin descriptions of docs/theory.md section 6 (constrained Langevin on the balanced manifold,
and the Riemannian Langevin equation for X) leave invariant exp(-beta E(X) + S(X)) dvol_{g^N}(X).
With dvol_g = det(A_{N,X})^{-1/2} dX, det A = prod_{all i,j} K_ij, K_ii = N s_i^{2(N-1)/N} and
e^S = c_d^{N-1} prod_{i<j} K_ij^{1/2}, the density with respect to Lebesgue measure dX is

    p(X) ∝ exp(-beta E(X)) prod_i s_i^{-(N-1)/N} prod_{i<j} K_ij(s)^{-1/2}.

For orthogonally invariant E, dX = const prod_{i<j} |s_i^2 - s_j^2| ds dU dV gives the law of the
ordered singular values s_1 > ... > s_d > 0:

    p(s) ∝ exp(-beta E(s)) prod_i s_i^{-(N-1)/N} prod_{i<j} K_ij^{-1/2} |s_i^2 - s_j^2|.

det X takes both signs with this same law of s.

Wrong laws, for showing that a test has power (keywords `entropy` and `volume`):
- entropy=False drops the entropy factor e^{S} = prod_{i<j} K_ij^{1/2} and keeps the Riemannian
  volume: exp(-beta E) dvol_g, i.e. p(X) ∝ exp(-beta E) prod s_i^{-(N-1)/N} prod_{i<j} K_ij^{-1}.
  This is the law a Riemannian Langevin equation for E alone on (GL_d, g^N) would sample (the RLE
  with its entropic drift A(grad S)/beta removed). For d = 1, S is constant: it equals the true law.
- volume="lebesgue" replaces dvol_g by dX: with entropy=False this is the Euclidean Gibbs law
  exp(-beta E) dX (for E = alpha/2 ||X||^2, X Gaussian), which is also the true law at N = 1.

Shapes: X (..., d, d); s (..., d) sorted descending; log-densities (...,). beta is a number or a
tensor broadcastable to the batch shape. `SingularValueLaw` normalises p(s) for
E = alpha/2 ||X||^2 by tensor-product Gauss-Legendre quadrature (d <= 3).
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from ._checks import as_beta, check_depth, check_matrix
from .spectral import _log_ratio, log_kernel

__all__ = ["gibbs_log_density", "singular_value_log_density", "SingularValueLaw", "VOLUMES"]

VOLUMES = ("metric", "lebesgue")


def _check_law_options(entropy, volume) -> None:
    if not isinstance(entropy, bool):
        raise ValueError(f"entropy must be True (the Gibbs law) or False (the law without e^S), got {entropy!r}")
    if volume not in VOLUMES:
        raise ValueError(f"volume must be one of {VOLUMES} (dvol_g or Lebesgue dX), got {volume!r}")


def _spectral_log_factor(s: torch.Tensor, depth: int, entropy: bool, volume: str) -> torch.Tensor:
    """log of [dvol_g/dX if metric] * [e^S / c_d^{N-1} if entropy], as a function of s (..., d)."""
    d = s.shape[-1]
    i, j = torch.triu_indices(d, d, offset=1, device=s.device).unbind(0)
    logK = log_kernel(s, depth)[..., i, j].sum(dim=-1)
    out = torch.zeros_like(s[..., 0])
    if volume == "metric":
        # det(A)^{-1/2} = prod_i K_ii^{-1/2} prod_{i<j} K_ij^{-1}, K_ii^{-1/2} = N^{-1/2} s_i^{-(N-1)/N}.
        out = out - (depth - 1) / depth * torch.log(s).sum(dim=-1) - logK
    if entropy:
        out = out + 0.5 * logK
    return out


def _beta(beta, ref: torch.Tensor) -> torch.Tensor:
    b = as_beta(beta, ref, trailing=0)
    if bool((b <= 0).any()):
        raise ValueError(f"beta must be positive, got {beta!r}")
    return b


def gibbs_log_density(
    X: torch.Tensor,
    energy,
    depth: int,
    beta,
    *,
    entropy: bool = True,
    volume: str = "metric",
) -> torch.Tensor:
    """Unnormalised log p(X) w.r.t. Lebesgue dX: -beta E(X) - (N-1)/N sum_i log s_i - 1/2 sum_{i<j} log K_ij.

    X: (..., d, d); energy: an `Energy` or any callable X -> (...,); beta: number or tensor
    broadcastable to (...,). Returns (...,); +inf-free but -inf/NaN-prone at rank-deficient X
    (the density has an integrable singularity there). entropy/volume select the wrong laws of the
    module docstring.
    """
    check_depth(depth)
    check_matrix(X, square=True)
    _check_law_options(entropy, volume)
    s = torch.linalg.svdvals(X)
    E = energy.value(X) if hasattr(energy, "value") else energy(X)
    return -_beta(beta, X) * E + _spectral_log_factor(s, depth, entropy, volume)


def singular_value_log_density(
    s: torch.Tensor,
    depth: int,
    beta,
    energy_of_s: Callable[[torch.Tensor], torch.Tensor],
    *,
    entropy: bool = True,
    volume: str = "metric",
) -> torch.Tensor:
    """Unnormalised log density of the ordered singular values s_1 > ... > s_d > 0 (w.r.t. ds):

        -beta E(s) - (N-1)/N sum_i log s_i - 1/2 sum_{i<j} log K_ij + sum_{i<j} log |s_i^2 - s_j^2|.

    s: (..., d) sorted descending, positive; energy_of_s: s -> (...,) (E as a function of the
    singular values, for orthogonally invariant E). Returns (...,).
    """
    check_depth(depth)
    _check_law_options(entropy, volume)
    d = s.shape[-1]
    i, j = torch.triu_indices(d, d, offset=1, device=s.device).unbind(0)
    sq = s * s
    log_vdm = torch.log((sq[..., i] - sq[..., j]).abs()).sum(dim=-1)
    return -_beta(beta, s) * energy_of_s(s) + _spectral_log_factor(s, depth, entropy, volume) + log_vdm


def _gauss_legendre_cube(k: int, n: int, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Tensor-product Gauss-Legendre nodes (n^k, k) and weights (n^k,) on [0, 1]^k."""
    t, w = np.polynomial.legendre.leggauss(n)
    t = torch.tensor((t + 1) / 2, dtype=dtype)
    w = torch.tensor(w / 2, dtype=dtype)
    if k == 0:
        return torch.zeros(1, 0, dtype=dtype), torch.ones(1, dtype=dtype)
    grids = torch.meshgrid(*([t] * k), indexing="ij")
    wgrids = torch.meshgrid(*([w] * k), indexing="ij")
    y = torch.stack([g.reshape(-1) for g in grids], dim=-1)
    wy = torch.stack([g.reshape(-1) for g in wgrids], dim=-1).prod(dim=-1)
    return y, wy


def _chamber(y: torch.Tensor, wy: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor):
    """Map cube nodes to the chamber hi >= x_1 > ... > x_k >= lo, batched over lo, hi (Q,).

    x_1 = lo + (hi - lo) y_1, x_{j+1} = lo + (x_j - lo) y_{j+1}: a 'polar' map whose Jacobian
    (hi - lo) prod_{j<k} (x_j - lo) vanishes where the chamber pinches, so that the integrand,
    homogeneous near the corner, stays smooth on the cube. Returns x (Q, P, k), weights (Q, P).
    """
    lo = lo.unsqueeze(-1)
    hi = hi.unsqueeze(-1)
    k = y.shape[-1]
    cols = []
    jac = torch.ones_like(lo * wy)
    prev = hi
    for j in range(k):
        jac = jac * (prev - lo)
        x = lo + (prev - lo) * y[:, j]
        cols.append(x)
        prev = x
    if k == 0:
        return torch.zeros(lo.shape[0], 1, 0, dtype=y.dtype), jac
    return torch.stack(cols, dim=-1), jac * wy


class SingularValueLaw:
    """Law of the ordered singular values of X under exp(-beta E + S) dvol_g, E = alpha/2 ||X||^2.

    depth N >= 1, beta > 0, alpha > 0, d in {1, 2, 3}. entropy / volume: see the module docstring
    (entropy=False is the law without the entropy factor e^S; a deliberately wrong law).

    Normalised by quadrature in the layer variables x_i = s_i^{1/N}: the substitution s = x^N
    turns ds_i s_i^{-(N-1)/N} into N dx_i (removing the integrable singularity at s = 0) and
    |s_i^2 - s_j^2| K_ij^{-1/2} into |x_i^2 - x_j^2| K_ij(x^N)^{1/2}, K a polynomial in x; the
    chamber is mapped to the unit cube by `_chamber`, on which the integrand is smooth, and
    integrated by n_quad-point tensor Gauss-Legendre (default: 80, 64, 40 points per dimension for
    d = 1, 2, 3, more for depth > 10; check a result by a second n_quad). The domain is truncated at
    beta alpha s_1^2 / 2 = 60 (relative mass beyond it < 1e-20).

    moment(f):  E f(s) for f: s (P, d) descending -> (P,) or (P, ...).
    pdf(s):     joint density of the ordered s (..., d) on the chamber (normalised).
    pdf_max(x), pdf_min(x), cdf_max(x), cdf_min(x): marginal density / CDF of s_max = s_1 and
                s_min = s_d at x (any shape). CDFs come from a table of n_table panels (cumulative
                Gauss-Legendre of the marginal density) with cubic Hermite interpolation.
    log_normaliser: log of the integral of exp(singular_value_log_density) over the chamber.
    """

    def __init__(
        self,
        depth: int,
        beta: float,
        alpha: float,
        d: int,
        entropy: bool = True,
        *,
        volume: str = "metric",
        n_quad: int | None = None,
        n_table: int = 200,
        dtype=torch.float64,
    ):
        check_depth(depth)
        _check_law_options(entropy, volume)
        if isinstance(d, bool) or not isinstance(d, int) or not 1 <= d <= 3:
            raise ValueError(f"d must be 1, 2 or 3 (tensor-product quadrature), got {d!r}")
        for name, v in (("beta", beta), ("alpha", alpha)):
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive number, got {v!r}")
        self.depth, self.beta, self.alpha, self.d = depth, float(beta), float(alpha), d
        self.entropy, self.volume, self.dtype = entropy, volume, dtype
        if n_quad is None:
            # In x = s^{1/N} the density falls off over a width ~1/N near x = 1: the resolution
            # grows with depth (measured: moments to ~1e-13 for N <= 100, d <= 2; ~1e-5 at d = 3, N = 30-100).
            n_quad = {1: max(80, min(4 * depth, 400)), 2: max(64, min(4 * depth, 400)), 3: max(40, min(2 * depth, 100))}[d]
        self.n_quad = n_quad
        self.n_table = n_table
        self.s_cut = math.sqrt(2.0 * 60.0 / (self.beta * self.alpha))
        self.x_cut = self.s_cut ** (1.0 / depth)
        y, wy = _gauss_legendre_cube(d, self.n_quad, dtype)
        x, w = _chamber(y, wy, torch.zeros(1, dtype=dtype), torch.full((1,), self.x_cut, dtype=dtype))
        x, w = x[0], w[0]
        logf = self._log_integrand_x(x)
        # Shift by the maximum so that exp never overflows or underflows wholesale.
        self._shift = float(logf.max())
        self._nodes_s = x**depth
        self._weights = w * torch.exp(logf - self._shift)
        Z = self._weights.sum()
        self.log_normaliser = float(torch.log(Z)) + self._shift
        self._weights = self._weights / Z
        self._table = {}

    # --- densities -------------------------------------------------------------------------
    def energy_of_s(self, s: torch.Tensor) -> torch.Tensor:
        return 0.5 * self.alpha * (s * s).sum(dim=-1)

    def log_density(self, s: torch.Tensor) -> torch.Tensor:
        """Unnormalised log p(s), s (..., d) descending (this law's variant of singular_value_log_density)."""
        return singular_value_log_density(
            s, self.depth, self.beta, self.energy_of_s, entropy=self.entropy, volume=self.volume
        )

    def _log_integrand_x(self, x: torch.Tensor) -> torch.Tensor:
        """log of p(s(x)) |ds/dx| for x = s^{1/N} (..., d), descending.

        The same function as log_density(x^N) + sum_i log(N x_i^{N-1}) (checked in the tests), but
        written in log x so that s = x^N never underflows (depth in the hundreds): with
        l_ij = 2 log max(x_i, x_j), delta_ij = 2 |log x_i - log x_j|,
            log K_ij = (N-1) l_ij + log sum_{k<N} e^{-k delta_ij},
            log |s_i^2 - s_j^2| = N l_ij + log(1 - e^{-N delta_ij}).
        """
        N = self.depth
        d = x.shape[-1]
        lx = torch.log(x)
        i, j = torch.triu_indices(d, d, offset=1, device=x.device).unbind(0)
        l_max = 2 * torch.maximum(lx[..., i], lx[..., j])
        delta = 2 * (lx[..., i] - lx[..., j]).abs()
        logK = ((N - 1) * l_max + _log_ratio(delta, N)).sum(dim=-1)
        log_vdm = (N * l_max + torch.log(-torch.expm1(-N * delta))).sum(dim=-1)
        energy = 0.5 * self.alpha * torch.exp(2 * N * lx).sum(dim=-1)
        out = -self.beta * energy + log_vdm + (math.log(N) + (N - 1) * lx).sum(dim=-1)
        if self.volume == "metric":
            out = out - (N - 1) * lx.sum(dim=-1) - logK
        if self.entropy:
            out = out + 0.5 * logK
        return out

    def pdf(self, s: torch.Tensor) -> torch.Tensor:
        """Normalised joint density of s (..., d), sorted descending, w.r.t. ds on the chamber."""
        s = torch.as_tensor(s, dtype=self.dtype)
        return torch.exp(self.log_density(s) - self.log_normaliser)

    # --- moments ---------------------------------------------------------------------------
    def moment(self, f: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """E f(s) under the law; f maps s (P, d) (descending) to (P,) or (P, ...). Returns a tensor."""
        vals = f(self._nodes_s)
        w = self._weights.reshape(-1, *([1] * (vals.dim() - 1)))
        return (w * vals).sum(dim=0)

    # --- marginals of s_max and s_min, in the layer variable u = s^{1/N} --------------------------
    def _marginal_x(self, u: torch.Tensor, which: str) -> torch.Tensor:
        """Normalised density of x_1 (which="max") or x_d ("min") at u (Q,), w.r.t. du."""
        d = self.d
        y, wy = _gauss_legendre_cube(d - 1, self.n_quad, self.dtype)
        out = []
        chunk = max(1, 2_000_000 // y.shape[0])
        # The marginal is continuous at u = 0, where the integrand is a 0 * inf limit (N > 1): evaluate
        # it a hair inside (the error, u_min * f', is ~1e-9 of f).
        u_min = 1e-6 * self.x_cut / self.n_table
        for u_raw in u.split(chunk):
            uc = u_raw.clamp_min(u_min)
            if which == "max":
                x, w = _chamber(y, wy, torch.zeros_like(uc), uc)
                full = torch.cat([uc[:, None, None].expand(-1, x.shape[1], 1), x], dim=-1)
            else:
                x, w = _chamber(y, wy, uc, torch.full_like(uc, self.x_cut))
                full = torch.cat([x, uc[:, None, None].expand(-1, x.shape[1], 1)], dim=-1)
            vals = torch.exp(self._log_integrand_x(full) - self._shift)
            ok = (u_raw >= 0) & (u_raw < self.x_cut)
            out.append(torch.where(ok, (w * torch.nan_to_num(vals)).sum(dim=-1), torch.zeros_like(uc)))
        return torch.cat(out) / torch.exp(torch.tensor(self.log_normaliser - self._shift, dtype=self.dtype))

    def _pdf_marginal(self, x, which: str) -> torch.Tensor:
        s = torch.as_tensor(x, dtype=self.dtype)
        flat = s.reshape(-1)
        u = flat.clamp_min(0) ** (1.0 / self.depth)
        # p_s(s) = p_u(u) du/ds, du/ds = u^{1-N} / N.
        dens = self._marginal_x(u, which) * u ** (1 - self.depth) / self.depth
        return torch.where(flat < 0, torch.zeros_like(dens), dens).reshape(s.shape)

    def pdf_max(self, x) -> torch.Tensor:
        """Density of s_max at x (any shape)."""
        return self._pdf_marginal(x, "max")

    def pdf_min(self, x) -> torch.Tensor:
        """Density of s_min at x (any shape)."""
        return self._pdf_marginal(x, "min")

    def _cdf_table(self, which: str):
        """(grid u (M+1,), F (M+1,), f (M+1,)): CDF and density of x_1 or x_d on a uniform grid in u."""
        if which not in self._table:
            M, m = self.n_table, 6
            grid = torch.linspace(0.0, self.x_cut, M + 1, dtype=self.dtype)
            t, w = np.polynomial.legendre.leggauss(m)
            t = torch.tensor((t + 1) / 2, dtype=self.dtype)
            w = torch.tensor(w / 2, dtype=self.dtype)
            h = grid[1] - grid[0]
            nodes = (grid[:-1, None] + h * t).reshape(-1)
            panel = (self._marginal_x(nodes, which).reshape(M, m) * w).sum(dim=-1) * h
            F = torch.cat([torch.zeros(1, dtype=self.dtype), panel.cumsum(0)])
            f = self._marginal_x(grid, which)
            self._table[which] = (grid, F, f)
        return self._table[which]

    def _cdf(self, x, which: str) -> torch.Tensor:
        s = torch.as_tensor(x, dtype=self.dtype)
        grid, F, f = self._cdf_table(which)
        u = s.reshape(-1).clamp(0, self.s_cut) ** (1.0 / self.depth)
        h = grid[1] - grid[0]
        k = torch.clamp((u / h).floor().long(), 0, grid.numel() - 2)
        t = (u - grid[k]) / h
        # Cubic Hermite with exact values and slopes at both ends: error O(h^4 f''').
        h00 = (1 + 2 * t) * (1 - t) ** 2
        h10 = t * (1 - t) ** 2
        h01 = t * t * (3 - 2 * t)
        h11 = t * t * (t - 1)
        val = h00 * F[k] + h10 * h * f[k] + h01 * F[k + 1] + h11 * h * f[k + 1]
        val = torch.where(s.reshape(-1) >= self.s_cut, torch.ones_like(val), val)
        return val.clamp(0.0, 1.0).reshape(s.shape)

    def cdf_max(self, x) -> torch.Tensor:
        """P(s_max <= x), any shape."""
        return self._cdf(x, "max")

    def cdf_min(self, x) -> torch.Tensor:
        """P(s_min <= x), any shape."""
        return self._cdf(x, "min")

    # Aliases under the names of the shared API notes.
    cdf_smax = cdf_max
    cdf_smin = cdf_min
    pdf_smax = pdf_max
    pdf_smin = pdf_min

    def __repr__(self) -> str:
        return (
            f"SingularValueLaw(depth={self.depth}, beta={self.beta}, alpha={self.alpha}, d={self.d}, "
            f"entropy={self.entropy}, volume={self.volume!r})"
        )
