"""The branch and bound's deadline, on a clock the tests drive: ``time.perf_counter`` stands still except that
every α/β back-substitution pass (or FSB scoring pass) advances it by one unit, so "how far past the deadline"
is counted in passes of work, not in seconds of a loaded machine.

A call given a limit ends Unknown at or before it: no stage is started that would not end before the deadline at
the cost the run measured for its kind (α/β chunks, steps and final evaluations, FSB passes, MILP solves); with an
ample limit the verdict is the real clock's.
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


def _verifier(**overrides) -> BabVerifier:
    # a budget of one byte bounds every child in a chunk of its own: a round is many α/β calls
    options = dict(root_attack=False, branching="babsr", batch_size=4, memory_budget_bytes=1, alpha_iterations=5,
                   attack_every=1000)
    return BabVerifier(**{**options, **overrides})


#: the engines and branchings a call's deadline is checked on: chunked α/β bounding under a tiny memory budget,
#: the plain α/β engine (every child of a round in one call), and FSB's scoring passes before each split
SETUPS = {"chunked": {}, "plain": {"memory_budget_bytes": None}, "fsb": {"branching": "fsb"}}
#: passes each setup takes to prove the query with an ample limit (see the last test)
PROOF_PASSES = {"chunked": 409, "plain": 121, "fsb": 325}


# limits that fall at different points of the run (before the deadline was planned, the chunks still to come took
# the call 25-31 passes past them, then up to 6: the α/β call in flight)
@pytest.mark.parametrize("setup", sorted(SETUPS))
@pytest.mark.parametrize("share", [0.15, 0.25, 0.35, 0.45])
def test_a_bab_call_ends_unknown_at_or_before_its_deadline(clock, share, setup):
    net, box, target, k = _query()
    limit = round(share * PROOF_PASSES[setup]) + 0.5  # half a pass: a pass that ends at the limit counts as in
    start = clock.now
    v = _verifier(**SETUPS[setup]).verify(net, box, target, k, time_limit=limit)
    passes_over = clock.now - start - limit
    assert isinstance(v, Unknown) and "time limit" in v.reason
    assert passes_over <= 0
    # the time was used, not given up early (a call is given up once its next stage would not fit: on this clock a
    # pass costs one unit whatever its size, while the plan scales the measured costs with the domains and rows)
    assert clock.now - start > 0.5 * limit
    stats = v.stats["bab"]
    assert v.seconds["bab"] == clock.now - start  # the verdict's own account of the time is the clock's
    assert stats["final_bound"] > 0


# (a limit shorter than the root's first bound, before any cost of the run is measured, can still be overrun by
# that bound's fixed passes: 3 passes here end 6 passes later)
@pytest.mark.parametrize("limit", [8.0, 15.0, 30.0])
def test_a_limit_too_short_for_a_round_ends_unknown_in_time(clock, limit):
    net, box, target, k = _query()
    start = clock.now
    v = _verifier().verify(net, box, target, k, time_limit=limit)
    assert isinstance(v, Unknown) and "time limit" in v.reason
    assert clock.now - start <= limit


@pytest.mark.parametrize("setup", sorted(SETUPS))
def test_an_ample_deadline_leaves_the_verdict_and_the_search_unchanged(clock, monkeypatch, setup):
    net, box, target, k = _query()
    ample = _verifier(**SETUPS[setup]).verify(net, box, target, k, time_limit=1e9)
    assert clock.ticks > 100  # the work was counted
    monkeypatch.undo()  # the real clock
    real = _verifier(**SETUPS[setup]).verify(net, box, target, k, time_limit=600.0)
    assert isinstance(ample, Robust) and isinstance(real, Robust)
    for key in ("domains", "rounds", "bound_chunks"):
        assert ample.stats["bab"][key] == real.stats["bab"][key]
    assert ample.stats["bab"]["rounds"] >= 2 and "unbounded_children" not in ample.stats["bab"]
    assert clock.ticks == PROOF_PASSES[setup]
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
    # 2k children per pass: one domain's candidates per pass; each pass takes one unit, so with 2.5 units left
    # two end before the deadline, and a third (started at +2, ending at +3) would not
    late = FsbBranching(layout, engine, coeffs, k, True, 2 * k, deadline=clock.now + 2.5)
    ranked = late.rank(doms, k)
    assert len(passes) == 2 and max(passes) + 1.0 <= late.deadline and clock.now <= late.deadline
    assert late.fallbacks == scored.size - 2
    full = FsbBranching(layout, engine, coeffs, k, True, 2 * k).rank(doms, k)
    babsr = BabsrBranching(layout).rank(doms, k)
    for i in scored[:2]:  # scored before the deadline: FSB's choice
        assert np.array_equal(ranked.layer[i], full.layer[i]) and np.array_equal(ranked.index[i], full.index[i])
    for i in scored[2:]:  # after it: BaBSR's
        assert np.array_equal(ranked.layer[i], babsr.layer[i]) and np.array_equal(ranked.index[i], babsr.index[i])
    assert not np.array_equal(full.index[scored[2:]], babsr.index[scored[2:]])  # the fallback is visible


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


class SlowMilp:
    """A MILP that proves every domain it is given, taking all of its time limit and ``overrun`` more on the clock
    (model building, a solver that stops late)."""

    def __init__(self, clock: PassClock, overrun: float) -> None:
        self.clock, self.overrun, self.limits = clock, overrun, []

    def verify(self, network, box, target, k, mode="decide", time_limit=None, **kwargs):
        self.limits.append(time_limit)
        self.clock.now += time_limit + self.overrun
        return Robust(tier="milp", seconds={"milp": time_limit + self.overrun}, bound=-1.0)


@pytest.mark.parametrize("overrun", [0.0, 0.5])
def test_the_milp_handoff_ends_its_solves_by_the_deadline(clock, overrun):
    engine, doms, layout, _, _, (net, box, target, k) = _open_domains()
    store = DomainStore(layout)
    store.push(doms)
    assert doms.size >= 4
    milp = SlowMilp(clock, overrun)
    deadline = clock.now + 2.0 * doms.size
    status, bound, _ = milp_handoff(milp, net, box, engine, store, (target, k), deadline, {})  # type: ignore[arg-type]
    assert clock.now <= deadline
    if overrun == 0.0:  # every solve fits: all proven, each given its share of what was left
        assert status == "proven" and len(milp.limits) == doms.size and bound == -1.0
        assert milp.limits[0] == pytest.approx(2.0)
    else:  # the first solve's overrun is kept back from the next ones; what does not fit stays open
        assert len(milp.limits) >= 2 and all(lim > 0 for lim in milp.limits)
        assert status == "unknown" or len(milp.limits) == doms.size
        if status == "unknown":
            assert len(store) == doms.size - len(milp.limits)


def _vnnlib_of(lower: np.ndarray, upper: np.ndarray, target: int, classes: int) -> str:
    """The VNN-LIB robustness property of a box: some other class scores at least ``target``."""
    lines = [*(f"(declare-const X_{i} Real)" for i in range(lower.size)),
             *(f"(declare-const Y_{j} Real)" for j in range(classes))]
    for i, (lo, hi) in enumerate(zip(lower.reshape(-1), upper.reshape(-1))):
        lines += [f"(assert (>= X_{i} {float(lo)!r}))", f"(assert (<= X_{i} {float(hi)!r}))"]
    others = " ".join(f"(and (>= Y_{c} Y_{target}))" for c in range(classes) if c != target)
    return "\n".join([*lines, f"(assert (or {others}))"]) + "\n"


@pytest.mark.parametrize("limit", [50.0, 70.0])
def test_check_vnnlib_with_branch_and_bound_ends_by_its_timeout(clock, monkeypatch, tmp_path, limit):
    import mlrobust.verify.vnnlib as vnnlib

    net, box, target, _ = _query()
    path = tmp_path / "robust.vnnlib"
    path.write_text(_vnnlib_of(box.lower, box.upper, target, net.num_classes))
    real_parse = vnnlib.parse_vnnlib

    def slow_parse(*args, **kwargs):  # reading the property takes time too: it counts toward the timeout
        clock.tick()
        return real_parse(*args, **kwargs)

    monkeypatch.setattr(vnnlib, "parse_vnnlib", slow_parse)
    start = clock.now
    res = vnnlib.check_vnnlib(net, path, timeout=limit, verifier="bab")
    assert res.status == "timeout" and res.tier == "bab"
    assert res.stats["bab"]["rounds"] >= 1
    assert clock.now - start <= limit and res.seconds == clock.now - start
