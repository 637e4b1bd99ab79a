"""Closed-form mode dynamics (Saxe et al.; docs/theory.md section 4): saxe_mode and saxe_time against
a fine RK4 solution of the scalar ODE du/dt = N u^{2(N-1)/N} (lambda - u), against each other,
and against mpmath quadrature of the time integral."""
import pytest
import torch

from dlnsim import saxe_mode, saxe_time

mpmath = pytest.importorskip("mpmath", reason="mpmath is a test dependency: pip install -e '.[dev]'")

DTYPE = torch.float64

# (lambda, u0): growth from small u0, decay from u0 > lambda, lambda = 0 (pure decay), the fixed
# point u0 = lambda, a start very close to it, and a tiny u0 (long plateau).
LAM = torch.tensor([2.0, 1.0, 0.5, 0.1, 1.0, 1.0, 0.0, 0.0, 3.0, 1.0], dtype=DTYPE)
U0 = torch.tensor([0.1, 0.3, 1.2, 0.05, 1.0, 2.5, 0.7, 2.0, 1e-3, 0.999], dtype=DTYPE)


def _rk4_modes(lam, u0, N, times, h):
    """Classical RK4 for the scalar mode ODE, vectorised over modes; u at each t in times."""
    f = lambda u: N * u ** (2 * (N - 1) / N) * (lam - u)  # noqa: E731
    u, t, out = u0.clone(), 0.0, []
    for T in times:
        for _ in range(round((T - t) / h)):
            k1 = f(u)
            k2 = f(u + 0.5 * h * k1)
            k3 = f(u + 0.5 * h * k2)
            k4 = f(u + h * k3)
            u = u + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)
        t = T
        out.append(u.clone())
    return torch.stack(out)


@pytest.mark.parametrize("N", [1, 2, 3, 4, 5, 7])
def test_saxe_mode_matches_fine_rk4(N):
    times = [0.1, 0.5, 1.5]
    fine = _rk4_modes(LAM, U0, N, times, 5e-4)
    coarse = _rk4_modes(LAM, U0, N, times, 1e-3)
    # Richardson: RK4's global error is C h^4 + O(h^5), so fine + (fine - coarse)/15 removes the
    # leading term. The correction itself is <= 6e-10 relative (fast decay from u0 = 2.5 at
    # t = 0.1, N = 7), the remainder is O(h^5): measured agreement <= 2e-12. (Larger N makes the
    # early decay too stiff for this h; saxe_time's round trip covers N up to 50.)
    ref = fine + (fine - coarse) / 15
    t = torch.tensor(times, dtype=DTYPE).unsqueeze(-1)
    u = saxe_mode(t, LAM, U0, N)
    assert u.shape == (3, LAM.numel()) and u.dtype == torch.float64
    assert float(((u - ref).abs() / ref).max()) < 1e-11


@pytest.mark.parametrize("N", [1, 2, 3, 4, 5, 7, 10, 50])
def test_saxe_time_inverts_saxe_mode(N):
    lam, u0 = LAM[LAM > 0], U0[LAM > 0]
    moving = lam != u0
    lam, u0 = lam[moving], u0[moving]
    for frac in (0.01, 0.3, 0.9, 0.999999):
        u = u0 + frac * (lam - u0)
        t = saxe_time(u, lam, u0, N)
        assert bool((t > 0).all())
        # Bisection to full resolution in z = -log|(lambda - u)/(lambda - u0)|: measured <= 1e-13.
        assert float(((saxe_mode(t, lam, u0, N) - u).abs() / u).max()) < 1e-12, frac


@pytest.mark.parametrize("N", [3, 5])
def test_saxe_time_matches_quadrature(N):
    with mpmath.workdps(30):
        for lam, u0, u in [(2.0, 0.1, 1.5), (1.0, 3.0, 1.2), (0.5, 0.01, 0.4)]:
            ref = mpmath.quad(lambda v: 1 / (N * v ** (mpmath.mpf(2 * (N - 1)) / N) * (lam - v)), [u0, u])
            # Partial-fraction closed form in float64: a few ulp of the largest term, ~1e-13.
            assert float(saxe_time(u, lam, u0, N)) == pytest.approx(float(ref), rel=1e-12)


def test_saxe_mode_limits():
    # Fixed point, long times (u -> lambda), t = 0 (u = u0), lambda = 0 closed form.
    for N in (1, 2, 3, 6):
        assert float(saxe_mode(0.0, 1.5, 0.2, N)) == pytest.approx(0.2, rel=1e-12)
        assert float(saxe_mode(1e3, 1.5, 0.2, N)) == pytest.approx(1.5, rel=1e-14)
        assert float(saxe_mode(2.0, 0.7, 0.7, N)) == 0.7
    # lambda = 0, N = 3: u^{-4/3} grows linearly at rate 2(N-1) = 4.
    assert float(saxe_mode(0.5, 0.0, 2.0, 3)) == pytest.approx((2.0 ** (-4 / 3) + 2.0) ** (-3 / 4), rel=1e-14)


def test_saxe_bad_input():
    with pytest.raises(ValueError, match="lam >= 0"):
        saxe_mode(1.0, -1.0, 0.5, 2)
    with pytest.raises(ValueError, match="u0 > 0"):
        saxe_mode(1.0, 1.0, 0.0, 3)
    with pytest.raises(ValueError, match="t >= 0"):
        saxe_mode(torch.tensor([0.5, -0.1]), 1.0, 0.5, 3)
    with pytest.raises(ValueError, match="depth"):
        saxe_mode(1.0, 1.0, 0.5, 0)
    with pytest.raises(ValueError, match="depth"):
        saxe_mode(1.0, 1.0, 0.5, 2.5)
    with pytest.raises(ValueError, match="depth"):
        saxe_time(0.7, 1.0, 0.5, 0)
