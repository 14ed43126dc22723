"""α-CROWN bounds for the top-k property: optimise only the margins CROWN leaves open, then their k-subsets.

The target stays in the top-k iff the k-th largest margin ``m_c = y_c - y_t`` (``c != t``) is negative. Starting
from CROWN's margin bounds ``U_c``:

1. *Per class*: the classes with ``U_c >= -tolerance`` are the candidates; their upper bounds are α-optimised (one
   row each), stopping as soon as the k-th largest upper bound is below ``-tolerance``.
2. *k-subsets* (k >= 2): the k-th largest margin is ``max over k-subsets S of min_{c in S} m_c`` and
   ``min_{c in S} m_c <= Σ_{c in S} λ_c m_c`` for every ``λ`` in the simplex; so for each k-subset of remaining
   candidates (at most :data:`MAX_SUBSETS`, those binding the bound first) the upper bound of one convex combination
   is α-optimised, ``λ`` optimised with the slopes (:class:`mlrobust.bounds.alpha_crown.RowMix`, starting from the
   margin with the smallest bound; the shared dependence of the margins on the input cancels, which per-class
   bounds cannot exploit). For k = 2 these are the pairs; for top-3 (Triple-MNIST) the triples: with per-class
   bounds alone the third-largest margin's bound ignored that the three margins cannot all be large together.

Hopeless optimisations stop early: after :data:`PATIENCE` steps, if the bound's mean progress per step, continued
over every remaining step, would not reach a proof, the rows stop there (α's progress slows down as it goes, so
the linear forecast is optimistic and rarely gives up on a box it would have proven). Inside a search most queries
the bounds cannot prove then cost a few steps instead of the whole budget.

The result's ``kth_upper`` is a proven upper bound on the k-th largest margin: ``max over k-subsets S of
min(min_{c in S} U_c, S's bound)`` (:func:`subset_kth_upper`; the k-th largest ``U_c`` where no subset was
optimised). Lower bounds stay CROWN's (only upper bounds decide robustness). :class:`AlphaCache` keeps each row's
optimised parameters per query family (network, target) so the next, slightly different box of a search starts
from them.
"""

from __future__ import annotations

import itertools
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field, replace

import numpy as np

from mlrobust.bounds.alpha_crown import (
    AlphaOptions,
    AlphaState,
    RowMix,
    alpha_bounds,
    initial_domain,
    margin_coeffs,
)
from mlrobust.bounds.result import Bounds
from mlrobust.ir.graph import Network

#: k-subsets (pairs for k = 2) considered at most (more open candidates means the box is far from provable by bounds).
MAX_SUBSETS = 10
#: Steps before a hopeless optimisation may be given up.
PATIENCE = 5


