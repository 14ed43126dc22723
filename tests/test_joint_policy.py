"""The joint-pass policy (mlrobust.bounds.joint_policy): explore both arms, then the one with more proofs per second
(k-th margin gain per second while proofs are few), re-explore the other now and then, deterministic given the
measurements; and the bound tier with a policy: the choice and its reason in the stats, made-up costs through an
injected clock, bounds never looser than CROWN's and containing sampled margins."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ir_factories import reference_network, sample_box

from mlrobust.bounds.alpha_margin import TopKBound
from mlrobust.bounds.joint_policy import (
    EXPLORE_CALLS,
    MIN_PROOFS,
    REEXPLORE_EVERY,
    WINDOW,
    JointPolicy,
    progress,
)
from mlrobust.bounds.tier import tighten
from mlrobust.verify.bound_check import BoundCheck, margin_range
from mlrobust.verify.spec import Box

FAMILY = ("net", 3)


class StepClock:
    """A clock that moves by ``step`` seconds each time it is read (every tier call is then 'step' long)."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def _explored(policy: JointPolicy, joint: tuple[float, bool, float], frozen: tuple[float, bool, float]) -> None:
    """Answer the exploration calls: each arm's call takes ``seconds``, proves or not, and ends at k-th bound
    ``kth`` (CROWN's is 1.0)."""
    for _ in range(2 * EXPLORE_CALLS):
        choice = policy.choose(FAMILY)
        assert choice.reason.startswith("explore")
        seconds, proven, kth = joint if choice.joint else frozen
        policy.record(FAMILY, choice.joint, seconds, proven, kth, 1.0)


def test_the_first_calls_alternate_starting_with_joint():
    policy = JointPolicy()
    arms = []
    for _ in range(2 * EXPLORE_CALLS):
        choice = policy.choose(FAMILY)
        arms.append(choice.arm)
        policy.record(FAMILY, choice.joint, 1.0, False, 0.5, 1.0)
    assert arms == ["joint", "frozen"] * EXPLORE_CALLS
    assert policy.choose(("other net", 3)).arm == "joint"  # a lone call: joint, as the tier ran it before


def test_a_call_not_recorded_does_not_advance_the_exploration():
    policy = JointPolicy()
    assert policy.choose(FAMILY).arm == "joint"
    assert policy.choose(FAMILY).arm == "joint"  # CROWN decided the first query alone: nothing was measured


def test_joint_is_chosen_when_it_proves_more_per_second():
    policy = JointPolicy()
    _explored(policy, joint=(0.6, True, -0.1), frozen=(0.3, False, 0.2))  # 1.7 proofs/s against 0
    choice = policy.choose(FAMILY)
    assert choice.joint and choice.reason.startswith("proofs per second: joint 1.67, frozen 0")


def test_frozen_is_chosen_when_joint_costs_more_than_it_gains():
    policy = JointPolicy()
    _explored(policy, joint=(0.9, True, -0.1), frozen=(0.3, True, -0.1))  # the same proofs at three times the cost
    choice = policy.choose(FAMILY)
    assert not choice.joint and "joint 1.11, frozen 3.33" in choice.reason


def test_proofs_per_second_beat_a_larger_gain():
    policy = JointPolicy()
    _explored(policy, joint=(0.5, False, -5.0 + 1e-3), frozen=(0.5, True, -0.1))
    assert policy.choose(FAMILY).arm == "frozen"


def test_while_proofs_are_few_the_margin_gain_per_second_decides():
    policy = JointPolicy()
    _explored(policy, joint=(0.4, False, 0.2), frozen=(0.2, False, 0.8))  # gains 0.8 / 0.4 s against 0.2 / 0.2 s
    choice = policy.choose(FAMILY)
    assert choice.joint and choice.reason.startswith("k-th margin gain per second: joint 2, frozen 1 (0 proofs)")
    policy = JointPolicy()
    _explored(policy, joint=(0.8, False, 0.6), frozen=(0.2, False, 0.8))  # 0.4 / 0.8 s: less per second
    assert policy.choose(FAMILY).arm == "frozen"
    policy = JointPolicy()
    _explored(policy, joint=(0.4, False, 1.0), frozen=(0.2, False, 1.0))  # nothing gained: the cheaper arm
    choice = policy.choose(FAMILY)
    assert not choice.joint and choice.reason.endswith("tie: cheaper")
    assert MIN_PROOFS > 1  # one proof alone is "few": it would otherwise flip the choice on luck


