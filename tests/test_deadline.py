"""The hard stop behind the search's deadlines: a stage that ignores its time limit is cut at the limit, and the
search returns only what it had proven, saying where the time ran out. The slow stage is a fake verifier that
sleeps far past any limit; the assertions are about the mechanism (a minute-long stage ends in seconds), not about
how fast real runs are."""

from __future__ import annotations

import time

import numpy as np
import pytest
from test_search_oracles import ExactLpVerifier, exact_worst_margin, tiny_case

import mlrobust
from mlrobust.search.deadline import TimeLimitReached, hard_stop
from mlrobust.verify.verdict import ROBUST_TOLERANCE


class StallingVerifier(ExactLpVerifier):
    """Exact for the first ``honest`` calls, then a stage that never looks at the clock (sleeps a minute)."""

    name = "stalling"

    def __init__(self, honest: int) -> None:
        super().__init__()
        self.honest = honest

    def verify(self, network, box, target, k=2, mode="decide", time_limit=None):
        if self.calls >= self.honest:
            self.calls += 1
            time.sleep(60.0)
        return super().verify(network, box, target, k, mode, time_limit)


def test_hard_stop_raises_in_the_block_and_restores_the_timer():
    start = time.monotonic()
    with pytest.raises(TimeLimitReached):
        with hard_stop(0.2, grace=0.0):
            time.sleep(30.0)
    assert time.monotonic() - start < 5.0
    with hard_stop(None):  # no limit: nothing armed
        time.sleep(0.01)
    # Nested: the inner (later) stop leaves the outer one in charge, and the outer fires after the inner block.
    with pytest.raises(TimeLimitReached):
        with hard_stop(0.3, grace=0.0):
            with hard_stop(10.0, grace=0.0):
                pass
            time.sleep(30.0)
    assert time.monotonic() - start < 10.0


@pytest.mark.parametrize("honest", [0, 1, 4])
def test_a_stalled_stage_is_cut_and_the_search_returns_what_it_proved(honest):
    net, image, target, mask = tiny_case(6, hidden=3, classes=3)
    verifier = StallingVerifier(honest)
    start = time.monotonic()
    res = mlrobust.maximize(net, image, target, object_mask=mask, verifier=verifier, delta=0.01, time_limit=2.0,
                            query_time_limit=None)
    assert time.monotonic() - start < 15.0  # the stage would sleep 60 s
    assert "time limit" in res.stop_reason and not res.interrupted
    assert verifier.calls == honest + 1
    if honest == 0:  # not even the clean image was proven: nothing is claimed
        assert not res.verified and np.all(res.epsilons == 0)
    # Only proven epsilons come back: the returned neighborhood is robust (exact oracle), the summary says the
    # maximality check never ran.
    from mlrobust.neighborhood import LayeredNeighborhood

    nbhd = LayeredNeighborhood.build(image, mask, net.sample_shape)
    worst, _ = exact_worst_margin(net, nbhd.box(res.epsilons), target, 2)
    assert worst < -ROBUST_TOLERANCE
    assert {m.status for m in res.maximality} == {"unchecked"}
    assert np.all(res.epsilons >= 0)


def test_a_stalled_check_is_unknown_within_the_limit():
    net, image, target, mask = tiny_case(6, hidden=3, classes=3)
    start = time.monotonic()
    res = mlrobust.check(net, image, target, 0.01, object_mask=mask, verifier=StallingVerifier(0), time_limit=1.0)
    assert time.monotonic() - start < 15.0
    assert res.status == "unknown" and "time limit" in res.reason


def test_a_stop_during_the_final_upper_bounds_keeps_the_proven_vector_it_reached(monkeypatch):
    from mlrobust.search import run

    net, image, target, mask = tiny_case(6, hidden=3, classes=3)
    real = run.attack_upper_bounds
    reached: list[np.ndarray] = []

    def final_phase_cut(problem, eps, delta, *args, **kwargs):
        if kwargs.get("deadline") is not None and kwargs["deadline"] == problem.budget.time_limit:
            reached.append(np.array(eps))  # the final pass, after the push: the hard stop fires here
            # an object floor the pushed vector no longer keeps (as where the floor was dropped for the uniform
            # start) but an earlier, smaller proven vector does: the stop must still report the vector reached
            problem.floor = np.where(np.arange(eps.size) == 0, eps[0] + 1e-9, 0.0)
            raise TimeLimitReached()
        return real(problem, eps, delta, *args, **kwargs)

    monkeypatch.setattr(run, "attack_upper_bounds", final_phase_cut)
    res = mlrobust.maximize(net, image, target, object_mask=mask, verifier=ExactLpVerifier(), delta=0.01,
                            time_limit=60.0)
    assert reached, "the search reached its final upper-bound pass"
    assert "time limit: stopped during upper bounds" in res.stop_reason
    np.testing.assert_array_equal(res.epsilons, reached[-1])
    assert res.size > 0
    from mlrobust.neighborhood import LayeredNeighborhood

    nbhd = LayeredNeighborhood.build(image, mask, net.sample_shape)
    worst, _ = exact_worst_margin(net, nbhd.box(res.epsilons), target, 2)
    assert worst < -ROBUST_TOLERANCE
