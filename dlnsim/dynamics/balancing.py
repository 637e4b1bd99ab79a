"""Balancing flows: gradient flows of R(W) = 1/2 sum_p ||W_p||_F^2 along the fiber of phi over X.

The fiber over a full-rank X is one orbit of GL(d)^{N-1} acting by W_p -> g_p W_p g_{p-1}^{-1}
(g_0 = g_N = I). Its tangent vectors at W are the images of the orbit map

    J(A)_p = A_p W_p - W_p A_{p-1},     A = (A_1, ..., A_{N-1}) in gl(d)^{N-1},  A_0 = A_N = 0,

whose Frobenius adjoint is (J^* V)_q = V_q W_q^T - W_{q+1}^T V_{q+1}. Since grad R = W,
J^* W = -G with G_q = W_{q+1}^T W_{q+1} - W_q W_q^T (the balancedness, a moment map), and
dR[J(A)] = -sum_q tr(A_q^T G_q). Two metrics on the fiber give two gradient flows of R:

- metric="group" (Lie-algebra metric: the Frobenius metric on A pushed through J). The steepest
  descent direction is A = G:
      dW_p/dt = G_p W_p - W_p G_{p-1}  (G_0 = G_N = 0),   dR/dt = -sum_q ||G_q||_F^2.
  This is the flow written mu_p W_p - W_p mu_{p-1} with mu_p = G_p, and its sign is the one that
  decreases R. Linearized at the balanced point W_p = Q_p diag(l) Q_{p-1}^T, l = s^{1/N}: in the
  frames, each symmetric pair (i, j) evolves by dG/dt = -2 T_ij G with the Jacobi matrix
  T_ij = tridiag(-l_i l_j, l_i^2 + l_j^2, -l_i l_j) of size N-1 (the same matrix whose determinant
  is K_ij in the orbit volume), so ||G|| decays at the rate
      2 min_ij lambda_min(T_ij) = 4 l_min^2 (1 - cos(pi/N)),   l_min = s_min(X)^{1/N},
  which slows down like 2 pi^2 s_min^{2/N} / N^2 at large depth.
- metric="induced" (the metric the fiber inherits from parameter space: the Riemannian gradient of
  R restricted to the fiber). dW/dt = -P_fiber(W) = J((J^* J)^{-1} G): the orthogonal projection of
  -grad R onto the tangent space of the fiber, with J^* J block tridiagonal in the layer index.
  Linearized, (J^* J) = T_ij on each symmetric pair, so dG/dt = -2 G: the rate is 2, uniform in
  N, d and X (Lindsey & Menon, arXiv 2511.01137, announce a uniform exponential rate for the
  L^2-regularizer balancing flow; their normalisation is not checked here).

Both flows conserve X = phi(W) exactly (they are tangent to the fiber), decrease R, and stop exactly
on the balanced manifold (G = 0). Their limit is the balanced point of the fiber; its orbit volume
(`dlnsim.entropy.orbit_log_volume`) is S(X).

Training with weight decay. The gradient flow of L(W) + lam R(W) splits into a horizontal part
(orthogonal to the fiber; grad L is horizontal since L is constant on fibers) and a vertical part
-lam P_fiber(W) = lam times the induced balancing velocity (`training_decomposition`): a learning
flow that moves X and a regularizing flow along the fibers. Exactly, dG_p/dt = -2 lam G_p along
that flow (grad L conserves G), so ||G|| decays like e^{-2 lam t} whatever E is; gradient descent
with step h adds O(h^2) per step on top of the contraction (1 - h lam)^2.

Shapes: weights [W_1, ..., W_N], W_p (B, d, d) (square widths: the fiber is a GL(d)^{N-1} orbit);
A and G stacked as (B, N-1, d, d).
"""
from __future__ import annotations

import torch

from .._checks import check_square_weights
from ..energies import Energy
from ..options import Choice, Num, check_options
from ..network import balancedness, end_to_end
from .base import Scheme, State, dopri5_advance, rk4_step
from .gradient import _FlowIntegrator, parameter_gradient

__all__ = [
    "BALANCING_METRICS",
    "fiber_tangent",
    "fiber_adjoint",
    "fiber_gram_solve",
    "balancing_velocity",
    "balancing_rate",
    "regularizer",
    "training_decomposition",
    "balance",
    "balance_from_gaussian",
    "BalancingFlow",
    "WeightDecayDescent",
]

BALANCING_METRICS = ("group", "induced")


