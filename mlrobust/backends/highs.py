"""HiGHS through highspy, fed the matrix form in one call (the default backend).

Why not through Pyomo: on the reference network Pyomo's model construction and hand-over to HiGHS take longer than
most solves (benchmarks/results/verifier.md), while ``Highs.passModel`` takes the CSR arrays directly. The Pyomo
route stays available as the backend ``pyomo:appsi_highs``.

Decide mode and time limits use HiGHS's MIP interrupt callback: it stops as soon as an incumbent reaches the
target or the dual bound falls below the threshold, and it enforces the wall-clock limit itself, because HiGHS's own
``time_limit`` is checked late (a 2 s limit was seen stopping after ~7 s).

That callback is not polled everywhere either: during the root node of a dense model (a fully connected 784-256-256
net, ~750k nonzeros) HiGHS went 6–20 s between two polls, so a 30 s limit ended after 41 s. With a time limit the
solve therefore runs in a thread of its own and is *abandoned* :data:`HARD_STOP_GRACE` seconds after the limit: the
call returns at once with a time-limit status, the incumbents and the dual bound the callbacks saw (both sound), and
the solver thread is told to stop at its next poll (it keeps its model until then; nothing waits for it).
"""

from __future__ import annotations

import atexit
import signal
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import numpy as np

from mlrobust.backends.base import ERROR, INFEASIBLE, OPTIMAL, STOPPED, TIME_LIMIT, SolveResult, StopRule, best_first
from mlrobust.milp.problem import MilpProblem

_SCHEDULER_THREADS: int | None = None
#: Seconds past the time limit after which a solve that has not stopped is abandoned (see the module doc).
HARD_STOP_GRACE = 1.0
#: Solver threads abandoned at the hard stop and not finished yet (tests join them).
ABANDONED: set[threading.Thread] = set()


