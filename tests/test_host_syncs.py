"""Host synchronisations in the step loops (issue 13, section 4), counted on the CPU so that CI runs it.

A host sync is an op whose result the host must read back before it can go on: on an accelerator
the host then waits for the device's queue to drain, and a step loop with one per step runs at the
pace of the launch latency instead of the device's. On the CPU such reads are free, so they are
counted here by what they are, not by what they cost: `HostSyncCounter`, a TorchDispatchMode,
sees every aten op a step dispatches and counts those that read a value back to the host:

- `aten._local_scalar_dense` (.item(), bool(t), int(t), float(t), `if t:`, `while t:`);
- ops whose output size depends on the values: `nonzero` (also torch.where(cond)), `masked_select`,
  `index` / `index_put` with a boolean mask (t[mask], t[mask] = v: CUDA lowers the mask to
  nonzero), `unique`, `repeat_interleave` without output_size;
- ops that return a Python bool: `equal`, `is_nonzero`, `allclose`;
- `_linalg_check_errors` (the info check of torch.linalg.solve / inv / cholesky, which reads
  LAPACK's info back; the `_ex` versions with check_errors=False do not);
- `lift_fresh`: a tensor made from Python data (torch.tensor / as_tensor of numbers or lists). With
  device=<accelerator> that is a blocking host-to-device copy, which torch's sync debug mode flags;
  on the CPU the target device cannot be told apart, so any such tensor made in a step counts (a
  constant belongs in the scheme's constructor or a per-device cache);
- and, patched on torch.Tensor because they read the data without dispatching an aten op on the
  CPU: `.tolist()`, `.numpy()`, `__array__`, `.cpu()` (a device-to-host copy on an accelerator).
`nonzero_static` is not counted: it has a fixed output size and is sync-free on CUDA (that is what it
is for). The detector cannot see `.to("cpu")` on a tensor already on the CPU (no op is dispatched):
the CUDA test at the end, torch's own sync debug mode over the same registry, covers that.

A torch.linalg decomposition is seen as one op (`_linalg_svd`, `_linalg_eigh`, ...), not as what
LAPACK does inside it; none of them reads a value back on the CPU. On CUDA, torch documents that
eigh synchronizes the device (cuSOLVER's info check; svd's docs say nothing either way), so they are
counted apart, as `decompositions`, and the CUDA test bounds the device's syncs by them (at most one
each). They are not host reads of dlnsim's own and are not asserted to be zero: per step at d = 3,
the end-to-end and free-energy flows make 4 (one SVD per RK4 stage; at depth inf too), the RLE and
its Metropolis version 1, the singular-frame solver 1 (its eigh), the other schemes none.

What is asserted:
- the detector counts every kind of read above (test_detector_*), so no test here passes vacuously;
- for every scheme of dynamics.SCHEMES and dynamics.INFINITE_DEPTH_SCHEMES (a new scheme is covered
  by its registry entry), built from a config through dlnsim's builders as tests/test_devices.py
  does, and for the singular-frame solver and the Jacobi SVD (B = 1024): no host read in k steps
  after a warm-up on the path an accelerator takes. That path differs from the CPU's only where
  `dlnsim._device.host_reads_free` says so (the one switch), and the test takes it on the CPU by
  patching that switch;
- on the CPU path, the documented host reads only (early exits of the Newton iterations, subsets and
  exact fallbacks of the manifold solvers, the Jacobi SVD's sweep count), each at its documented
  count; DOPRI5's one read per substep (gradient flows with method dopri5, on every device: its
  loop length is data dependent) at its documented count;
- dlnsim.simulation's loop: no host read on a step that does not save (the first step excepted, where
  the scheme copies beta to the device once per run); a save point reads X's and the loss's
  finiteness (two reads) and whatever its observables read.
"""
from __future__ import annotations

import collections
import contextlib
import os
import sys
import warnings

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import dlnsim
import dlnsim._device as device_mod
from dlnsim import small_svd
from dlnsim.builders import beta_of, build_energy, build_network, build_observer, build_scheme, build_simulation
from dlnsim.config import load_config
from dlnsim.dynamics import INFINITE_DEPTH_SCHEMES, SCHEMES, EndToEndFlow
from dlnsim.simulation import Simulation

