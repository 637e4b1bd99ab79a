"""An independent reference for the stationary law exp(-beta E(X) + S(X)) dvol_g on GL_d, for any energy.

The law of both Langevin descriptions (docs/theory.md, "The stationary law"), with respect to Lebesgue dX:

    p(X) ∝ exp(-beta E(X)) prod_i s_i^{-(N-1)/N} prod_{i<j} K_ij(s)^{-1/2}        (dlnsim.gibbs.gibbs_log_density).

Everything here works in the layer chart Y = U diag(x) V^T, x = s^{1/N} (so X = U diag(x^N) V^T),
where dX = prod_i N x_i^{N-1} prod_{i<j} k_ij(x) dY with k_ij(x) = sum_{m<N} x_i^{2(N-1-m)} x_j^{2m}
(= K_ij(s)), and the law becomes

    p(X) dX ∝ exp(-beta E(X(Y))) prod_{i<j} k_ij(x)^{1/2} dY,

bounded and continuous through rank-deficient X: the integrable singularity s^{-(N-1)/N} is gone,
and det Y (sign det X) changes sign smoothly across x_d = 0, so the two components of GL_d are
handled by one integrand (or one chain) and a component can be selected by the sign of det Y.

Methods (`gibbs_reference(energy, d, depth, beta, ...)` picks one):

- d = 1, quadrature: X = sign * y^N, y in [0, R], composite Gauss-Legendre in y (integrand
  exp(-beta E) N, entire in y): spectral convergence.
- d = 2, quadrature: Y = R(theta) diag(x_1, eps x_2) R(phi)^T, x_1 >= x_2 >= 0, eps = +-1,
  theta, phi in [0, 2 pi) (a 2-to-1 cover of GL_2 up to a null set) with
  dY ∝ (x_1^2 - x_2^2) dx_1 dx_2 dtheta dphi (checked against autograd in the tests). The chamber is mapped to the
  unit square (x_1 = R t_1, x_2 = x_1 t_2) and integrated by tensor Gauss-Legendre; the angles by
  the trapezoid rule, which is spectrally accurate for smooth periodic integrands (every energy
  of the package is a polynomial in the entries). The integrand is smooth on this domain, so
  the error falls exponentially with the number of nodes; `error_estimate=True` repeats the
  rule at 3/4 of the nodes in every direction and reports the difference as the error. For
  orthogonally invariant energies the weight is computed on the 2-D (x_1, x_2) grid only
  ("2-D quadrature in singular values"), and 8 angles suffice for the observables (exact for
  trigonometric polynomials of degree < 8, i.e. all moments of degree < 8 in the entries).
- any d, "mcmc": random-walk Metropolis in Y coordinates (a symmetric Gaussian proposal; the
  target is the density above, i.e. p(X(Y)) times the exact Jacobian dX/dY), several independent
  chains from overdispersed starts, step size tuned per chain during burn-in and then frozen;
  convergence diagnostics split R-hat and effective sample size (dlnsim.stats) per observable,
  standard errors sd / sqrt(ESS). Exact (no discretisation bias) up to Monte-Carlo error.
  component=+-1 rejects proposals that change the sign of det Y: exact for the restricted law.

Truncation: the quadrature domain is grown (or shrunk) until the log-integrand on its outer edge
is 40 below its maximum (relative mass beyond < e^{-40} up to polynomial factors). An energy that
does not confine X (e.g. matrix completion with unobserved entries) makes the law non-normalisable:
ValueError saying so.

This module shares nothing with the dynamics it checks: only the energy's `value` is called; the
kernel k_ij, the chart and the quadrature are written here from the formulas (the tests check the
integrand against `dlnsim.gibbs.gibbs_log_density` plus the Jacobian).

Shapes: observables f map X (P, d, d) to (P,) or (P, k); results are tensors of shape () or (k,).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from .stats import effective_sample_size, independent_chain_stderr, split_rhat

__all__ = [
    "GibbsReference", "gibbs_reference", "layer_log_density", "METHODS",
    "HEADLINE", "headline_observables", "reference_or_reason", "compare",
]

METHODS = ("auto", "quadrature", "mcmc")
_DROP = 40.0  # log-integrand drop at the truncation edge
_PRUNE = 1e-14  # quadrature nodes with weight below this fraction of the largest are dropped (mass < 1e-7)


def _log_k(a_i: torch.Tensor, a_j: torch.Tensor, depth: int) -> torch.Tensor:
    """log sum_{m<N} a_i^{N-1-m} a_j^m for a = x^2 >= 0: log-space geometric sum, no cancellation.

    With l = log max, r = min/max in [0, 1]: (N-1) l + log((1 - r^N)/(1 - r)); r = 1 gives log N.
    """
    N = depth
    if N == 1:
        return torch.zeros_like(a_i)
    hi = torch.maximum(a_i, a_j)
    lo = torch.minimum(a_i, a_j)
    lr = torch.log(lo) - torch.log(hi)  # <= 0, -inf when lo = 0
    lr = torch.nan_to_num(lr, nan=0.0)  # 0/0 (both zero): the sum is then 0, handled by (N-1) log hi = -inf
    eq = lr == 0
    safe = torch.where(eq, -torch.ones_like(lr), lr)
    ratio = torch.log(torch.expm1(N * safe) / torch.expm1(safe))
    return (N - 1) * torch.log(hi) + torch.where(eq, torch.full_like(lr, math.log(N)), ratio)


def layer_log_density(Y: torch.Tensor, energy, depth: int, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(log q(Y), X(Y)): q(Y) = exp(-beta E(X)) prod_{i<j} k_ij(x)^{1/2}, X = U diag(x^N) V^T for Y = U diag(x) V^T.

    Y: (P, d, d). log q is the log-density of the Gibbs law in the layer chart up to a constant
    (module docstring); -inf only where two singular values of Y vanish (rank <= d - 2).
    """
    U, x, Vh = torch.linalg.svd(Y)
    X = (U * x.pow(depth).unsqueeze(-2)) @ Vh
    d = Y.shape[-1]
    a = x * x
    out = -beta * energy.value(X)
    for i in range(d):
        for j in range(i + 1, d):
            out = out + 0.5 * _log_k(a[:, i], a[:, j], depth)
    return out, X


