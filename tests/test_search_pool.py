"""Worker processes for the search's independent queries (mlrobust.search.pool): the same answers with any number
of workers, counterexamples re-checked in the parent, and no worker left behind on any exit path.

Every pool here is small (two workers on a tiny network); starting one costs a few seconds (spawn imports torch), so
the tests share what they can."""

from __future__ import annotations

import copy
import multiprocessing
import os
import pickle
import signal
import time

import numpy as np
import pytest
from test_search_oracles import ExactLpVerifier, tiny_case
from test_verify_cli import files, run_cli  # noqa: F401  (the module-scoped fixture: a tiny model, image and mask)

import mlrobust.search.pool as pool_module
from mlrobust.api import maximize
from mlrobust.errors import InputError, MlrobustError
from mlrobust.ir.graph import Network
from mlrobust.neighborhood import LayeredNeighborhood
from mlrobust.search.maximality import certify
from mlrobust.search.pool import QueryPool, check_workers, default_workers
from mlrobust.search.problem import Budget, SearchProblem, status_of
from mlrobust.search.run import SearchOptions, run_search
from mlrobust.verify.verdict import NotRobust, Unknown

SEED = 4


def tiny_problem(pool: QueryPool | None = None, verifier=None, time_limit: float | None = 120.0):
    net, image, target, mask = tiny_case(SEED, hidden=3, classes=3)
    nbhd = LayeredNeighborhood.build(image, mask, net.sample_shape)
    pb = SearchProblem(net, nbhd, target, verifier or ExactLpVerifier(), k=2, budget=Budget(time_limit=time_limit))
    pb.pool = pool
    return pb


class InProcessPool(QueryPool):
    """The pool's batched answers computed here, one job after the other: what any number of workers must give."""

    @property
    def parallel(self) -> bool:
        return True

    def map(self, fn, jobs):
        return [fn(job, self.network) for job in jobs]


@pytest.fixture(scope="module")
def two_workers():
    pool = QueryPool(tiny_problem().network, 2)
    yield pool
    pool.terminate()
    assert not pool.running


def trials(pb: SearchProblem) -> list[np.ndarray]:
    """Vectors from robust to refuted (the exact verifier decides every one)."""
    sat = pb.saturation
    return [np.minimum(sat, f * sat) for f in (0.0, 0.02, 0.05, 0.1, 0.3, 0.6, 1.0)]


def test_workers_answer_a_list_as_the_parent_does(two_workers):
    pb_workers, pb_here, pb_one_by_one = tiny_problem(two_workers), tiny_problem(InProcessPool(two_workers.network, 2)), \
        tiny_problem()
    asked = trials(pb_workers)
    purposes = [f"q{i}" for i in range(len(asked))]
    by_workers = pb_workers.query_many(asked, purposes)
    assert two_workers.running and len(two_workers.pids()) == 2  # the list really went to the workers
    here = pb_here.query_many(asked, purposes)
    one_by_one = [pb_one_by_one.query(e, purpose=p) for e, p in zip(asked, purposes)]
    statuses = [status_of(v) for v in by_workers]
    assert statuses[0] == "robust" and statuses[-1] == "not_robust"  # the list has both answers
    # the same answers, to the tier, margin and counterexample, wherever the jobs ran (seeds are the queries')
    assert [(v.tier, status_of(v)) for v in by_workers] == [(v.tier, status_of(v)) for v in here]
    for a, b in zip(by_workers, here):
        if isinstance(a, NotRobust):
            assert a.margin == b.margin and np.array_equal(a.counterexample, b.counterexample)
    # and the same verdicts as one query at a time (an exact verifier: nothing left to the order of asking)
    assert statuses == [status_of(v) for v in one_by_one]
    # recorded and cached like one-by-one queries, in the order asked
    assert [r.purpose for r in pb_workers.records] == purposes
    assert pb_workers.known_robust(asked[0]) is not None and pb_workers.counterexamples