aten = torch.ops.aten
PKG = os.path.dirname(os.path.abspath(dlnsim.__file__))

# ops that read a value back to the host whatever their arguments
_READS = {
    aten._local_scalar_dense, aten.nonzero, aten.masked_select, aten.equal, aten.is_nonzero, aten.allclose,
    aten._unique, aten._unique2, aten.unique_dim, aten.unique_consecutive, aten._linalg_check_errors,
    aten.lift_fresh,
}
# ops that read back only with a boolean mask among their indices
_MASK_INDEX = {aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_}
_DECOMPOSITIONS = {aten._linalg_svd, aten._linalg_eigh, aten.linalg_eig, aten._linalg_eigvals}
# Tensor methods that read the data without an aten op on the CPU
_PATCHED = ("tolist", "numpy", "__array__", "cpu")


def _site() -> str:
    """The innermost dlnsim function on the stack: 'relative/path.py:Qualified.name'."""
    f = sys._getframe(2)
    while f is not None:
        path = os.path.abspath(f.f_code.co_filename)
        if path.startswith(PKG + os.sep):
            return f"{os.path.relpath(path, PKG)}:{f.f_code.co_qualname}"
        f = f.f_back
    return "<test>"


class HostSyncCounter(TorchDispatchMode):
    """Counts host reads (`reads`, by kind and by dlnsim call site) and linalg decompositions."""

    def __init__(self):
        super().__init__()
        self.kinds: collections.Counter = collections.Counter()
        self.sites: collections.Counter = collections.Counter()
        self.decompositions = 0
        self._saved: dict = {}
        self._inside = False

    @property
    def reads(self) -> int:
        return sum(self.kinds.values())

    def _count(self, kind: str) -> None:
        if self._inside:  # a patched method calling another (np.asarray -> __array__ -> numpy): one read
            return
        self.kinds[kind] += 1
        self.sites[_site()] += 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        packet = func.overloadpacket
        if packet in _READS:
            self._count(str(packet))
        elif packet is aten.repeat_interleave and (kwargs or {}).get("output_size") is None and len(args) == 1:
            self._count("repeat_interleave")
        elif packet in _MASK_INDEX and any(
                isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in (args[1] or ())):
            self._count(f"{packet} (boolean mask)")
        elif packet in _DECOMPOSITIONS:
            self.decompositions += 1
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        for name in _PATCHED:
            self._saved[name] = torch.Tensor.__dict__.get(name)
            original = getattr(torch.Tensor, name)

            def wrapper(t, *a, _original=original, _name=name, **k):
                self._count(f"Tensor.{_name}")
                inside, self._inside = self._inside, True
                try:
                    return _original(t, *a, **k)
                finally:
                    self._inside = inside

            setattr(torch.Tensor, name, wrapper)
        return super().__enter__()

    def __exit__(self, *exc):
        for name, saved in self._saved.items():
            if saved is None:
                delattr(torch.Tensor, name)
            else:
                setattr(torch.Tensor, name, saved)
        return super().__exit__(*exc)


@contextlib.contextmanager
def accelerator_path():
    """Within this context the solvers take the path they take on an accelerator (no host reads)."""
    saved = device_mod.host_reads_free
    device_mod.host_reads_free = lambda device: False
    try:
        yield
    finally:
        device_mod.host_reads_free = saved


# --------------------------------------------------------------------------- the detector itself