class FakeAlpha:
    """Stands for the tier's α call: a fixed k-th bound per arm (CROWN's 0.5), ``seconds`` per call on ``clock``."""

    def __init__(self, clock: StepClock, joint_kth: float, frozen_kth: float, joint_runs: bool = True):
        self.clock, self.kth = clock, {True: joint_kth, False: frozen_kth}
        self.joint_runs, self.calls = joint_runs, []

    def __call__(self, joint: bool) -> TopKBound:
        self.calls.append(joint)
        ran = "on" if joint and self.joint_runs else "off"
        kth = self.kth[joint and self.joint_runs]
        return TopKBound(np.zeros(3), np.zeros(3), kth, 0.5, 0.1, {"joint": ran})


def test_an_exploring_frozen_call_that_leaves_the_box_open_is_followed_by_a_joint_one():
    clock = StepClock(0.1)
    policy = JointPolicy(clock=clock)
    alpha = FakeAlpha(clock, joint_kth=-0.2, frozen_kth=0.3)
    answers = [policy.run(FAMILY, alpha, clock()) for _ in range(4)]
    assert alpha.calls == [True, False, True, False, True, True]  # J, F then J, F then J, and then J (exploit)
    assert [a[0].kth_upper for a in answers] == [-0.2] * 4  # exploring cost no proof
    assert [a[1].get("joint_followed", False) for a in answers] == [False, True, True, False]
    assert answers[3][1]["joint_reason"].startswith("proofs per second")
    figures = policy.to_dict()[str(FAMILY)]
    assert (figures["joint"]["calls"], figures["frozen"]["calls"]) == (4, 2)
    assert figures["joint"]["window_seconds"] == pytest.approx(0.8)  # CROWN's tick and α's per call


def test_no_follow_up_where_frozen_proves_is_favoured_or_the_joint_pass_never_runs():
    clock = StepClock(0.1)
    policy = JointPolicy(clock=clock)
    proves = FakeAlpha(clock, joint_kth=-0.2, frozen_kth=-0.1)
    for _ in range(4):
        policy.run(FAMILY, proves, clock())
    assert proves.calls == [True, False, True, False]
    policy = JointPolicy(clock=clock)
    for _ in range(EXPLORE_CALLS):  # frozen measured better: joint costs ten times as much for the same bound
        policy.record(FAMILY, True, 1.0, False, 0.3, 0.5)
        policy.record(FAMILY, False, 0.1, False, 0.3, 0.5)
    open_box = FakeAlpha(clock, joint_kth=0.3, frozen_kth=0.3)
    _, notes = policy.run(FAMILY, open_box, clock())
    assert open_box.calls == [False] and notes["joint_choice"] == "frozen" and "joint_followed" not in notes
    policy = JointPolicy(clock=clock)
    unavailable = FakeAlpha(clock, joint_kth=-0.2, frozen_kth=0.3, joint_runs=False)
    for _ in range(3):
        policy.run(FAMILY, unavailable, clock())
    assert unavailable.calls == [True, True, True]  # asked for joint, ran frozen: recorded as frozen, nothing follows
    assert policy.to_dict()[str(FAMILY)]["joint"]["calls"] == 0


def test_the_gain_counts_as_the_share_of_the_way_to_a_proof():
    assert progress(0.05, 0.1, False) == pytest.approx(0.5)
    assert progress(1.95, 2.0, False) == pytest.approx(0.025)  # the same 0.05 on a box far from a proof
    assert progress(-0.3, 0.1, True) == 1.0 and progress(-0.3, 2.0, True) == 1.0
    assert progress(0.2, 0.1, False) == 0.0 and progress(float("nan"), 0.1, False) == 0.0
    assert progress(0.0, -5e-5, False) == 0.0  # CROWN left it within the tolerance: nothing to share out