def test_a_workers_counterexample_counts_only_once_rechecked_here(two_workers):
    """A worker's refutation whose point does not violate on the real network is Unknown; a real one stays."""
    pb = tiny_problem(two_workers, verifier=LyingVerifier())
    pb.warm_attack = False  # only the verifier answers
    sat = pb.saturation
    robust_box, refuted_box = 0.02 * sat, sat  # the centre image is never a counterexample; at saturation the
    verdicts = pb.query_many([robust_box, refuted_box], ["a", "b"])  # verifier reports the true worst case
    assert isinstance(verdicts[0], Unknown) and "not confirmed" in verdicts[0].reason
    assert isinstance(verdicts[1], NotRobust) and verdicts[1].margin >= 0
    assert pb.box(pb.clip(refuted_box)).contains(verdicts[1].counterexample)
    assert len(pb.counterexamples) == 1  # only the confirmed point is stored


class LyingVerifier(ExactLpVerifier):
    """Claims every box refuted: by the box's centre image (not a counterexample) where the exact answer is
    robust, by the exact worst case otherwise."""

    name = "lying"

    def verify(self, network, box, target, k=2, mode="decide", time_limit=None):
        exact = super().verify(network, box, target, k, mode, time_limit)
        if isinstance(exact, NotRobust):
            return exact
        centre = (box.lower + box.upper) / 2
        return NotRobust(tier="lying", counterexample=centre, margin=1.0)


def test_maximality_with_two_workers_matches_one(two_workers):
    """The per-layer maximality check asks the layers' first questions together: the same vector and statuses."""
    pb_one, pb_two = tiny_problem(), tiny_problem(two_workers)
    start = 0.02 * pb_one.saturation
    eps_one, stat_one = certify(pb_one, start, 0.01, grow=True)
    eps_two, stat_two = certify(pb_two, start, 0.01, grow=True)
    np.testing.assert_array_equal(eps_one, eps_two)
    assert [m.status for m in stat_one] == [m.status for m in stat_two]
    assert any(r.purpose.startswith("maximality") for r in pb_two.records)


@pytest.mark.parametrize("method", ["optimize", "boundary"])
def test_search_with_two_workers_returns_what_one_returns(two_workers, method):
    """The whole search (its upper bounds and maximality checks in the workers) on a tiny net: the same verdict,
    the same vector, the same per-layer statuses."""
    res_one = run_search(tiny_problem(), SearchOptions(method=method, delta=0.01))
    res_two = run_search(tiny_problem(two_workers), SearchOptions(method=method, delta=0.01))
    assert res_one.verified and res_two.verified
    np.testing.assert_allclose(res_two.epsilons, res_one.epsilons, rtol=0, atol=1e-12)
    assert [m.status for m in res_two.maximality] == [m.status for m in res_one.maximality]


# --- no worker outlives the search ----------------------------------------------------------------------------------
class Recorded(QueryPool):
    made: list[QueryPool] = []

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        Recorded.made.append(self)


@pytest.fixture
def recorded(monkeypatch):
    Recorded.made = []
    monkeypatch.setattr(pool_module, "QueryPool", Recorded)
    return Recorded.made


def assert_workers_gone(pools: list[QueryPool], seen: list[int]) -> None:
    assert pools and pools[0].starts >= 1 and seen, "the search never started its workers"
    assert not pools[0].running
    alive = {p.pid for p in multiprocessing.active_children()}
    assert not alive & set(seen)
    for pid in seen:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def seen_pids(monkeypatch) -> list[int]:
    """Every worker pid a pool had while mapping (recorded as the jobs go out)."""
    seen: list[int] = []
    original = QueryPool.map

    def map_and_note(self, fn, jobs):
        if self.parallel and len(jobs) >= 2:
            # the executor starts its processes as jobs are submitted: make them all exist now, and note them
            for _ in range(self.workers):
                self._start().submit(time.sleep, 0)
            seen.extend(self.pids())
        return original(self, fn, jobs)

    monkeypatch.setattr(QueryPool, "map", map_and_note)
    return seen


def _loaded_slowly(state: bytes):
    time.sleep(60)
    return pickle.loads(state)


def _failed_to_load(state: bytes):
    raise RuntimeError("the network failed in a worker")