def regularizer(weights: list[torch.Tensor]) -> torch.Tensor:
    """R(W) = 1/2 sum_p ||W_p||_F^2, shape (B,)."""
    return 0.5 * sum(W.square().sum(dim=(-2, -1)) for W in weights)


def _stack_G(weights: list[torch.Tensor]) -> torch.Tensor:
    return balancedness(weights)  # (B, N-1, d, d) for square widths


def fiber_tangent(weights: list[torch.Tensor], A: torch.Tensor) -> list[torch.Tensor]:
    """J(A)_p = A_p W_p - W_p A_{p-1} (A_0 = A_N = 0); A (B, N-1, d, d). Tangent to the fiber."""
    N = len(weights)
    out = []
    for p in range(1, N + 1):
        v = torch.zeros_like(weights[p - 1])
        if p <= N - 1:
            v = v + A[..., p - 1, :, :] @ weights[p - 1]
        if p >= 2:
            v = v - weights[p - 1] @ A[..., p - 2, :, :]
        out.append(v)
    return out


def fiber_adjoint(weights: list[torch.Tensor], V: list[torch.Tensor]) -> torch.Tensor:
    """(J^* V)_q = V_q W_q^T - W_{q+1}^T V_{q+1}, q = 1..N-1, stacked (B, N-1, d, d). J^* W = -G."""
    N = len(weights)
    return torch.stack([V[q - 1] @ weights[q - 1].mT - weights[q].mT @ V[q] for q in range(1, N)], dim=-3)


def _kron(M: torch.Tensor, M2: torch.Tensor) -> torch.Tensor:
    """Batched Kronecker product (B, d, d) x (B, d, d) -> (B, d^2, d^2): vec(M A M2^T) = (M kron M2) vec(A), row-major vec."""
    B, d = M.shape[0], M.shape[-1]
    return torch.einsum("bij,bkl->bikjl", M, M2).reshape(B, d * d, d * d)


def _solve(A: torch.Tensor, Y: torch.Tensor, check_errors: bool) -> torch.Tensor:
    # check_errors=False: torch.linalg.solve without its host-syncing error check (same LU, same numbers)
    return torch.linalg.solve_ex(A, Y, check_errors=check_errors).result


def fiber_gram_solve(weights: list[torch.Tensor], Y: torch.Tensor, check_errors: bool = False) -> torch.Tensor:
    """Solve (J^* J) A = Y for A, Y (B, N-1, d, d), by block Thomas elimination (blocks d^2 x d^2).

    (J^* J A)_q = A_q W_q W_q^T + W_{q+1}^T W_{q+1} A_q - W_q A_{q-1} W_q^T - W_{q+1}^T A_{q+1} W_{q+1},
    symmetric positive definite for full-rank W (J is injective on gl(d)^{N-1}); O(N d^6).

    No host sync by default: the blocks are solved by solve_ex without its error check (torch.linalg.solve
    reads LAPACK's info back, a host sync per block on accelerators, 4 x (2N - 3) per RK4 step); the numbers
    are the same, and a singular block (rank-deficient W, where the flow is undefined) gives non-finite A,
    hence non-finite weights, which the simulation reports as divergence at its next save point.
    check_errors=True raises torch.linalg.LinAlgError on a singular block instead (one sync per block).
    """
    N = len(weights)
    B, d = weights[0].shape[0], weights[0].shape[-1]
    eye = torch.eye(d, dtype=Y.dtype, device=Y.device).expand(B, d, d)
    y = Y.reshape(B, N - 1, d * d, 1)
    diag = [_kron(eye, weights[q - 1] @ weights[q - 1].mT) + _kron(weights[q].mT @ weights[q], eye) for q in range(1, N)]
    # coupling of A_q (row q) with A_{q+1}: -W_{q+1}^T A_{q+1} W_{q+1} -> -(W_{q+1}^T kron W_{q+1}^T)
    upper = [-_kron(weights[q].mT, weights[q].mT) for q in range(1, N - 1)]
    # forward elimination: D'_q = D_q - C_{q-1}^T D'_{q-1}^{-1} C_{q-1}, lower block = upper^T
    Dp, yp = [diag[0]], [y[:, 0]]
    for q in range(1, N - 1):
        C = upper[q - 1]
        sol = _solve(Dp[-1], torch.cat([C, yp[-1]], dim=-1), check_errors)
        Dp.append(diag[q] - C.mT @ sol[..., :-1])
        yp.append(y[:, q] - C.mT @ sol[..., -1:])
    x = [None] * (N - 1)
    x[-1] = _solve(Dp[-1], yp[-1], check_errors)
    for q in range(N - 3, -1, -1):
        x[q] = _solve(Dp[q], yp[q] - upper[q] @ x[q + 1], check_errors)
    return torch.stack(x, dim=1).reshape(B, N - 1, d, d)


