"""The Riemannian Langevin equation (RLE) for the end-to-end matrix X (docs/theory.md section 6(b)).

    dX = [ -A(grad E) + beta^{-1} A(grad S) + beta^{-1} (N-1) X (X^T X)^{-1/N} ] dt + sqrt(2/beta) A^{1/2}(dB)

(Ito), A = A_{N,X}: gradient descent of the free energy F = E - S/beta plus Brownian motion of
(GL_d, g^N); the image under phi of constrained Langevin on the balanced manifold. It is the
general form -A(grad E) + beta^{-1} (div A + A(grad log rho)), rho = e^S det(A)^{-1/2}, with the
identity div A - 1/2 A(grad log det A) = (N-1) X (X^T X)^{-1/N}; `rle_drift_autograd` computes the
general form by automatic differentiation and is the test oracle of `rle_drift`.

In the SVD frame X = U diag(s) V^T everything but grad E is diagonal: with a = s^{2/N},
m(delta) the mean index of `dlnsim.spectral`, the entropic and Ito terms together are

    A(grad S) + (N-1) X (X^T X)^{-1/N} = U diag(q) V^T,
    q_i = s_i^{1-2/N} [ (N-1) + sum_{j != i} (N - 1 - m(log a_i - log a_j)) ],

(K_ii dS/ds_i = s_i^{1-2/N} sum_{j!=i} (N-1-m_ij)), finite for N >= 2 down to s_i = 0, where
A(grad S) alone is a 0 * inf product.

`RiemannianLangevin` integrates the RLE by Euler-Maruyama, by default in the layer chart
Y = U diag(s^{1/N}) V^T (`layer_coordinates`, `rle_layer_drift`), where the coefficients stay
bounded through rank-deficient X; the literal scheme in X (chart="end_to_end") has an O(h^{1/2})
stationary bias there (class docstring, tests/test_rle.py, scripts/rle_stationary_long.py).

Shapes: X (B, d, d) square (the theory is for square width); beta a number or a (B,) tensor.
The stationary law is `dlnsim.gibbs` (exp(-beta E + S) dvol_g).
"""
from __future__ import annotations

import torch

from .._checks import check_depth, check_matrix
from ..energies import Energy
from .. import small_svd
from ..geometry import SVDFactors
from ..spectral import _mean_index, log_kernel
from .base import AnnealedSVDScheme, Scheme, State, as_beta, check_beta
from .gradient import TIME_SCALES

__all__ = [
    "rle_drift",
    "rle_drift_autograd",
    "layer_coordinates",
    "from_layer_coordinates",
    "rle_layer_drift",
    "RiemannianLangevin",
    "CHARTS",
]

CHARTS = ("layer", "end_to_end")


def _spectral_drift(s: torch.Tensor, depth: int) -> torch.Tensor:
    """q (..., d): beta times the entropic + Ito drift in the SVD frame (module docstring)."""
    N = depth
    if N == 1:
        return torch.zeros_like(s)
    log_a = (2.0 / N) * torch.log(s)
    m = _mean_index(log_a.unsqueeze(-1) - log_a.unsqueeze(-2), N)
    off = (N - 1) - m
    # Two zero singular values (rank <= d-2) make delta = -inf + inf; the term is then direction-
    # dependent and bounded: take 0 rather than let a NaN through.
    off = torch.nan_to_num(off, nan=0.0)
    off = off - torch.diag_embed(torch.diagonal(off, dim1=-2, dim2=-1))
    return s ** (1.0 - 2.0 / N) * ((N - 1) + off.sum(dim=-1))