class InWorkers(Network):
    """The tiny network, which behaves in this process and misbehaves in the workers (their copy is unpickled by
    ``loader``): the pool is busy, or broken, while the search waits for it."""

    loader = staticmethod(_loaded_slowly)

    def __reduce__(self):
        plain = Network.__new__(Network)
        plain.__dict__.update(self.__dict__)
        return (type(self).loader, (pickle.dumps(plain),))


class FailsInWorkers(InWorkers):
    loader = staticmethod(_failed_to_load)


def tiny_maximize(kind: type | None = None, **kw):
    net, image, target, mask = tiny_case(SEED, hidden=3, classes=3)
    if kind is not None:
        net = copy.copy(net)
        net.__class__ = kind
    return maximize(net, image, target, object_mask=mask, verifier=ExactLpVerifier(), delta=0.01,
                    method="optimize", workers=2, **kw)


def test_workers_are_gone_after_a_normal_search(recorded, monkeypatch):
    seen = seen_pids(monkeypatch)
    res = tiny_maximize(time_limit=60)
    assert res.verified
    assert_workers_gone(recorded, seen)


def _node_count(job: int, network: Network | None = None) -> int:
    """A job's answer: in a worker, from the network the worker unpickled once."""
    return job * len((network or pool_module._NETWORK).nodes)


def test_closing_a_pool_terminates_its_idle_workers():
    """The end of a search does not wait for the workers' own interpreter shutdown (seconds of torch teardown on a
    loaded machine, counted against the time limit): its idle workers are terminated."""
    pb = tiny_problem()
    with QueryPool(pb.network, 2) as pool:
        assert pool.map(_node_count, [1, 2]) == [len(pb.network.nodes), 2 * len(pb.network.nodes)]
        procs = list(pool._executor._processes.values())
    assert procs and all(p.exitcode == -signal.SIGTERM for p in procs)
    assert not pool.running


def _send_half_a_result(marker: str, network: Network | None = None) -> None:
    """In a worker: the start of a 1 MiB result message on the worker's result pipe, then nothing (as when a worker
    is stopped while it sends a large result)."""
    import gc
    import multiprocessing.queues
    import struct

    for queue in [o for o in gc.get_objects() if isinstance(o, multiprocessing.queues.SimpleQueue)]:
        os.write(queue._writer.fileno(), struct.pack("!i", 1 << 20) + b"partial")
    open(marker, "a").close()
    time.sleep(120)


class Hung(Exception):
    pass


def test_a_worker_stopped_while_sending_its_result_leaves_no_hung_pool(tmp_path):
    """The hard stop comes while a worker is half-way through sending its result: stopping the pool must not wait
    for the rest of that message (the executor's manager thread used to, and the search with it, for ever)."""
    pool = QueryPool(tiny_problem().network, 2)
    markers = [str(tmp_path / f"sent{i}") for i in range(2)]
    waited = [0]

    def stop(signum, frame):
        if not all(os.path.exists(m) for m in markers) and waited[0] < 120:
            waited[0] += 1
            signal.setitimer(signal.ITIMER_REAL, 0.5)  # the workers are still starting
            return
        signal.signal(signal.SIGALRM, hung)
        signal.setitimer(signal.ITIMER_REAL, 30.0)
        raise TimeoutError

    def hung(signum, frame):
        raise Hung

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, 0.5)
    try:
        with pytest.raises(TimeoutError):
            pool.map(_send_half_a_result, markers)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert all(os.path.exists(m) for m in markers)
    assert not pool.running


def test_workers_are_gone_after_an_exception(recorded, monkeypatch):
    """A worker that dies (here: its network fails to load) is one clear error, and the others are stopped."""
    seen = seen_pids(monkeypatch)
    with pytest.raises(MlrobustError, match="worker process"):
        tiny_maximize(FailsInWorkers, time_limit=60)
    assert_workers_gone(recorded, seen)


def test_workers_are_gone_after_an_interrupt(recorded, monkeypatch):
    """Ctrl-C while the workers are busy: the search returns what it proved, flagged interrupted, and the workers
    (which leave SIGINT to the parent) are terminated at once."""
    seen = seen_pids(monkeypatch)

    def ctrl_c(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, ctrl_c)
    signal.setitimer(signal.ITIMER_REAL, 6.0)
    try:
        start = time.perf_counter()
        res = tiny_maximize(InWorkers, time_limit=None)
        took = time.perf_counter() - start
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert res.interrupted and took < 20
    assert_workers_gone(recorded, seen)