def _gauss(n: int, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    t, w = np.polynomial.legendre.leggauss(n)
    return torch.tensor((t + 1) / 2, dtype=dtype), torch.tensor(w / 2, dtype=dtype)


@dataclass
class GibbsReference:
    """A weighted sample of the law: points X (P, d, d) with weights (P,) summing to 1.

    method "quadrature": nodes and normalised quadrature weights; `stderr` is the quadrature error
    estimate (|rule - coarser rule|, or 0 when error_estimate was off). method "mcmc": the stored
    chain states, equal weights; `chains` (T, C, d, d) keeps the chain structure for R-hat and ESS,
    and `stderr` is sd / sqrt(ESS). `diagnostics` holds acceptance rates and truncation radius.
    """

    method: str
    d: int
    depth: int
    beta: float
    component: int | None
    X: torch.Tensor
    weights: torch.Tensor
    chains: torch.Tensor | None = None
    coarse: "GibbsReference | None" = None
    diagnostics: dict = field(default_factory=dict)
    marginal: Callable | None = field(default=None, repr=False)
    spectra: torch.Tensor | None = field(default=None, repr=False)  # (P, d) singular values of the nodes, descending
    signs: torch.Tensor | None = field(default=None, repr=False)  # (P,) sign det X of the nodes
    _headline: tuple | None = field(default=None, repr=False)

    def headline(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(E, stderr) of headline_observables (||X||^2, s_max, s_min, 1{det X > 0}), computed once.

        Quadrature nodes carry their singular values and det sign (no SVD of the nodes needed)."""
        if self._headline is None:
            if self.spectra is not None:
                sp = self.spectra
                v = torch.stack([(sp * sp).sum(-1), sp[:, 0], sp[:, -1], (self.signs > 0).to(sp.dtype)], -1)
                mean = (self.weights[:, None] * v).sum(0)
                self._headline = (mean, torch.zeros_like(mean))
            else:
                self._headline = (self.expect(headline_observables), self.stderr(headline_observables))
        return self._headline

    def pdf_layer(self, which: str, u) -> torch.Tensor | None:
        """Density of u = s^{1/N} for s = s_max (which="max") or s_min ("min") at u (any shape), w.r.t. du.

        In the layer variable the density is bounded (that of s has an s^{-(N-1)/N} singularity at 0).
        Quadrature references compute it by a 1-D slice quadrature of the same integrand; the mcmc
        reference returns None (use `histogram`).
        """
        if which not in ("max", "min"):
            raise ValueError(f"which must be 'max' or 'min', got {which!r}")
        if self.marginal is None:
            return None
        u = torch.as_tensor(u, dtype=self.X.dtype)
        return self.marginal(u.reshape(-1).clamp_min(0), which).reshape(u.shape)

    def expect_spectral(self, g) -> torch.Tensor:
        """E g(s) for a function g of the singular values s (P, d) (descending) -> (P,) or (P, k): from the
        nodes' stored singular values (quadrature: no SVD of the nodes) or by SVD of the samples."""
        if self.spectra is not None:
            v = torch.as_tensor(g(self.spectra), dtype=self.X.dtype)
            return (self.weights.reshape(-1, *([1] * (v.dim() - 1))) * v).sum(0)
        return self.expect(lambda X: g(torch.linalg.svdvals(X)))

    def histogram(self, f, edges) -> tuple[torch.Tensor, torch.Tensor]:
        """Density of the scalar f(X) (P,) on the bins `edges` (K+1,) and its standard error (K,).

        mcmc: the chains are split into 8 groups; the error is the spread of the group histograms / sqrt 8.
        quadrature: binned node weights (jagged where nodes are sparse: prefer pdf_layer) with error 0.
        """
        edges = torch.as_tensor(edges, dtype=self.X.dtype)
        width = edges[1:] - edges[:-1]

        def hist(X, w):
            v = torch.as_tensor(f(X), dtype=self.X.dtype).reshape(-1)
            k = torch.bucketize(v, edges) - 1
            ok = (k >= 0) & (k < len(width))
            return torch.zeros(len(width), dtype=self.X.dtype).index_add_(0, k[ok], w[ok]) / width

        dens = hist(self.X, self.weights)
        if self.method != "mcmc":
            return dens, torch.zeros_like(dens)
        T, C = self.chains.shape[:2]
        groups = [g for g in torch.arange(C).chunk(8) if len(g)]
        hs = torch.stack([hist(self.chains[:, g].reshape(-1, self.d, self.d),
                               torch.full((T * len(g),), 1.0 / (T * len(g)), dtype=self.X.dtype)) for g in groups])
        return dens, hs.std(0) / math.sqrt(len(groups))

    def expect(self, f: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """E f(X) under the law; f: X (P, d, d) -> (P,) or (P, k)."""
        total = None
        for X, w in zip(self.X.split(200_000), self.weights.split(200_000)):
            v = torch.as_tensor(f(X), dtype=self.X.dtype)
            part = (w.reshape(-1, *([1] * (v.dim() - 1))) * v).sum(0)
            total = part if total is None else total + part
        return total

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n draws X (n, d, d) from the law: quadrature nodes drawn by weight (a discrete approximation whose
        moments are the quadrature's), or stored chain states drawn uniformly. For starting chains in
        equilibrium (tests of invariance, bias studies)."""
        idx = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        return self.X[idx].clone()

    def _chain_values(self, f) -> torch.Tensor:
        T, C = self.chains.shape[:2]
        v = torch.as_tensor(f(self.chains.reshape(T * C, self.d, self.d)), dtype=self.X.dtype)
        return v.reshape(T, C, -1)

    def stderr(self, f) -> torch.Tensor:
        """Standard error of expect(f): sd / sqrt(ESS) (mcmc) or the quadrature error estimate."""
        if self.method == "mcmc":
            v = self._chain_values(f)
            ess = effective_sample_size(v)
            out = v.reshape(-1, v.shape[-1]).std(0) / ess.sqrt()
            shape = v.shape[2:] if torch.as_tensor(f(self.chains[0, :1])).dim() > 1 else ()
            return out.reshape(shape)
        e = self.expect(f)
        if self.coarse is not None:
            return (e - self.coarse.expect(f)).abs()
        return torch.zeros_like(e)

    def rhat(self, f) -> torch.Tensor:
        """Split R-hat of f across the chains (mcmc only); values near 1 (< 1.01) mean converged."""
        if self.method != "mcmc":
            raise ValueError("R-hat is defined for the mcmc reference only (quadrature has no chains)")
        return split_rhat(self._chain_values(f)).reshape(self.expect(f).shape)

    def ess(self, f) -> torch.Tensor:
        if self.method != "mcmc":
            raise ValueError("the effective sample size is defined for the mcmc reference only")
        return effective_sample_size(self._chain_values(f)).reshape(self.expect(f).shape)


def _check_args(energy, d, depth, beta, component, method):
    if isinstance(d, bool) or not isinstance(d, int) or d < 1:
        raise ValueError(f"d must be a positive integer, got {d!r}")
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be an integer >= 1, got {depth!r}")
    if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be one positive number (one reference per temperature), got {beta!r}")
    if component not in (None, 1, -1):
        raise ValueError(f"component must be None (all of GL_d), +1 (det X > 0) or -1 (det X < 0), got {component!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "quadrature" and d > 2:
        raise ValueError(f"quadrature covers d = 1 and d = 2 (got d = {d}); use method='mcmc'")
    shape = getattr(energy, "shape", None)
    if shape is not None and tuple(shape) != (d, d):
        raise ValueError(f"the energy needs X of shape {tuple(shape)}, but the reference was asked for d = {d}")
    for k, v in vars(energy).items():
        if isinstance(v, torch.Tensor) and v.dim() > 2 and v.shape[0] > 1:
            raise ValueError(
                f"the energy's {k} is a batch of {v.shape[0]} (one per trajectory): a reference is for one energy; "
                "build one per target"
            )


def gibbs_reference(
    energy,
    d: int,
    depth: int,
    beta: float,
    *,
    component: int | None = None,
    method: str = "auto",
    n_quad: int | None = None,
    n_angle: int | None = None,
    error_estimate: bool = False,
    chains: int = 32,
    steps: int = 6000,
    burn: int = 2000,
    thin: int = 4,
    generator: torch.Generator | None = None,
    dtype=torch.float64,
) -> GibbsReference:
    """The reference for exp(-beta E + S) dvol_g on GL_d (or one component of it): see the module docstring.

    method "auto": quadrature for d <= 2, mcmc beyond. n_quad: Gauss-Legendre nodes per chamber
    direction (default 96 at d = 1, 64 at d = 2); n_angle: trapezoid nodes per angle at d = 2
    (default 24 for general energies, 8 for orthogonally invariant ones). mcmc: `chains`
    independent chains, `burn` + `steps` steps each, every `thin`-th state stored.
    """
    _check_args(energy, d, depth, beta, component, method)
    beta = float(beta)
    if method == "auto":
        method = "quadrature" if d <= 2 else "mcmc"
    if method == "mcmc":
        return _mcmc(energy, d, depth, beta, component, chains, steps, burn, thin, generator, dtype)
    build = _quad_d1 if d == 1 else _quad_d2
    ref = build(energy, depth, beta, component, n_quad, n_angle, dtype)
    if error_estimate:
        n_q = ref.diagnostics["n_quad"]
        n_a = ref.diagnostics.get("n_angle")
        ref.coarse = build(energy, depth, beta, component, (3 * n_q) // 4, None if n_a is None else (3 * n_a) // 4, dtype)
    return ref


# --- quadrature -------------------------------------------------------------------------------------


def _radius(log_f: Callable[[torch.Tensor], torch.Tensor], dtype) -> float:
    """Truncation radius R in the layer variable: log_f(r) (r (M,)) is the largest log-integrand at
    radius r (over the other coordinates, on a coarse grid). Grows or shrinks R by 1.25x until the edge is
    between _DROP and _DROP + 15 below the maximum over [0, R]."""
    R = 1.0
    for _ in range(200):
        r = torch.linspace(0.0, R, 81, dtype=dtype)[1:]
        lf = log_f(r)
        top = float(lf.max())
        if not math.isfinite(top):
            raise ValueError("the Gibbs density is not finite on the search grid; check the energy and beta")
        edge = float(lf[-8:].max())
        if edge > top - _DROP:
            R *= 1.25
            if R > 1e6:
                break
        elif edge < top - _DROP - 15 and float(lf[len(lf) // 2:].max()) < top - _DROP:
            R /= 1.25
        else:
            return R
    raise ValueError(
        "the Gibbs law exp(-beta E + S) dvol_g is not normalisable for this energy (E does not grow in every "
        "direction of X, e.g. unobserved entries in matrix completion): no reference can be computed"
    )


def _finish(method, d, depth, beta, component, X, logw, diagnostics, spectra=None, signs=None) -> GibbsReference:
    logw = logw - logw.max()
    w = torch.exp(logw)
    keep = w > _PRUNE
    w = w[keep]
    return GibbsReference(method, d, depth, beta, component, X[keep], w / w.sum(), diagnostics=diagnostics,
                          spectra=None if spectra is None else spectra[keep], signs=None if signs is None else signs[keep])


def _quad_d1(energy, depth, beta, component, n_quad, n_angle, dtype) -> GibbsReference:
    N = depth
    signs = [1.0, -1.0] if component is None else [float(component)]

    def log_f(y):  # y (M,) -> (M, S): -beta E(sign y^N)
        x = torch.stack([s * y**N for s in signs], -1)
        return -beta * energy.value(x.reshape(-1, 1, 1)).reshape(x.shape)

    R = _radius(lambda r: log_f(r).max(-1).values, dtype)
    n = n_quad or 96
    panels = 4  # composite rule: the peak may sit anywhere in [0, R]
    t, w = _gauss(n, dtype)
    y = ((torch.arange(panels, dtype=dtype)[:, None] + t) / panels * R).reshape(-1)
    wy = (w / panels * R).repeat(panels)
    lf = log_f(y)  # (M, S)
    X = torch.stack([s * y**N for s in signs], -1).reshape(-1, 1, 1)
    logw = (lf + torch.log(wy)[:, None]).reshape(-1)
    logZ = torch.logsumexp(logw, 0)

    def marginal(u, which):  # density of y = |x|^{1/N} (s_max = s_min = |x| at d = 1)
        return torch.where(u <= R, torch.exp(torch.logsumexp(log_f(u), -1) - logZ), torch.zeros_like(u))

    ref = _finish("quadrature", 1, depth, beta, component, X, logw, {"radius": R, "n_quad": n},
                  spectra=X.reshape(-1, 1).abs(), signs=X.reshape(-1).sign())
    ref.marginal = marginal
    return ref


def _rot(a: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(a), torch.sin(a)
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


def _quad_d2(energy, depth, beta, component, n_quad, n_angle, dtype) -> GibbsReference:
    N = depth
    invariant = bool(getattr(energy, "orthogonally_invariant", False))
    n_ang = n_angle or (8 if invariant else 24)
    eps = torch.tensor([1.0, -1.0] if component is None else [float(component)], dtype=dtype)
    ang = torch.arange(n_ang, dtype=dtype) * (2 * math.pi / n_ang)
    Rt, Rp = _rot(ang), _rot(ang)  # (n_ang, 2, 2)

    def matrices(x1, x2, e, Rth, Rph):
        """X = R(theta) diag(x1^N, e x2^N) R(phi)^T for broadcastable x1, x2, e and rotations (..., 2, 2)."""
        D = torch.zeros(*torch.broadcast_shapes(x1.shape, x2.shape, e.shape), 2, 2, dtype=dtype)
        D[..., 0, 0] = x1**N
        D[..., 1, 1] = e * x2**N
        return Rth @ D @ Rph.mT

    def log_pair(x1, x2):  # 1/2 log k_12(x) (the law in Y) + log(x1^2 - x2^2) (dY in these coordinates)
        a1, a2 = x1 * x1, x2 * x2
        return 0.5 * _log_k(a1, a2, N) + torch.log(a1 - a2)

    def log_energy_grid(x1, x2, Rt=Rt, Rp=Rp):
        """-beta E over (x1, x2) (M,) x all angles and signs: (M, n_eps, n_ang, n_ang) (or (M,) if invariant)."""
        if invariant:
            D = matrices(x1, x2, torch.ones_like(x1), torch.eye(2, dtype=dtype), torch.eye(2, dtype=dtype))
            return -beta * energy.value(D)
        X = matrices(x1[:, None, None, None], x2[:, None, None, None], eps[None, :, None, None],
                     Rt[None, None, :, None], Rp[None, None, None, :])
        return -beta * energy.value(X.reshape(-1, 2, 2)).reshape(X.shape[:-2])

    def edge(r):
        # largest log-integrand with x1 = r, over a coarse x2 grid and all angles/signs
        t2 = torch.linspace(0.0, 0.95, 7, dtype=dtype)
        x1 = r[:, None].expand(-1, 7).reshape(-1)
        x2 = (r[:, None] * t2).reshape(-1)
        coarse = _rot(torch.arange(12, dtype=dtype) * (2 * math.pi / 12))
        le = log_energy_grid(x1, x2, coarse, coarse)
        le = le if invariant else le.flatten(1).max(-1).values
        return (le + log_pair(x1, x2)).reshape(-1, 7).max(-1).values

    R = _radius(edge, dtype)
    n1 = n_quad or 64
    n2 = max(8, (5 * n1) // 8)
    t1, w1 = _gauss(n1, dtype)
    t2, w2 = _gauss(n2, dtype)
    x1 = (R * t1)[:, None].expand(n1, n2).reshape(-1)
    x2 = (R * t1[:, None] * t2[None, :]).reshape(-1)
    wx = (R * w1[:, None] * (R * t1[:, None]) * w2[None, :]).reshape(-1)  # Jacobian R * x1 of the chamber map
    base = log_pair(x1, x2) + torch.log(wx)  # (M,)
    chunks = []
    for sl in torch.arange(x1.numel()).split(max(1, 400_000 // (eps.numel() * n_ang * n_ang))):
        le = log_energy_grid(x1[sl], x2[sl])
        if invariant:
            le = le[:, None, None, None].expand(-1, eps.numel(), n_ang, n_ang)
        chunks.append(le + base[sl, None, None, None])
    logw = torch.cat(chunks)  # (M, n_eps, n_ang, n_ang)
    logZ = torch.logsumexp(logw.flatten(), 0)
    multiplicity = math.log(eps.numel() * n_ang * n_ang)

    def slice_log(a, b):
        """log of the angle-and-sign sum of the integrand at (x1, x2) = (a, b), each (M,)."""
        le = log_energy_grid(a, b)
        le = le + multiplicity if invariant else torch.logsumexp(le.flatten(1), -1)
        return le + log_pair(a, b)

    def marginal(u, which):  # density of x1 = s_max^{1/N} or x2 = s_min^{1/N} at u (Q,)
        tq, wq = _gauss(n2 if which == "max" else n1, dtype)
        inside = (u > 0) & (u < R)
        uc = torch.where(inside, u, torch.full_like(u, R / 2))
        lo = torch.zeros_like(uc) if which == "max" else uc
        hi = uc if which == "max" else torch.full_like(uc, R)
        other = lo[:, None] + (hi - lo)[:, None] * tq  # (Q, n)
        fixed = uc[:, None].expand_as(other)
        a, b = (fixed, other) if which == "max" else (other, fixed)
        logs = torch.cat([slice_log(aa, bb) for aa, bb in zip(a.reshape(-1).split(20_000), b.reshape(-1).split(20_000))])
        vals = torch.logsumexp(logs.reshape(other.shape) + torch.log((hi - lo)[:, None] * wq), -1)
        return torch.where(inside, torch.exp(vals - logZ), torch.zeros_like(u))

    keep = logw > logw.max() + math.log(_PRUNE)
    idx = keep.nonzero(as_tuple=True)
    X = matrices(x1[idx[0]], x2[idx[0]], eps[idx[1]], Rt[idx[2]], Rp[idx[3]])
    diag = {"radius": R, "n_quad": n1, "n_angle": n_ang, "nodes": int(keep.sum())}
    spectra = torch.stack([x1[idx[0]] ** N, x2[idx[0]] ** N], -1)
    ref = _finish("quadrature", 2, depth, beta, component, X, logw[idx], diag, spectra=spectra, signs=eps[idx[1]])
    ref.marginal = marginal
    return ref


# --- mcmc -------------------------------------------------------------------------------------------


def _mcmc(energy, d, depth, beta, component, C, steps, burn, thin, generator, dtype) -> GibbsReference:
    for name, v in (("chains", C), ("steps", steps), ("burn", burn), ("thin", thin)):
        if isinstance(v, bool) or not isinstance(v, int) or v < (2 if name == "chains" else 1 if name != "burn" else 0):
            raise ValueError(f"{name} must be a positive integer (chains >= 2), got {v!r}")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    # Overdispersed starts: entries N(0, 1) in Y (X ~ |Y|^N spreads over several scales).
    Y = torch.randn(C, d, d, dtype=dtype, generator=g)
    if component is not None:
        flip = torch.linalg.det(Y).sign() != component
        Y[:, 0] = torch.where(flip[:, None], -Y[:, 0], Y[:, 0])
    lq, X = layer_log_density(Y, energy, depth, beta)
    sigma = torch.full((C,), 0.5 / math.sqrt(d), dtype=dtype)
    acc_window = torch.zeros(C, dtype=dtype)
    acc_total = torch.zeros(C, dtype=dtype)
    stored = []
    for it in range(burn + steps):
        prop = Y + sigma[:, None, None] * torch.randn(Y.shape, dtype=dtype, generator=g)
        lp, Xp = layer_log_density(prop, energy, depth, beta)
        ok = torch.log(torch.rand(C, dtype=dtype, generator=g)) < lp - lq
        if component is not None:
            ok = ok & (torch.linalg.det(prop).sign() == component)
        Y = torch.where(ok[:, None, None], prop, Y)
        X = torch.where(ok[:, None, None], Xp, X)
        lq = torch.where(ok, lp, lq)
        if it < burn:
            acc_window += ok.to(dtype)
            if (it + 1) % 50 == 0:  # Robbins-Monro towards acceptance 0.3, frozen after burn-in
                sigma = sigma * torch.exp(2.0 * (acc_window / 50 - 0.3))
                acc_window.zero_()
        else:
            acc_total += ok.to(dtype)
            if (it - burn) % thin == thin - 1:
                stored.append(X.clone())
    chains_X = torch.stack(stored)  # (T, C, d, d)
    T = chains_X.shape[0]
    diag = {"acceptance": float(acc_total.mean() / steps), "step_size": sigma.tolist(), "chains": C, "stored": T}
    ref = GibbsReference(
        "mcmc", d, depth, beta, component, chains_X.reshape(T * C, d, d),
        torch.full((T * C,), 1.0 / (T * C), dtype=dtype), chains=chains_X, diagnostics=diag,
    )
    return ref


# --- comparing a run with its reference --------------------------------------------------------------

HEADLINE = ("E||X||^2", "E s_max", "E s_min", "P(det X > 0)")


def headline_observables(X: torch.Tensor) -> torch.Tensor:
    """(P, 4): ||X||^2, s_max, s_min, 1{det X > 0} for X (P, d, d) -- the moments figures and CSVs report."""
    s = torch.linalg.svdvals(X)
    pos = (torch.linalg.det(X) > 0).to(X.dtype)
    return torch.stack([(s * s).sum(-1), s[:, 0], s[:, -1], pos], dim=-1)


def reference_or_reason(energy, d_out: int, d_in: int, depth: int, beta, **kwargs) -> tuple[GibbsReference | None, str]:
    """(reference, "") where one can be computed for this run's setting, else (None, why) -- one line, for a figure.

    No reference for rectangular widths (the law lives on GL_d), batched data (one target per
    trajectory), several temperatures at once (call once per beta), or a law that is not normalisable.
    """
    if d_out != d_in:
        return None, f"no reference: the Gibbs law is defined for square X (got {d_out} x {d_in})"
    b = torch.as_tensor(beta, dtype=torch.float64).reshape(-1)
    if b.numel() != 1:
        return None, "no reference for several beta at once: one reference per temperature"
    try:
        return gibbs_reference(energy, d_in, depth, float(b[0]), **kwargs), ""
    except ValueError as e:
        return None, f"no reference: {e}"


def compare(samples: torch.Tensor, ref: GibbsReference, f=headline_observables, names=HEADLINE) -> list[dict]:
    """z-scores of the time-and-ensemble means of f over samples (T, C, d, d) (C independent chains) against ref.

    Returns one dict per observable: name, mean, stderr (independent chains), reference, reference_stderr,
    z = (mean - reference) / sqrt(stderr^2 + reference_stderr^2).
    """
    T, C = samples.shape[:2]
    v = f(samples.reshape(T * C, *samples.shape[2:])).reshape(T, C, -1)
    mean, se = v.mean((0, 1)), independent_chain_stderr(v)
    truth, tse = ref.expect(f).reshape(-1), ref.stderr(f).reshape(-1)
    rows = []
    for k, name in enumerate(names):
        tot = float(torch.sqrt(se[k] ** 2 + tse[k] ** 2))
        rows.append({"observable": name, "mean": float(mean[k]), "stderr": float(se[k]), "reference": float(truth[k]),
                     "reference_stderr": float(tse[k]), "z": (float(mean[k]) - float(truth[k])) / tot if tot > 0 else float("nan")})
    return rows
