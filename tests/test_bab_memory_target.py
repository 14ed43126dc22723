"""The branch and bound under a process memory target: the plan's shares, the store's byte accounting and its cap,
the budget each round is handed, the heap trimmed around every round, Unknown (never a verdict) where memory runs
short, and the search's option reaching its push's branch and bound. What the process holds is a value the tests
give (``resident_bytes`` patched): nothing here depends on the machine's memory."""

from __future__ import annotations

import inspect
import math
import platform
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))
from ir_factories import random_box, random_cnn
from test_bab_store import TINY, _batch
from test_cli_errors import base, cli, one_error_line
from test_search_oracles import tiny_case
from test_verify_cli import files  # noqa: F401  (the module-scoped fixture: a tiny model, image and mask)

import mlrobust.verify.bab.loop as loop
import mlrobust.verify.bab.memory as memory
import mlrobust.verify.bab_bounds as bab_bounds
from mlrobust.api import maximize
from mlrobust.errors import InputError
from mlrobust.memory import DEFAULT_MEMORY_LIMIT_MIB, MIB, memory_target_bytes, resident_bytes, trim_heap
from mlrobust.search.run import SearchOptions
from mlrobust.search.tiers import push_tiers
from mlrobust.verify.bab import BabOptions, BabVerifier
from mlrobust.verify.bab.memory import (
    DEFAULT_MEMORY_TARGET,
    MIN_AVAILABLE_BYTES,
    MIN_ROUND_BYTES,
    memory_plan,
)
from mlrobust.verify.bab.store import DomainStore
from mlrobust.verify.cascade import Cascade
from mlrobust.verify.spec import Box
from mlrobust.verify.verdict import Robust, Unknown

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- the plan -----------------------------------------------------------------------------------------------------
def test_the_plan_shares_out_what_the_process_does_not_hold():
    plan = memory_plan(1000 * MIB, 400 * MIB, 256 * MIB)
    assert plan.available == 600 * MIB and plan.enough
    assert plan.store_bytes == 150 * MIB  # a quarter of the room
    assert plan.round_bytes(None) == 256 * MIB  # half the room is 300 MiB: the fixed budget caps it
    assert plan.round_bytes(800 * MIB) == 100 * MIB  # re-derived from what the process holds at the round
    assert plan.round_bytes(999 * MIB) == MIN_ROUND_BYTES  # never below the floor (a chunk is a domain anyway)
    assert memory_plan(1000 * MIB, 400 * MIB, None).round_bytes(None) == 300 * MIB  # no fixed budget: the share


def test_a_process_over_its_target_or_unreadable_gets_the_right_plan():
    assert not memory_plan(1000 * MIB, 1000 * MIB - MIN_AVAILABLE_BYTES + 1, None).enough
    assert memory_plan(1000 * MIB, 1000 * MIB - MIN_AVAILABLE_BYTES, None).enough
    over = memory_plan(1000 * MIB, 2000 * MIB, None)
    assert over.available == 0 and over.store_bytes == 0 and not over.enough
    unread = memory_plan(1000 * MIB, None, 256 * MIB)  # no /proc: the target counts as all free
    assert unread.resident == 0 and unread.available == 1000 * MIB


@FAST
@given(target=st.integers(1, 2 ** 34), resident=st.integers(0, 2 ** 34), now=st.integers(0, 2 ** 34),
       cap=st.one_of(st.none(), st.integers(1, 2 ** 30)))
def test_the_shares_never_exceed_the_room(target, resident, now, cap):
    plan = memory_plan(target, resident, cap)
    assert plan.available == max(target - resident, 0)
    assert plan.store_bytes <= plan.available * memory.STORE_SHARE
    budget = plan.round_bytes(now)
    assert budget >= MIN_ROUND_BYTES
    if budget > MIN_ROUND_BYTES:
        assert budget <= memory.ROUND_SHARE * (target - now) and (cap is None or budget <= cap)


@pytest.mark.parametrize("bad", [0, -1.0, math.nan, math.inf, True, "1024"])
def test_bad_memory_limits_are_input_errors(bad):
    with pytest.raises(InputError, match="--memory-limit must be a finite number of MiB > 0"):
        memory_target_bytes(bad, "--memory-limit")


def test_memory_limits_in_mib_and_the_defaults_agree():
    assert memory_target_bytes(None) is None
    assert memory_target_bytes(1024) == 2 ** 30 and memory_target_bytes(0.5) == 2 ** 19
    assert DEFAULT_MEMORY_TARGET == memory_target_bytes(DEFAULT_MEMORY_LIMIT_MIB)
    assert SearchOptions().memory_target == DEFAULT_MEMORY_TARGET
    from mlrobust.cli.verify_cmd import verify

    assert inspect.signature(maximize).parameters["memory_limit_mib"].default == DEFAULT_MEMORY_LIMIT_MIB
    assert inspect.signature(verify).parameters["memory_limit"].default.default == DEFAULT_MEMORY_LIMIT_MIB
    with pytest.raises(InputError, match="memory_target_bytes"):
        BabOptions(memory_target_bytes=0)
    with pytest.raises(InputError, match="memory_target"):
        SearchOptions(memory_target=-5)