def test_workers_are_gone_after_the_hard_time_limit(recorded, monkeypatch):
    seen = seen_pids(monkeypatch)
    start = time.perf_counter()
    res = tiny_maximize(InWorkers, time_limit=6)
    assert time.perf_counter() - start < 10
    assert "time limit" in res.stop_reason and not res.interrupted
    assert_workers_gone(recorded, seen)


# --- the option -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["0", "-1"])
def test_workers_below_one_is_one_error_line(monkeypatch, capsys, files, bad):  # noqa: F811
    code, out, err = run_cli(monkeypatch, capsys, "verify", files["model"], files["image"], "--target",
                             files["target"], "--object-mask", files["mask"], "--workers", bad)
    assert code == 2
    assert err.startswith("error:") and "--workers" in err and bad in err and "Traceback" not in err


def test_worker_counts(monkeypatch):
    assert check_workers(3) == 3
    for bad in (0, -2, 1.5, True, "2"):
        with pytest.raises(InputError, match="at least 1"):
            check_workers(bad)
    monkeypatch.setenv("MLROBUST_WORKERS", "3")
    assert default_workers() == 3
    monkeypatch.setenv("MLROBUST_WORKERS", "zero")
    with pytest.raises(InputError, match="MLROBUST_WORKERS"):
        default_workers()
    monkeypatch.delenv("MLROBUST_WORKERS")
    assert default_workers() == len(os.sched_getaffinity(0))
    # one worker never starts a process
    one = QueryPool(tiny_problem().network, 1)
    assert one.map(lambda job, net: job * 2, [1, 2, 3]) == [2, 4, 6] and one.starts == 0


def test_the_workers_benchmark_asks_one_question_per_layer():
    """benchmarks/bench_workers.py: one job per layer (that layer grown, the others fixed), answered in order."""
    from benchmarks.bench_workers import per_layer_jobs, throughput

    pb = tiny_problem()
    base = 0.01 * pb.saturation
    jobs = per_layer_jobs(pb.network, pb.nbhd, pb.target, pb.k, base, grow=0.05)
    assert len(jobs) == pb.num_layers
    for d, job in enumerate(jobs):
        expected = np.minimum(base, pb.saturation)
        expected[d] = min(base[d] + 0.05, pb.saturation[d])
        np.testing.assert_array_equal(job.box.lower, pb.box(expected).lower)
        np.testing.assert_array_equal(job.box.upper, pb.box(expected).upper)
    row = throughput(pb.network, jobs, 1)
    assert row["queries"] == len(jobs) == len(row["verdicts"]) and row["queries_per_second"] > 0


class CallCountingVerifier:
    """A verifier that learns from its calls (as the bound tier's JointPolicy does): robust on its first call,
    unknown on every later one. Its answers show which state each job started from."""

    name = "counting"

    def __init__(self) -> None:
        self.calls = 0

    def verify(self, network, box, target, k=2, mode="decide", time_limit=None):
        from mlrobust.verify.verdict import Robust

        self.calls += 1
        return Robust(tier="counting") if self.calls == 1 else Unknown(reason="later call", tier="counting")


def test_a_pool_of_one_runs_each_job_from_the_state_the_list_was_made_in(two_workers):
    """Workers receive each job pickled, so a learning verifier starts every job of a list from the same state; a
    pool of one worker runs the jobs here and must too, or a list's verdicts would depend on the worker count."""
    from mlrobust.search.pool import VerifyJob, run_verify_job

    pb = tiny_problem()
    shared = CallCountingVerifier()
    jobs = [VerifyJob(pb.nbhd.box(e), pb.target, 2, "decide", 10.0, shared, [], False, False, seed=i)
            for i, e in enumerate(trials(pb)[:4])]
    here = QueryPool(pb.network, 1).map(run_verify_job, jobs)
    there = two_workers.map(run_verify_job, jobs)
    assert [status_of(o.verdict) for o in here] == [status_of(o.verdict) for o in there] == ["robust"] * 4
    assert shared.calls == 0  # the caller's verifier is left as it was, as with workers
