"""α-CROWN bounds for the top-k property: optimise only the margins CROWN leaves open, and for k = 2 their pairs.

The target stays in the top-k iff the k-th largest margin ``m_c = y_c - y_t`` (``c != t``) is negative. Starting
from CROWN's margin bounds ``U_c``:

1. *Per class*: the classes with ``U_c >= -tolerance`` are the candidates; their upper bounds are α-optimised (one
   row each), stopping as soon as the k-th largest upper bound is below ``-tolerance``.
2. *Pairs* (k = 2 only): the second-largest margin is ``max over pairs {a, b} of min(m_a, m_b)`` and
   ``min(m_a, m_b) <= λ m_a + (1 - λ) m_b`` for every ``λ ∈ [0, 1]``; so for each pair of remaining candidates the
   upper bound of one convex combination is α-optimised, ``λ`` optimised with the slopes
   (:class:`mlrobust.bounds.alpha_crown.RowMix`, starting from the margin with the smaller bound; the shared dependence of ``m_a`` and ``m_b``
   on the input cancels, which per-class bounds cannot exploit).

Hopeless optimisations stop early: after :data:`PATIENCE` steps, if the bound's mean progress per step, continued
over every remaining step, would not reach a proof, the rows stop there (α's progress slows down as it goes, so
the linear forecast is optimistic and rarely gives up on a box it would have proven). Inside a search most queries
the bounds cannot prove then cost a few steps instead of the whole budget.

The result's ``kth_upper`` is a proven upper bound on the k-th largest margin: the k-th largest ``U_c`` and, for
k = 2, ``max over all pairs of min(U_a, U_b, best pair bound)``. Lower bounds stay CROWN's (only upper bounds decide
robustness). :class:`AlphaCache` keeps each row's optimised parameters per query family (network, target) so the
next, slightly different box of a search starts from them.
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

#: Pairs considered at most (more open candidates means the box is far from provable by bounds).
MAX_PAIRS = 10
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


def pair_kth_upper(upper: np.ndarray, target: int, pair_bound: dict[tuple[int, int], float]) -> float:
    """``max over pairs {a, b} (a, b != target) of min(U_a, U_b, pair bound)``: the second-largest margin's bound."""
    others = [c for c in range(upper.size) if c != target]
    best = float("-inf")
    for a, b in itertools.combinations(others, 2):
        best = max(best, min(upper[a], upper[b], pair_bound.get((a, b), np.inf)))
    return best


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
    stats: dict = {"alpha_rows": 0, "alpha_iterations": 0, "pair_rows": 0}
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
    # 2. pairs, k = 2
    still = [c for c in cand if upper[c] >= -tolerance]
    # (even when the per-class rows gave up: a pair's combination can be provable where neither margin alone is)
    if (kth >= -tolerance and k == 2 and len(still) >= 2 and MAX_PAIRS > 0
            and (deadline is None or time.perf_counter() < deadline)):
        pairs = list(itertools.combinations(sorted(still), 2))[:MAX_PAIRS]
        keys = [("pair", a, b) for a, b in pairs]
        # base: every margin (the same for every box of a family, so cached weights fit); one row per pair
        groups = np.zeros((len(pairs), rows.shape[0]), dtype=bool)
        init = np.zeros(groups.shape)
        for i, (a, b) in enumerate(pairs):
            groups[i, [row_of[a], row_of[b]]] = True
            init[i, row_of[a] if upper[a] <= upper[b] else row_of[b]] = 1.0  # the better single margin
        mix = RowMix(-rows, groups, init)

        def pair_bounds(best: np.ndarray) -> dict[tuple[int, int], float]:
            # the lower bound of -(λ m_a + (1 - λ) m_b) is minus an upper bound of min(m_a, m_b)
            ub = -best[0] if best.size else np.zeros(0)
            return {p: float(v) for p, v in zip(pairs, ub)}

        progress = _Progress(lambda best: pair_kth_upper(upper, target, pair_bounds(best)), options.iterations,
                             tolerance, give_up)
        warm = cache.warm(family, keys) if cache is not None else None
        res = alpha_bounds(network, domain, None, options=left(), warm=warm, stop=progress, mix=mix)
        stats["gave_up"] = progress.gave_up
        if cache is not None:
            cache.put(family, keys, res.state)
        stats["pair_rows"] = len(keys)
        stats["pair_iterations"] = res.iterations
        stats["alpha_iterations"] += res.iterations
        kth = min(kth, pair_kth_upper(upper, target, pair_bounds(res.lower)))
        if res.domains is not None:
            domain = res.domains
    upper[target] = lower[target] = 0.0
    stats["alpha_cache_hits"] = cache.hits if cache is not None else 0
    moved = {t: (domain.pre_lower[t][0], domain.pre_upper[t][0]) for t in domain.pre_lower
             if np.any(domain.pre_lower[t][0] > bounds.lower[t]) or np.any(domain.pre_upper[t][0] < bounds.upper[t])}
    return TopKBound(lower, upper, kth, crown_kth, time.perf_counter() - start, stats, moved)
