"""The branch and bound's deadline, on a clock the tests drive: ``time.perf_counter`` stands still except that
every α/β back-substitution pass (or FSB scoring pass) advances it by one unit, so "how far past the deadline"
is counted in passes of work, not in seconds of a loaded machine.

A call given a limit ends Unknown at most one α/β call's fixed passes past it (no chunk of a round starts late,
FSB falls back to BaBSR, the MILP hand-off starts no solve); with an ample limit the verdict is the real clock's.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from ir_factories import random_box, random_cnn

import mlrobust.bounds.alpha_crown as alpha_crown
import mlrobust.verify.bab.branching as branching
from mlrobust.bounds import crown
from mlrobust.bounds.alpha_crown import AlphaOptions
from mlrobust.verify.bab import BabVerifier
from mlrobust.verify.bab.bounding import absorb, bound_domains, domains_from, layout_of
from mlrobust.verify.bab.branching import BabsrBranching, FsbBranching, WidestBranching
from mlrobust.verify.bab.milp_handoff import milp_handoff
from mlrobust.verify.bab.spec import objective_coeffs, topk_spec
from mlrobust.verify.bab.split import split_relus
from mlrobust.verify.bab.store import DomainStore
from mlrobust.verify.bab_bounds import AlphaEngine
from mlrobust.verify.spec import Box
from mlrobust.verify.verdict import Robust, Unknown

#: The most passes one α/β call can take once its deadline has passed: the memory probe's pass (before its first
#: chunk), CROWN's start, the warm start's and its seeded twin's, the step in flight, and the final float64
#: evaluation with its repeat. Before the deadline reached the chunks, each chunk not yet started still cost at
#: least three passes.
ALPHA_TAIL = 7


class PassClock:
    """A stand-in for ``time.perf_counter``: stands still, :meth:`tick` advances it by one unit of work."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.ticks = 0

    def __call__(self) -> float:
        return self.now

    def tick(self) -> None:
        self.now += 1.0
        self.ticks += 1


@pytest.fixture
def clock(monkeypatch) -> PassClock:
    """Every module reads ``time.perf_counter()`` through the ``time`` module: one patch reaches them all."""
    fake = PassClock()
    monkeypatch.setattr(time, "perf_counter", fake)
    real = alpha_crown._backward

    def one_pass(*args, **kwargs):
        out = real(*args, **kwargs)
        fake.tick()
        return out

    monkeypatch.setattr(alpha_crown, "_backward", one_pass)
    return fake


def _query():
    """A small CNN and box that the branch and bound proves in 4 rounds of chunked α/β bounding (not at the root;
    about 400 passes)."""
    net = random_cnn(36)
    lo, hi = random_box(net, 36, 0.6)
    box = Box(lo, hi)
    return net, box, int(np.argmax(net.logits(box.center[None])[0])), min(2, net.num_classes - 1)


def _verifier() -> BabVerifier:
    # a budget of one byte bounds every child in a chunk of its own: a round is many α/β calls
    return BabVerifier(root_attack=False, branching="babsr", batch_size=4, memory_budget_bytes=1, alpha_iterations=5,
                       attack_every=1000)


# limits that fall early in a round: before, the chunks still to come took the call 25-31 passes past them
@pytest.mark.parametrize("limit", [120.0, 160.0, 240.0, 300.0])
def test_a_bab_call_ends_unknown_within_one_alpha_call_of_its_deadline(clock, limit):
    net, box, target, k = _query()
    start = clock.now
    v = _verifier().verify(net, box, target, k, time_limit=limit)
    overshoot = clock.now - start - limit
    assert isinstance(v, Unknown) and "time limit" in v.reason
    assert overshoot <= ALPHA_TAIL
    stats = v.stats["bab"]
    assert v.seconds["bab"] == clock.now - start  # the verdict's own account of the time is the clock's
    # the deadline came in a round: children it left unbounded stay open with their parents' bounds
    assert stats["unbounded_children"] >= 1
    assert stats["final_bound"] > 0