def balancing_velocity(weights: list[torch.Tensor], metric: str = "induced", check_errors: bool = False) -> list[torch.Tensor]:
    """The balancing flow's velocity at W: J(G) ("group") or J((J^* J)^{-1} G) ("induced").

    check_errors: raise on a singular fiber Gram block (see fiber_gram_solve; host syncs), else NaN/inf."""
    if len(weights) == 1:
        return [torch.zeros_like(weights[0])]
    G = _stack_G(weights)
    A = G if metric == "group" else fiber_gram_solve(weights, G, check_errors)
    return fiber_tangent(weights, A)


def balancing_rate(X: torch.Tensor, depth: int, metric: str = "induced") -> torch.Tensor:
    """Predicted asymptotic decay rate of ||G(t)|| (linearization at the balanced point over X), (B,).

    induced: 2. group: 4 s_min^{2/N} (1 - cos(pi/N)). Square full-rank X (B, d, d).
    """
    if metric == "induced":
        return torch.full(X.shape[:-2], 2.0, dtype=X.dtype, device=X.device)
    s_min = torch.linalg.svdvals(X)[..., -1]
    return 4.0 * s_min ** (2.0 / depth) * (1.0 - torch.cos(torch.tensor(torch.pi / depth, dtype=X.dtype)))


def training_decomposition(weights: list[torch.Tensor], energy: Energy, weight_decay: float):
    """Split the velocity -grad L - lam W of weight-decayed training into (horizontal, vertical).

    vertical = -lam P_fiber(W) = lam * balancing_velocity(W, "induced") (the regularizing flow on the
    fiber); horizontal = the rest (the learning flow; orthogonal to the fiber, it moves X).
    Returns two lists shaped like weights. Square full-rank weights.
    """
    grad = parameter_gradient(weights, energy)
    total = [-g - weight_decay * W for g, W in zip(grad, weights)]
    vert = [weight_decay * v for v in balancing_velocity(weights, "induced")]
    horiz = [t - v for t, v in zip(total, vert)]
    return horiz, vert


def _check(weights, metric):
    if metric not in BALANCING_METRICS:
        raise ValueError(f"metric must be one of {BALANCING_METRICS}, got {metric!r}")
    check_square_weights(weights, "balancing flow")


def balance(weights: list[torch.Tensor], metric: str = "induced", tol: float = 1e-10, chunk: float | None = None,
            max_time: float = 1e4, rtol: float = 1e-10, atol: float = 1e-13) -> tuple[list[torch.Tensor], float]:
    """Flow W along its fiber (balancing flow, adaptive DOPRI5) until max_p ||G_p||_F <= tol * max_p ||W_p||_F^2.

    The stop test is relative to the weights' scale (G is quadratic in W); it is checked after every
    `chunk` of flow time (default 1 / (predicted rate), one host sync per chunk). Returns
    (balanced weights, flow time used). Raises ValueError if max_time passes first (a rank-deficient
    X has no balanced point in its fiber, and the flow then runs off).
    """
    _check(weights, metric)
    if len(weights) == 1:
        return [W.clone() for W in weights], 0.0
    if chunk is None:
        rate = balancing_rate(end_to_end(weights), len(weights), metric)
        chunk = float(1.0 / rate.clamp_min(1e-3).min())
    ws, t = [W.clone() for W in weights], 0.0

    def done(ws):
        G = _stack_G(ws).flatten(-2).norm(dim=-1).amax(dim=-1)
        scale = torch.stack([W.flatten(-2).norm(dim=-1) ** 2 for W in ws], dim=-1).amax(dim=-1)
        return bool((G <= tol * scale).all())

    while not done(ws):
        if t >= max_time:
            raise ValueError(
                f"balance: the fiber flow did not reach max ||G_p|| <= {tol:g} * ||W||^2 by t = {max_time:g}; "
                "X may be (nearly) rank-deficient (no balanced point on its fiber): raise tol or max_time"
            )
        # check_errors: a singular fiber Gram block raises at once (a one-off flow with a host sync per
        # chunk anyway) instead of NaN rejecting every DOPRI5 substep up to the substep cap
        ws, _, _ = dopri5_advance(lambda v: balancing_velocity(v, metric, check_errors=True), ws, chunk, None, rtol, atol, 100000)
        t += chunk
    return ws, t


