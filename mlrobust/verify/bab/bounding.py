"""Bounding a batch of children and folding the result into their arrays (value, binding row, coefficients).

With the α/β engine and children that only gained ReLU splits (the hot path) the whole batch goes to
:func:`mlrobust.bounds.alpha_crown.alpha_bounds` as one :class:`DomainBatch` (in chunks that fit the engine's memory
budget: :meth:`~mlrobust.verify.bab_bounds.AlphaEngine.alpha`), warm-started from the parents' parameters, and the
results come back as arrays. Children whose box shrank (input bisection), or an engine that
refreshes intermediate bounds by CROWN (plain CROWN, ``refresh_intermediate``), go through the engine's
per-domain :meth:`bound` on :class:`~mlrobust.verify.bab_bounds.Domain` views, since those refreshes are one
back-substitution per domain anyway.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from mlrobust.bounds.alpha_crown import AlphaState, DomainBatch, RowMix
from mlrobust.ops.base import pool_index
from mlrobust.verify.bab.spec import OutputSpec, row_upper_bounds
from mlrobust.verify.bab.store import BoxTable, DomainLayout, Domains, concat
from mlrobust.verify.bab_bounds import (
    AlphaEngine,
    Domain,
    DomainBound,
    SplitCrown,
    down32,
    options_within,
    select_rows,
    up32,
)

Engine = SplitCrown | AlphaEngine


@dataclass
class Bounded:
    """What bounding a batch gives, one row per domain: lower bounds ``(B, S)`` of ``-rows`` (``-inf`` for rows not
    bounded), ``feasible`` ``(B,)``, the rows bounded (None: all), and per bounded row the coefficients on each ReLU
    output ``(B, S', *shape)`` and on the input ``(B, S', *input)`` (None: the engine gives none), and the rows'
    objectives ``(B, S', C)`` where a row mixture made them per domain, and how many α/β calls that took.
    ``unbounded``: the values (their parents', inherited) of the domains at the end of the batch that the deadline
    left unbounded (the α/β path starts no chunk that would not end before it; B counts only the others): they
    are still open, and the branch and bound ends Unknown."""

    lower: np.ndarray
    feasible: np.ndarray
    rows: np.ndarray | None
    relu_coeff: dict[str, np.ndarray]
    input_coeff: np.ndarray | None
    coeffs: np.ndarray | None
    chunks: int = 1  # α/β calls the batch took (see AlphaEngine.alpha: a memory budget splits it)
    unbounded: np.ndarray | None = None
    after_seconds: float = 0.0  # spent on the results after the α/β engine returned (warm starts, rows)


# --- α/β warm starts ----------------------------------------------------------------------------------------------
def warm_of(state: AlphaState | None) -> dict[str, torch.Tensor]:
    """An α/β state as ``"group.key" -> (D, S, ...)`` float32 tensors (on the state's device)."""
    if state is None:
        return {}
    return {f"{family}.{k}": v.detach().float() for family, k, v in state.items()}


def state_of(warm: dict[str, torch.Tensor], rows: np.ndarray | None = None) -> AlphaState | None:
    """The α/β state of :func:`warm_of`'s form (``rows``: those spec rows only); None when there is none."""
    if not warm:
        return None
    state = AlphaState()
    for key, v in warm.items():
        family, name = key.split(".", 1)
        state.put(family, name, v if rows is None else v[:, torch.as_tensor(rows, device=v.device)])
    return state


def _scatter_rows(old: dict[str, torch.Tensor], new: dict[str, torch.Tensor], rows: np.ndarray,
                  full: int) -> dict[str, torch.Tensor]:
    """Each domain's state over every row: ``old``'s with ``rows`` replaced by ``new``'s (NaN where ``old`` has no
    fitting value: CROWN's default next time, sound). ``old``'s tensors are written in place: they are the batch's
    own (splitting copied them from the parents'), and a copy of every row of every child took ~0.4 s for 64
    children on a loaded machine, after the bounding's deadline."""
    out = {}
    for key, v in new.items():
        base = old.get(key)
        if base is None or base.shape[0] != v.shape[0] or base.shape[1] != full or base.shape[2:] != v.shape[2:]:
            base = torch.full((v.shape[0], full, *v.shape[2:]), float("nan"), dtype=v.dtype, device=v.device)
        base[:, torch.as_tensor(rows, device=v.device)] = v.to(base.dtype)
        out[key] = base
    return out


# --- conversions to the per-domain engines' Domain -------------------------------------------------------------
def layout_of(engine: Engine, rows: int, pool_splits: bool = False) -> DomainLayout:
    """The array layout of ``engine``'s network's domains for a spec of ``rows`` rows; ``pool_splits``: with the
    MaxPool nodes whose windows may be split (the α/β engine's only: plain CROWN's relaxation does not read a
    domain's window restrictions, so a window split would not change its bound)."""
    net = engine.network
    pools = [n for n in net.nodes if n.op.activation and n.op.pooling] if (
        pool_splits and isinstance(engine, AlphaEngine)) else []
    windows = tuple(pool_index(n.op, net.shape_of(n.inputs[0])) for n in pools)
    return DomainLayout(tuple(n.name for n in engine.relu_nodes), tuple(n.inputs[0] for n in engine.relu_nodes),
                        {t: tuple(net.shape_of(t)) for t in engine.pre_tensors}, tuple(net.sample_shape), rows,
                        int(net.num_classes), input_coeffs=engine.gives_input_coeffs,
                        pool_nodes=tuple(n.name for n in pools), pool_tensors=tuple(n.inputs[0] for n in pools),
                        pool_windows=tuple(w.reshape(-1, w.shape[-1]) for w in windows),
                        pool_out_shapes=tuple(tuple(n.out_shape) for n in pools))


def domain_views(doms: Domains, layout: DomainLayout) -> list[Domain]:
    """One :class:`Domain` per row (sharing the arrays' memory), for the per-domain engines and the MILP."""
    out = []
    lower, upper = doms.lower, doms.upper  # gathered once from the box table
    for i in range(doms.size):
        changed = frozenset(t for t, c in zip(layout.relu_tensors, doms.changed[i]) if c)
        ru = doms.row_upper[i]
        out.append(Domain(lower[i], upper[i], {t: v[i] for t, v in doms.pre_lower.items()},
                          {t: v[i] for t, v in doms.pre_upper.items()}, {m: v[i] for m, v in doms.splits.items()},
                          int(doms.depth[i]), changed, bool(doms.box_changed[i]),
                          row_upper=None if np.isinf(ru).all() else ru.copy(),
                          warm=state_of({k: v[i:i + 1] for k, v in doms.warm.items()})))
    return out


def domains_from(views: list[Domain], layout: DomainLayout, like: Domains | None = None) -> Domains:
    """Arrays of :class:`Domain` objects (their bounds rounded outward to float32, their warm starts stacked).
    ``like``: the domains the views were made from; where the boxes are still theirs the box rows are reused, so
    bounding adds no rows to the box table."""
    out = layout.empty(len(views))
    if like is not None and like.size == len(views):
        # the per-domain engines do not read window restrictions (sound: a superset of the domain's points), but the
        # domains keep them
        out.pool_excluded = {m: v.copy() for m, v in like.pool_excluded.items()}
    if views:
        lower = np.stack([np.asarray(d.lower, dtype=np.float64) for d in views])
        upper = np.stack([np.asarray(d.upper, dtype=np.float64) for d in views])
        if (like is not None and like.size == len(views) and np.array_equal(like.lower, lower)
                and np.array_equal(like.upper, upper)):
            out.box, out.boxes = like.box.copy(), like.boxes
        else:
            out.boxes = BoxTable(layout.input_shape)
            out.set_boxes(lower, upper)
    for i, d in enumerate(views):
        for t in d.pre_lower:
            out.pre_lower[t][i] = down32(np.asarray(d.pre_lower[t], dtype=np.float64))
            out.pre_upper[t][i] = up32(np.asarray(d.pre_upper[t], dtype=np.float64))
        for m in d.splits:
            out.splits[m][i] = d.splits[m]
        if d.row_upper is not None:
            out.row_upper[i] = d.row_upper
        out.depth[i] = d.depth
        out.box_changed[i] = d.box_changed
        out.changed[i] = [t in d.changed for t in layout.relu_tensors]
    warms = [warm_of(d.warm if isinstance(d.warm, AlphaState) else None) for d in views]
    if any(warms):
        parts = []
        for i, w in enumerate(warms):
            part = layout.empty(1)
            part.warm = w
            parts.append(part)
        out.warm = concat(parts).warm
    return out


# --- bounding -----------------------------------------------------------------------------------------------------
def as_batch(doms: Domains) -> DomainBatch:
    """The domains for one α/β call (their float32 bounds widened to float64 exactly)."""
    excluded = {m: v for m, v in doms.pool_excluded.items() if v.any()}  # none: the relaxation's plain path
    return DomainBatch(doms.lower, doms.upper, {t: v.astype(np.float64) for t, v in doms.pre_lower.items()},
                       {t: v.astype(np.float64) for t, v in doms.pre_upper.items()}, dict(doms.splits), excluded)


def batched(engine: Engine, doms: Domains) -> bool:
    """Whether ``doms`` go to the α/β engine as one batch (no CROWN refresh needed)."""
    return (isinstance(engine, AlphaEngine) and not engine.refresh_intermediate
            and not bool(doms.box_changed.any()))


def bound_domains(engine: Engine, doms: Domains, layout: DomainLayout, coeffs: np.ndarray,
                  deadline: float | None = None, mix: RowMix | None = None,
                  rows: np.ndarray | None = None) -> tuple[Domains, Bounded]:
    """Lower bounds of ``coeffs`` (``-rows`` of the spec, ``(S, C)``) on every domain; the domains come back with
    refreshed bounds and their new warm starts. ``rows``: bound only those (the others' parent bounds stand).
    The values of domains the deadline left unbounded come back apart, in ``Bounded.unbounded``."""
    if batched(engine, doms):
        assert isinstance(engine, AlphaEngine)
        return _bound_alpha(engine, doms, coeffs, deadline, mix, rows)
    results = engine.bound(domain_views(doms, layout), coeffs, deadline, mix=mix, rows=rows)
    return domains_from([r.domain for r in results], layout, like=doms), collect(results, coeffs.shape[0])


def _bound_alpha(engine: AlphaEngine, doms: Domains, coeffs: np.ndarray, deadline: float | None,
                 mix: RowMix | None, rows: np.ndarray | None) -> tuple[Domains, Bounded]:
    full = coeffs.shape[0]
    coeffs, mix, rows = select_rows(coeffs, mix, rows)
    costs = engine.costs
    width = int(coeffs.shape[0]) if mix is None else mix.rows
    if deadline is not None and (time.perf_counter() + costs.prepare_per_child * doms.size
                                 + engine.least_call(width) > deadline):
        # not even one domain could be bounded: nothing is prepared (copying the batch's bounds and warm starts
        # would only take the call past its deadline)
        return doms.take(np.arange(0)), _none_bounded(doms, full, rows)
    t0 = time.perf_counter()
    warm = state_of(doms.warm, rows) if engine.keep_warm else None
    batch = as_batch(doms)
    costs.prepare_per_child = (time.perf_counter() - t0) / max(doms.size, 1)
    # past the deadline the optimisation takes no step: CROWN's bounds at the parents' parameters (sound)
    res = engine.alpha(batch, coeffs, options_within(engine.options, deadline), warm, mix)
    t_after = time.perf_counter()
    b = res.lower.shape[0]  # the first b domains were bounded before the deadline
    rest = None
    if b < doms.size:
        rest = doms.value[b:].copy()
        doms = doms.take(np.arange(b))
    if engine.keep_warm:
        new = warm_of(res.state)
        doms.warm = new if rows is None else _scatter_rows(doms.warm, new, rows, full)
    lower = res.lower
    if rows is not None:
        lower = np.full((b, full), -np.inf)
        lower[:, rows] = res.lower
    weights = res.state.mix.get("rows")
    mixed = None if mix is None or weights is None else mix.coefficients(weights.cpu().numpy())
    feasible = ~res.infeasible if res.infeasible is not None else np.ones(b, dtype=bool)
    return doms, Bounded(lower, feasible, rows, dict(res.relu_coeffs), None, mixed, int(res.stats.get("chunks", 1)),
                         rest, time.perf_counter() - t_after)


def _none_bounded(doms: Domains, full: int, rows: np.ndarray | None) -> Bounded:
    """The :class:`Bounded` of a batch of which no domain was bounded (all left open for want of time)."""
    return Bounded(np.zeros((0, full)), np.zeros(0, dtype=bool), rows, {}, None, None, 0, doms.value.copy())


def refresh_stale(engine: Engine, doms: Domains, layout: DomainLayout,
                  deadline: float | None = None) -> tuple[Domains, int, int]:
    """The domains with the intermediate bounds of the ``stale`` ones recomputed by CROWN under their splits
    (:meth:`SplitCrown.refresh`, one domain at a time, intersected with what they had), without the empty ones
    (their splits contradict the fresh bounds: they hold no input); how many were refreshed and how many empty.

    The α/β engine keeps a child's inherited intermediate bounds (only the split neurons clamped, β on the final
    bound): a split in an earlier layer then never tightens a later layer's bounds, and once those are what binds,
    the children's bounds equal their parent's at every depth. A domain whose bounding did not improve on its
    parent is refreshed once before it is split, so all its descendants start from the tighter bounds; the
    others skip the cost (a CROWN pass over every unstable neuron after the split layer). No refresh is started
    that would not end before ``deadline``, as long as the engine's last one took (``BoundCosts.refresh``); the
    domains not refreshed keep their inherited bounds (sound)."""
    stale = np.flatnonzero(doms.stale)
    if stale.size == 0 or not isinstance(engine, AlphaEngine) or engine.refresh_intermediate:
        return doms, 0, 0
    doms.stale = np.zeros(doms.size, dtype=bool)
    empty = []
    views = domain_views(doms.take(stale), layout)
    done = 0
    for i, view in zip(stale, views):
        if deadline is not None and time.perf_counter() + engine.costs.refresh > deadline:
            break
        t0 = time.perf_counter()
        fresh = engine.crown.refresh(replace(view, box_changed=True), deadline)
        engine.costs.refresh = time.perf_counter() - t0
        done += 1
        if fresh is None:
            empty.append(i)
            continue
        for t, v in fresh[0].pre_lower.items():
            doms.pre_lower[t][i] = np.maximum(doms.pre_lower[t][i], v)
            doms.pre_upper[t][i] = np.minimum(doms.pre_upper[t][i], fresh[0].pre_upper[t])
    if not empty:
        return doms, done, 0
    return doms.take(np.setdiff1d(np.arange(doms.size), empty)), done, len(empty)


def collect(results: list[DomainBound], full: int) -> Bounded:
    """The per-domain engines' results as arrays (infeasible domains get NaN coefficients)."""
    b = len(results)
    # an empty domain's bound is +inf on every row (the engine may give it only for the rows it bounded)
    lower = (np.stack([r.lower if r.feasible else np.full(full, np.inf) for r in results]) if results
             else np.zeros((0, full)))
    feasible = np.array([r.feasible for r in results], dtype=bool)
    rows = next((r.rows for r in results if r.feasible), None)
    done = [r for r in results if r.feasible]

    def stack(get) -> np.ndarray | None:
        like = next((get(r) for r in done if get(r) is not None), None)
        if like is None:
            return None
        return np.stack([get(r) if r.feasible and get(r) is not None else np.full(like.shape, np.nan)
                         for r in results])

    keys = {k for r in done for k in r.relu_coeff}
    relu = {k: stack(lambda r, k=k: r.relu_coeff.get(k)) for k in keys}
    coeffs = stack(lambda r: r.coeffs)
    return Bounded(lower, feasible, rows, {k: v for k, v in relu.items() if v is not None},
                   stack(lambda r: r.input_coeff) if b else None, coeffs)


def absorb(doms: Domains, bounded: Bounded, spec: OutputSpec) -> Domains:
    """The domains with their row bounds (never above the parent's), value, binding row and that row's
    coefficients (what branching needs), and whether they are ``stale`` (the bound did not improve on the
    parent's value); every bound is fresh afterwards."""
    # an empty domain (its splits contradict its bounds) holds no input: every row is vacuously bounded
    lower = np.where(bounded.feasible[:, None], bounded.lower, np.inf)
    ub = np.minimum(row_upper_bounds(lower, spec), doms.row_upper)
    doms.row_upper = ub
    inherited = doms.value  # the parent's value (children start as copies; +inf before a first bound)
    doms.value = spec.value(ub) if doms.size else np.zeros(0)
    doms.stale = np.isfinite(inherited) & (doms.value >= inherited)
    bind = spec.binding_rows(ub) if doms.size else np.zeros(0, dtype=np.int64)
    doms.binding = bind.astype(np.int64)
    at = bind
    if bounded.rows is not None:
        where = np.full(spec.rows.shape[0], -1)
        where[bounded.rows] = np.arange(bounded.rows.size)
        at = where[bind]  # -1: the binding row was not bounded (its clause was refuted before)
    has = at >= 0
    pick = np.arange(doms.size)[has], at[has]
    for coeff in (doms.relu_coeff, doms.pool_coeff):
        for m in coeff:
            c = bounded.relu_coeff.get(m)
            coeff[m] = np.full_like(coeff[m], np.nan)
            if c is not None:
                coeff[m][has] = c[pick]
    if doms.input_coeff is not None:
        doms.input_coeff = np.full_like(doms.input_coeff, np.nan)
        if bounded.input_coeff is not None:
            doms.input_coeff[has] = bounded.input_coeff[pick].reshape(-1, *doms.input_coeff.shape[1:])
    doms.objective = np.full_like(doms.objective, np.nan)
    if bounded.coeffs is not None:
        doms.objective[has] = bounded.coeffs[pick]
    doms.changed[:] = False
    doms.box_changed[:] = False
    return doms