def test_an_ample_deadline_leaves_the_verdict_and_the_search_unchanged(clock, monkeypatch):
    net, box, target, k = _query()
    ample = _verifier().verify(net, box, target, k, time_limit=1e9)
    assert clock.ticks > 300  # the work was counted (about 400 passes)
    monkeypatch.undo()  # the real clock
    real = _verifier().verify(net, box, target, k, time_limit=600.0)
    assert isinstance(ample, Robust) and isinstance(real, Robust)
    for key in ("domains", "rounds", "bound_chunks"):
        assert ample.stats["bab"][key] == real.stats["bab"][key]
    assert ample.stats["bab"]["rounds"] >= 2 and "unbounded_children" not in ample.stats["bab"]
    assert ample.bound == pytest.approx(real.bound, abs=1e-9)


def _open_domains(seed: int = 5):
    """An α/β engine on a small CNN and the bounded children of its root split on three levels (up to 8 domains
    with binding rows, coefficients and warm starts), with the spec."""
    net = random_cnn(seed)
    lo, hi = random_box(net, seed, 0.5)
    target = int(np.argmax(net.logits(((lo + hi) / 2)[None])[0]))
    engine = AlphaEngine(net, AlphaOptions(iterations=3), refresh=False, memory_budget=None)
    k = min(2, net.num_classes - 1)
    spec = topk_spec(net.num_classes, target, k)
    coeffs = objective_coeffs(spec)
    layout = layout_of(engine, coeffs.shape[0])
    b = crown(net, lo, hi)
    roots = domains_from([engine.root(lo, hi, b.lower, b.upper)], layout)
    mix = spec.objective_mix()
    doms, bounded = bound_domains(engine, roots, layout, coeffs, mix=mix)
    doms = absorb(doms, bounded, spec)
    layer, index = WidestBranching(layout).rank(doms, 3).first(3)
    kids = split_relus(doms, layout.relu_nodes, layer, index)
    kids, bounded = bound_domains(engine, kids, layout, coeffs, mix=mix)
    return engine, absorb(kids, bounded, spec), layout, coeffs, spec, (net, Box(lo, hi), target, k)


def test_fsb_scoring_past_its_deadline_keeps_babsrs_order(clock, monkeypatch):
    engine, doms, layout, coeffs, _, _ = _open_domains()
    real = branching.bounds_at
    passes = []

    def one_pass(*args, **kwargs):  # one back-substitution: one tick of the clock
        passes.append(clock.now)
        return real(*args, **kwargs)

    monkeypatch.setattr(branching, "bounds_at", one_pass)
    k = 2
    scored = np.flatnonzero((doms.binding >= 0) & (BabsrBranching(layout).rank(doms, k).available > 1))
    assert scored.size >= 4
    # 2k children per pass: one domain's candidates per pass, three passes before the deadline
    late = FsbBranching(layout, engine, coeffs, k, True, 2 * k, deadline=clock.now + 2.5)
    ranked = late.rank(doms, k)
    assert len(passes) == 3 and max(passes) < late.deadline  # none started past it
    assert late.fallbacks == scored.size - 3
    full = FsbBranching(layout, engine, coeffs, k, True, 2 * k).rank(doms, k)
    babsr = BabsrBranching(layout).rank(doms, k)
    for i in scored[:3]:  # scored before the deadline: FSB's choice
        assert np.array_equal(ranked.layer[i], full.layer[i]) and np.array_equal(ranked.index[i], full.index[i])
    for i in scored[3:]:  # after it: BaBSR's
        assert np.array_equal(ranked.layer[i], babsr.layer[i]) and np.array_equal(ranked.index[i], babsr.index[i])
    assert not np.array_equal(full.index[scored[3:]], babsr.index[scored[3:]])  # the fallback is visible


class RecordingMilp:
    """A MILP that must not be asked: records the calls."""

    def __init__(self) -> None:
        self.calls = 0

    def verify(self, *args, **kwargs):
        self.calls += 1
        raise AssertionError("a MILP was started past the deadline")


def test_the_milp_handoff_starts_no_solve_past_the_deadline(clock):
    engine, doms, layout, _, _, (net, box, target, k) = _open_domains()
    store = DomainStore(layout)
    store.push(doms)
    before = store.worst()
    milp = RecordingMilp()
    stats: dict = {}
    status, bound, point = milp_handoff(milp, net, box, engine, store, (target, k), clock.now, stats)  # type: ignore[arg-type]
    assert (status, point, milp.calls) == ("unknown", None, 0)
    assert len(store) == doms.size and bound == before == store.worst()