@contextmanager
def _deferred_sigint(raised: list[BaseException]) -> Iterator[None]:
    """While HiGHS runs, Ctrl-C is recorded in ``raised`` instead of raised at once: Python runs the signal handler
    at the next callback, where a KeyboardInterrupt raised by the default handler before the callback's own
    ``try`` would be swallowed by HiGHS (the solve would end as an error and the search go on). The callbacks see
    the record and stop the solve; the caller raises it after ``run()``. Only the default handler, in the main
    thread, is replaced (and restored)."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return

    def record(signum, frame) -> None:
        raised.append(KeyboardInterrupt())

    signal.signal(signal.SIGINT, record)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _use_threads(n: int) -> None:
    """HiGHS keeps one global thread scheduler per process and refuses to run a model whose ``threads`` option
    differs from it; restart the scheduler when a different count is asked for."""
    global _SCHEDULER_THREADS
    if _SCHEDULER_THREADS != n:
        import highspy

        highspy.Highs.resetGlobalScheduler(True)
        _SCHEDULER_THREADS = n


class HighsBackend:
    """HiGHS MIP solver (highspy). ``options`` are passed to ``Highs.setOptionValue`` verbatim."""

    name = "highs"
    install_hint = "pip install highspy"

    def __init__(self, threads: int | None = None, mip_rel_gap: float = 1e-4, enforce_time_limit: bool = True,
                 hard_stop_grace: float | None = HARD_STOP_GRACE, **options: object):
        self.threads = threads
        self.mip_rel_gap = mip_rel_gap
        self.enforce_time_limit = enforce_time_limit
        #: None: wait for HiGHS however late it stops (the solve then runs in the calling thread)
        self.hard_stop_grace = hard_stop_grace
        self.options = options

    def available(self) -> bool:
        try:
            import highspy  # noqa: F401
        except ImportError:
            return False
        return True

    def _highs(self, problem: MilpProblem, integer: bool = True):
        from mlrobust.milp.highs_instance import new_highs

        h = new_highs()
        if self.threads is not None:
            _use_threads(int(self.threads))
            h.setOptionValue("threads", int(self.threads))
        h.setOptionValue("mip_rel_gap", float(self.mip_rel_gap))
        for key, value in self.options.items():
            h.setOptionValue(key, value)
        A = problem.A
        integrality = problem.integer.astype(np.int32) if integer else np.zeros(problem.num_cols, dtype=np.int32)
        h.passModel(problem.num_cols, problem.num_rows, int(A.nnz), 2, -1, float(problem.offset),
                    problem.objective, problem.col_lower, problem.col_upper, problem.row_lower, problem.row_upper,
                    A.indptr.astype(np.int32), A.indices.astype(np.int32), A.data.astype(np.float64), integrality)
        return h

    def solve(self, problem: MilpProblem, *, time_limit: float | None = None, stop: StopRule | None = None,
              pool: int = 0) -> SolveResult:
        import highspy

        start = time.perf_counter()
        h = self._highs(problem)
        if time_limit is not None:
            h.setOptionValue("time_limit", max(float(time_limit), 0.01))
        if problem.start is not None:  # a MIP start: HiGHS's heuristics then search around a known point
            h.setSolution(problem.num_cols, np.arange(problem.num_cols, dtype=np.int32),
                          np.asarray(problem.start, dtype=np.float64))
        found: list[np.ndarray] = []
        state = {"timed_out": False, "stopped": False, "checks": 0, "accepted": False, "abandoned": False,
                 "dual": float("inf")}

        # HiGHS swallows an exception raised inside a Python callback (the solve just ends with a solve error), so
        # a Ctrl-C that lands in a callback would be lost: the callbacks keep it, stop the solve, and it is raised
        # again once run() returns.
        raised: list[BaseException] = []

        def guarded(callback):
            def run(event) -> None:
                if raised:  # stop as soon as HiGHS asks again; the first exception is the one raised
                    event.interrupt()
                    return
                try:
                    callback(event)
                except BaseException as exc:  # noqa: BLE001 - re-raised after h.run()
                    raised.append(exc)
                    event.interrupt()
            return run

        @guarded
        def on_solution(event) -> None:
            v = np.array(event.data_out.mip_solution, dtype=np.float64)
            found.append(v)
            if state["abandoned"]:
                event.interrupt()
                return
            if (stop is not None and stop.on_incumbent is not None and state["checks"] < stop.max_checks
                    and stop.check_from <= event.data_out.objective_function_value < stop.primal_at_least):
                state["checks"] += 1
                if stop.on_incumbent(v):
                    state["accepted"] = True

        @guarded
        def on_interrupt(event) -> None:
            out = event.data_out
            state["dual"] = min(state["dual"], float(out.mip_dual_bound))
            if state["abandoned"]:
                event.interrupt()
            elif stop is not None and (out.mip_primal_bound >= stop.primal_at_least or
                                       out.mip_dual_bound < stop.dual_below or state["accepted"]):
                state["stopped"] = True
                event.interrupt()
            elif (self.enforce_time_limit and time_limit is not None
                  and time.perf_counter() - start > time_limit):
                state["timed_out"] = True
                event.interrupt()

        h.cbMipImprovingSolution.subscribe(on_solution)
        h.cbMipInterrupt.subscribe(on_interrupt)  # polls the stop rule, the time limit and failed callbacks
        build = time.perf_counter() - start
        abandoned = self._run(h, start, time_limit, raised, state)
        if raised:
            raise raised[0]
        seconds = time.perf_counter() - start
        if abandoned:
            solutions = best_first(problem, list(found), max(pool, 0) + 1)
            x = solutions[0] if solutions else None
            return SolveResult(
                status=TIME_LIMIT, objective=None if x is None else problem.objective_value(x),
                bound=state["dual"], x=x, pool=solutions[1:], seconds=seconds, solver=self.name,
                message=f"abandoned {self.hard_stop_grace:g} s after the time limit (HiGHS had not polled its "
                        "interrupt callback)",
                stats={"handover_seconds": build, "incumbent_checks": state["checks"], "abandoned": True})
        status = h.getModelStatus()
        info = h.getInfo()
        MS = highspy.HighsModelStatus
        has_sol = info.primal_solution_status == 2  # kSolutionStatusFeasible
        x = np.array(h.getSolution().col_value, dtype=np.float64) if has_sol else None
        objective = float(info.objective_function_value) if has_sol else None
        bound = float(info.mip_dual_bound)
        if not problem.integer.any():
            # A problem without integers is solved as an LP: HiGHS then reports no MIP dual bound, and the LP
            # optimum (dual feasible to HiGHS's tolerance) is the bound.
            bound = objective if (status == MS.kOptimal and objective is not None) else float("inf")
        if status == MS.kOptimal:
            code = OPTIMAL
            bound = objective if objective is not None and not np.isfinite(bound) else bound
        elif status == MS.kInfeasible:
            code, bound = INFEASIBLE, float("-inf")
        elif status == MS.kInterrupt and state["stopped"]:
            code = STOPPED
        elif status in (MS.kTimeLimit, MS.kInterrupt) or state["timed_out"]:
            code = TIME_LIMIT
        else:
            code = ERROR
        if not np.isfinite(bound) and code != INFEASIBLE:
            bound = float("inf")
        if x is not None:
            found.append(x)
        solutions = best_first(problem, found, max(pool, 0) + 1) if found else []
        return SolveResult(
            status=code, objective=objective, bound=bound, x=solutions[0] if solutions else None,
            pool=solutions[1:], seconds=seconds, nodes=int(info.mip_node_count), solver=self.name,
            message=h.modelStatusToString(status),
            stats={"handover_seconds": build, "incumbent_checks": state["checks"], "incumbent_accepted": state["accepted"]},
        )

    def _run(self, h, start: float, time_limit: float | None, raised: list[BaseException], state: dict) -> bool:
        """Run HiGHS; True when the solve was abandoned at the hard stop (see the module doc).

        Without a time limit (or a grace) HiGHS runs in this thread. Otherwise in a thread of its own, which this
        one waits for until the hard stop; a Ctrl-C (or any exception) while waiting lands here, in the main thread
        where no HiGHS callback can swallow it, stops the solve at its next poll and goes on up."""
        if time_limit is None or self.hard_stop_grace is None:
            with _deferred_sigint(raised):
                h.run()
            return False
        done = threading.Event()

        def target() -> None:
            try:
                h.run()
            except BaseException as exc:  # noqa: BLE001 - raised again by the caller
                raised.append(exc)
            finally:
                done.set()

        thread = threading.Thread(target=target, name="highs-solve", daemon=True)
        thread.start()
        hard_stop = start + float(time_limit) + float(self.hard_stop_grace)
        try:
            while not done.wait(max(min(0.1, hard_stop - time.perf_counter()), 0.0)):
                if time.perf_counter() >= hard_stop:
                    state["abandoned"] = True
                    _abandon(thread)
                    return True
        except BaseException:
            # Ctrl-C, or the search's own hard stop (mlrobust.search.deadline: a signal handled here, in the main
            # thread, which it could not be while HiGHS held that thread): the solve stops at its next poll, which
            # is given the grace to come before the exception goes on
            state["abandoned"] = True
            if not done.wait(float(self.hard_stop_grace)):
                _abandon(thread)
            raise
        return False


def _abandon(thread: threading.Thread) -> None:
    """Keep an abandoned solver thread in :data:`ABANDONED` until it has stopped."""
    ABANDONED.add(thread)
    threading.Thread(target=_forget, args=(thread,), daemon=True).start()


@atexit.register
def _join_abandoned() -> None:
    """At interpreter exit, wait for abandoned solver threads to reach their next poll and stop: a native thread
    still inside HiGHS while the interpreter finalises ends the process with an abort ("terminate called without an
    active exception", exit -6) instead of its own exit code. Each was told to stop, and HiGHS's own time limit ends
    it at the latest. (The console script ends verify, vnnlib and inspect with ``os._exit`` and skips this.)"""
    for thread in list(ABANDONED):
        thread.join()


def _forget(thread: threading.Thread) -> None:
    """Drop an abandoned solver thread from :data:`ABANDONED` once it has stopped."""
    thread.join()
    ABANDONED.discard(thread)
