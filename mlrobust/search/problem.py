"""The search problem: a network, a layered neighborhood, a target and k, weights, a verifier and a budget, with the
one operation every search method is made of — ``query(eps)`` — and the caches that make repeated queries free.

Two facts make caching sound, because the box of a layered neighborhood grows monotonically with every epsilon:

- a vector componentwise below a proven-robust vector is robust (its box is a subset);
- a confirmed counterexample that lies inside a candidate's box refutes the candidate (it is a point of the box
  where the real network already lost the target).

Two cheap tiers sit between the caches and the verifier. *Projection*: stored counterexamples are clipped into the
new box and re-run through the network; a clipped point that still violates the property (confirmed on both
executors, as every counterexample is) refutes the candidate without a solver call. *Warm attack*: a short PGD run
started from the strongest points the search has met near this box (weak points of earlier boxes, counterexamples,
clipped into it) — neighbouring queries share their worst cases, which a cold attack must find from scratch. Epsilons beyond a layer's *saturation* (the
value at which every pixel of the layer already spans [0, 1]) do not change the box, so queries are normalised to
them first.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import numpy as np

from mlrobust.errors import InputError
from mlrobust.ir.graph import Network
from mlrobust.neighborhood.neighborhood import LayeredNeighborhood, WeightSpec
from mlrobust.search.costs import CostModel
from mlrobust.search.progress import ProgressCallback, ProgressEvent, notify
from mlrobust.verify.base import Mode, Verifier
from mlrobust.verify.counterexample import TopKProperty, check_points, check_query
from mlrobust.verify.spec import Box
from mlrobust.verify.verdict import NotRobust, Robust, Unknown, Verdict, WeakPoint

if TYPE_CHECKING:
    from mlrobust.search.pool import QueryPool

#: Tiers that answer a query without calling the verifier.
CACHE_TIERS = ("cache", "projection", "warm-attack", "budget")
#: How many stored counterexamples (most recent first) are clipped into a new box and re-checked.
PROJECTION_LIMIT = 16
#: Starting points of the warm attack (the strongest known points clipped into the box) and its steps.
WARM_STARTS = 6
WARM_STEPS = 30
#: Random restarts and steps added when the verifier of the phase has no attack tier of its own.
COLD_RESTARTS = 4
COLD_STEPS = 40
#: Bytes of weak points kept to seed later attacks. Each is a whole input (2 MB at 3x300x300) and a long search
#: makes hundreds of queries, so the store keeps the most recent queries' points (the warm starts read the last
#: eight) and, of the older ones, the strongest, within this budget.
WEAK_POINT_BUDGET_BYTES = 64_000_000
#: The most recent queries whose weak points are never evicted (what :meth:`SearchProblem.warm_starts` reads).
WEAK_RECENT = 8


def evict_weak_points(entries: list[tuple[np.ndarray, list[WeakPoint]]], budget: int,
                      recent: int) -> list[tuple[np.ndarray, list[WeakPoint]]]:
    """``entries`` (per query: its epsilons and weak points, oldest first) within ``budget`` bytes of points: the
    last ``recent`` entries stay whole; of the older ones the points with the lowest margin (the farthest from
    losing the target, the weakest attack seeds) go first. Entries left without points are dropped."""
    held = sum(wp.x.nbytes for _, wps in entries for wp in wps)
    old = entries[:-recent] if recent else entries
    if held <= budget or not old:
        return entries
    ranked = sorted(((wp.margin, i, j) for i, (_, wps) in enumerate(old) for j, wp in enumerate(wps)),
                    key=lambda t: t[0])
    dropped: set[tuple[int, int]] = set()
    for _, i, j in ranked:
        if held <= budget:
            break
        held -= old[i][1][j].x.nbytes
        dropped.add((i, j))
    kept = [(eps, [wp for j, wp in enumerate(wps) if (i, j) not in dropped]) for i, (eps, wps) in enumerate(old)]
    return [e for e in kept if e[1]] + entries[len(old):]


@dataclass
class Budget:
    """Limits of one search: total wall-clock seconds, number of queries that reach the verifier, and the time
    limit handed to each verifier call (None = no limit)."""

    time_limit: float | None = 300.0
    max_queries: int | None = None
    query_time_limit: float | None = 30.0

    def __post_init__(self) -> None:
        for name in ("time_limit", "query_time_limit"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise InputError(f"{name.replace('_', ' ')} must be a positive number of seconds, got {value!r}")
        if self.max_queries is not None and self.max_queries < 1:
            raise InputError(f"max queries must be at least 1, got {self.max_queries!r}")


@dataclass
class QueryRecord:
    """One answered query: the (saturation-clipped) epsilons, the verdict, who decided, why it was asked. The verdict
    is kept without its weak points, and a counterexample is the stored one (:attr:`SearchProblem.counterexamples`),
    so the log holds no image of its own."""

    eps: np.ndarray
    verdict: Verdict
    tier: str
    purpose: str
    seconds: float
    elapsed: float

    @property
    def status(self) -> str:
        return status_of(self.verdict)


def status_of(verdict: Verdict) -> str:
    """``"robust"``, ``"not_robust"`` or ``"unknown"``."""
    if verdict.is_robust:
        return "robust"
    if verdict.is_not_robust:
        return "not_robust"
    return "unknown"


@dataclass
class QueryStats:
    """Queries by the tier that decided them, time per tier, calls that reached the verifier, MILP calls."""

    calls: Counter = field(default_factory=Counter)
    seconds: dict[str, float] = field(default_factory=dict)
    outcomes: Counter = field(default_factory=Counter)
    verifier_calls: int = 0
    milp_calls: int = 0

    def add(self, tier: str, verdict: Verdict, reached_verifier: bool) -> None:
        self.calls[tier] += 1
        self.outcomes[status_of(verdict)] += 1
        for part, secs in verdict.seconds.items():
            self.seconds[part] = self.seconds.get(part, 0.0) + float(secs)
        if reached_verifier:
            self.verifier_calls += 1
            if used_milp(verdict):
                self.milp_calls += 1

    @property
    def total(self) -> int:
        return int(sum(self.calls.values()))

    def to_dict(self) -> dict:
        return {"queries": self.total, "by_tier": dict(sorted(self.calls.items())),
                "outcomes": dict(sorted(self.outcomes.items())), "verifier_calls": self.verifier_calls,
                "milp_calls": self.milp_calls,
                "seconds_by_tier": {k: round(v, 6) for k, v in sorted(self.seconds.items())}}


def tier_key(verifier: Verifier) -> str:
    """The name a verifier's calls are timed under in the cost model."""
    return str(getattr(verifier, "name", type(verifier).__name__))