_x = torch.linspace(-1.0, 1.0, 6, dtype=torch.float64)
_A = torch.eye(3, dtype=torch.float64) * 2.0
_three, _counts, _long = torch.tensor(3), torch.tensor([1, 2]), torch.tensor([0, 2])
# (expression, number of host reads it must count): each kind of read the module docstring names
READS = {
    "item": (lambda: _x.sum().item(), 1),
    "bool": (lambda: bool(_x.sum() > 0), 1),
    "if": (lambda: 1 if (_x > 2).any() else 0, 1),
    "while": (lambda: [None for _ in iter(lambda: bool(_x[0] > 0), False)], 1),
    "int": (lambda: int(_x.argmax()), 1),
    "float": (lambda: float(_x[0]), 1),
    "range(t)": (lambda: range(_three), 1),
    "tolist": (lambda: _x.tolist(), 1),
    "numpy": (lambda: _x.numpy(), 1),
    "np.asarray": (lambda: __import__("numpy").asarray(_x), 1),
    "cpu": (lambda: _x.cpu(), 1),
    "mask index": (lambda: _x[_x > 0], 1),
    "mask assign": (lambda: _x.clone().__setitem__(_x > 0, torch.zeros(3, dtype=torch.float64)), 1),
    "nonzero": (lambda: (_x > 0).nonzero(), 1),
    "where(cond)": (lambda: torch.where(_x > 0), 1),
    "masked_select": (lambda: _x.masked_select(_x > 0), 1),
    "equal": (lambda: torch.equal(_x, _x), 1),
    "is_nonzero": (lambda: torch.is_nonzero(_x[:1]), 1),
    "allclose": (lambda: torch.allclose(_x, _x), 1),
    "unique": (lambda: torch.unique(_x), 1),
    "repeat_interleave": (lambda: torch.repeat_interleave(_counts), 1),
    "torch.tensor": (lambda: torch.tensor([1.0, 2.0], dtype=torch.float64), 1),
    "as_tensor(number)": (lambda: torch.as_tensor(0.5, dtype=torch.float64), 1),
    "linalg.solve": (lambda: torch.linalg.solve(_A, _x[:3]), 1),
    "linalg.inv": (lambda: torch.linalg.inv(_A), 1),
}
# ops that read nothing back: the detector must not count them
NO_READS = {
    "arithmetic": lambda: (_x * 2 + 1).exp().sum(),
    "where(c, a, b)": lambda: torch.where(_x > 0, _x, -_x),
    "masked_fill": lambda: _x.masked_fill(_x > 0, 0.0),
    "long index": lambda: _x[_long],
    "index_put long": lambda: _x.clone().index_put_((_long,), torch.zeros(2, dtype=torch.float64)),
    "full / zeros / eye": lambda: (torch.full((2,), 0.5, dtype=torch.float64), torch.zeros(3), torch.eye(2)),
    "python scalar operand": lambda: torch.where(_x > 0, _x, 0.0) * 2.5,
    "sort": lambda: _x.sort(),
    "randn": lambda: torch.randn(3, generator=torch.Generator().manual_seed(0)),
    "solve_ex": lambda: torch.linalg.solve_ex(_A, _x[:3], check_errors=False),
    "nonzero_static": lambda: torch.nonzero_static(_x > 0, size=6),
    "repeat_interleave output_size": lambda: torch.repeat_interleave(_counts, output_size=3),
}


@pytest.mark.parametrize("kind", READS)
def test_detector_counts_each_kind_of_host_read(kind):
    fn, expected = READS[kind]
    with HostSyncCounter() as c:
        fn()
    assert c.reads == expected, (kind, dict(c.kinds))


@pytest.mark.parametrize("kind", NO_READS)
def test_detector_ignores_ops_that_read_nothing(kind):
    with HostSyncCounter() as c:
        NO_READS[kind]()
    assert c.reads == 0, (kind, dict(c.kinds))


def test_detector_sees_decompositions_as_one_op_and_restores_tensor_methods():
    # LAPACK's internals are not dispatched: an SVD is one op (a decomposition), not a host read.
    before = {n: torch.Tensor.__dict__.get(n) for n in _PATCHED}
    with HostSyncCounter() as c:
        torch.linalg.svd(_A)
        torch.linalg.eigh(_A)
        torch.linalg.svdvals(_A)
    assert (c.reads, c.decompositions) == (0, 3)
    assert {n: torch.Tensor.__dict__.get(n) for n in _PATCHED} == before
    with HostSyncCounter() as c:  # a read is attributed to the innermost dlnsim function
        small_svd.jacobi_svd(torch.eye(3, dtype=torch.float64).expand(4, 3, 3))
    assert set(c.sites) == {"small_svd.py:jacobi_svd"}


# --------------------------------------------------------------------------- every scheme of the registry

WIDTH, DEPTH, B, WARMUP, K = 3, 3, 4, 2, 4
STOCHASTIC = tuple(name for name, cls in SCHEMES.items() if cls.stochastic)
ENERGY = {"sgd": {"type": "matrix_completion", "target": "random", "mask": "random", "mask_fraction": 0.6,
                  "mask_per_trajectory": True}}
