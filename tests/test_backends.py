"""Solver backends: every shipped backend gives the same answers; custom backends plug in; missing ones explain."""

from __future__ import annotations

import shutil
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from ir_factories import NetBuilder, random_box, reference_network  # noqa: E402

from mlrobust.backends import SolveResult, StopRule, available_backends, get_backend, register_backend  # noqa: E402
from mlrobust.backends.base import OPTIMAL, STOPPED  # noqa: E402
from mlrobust.backends.registry import _REGISTERED, ENTRY_POINT_GROUP  # noqa: E402
from mlrobust.bounds.tier import tighten  # noqa: E402
from mlrobust.errors import SolverLimitError, SolverNotAvailableError  # noqa: E402
from mlrobust.milp.builder import build_topk_milp  # noqa: E402
from mlrobust.milp.problem import MilpProblem  # noqa: E402
from mlrobust.verify.milp_verifier import MilpVerifier  # noqa: E402
from mlrobust.verify.spec import Box  # noqa: E402
from mlrobust.verify.verdict import NotRobust, Robust  # noqa: E402

SHIPPED = ["highs", "cbc", "scip", "gurobi", "pyomo:appsi_highs"]


def small_net(seed: int):
    rng = np.random.default_rng(seed)
    b = NetBuilder((4,), rng)
    b.dense(8)
    b.relu()
    b.dense(6)
    b.relu()
    b.dense(4)
    return b.build()


def instances():
    """(network, lower, upper, target, k): a mix of robust and non-robust queries with binaries left."""
    out = []
    for seed in range(3):
        net = small_net(seed)
        lower, upper = random_box(net, seed, 0.6)
        for k in (1, 2):
            out.append((net, lower, upper, seed % 4, k))
    return out


def problem_of(net, lower, upper, target, k) -> MilpProblem:
    t = tighten(net, lower, upper, "crown", target=target)
    return build_topk_milp(net, t.bounds, target, k, t.margin_lower, t.margin_upper)


def require(name: str):
    try:
        return get_backend(name)
    except SolverNotAvailableError as exc:
        pytest.skip(f"backend {name!r} not installed here: {exc}")


@pytest.fixture(scope="module")
def reference_answers():
    """Optima from HiGHS, solved to optimality."""
    highs = get_backend("highs")
    return [highs.solve(problem_of(*inst)) for inst in instances()]


@pytest.mark.parametrize("name", SHIPPED)
def test_every_backend_finds_the_same_optimum(name, reference_answers):
    backend = require(name)
    for inst, ref in zip(instances(), reference_answers):
        problem = problem_of(*inst)
        res = backend.solve(problem, time_limit=60)
        assert ref.status == OPTIMAL and res.status == OPTIMAL, (name, res.message)
        tol = 1e-4 * max(1.0, abs(ref.objective)) + 1e-6
        assert res.objective == pytest.approx(ref.objective, abs=tol)
        assert res.bound >= ref.objective - tol  # a proven bound never undercuts the optimum
        assert problem.max_violation(res.x) < 1e-5


@pytest.mark.parametrize("name", SHIPPED)
def test_every_backend_gives_the_same_verdicts(name):
    require(name)
    verdicts = []
    for net, lower, upper, target, k in instances():
        v = MilpVerifier(name).verify(net, Box(lower, upper), target, k, mode="decide", time_limit=60)
        verdicts.append(type(v).__name__)
    reference = [type(MilpVerifier("highs").verify(net, Box(lo, hi), t, k)).__name__
                 for net, lo, hi, t, k in instances()]
    assert verdicts == reference
    assert {"Robust", "NotRobust"} <= set(reference)  # the instances exercise both answers


@pytest.mark.parametrize("name", ["highs", "scip", "gurobi"])
def test_decide_mode_stops_early_on_the_sign(name):
    backend = require(name)
    for inst in instances():
        problem = problem_of(*inst)
        full = get_backend("highs").solve(problem)
        res = backend.solve(problem, stop=StopRule(0.0, -1e-4))
        assert res.status in (OPTIMAL, STOPPED)
        if full.objective >= 1e-3:  # not robust: an incumbent with margin >= 0 must be there
            assert res.objective is not None and res.objective >= 0
        elif full.objective <= -1e-3:  # robust: the bound must prove it
            assert res.bound < -1e-4


