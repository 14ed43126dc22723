"""The branch and bound's α/β bounding under a memory budget: chunks give every child the bound one batch gives,
each chunk's tensors fit the budget, and bad budgets are refused."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))
from ir_factories import random_box, random_cnn

import mlrobust.bounds.alpha_crown as alpha_crown
import mlrobust.verify.bab_bounds as bab_bounds
from mlrobust.bounds import crown
from mlrobust.bounds.alpha_crown import PARAM_COPIES_F64, PARAM_COPIES_LOOP, AlphaOptions, alpha_memory
from mlrobust.errors import InputError
from mlrobust.verify.bab import BabOptions
from mlrobust.verify.bab.bounding import absorb, as_batch, bound_domains, domains_from, layout_of
from mlrobust.verify.bab.branching import FsbBranching, WidestBranching
from mlrobust.verify.bab.spec import objective_coeffs, open_rows, topk_spec
from mlrobust.verify.bab.split import split_relus
from mlrobust.verify.bab_bounds import AlphaEngine

FAST = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
#: With steps in float64 a chunk's bounds and parameters are one batch's up to rounding (measured: 2e-12 on the
#: bounds). With the default float32 steps the batched products round differently per batch shape and the steps
#: drift apart by up to ~1e-4 on bounds of ~1 (sound either way: every bound is evaluated in float64).
TOLERANCE = 1e-9


def _children(seed: int, budget: int | None):
    """An α/β engine with ``budget`` on a small CNN, and the children of its root split on three levels (8 or
    fewer children with warm starts), with the spec's coefficients and row mixture."""
    net = random_cnn(seed)
    lo, hi = random_box(net, seed, 0.5)
    target = int(np.argmax(net.logits(((lo + hi) / 2)[None])[0]))
    engine = AlphaEngine(net, AlphaOptions(iterations=5, loop_dtype="float64"), refresh=False, memory_budget=budget)
    spec = topk_spec(net.num_classes, target, min(2, net.num_classes - 1))
    coeffs = objective_coeffs(spec)
    b = crown(net, lo, hi)
    layout = layout_of(engine, coeffs.shape[0])
    roots = domains_from([engine.root(lo, hi, b.lower, b.upper)], layout)
    mix = spec.objective_mix()
    doms, bounded = bound_domains(engine, roots, layout, coeffs, mix=mix)
    doms = absorb(doms, bounded, spec)
    ranked = WidestBranching(layout).rank(doms, 3)
    depth = int(ranked.available.min())
    if depth == 0:
        return None
    layer, index = ranked.first(depth)
    kids = split_relus(doms, layout.relu_nodes, layer, index)
    return engine, kids, layout, coeffs, mix, spec


@given(seed=st.integers(0, 300), share=st.floats(0.0, 1.2))
@FAST
def test_chunked_bounding_gives_each_child_the_bound_of_one_batch(seed, share):
    whole = _children(seed, None)
    if whole is None:
        return
    engine, kids, layout, coeffs, mix, spec = whole
    rows = open_rows(spec, kids.row_upper)
    if rows is not None and rows.size == 0:  # every clause refuted already: the loop bounds nothing
        return
    per_child = alpha_memory(engine.network, as_batch(kids), engine.options, mix).per_child(
        coeffs.shape[0] if rows is None else rows.size)
    budget = max(int(share * per_child * kids.size), 1)  # from "one child per chunk" to "all in one"
    chunked = AlphaEngine(engine.network, engine.options, refresh=False, memory_budget=budget)
    one, b1 = bound_domains(engine, kids.take(np.arange(kids.size)), layout, coeffs, mix=mix, rows=rows)
    parts, b2 = bound_domains(chunked, kids.take(np.arange(kids.size)), layout, coeffs, mix=mix, rows=rows)
    assert b1.chunks == 1
    assert b2.chunks == -(-kids.size // max(1, min(budget // per_child, kids.size)))
    np.testing.assert_array_equal(b1.feasible, b2.feasible)
    ok = b1.feasible
    np.testing.assert_allclose(b2.lower[ok], b1.lower[ok], rtol=0, atol=TOLERANCE)
    for k, v in b1.relu_coeff.items():  # kept in float32 between chunks, as the domain store keeps them
        np.testing.assert_allclose(b2.relu_coeff[k][ok], v[ok].astype(np.float32), rtol=1e-6, atol=TOLERANCE)
    if b1.coeffs is not None:
        np.testing.assert_allclose(b2.coeffs[ok], b1.coeffs[ok], rtol=0, atol=TOLERANCE)
    # the children's warm starts for their own children: the same values; a family a chunk lacks (β of a node no
    # child of that chunk is split on) is NaN there (CROWN's value next time), where one batch has 0 (or NaN: a row
    # not bounded)
    assert set(parts.warm) == set(one.warm)
    for k, v in one.warm.items():
        w = parts.warm[k]
        missing = torch.isnan(w)
        assert torch.all(torch.isnan(v[missing]) | (v[missing] == 0))
        torch.testing.assert_close(w[~missing], v[~missing], rtol=1e-6, atol=TOLERANCE)


REAL_ALPHA_BOUNDS = bab_bounds.alpha_bounds
REAL_BACKWARD = alpha_crown._backward


@given(seed=st.integers(0, 300), share=st.floats(0.05, 0.9))
@FAST
def test_each_chunk_fits_the_budget(seed, share):
    """Counted on every chunk: the largest backward pass's saved tensors (what autograd holds for one step) plus the
    optimiser's copies of the parameters stay within the estimate the chunks were sized by, hence the budget."""
    whole = _children(seed, None)
    if whole is None:
        return
    engine, kids, layout, coeffs, mix, spec = whole
    est = alpha_memory(engine.network, as_batch(kids), engine.options, mix)
    per_child = est.per_child(coeffs.shape[0])
    assert engine.chunk_size(as_batch(kids), coeffs.shape[0], mix=mix) == kids.size  # no budget: one call
    budget = max(int(share * per_child * kids.size), per_child)
    chunked = AlphaEngine(engine.network, engine.options, refresh=False, memory_budget=budget)
    measured: list[tuple[int, int]] = []
    passes: list[int] = []
    inside: list[bool] = []  # only the bounding calls' passes are counted (not the estimate's own probe)

    def counting_backward(*args, **kw):
        if not inside:
            return REAL_BACKWARD(*args, **kw)
        storages: dict[int, int] = {}

        def pack(t):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = REAL_BACKWARD(*args, **kw)
        passes.append(sum(storages.values()))
        return out

    def counting(network, domains, c, **kw):
        passes.clear()
        inside.append(True)
        res = REAL_ALPHA_BOUNDS(network, domains, c, **kw)
        inside.clear()
        # the result's state is one float64 copy of the parameters; the optimiser holds PARAM_COPIES_* of them
        state = sum(v.numel() * v.element_size() for _, _, v in res.state.items())
        loop = torch.empty((), dtype=getattr(torch, engine.options.loop_dtype)).element_size()
        copies = state * (PARAM_COPIES_F64 + PARAM_COPIES_LOOP * loop / 8)
        measured.append((domains.size, int(max(passes, default=0) + copies)))
        return res

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bab_bounds, "alpha_bounds", counting)
        mp.setattr(alpha_crown, "_backward", counting_backward)
        _, bounded = bound_domains(chunked, kids, layout, coeffs, mix=mix)
    assert bounded.chunks == len(measured) > 0
    assert sum(n for n, _ in measured) == kids.size
    for n, used in measured:
        assert 0 < used <= n * per_child <= budget