OPTIONS = {"sgd": {"batch_size": 3, "label_noise": 0.1, "momentum": 0.5}}
INF = float("inf")
# Variants beyond each scheme's defaults: (scheme, options, batch, width, depth)
VARIANTS = {
    "frame_solver_projected": ("langevin_projected", {"solver": "frame"}, B, WIDTH, DEPTH),
    "frame_solver_metropolis": ("langevin_metropolis", {"solver": "frame"}, B, WIDTH, DEPTH),
    "jacobi_svd_rle": ("rle", {}, small_svd.JACOBI_MIN_BATCH, 3, DEPTH),
} | {f"{name}@depth_inf": (name, {}, B, WIDTH, INF) for name in INFINITE_DEPTH_SCHEMES}
# Host reads the CPU path makes on purpose (module docstrings): CPU only, none on an accelerator.
CPU_ONLY_SITES = {
    "manifold/exact.py:ExactConstraintSolver.newton",
    "manifold/singular_frame.py:SingularFrameSolver.__init__",
    "manifold/singular_frame.py:SingularFrameSolver.project_in_frame",
    "manifold/singular_frame.py:SingularFrameSolver.newton_in_frame",
    "manifold/singular_frame.py:SingularFrameSolver._polish",
    "manifold/singular_frame.py:_frame_iterate",
    "small_svd.py:jacobi_svd",
}


def _config(name, options=None, batch=B, width=WIDTH, device="cpu", depth=DEPTH):
    dynamics = {"scheme": name, "step_size": 0.01, "steps": WARMUP + K, "ensemble": batch, "seed": 3,
                "beta": 2.0 if SCHEMES[name].needs_beta else None,
                "options": {**OPTIONS.get(name, {}), **(options or {})}}
    if depth == INF:
        dynamics["time_scale"] = "depth"
    return load_config({
        "network": {"width": width, "depth": depth, "init": "balanced", "scale": 0.7},
        "energy": ENERGY.get(name, {"type": "weight_decay" if name in STOCHASTIC else "matrix_regression"}),
        "dynamics": dynamics,
        "observers": {"every": 2},
        "device": {"device": device},
    })


def _build(cfg):
    if cfg["network"]["depth"] == INF:  # the depth-inf schemes act on X: the simulation's builder
        sim, _ = build_simulation(cfg)
        return sim.scheme, sim.state, sim.scheme.energy, None
    device = cfg["device"]["device"]
    energy = build_energy(cfg, device, torch.float64)
    generator = torch.Generator(device=device).manual_seed(cfg["dynamics"]["seed"])
    beta = beta_of(cfg, device, torch.float64)
    scheme = build_scheme(cfg, energy, generator, beta)
    net = build_network(cfg, generator=generator)
    return scheme, scheme.init_state(weights=[W.detach() for W in net.weights]), energy, beta


def _count_steps(scheme, state, k=K):
    for _ in range(WARMUP):
        state = scheme.step(state)
    with HostSyncCounter() as c:
        for _ in range(k):
            state = scheme.step(state)
    return c, state


CASES = {name: (name, {}, B, WIDTH, DEPTH) for name in SCHEMES} | VARIANTS


@pytest.mark.parametrize("case", CASES)
def test_accelerator_path_of_every_scheme_has_no_host_sync(case):
    name, options, batch, width, depth = CASES[case]
    with accelerator_path():
        scheme, state, _, _ = _build(_config(name, options, batch, width, depth=depth))
        c, _ = _count_steps(scheme, state)
    assert c.reads == 0, f"{case}: {c.reads} host reads in {K} steps: {dict(c.sites)} ({dict(c.kinds)})"


@pytest.mark.parametrize("case", CASES)
def test_cpu_path_reads_back_only_at_documented_sites(case):
    name, options, batch, width, depth = CASES[case]
    scheme, state, _, _ = _build(_config(name, options, batch, width, depth=depth))
    c, _ = _count_steps(scheme, state)
    undocumented = {s: n for s, n in c.sites.items() if s not in CPU_ONLY_SITES}
    assert not undocumented, f"{case}: undocumented host reads in {K} steps: {undocumented} ({dict(c.kinds)})"
    if case == "jacobi_svd_rle":  # the CPU takes the Jacobi kernel here: one SVD, one convergence read per step (4 unchecked sweeps, then one check)
        assert c.sites["small_svd.py:jacobi_svd"] == K, dict(c.sites)
    elif not SCHEMES[name].on_manifold:
        assert c.reads == 0, (case, dict(c.sites))