@pytest.mark.parametrize("name", ["highs", "scip", "gurobi"])
def test_solution_pool_in_optimise_mode(name):
    backend = require(name)
    problem = problem_of(*instances()[1])
    res = backend.solve(problem, pool=3)
    assert res.pool, "expected further solutions besides the maximiser"
    for v in res.pool:
        assert problem.max_violation(v) < 1e-5
        assert problem.objective_value(v) <= res.objective + 1e-6


def test_gurobi_size_limit_is_reported_clearly():
    backend = require("gurobi")
    net = reference_network(0)
    lower, upper = random_box(net, 0, 0.5)
    t = tighten(net, lower, upper, "ibp", target=0)
    problem = build_topk_milp(net, t.bounds, 0, 2, t.margin_lower, t.margin_upper)
    assert problem.num_cols > 2000
    try:
        backend.solve(problem, time_limit=1.0)
    except SolverLimitError as exc:
        assert "2000" in str(exc) and str(problem.num_cols) in str(exc)
    else:
        pytest.skip("this Gurobi has a full licence: no size limit to report")


# --- choosing backends --------------------------------------------------------------------------------------------
def test_missing_solvers_name_their_install_command(monkeypatch):
    import mlrobust.backends.cbc as cbc_module

    monkeypatch.setattr(cbc_module.shutil, "which", lambda name: None)
    with pytest.raises(SolverNotAvailableError, match="apt-get install coinor-cbc"):
        get_backend("cbc")
    monkeypatch.setitem(sys.modules, "pyscipopt", None)
    with pytest.raises(SolverNotAvailableError, match="pip install pyscipopt"):
        get_backend("scip")
    monkeypatch.setitem(sys.modules, "gurobipy", None)
    with pytest.raises(SolverNotAvailableError, match="pip install gurobipy"):
        get_backend("gurobi")


def test_unknown_solver_lists_what_exists():
    with pytest.raises(SolverNotAvailableError, match="highs"):
        get_backend("no-such-solver-anywhere")
    with pytest.raises(SolverNotAvailableError, match="not_a_pyomo_solver"):
        get_backend("pyomo:not_a_pyomo_solver")


def test_not_a_backend_object_is_refused():
    with pytest.raises(SolverNotAvailableError, match="solve"):
        get_backend(object())


def test_shipped_backends_installed_here_are_listed():
    names = available_backends()
    assert "highs" in names
    if shutil.which("cbc"):
        assert "cbc" in names


# --- custom backends ----------------------------------------------------------------------------------------------
class ScipyMilpBackend:
    """A complete custom backend in a few lines: scipy.optimize.milp (HiGHS inside, through SciPy)."""

    name = "scipy-milp"

    def __init__(self):
        self.calls = 0

    def available(self) -> bool:
        return True

    def solve(self, problem, *, time_limit=None, stop=None, pool=0) -> SolveResult:
        from scipy.optimize import Bounds, LinearConstraint, milp

        self.calls += 1
        res = milp(-problem.objective, integrality=problem.integer.astype(int),
                   bounds=Bounds(problem.col_lower, problem.col_upper),
                   constraints=LinearConstraint(problem.A, problem.row_lower, problem.row_upper),
                   options={} if time_limit is None else {"time_limit": time_limit})
        if res.x is None:
            return SolveResult("time_limit" if res.status == 1 else "error", solver=self.name, message=res.message)
        objective = problem.objective_value(res.x)
        bound = -res.mip_dual_bound + problem.offset if problem.integer.any() else objective
        return SolveResult("optimal" if res.status == 0 else "time_limit", objective=objective, bound=bound,
                           x=res.x, solver=self.name)


