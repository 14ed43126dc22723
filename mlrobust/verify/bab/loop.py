"""The branch-and-bound loop: root bound, then rounds of pop → split → bound → prune until a verdict.

The worst open domains (largest :meth:`OutputSpec.value`) are popped from the :class:`DomainStore` in batches of
``batch_size``; each is split by the branching strategy (:mod:`.branching`) on its best ReLU or MaxPool window
(``BabOptions.pool_splits``) — several at once (2–3 levels, 4–8 children) while fewer parents than ``batch_size``
are open — or, for inputs of at most
``input_split_max_dim`` numbers, bisected; the children are bounded as one batch (:mod:`.bounding`), proven ones
are pruned and the rest pushed back. The input corner that minimises each child's linear bound is checked on the
network, and every few rounds a PGD run starts from the worst domains' corners; a point counts only once
:mod:`mlrobust.verify.counterexample` confirms it. The run stops on an empty store (Robust), a confirmed
counterexample (NotRobust), or the time or domain limit (Unknown, with the worst remaining bound in ``stats``);
with a MILP, the last few open domains are handed to it (:mod:`.milp_handoff`).
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import torch

from mlrobust.bounds.alpha_crown import AlphaOptions, tighten_intermediate
from mlrobust.bounds.crown import crown
from mlrobust.bounds.result import Bounds
from mlrobust.bounds.tier import Tightened, tighten
from mlrobust.errors import InputError
from mlrobust.ir.graph import Network
from mlrobust.memory import MIB, resident_bytes, trim_heap
from mlrobust.verify.attack import pgd
from mlrobust.verify.bab.bounding import absorb, bound_domains, collect, domains_from, layout_of, refresh_stale
from mlrobust.verify.bab.branching import Branching, FsbBranching, InputBisection, make_branching
from mlrobust.verify.bab.memory import MemoryPlan, memory_plan, over_target_reason, store_over_reason
from mlrobust.verify.bab.milp_handoff import milp_handoff
from mlrobust.verify.bab.options import BabOptions, BabResult
from mlrobust.verify.bab.spec import (
    OutputSpec,
    objective_coeffs,
    open_rows,
    row_upper_bounds,
    topk_spec,
)
from mlrobust.verify.bab.split import split_choices, split_inputs
from mlrobust.verify.bab.store import DomainLayout, Domains, DomainStore, concat
from mlrobust.verify.bab_bounds import AlphaEngine, SplitCrown
from mlrobust.verify.base import Mode
from mlrobust.verify.counterexample import CheckedPoint, OutputProperty, TopKProperty, check_points, check_query
from mlrobust.verify.milp_verifier import MilpVerifier
from mlrobust.verify.spec import Box
from mlrobust.verify.verdict import ROBUST_TOLERANCE, NotRobust, Robust, Unknown, Verdict

#: Largest cost (rows × numbers on the back-substitution path, see :func:`_intermediate_cost`) of re-bounding the
#: last refined layer at the root: a fully connected 256x2 net on MNIST costs ~5e5 (0.6 s, its worst margin bound
#: 2.63 -> 2.46); the reference CNN ~2e7 (10 s for one unstable neuron fewer), which the share would only cut short.
ROOT_INTERMEDIATE_MAX_COST = 2_000_000


class BabVerifier:
    """Complete (in the limit) and sound top-k verifier by branch and bound over CROWN-bounded sub-domains."""

    name = "bab"

    def __init__(self, options: BabOptions | None = None, *, milp: MilpVerifier | None = None,
                 **overrides: object):
        base = options or BabOptions()
        self.options = BabOptions(**{**base.__dict__, **overrides}) if overrides else base
        #: exact verifier for the last open domains (top-k only): see ``BabOptions.milp_share``
        self.milp = milp

    # --- the Verifier interface ---------------------------------------------------------------------------------
    def verify(self, network: Network, box: Box, target: int, k: int = 2, mode: Mode = "decide",
               time_limit: float | None = None, *, tightened: Tightened | None = None,
               attack: bool | None = None) -> Verdict:
        """Decide top-k membership of ``target`` on ``box``.

        ``tightened`` (bounds of this box with the target's margin bounds, e.g. from the cascade's bound tier) is
        the root's start; without it the root starts from the tier named by ``BabOptions.root_tier`` run here on
        at most ``root_tier_share`` of the time limit. ``attack=False`` skips the root PGD run (the cascade has run
        one already).
        """
        check_query(network, box, target, k)
        start = time.perf_counter()
        opts = self.options
        if tightened is None or tightened.target != target or tightened.margin_upper is None:
            limit = opts.time_limit if time_limit is None else time_limit
            budget = None if limit is None else opts.root_tier_share * limit
            tightened = tighten(network, box.lower, box.upper, opts.root_tier, target=int(target), k=int(k),
                                time_budget=budget)
            if tightened.kth_upper is not None and tightened.kth_upper < -ROBUST_TOLERANCE:
                seconds = {"bab": time.perf_counter() - start}
                bound = float(tightened.kth_upper)
                stats = {"bab": {"root_tier": opts.root_tier, "root_bound": bound, "final_bound": bound,
                                 "domains": 0}}
                return Robust(tier="bab", seconds=seconds, stats=stats, bound=bound)
        left = None if time_limit is None else max(time_limit - (time.perf_counter() - start), 0.0)
        result = self.run(network, box, None, left, root_bounds=tightened.bounds, attack=attack,
                          topk=(int(target), int(k)), margin_upper=tightened.margin_upper)
        result.seconds = time.perf_counter() - start
        seconds = {"bab": result.seconds}
        stats = {"bab": result.stats}
        if result.status == "violated" and result.counterexample is not None:
            cex = result.counterexample
            return NotRobust(tier="bab", seconds=seconds, stats=stats, weak_points=result.weak_points,
                             counterexample=cex.x, margin=cex.margin)
        if result.status == "proven":
            return Robust(tier="bab", seconds=seconds, stats=stats, weak_points=result.weak_points,
                          bound=result.bound)
        return Unknown(tier="bab", seconds=seconds, stats=stats, weak_points=result.weak_points,
                       reason=result.reason)

    # --- the search ---------------------------------------------------------------------------------------------
    def run(self, network: Network, box: Box, spec: OutputSpec | None, time_limit: float | None = None, *,
            root_bounds: Bounds | None = None, attack: bool | None = None,
            topk: tuple[int, int] | None = None, margin_upper: np.ndarray | None = None) -> BabResult:
        """Branch and bound on ``spec`` over ``box`` (or, with ``topk=(target, k)``, the top-k spec built after the
        root bound so that classes the root already proves are left out of the clauses; ``margin_upper`` are
        known upper bounds of ``y_c - y_t`` on the box that help that pruning). ``root_bounds``: bounds of every
        tensor over the box (CROWN's), else computed here.

        The time limit is planned, not only checked: no stage is started that would not end before the deadline
        at what its kind has cost so far on this run (the engine's :class:`~mlrobust.verify.bab_bounds.BoundCosts`).
        An α/β call takes a step only when the step, the pass after it and the final float64 evaluation fit (a
        proof is never dropped for time: the best parameters so far are always evaluated); a round's children are
        bounded in chunks, none started unless its fixed passes and the merge fit, with the round's bookkeeping
        (the last round's per child) kept back; the run ends Unknown as soon as children are left unbounded; a
        round is not started without the last splitting's time per child and the smallest bounding call; FSB, CROWN
        refreshes, the attacks' steps and the MILP hand-off's solves are started only when they fit at their last
        cost. What can still overrun is what was never measured on the run (the root's first bound, the first
        round's bookkeeping, the store's first large growth) and a stage that takes longer than its kind did before
        (a loaded machine), plus CROWN over the box when ``root_bounds`` is not given. ``stats``: ``unbounded_children`` (children left
        unbounded by the deadline) and ``fsb_fallbacks`` (domains split in BaBSR's order for want of time).

        With ``BabOptions.memory_target_bytes`` the call first returns the heap's free pages to the system and plans
        its memory from what the process then holds (:mod:`mlrobust.verify.bab.memory`: each round's α/β budget, the
        store's cap; Unknown where there is no room), trims the heap again before every round's bounding, and once
        more when it returns, its arrays gone (``stats["memory"]``: the plan in MiB)."""
        target = self.options.memory_target_bytes
        if target is None:
            return self._run(network, box, spec, time_limit, root_bounds=root_bounds, attack=attack, topk=topk,
                             margin_upper=margin_upper, plan=None)
        trim_heap()
        plan = memory_plan(target, resident_bytes(), self.options.memory_budget_bytes)
        try:
            return self._run(network, box, spec, time_limit, root_bounds=root_bounds, attack=attack, topk=topk,
                             margin_upper=margin_upper, plan=plan)
        finally:
            trim_heap()  # what the call allocated is free now that its frame is gone

    def _run(self, network: Network, box: Box, spec: OutputSpec | None, time_limit: float | None, *,
             root_bounds: Bounds | None, attack: bool | None, topk: tuple[int, int] | None,
             margin_upper: np.ndarray | None, plan: MemoryPlan | None) -> BabResult:
        """:meth:`run` under ``plan`` (None: no memory target)."""
        opts = self.options
        start = time.perf_counter()
        limit = opts.time_limit if time_limit is None else time_limit
        deadline = None if limit is None else start + limit

        def out_of_time() -> bool:
            return deadline is not None and time.perf_counter() >= deadline

        if spec is None and topk is None:
            raise InputError("give a spec or topk=(target, k)")
        prop: OutputProperty = spec.prop if spec is not None else TopKProperty(*topk)  # type: ignore[misc]
        stats: dict = {"domains": 0, "max_depth": 0, "infeasible": 0, "attacks": 0, "rounds": 0,
                       "bound_seconds": 0.0, "branch_seconds": 0.0, "attack_seconds": 0.0,
                       "rows_bounded": 0}
        best: list[CheckedPoint] = []
        branching: Branching | None = None  # made once the root is bounded

        def finish(status: str, bound: float, reason: str = "", cex: CheckedPoint | None = None) -> BabResult:
            secs = time.perf_counter() - start
            nodes = max(stats["domains"], 1)
            if isinstance(branching, FsbBranching):
                stats["fsb_fallbacks"] = branching.fallbacks
            stats.update(seconds=secs, final_bound=bound, seconds_per_domain=stats["bound_seconds"] / nodes,
                         domains_per_second=stats["domains"] / secs if secs > 0 else 0.0)
            wps = sorted({id(p): p for p in best}.values(), key=lambda p: -p.margin)[:3]
            return BabResult(status, bound, cex, [p.weak_point() for p in wps], secs, reason, stats)

        if plan is not None:
            stats["memory"] = {"target": plan.target / MIB, "resident": plan.resident / MIB,
                               "store_cap": plan.store_bytes / MIB, "round_budget": plan.round_bytes(None) / MIB}
            if not plan.enough:
                return finish("unknown", float("inf"), over_target_reason(plan))

        # 1. root attack
        do_attack = opts.root_attack if attack is None else attack
        if do_attack:
            t0 = time.perf_counter()
            res = pgd(network, box, prop, restarts=opts.attack_restarts, steps=opts.attack_steps,
                      time_limit=None if deadline is None else max(deadline - t0, 0.0))
            stats["attack_seconds"] += time.perf_counter() - t0
            stats["attacks"] += 1
            best.extend(res.points[:1])
            if res.counterexample is not None:
                return finish("violated", float("inf"), "attack", res.counterexample)
        # 2. root bounds
        t0 = time.perf_counter()
        input_split = int(np.prod(network.sample_shape)) <= opts.input_split_max_dim
        engine = self._engine(network, input_split, None if plan is None else plan.round_bytes(None))
        rb = root_bounds if root_bounds is not None else crown(network, box.lower, box.upper)
        if (opts.root_intermediate > 0 and isinstance(engine, AlphaEngine) and limit is not None
                and _intermediate_cost(network, rb) <= ROOT_INTERMEDIATE_MAX_COST):
            # the last refined pre-activation layer re-bounded by α-CROWN once: every domain inherits it
            share = min(opts.root_intermediate * limit, _time_left(deadline))
            rb, rows = tighten_intermediate(network, rb, replace(engine.options, iterations=50, time_limit=share))
            stats["root_intermediate_rows"] = rows
        root = engine.root(box.lower, box.upper, rb.lower, rb.upper)
        if opts.compact_params and isinstance(engine, AlphaEngine) and not input_split:
            engine.fix_support(root)
        if spec is None:
            target, k = topk  # type: ignore[misc]
            singles = topk_spec(network.num_classes, target, k, pair_weights=())  # every margin, no combinations
            first = engine.bound([root], objective_coeffs(singles), deadline)[0]
            ub = row_upper_bounds(first.lower, singles)
            if out_of_time() or _not_bounded(first.lower):
                at_root = float(singles.value(ub)[0])
                return finish("unknown", at_root, f"time limit at the root (worst bound {at_root:.4g})")
            if first.feasible:
                # the refreshed root: the second bound below need not refresh it again (its warm start is for
                # other rows, so it is dropped)
                root = replace(first.domain, warm=None)
            others = np.delete(np.arange(network.num_classes), target)
            known = np.full(network.num_classes, np.inf)
            known[others] = ub
            if margin_upper is not None:
                known = np.minimum(known, np.asarray(margin_upper, dtype=np.float64))
            spec = topk_spec(network.num_classes, target, k, known, opts.pair_weights,
                             mixed=opts.mixed_rows and isinstance(engine, AlphaEngine))
        coeffs = objective_coeffs(spec)
        mix = spec.objective_mix()
        rootb = engine.bound([root], coeffs, deadline, mix=mix)[0]
        stats["bound_seconds"] += time.perf_counter() - t0
        if _not_bounded(rootb.lower):  # the deadline left no time to bound the root on the spec's rows
            at_root = float(spec.value(row_upper_bounds(rootb.lower, spec))[0])
            return finish("unknown", at_root, f"time limit at the root (worst bound {at_root:.4g})")
        stats["domains"] += 1
        stats["mode"] = "input" if input_split else "relu"
        stats["engine"] = engine.name
        stats["rows"] = int(spec.rows.shape[0])
        layout = layout_of(engine, spec.rows.shape[0], pool_splits=opts.pool_splits and not input_split)
        root_doms = absorb(domains_from([rootb.domain], layout), collect([rootb], coeffs.shape[0]), spec)
        root_value = float(root_doms.value[0])
        stats["root_bound"] = root_value
        if root_value < -ROBUST_TOLERANCE:
            return finish("proven", max(root_value, spec.floor))
        store = DomainStore(layout)
        store.push(root_doms)
        # FSB scores in passes no larger than the round's own batch of children (2 x batch_size)
        branching = make_branching(opts.branching, layout, engine, coeffs, opts.fsb_candidates, opts.fsb_batched,
                                   2 * opts.batch_size, deadline, opts.fsb_pool_candidates)
        if layout.pool_nodes:
            stats["window_splits"] = 0
        proven_max = float("-inf")
        rounds = 0
        branch_per_child = 0.0  # what the last round's splitting took per child: a round is not started without it
        tail_per_child = 0.0  # what a round took per child after its bounding (kept back from the bounding)

        def open_reason(what: str) -> str:
            return f"{what} with {len(store)} domains open (worst bound {store.worst():.4g})"

        while len(store):
            stats["max_open"] = max(stats.get("max_open", 0), len(store))
            handoff = self.milp is not None and topk is not None and len(store) <= opts.milp_max_domains and (
                stats["domains"] >= opts.max_domains
                or (deadline is not None and deadline - time.perf_counter() <= opts.milp_share * (limit or 0.0)))
            if handoff:
                assert topk is not None and self.milp is not None
                stats["store_bytes_per_domain"] = store.bytes_per_domain()
                status, bound, point = milp_handoff(self.milp, network, box, engine, store, topk, deadline, stats)
                if point is not None:
                    best.append(point)
                reason = "" if status != "unknown" else f"the MILP left open domains (worst bound {bound:.4g})"
                if status == "proven":
                    bound = max(bound, proven_max, spec.floor)
                return finish(status, bound, reason, point)
            stats["store_bytes_per_domain"] = store.bytes_per_domain()
            if out_of_time():
                return finish("unknown", store.worst(), open_reason("time limit"))
            if (opts.stall_share is not None and limit is not None
                    and time.perf_counter() - start >= opts.stall_share * limit
                    and store.worst() > root_value - opts.stall_progress * (root_value + ROBUST_TOLERANCE)):
                stats["stalled"] = True
                return finish("unknown", store.worst(), f"stalled: the worst bound went from {root_value:.4g} "
                                                        f"to {store.worst():.4g} in {opts.stall_share:.0%} of the "
                                                        "time")
            if stats["domains"] >= opts.max_domains:
                return finish("unknown", store.worst(), f"domain limit {opts.max_domains} reached "
                                                        f"(worst bound {store.worst():.4g})")
            if deadline is not None and _time_left(deadline) < (
                    branch_per_child * self._children_of(min(opts.batch_size, len(store)))
                    + _least_bounding(engine, spec)):
                # picking the splits and making the children are not anytime, and a round that cannot bound a child
                # after them would only overrun the deadline: none is started without the time the last round's
                # splitting took per child, for this round's children, and the engine's smallest bounding call
                return finish("unknown", store.worst(), open_reason("time limit"))
            rounds += 1
            stats["rounds"] = rounds
            parents = store.pop(opts.batch_size)
            if opts.refresh_stale and not input_split:
                t0 = time.perf_counter()
                parents, refreshed, empty = refresh_stale(engine, parents, layout, deadline)
                stats["refreshed"] = stats.get("refreshed", 0) + refreshed
                stats["infeasible"] += empty
                stats["refresh_seconds"] = stats.get("refresh_seconds", 0.0) + time.perf_counter() - t0
                if parents.size == 0:
                    continue
            t0 = time.perf_counter()
            split = self._split(parents, branching, layout, input_split, getattr(engine, "support", None))
            branch_seconds = time.perf_counter() - t0
            stats["branch_seconds"] += branch_seconds
            if split is not None:
                branch_per_child = branch_seconds / max(split[0].size, 1)
            if split is None:  # nothing left to split yet unproven: only possible with degenerate bounds
                store.push(parents)
                return finish("unknown", store.worst(), "a domain has nothing left to split and is not proven")
            children, levels, window_splits = split
            if layout.pool_nodes:
                stats["window_splits"] += window_splits
            stats["max_split_levels"] = max(stats.get("max_split_levels", 0), levels)
            if out_of_time():
                store.push(parents)  # not split after all: they stay open
                return finish("unknown", store.worst(), open_reason("time limit"))
            if plan is not None and isinstance(engine, AlphaEngine):
                # the last round's α/β state and the branching's scores are free: hand them back, and size this
                # round's α/β calls from what the process holds now
                trim_heap()
                engine.memory_budget = plan.round_bytes(resident_bytes())
                stats["memory"]["round_budget"] = engine.memory_budget / MIB
            t0 = time.perf_counter()
            live_rows = open_rows(spec, children.row_upper)
            stats["rows_bounded"] += children.size * (spec.rows.shape[0] if live_rows is None else live_rows.size)
            # the round's bookkeeping after the bounding (the results' warm starts, absorbing, storing, pruning,
            # the corners' check) is owed too: its time, as the last round took it per child, is kept back
            # (and the store's growth, when the children will not fit its buffers: a copy of every slot)
            bound_by = None if deadline is None else (
                deadline - tail_per_child * children.size - store.grow_seconds(children.size))
            kids, bounded = bound_domains(engine, children, layout, coeffs, bound_by, mix, live_rows)
            t_tail = time.perf_counter()
            stats["bound_seconds"] += t_tail - t0
            if bounded.unbounded is not None:
                # the deadline kept some children from being bounded: the run ends Unknown here, its worst bound
                # over the open domains, the children left unbounded with their parents' bounds (not stored: copying
                # them would only take the call past its deadline)
                kids = absorb(kids, bounded, spec)
                stats["domains"] += kids.size
                stats["unbounded_children"] = stats.get("unbounded_children", 0) + bounded.unbounded.size
                stats["bound_chunks"] = stats.get("bound_chunks", 0) + bounded.chunks
                worst_open = float(max([store.worst(), *kids.value[kids.value >= -ROBUST_TOLERANCE],
                                   *bounded.unbounded]))
                left_open = len(store) + int((kids.value >= -ROBUST_TOLERANCE).sum()) + bounded.unbounded.size
                return finish("unknown", worst_open, f"time limit with {left_open} domains open (worst bound "
                                                     f"{worst_open:.4g})")
            kids = absorb(kids, bounded, spec)
            stats["domains"] += kids.size
            stats["max_depth"] = max(stats["max_depth"], int(kids.depth.max()))
            stats["infeasible"] += int((~bounded.feasible).sum())
            stats["bound_chunks"] = stats.get("bound_chunks", 0) + bounded.chunks
            stats["max_children"] = max(stats.get("max_children", 0), kids.size)
            live = np.flatnonzero(kids.value >= -ROBUST_TOLERANCE)
            if plan is not None:
                # every child goes into the store before the proven ones are pruned: the buffers grow to hold
                # them all
                after = store.nbytes_after_push(kids)
                if after > plan.store_bytes:
                    open_bound = max(store.worst(), float(kids.value.max()) if kids.size else float("-inf"))
                    return finish("unknown", open_bound,
                                  store_over_reason(plan, after, len(store) + live.size, open_bound))
            store.push(kids)
            proven = store.prune(-ROBUST_TOLERANCE)
            if proven.size:
                proven_max = max(proven_max, float(proven.max()))
            # the corners that minimise the open children's linear bounds: cheap candidates, checked in one batch
            corners = _corners(kids.take(live))
            if corners.shape[0]:
                pts = check_points(network, box, list(corners), prop)
                cex = max((p for p in pts if p.confirmed), key=lambda p: p.margin, default=None)
                best.extend(sorted(pts, key=lambda p: -p.margin)[:1])
                if cex is not None:
                    return finish("violated", float("inf"), "bound corner", cex)
            tail_per_child = (time.perf_counter() - t_tail + bounded.after_seconds) / max(children.size, 1)
            if len(store) and rounds % opts.attack_every == 0 and not out_of_time():
                t0 = time.perf_counter()
                worst = store.peek(4)
                starts = list(_corners(worst))
                sub = box if not input_split else Box(worst.lower[0], worst.upper[0])
                res = pgd(network, sub, prop, restarts=max(len(starts), 2), steps=opts.attack_steps,
                          starts=starts, seed=rounds,
                          time_limit=None if deadline is None else max(deadline - time.perf_counter(), 0.0))
                stats["attack_seconds"] += time.perf_counter() - t0
                stats["attacks"] += 1
                if res.counterexample is not None:
                    # the sub-box lies in the box; re-check against the whole box for the report
                    cex = check_points(network, box, [res.counterexample.x], prop)[0]
                    if cex.confirmed:
                        return finish("violated", float("inf"), "attack in a sub-domain", cex)
        return finish("proven", max(proven_max, spec.floor))

    # --- helpers --------------------------------------------------------------------------------------------------
    def _children_of(self, parents: int) -> int:
        """How many children :meth:`_split` makes of ``parents`` parents (at most: a parent with fewer unstable
        ReLUs left is split on fewer levels)."""
        return parents * 2 ** self._levels(parents)

    def _levels(self, parents: int) -> int:
        """Levels each of ``parents`` parents is split on: several while the batch is short of ``batch_size``
        parents, so that the round bounds about ``2 * batch_size`` children."""
        opts = self.options
        levels = 1
        while levels < opts.max_split_levels and parents * 2 ** levels < 2 * opts.batch_size:
            levels += 1
        return levels

    def _split(self, parents: Domains, branching: Branching, layout: DomainLayout, input_split: bool,
               support: dict[str, torch.Tensor] | None = None) -> tuple[Domains, int, int] | None:
        """The children of a batch of parents, the most levels a parent was split on at once and how many of the
        decisions split a MaxPool window (None when some parent has nothing left to split): several levels at once
        while the batch is short of ``batch_size`` parents, so that the round bounds about ``2 * batch_size``
        children. ``support``: the layout of the parents' α/β warm starts (the engine's, see
        :meth:`AlphaEngine.fix_support`)."""
        levels = self._levels(parents.size)
        bisect = InputBisection()
        if input_split:
            bisected = _bisect(parents, bisect, levels)
            return None if bisected is None else (*bisected, 0)
        ranked = branching.rank(parents, levels)
        avail = ranked.available
        parts = []
        used = 0
        windows = 0
        relu = np.flatnonzero(avail > 0)
        if relu.size:
            depth = int(min(levels, avail[relu].min()))
            layer, index = ranked.first(depth)
            parts.append(split_choices(parents.take(relu), layout, layer[relu], index[relu], support))
            used = depth
            windows = int((layer[relu] >= len(layout.relu_nodes)).sum())
        rest = np.flatnonzero(avail == 0)
        if rest.size:
            # no unstable ReLU (nor, with window splits, undecided window) left: the remaining looseness is in
            # MaxPool relaxations, which shrink with the box
            bisected = _bisect(parents.take(rest), bisect, levels)
            if bisected is None:
                return None
            parts.append(bisected[0])
            used = max(used, bisected[1])
        return concat(parts), used, windows

    def _engine(self, network: Network, input_split: bool, memory_budget: int | None = None
                ) -> SplitCrown | AlphaEngine:
        """The bound engine: α/β-CROWN for ReLU splitting, plain CROWN (with input coefficients) for input
        bisection, unless the options name one; ``memory_budget``: its α/β budget (None: ``memory_budget_bytes``)."""
        opts = self.options
        name = opts.engine if opts.engine != "auto" else ("crown" if input_split else "alpha")
        if name == "crown":
            return SplitCrown(network)
        options = AlphaOptions(iterations=opts.alpha_iterations, device=opts.device,
                               seed_split_beta=opts.seed_split_beta)
        return AlphaEngine(network, options, refresh=opts.refresh_intermediate,
                           memory_budget=opts.memory_budget_bytes if memory_budget is None else memory_budget)


def _bisect(parents: Domains, bisect: InputBisection, levels: int) -> tuple[Domains, int] | None:
    """Input bisection of every parent on its ``levels`` best dimensions (fewer where some parent has fewer of
    positive width; None when one has none), and how many levels that was."""
    ranked = bisect.rank(parents, levels)
    depth = int(ranked.available.min()) if parents.size else 0
    if depth == 0:
        return None
    return split_inputs(parents, ranked.index[:, :depth]), depth


def _intermediate_cost(network: Network, bounds: Bounds) -> int:
    """Work of one α step re-bounding the last refined pre-activation layer: two rows per unstable neuron times the
    numbers of the tensors the back-substitution passes through (0 when there is no such layer)."""
    from mlrobust.bounds.alpha_crown import _last_refined_relu_input

    t = _last_refined_relu_input(network)
    if t is None:
        return 0
    unstable = int(((bounds.lower[t] < 0) & (bounds.upper[t] > 0)).sum())
    path = int(np.prod(network.sample_shape))
    for node in network.nodes:  # the tensors computed before t
        if node.output == t:
            break
        path += int(np.prod(network.shape_of(node.output)))
    return 2 * unstable * path


def _least_bounding(engine: SplitCrown | AlphaEngine, spec: OutputSpec) -> float:
    """Seconds of the smallest bounding call ``engine`` can make, at its costs measured so far (0 for plain
    CROWN, which bounds one domain at a time and stops at the deadline within a domain)."""
    return engine.least_call(int(spec.rows.shape[0])) if isinstance(engine, AlphaEngine) else 0.0


def _not_bounded(lower: np.ndarray) -> bool:
    """Whether a root bound is the engine's "not bounded for want of time" (every row ``-inf``)."""
    return bool(np.all(np.isneginf(lower)))


def _time_left(deadline: float | None) -> float:
    """Seconds until ``deadline`` (never negative; infinite without one)."""
    return float("inf") if deadline is None else max(deadline - time.perf_counter(), 0.0)


def _corners(doms: Domains) -> np.ndarray:
    """The input corners minimising each domain's binding-row linear bound, for the domains with input
    coefficients (a likely violation): ``(D', *input)``."""
    if doms.size == 0 or doms.input_coeff is None:
        return np.zeros((0, *doms.boxes.lower.shape[1:]))
    known = ~np.isnan(doms.input_coeff.reshape(doms.size, -1)).any(axis=1)
    a = doms.input_coeff[known]
    return np.where(a >= 0, doms.lower[known], doms.upper[known])