def used_milp(verdict: Verdict) -> bool:
    """Whether answering the query ran a MILP (it spent time in a ``milp`` tier or the MILP decided)."""
    return verdict.tier == "milp" or "milp" in verdict.seconds


@dataclass
class StoredCounterexample:
    """A confirmed counterexample (per-sample shape, flattened), its real margin, and the query that found it."""

    x: np.ndarray
    margin: float
    found_for: np.ndarray
    tier: str = ""


def warm_attack(network: Network, box: Box, prop: TopKProperty, starts: list[np.ndarray], cold: bool,
                seed: int) -> tuple[Verdict | None, list[WeakPoint], float]:
    """The search's own attack on ``box``: PGD from ``starts`` (the strongest known points clipped into it) and, with
    ``cold``, random restarts as well. A refutation (or None), the best points it reached, and its seconds. Pure:
    the search's worker processes (:mod:`mlrobust.search.pool`) run the same function with the same seed."""
    if not starts and not cold:
        return None, [], 0.0
    from mlrobust.verify.attack import pgd

    restarts = len(starts) + (COLD_RESTARTS if cold else 1)
    result = pgd(network, box, prop, restarts=restarts, steps=WARM_STEPS if starts else COLD_STEPS,
                 starts=starts, seed=seed)
    tier = "warm-attack" if starts else "attack"
    wps = [p.weak_point() for p in result.points[:3]]
    cex = result.counterexample
    if cex is None:
        return None, wps, float(result.seconds)
    return (NotRobust(tier=tier, seconds={tier: result.seconds}, counterexample=cex.x, margin=cex.margin,
                      weak_points=wps), wps, float(result.seconds))