def test_custom_backend_object_is_used():
    backend = ScipyMilpBackend()
    for net, lower, upper, target, k in instances()[:3]:
        ours = MilpVerifier(backend).verify(net, Box(lower, upper), target, k, mode="optimize")
        ref = MilpVerifier("highs").verify(net, Box(lower, upper), target, k, mode="optimize")
        assert type(ours) is type(ref)
        if "objective" in ref.stats:
            assert ours.stats["objective"] == pytest.approx(ref.stats["objective"], abs=1e-4)
    assert backend.calls > 0


def test_registered_backend_by_name():
    register_backend("my-scipy", ScipyMilpBackend)
    try:
        backend = get_backend("my-scipy")
        assert isinstance(backend, ScipyMilpBackend)
        net, lower, upper, target, k = instances()[0]
        v = MilpVerifier("my-scipy").verify(net, Box(lower, upper), target, k)
        assert isinstance(v, (Robust, NotRobust))
    finally:
        _REGISTERED.pop("my-scipy", None)


def test_backend_from_an_entry_point(tmp_path, monkeypatch):
    """A third-party package declaring ``[project.entry-points."mlrobust.solvers"]`` is found by name."""
    (tmp_path / "mlrobust_test_plugin.py").write_text(textwrap.dedent('''
        from tests_plugin_impl import ScipyMilpBackend as PluginBackend
    ''').replace("tests_plugin_impl", "test_backends"))
    dist = tmp_path / "mlrobust_test_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mlrobust-test-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nplugin-milp = mlrobust_test_plugin:PluginBackend\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    from mlrobust.backends import backend_names

    assert "plugin-milp" in backend_names()
    backend = get_backend("plugin-milp")
    assert type(backend).__name__ == "ScipyMilpBackend"
    net, lower, upper, target, k = instances()[2]
    v = MilpVerifier("plugin-milp").verify(net, Box(lower, upper), target, k)
    ref = MilpVerifier("highs").verify(net, Box(lower, upper), target, k)
    assert type(v) is type(ref)


def test_broken_plugin_says_which(tmp_path, monkeypatch):
    dist = tmp_path / "broken_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nbroken = no_such_module_xyz:Backend\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(SolverNotAvailableError, match="broken.*failed to load"):
        get_backend("broken")


@pytest.mark.parametrize("name", SHIPPED)
def test_time_limited_runs_report_a_valid_bound(name):
    """A run stopped by its time limit must still report a bound above every feasible point (a wrong-signed
    "best possible" from a time-limited CBC run, read through Pyomo, once turned such a run into a false proof)."""
    backend = require(name)
    from mlrobust.milp.builder import topk_model
    from mlrobust.verify.attack import PgdAttack
    from mlrobust.verify.verdict import Robust

    net = reference_network(0, size=16)
    x = np.random.default_rng(0).uniform(0, 1, net.sample_shape)
    box = Box.around(x, 0.2)
    target = int(np.argsort(-net.logits(x[None])[0])[1])
    t = tighten(net, box.lower, box.upper, "crown", target=target)
    builder, problem = topk_model(net, t.bounds, target, 2, t.margin_lower, t.margin_upper)
    attack = PgdAttack().run(net, box, target, 2)
    feasible = problem.objective_value(builder.assignment(attack.best.x))
    assert feasible >= 0  # the query is not robust
    res = backend.solve(problem, time_limit=1.5)
    assert res.bound >= feasible - 1e-6, (res.status, res.bound, feasible)
    if res.objective is not None:
        assert res.bound >= res.objective - 1e-6 * (1 + abs(res.objective))
    verdict = MilpVerifier(backend, "crown").verify(net, box, target, 2, mode="decide", time_limit=1.5)
    assert not isinstance(verdict, Robust)