def balance_from_gaussian(d: int, depth: int, batch: int = 1, scale: float = 1.0, *, generator: torch.Generator | None = None,
                          metric: str = "induced", tol: float = 1e-10, dtype=torch.float64, device=None) -> list[torch.Tensor]:
    """`init: balance_from_gaussian`: Gaussian weights W_p ~ scale N(0, 1/d) entrywise, flowed to the
    balanced point of their fiber (`balance`); [W_1..W_N], each (batch, d, d), with the Gaussian X kept.

    Unlike `balanced_weights` (balanced point over a chosen X with Haar hidden frames), X here is the
    product of Gaussian layers and the hidden frames are those the flow selects.
    """
    from ..network import DeepLinearNetwork

    net = DeepLinearNetwork([d] * (depth + 1), batch, init="gaussian", scale=scale, dtype=dtype, device=device, generator=generator)
    weights = [W.detach() for W in net.weight_list()]
    return balance(weights, metric=metric, tol=tol)[0]


class BalancingFlow(_FlowIntegrator, Scheme):
    """The balancing flow of R on the fiber (module docstring) as a scheme: RK4 with step h, or
    method="dopri5". metric: "induced" (rate 2) or "group" (the mu_p W_p - W_p mu_{p-1} flow).
    The energy is not used (X stays fixed); it may be None."""

    name = "balancing_flow"
    square_only = True
    reference_flow = False
    option_spec = {**_FlowIntegrator.option_spec, "metric": Choice(BALANCING_METRICS)}

    @classmethod
    def config_options(cls, options: dict, path: str = "dynamics.options") -> dict:
        # metric is this scheme's own; the integrator's rule (rtol/atol only with dopri5) sees the rest
        rest = {k: v for k, v in options.items() if k != "metric"}
        out = super().config_options(rest, path)
        if "metric" in options:
            out["metric"] = check_options({"metric": options["metric"]}, {"metric": cls.option_spec["metric"]}, path, cls.name)["metric"]
        return out

    def __init__(self, energy: Energy | None, step_size: float, depth: int, *, metric: str = "induced",
                 method: str = "rk4", rtol: float | None = None, atol: float | None = None, max_substeps: int | None = None):
        super().__init__(energy, step_size, depth)
        if metric not in BALANCING_METRICS:
            raise ValueError(f"metric must be one of {BALANCING_METRICS}, got {metric!r}")
        self.metric = metric
        self._set_method(method, rtol, atol, max_substeps)

    def init_state(self, weights=None, X=None) -> State:
        state = super().init_state(weights=weights, X=X)
        _check(state.weights, self.metric)
        return state

    def step(self, state: State) -> State:
        state.weights = self._advance(lambda ws: balancing_velocity(ws, self.metric), state.weights, state)
        state.t += self.step_size
        state.step += 1
        return state


class WeightDecayDescent(Scheme):
    """Training with weight decay on the parameters: the velocity -grad L(W) - lam W.

    method="euler": gradient descent W_p <- W_p - h (dL/dW_p + lam W_p); method="rk4": the gradient
    flow by RK4 (along which G(t) = e^{-2 lam t} G(0) exactly). weight_decay lam >= 0.
    """

    name = "weight_decay_descent"
    reference_flow = False
    option_spec = {"weight_decay": Num(ge=0), "method": Choice(("euler", "rk4"))}

    def __init__(self, energy: Energy, step_size: float, depth: int, *, weight_decay: float = 0.0, method: str = "euler"):
        super().__init__(energy, step_size, depth)
        if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) or not 0 <= weight_decay < float("inf"):
            raise ValueError(f"weight_decay must be a non-negative number, got {weight_decay!r}")
        if method not in ("euler", "rk4"):
            raise ValueError(f"method must be 'euler' or 'rk4', got {method!r}")
        self.weight_decay = float(weight_decay)
        self.method = method

    def velocity(self, weights: list[torch.Tensor]) -> list[torch.Tensor]:
        return [-g - self.weight_decay * W for g, W in zip(parameter_gradient(weights, self.energy), weights)]

    def step(self, state: State) -> State:
        if self.method == "euler":
            state.weights = [W + self.step_size * v for W, v in zip(state.weights, self.velocity(state.weights))]
        else:
            state.weights = rk4_step(self.velocity, state.weights, self.step_size)
        state.t += self.step_size
        state.step += 1
        return state