def test_the_process_memory_readings_work_here():
    held = resident_bytes()
    if Path("/proc/self/statm").is_file():
        assert held is not None and held > 10 * MIB  # an interpreter with numpy and torch loaded
    else:
        assert held is None  # no /proc: the plan takes the target as free
    assert trim_heap() is (platform.libc_ver()[0] == "glibc")  # malloc_trim is glibc's alone


# --- the store's bytes --------------------------------------------------------------------------------------------
def _buffer_bytes(store: DomainStore) -> int:
    """Every buffer of the store counted field by field (the reference for ``DomainStore.nbytes``)."""
    buf = store._buf
    total = sum(a.nbytes for a in (buf.box, buf.row_upper, buf.value, buf.depth, buf.binding, buf.objective,
                                   buf.changed, buf.box_changed, buf.stale))
    total += 0 if buf.input_coeff is None else buf.input_coeff.nbytes
    total += sum(v.nbytes for d in (buf.pre_lower, buf.pre_upper, buf.splits, buf.relu_coeff) for v in d.values())
    total += sum(v.element_size() * v.nelement() for v in buf.warm.values())
    return int(total + buf.boxes.nbytes)


def test_the_store_counts_its_buffers_and_predicts_its_growth():
    store = DomainStore(TINY, capacity=4)
    assert store.nbytes == _buffer_bytes(store)
    first = _batch([1.0, 2.0, 3.0], [0, 1, 2], warm=True)
    predicted = store.nbytes_after_push(first)
    store.push(first)  # fits the 4 slots, and adds a warm column of 2 x 5 float32 to each
    assert store.capacity == 4 and store.nbytes == _buffer_bytes(store)
    assert store.nbytes <= predicted
    warm_slot = 2 * 5 * 4
    assert store.nbytes - DomainStore(TINY, capacity=4).nbytes >= 4 * warm_slot
    more = _batch([4.0, 5.0, 6.0], [3, 4, 5], warm=True)
    predicted = store.nbytes_after_push(more)  # 3 into 1 free slot: the buffers double to 8
    store.push(more)
    assert store.capacity == 8 and store.nbytes == _buffer_bytes(store)
    assert store.nbytes <= predicted <= store.nbytes + 8 * more.nbytes_per_domain()


@FAST
@given(sizes=st.lists(st.integers(1, 9), min_size=1, max_size=6), warm=st.booleans())
def test_the_prediction_never_falls_short_of_the_store(sizes, warm):
    store = DomainStore(TINY, capacity=2)
    next_id = 0
    for n in sizes:
        doms = _batch([float(i) for i in range(n)], list(range(next_id, next_id + n)), warm)
        next_id += n
        predicted = store.nbytes_after_push(doms)
        store.push(doms)
        assert store.nbytes == _buffer_bytes(store) <= predicted
        store.prune(1.5)  # some close: their slots are free again


# --- a call under a target ----------------------------------------------------------------------------------------
def _query():
    """A small CNN and box the branch and bound proves in 8 rounds (not at the root)."""
    net = random_cnn(36)
    lo, hi = random_box(net, 36, 0.6)
    box = Box(lo, hi)
    return net, box, int(np.argmax(net.logits(box.center[None])[0])), min(2, net.num_classes - 1)


def _verifier(**options) -> BabVerifier:
    return BabVerifier(root_attack=False, branching="babsr", batch_size=4, alpha_iterations=5, attack_every=1000,
                       **options)


@pytest.fixture
def held(monkeypatch):
    """The process "holds" ``held.bytes`` (a value the test sets); ``held.trims`` counts the heap trims."""

    class Held:
        bytes = 300 * MIB
        trims = 0

    state = Held()

    def trim() -> bool:
        state.trims += 1
        return True

    monkeypatch.setattr(loop, "resident_bytes", lambda: state.bytes)
    monkeypatch.setattr(loop, "trim_heap", trim)
    return state


def test_without_a_target_nothing_changes(held):
    v = _verifier().verify(*_query(), time_limit=600.0)
    assert isinstance(v, Robust) and "memory" not in v.stats["bab"] and held.trims == 0


def test_an_ample_target_gives_the_same_proof_and_trims_around_every_round(held):
    net, box, target, k = _query()
    plain = _verifier().verify(net, box, target, k, time_limit=600.0)
    planned = _verifier(memory_target_bytes=2 ** 30).verify(net, box, target, k, time_limit=600.0)
    assert isinstance(planned, Robust) and isinstance(plain, Robust)
    for key in ("domains", "rounds", "bound_chunks"):
        assert planned.stats["bab"][key] == plain.stats["bab"][key]
    assert planned.bound == pytest.approx(plain.bound, abs=1e-9)
    rounds = planned.stats["bab"]["rounds"]
    assert rounds >= 2 and held.trims == rounds + 2  # at the start, before each round's bounding, at the end
    assert planned.stats["bab"]["memory"] == {"target": 1024.0, "resident": 300.0, "store_cap": 181.0,
                                              "round_budget": 256.0}