def test_exact_newton_reads_once_per_update_plus_the_exit_check_on_the_cpu():
    # ExactConstraintSolver.newton on the CPU: one read (int(active.sum())) before each update and one
    # more to see that none is left. With one trajectory (no subset continuation), a projected step
    # makes one Newton solve, so its reads are its Newton updates + 1 (newton_iterations counts them).
    scheme, state, _, _ = _build(_config("langevin_projected", batch=1))
    for _ in range(WARMUP):
        state = scheme.step(state)
    for _ in range(K):
        before = float(state.stats["newton_iterations"].sum())
        with HostSyncCounter() as c:
            state = scheme.step(state)
        updates = float(state.stats["newton_iterations"].sum()) - before
        assert 2 <= updates < scheme.max_iter  # converged, within the cap: the exit check was read
        assert c.reads == updates + 1 and set(c.sites) == {"manifold/exact.py:ExactConstraintSolver.newton"}


@pytest.mark.parametrize("name,solves", [("langevin_projected", 1), ("langevin_metropolis", 2)])
def test_frame_newton_reads_once_per_update_plus_its_checks_on_the_cpu(name, solves):
    # SingularFrameSolver on the CPU, one trajectory (no subset continuation), no failures: the frame
    # iteration reads before each update and once to exit (_frame_iterate), newton_in_frame reads
    # `any to polish?` and `any to retry exactly?` once per solve, the constructor `all frames
    # trusted?` once per new point. A projected step solves once; a Metropolis step twice (the
    # proposal and its reverse projection).
    scheme, state, _, _ = _build(_config(name, {"solver": "frame"}, batch=1))
    for _ in range(WARMUP):
        state = scheme.step(state)
    for _ in range(K):
        before = {k: float(v.sum()) for k, v in state.stats.items()}
        with HostSyncCounter() as c:
            state = scheme.step(state)
        delta = {k: float(v.sum()) - before[k] for k, v in state.stats.items()}
        assert delta["projection_failures"] == 0 and delta.get("reverse_failures", 0) == 0
        sf = "manifold/singular_frame.py:"
        assert c.sites[sf + "_frame_iterate"] == delta["newton_iterations"] + solves, (dict(c.sites), delta)
        assert c.sites[sf + "SingularFrameSolver.newton_in_frame"] == 2 * solves
        assert c.sites[sf + "SingularFrameSolver.__init__"] == 1
        assert set(c.sites) == {sf + "_frame_iterate", sf + "SingularFrameSolver.newton_in_frame",
                                sf + "SingularFrameSolver.__init__", sf + "SingularFrameSolver.project_in_frame"}


def test_jacobi_svd_reads_once_per_convergence_check():
    # small_svd.jacobi_svd (CPU, d = 3, B >= JACOBI_MIN_BATCH): min_sweeps = d + 1 unchecked sweeps, then
    # one `all converged?` read per check; the fallback reuses the last check's answer (a `nonzero` only
    # when some matrix failed, none of these random ones). A fixed sweep count without the fallback reads nothing.
    g = torch.Generator().manual_seed(7)
    X = torch.randn(small_svd.JACOBI_MIN_BATCH, 3, 3, dtype=torch.float64, generator=g)
    with HostSyncCounter() as adaptive:
        small_svd.jacobi_svd(X)
    with HostSyncCounter() as no_fallback:
        small_svd.jacobi_svd(X, fallback=False)
    with HostSyncCounter() as fixed:
        small_svd.jacobi_svd(X, sweeps=6, fallback=False)
    checks = no_fallback.reads
    assert 1 <= checks <= small_svd._MAX_SWEEPS - 4 + 1
    assert adaptive.reads == checks and fixed.reads == 0
    assert dict(adaptive.sites) == {"small_svd.py:jacobi_svd": checks}


@pytest.mark.parametrize("name", [n for n, cls in SCHEMES.items() if "method" in (cls.option_spec or {})
                                  and "dopri5" in cls.option_spec["method"].values])