def layer_saturation(nbhd: LayeredNeighborhood) -> np.ndarray:
    """Per layer, the smallest epsilon at which every pixel (every channel) of the layer spans all of [0, 1]:
    ``max over the layer of max(x, 1 - x)``. Larger epsilons give the same box."""
    image = nbhd.image
    reach = np.maximum(image, 1.0 - image).max(axis=0)
    sat = np.zeros(nbhd.num_layers)
    np.maximum.at(sat, nbhd.layers.ravel(), reach.ravel())
    return sat


class SearchProblem:
    """Everything a search needs, and ``query(eps)`` with its caches and statistics."""

    def __init__(self, network: Network, neighborhood: LayeredNeighborhood, target: int, verifier: Verifier,
                 k: int = 2, weights: WeightSpec = "uniform", budget: Budget | None = None,
                 progress: ProgressCallback | None = None, mode: Mode = "decide", cheap: Verifier | None = None,
                 warm_attack: bool = True):
        self.network = network
        self.nbhd = neighborhood
        self.target = int(target)
        self.k = int(k)
        self.verifier = verifier
        self.cheap = cheap  # the verifier without its expensive tier, for exploration (see search.tiers)
        # cheaper verifiers a query falls back to, strongest first, when its own cannot finish in the time left
        self.fallbacks: list[Verifier] = []
        self.costs = CostModel()  # measured seconds per call of every tier (see search.costs)
        self.use_cheap = False
        self.warm_attack = warm_attack
        self.deadline: float | None = None  # seconds from the start at which the current phase must stop
        self.budget = budget or Budget()
        self.progress = progress
        self.mode: Mode = mode
        self.weights = neighborhood.weights(weights)
        self.saturation = layer_saturation(neighborhood)
        self.prop = TopKProperty(self.target, self.k)
        self.x0 = np.asarray(neighborhood.x, dtype=np.float64)
        # the layer of every element of a flattened sample, sorted once: per-layer maxima by one reduceat
        elem_layer = np.asarray(neighborhood.layout.to_sample(
            np.broadcast_to(neighborhood.layers, neighborhood.image.shape).astype(np.float64))).ravel()
        self.elem_layer = elem_layer.astype(np.int64)
        self._layer_order = np.argsort(self.elem_layer, kind="stable")
        self._layer_starts = np.searchsorted(elem_layer[self._layer_order], np.arange(neighborhood.num_layers))
        # per layer, the object's epsilon below which the layer may not shrink (see SearchOptions.object_share)
        self.floor = np.zeros(neighborhood.num_layers)
        check_query(network, Box(self.x0, self.x0), self.target, self.k)
        self.records: list[QueryRecord] = []
        self.stats = QueryStats()
        self.robust_eps: list[np.ndarray] = []  # proven-robust vectors, none dominated by another
        self.counterexamples: list[StoredCounterexample] = []
        # Per stored counterexample, the smallest epsilon per layer whose box contains it (rows of required_eps):
        # (N, r + 1) numbers instead of the (N, P) points, which at 3x300x300 took 2 MB per counterexample again and
        # as much per copy in every pass over them (the upper bounds read every point at every push step).
        self._cex_req = np.zeros((0, neighborhood.num_layers))
        self._weak: list[tuple[np.ndarray, list[WeakPoint]]] = []
        self.start = time.perf_counter()
        # What the search displays: updated by the search methods, reported with every query.
        self.phase = "start"
        self.iteration = 0
        self.best_eps = np.zeros(self.num_layers)
        self.trace: list[tuple[float, float]] = []  # (seconds, size) at every improvement
        # worker processes for lists of independent queries (None: every query in this process)
        self.pool: QueryPool | None = None

    # --- basic quantities -------------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return self.nbhd.num_layers

    def clip(self, eps: Sequence[float] | np.ndarray) -> np.ndarray:
        """``eps`` as a vector in [0, saturation] (larger values give the same box; steps may undershoot 0)."""
        return np.clip(self.nbhd.eps_vector(np.maximum(np.asarray(eps, dtype=np.float64), 0.0)), 0.0,
                       self.saturation)

    def required_eps(self, xs: np.ndarray) -> np.ndarray:
        """Per point and layer, the smallest epsilon whose box contains the point: the layer's largest
        ``|x - x0|`` (``(N, *sample_shape)`` or ``(N, P)`` -> ``(N, r + 1)``). A point lies in the box of ``eps`` iff
        this vector is componentwise ``<= eps`` (the box is clipped to [0, 1], where the points lie too)."""
        dev = np.abs(np.asarray(xs, dtype=np.float64).reshape(len(xs), -1) - self.x0.ravel()[None])
        return np.maximum.reduceat(dev[:, self._layer_order], self._layer_starts, axis=1)

    def size(self, eps: np.ndarray) -> float:
        return float(self.weights @ np.asarray(eps, dtype=np.float64))

    def box(self, eps: np.ndarray) -> Box:
        return self.nbhd.box(eps)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def remaining(self) -> float | None:
        """Seconds left in the current phase (the phase deadline or the whole budget, whichever comes first)."""
        ends = [t for t in (self.budget.time_limit, self.deadline) if t is not None]
        if not ends:
            return None
        return min(ends) - self.elapsed()

    def exhausted(self) -> str | None:
        """Why the budget is spent (``"time limit"``, ``"query limit"``), or None."""
        rem = self.remaining()
        if rem is not None and rem <= 0:
            return "time limit"
        if self.budget.max_queries is not None and self.stats.verifier_calls >= self.budget.max_queries:
            return "query limit"
        return None

    # --- caches -----------------------------------------------------------------------------------------------
    def known_robust(self, eps: np.ndarray) -> np.ndarray | None:
        """A stored robust vector that dominates ``eps`` (so ``eps`` is robust), or None."""
        for r in self.robust_eps:
            if np.all(eps <= r):
                return r
        return None

    def box_reach(self, box: Box) -> np.ndarray:
        """Per layer, the largest ``|x - x0|`` that a point of ``box`` can have (its ``required_eps`` is at most
        this). Rounding is monotone, so ``lo <= x <= hi`` gives ``fl(|x - x0|) <= max(fl(x0 - lo), fl(hi - x0))``
        exactly: a point whose required epsilons exceed the reach somewhere is outside the box, with no slack."""
        x0 = self.x0.ravel()
        reach = np.maximum(x0 - box.lower.ravel(), box.upper.ravel() - x0)
        return np.maximum.reduceat(reach[self._layer_order], self._layer_starts)

    def contained_counterexample(self, box: Box) -> StoredCounterexample | None:
        """A stored counterexample lying in ``box``, or None: one vectorised test of the stored required epsilons
        against the box's reach per layer, then the exact containment test for the points that pass it."""
        if not self.counterexamples:
            return None
        maybe = np.flatnonzero(np.all(self._cex_req <= self.box_reach(box)[None], axis=1))
        hits = [int(i) for i in maybe if box.contains(self.counterexamples[int(i)].x)]
        if not hits:
            return None
        # the one with the largest margin is the most convincing to report
        best = hits[int(np.argmax([self.counterexamples[i].margin for i in hits]))]
        return self.counterexamples[best]

    def _cached(self, eps: np.ndarray, box: Box) -> Verdict | None:
        dom = self.known_robust(eps)
        if dom is not None:
            return Robust(tier="cache", stats={"cache": {"dominated_by": dom.tolist()}}, bound=float("nan"))
        cex = self.contained_counterexample(box)
        if cex is not None:
            return NotRobust(tier="cache", stats={"cache": {"found_for": cex.found_for.tolist()}},
                             counterexample=cex.x.reshape(box.shape), margin=cex.margin,
                             weak_points=[WeakPoint(cex.x.reshape(box.shape), cex.margin)])
        return self._projected(box)

    def _warm_starts(self, box: Box) -> list[np.ndarray]:
        """The strongest known points (weak points of recent queries, counterexamples), clipped into ``box``."""
        cands = [wp for _, wps in self._weak[-WEAK_RECENT:] for wp in wps[:3]]
        cands += [WeakPoint(c.x.reshape(box.shape), c.margin) for c in self.counterexamples[-4:]]
        cands.sort(key=lambda w: -w.margin)
        out: list[np.ndarray] = []
        for wp in cands:
            x = box.clip(wp.x)
            if all(np.max(np.abs(x - y)) > 0 for y in out):
                out.append(x)
            if len(out) >= WARM_STARTS:
                break
        return out

    def _warm(self, box: Box, cold: bool = False) -> tuple[Verdict | None, list[WeakPoint]]:
        """The search's own attack: PGD from the strongest known points clipped into ``box`` (warm), and with
        ``cold`` (the verifier about to run has no attack tier) random restarts too, as the cascade's attack
        would. A refutation, or None and the best points it reached (kept as weak points)."""
        if not self.warm_attack:
            return None, []
        starts = self._warm_starts(box)
        verdict, wps, seconds = warm_attack(self.network, box, self.prop, starts, cold, seed=len(self.records))
        if starts or cold:
            self.costs.record("warm-attack" if starts else "attack", seconds)
        if verdict is None and (starts or cold):
            self.add_attack_seconds("warm-attack" if starts else "attack", seconds)
        return verdict, wps

    def add_attack_seconds(self, tier: str, seconds: float) -> None:
        """Count an attack's time that refuted nothing (a refutation's time travels with its verdict)."""
        self.stats.seconds[tier] = self.stats.seconds.get(tier, 0.0) + seconds

    def _projected(self, box: Box) -> Verdict | None:
        """Clip the most recent counterexamples into ``box``; a clipped one that still violates refutes it."""
        if not self.counterexamples:
            return None
        start = time.perf_counter()
        recent = self.counterexamples[-PROJECTION_LIMIT:][::-1]
        points = check_points(self.network, box, [c.x.reshape(box.shape) for c in recent], self.prop)
        secs = {"projection": time.perf_counter() - start}
        confirmed = [p for p in points if p.confirmed]
        if not confirmed:
            return None
        best = max(confirmed, key=lambda p: p.margin)
        return NotRobust(tier="projection", seconds=secs, counterexample=best.x, margin=best.margin,
                         weak_points=[best.weak_point()])

    def _remember(self, eps: np.ndarray, verdict: Verdict) -> Verdict:
        """Keep what ``verdict`` establishes in the caches; returns the verdict as the query log keeps it."""
        logged: Verdict = dataclasses.replace(verdict, weak_points=[])
        if verdict.is_robust:
            if self.known_robust(eps) is None:
                self.robust_eps = [r for r in self.robust_eps if not np.all(r <= eps)] + [eps.copy()]
        elif isinstance(verdict, NotRobust) and verdict.counterexample is not None:
            # its own copy, read-only: the layers' answers share it instead of copying it each
            x = np.array(np.ravel(verdict.counterexample), dtype=np.float64)
            x.flags.writeable = False
            req = self.required_eps(x[None])
            # a point seen before has the same required epsilons: compare the points only where those agree
            same = [int(i) for i in np.flatnonzero(np.all(self._cex_req == req, axis=1))
                    if np.array_equal(self.counterexamples[int(i)].x, x)]
            if same:
                x = self.counterexamples[same[0]].x
            else:
                self.counterexamples.append(StoredCounterexample(x, float(verdict.margin), eps.copy(),
                                                                 verdict.tier))
                self._cex_req = np.vstack([self._cex_req, req])
            # The log refers to the stored point and keeps no weak points (they live in the warm starts): at
            # 3x300x300 each point is 2 MB, and the log would otherwise hold all of them for the whole search.
            logged = dataclasses.replace(verdict, weak_points=[],
                                         counterexample=x.reshape(np.shape(verdict.counterexample)))
        if verdict.weak_points:
            self._keep_weak(eps, verdict.weak_points)
        return logged

    def add_counterexample(self, x: np.ndarray, margin: float, eps: np.ndarray, tier: str) -> None:
        """Store a counterexample confirmed on the network (both executors) outside a query: the caches use it as
        any other."""
        self._remember(np.asarray(eps, dtype=np.float64), NotRobust(tier=tier, counterexample=x, margin=margin))

    @property
    def counterexample_required_eps(self) -> np.ndarray:
        """:meth:`required_eps` of the stored counterexamples, ``(N, r + 1)``, in storage order (computed once per
        point, when it is stored)."""
        return self._cex_req

    def warm_starts(self, box: Box) -> list[np.ndarray]:
        """The strongest known points clipped into ``box`` (what the warm attack starts from)."""
        return self._warm_starts(box)

    def add_weak_points(self, eps: np.ndarray, points: list[WeakPoint]) -> None:
        """Remember strong non-violating points of the box of ``eps`` (they seed later attacks)."""
        if points:
            self._keep_weak(eps, points)

    def _keep_weak(self, eps: np.ndarray, points: Sequence[WeakPoint]) -> None:
        """Store a query's weak points, then evict older queries' weakest points over the byte budget."""
        self._weak.append((np.asarray(eps, dtype=np.float64).copy(), list(points)))
        self._weak = evict_weak_points(self._weak, WEAK_POINT_BUDGET_BYTES, WEAK_RECENT)

    def best_proven(self) -> np.ndarray:
        """The largest vector (by ``w . eps``) that a query proved robust so far (zeros if none), among those that
        keep the object's floor (:attr:`floor`) where any does: an interrupted search reports the same trade between
        the object and the size as a finished one (the uniform probe, proven before the floor was set, is often
        larger and would otherwise win)."""
        cands = [self.best_eps] + list(self.robust_eps)
        proven = [e for e in cands if self.known_robust(e) is not None]
        if not proven:
            return np.zeros(self.num_layers)
        floored = [e for e in proven if np.all(e >= self.floor - 1e-12)]
        return max(floored or proven, key=self.size).copy()

    # --- the query --------------------------------------------------------------------------------------------
    def query(self, eps: Sequence[float] | np.ndarray, purpose: str = "", mode: Mode | None = None,
              warm: bool = True, verifier: Verifier | None = None, time_limit: float | None = None,
              cost_key: str | None = None) -> Verdict:
        """Is the neighborhood of ``eps`` robust? Cached answers first; then the verifier, within the budget.

        A NotRobust verdict's counterexample is re-checked on the real network here as well (a custom verifier may
        not do it); an unconfirmed one turns the verdict into Unknown. A spent budget answers Unknown.
        ``warm=False`` skips the search's own attack (for candidates a bound is expected to prove: the attack only
        ever refutes, so skipping it changes what is found first, never what is proven). ``verifier`` and
        ``time_limit`` replace the phase's verifier and the budget's per-query limit for this query (a tier of a
        push, :mod:`mlrobust.search.boundary`). ``cost_key`` names the verifier's tier in the cost model (default:
        the verifier's name); a verifier whose measured call cannot finish in the time left is not started: a
        cheaper one of :attr:`fallbacks` answers instead, or the query answers Unknown (budget).
        """
        eps = self.clip(eps)
        box = self.box(eps)
        start = time.perf_counter()
        verdict = self._cached(eps, box)
        reached = False
        warm_points: list[WeakPoint] = []
        if verdict is None:
            why = self.exhausted()
            if why is not None:
                verdict = Unknown(tier="budget", reason=f"search budget spent ({why})")
            else:
                active = verifier or (self.cheap if (self.use_cheap and self.cheap is not None) else self.verifier)
                if warm and self._warm_pays(active):
                    verdict, warm_points = self._warm(box, cold=getattr(active, "use_attack", True) is False)
        if verdict is None:
            limit = self.budget.query_time_limit if time_limit is None else time_limit
            rem = self.remaining()
            if rem is not None:
                limit = max(rem, 0.0) if limit is None else max(min(limit, rem), 0.0)
            if verifier is None:
                verifier = self.cheap if (self.use_cheap and self.cheap is not None) else self.verifier
            chosen = self._affordable(verifier, cost_key, rem)
            if chosen is None:
                verdict = Unknown(tier="budget", reason="search budget spent (no verifier tier can finish a call "
                                                        "in the time left)")
            else:
                verifier, key = chosen
                with self.costs.measure(key):
                    verdict = verifier.verify(self.network, box, self.target, self.k, mode or self.mode, limit)
                verdict = self._confirmed(box, verdict)
            if warm_points:
                verdict.weak_points = sorted(list(verdict.weak_points) + warm_points, key=lambda w: -w.margin)
            reached = chosen is not None
        tier = verdict.tier or ("verifier" if reached else "cache")
        logged = self._remember(eps, verdict)
        self.stats.add(tier, verdict, reached)
        self.records.append(QueryRecord(eps.copy(), logged, tier, purpose, time.perf_counter() - start,
                                        self.elapsed()))
        self.notify("query", message=f"{purpose}: {status_of(verdict)} ({tier})")
        return verdict

    def query_many(self, trials: Sequence[np.ndarray], purposes: Sequence[str], warm: bool = True,
                   verifier: Verifier | None = None, time_limit: float | None = None) -> list[Verdict]:
        """:meth:`query` for a list of independent questions, answered in the worker processes of :attr:`pool`
        (:mod:`mlrobust.search.pool`); without a parallel pool, or for one question, :meth:`query` one by one.

        Every question is answered from the state the search had when the list was asked (caches, warm starts,
        the time left), with the seed the one-by-one order would give it; the answers are then taken in the order
        given, each as :meth:`query` takes one: a worker's counterexample is re-checked on the network here before
        it counts (an unconfirmed one is Unknown), and every answer is recorded and cached. A caller uses an
        answer only while it is still about its current question (a speculative question is asked again, not
        trusted, once the vector it was asked at has changed)."""
        pool = self.pool
        if pool is None or not pool.parallel or len(trials) < 2:
            return [self.query(e, purpose=p, warm=warm, verifier=verifier, time_limit=time_limit)
                    for e, p in zip(trials, purposes)]
        from mlrobust.search.pool import VerifyJob, run_verify_job

        start = time.perf_counter()
        eps_list = [self.clip(e) for e in trials]
        boxes = [self.box(e) for e in eps_list]
        answers: list[Verdict | None] = [self._cached(e, b) for e, b in zip(eps_list, boxes)]
        active = verifier or (self.cheap if (self.use_cheap and self.cheap is not None) else self.verifier)
        limit = self.budget.query_time_limit if time_limit is None else time_limit
        rem = self.remaining()
        if rem is not None:
            limit = max(rem, 0.0) if limit is None else max(min(limit, rem), 0.0)
        why = self.exhausted()
        allowed = (None if self.budget.max_queries is None
                   else self.budget.max_queries - self.stats.verifier_calls)
        cold = getattr(active, "use_attack", True) is False
        jobs: list[VerifyJob] = []
        asked: list[int] = []
        for i, (box, answer) in enumerate(zip(boxes, answers)):
            if answer is not None:
                continue
            if why is None and allowed is not None and len(jobs) >= allowed:
                why = "query limit"
            if why is not None:
                answers[i] = Unknown(tier="budget", reason=f"search budget spent ({why})")
                continue
            use_warm = warm and self.warm_attack
            jobs.append(VerifyJob(box, self.target, self.k, self.mode, limit, active,
                                  self._warm_starts(box) if use_warm else [], cold, use_warm,
                                  seed=len(self.records) + i))
            asked.append(i)
        outcomes = dict(zip(asked, pool.map(run_verify_job, jobs)))
        batch_seconds = time.perf_counter() - start
        verdicts: list[Verdict] = []
        for i, (eps, box) in enumerate(zip(eps_list, boxes)):
            out = outcomes.get(i)
            reached = bool(out is not None and out.reached_verifier)
            if out is None:
                verdict = answers[i]
                assert verdict is not None
            else:
                # a worker's counterexample counts only once this process has re-run it through the network
                verdict = self._confirmed(box, out.verdict)
                if reached:  # the worker's verifier call, without the warm attack before it
                    self.costs.record(tier_key(active), max(out.seconds - out.attack_seconds, 0.0))
                if out.attack_seconds:
                    self.add_attack_seconds("warm-attack" if jobs[asked.index(i)].starts else "attack",
                                            out.attack_seconds)
                if reached and out.warm_points:
                    verdict.weak_points = sorted(list(verdict.weak_points) + out.warm_points, key=lambda w: -w.margin)
            tier = verdict.tier or ("verifier" if reached else "cache")
            logged = self._remember(eps, verdict)
            self.stats.add(tier, verdict, reached)
            seconds = out.seconds if out is not None else batch_seconds / len(trials)
            self.records.append(QueryRecord(eps.copy(), logged, tier, purposes[i], seconds, self.elapsed()))
            self.notify("query", message=f"{purposes[i]}: {status_of(verdict)} ({tier})")
            verdicts.append(verdict)
        return verdicts

    def _warm_pays(self, verifier: Verifier) -> bool:
        """Whether the warm attack should run before a call of ``verifier``: unless its measured cost per call is
        above the verifier's (on Triple-MNIST 1.7 s against 1.2 s for plain CROWN: the verifier answers the same
        query for less, and the attack can only refute). Unmeasured: it runs."""
        attack = self.costs.mean("warm-attack")
        call = self.costs.mean(tier_key(verifier))
        return attack is None or call is None or attack <= call

    def _affordable(self, verifier: Verifier, cost_key: str | None,
                    seconds_left: float | None) -> tuple[Verifier, str] | None:
        """``verifier`` (with its cost key) when its measured call fits in ``seconds_left``, else the strongest
        cheaper fall-back that fits, else None (see :mod:`mlrobust.search.costs`)."""
        key = cost_key or tier_key(verifier)
        if self.costs.fits(key, seconds_left):
            return verifier, key
        for cheaper in self.fallbacks:
            other = tier_key(cheaper)
            if cheaper is not verifier and other != key and self.costs.fits(other, seconds_left):
                self.costs.skipped(key, other)
                return cheaper, other
        self.costs.skipped(key, None)
        return None

    def _confirmed(self, box: Box, verdict: Verdict) -> Verdict:
        if not isinstance(verdict, NotRobust):
            return verdict
        if verdict.counterexample is None:
            return Unknown(tier=verdict.tier, seconds=verdict.seconds, stats=verdict.stats,
                           weak_points=verdict.weak_points,
                           reason="the verifier reported a violation without a counterexample")
        x = np.asarray(verdict.counterexample, dtype=np.float64).reshape(box.shape)
        point = check_points(self.network, box, [x], self.prop)[0]
        if not point.confirmed or not box.contains(point.x):
            return Unknown(tier=verdict.tier, seconds=verdict.seconds, stats=verdict.stats,
                           weak_points=verdict.weak_points,
                           reason=f"counterexample not confirmed on the network (margin {point.margin:.3g})")
        verdict.counterexample, verdict.margin = point.x, point.margin
        return verdict

    def proven_bound(self, eps: np.ndarray) -> float | None:
        """The verifier's proven upper bound on the worst-case margin for exactly ``eps`` (None if not queried,
        not robust, or decided without a bound)."""
        eps = self.clip(eps)
        for rec in reversed(self.records):
            if rec.verdict.is_robust and np.array_equal(rec.eps, eps):
                bound = float(getattr(rec.verdict, "bound", np.nan))
                return bound if np.isfinite(bound) else None
        return None

    # --- weak points ------------------------------------------------------------------------------------------
    def weak_points(self, eps: np.ndarray, limit: int = 8) -> list[WeakPoint]:
        """The strongest known inputs of the box of ``eps``: every stored weak point and counterexample that lies in
        it, plus a short PGD run from them (the attack's best points), best first."""
        eps = self.clip(eps)
        box = self.box(eps)
        lo, hi = box.lower, box.upper
        known = [wp for _, wps in self._weak for wp in wps
                 if np.all(wp.x >= lo) and np.all(wp.x <= hi)]
        from mlrobust.verify.attack import pgd

        starts = [wp.x for wp in sorted(known, key=lambda w: -w.margin)[:4]]
        start = time.perf_counter()
        result = pgd(self.network, box, self.prop, restarts=max(4, len(starts) + 2), steps=20, starts=starts,
                     stop_on_violation=False, seed=len(self.records))
        self.stats.seconds["gradient"] = self.stats.seconds.get("gradient", 0.0) + time.perf_counter() - start
        points = [p.weak_point() for p in result.points] + known
        points.sort(key=lambda w: -w.margin)
        return points[:limit]

    # --- progress ---------------------------------------------------------------------------------------------
    def notify(self, kind: str, message: str = "") -> None:
        notify(self.progress, ProgressEvent(self.phase, kind, self.iteration, self.size(self.best_eps),
                                            self.best_eps.copy(), self.elapsed(), dict(self.stats.calls),
                                            self.stats.milp_calls, message))

    def improve(self, eps: np.ndarray) -> bool:
        """Record ``eps`` (proven robust) as the best vector if it is larger; True if it was."""
        eps = self.clip(eps)
        if self.size(eps) > self.size(self.best_eps) + 1e-12:
            self.best_eps = eps.copy()
            self.trace.append((self.elapsed(), self.size(eps)))
            self.notify("improved")
            return True
        return False