def test_below_one_chunk_nothing_changes():
    whole = None
    seed = 0
    while whole is None:
        whole = _children(seed, None)
        seed += 1
    engine, kids, _, coeffs, mix, _ = whole
    big = AlphaEngine(engine.network, engine.options, refresh=False, memory_budget=1 << 40)
    assert big.chunk_size(as_batch(kids), coeffs.shape[0], mix=mix) == kids.size
    assert engine.chunk_size(as_batch(kids), coeffs.shape[0], mix=mix) == kids.size
    tiny = AlphaEngine(engine.network, engine.options, refresh=False, memory_budget=1)
    assert tiny.chunk_size(as_batch(kids), coeffs.shape[0], mix=mix) == 1  # never fewer than one child


def test_estimate_grows_with_rows_and_splits():
    net = random_cnn(3)
    lo, hi = random_box(net, 3, 0.5)
    b = crown(net, lo, hi)
    from mlrobust.bounds.alpha_crown import initial_domain

    dom = initial_domain(net, lo, hi, b)
    plain = alpha_memory(net, dom)
    assert plain.per_row > 0 and plain.per_domain > 0
    assert plain.per_child(4) - plain.per_child(2) == 2 * plain.per_row
    relu = next(n.name for n in net.nodes if n.op.splittable)
    dom.splits[relu].reshape(-1)[0] = 1
    assert alpha_memory(net, dom).per_row > plain.per_row  # β multipliers and their copies


@pytest.mark.parametrize("budget", [0, -5, 1.5, "1GB", True])
def test_bad_budget_is_an_input_error(budget):
    with pytest.raises(InputError, match="memory_budget_bytes"):
        BabOptions(memory_budget_bytes=budget)


def test_budget_defaults_and_none():
    assert BabOptions().memory_budget_bytes == 256 * 2 ** 20
    assert BabOptions(memory_budget_bytes=None).memory_budget_bytes is None


@given(seed=st.integers(0, 300))
@FAST
def test_fsb_scores_in_chunks_equal_one_batch(seed):
    """FSB's candidate children scored under a budget of one child per pass: the same scores and choices."""
    whole = _children(seed, None)
    if whole is None:
        return
    engine, kids, layout, coeffs, mix, spec = whole
    doms, bounded = bound_domains(engine, kids, layout, coeffs, mix=mix)
    doms = absorb(doms, bounded, spec)
    tiny = AlphaEngine(engine.network, engine.options, refresh=False, memory_budget=1)
    # every candidate ranked, so that the two orders can be compared as a whole
    one = FsbBranching(layout, engine, coeffs, candidates=3).rank(doms, 3)
    parts = FsbBranching(layout, tiny, coeffs, candidates=3).rank(doms, 3)
    np.testing.assert_allclose(parts.score, one.score, rtol=0, atol=1e-12)
    for row in range(one.layer.shape[0]):
        a = list(zip(one.layer[row], one.index[row]))
        b = list(zip(parts.layer[row], parts.index[row]))
        assert sorted(a) == sorted(b)
        for j, choice in enumerate(a):
            # the same choice at the same place, or one whose score ties (the chunked pass sums in another order)
            k = b.index(choice)
            assert k == j or np.isclose(one.score[row, j], one.score[row, k], rtol=0, atol=1e-9)