def test_each_round_is_handed_the_budget_of_what_the_process_holds_then(held, monkeypatch):
    seen: list[int | None] = []
    real = bab_bounds.AlphaEngine.alpha

    def alpha(self, *args, **kwargs):
        seen.append(self.memory_budget)
        held.bytes += 10 * MIB  # the process grows by 10 MiB with every α/β call
        return real(self, *args, **kwargs)

    monkeypatch.setattr(bab_bounds.AlphaEngine, "alpha", alpha)
    target = 400 * MIB
    v = _verifier(memory_target_bytes=target).verify(*_query(), time_limit=600.0)
    assert isinstance(v, Robust)
    # the root's calls get the call's start plan (100 MiB free: half of it); every round re-reads the process
    assert seen[0] == 50 * MIB
    rounds = v.stats["bab"]["rounds"]
    round_budgets = [b for b in seen[-rounds:]]
    held_at = [300 * MIB + 10 * MIB * i for i in range(len(seen) - rounds, len(seen))]
    assert round_budgets == [max(int(0.5 * (target - h)), MIN_ROUND_BYTES) for h in held_at]
    assert v.stats["bab"]["memory"]["round_budget"] == round_budgets[-1] / MIB


def test_a_process_with_no_room_left_gets_unknown_before_any_work(held, monkeypatch):
    held.bytes = 2 ** 30 - MIN_AVAILABLE_BYTES + 1

    def refuse(*args, **kwargs):
        raise AssertionError("no α/β call may start without room")

    monkeypatch.setattr(bab_bounds.AlphaEngine, "alpha", refuse)
    v = _verifier(memory_target_bytes=2 ** 30).verify(*_query(), time_limit=600.0)
    assert isinstance(v, Unknown) and v.reason.startswith("memory: the process holds 960 MiB of its 1024 MiB")
    assert v.stats["bab"]["domains"] == 0


def test_a_store_over_its_share_ends_the_call_unknown(held, monkeypatch):
    # a share of a millionth of the room: ~180 bytes, less than the first round's children take
    monkeypatch.setattr(memory, "STORE_SHARE", 1e-6)
    v = _verifier(memory_target_bytes=2 ** 30).verify(*_query(), time_limit=600.0)
    assert isinstance(v, Unknown)  # the same query is proven without the cap: cut short, nothing is claimed
    assert "memory: the open domains' store would hold" in v.reason and "over its 0.0 MiB share" in v.reason
    assert v.stats["bab"]["rounds"] == 1 and v.stats["bab"]["final_bound"] > 0
    assert held.trims == 3  # the start, the one round, the end


# --- the search hands its target to the push's branch and bound ---------------------------------------------------
def test_the_push_tiers_plan_their_branch_and_bound_under_the_target():
    cascade = Cascade()
    tiers = push_tiers(cascade, 30.0, memory_target=123 * MIB)
    bab = tiers[1].verifier.bab
    assert bab is not cascade.bab and bab.options.memory_target_bytes == 123 * MIB
    assert {**bab.options.__dict__, "memory_target_bytes": None} == cascade.bab.options.__dict__
    assert cascade.bab.options.memory_target_bytes is None  # the caller's verifier is left as it was
    assert push_tiers(cascade, 30.0)[1].verifier.bab is cascade.bab


def test_the_search_passes_its_target_to_the_push(monkeypatch):
    import mlrobust.search.run as run

    seen = {}
    real = run.push_tiers

    def spy(*args, **kwargs):
        seen["target"] = kwargs.get("memory_target")
        return real(*args, **kwargs)

    monkeypatch.setattr(run, "push_tiers", spy)
    net, image, target, mask = tiny_case(6, hidden=3, classes=3)
    maximize(net, image, target, object_mask=mask, time_limit=20.0, workers=1, memory_limit_mib=321.0)
    assert seen["target"] == 321 * MIB
    with pytest.raises(InputError, match="memory_limit_mib must be a finite number of MiB > 0, not 0"):
        maximize(net, image, target, object_mask=mask, time_limit=20.0, workers=1, memory_limit_mib=0)


@pytest.mark.parametrize("value,message", [
    ("0", "--memory-limit must be a finite number of MiB > 0, not 0.0"),
    ("-5", "--memory-limit must be a finite number of MiB > 0, not -5.0"),
    ("nan", "--memory-limit must be a finite number of MiB > 0, not nan"),
    ("inf", "--memory-limit must be a finite number of MiB > 0, not inf"),
    ("lots", "'--memory-limit'"),
])
def test_a_bad_memory_limit_is_one_error_line_before_the_work(capsys, files, monkeypatch, value, message):  # noqa: F811
    import mlrobust.api as api

    def refuse(*args, **kwargs):
        raise AssertionError("the search started with a bad --memory-limit")

    monkeypatch.setattr(api, "maximize", refuse)
    code, _, err = cli(capsys, *base(files, "--memory-limit", value))
    assert code == 2 and message in one_error_line(err)