class AlphaCache:
    """Optimised parameters per query family and row, least recently used families dropped beyond ``families``.

    Every parameter value is sound, so a stale entry only costs tightness, never correctness.
    """

    def __init__(self, families: int = 16):
        self.families = int(families)
        self._store: OrderedDict[Hashable, dict[Hashable, AlphaState]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def warm(self, family: Hashable, rows: list[Hashable]) -> AlphaState | None:
        rows_of = self._store.get(family)
        if rows_of is None:
            self.misses += len(rows)
            return None
        self._store.move_to_end(family)
        states = [rows_of.get(r) for r in rows]
        found = sum(s is not None for s in states)
        self.hits += found
        self.misses += len(rows) - found
        return AlphaState.concat_rows(states)

    def put(self, family: Hashable, rows: list[Hashable], state: AlphaState) -> None:
        rows_of = self._store.setdefault(family, {})
        self._store.move_to_end(family)
        for i, r in enumerate(rows):
            rows_of[r] = state.select_rows([i]).map(lambda v: v.detach().clone())
        while len(self._store) > self.families:
            self._store.popitem(last=False)

    def clear(self) -> None:
        self._store.clear()


@dataclass
class TopKBound:
    """Margin bounds ``(C,)`` (target entry 0) and a proven upper bound of the k-th largest margin."""

    margin_lower: np.ndarray
    margin_upper: np.ndarray
    kth_upper: float
    crown_kth_upper: float
    seconds: float
    stats: dict = field(default_factory=dict)
    # pre-activation bounds (per-sample shapes) the optimisation tightened (joint intermediate bounds), all sound
    # over the box; empty when none moved
    intermediate: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


def _kth_largest(values: np.ndarray, k: int) -> float:
    return float(np.sort(values)[::-1][k - 1]) if values.size >= k else float("-inf")


def subset_kth_upper(upper: np.ndarray, target: int, k: int,
                     subset_bound: dict[tuple[int, ...], float]) -> float:
    """``max over k-subsets S (target not in S) of min(min_{c in S} U_c, S's bound)``: the k-th largest margin's
    bound from the per-class bounds ``upper`` and the bounds of the (sorted) subsets in ``subset_bound``.

    Without subset bounds this is the k-th largest ``U_c``. A subset without a bound is worth ``min_{c in S} U_c``;
    the best of those is found by walking the classes by decreasing ``U_c``: the first class whose subsets with
    larger-bounded partners are not all bounded gives it, so only a few subsets are ever looked at.
    """
    others = np.delete(np.arange(upper.size), target)
    if others.size < k:
        return float("-inf")
    order = others[np.argsort(-upper[others], kind="stable")]
    best = max((min(float(np.min(upper[list(s)])), float(b)) for s, b in subset_bound.items()), default=float("-inf"))
    for m in range(k - 1, order.size):
        value = float(upper[order[m]])
        if value <= best:  # no later subset can beat what is already found
            break
        lead = [int(c) for c in order[:m]]
        if any(tuple(sorted((*rest, int(order[m])))) not in subset_bound
               for rest in itertools.combinations(lead, k - 1)):
            best = value  # an unbounded subset whose smallest bound is this class's
            break
    return best


def pair_kth_upper(upper: np.ndarray, target: int, pair_bound: dict[tuple[int, int], float]) -> float:
    """``max over pairs {a, b} (a, b != target) of min(U_a, U_b, pair bound)``: the second-largest margin's bound."""
    return subset_kth_upper(upper, target, 2, dict(pair_bound))


def binding_subsets(upper: np.ndarray, candidates: list[int], k: int, limit: int) -> list[tuple[int, ...]]:
    """Up to ``limit`` k-subsets of ``candidates`` (sorted tuples), those with the largest smallest bound first: the
    subsets that decide :func:`subset_kth_upper`."""
    subsets = [tuple(sorted(s)) for s in itertools.combinations(candidates, k)]
    subsets.sort(key=lambda s: (-min(float(upper[c]) for c in s), s))
    return subsets[:limit]


class _Progress:
    """The stop rule of one optimisation: proven, or hopeless by the linear forecast (see the module docstring)."""

    def __init__(self, kth: Callable[[np.ndarray], float], steps: int, tolerance: float, give_up: bool):
        self.kth, self.steps, self.tolerance, self.give_up = kth, steps, tolerance, give_up
        self.first: float | None = None
        self.calls = 0
        self.gave_up = False

    def __call__(self, best: np.ndarray) -> bool:
        value = self.kth(best)
        if value < -self.tolerance:
            return True
        if self.first is None:
            self.first = value
            return False
        self.calls += 1
        if self.give_up and self.calls >= PATIENCE:
            rate = (self.first - value) / self.calls
            if value - rate * (self.steps - self.calls) >= -self.tolerance:
                self.gave_up = True
                return True
        return False


def alpha_topk_bounds(network: Network, bounds: Bounds, target: int, k: int, crown_lower: np.ndarray,
                      crown_upper: np.ndarray, *, options: AlphaOptions | None = None, tolerance: float = 1e-4,
                      cache: AlphaCache | None = None, family: Hashable = None, give_up: bool = True) -> TopKBound:
    """Tighten CROWN's margin bounds (``crown_lower``/``crown_upper``, intermediate bounds ``bounds`` over the box)
    where the top-k proof needs it; see the module docstring. ``cache``/``family`` warm-start the rows;
    ``give_up=False`` spends the whole budget even when the forecast says no proof is coming."""
    options = options or AlphaOptions()
    start = time.perf_counter()
    deadline = None if options.time_limit is None else start + float(options.time_limit)
    n = network.num_classes
    lower, upper = crown_lower.astype(np.float64).copy(), crown_upper.astype(np.float64).copy()
    others = np.delete(np.arange(n), target)
    crown_kth = _kth_largest(upper[others], k)
    stats: dict = {"alpha_rows": 0, "alpha_iterations": 0, "subset_rows": 0}
    cand = [int(c) for c in others if upper[c] >= -tolerance]
    # no upper bound can fall below the k-th largest lower bound: such a box is out of reach of any proof
    if crown_kth < -tolerance or len(cand) < k or _kth_largest(lower[others], k) >= -tolerance:
        return TopKBound(lower, upper, crown_kth, crown_kth, time.perf_counter() - start, stats)
    domain = initial_domain(network, bounds.input_lower, bounds.input_upper, bounds)
    rows, classes = margin_coeffs(n, target)
    row_of = {int(c): i for i, c in enumerate(classes)}

    def left() -> AlphaOptions:
        rest = None if deadline is None else max(deadline - time.perf_counter(), 0.0)
        return replace(options, time_limit=rest)

    # 1. per-class upper bounds of the open candidates (rows -m_c: lower bound of -m_c = -upper bound of m_c)
    keys: list[Hashable] = [("class", c) for c in cand]
    coeffs = -rows[[row_of[c] for c in cand]]
    fixed = upper.copy()

    def class_kth(best: np.ndarray) -> float:
        u = fixed.copy()
        u[cand] = np.minimum(u[cand], -best[0])
        return _kth_largest(u[others], k)

    progress = _Progress(class_kth, options.iterations, tolerance, give_up)
    warm = cache.warm(family, keys) if cache is not None else None
    res = alpha_bounds(network, domain, coeffs, options=left(), warm=warm, stop=progress)
    stats["gave_up"] = progress.gave_up
    stats["class_iterations"] = res.iterations
    stats["joint"] = res.stats.get("joint", "off")  # intermediate bounds optimised jointly ("on"), or why not
    if cache is not None:
        cache.put(family, keys, res.state)
    upper[cand] = np.minimum(upper[cand], -res.lower[0])
    stats["alpha_rows"] += len(cand)
    stats["alpha_iterations"] += res.iterations
    kth = _kth_largest(upper[others], k)
    if res.domains is not None:  # intermediate bounds tightened by a joint optimisation are valid for the pairs too
        domain = res.domains
    # 2. k-subsets (pairs for k = 2)
    still = [c for c in cand if upper[c] >= -tolerance]
    # (even when the per-class rows gave up: a subset's combination can be provable where no margin alone is)
    if (kth >= -tolerance and k >= 2 and len(still) >= k and MAX_SUBSETS > 0
            and (deadline is None or time.perf_counter() < deadline)):
        subsets = binding_subsets(upper, still, k, MAX_SUBSETS)
        keys = [("subset", *s) for s in subsets]
        # base: every margin (the same for every box of a family, so cached weights fit); one row per subset
        groups = np.zeros((len(subsets), rows.shape[0]), dtype=bool)
        init = np.zeros(groups.shape)
        for i, s in enumerate(subsets):
            groups[i, [row_of[c] for c in s]] = True
            init[i, row_of[min(s, key=lambda c: upper[c])]] = 1.0  # the best single margin
        mix = RowMix(-rows, groups, init)

        def subset_bounds(best: np.ndarray) -> dict[tuple[int, ...], float]:
            # the lower bound of -(Σ λ_c m_c) is minus an upper bound of min_{c in S} m_c
            ub = -best[0] if best.size else np.zeros(0)
            return {s: float(v) for s, v in zip(subsets, ub)}

        progress = _Progress(lambda best: subset_kth_upper(upper, target, k, subset_bounds(best)),
                             options.iterations, tolerance, give_up)
        warm = cache.warm(family, keys) if cache is not None else None
        res = alpha_bounds(network, domain, None, options=left(), warm=warm, stop=progress, mix=mix)
        stats["gave_up"] = progress.gave_up
        if cache is not None:
            cache.put(family, keys, res.state)
        stats["subset_rows"] = len(keys)
        stats["subset_iterations"] = res.iterations
        stats["alpha_iterations"] += res.iterations
        kth = min(kth, subset_kth_upper(upper, target, k, subset_bounds(res.lower)))
        if res.domains is not None:
            domain = res.domains
    upper[target] = lower[target] = 0.0
    stats["alpha_cache_hits"] = cache.hits if cache is not None else 0
    moved = {t: (domain.pre_lower[t][0], domain.pre_upper[t][0]) for t in domain.pre_lower
             if np.any(domain.pre_lower[t][0] > bounds.lower[t]) or np.any(domain.pre_upper[t][0] < bounds.upper[t])}
    return TopKBound(lower, upper, kth, crown_kth, time.perf_counter() - start, stats, moved)