def _frame_drift(frame: SVDFactors, G: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """The drift in frame coordinates, U^T drift V: -K o (U^T G V) + diag(q)/beta."""
    K = torch.exp(frame.log_K)
    q = _spectral_drift(frame.s, frame.depth)
    return -K * (frame.U.mT @ G @ frame.V) + torch.diag_embed(q) / beta


def rle_drift(X: torch.Tensor, energy: Energy, depth: int, beta) -> torch.Tensor:
    """Closed-form RLE drift -A(grad E) + beta^{-1} A(grad S) + beta^{-1} (N-1) U diag(s^{1-2/N}) V^T.

    X: (B, d, d) (or (d, d)), full rank for N >= 2 except where the closed form extends (module
    docstring); beta: number or (B,) tensor. Returns the shape of X.
    """
    check_depth(depth)
    check_matrix(X, square=True)
    check_beta(beta)
    frame = SVDFactors.of(X, depth)
    Y = _frame_drift(frame, energy.grad(X), as_beta(beta, X))
    return frame.U @ Y @ frame.V.mT


# --- the oracle: general form with div A by automatic differentiation ------------------------------


def _sym_power(M: torch.Tensor, q: float) -> torch.Tensor:
    lam, Q = torch.linalg.eigh(M)
    return (Q * (lam.clamp_min(0) ** q).unsqueeze(-2)) @ Q.mT


def _metric_operator_powersum(X: torch.Tensor, P: torch.Tensor, N: int) -> torch.Tensor:
    """A_{N,X}(P) = sum_p (X X^T)^{(N-p)/N} P (X^T X)^{(p-1)/N}, by eigh (independent of the SVD kernel)."""
    L = X @ X.mT
    R = X.mT @ X
    return sum(_sym_power(L, (N - p) / N) @ P @ _sym_power(R, (p - 1) / N) for p in range(1, N + 1))


def _operator_matrix(X: torch.Tensor, N: int) -> torch.Tensor:
    """The d^2 x d^2 matrix of P -> A_{N,X}(P) in the basis E_kl (row-major), for one X (d, d)."""
    d = X.shape[-1]
    basis = torch.eye(d * d, dtype=X.dtype, device=X.device).reshape(d * d, d, d)
    cols = torch.stack([_metric_operator_powersum(X, E, N).reshape(-1) for E in basis], dim=-1)
    return cols


def rle_drift_autograd(X: torch.Tensor, energy: Energy, depth: int, beta, log_det_pairs: str = "all") -> torch.Tensor:
    """Oracle: -A(grad E) + beta^{-1} (div A + A(grad log rho)), log rho = S - 1/2 log det A.

    (div A)_{kl} = sum_{ab} d[A_X(E_kl)]_{ab} / dX_{ab} by autograd of the eigh-based power sum of A;
    log det A is the log-determinant of the d^2 x d^2 matrix of A (no spectral-kernel formula
    involved); S is the closed-form entropy. log_det_pairs="upper" instead uses the reading
    log rho = S - 1/2 sum_{i<=j} log K_ij (each pair once), kept to show numerically that it is
    wrong. X: (B, d, d) with distinct nonzero singular values (autograd through eigh); slow, for tests.
    """
    from ..entropy import entropy

    check_depth(depth)
    check_matrix(X, square=True)
    check_beta(beta)
    if log_det_pairs not in ("all", "upper"):
        raise ValueError(f"log_det_pairs must be 'all' or 'upper', got {log_det_pairs!r}")
    N = depth
    batch = X.reshape(-1, *X.shape[-2:])
    b = torch.as_tensor(beta, dtype=X.dtype).reshape(-1)
    b = b.expand(batch.shape[0]) if b.numel() == 1 else b
    out = []
    for x, bx in zip(batch, b):
        d = x.shape[-1]

        def A_basis(y):
            return _operator_matrix(y, N)  # (d^2, d^2): column kl is vec A_y(E_kl)

        J = torch.autograd.functional.jacobian(A_basis, x)  # (d^2 [ab], d^2 [kl], d, d [cd])
        J = J.reshape(d * d, d * d, d * d)
        div = torch.einsum("aka->k", J).reshape(d, d)  # sum_ab d A(E_kl)_ab / dX_ab

        def log_rho(y):
            S = entropy(y, N)
            if log_det_pairs == "all":
                return S - 0.5 * torch.logdet(_operator_matrix(y, N))
            s = torch.linalg.svdvals(y)
            i, j = torch.triu_indices(d, d).unbind(0)
            return S - 0.5 * log_kernel(s, N)[i, j].sum()

        xr = x.detach().requires_grad_(True)
        with torch.enable_grad():
            # + 0 * sum: at N = 1 log rho is constant and would not be connected to the graph.
            (g_rho,) = torch.autograd.grad(log_rho(xr) + 0.0 * xr.sum(), xr)
        M = _operator_matrix(x, N)
        A = lambda P: (M @ P.reshape(-1)).reshape(d, d)  # noqa: E731
        gE = energy.grad(x.unsqueeze(0))[0]
        out.append(-A(gE) + (div + A(g_rho)) / bx)
    return torch.stack(out).reshape(X.shape)


# --- the layer chart Y = U diag(s^{1/N}) V^T ----------------------------------------------------------


def layer_coordinates(X: torch.Tensor, depth: int) -> torch.Tensor:
    """Y = U diag(s^{1/N}) V^T = X (X^T X)^{-(N-1)/(2N)} for X = U diag(s) V^T; (..., d, d).

    The chart in which the RLE has smooth coefficients through rank-deficient X (the RiemannianLangevin
    docstring). Inverse: from_layer_coordinates. sign det Y = sign det X.
    """
    frame = SVDFactors.of(X, depth)
    return frame.from_singular(frame.s ** (1.0 / depth))


def from_layer_coordinates(Y: torch.Tensor, depth: int) -> torch.Tensor:
    """X = U diag(x^N) V^T = Y (Y^T Y)^{(N-1)/2} for Y = U diag(x) V^T; (..., d, d)."""
    U, x, Vh = torch.linalg.svd(Y)
    return (U * x.pow(depth).unsqueeze(-2)) @ Vh


def _coth_difference(y: torch.Tensor, N: int) -> torch.Tensor:
    """coth(y)/N - coth(N y), odd in y, with its 1/y poles cancelled: a series for |N y| < 1e-2
    (truncation ~ (N y)^7 / 5000, below 1e-15 relative there), the direct form elsewhere."""
    small = (N * y).abs() < 1e-2
    safe = torch.where(small, torch.ones_like(y), y)
    direct = 1.0 / (N * torch.tanh(safe)) - 1.0 / torch.tanh(N * safe)
    series = y / 3 * (1 / N - N) - y**3 / 45 * (1 / N - N**3) + 2 * y**5 / 945 * (1 / N - N**5)
    return torch.where(small, series, direct)


def _layer_pair_terms(s: torch.Tensor, log_K: torch.Tensor, depth: int):
    """For the layer chart: (A, B, rho = B/A, r) with A_ij = sum_k x_i^{N-1-k} x_j^k, B = K/A, r (..., d).

    r_i = (1/x_i) sum_{j != i} [ (N-1-m(delta_ij))/N + (1+tanh y)/2 (coth(y)/N - coth(N y) + 1/N - tanh(N y)/tanh(y)) ],
    delta_ij = log x_i^2 - log x_j^2, y = delta/4: every term is finite at x_i = x_j, and r_i -> 0 as x_i -> 0.
    """
    N = depth
    log_A = log_kernel(s.sqrt(), N)  # the kernel of a = s^{1/N} = x
    A = torch.exp(log_A)
    # rho in [1/N, 1]; where x_i = x_j = 0 it is a direction-dependent limit (0 * inf): take 1.
    rho = torch.nan_to_num(torch.exp(log_K - 2 * log_A), nan=1.0)
    B = A * rho
    log_x2 = (2.0 / N) * torch.log(s)
    delta = log_x2.unsqueeze(-1) - log_x2.unsqueeze(-2)
    y = delta / 4
    m = _mean_index(delta, N)
    tau = torch.tanh(y)
    safe = torch.where(y == 0, torch.ones_like(y), y)
    inv_rho = torch.where(y == 0, torch.full_like(y, float(N)), torch.tanh(N * safe) / torch.tanh(safe))
    terms = (N - 1 - m) / N + 0.5 * (1 + tau) * (_coth_difference(y, N) + 1.0 / N - inv_rho)
    terms = torch.nan_to_num(terms, nan=0.0)  # pairs of zero x: bounded, direction-dependent; see rho
    eye = torch.eye(s.shape[-1], dtype=torch.bool, device=s.device)
    total = torch.where(eye, torch.zeros_like(terms), terms).sum(dim=-1)
    x = s ** (1.0 / N)
    # r_i -> 0 as x_i -> 0 (the terms vanish like x_i^2); at x_i = 0 exactly the quotient is 0/0.
    r = torch.where(x > 0, total / torch.where(x > 0, x, torch.ones_like(x)), torch.zeros_like(x))
    return A, B, rho, r


def _sym(M: torch.Tensor) -> torch.Tensor:
    return 0.5 * (M + M.mT)


def _anti(M: torch.Tensor) -> torch.Tensor:
    return 0.5 * (M - M.mT)


def _layer_force(A: torch.Tensor, B: torch.Tensor, Gf: torch.Tensor) -> torch.Tensor:
    """-(B o sym(Gf) + A o anti(Gf)): the energy's part of the layer-chart drift, Gf = U^T grad E V (frame)."""
    return -(B * _sym(Gf) + A * _anti(Gf))


def _layer_noise(rho: torch.Tensor, Z: torch.Tensor) -> torch.Tensor:
    """D^{1/2}(Z) in the frame: sqrt(rho) on the symmetric parts of Z, 1/sqrt(rho) on the antisymmetric ones."""
    return rho.sqrt() * _sym(Z) + rho.rsqrt() * _anti(Z)


def _layer_frame_drift(frame: SVDFactors, G: torch.Tensor, beta: torch.Tensor):
    """Layer-chart drift in frame coordinates, and (rho) for the noise: -(B o sym(Gf) + A o anti(Gf)) + diag(r)/beta."""
    A, B, rho, r = _layer_pair_terms(frame.s, frame.log_K, frame.depth)
    return _layer_force(A, B, frame.U.mT @ G @ frame.V) + torch.diag_embed(r) / beta, rho


def rle_layer_drift(X: torch.Tensor, energy: Energy, depth: int, beta) -> torch.Tensor:
    """Drift of the RLE in the layer chart Y = layer_coordinates(X), as a matrix in Y-coordinates (..., d, d).

    U [ -(B o sym(U^T grad E V) + A o anti(U^T grad E V)) + diag(r)/beta ] V^T (RiemannianLangevin
    docstring). Its diffusion is sqrt(2/beta) D^{1/2}(dB), D = B/A on symmetric and A/B on
    antisymmetric frame components (1/N on the diagonal). Checked against Ito's formula for
    X -> Y applied to the RLE, by automatic differentiation, in the tests.
    """
    check_depth(depth)
    check_matrix(X, square=True)
    check_beta(beta)
    frame = SVDFactors.of(X, depth)
    Yd, _ = _layer_frame_drift(frame, energy.grad(X), as_beta(beta, X))
    return frame.U @ Yd @ frame.V.mT


# --- the scheme -------------------------------------------------------------------------------------


class RiemannianLangevin(AnnealedSVDScheme, Scheme):
    """Euler-Maruyama for the RLE of X (B, d, d), one SVD per step shared by drift and noise.

    chart="layer" (default): Euler-Maruyama in the layer coordinates Y = U diag(x) V^T, x = s^{1/N}
        (the singular values of each balanced layer; X = U diag(x^N) V^T, same frame), where the RLE reads
            dY = [ -(B o sym(G) + A o anti(G)) + diag(r)/beta ] dt + sqrt(2/beta) [ (B/A)^{1/2} o sym(dZ) + (A/B)^{1/2} o anti(dZ) ]
        in the frame (G = U^T grad E V, A_ij = sum_k x_i^{N-1-k} x_j^k, B = K/A, so A B = K; r of
        `_layer_pair_terms`; sym/anti the (anti)symmetric parts; the diagonal has A_ii = N x_i^{N-1},
        B_ii = x_i^{N-1}). This is the same diffusion (the metric g^N pulled back, the drift from Ito's
        formula), but its coefficients are bounded (1 <= A/B <= N) and continuous through
        rank-deficient X (x_d -> 0, det X changing sign; smooth for odd N, C^{N-1} for even N),
        whereas in X the noise ~ s^{(N-1)/N} and the Ito drift ~ s^{1-2/N} are singular there.
        Why this is the step-size control: in X, Euler-Maruyama cannot resolve |s_min| < O(h), where
        the law has mass ~ h^{1/2} (density s^{-(N-1)/N}); its stationary E s_min is then biased
        by O(h^{1/2}) (measured: +8% at h = 0.01, d = 1, N = 2), which no fixed small h fixes
        cheaply. In Y the mass near rank deficiency is smooth (density ~ const in x_d) and the
        bias is O(h). The frame of the new Y is the frame of the new X, so the SVD is carried
        to the next step: one SVD per step.
    chart="end_to_end": the literal scheme X <- X + h drift + sqrt(2h/beta) A^{1/2}(xi) (for
        comparison and for the bias study; biased near rank-deficient X as said above).

    In both, the noise is drawn in the frame (U^T xi V has the law of xi). time_scale: "none"
    (c = 1) or "depth" (c = 1/N: time as in Cohen, Menon & Veraszto). beta: number or (B,) tensor.
    generator: torch.Generator used for all randomness. state.stats["rank_crossings"] (B,) counts
    the steps on which det X changed sign (the path crossed the rank-deficient set);
    state.stats["sign_changes"] the sign changes actually taken.

    keep_component (default False): keep every trajectory in the det-sign component it starts in. A
    step whose endpoint has the other sign of det X is replaced by its mirror image across the
    rank-deficient set in the chart, Y -> Y - 2 x_d u_d v_d^T (the smallest singular direction flipped
    back; in X the same with s_d): Euler-Maruyama with symmetric reflection at the boundary. Its
    limit h -> 0 is the RLE reflected at det X = 0, whose stationary law is the Gibbs law restricted
    to the component (the boundary normal is an eigen-direction of the diffusion matrix, 1/N on the
    diagonal in the layer chart, so normal and conormal reflection agree); at finite h the restricted
    law has the scheme's O(h) bias (measured in tests/test_components.py). For orthogonally invariant
    energies the flip changes nothing but the sign of det X: the singular values follow the
    unrestricted chain exactly. (Rejecting crossing steps instead, the other simple choice, stalls
    trajectories at the boundary and is known to converge more slowly in h.)
    """

    name = "rle"
    space = "end_to_end"
    stochastic = True
    needs_beta = True
    square_only = True
    option_spec = None  # chart, time_scale, keep_component: checked by the constructor
    stat_names = ("rank_crossings", "sign_changes")

    def __init__(
        self,
        energy: Energy,
        step_size: float,
        depth: int,
        beta,
        *,
        generator: torch.Generator | None = None,
        time_scale: str = "none",
        chart: str = "layer",
        keep_component: bool = False,
    ):
        super().__init__(energy, step_size, depth)
        check_depth(depth)
        if time_scale not in TIME_SCALES:
            raise ValueError(f"time_scale must be one of {TIME_SCALES}, got {time_scale!r}")
        if chart not in CHARTS:
            raise ValueError(f"chart must be one of {CHARTS}, got {chart!r}")
        self.beta = beta
        self.generator = generator
        self.time_scale = time_scale
        self.scale = 1.0 if time_scale == "none" else 1.0 / self.depth
        self.chart = chart
        if not isinstance(keep_component, bool):
            raise ValueError(f"keep_component must be True or False, got {keep_component!r}")
        self.keep_component = keep_component

    def init_state(self, weights=None, X=None) -> State:
        state = super().init_state(weights=weights, X=X)
        if state.X.shape[-1] != state.X.shape[-2]:
            raise ValueError(f"RiemannianLangevin needs square X (B, d, d), got shape {tuple(state.X.shape)}")
        return state

    def _frame(self, X: torch.Tensor) -> SVDFactors:
        carried = self.carried_factors(X)
        if carried is not None:
            return carried
        U, s, Vh = small_svd.svd(X)
        return SVDFactors(U, s, Vh.mT, self.depth, log_kernel(s, self.depth))

    def step(self, state: State) -> State:
        X = state.X
        frame = self._frame(X)
        beta = as_beta(self.beta, X, self._beta_cache)
        hc = self.step_size * self.scale
        Z = torch.randn(X.shape, dtype=X.dtype, device=X.device, generator=self.generator)
        amp = torch.sqrt(2.0 * hc / beta)
        G = self.energy.grad(X)
        if self.chart == "end_to_end":
            drift = _frame_drift(frame, G, beta)
            new = torch.diag_embed(frame.s) + hc * drift + amp * torch.exp(0.5 * frame.log_K) * Z
            Uf, s_new, Vfh = small_svd.svd(new)
        else:
            drift, rho = _layer_frame_drift(frame, G, beta)
            noise = amp * _layer_noise(rho, Z)
            new = torch.diag_embed(frame.s ** (1.0 / self.depth)) + hc * drift + noise
            Uf, x_new, Vfh = small_svd.svd(new)
            s_new = x_new**self.depth
        crossed = small_svd.det(new) < 0
        if self.keep_component:
            # mirror image across the rank-deficient set: flip the smallest singular direction back
            flip = torch.ones_like(s_new)
            flip[..., -1] = torch.where(crossed, -1.0, 1.0)
            Uf = Uf * flip.unsqueeze(-2)
        U = frame.U @ Uf
        V = frame.V @ Vfh.mT
        X_new = (U * s_new.unsqueeze(-2)) @ V.mT
        self.carry(X_new, SVDFactors(U, s_new, V, self.depth, log_kernel(s_new, self.depth)))
        state.X = X_new
        state.stats["rank_crossings"] = state.stats["rank_crossings"] + crossed.to(X.dtype)
        state.stats["sign_changes"] = state.stats["sign_changes"] + (crossed & (not self.keep_component)).to(X.dtype)
        state.t += self.step_size
        state.step += 1
        return state