def test_a_gain_on_hopeless_boxes_does_not_outweigh_one_near_a_proof():
    policy = JointPolicy()
    for _ in range(EXPLORE_CALLS):  # joint: 0.5 lower on boxes CROWN left at +2; frozen: 0.05 on boxes left at +0.1
        policy.record(FAMILY, True, 0.5, False, 1.5, 2.0)
        policy.record(FAMILY, False, 0.5, False, 0.05, 0.1)
    assert policy.choose(FAMILY).arm == "frozen"


def test_the_other_arm_is_measured_again_every_so_often():
    policy = JointPolicy()
    _explored(policy, joint=(0.6, True, -0.1), frozen=(0.3, False, 0.2))
    arms = []
    for _ in range(3 * (REEXPLORE_EVERY + 1)):
        choice = policy.choose(FAMILY)
        arms.append(choice.arm)
        if choice.reason.startswith("re-explore"):
            assert not choice.joint and "frozen not run for" in choice.reason
        policy.record(FAMILY, choice.joint, 0.6 if choice.joint else 0.3, choice.joint, 0.0, 1.0)
    frozen_at = [i for i, a in enumerate(arms) if a == "frozen"]
    # REEXPLORE_EVERY calls without frozen, then one frozen call
    assert frozen_at == [REEXPLORE_EVERY, 2 * REEXPLORE_EVERY + 1, 3 * REEXPLORE_EVERY + 2]


def test_a_re_explored_arm_that_now_wins_takes_over():
    # the boxes grow: frozen proved nothing on the small ones, now it proves what joint proves at half the cost
    policy = JointPolicy()
    _explored(policy, joint=(0.6, True, -0.1), frozen=(0.3, False, 0.2))
    arms = []
    for _ in range(2 * REEXPLORE_EVERY + WINDOW):
        choice = policy.choose(FAMILY)
        arms.append(choice.arm)
        policy.record(FAMILY, choice.joint, 0.6 if choice.joint else 0.3, True, -0.1, 1.0)
    assert arms[:REEXPLORE_EVERY - 1].count("joint") == REEXPLORE_EVERY - 1
    assert arms[-3:] == ["frozen"] * 3


OUTCOME = st.tuples(st.floats(0.01, 3.0), st.booleans(), st.floats(-2.0, 2.0))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(OUTCOME, OUTCOME), min_size=1, max_size=40))
def test_the_choice_is_a_function_of_the_measurements_and_no_arm_starves(outcomes):
    def run() -> list[tuple[bool, str]]:
        policy = JointPolicy(clock=lambda: 0.0)
        seen = []
        for joint_outcome, frozen_outcome in outcomes:
            choice = policy.choose(FAMILY)
            seen.append((choice.joint, choice.reason))
            seconds, proven, kth = joint_outcome if choice.joint else frozen_outcome
            policy.record(FAMILY, choice.joint, seconds, proven, kth, 1.0)
        return seen

    first = run()
    assert first == run()
    arms = [joint for joint, _ in first]
    for arm in (True, False):  # each arm runs at least once in every REEXPLORE_EVERY + 1 calls after exploring
        at = [i for i, a in enumerate(arms) if a == arm]
        assert all(b - a <= REEXPLORE_EVERY + 1 for a, b in zip(at, at[1:]))
        assert not at or len(arms) - 1 - at[-1] <= REEXPLORE_EVERY + 2 * EXPLORE_CALLS


# --- the bound tier with a policy -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def open_boxes():
    """A 16x16 network of the reference architecture and two whole-image boxes CROWN leaves open (α runs)."""
    net = reference_network(2, size=16)
    x = np.random.default_rng(2).uniform(0, 1, net.sample_shape)
    target = int(np.argmax(net.forward(x[None])))
    return net, target, [(np.clip(x - r, 0, 1), np.clip(x + r, 0, 1)) for r in (0.02, 0.03)]


