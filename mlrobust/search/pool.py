"""Worker processes for the search's independent verifier queries (``mlrobust verify --workers N``).

A search asks many questions whose answers do not depend on each other: the attack's upper bound of every layer,
each layer's maximality question with the other layers fixed. :class:`QueryPool` answers such a list in worker
processes and hands the answers back *in the order asked*, so the search merges them exactly as if one process
had asked them one after the other from the same state. What makes the answers the same with any number of
workers: every job carries everything it depends on (the box, the warm starts clipped into it, its seed), the
seed belongs to the query (not to the process), and each worker runs one torch thread, as the parent does for
its attacks.

The caller keeps every soundness duty: a counterexample from a worker is re-run through the real network in the
parent before it counts (:meth:`mlrobust.search.problem.SearchProblem.query_many`), and a proof only ever counts
for the box it was asked about.

The pool starts lazily (the first list of two or more jobs; shorter lists run in the calling process with the same
function), sends the network once per worker (the initializer's argument, not every job), and is shut down on every
exit path: a normal end, an exception, Ctrl-C and the hard time-limit stop (:mod:`mlrobust.search.deadline`)
terminate the workers at once and wait for them, so no process outlives the search.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence, TypeVar

import numpy as np

from mlrobust.errors import InputError, MlrobustError

if TYPE_CHECKING:  # the command line checks --workers before torch is imported (see tests/test_cli_errors.py)
    from mlrobust.ir.graph import Network
    from mlrobust.verify.base import Mode, Verifier
    from mlrobust.verify.spec import Box
    from mlrobust.verify.verdict import Verdict, WeakPoint

#: Environment variable that sets the default number of workers (else: the cores this process may run on).
WORKERS_ENV = "MLROBUST_WORKERS"

_NETWORK: Network | None = None  # the worker process's network, unpickled once by _init_worker

J = TypeVar("J")
R = TypeVar("R")


def check_workers(workers: Any, option: str = "--workers") -> int:
    """``workers`` as a count of at least 1, or an InputError naming the option."""
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise InputError(f"{option} must be a whole number of at least 1, got {workers!r}")
    return int(workers)


def default_workers() -> int:
    """The default worker count: $MLROBUST_WORKERS if set, else the number of cores this process may use."""
    text = os.environ.get(WORKERS_ENV)
    if text:
        try:
            value = int(text)
        except ValueError:
            raise InputError(f"{WORKERS_ENV} must be a whole number of at least 1, got {text!r}") from None
        return check_workers(value, WORKERS_ENV)
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


# --- what a worker does -------------------------------------------------------------------------------------------
def _init_worker(network_bytes: bytes) -> None:
    """One torch and BLAS thread per worker (the processes are the parallelism; more threads would fight over the
    same cores), Ctrl-C left to the parent (it terminates the workers), and the network unpickled once."""
    global _NETWORK
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import torch

    torch.set_num_threads(1)
    _NETWORK = pickle.loads(network_bytes)


@dataclass(frozen=True)
class VerifyJob:
    """One query that neither cache answered: the search's warm attack from ``starts`` (with random restarts too
    where ``cold``; none at all without ``warm``), then ``verifier`` within ``time_limit`` seconds."""

    box: Box
    target: int
    k: int
    mode: Mode
    time_limit: float | None
    verifier: Verifier
    starts: list[np.ndarray]
    cold: bool
    warm: bool
    seed: int


@dataclass
class VerifyOutcome:
    """A job's answer: the verdict (not yet re-checked), the attack's best points, the attack's seconds when it
    refuted nothing, whether the verifier ran, and the job's wall seconds."""

    verdict: Verdict
    warm_points: list[WeakPoint]
    attack_seconds: float
    reached_verifier: bool
    seconds: float


def run_verify_job(job: VerifyJob, network: Network | None = None) -> VerifyOutcome:
    """Answer ``job`` on ``network`` (in a worker: the one its initializer loaded)."""
    import time

    from mlrobust.search.problem import warm_attack
    from mlrobust.verify.counterexample import TopKProperty

    net = network if network is not None else _NETWORK
    assert net is not None, "the worker's network was not loaded"
    start = time.perf_counter()
    verdict, points, seconds = (warm_attack(net, job.box, TopKProperty(job.target, job.k), job.starts, job.cold,
                                            job.seed) if job.warm else (None, [], 0.0))
    if verdict is not None:
        return VerifyOutcome(verdict, points, 0.0, False, time.perf_counter() - start)
    limit = job.time_limit
    if limit is not None:
        limit = max(limit - (time.perf_counter() - start), 0.0)
    verdict = job.verifier.verify(net, job.box, job.target, job.k, job.mode, limit)
    return VerifyOutcome(verdict, points, seconds, True, time.perf_counter() - start)


@dataclass(frozen=True)
class AttackJob:
    """One PGD run of the attack's upper bounds (:func:`mlrobust.search.intervals.attack_upper_bounds`)."""

    box: Box
    target: int
    k: int
    starts: list[np.ndarray]
    restarts: int
    steps: int
    seed: int
    time_limit: float | None = None