def test_first_highs_instance_prints_no_banner():
    """HiGHS prints a banner on the C-level stdout when the first instance is created; it must not reach ours."""
    import subprocess
    import sys

    code = ("from mlrobust.milp.highs_instance import new_highs\n"
            "h = new_highs(); h2 = new_highs(); print('only this')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "only this\n"


def test_ctrl_c_inside_a_highs_callback_is_not_swallowed():
    """HiGHS ends a solve quietly when a Python callback raises; a KeyboardInterrupt (Ctrl-C while HiGHS runs our
    callback) must still reach the caller, and the solve must not go on calling back."""
    calls = []

    def interrupted(x):
        calls.append(x)
        raise KeyboardInterrupt

    backend = get_backend("highs")
    raised = 0
    for inst in instances():
        problem = problem_of(*inst)
        if not problem.integer.any():
            continue
        try:
            backend.solve(problem, stop=StopRule(1e9, -1e9, on_incumbent=interrupted))
        except KeyboardInterrupt:
            raised += 1
    assert calls and raised == len(calls)  # every incumbent offered raised, and every one reached us


def test_ctrl_c_while_highs_runs_is_recorded_and_the_handler_restored():
    """A SIGINT during HiGHS's run is kept for the callbacks (which stop the solve) and raised afterwards, never
    swallowed by HiGHS; the default handler is back once the solve is over."""
    import os
    import signal

    from mlrobust.backends.highs import _deferred_sigint

    raised: list[BaseException] = []
    with _deferred_sigint(raised):
        os.kill(os.getpid(), signal.SIGINT)  # handled at the next bytecode: recorded, not raised
        for _ in range(1000):
            pass
    assert len(raised) == 1 and isinstance(raised[0], KeyboardInterrupt)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_highs_solve_that_overruns_its_limit_is_abandoned_at_the_hard_stop(monkeypatch):
    """HiGHS can go seconds without polling its interrupt callback (the root node of a dense model): a solve with a
    time limit returns a time-limit status at the limit plus the grace, whatever the solver thread does, and that
    thread is stopped at its next poll. Without a limit nothing is abandoned."""
    import threading
    import time

    import highspy

    from mlrobust.backends import highs as highs_backend
    from mlrobust.backends.base import TIME_LIMIT
    from mlrobust.backends.highs import HighsBackend

    problem = next(problem_of(*inst) for inst in instances() if problem_of(*inst).integer.any())
    release = threading.Event()
    real_run = highspy.Highs.run

    def deaf_run(self):  # a root node that does not poll: waits, then solves for real
        release.wait(30)
        return real_run(self)

    monkeypatch.setattr(highspy.Highs, "run", deaf_run)
    backend = HighsBackend(hard_stop_grace=0.3)
    start = time.perf_counter()
    result = backend.solve(problem, time_limit=0.2)
    took = time.perf_counter() - start
    assert result.status == TIME_LIMIT and result.stats["abandoned"] is True
    assert result.x is None and result.bound == float("inf")  # nothing seen: no incumbent, no bound
    assert took < 5.0  # the deaf solver would hold the call for 30 s
    (thread,) = list(highs_backend.ABANDONED)
    release.set()
    thread.join(30)
    assert not thread.is_alive()
    monkeypatch.setattr(highspy.Highs, "run", real_run)
    exact = HighsBackend(hard_stop_grace=0.3).solve(problem, time_limit=30.0)
    assert exact.status != TIME_LIMIT and "abandoned" not in exact.stats


def test_a_signal_while_highs_runs_reaches_the_caller_at_once(monkeypatch):
    """The search's hard stop is a SIGALRM whose handler raises in the main thread: while HiGHS runs in its own
    thread the handler runs at once (it could not while HiGHS held the main thread), the exception goes on up and
    the solver thread is told to stop."""
    import signal
    import threading
    import time

    import highspy

    from mlrobust.backends import highs as highs_backend
    from mlrobust.backends.highs import HighsBackend

    class Stop(BaseException):
        pass

    def alarm(signum, frame):
        raise Stop

    problem = next(problem_of(*inst) for inst in instances() if problem_of(*inst).integer.any())
    release = threading.Event()
    real_run = highspy.Highs.run

    def deaf_run(self):
        release.wait(30)
        return real_run(self)

    monkeypatch.setattr(highspy.Highs, "run", deaf_run)
    previous = signal.signal(signal.SIGALRM, alarm)
    start = time.perf_counter()
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        with pytest.raises(Stop):
            HighsBackend().solve(problem, time_limit=60.0)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert time.perf_counter() - start < 5.0
    threads = list(highs_backend.ABANDONED)
    assert len(threads) == 1
    release.set()
    threads[0].join(30)
    assert not threads[0].is_alive()