def test_dopri5_reads_once_per_substep(name):
    # dopri5_advance: one read per substep (are all trajectories done?) on every device; a step's loop
    # runs until the slowest trajectory lands, so its reads are max_b (accepted + rejected substeps).
    scheme, state, _, _ = _build(_config(name, {"method": "dopri5", "rtol": 1e-9, "atol": 1e-12}))
    for _ in range(WARMUP):
        state = scheme.step(state)
    for _ in range(K):
        before = state.stats["substeps"] + state.stats["rejected_substeps"]
        with HostSyncCounter() as c:
            state = scheme.step(state)
        substeps = int((state.stats["substeps"] + state.stats["rejected_substeps"] - before).max())
        assert substeps >= 1 and c.reads == substeps, (c.reads, substeps)
        assert set(c.sites) == {"dynamics/base.py:dopri5_advance"}


# --------------------------------------------------------------------------- the simulation loop


def _simulation_reads(name, reference, save_every=3, n=9):
    """Host reads of each step of Simulation.run, the save's included: step -> Counter(site -> reads)."""
    cfg = _config(name)
    scheme, state, energy, beta = _build(cfg)
    observer = build_observer(cfg, energy, scheme, beta)
    ref = None
    if reference:  # the theory trajectory, advanced in lock-step (builders do this for plain runs)
        flow = EndToEndFlow(energy, scheme.step_size, scheme.depth)
        ref = (flow, flow.init_state(weights=state.weights))
    sim = Simulation(scheme, state, observer, save_every, ref)
    per_step, last = {}, [collections.Counter()]
    with HostSyncCounter() as c:
        def on_step(step):
            per_step[step] = c.sites - last[0]
            last[0] = collections.Counter(c.sites)

        sim.run(n, on_step=on_step)
    return per_step


# The first step fills the scheme's per-run device caches: beta copied to the device once
# (_checks.as_beta; a blocking copy on an accelerator, once per run rather than per step).
FIRST_STEP_ONLY = {"_checks.py:as_beta"}


@pytest.mark.parametrize("name,reference", [("gradient_descent", False), ("gradient_descent", True), ("rle", False)],
                         ids=["gradient_descent", "gradient_descent+reference_flow", "rle"])
def test_simulation_loop_reads_back_only_at_save_points(name, reference):
    # Steps that do not save make no host read (after the first step's cache fill); a save point makes
    # the divergence check's two reads (X finite? loss finite?; Simulation.save) and whatever the
    # observables read (measured: so_basis's constant for the entropy observables, beta's copy).
    per_step = _simulation_reads(name, reference)
    assert sorted(per_step) == list(range(1, 10))
    first = {site: k for site, k in per_step[1].items() if site not in FIRST_STEP_ONLY}
    assert not first, per_step[1]
    assert all(not per_step[s] for s in (2, 4, 5, 7, 8)), per_step
    for s in (3, 6, 9):
        assert per_step[s]["simulation.py:Simulation.save"] == 2, per_step[s]


# --------------------------------------------------------------------------- the same on a CUDA device


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (runs in scripts/gpu_check on a lent GPU)")
@pytest.mark.parametrize("case", CASES)
def test_cuda_step_loop_has_no_host_sync(case):
    # torch's own sync detector (set_sync_debug_mode) over the same registry. Schemes that make no
    # linalg decomposition in a step must not sync at all ("error": any sync raises). Those that do
    # (SVD / eigh: cuSOLVER checks its info on the host) may sync at most once per decomposition, and
    # make no host read of their own (the dispatch counter, on the device).
    name, options, batch, width, depth = CASES[case]
    scheme, state, _, _ = _build(_config(name, options, batch, width, device="cuda", depth=depth))
    for _ in range(WARMUP):
        state = scheme.step(state)
    torch.cuda.synchronize()
    with HostSyncCounter() as c:
        for _ in range(K):
            state = scheme.step(state)
    assert c.reads == 0, (case, dict(c.sites))
    mode = "error" if c.decompositions == 0 else "warn"
    old = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode(mode)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(K):
                state = scheme.step(state)
    finally:
        torch.cuda.set_sync_debug_mode(old)
    syncs = sum("synchroniz" in str(w.message) for w in caught)
    assert syncs <= c.decompositions, (case, syncs, c.decompositions)