@dataclass
class AttackOutcome:
    """The attack's violating point (not yet re-checked; None if it found none) and its best points."""

    counterexample: np.ndarray | None
    points: list[WeakPoint]
    seconds: float


def run_attack_job(job: AttackJob, network: Network | None = None) -> AttackOutcome:
    """Run ``job``'s PGD on ``network`` (in a worker: the one its initializer loaded)."""
    from mlrobust.verify.attack import pgd
    from mlrobust.verify.counterexample import TopKProperty

    net = network if network is not None else _NETWORK
    assert net is not None, "the worker's network was not loaded"
    result = pgd(net, job.box, TopKProperty(job.target, job.k), restarts=job.restarts, steps=job.steps,
                 starts=job.starts, seed=job.seed, time_limit=job.time_limit)
    cex = result.counterexample
    return AttackOutcome(None if cex is None else np.asarray(cex.x), [p.weak_point() for p in result.points[:2]],
                         float(result.seconds))


# --- the pool -----------------------------------------------------------------------------------------------------
class QueryPool:
    """``workers`` processes that answer lists of independent jobs for one network (see the module doc).

    ``workers=1`` never starts a process: :meth:`map` runs the jobs here, one after the other, each on its own copy
    (as a worker would receive it), so that every job starts from the state the list was made in."""

    def __init__(self, network: Network, workers: int):
        self.network = network
        self.workers = check_workers(workers)
        self._executor: ProcessPoolExecutor | None = None
        self.starts = 0  # how many times the processes were started (a stopped pool starts again when needed)
        self.jobs_sent = 0

    @property
    def parallel(self) -> bool:
        return self.workers > 1

    @property
    def running(self) -> bool:
        return self._executor is not None

    def pids(self) -> list[int]:
        """The worker processes' ids (empty while no process runs)."""
        procs = getattr(self._executor, "_processes", None) or {}
        return [int(pid) for pid in procs]

    def _start(self) -> ProcessPoolExecutor:
        if self._executor is None:
            # spawn, not fork: the parent has torch's (and BLAS's) thread pools running, and a forked child inherits
            # their locks in whatever state they were in — it can hang on its first matrix product. A spawned worker
            # starts a fresh interpreter, at the cost of importing torch once per worker.
            ctx = multiprocessing.get_context("spawn")
            for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
                # inherited by the spawned workers, which load numpy's BLAS before their initializer runs
                os.environ.setdefault(var, "1")
            self._executor = ProcessPoolExecutor(max_workers=self.workers, mp_context=ctx, initializer=_init_worker,
                                                 initargs=(pickle.dumps(self.network),))
            self.starts += 1
        return self._executor

    def map(self, fn: Callable[..., R], jobs: Sequence[J]) -> list[R]:
        """``fn(job)`` for every job, in the order given. Two or more jobs on a parallel pool run in the workers;
        any exception (Ctrl-C and the time-limit stop included) terminates them before it goes on."""
        if not self.parallel or len(jobs) < 2:
            # each job on its own copy, as a worker receives it: a verifier that learns from its calls (the bound
            # tier's JointPolicy) would otherwise answer job i from the state jobs 0..i-1 left, and a list's
            # verdicts would depend on where it ran
            return [fn(pickle.loads(pickle.dumps(job)), self.network) for job in jobs]
        futures: list[Future] = []
        try:
            executor = self._start()
            futures = [executor.submit(fn, job) for job in jobs]
            self.jobs_sent += len(futures)
            return [f.result() for f in futures]
        except BrokenProcessPool:
            self.terminate()
            raise MlrobustError("a worker process of the search died (out of memory?); run again with fewer "
                                "--workers, or --workers 1") from None
        except BaseException:
            self.terminate()
            raise

    def terminate(self) -> None:
        """Stop the workers now (running jobs are abandoned) and wait until they are gone."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        procs = list((getattr(executor, "_processes", None) or {}).values())
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
        for proc in procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join()
        # A worker stopped while it was sending its result leaves part of a message in the result pipe, and the
        # executor's manager thread then waits for the rest for ever (and shutdown with it: a search at 3x300x300
        # hung 14 minutes past its limit, cut by the hard stop during a list). With every worker gone, closing this
        # process's own copy of the pipe's write end turns that wait into an end of file, which the executor
        # handles as a broken pool.
        writer = getattr(getattr(executor, "_result_queue", None), "_writer", None)
        if writer is not None:
            writer.close()
        executor.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        """Stop the workers, which are idle between lists. They are terminated rather than asked to exit: an
        exiting worker runs its interpreter's shutdown (torch's teardown above all), which took 2.6 s on a loaded
        machine after a 60 s search and counted against the caller's time limit; an idle worker holds nothing that
        an orderly exit would save."""
        self.terminate()

    def __enter__(self) -> "QueryPool":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close()