def _kth_margin(net, lo: np.ndarray, hi: np.ndarray, target: int, seed: int) -> float:
    y = net.forward(sample_box(lo, hi, 300, seed)).reshape(300, -1)
    return float(np.sort(np.delete(y - y[:, [target]], target, axis=1), axis=1)[:, -2].max())


def test_auto_with_a_policy_records_its_choice_and_stays_sound(open_boxes):
    net, target, boxes = open_boxes
    policy = JointPolicy(clock=StepClock(0.25))
    seen = []
    for i, (lo, hi) in enumerate(boxes * 2):
        crown_kth = margin_range(tighten(net, lo, hi, "crown", target=target), target, 2)[1]
        tight = tighten(net, lo, hi, "alpha", target=target, joint_policy=policy)
        kth = margin_range(tight, target, 2)[1]
        assert kth <= crown_kth + 1e-12  # never looser than CROWN's
        assert _kth_margin(net, lo, hi, target, i) <= kth  # and sound: no sampled input above it
        seen.append((tight.stats["joint_choice"], tight.stats.get("joint_followed", False)))
        assert tight.stats["joint_reason"].startswith("explore" if i < 3 else "k-th margin gain per second")
    # joint first; the exploring frozen calls leave the boxes open, so a joint call follows each on the same box
    assert seen[:3] == [("joint", False), ("frozen", True), ("frozen", True)] and not seen[3][1]
    figures = policy.to_dict()[str((id(net), target))]
    assert figures["joint"]["calls"] + figures["frozen"]["calls"] == 6 and figures["frozen"]["calls"] >= 2
    # the made-up costs: CROWN's part (one tick) and α's (one tick) for every call measured, follow-ups included
    assert figures["joint"]["window_seconds"] == pytest.approx(0.5 * figures["joint"]["calls"])
    assert figures["frozen"]["window_seconds"] == pytest.approx(0.5 * figures["frozen"]["calls"])


def test_explicit_joint_settings_bypass_the_policy(open_boxes):
    from mlrobust.bounds.alpha_crown import AlphaOptions

    net, target, boxes = open_boxes
    policy = JointPolicy()
    lo, hi = boxes[0]
    tight = tighten(net, lo, hi, "alpha", target=target, joint_policy=policy,
                    alpha_options=AlphaOptions(joint_intermediate="off"))
    assert "joint_choice" not in tight.stats and tight.stats["joint"] == "off" and policy.to_dict() == {}


def test_the_bound_check_of_a_search_decides_by_policy_and_reports_it(open_boxes):
    net, target, boxes = open_boxes
    check = BoundCheck("alpha")
    assert check.joint_policy is not None
    lo, hi = boxes[1]
    box = Box(lo, hi)
    verdicts = [check.verify(net, box, target) for _ in range(2)]
    assert [v.stats["bounds"]["joint_choice"] for v in verdicts] == ["joint", "frozen"]
    assert BoundCheck("alpha", warm_start=False).joint_policy is None


def test_totals_sum_every_call_of_every_family():
    policy = JointPolicy()
    policy.record(FAMILY, True, 0.5, True, -0.1, 0.2)
    policy.record(("other net", 1), True, 0.25, False, 0.1, 0.2)
    policy.record(FAMILY, False, 0.125, False, 0.3, 0.2)
    assert policy.totals() == {"joint": {"calls": 2, "proofs": 1, "seconds": 0.75},
                               "frozen": {"calls": 1, "proofs": 0, "seconds": 0.125}}


def test_a_search_with_the_cascade_reports_the_policys_calls_in_its_details():
    from test_search_costs import tiny_problem

    from mlrobust.search.run import SearchOptions, run_search
    from mlrobust.verify.cascade import Cascade

    cascade = Cascade()
    res = run_search(tiny_problem(cascade, time_limit=20.0), SearchOptions(method="uniform"))
    assert cascade.bounds.joint_policy is not None
    assert res.details["joint_policy"] == cascade.bounds.joint_policy.totals()
    assert set(res.details["joint_policy"]) == {"joint", "frozen"}
