"""Branch and bound: split the box (ReLU phases, or input intervals for small inputs) until bounds decide each part.

Sigmoid/Tanh pre-activations are split like ReLUs, at their inflection point 0 (each side is then convex or
concave); a neuron is split once, after which the input is bisected.

The property is an :class:`OutputSpec`: a disjunction of *clauses*, each a conjunction ``g_j(y) >= 0`` of affine
functions of the logits; the property is violated where some clause holds. A domain is proven when every clause
has a certificate row (one of its ``g_j``, or a convex combination of them, since ``min_j g_j <= Σ λ_j g_j``)
whose upper bound is below ``-ROBUST_TOLERANCE``. Top-k membership of target ``t``: the clauses are the k-subsets
``K`` of classes with ``g_c = y_c - y_t`` (the target leaves the top-k exactly when ``k`` margins are ``>= 0``), so
the k-th largest upper bound below zero proves it, and for ``k = 2`` a combination ``λ m_a + (1-λ) m_b`` can prove
a pair that neither margin proves alone. VNN-LIB regions map onto the same form.

The loop: the domains with the worst bound (largest :meth:`OutputSpec.value`) are taken from a priority queue in
batches; each is split on the ReLU whose relaxation costs its binding row the most (BaBSR-style score: the
row's coefficient on the ReLU times the intercept of its upper relaxation) or, for inputs of at most
``input_split_max_dim`` numbers, bisected along the input dimension with the largest ``|coefficient| × width``;
the children are bounded (:mod:`mlrobust.verify.bab_bounds`), proven ones are dropped and the rest queued. The input
corner that minimises each child's linear bound is checked on the network, and every few batches a PGD run starts
from the worst domains' corners; a point counts only once :mod:`mlrobust.verify.counterexample` confirms it. The
run stops on an empty queue (Robust), a confirmed counterexample (NotRobust), or the time or domain limit (Unknown,
with the worst remaining bound in ``stats``).
"""

from __future__ import annotations

import heapq
import itertools
import time
from dataclasses import dataclass, field, replace

import numpy as np

from mlrobust.bounds.alpha_crown import AlphaOptions, RowMix, tighten_intermediate
from mlrobust.bounds.crown import crown
from mlrobust.bounds.margin import linear_bounds
from mlrobust.bounds.result import Bounds
from mlrobust.errors import InputError
from mlrobust.ir.graph import Network
from mlrobust.ir.torch_exec import check_device
from mlrobust.milp.tightening import Tightened, tighten
from mlrobust.verify.attack import pgd
from mlrobust.verify.bab_bounds import AlphaEngine, Domain, DomainBound, SplitCrown
from mlrobust.verify.base import Mode
from mlrobust.verify.counterexample import (
    CheckedPoint,
    OutputProperty,
    TopKProperty,
    check_points,
    check_query,
)
from mlrobust.verify.milp_verifier import MilpVerifier
from mlrobust.verify.spec import Box
from mlrobust.verify.verdict import (
    ROBUST_TOLERANCE,
    NotRobust,
    Robust,
    Unknown,
    Verdict,
    WeakPoint,
)

#: Above this many k-subsets of candidate classes the top-k spec keeps single margins and the k-th largest rule.
MAX_CLAUSES = 256
#: Largest cost (rows × numbers on the back-substitution path, see :func:`_intermediate_cost`) of re-bounding the
#: last refined layer at the root: a fully connected 256x2 net on MNIST costs ~5e5 (0.6 s, its worst margin bound
#: 2.63 -> 2.46); the reference CNN ~2e7 (10 s for one unstable neuron fewer), which the share would only cut short.
ROOT_INTERMEDIATE_MAX_COST = 2_000_000
#: Weights of the pairwise convex combinations tried for k = 2.
PAIR_WEIGHTS = (0.25, 0.5, 0.75)


@dataclass
class OutputSpec:
    """Rows ``g_s(y) = rows[s] · y + consts[s]``; clause ``q`` is refuted on a domain when some row ``s`` with
    ``certs[q, s]`` has an upper bound ``< -ROBUST_TOLERANCE``. With ``kth`` set (and no clauses) the value is
    instead the ``kth`` largest upper bound of the rows (top-k with too many candidate classes to enumerate).
    ``prop`` is the property's margin on concrete points (violated where ``>= 0``) for attacks and checks.
    With ``mix`` each row is a convex combination of ``mix.base`` rows (``rows`` holds the starting weights') and
    the weights are optimised per domain by the α/β engine: any weights certify the clause (the minimum of the
    members is at most their weighted average), so the row's upper bound (and ``cap``) bound the clause's minimum.
    """

    rows: np.ndarray  # (S, C)
    consts: np.ndarray  # (S,)
    certs: np.ndarray  # (Q, S) bool
    prop: OutputProperty
    kth: int | None = None
    cap: np.ndarray | None = None  # (S,) upper bounds of the rows known on the whole box (so on every domain)
    floor: float = float("-inf")  # known bound of what the rows leave out (classes dropped from the clauses)
    mix: RowMix | None = None  # rows that are convex combinations of mix.base with weights optimised per domain

    def objective_mix(self) -> RowMix | None:
        """The row mixture in the bound engine's terms (lower bounds of ``-rows``), or None."""
        return None if self.mix is None else RowMix(-self.mix.base, self.mix.groups, self.mix.init)

    def upper(self, ub: np.ndarray) -> np.ndarray:
        """Row upper bounds of domains, capped by :attr:`cap`."""
        return ub if self.cap is None else np.minimum(ub, self.cap)

    def value(self, ub: np.ndarray) -> np.ndarray:
        """The worst clause's best certificate per domain (``ub``: ``(D, S)`` upper bounds) -> ``(D,)``."""
        ub = np.atleast_2d(self.upper(ub))
        if self.kth is not None:
            return -np.sort(-ub, axis=1)[:, self.kth - 1]
        if self.certs.shape[0] == 0:
            return np.full(ub.shape[0], -np.inf)
        best = np.where(self.certs[None], ub[:, None, :], np.inf).min(axis=2)  # (D, Q)
        return best.max(axis=1)

    def binding_row(self, ub: np.ndarray) -> int:
        """The row that decides :meth:`value` for one domain (``ub``: ``(S,)``): what branching should improve."""
        ub = self.upper(ub)
        if self.kth is not None:
            return int(np.argsort(-ub)[self.kth - 1])
        if self.certs.shape[0] == 0:
            return int(np.argmax(ub))
        best = np.where(self.certs, ub[None, :], np.inf)
        q = int(np.argmax(best.min(axis=1)))
        return int(np.argmin(best[q]))


def topk_spec(num_classes: int, target: int, k: int, margin_upper: np.ndarray | None = None,
              pair_weights: tuple[float, ...] = PAIR_WEIGHTS, mixed: bool = False) -> OutputSpec:
    """The top-k property of ``target``; ``margin_upper`` (``(C,)``): upper bounds of ``y_c - y_t`` known on the
    whole box (hence on every sub-domain).

    Classes whose known bound is below ``-ROBUST_TOLERANCE`` refute every clause they are in, so the rows are
    the margins of the other (candidate) classes and, for ``k = 2``, the combinations ``w m_a + (1-w) m_b`` of
    candidate pairs (``w`` in ``pair_weights``); for ``k > 2`` the average of each candidate k-subset (none at all
    when ``pair_weights`` is empty). With ``mixed`` (and ``pair_weights`` not empty) each candidate k-subset is one
    row instead, a :class:`RowMix` of its margins starting from the member with the smallest known bound (the
    average without known bounds), capped by that bound. With fewer
    candidates than ``k`` (already proven) or too many k-subsets, the rows are all margins and the value is the
    k-th largest upper bound.
    """
    others = np.delete(np.arange(num_classes), target)
    known = np.full(num_classes, np.inf) if margin_upper is None else np.asarray(margin_upper, dtype=np.float64)
    cand = others[known[others] >= -ROBUST_TOLERANCE]
    prop = TopKProperty(target, k)

    def margins(classes: np.ndarray) -> np.ndarray:
        rows = np.zeros((classes.size, num_classes))
        rows[np.arange(classes.size), classes] = 1.0
        rows[:, target] -= 1.0
        return rows

    if cand.size < k or _n_choose_k(cand.size, k) > MAX_CLAUSES:
        rows = margins(others)
        return OutputSpec(rows, np.zeros(others.size), np.zeros((0, others.size), dtype=bool), prop, kth=k,
                          cap=known[others].copy())
    singles = margins(cand)
    pos = {int(c): i for i, c in enumerate(cand)}
    dropped = np.setdiff1d(others, cand)
    # a clause with a dropped class is refuted by that class's known bound: the k-th largest margin is at most
    # the spec's value or the largest such bound
    floor = float(known[dropped].max()) if dropped.size else float("-inf")
    if mixed and pair_weights:
        subsets_idx = np.array([[pos[int(c)] for c in sub] for sub in itertools.combinations(cand, k)])
        groups = np.zeros((len(subsets_idx), cand.size), dtype=bool)
        np.put_along_axis(groups, subsets_idx, True, axis=1)
        # start from each subset's member with the smallest known bound: never worse than that single margin,
        # and the weights move towards a combination only where it is better
        best = subsets_idx[np.arange(len(subsets_idx)), np.argmin(known[cand][subsets_idx], axis=1)]
        init = np.zeros(groups.shape)
        init[np.arange(len(best)), best] = 1.0
        mix = RowMix(singles, groups, init if np.isfinite(known[cand]).all() else None)
        return OutputSpec(mix.coefficients(), np.zeros(groups.shape[0]), np.eye(groups.shape[0], dtype=bool), prop,
                          cap=known[cand][subsets_idx].min(axis=1), floor=floor, mix=mix)
    extra: list[np.ndarray] = []
    subsets = list(itertools.combinations([int(c) for c in cand], k))
    members: list[list[int]] = []
    weights = [] if not pair_weights else ([(w, 1.0 - w) for w in pair_weights] if k == 2 else [tuple([1.0 / k] * k)])
    for sub in subsets:
        mine = [pos[c] for c in sub]
        for w in weights:
            mine.append(cand.size + len(extra))
            extra.append(sum(wi * singles[pos[c]] for wi, c in zip(w, sub)))
        members.append(mine)
    rows = np.concatenate([singles, np.array(extra)]) if extra else singles
    certs = np.zeros((len(subsets), rows.shape[0]), dtype=bool)
    for q, mine in enumerate(members):
        certs[q, mine] = True
    cap = np.full(rows.shape[0], np.inf)
    cap[: cand.size] = known[cand]
    return OutputSpec(rows, np.zeros(rows.shape[0]), certs, prop, cap=cap, floor=floor)


def clause_spec(clauses: list, prop: OutputProperty) -> OutputSpec:
    """A VNN-LIB region's counterexample clauses ``G y <= h`` as an :class:`OutputSpec` (``g = h - G y``).

    Each clause of more than one row also gets the average of its rows as a certificate.
    """
    rows: list[np.ndarray] = []
    consts: list[float] = []
    members: list[list[int]] = []
    for cl in clauses:
        G, h = np.atleast_2d(np.asarray(cl.G, dtype=np.float64)), np.asarray(cl.h, dtype=np.float64).reshape(-1)
        mine = list(range(len(rows), len(rows) + h.size))
        rows.extend(-G)
        consts.extend(h)
        if h.size > 1:
            mine.append(len(rows))
            rows.append(-G.mean(axis=0))
            consts.append(float(h.mean()))
        members.append(mine)
    certs = np.zeros((len(members), len(rows)), dtype=bool)
    for q, mine in enumerate(members):
        certs[q, mine] = True
    return OutputSpec(np.array(rows), np.array(consts), certs, prop)


def _n_choose_k(n: int, k: int) -> int:
    from math import comb

    return comb(n, k)


@dataclass
class BabOptions:
    """Knobs of the branch and bound (defaults suit the reference architecture on two cores).

    ``batch_size``: domains split per round (their children are bounded together; 32 against 8: the same bounds per
    domain, +38 % domains/s on MNIST 256x2, +7 % on the reference CNN). ``max_domains``: domains
    bounded at most before giving up. ``branching``: "babsr" (score from the binding row's coefficients and the
    ReLU relaxation's intercept), "fsb" (the ``fsb_candidates`` best by that score, each tried by bounding its two
    children on the parent's bounds, with the parent's α/β in one batch for the whole round with ``fsb_batched``
    and the α/β engine, else with plain CROWN one domain at a time; the split whose worse child is best wins) or
    "widest" (largest ``u - l``). ``input_split_max_dim``: inputs of at most this
    many numbers are split by bisecting the box instead of ReLU phases. ``mixed_rows``: for top-k, one row per
    candidate k-subset whose margin weights the α/β engine optimises (instead of ``pair_weights``' fixed
    combinations plus every single margin). ``root_intermediate``: share of the time limit spent once, before
    branching, re-bounding the last refined pre-activation layer with α-CROWN (every domain inherits those bounds;
    anytime, so a large layer only gets that share). ``refresh_intermediate``: recompute each child's intermediate
    bounds by CROWN under its splits before α/β (off: a child keeps its parent's, with the split neurons clamped,
    and β carries the split constraints; measured faster to a proof on the reference CNN and MNIST 256x2, e.g.
    ``mnist2_pgd`` at 1.08× its searched neighborhood 17 s against 59 s). ``stall_share``: give up (Unknown, reason
    "stalled") once that share of the time limit has passed while the worst open bound has closed less than
    ``stall_progress`` of the root's gap to ``-ROBUST_TOLERANCE`` — for a verifier after which another tier (the
    cascade's MILP) may still decide the query; None: never. ``attack_every``: rounds between PGD runs
    from the worst domains' corners. ``time_limit``: default seconds when the caller gives none (honoured at the
    root and in every round: see :meth:`BabVerifier.run`). ``device``: where the α/β engine's tensors live ("cpu" or
    "cuda"; plain CROWN, the attacks and the MILP stay on the CPU).
    """

    batch_size: int = 32
    max_domains: int = 200_000
    branching: str = "fsb"
    input_split_max_dim: int = 16
    attack_every: int = 10
    attack_restarts: int = 8
    attack_steps: int = 40
    root_attack: bool = True
    time_limit: float | None = 60.0
    engine: str = "auto"
    alpha_iterations: int = 10
    refresh_intermediate: bool = False
    pair_weights: tuple[float, ...] = PAIR_WEIGHTS
    fsb_candidates: int = 4
    milp_share: float = 0.3
    milp_max_domains: int = 8
    mixed_rows: bool = True
    fsb_batched: bool = True
    root_intermediate: float = 0.05
    stall_share: float | None = None
    stall_progress: float = 0.1
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.branching not in BRANCHING:
            raise InputError(f"unknown branching {self.branching!r}; choose one of {', '.join(BRANCHING)}")
        if self.engine not in ENGINES:
            raise InputError(f"unknown bound engine {self.engine!r}; choose one of {', '.join(ENGINES)}")
        if self.batch_size < 1 or self.max_domains < 1:
            raise InputError("batch_size and max_domains must be positive")
        check_device(self.device)


BRANCHING = ("babsr", "fsb", "widest")
ENGINES = ("auto", "crown", "alpha")


@dataclass
class BabResult:
    """``status``: "proven", "violated" or "unknown"; ``bound``: the worst proven (or remaining) spec value."""

    status: str
    bound: float
    counterexample: CheckedPoint | None = None
    weak_points: list[WeakPoint] = field(default_factory=list)
    seconds: float = 0.0
    reason: str = ""
    stats: dict = field(default_factory=dict)


class _Queue:
    """Max-heap of domains by value (the worst first); ties broken by insertion order."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Domain]] = []
        self._count = itertools.count()

    def push(self, d: Domain) -> None:
        heapq.heappush(self._heap, (-d.value, next(self._count), d))

    def pop(self, n: int) -> list[Domain]:
        return [heapq.heappop(self._heap)[2] for _ in range(min(n, len(self._heap)))]

    def worst(self) -> float:
        return -self._heap[0][0] if self._heap else float("-inf")

    def peek(self, n: int) -> list[Domain]:
        return [d for _, _, d in heapq.nsmallest(n, self._heap)]

    def __len__(self) -> int:
        return len(self._heap)


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

        ``tightened`` (CROWN bounds of this box with the target's margin bounds, e.g. from the cascade's bound tier)
        saves the root's CROWN pass; ``attack=False`` skips the root PGD run (the cascade has run one already).
        """
        check_query(network, box, target, k)
        start = time.perf_counter()
        if tightened is None or tightened.target != target or tightened.margin_upper is None:
            tightened = tighten(network, box.lower, box.upper, "crown", target=int(target))
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

        The time limit holds at the root and in every round: the attacks, the root's α-CROWN re-bounding, CROWN
        refreshes and α/β optimisations all stop at the deadline (their bounds stay sound), the root gives Unknown
        if its first bound ends past it, and a round is not started when less time is left than the last round's
        splitting took. What can still run past it is work already started that is not anytime: one CROWN
        back-substitution layer of a refresh, the few fixed passes of one α/β call (CROWN's start, the warm start,
        the final float64 evaluation), one round's splitting, and CROWN over the box when ``root_bounds`` is not
        given."""
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

        def finish(status: str, bound: float, reason: str = "", cex: CheckedPoint | None = None) -> BabResult:
            secs = time.perf_counter() - start
            nodes = max(stats["domains"], 1)
            stats.update(seconds=secs, final_bound=bound, seconds_per_domain=stats["bound_seconds"] / nodes,
                         domains_per_second=stats["domains"] / secs if secs > 0 else 0.0)
            wps = sorted({id(p): p for p in best}.values(), key=lambda p: -p.margin)[:3]
            return BabResult(status, bound, cex, [p.weak_point() for p in wps], secs, reason, stats)

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
        engine = self._engine(network, input_split)
        rb = root_bounds if root_bounds is not None else crown(network, box.lower, box.upper)
        if (opts.root_intermediate > 0 and isinstance(engine, AlphaEngine) and limit is not None
                and _intermediate_cost(network, rb) <= ROOT_INTERMEDIATE_MAX_COST):
            # the last refined pre-activation layer re-bounded by α-CROWN once: every domain inherits it
            share = min(opts.root_intermediate * limit, _time_left(deadline))
            rb, rows = tighten_intermediate(network, rb, replace(engine.options, iterations=50, time_limit=share))
            stats["root_intermediate_rows"] = rows
        root = engine.root(box.lower, box.upper, rb.lower, rb.upper)
        if spec is None:
            target, k = topk  # type: ignore[misc]
            singles = topk_spec(network.num_classes, target, k, pair_weights=())  # every margin, no combinations
            first = engine.bound([root], _coeffs(singles), deadline)[0]
            ub = _upper(first, singles)
            if out_of_time():
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
        coeffs = _coeffs(spec)
        mix = spec.objective_mix()
        rootb = engine.bound([root], coeffs, deadline, mix=mix)[0]
        stats["bound_seconds"] += time.perf_counter() - t0
        stats["domains"] += 1
        stats["mode"] = "input" if input_split else "relu"
        stats["engine"] = engine.name
        stats["rows"] = int(spec.rows.shape[0])
        root_dom = self._absorb(rootb, spec)
        stats["root_bound"] = root_dom.value
        if root_dom.value < -ROBUST_TOLERANCE:
            return finish("proven", max(root_dom.value, spec.floor))
        queue = _Queue()
        queue.push(root_dom)
        proven_max = float("-inf")
        rounds = 0
        last_branch_seconds = 0.0  # what the last round's splitting took: the next one is not started without it
        while len(queue):
            handoff = self.milp is not None and topk is not None and len(queue) <= opts.milp_max_domains and (
                stats["domains"] >= opts.max_domains
                or (deadline is not None and deadline - time.perf_counter() <= opts.milp_share * (limit or 0.0)))
            if handoff:
                assert topk is not None
                status, bound, point = self._milp_handoff(network, box, engine, queue, topk, deadline, stats)
                if point is not None:
                    best.append(point)
                reason = "" if status != "unknown" else f"the MILP left open domains (worst bound {bound:.4g})"
                if status == "proven":
                    bound = max(bound, proven_max, spec.floor)
                return finish(status, bound, reason, point)
            if out_of_time():
                return finish("unknown", queue.worst(), f"time limit with {len(queue)} domains open "
                                                           f"(worst bound {queue.worst():.4g})")
            if (opts.stall_share is not None and limit is not None
                    and time.perf_counter() - start >= opts.stall_share * limit
                    and queue.worst() > root_dom.value - opts.stall_progress * (root_dom.value + ROBUST_TOLERANCE)):
                stats["stalled"] = True
                return finish("unknown", queue.worst(), f"stalled: the worst bound went from {root_dom.value:.4g} "
                                                           f"to {queue.worst():.4g} in {opts.stall_share:.0%} of the "
                                                           "time")
            if stats["domains"] >= opts.max_domains:
                return finish("unknown", queue.worst(), f"domain limit {opts.max_domains} reached "
                                                           f"(worst bound {queue.worst():.4g})")
            if deadline is not None and _time_left(deadline) < last_branch_seconds:
                # picking the splits is not anytime: a round that cannot finish it would only overrun the deadline
                return finish("unknown", queue.worst(), f"time limit with {len(queue)} domains open "
                                                           f"(worst bound {queue.worst():.4g})")
            rounds += 1
            stats["rounds"] = rounds
            batch = queue.pop(opts.batch_size)
            t0 = time.perf_counter()
            children = self._branch_all(engine, batch, input_split, coeffs)
            last_branch_seconds = time.perf_counter() - t0
            stats["branch_seconds"] += last_branch_seconds
            if out_of_time():
                for dom in batch:  # not split after all: they stay open
                    queue.push(dom)
                return finish("unknown", queue.worst(), f"time limit with {len(queue)} domains open "
                                                           f"(worst bound {queue.worst():.4g})")
            if not children:  # nothing left to split yet unproven: only possible with degenerate bounds
                return finish("unknown", max(d.value for d in batch), "a domain has no unstable ReLU to split "
                                                                       "and is not proven")
            t0 = time.perf_counter()
            open_rows = _open_rows(spec, children)
            stats["rows_bounded"] += len(children) * (spec.rows.shape[0] if open_rows is None else open_rows.size)
            results = engine.bound(children, coeffs, deadline, mix=mix, rows=open_rows)
            stats["bound_seconds"] += time.perf_counter() - t0
            stats["domains"] += len(children)
            corners = []
            for r in results:
                stats["max_depth"] = max(stats["max_depth"], r.domain.depth)
                if not r.feasible:
                    stats["infeasible"] += 1
                    continue
                dom = self._absorb(r, spec)
                if dom.value < -ROBUST_TOLERANCE:
                    proven_max = max(proven_max, dom.value)
                    continue
                queue.push(dom)
                if dom.input_coeff is not None:
                    corners.append(_corner(dom))
            # the corners that minimise the children's linear bounds: cheap candidates, checked in one batch
            if corners:
                pts = check_points(network, box, corners, prop)
                cex = max((p for p in pts if p.confirmed), key=lambda p: p.margin, default=None)
                best.extend(sorted(pts, key=lambda p: -p.margin)[:1])
                if cex is not None:
                    return finish("violated", float("inf"), "bound corner", cex)
            if len(queue) and rounds % opts.attack_every == 0 and not out_of_time():
                t0 = time.perf_counter()
                worst = queue.peek(4)
                starts = [_corner(d) for d in worst if d.input_coeff is not None]
                sub = box if not input_split else Box(worst[0].lower, worst[0].upper)
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
    def _milp_handoff(self, network: Network, box: Box, engine: SplitCrown | AlphaEngine, queue: _Queue,
                      topk: tuple[int, int], deadline: float | None, stats: dict
                      ) -> tuple[str, float, CheckedPoint | None]:
        """Decide every open domain with the MILP on the domain's own bounds (worst first).

        Returns ("proven", worst MILP bound, None), ("violated", inf, point) or ("unknown", worst open bound, None).
        """
        assert self.milp is not None
        target, k = topk
        crown_engine = engine if isinstance(engine, SplitCrown) else engine.crown
        domains = queue.pop(len(queue))
        worst = float("-inf")
        stats["milp_domains"] = 0
        t0 = time.perf_counter()
        try:
            for i, dom in enumerate(domains):
                refreshed = crown_engine.refresh(dom)
                if refreshed is None:
                    continue  # empty: nothing to prove there
                _, rec = refreshed
                bounds = Bounds(network, dict(rec.lower), dict(rec.upper), "crown")
                sub = Box(dom.lower, dom.upper)
                rows = np.eye(network.num_classes)
                rows[:, target] -= 1.0
                m_lo, m_hi = linear_bounds(network, sub.lower, sub.upper, rows, bounds=bounds)
                m_lo[target] = m_hi[target] = 0.0
                tight = Tightened(bounds, "crown", m_lo, m_hi, target)
                left = None if deadline is None else max(deadline - time.perf_counter(), 0.05) / (len(domains) - i)
                v = self.milp.verify(network, sub, target, k, "decide", left, tightened=tight)
                stats["milp_domains"] += 1
                if isinstance(v, NotRobust) and v.counterexample is not None:
                    point = check_points(network, box, [v.counterexample], TopKProperty(target, k))[0]
                    if point.confirmed:
                        return "violated", float("inf"), point
                if not isinstance(v, Robust):
                    for d in domains[i:]:
                        queue.push(d)
                    return "unknown", queue.worst(), None
                worst = max(worst, float(v.bound))
        finally:
            stats["milp_seconds"] = time.perf_counter() - t0
        return "proven", worst, None

    def _engine(self, network: Network, input_split: bool) -> SplitCrown | AlphaEngine:
        """The bound engine: α/β-CROWN for ReLU splitting, plain CROWN (with input coefficients) for input
        bisection, unless the options name one."""
        opts = self.options
        name = opts.engine if opts.engine != "auto" else ("crown" if input_split else "alpha")
        if name == "crown":
            return SplitCrown(network)
        return AlphaEngine(network, AlphaOptions(iterations=opts.alpha_iterations, device=opts.device),
                           refresh=opts.refresh_intermediate)

    @staticmethod
    def _absorb(r: DomainBound, spec: OutputSpec) -> Domain:
        """The refreshed domain with its value and the binding row's coefficients (what branching needs)."""
        ub = _upper(r, spec)
        dom = r.domain
        if dom.row_upper is not None:  # the parent's bounds hold on the child too
            ub = np.minimum(ub, dom.row_upper)
        dom.row_upper = ub
        dom.value = float(spec.value(ub[None])[0])
        row = spec.binding_row(ub)
        dom.binding = row
        at = row  # the binding row's place among the rows bounded
        if r.rows is not None:
            hit = np.flatnonzero(r.rows == row)
            if hit.size == 0:  # the binding row was not bounded: its clause was proven before
                dom.objective, dom.relu_coeff, dom.input_coeff = None, {}, None
                return dom
            at = int(hit[0])
        dom.objective = None if r.coeffs is None else r.coeffs[at]
        dom.relu_coeff = {n: c[at].astype(np.float32) for n, c in r.relu_coeff.items()}
        dom.input_coeff = None if r.input_coeff is None else r.input_coeff[at].astype(np.float32)
        return dom

    def _branch_all(self, engine: SplitCrown | AlphaEngine, batch: list[Domain], input_split: bool,
                    coeffs: np.ndarray) -> list[Domain]:
        """The children of every domain of a batch. With FSB on the α/β engine the candidate splits of all the
        domains are scored in one batched bound (from each parent's optimised parameters); otherwise one domain
        at a time."""
        if (input_split or self.options.branching != "fsb" or not isinstance(engine, AlphaEngine)
                or not self.options.fsb_batched):
            return [c for d in batch for c in self._branch(engine, d, input_split, coeffs)]
        cands = [self._relu_candidates(engine, d) for d in batch]
        scored = [i for i, c in enumerate(cands) if len(c) > 1 and batch[i].binding is not None]
        picks: list[tuple[str, str, int] | None] = [c[0][1:] if c else None for c in cands]
        if scored:
            doms = [batch[i] for i in scored]
            objectives = np.stack([d.objective if d.objective is not None else coeffs[d.binding] for d in doms])
            choices = [[c[1:] for c in cands[i][: self.options.fsb_candidates]] for i in scored]
            scores = engine.split_scores(doms, objectives, choices)
            for i, mine, sc in zip(scored, choices, scores):
                picks[i] = mine[int(np.argmax(sc.min(axis=1)))]
        children: list[Domain] = []
        for dom, pick in zip(batch, picks):
            if pick is None:
                children.extend(self._branch(engine, dom, True, coeffs))  # no unstable ReLU left: split the input
            else:
                node, tensor, idx = pick
                children.extend([dom.child(node, tensor, idx, +1), dom.child(node, tensor, idx, -1)])
        return children

    def _branch(self, engine: SplitCrown | AlphaEngine, dom: Domain, input_split: bool,
                coeffs: np.ndarray | None = None) -> list[Domain]:
        if not input_split:
            choice = self._pick_relu(engine, dom, coeffs)
            if choice is not None:
                node, tensor, idx = choice
                return [dom.child(node, tensor, idx, +1), dom.child(node, tensor, idx, -1)]
        # input bisection: the mode for small inputs, and the fallback once no unstable ReLU is left (the
        # remaining looseness is in MaxPool relaxations, which shrink with the box)
        width = dom.upper - dom.lower
        score = width.reshape(-1).copy()
        if dom.input_coeff is not None:
            score = score * (np.abs(dom.input_coeff.reshape(-1)) + 1e-12)
        i = int(np.argmax(score))
        if width.reshape(-1)[i] <= 0:
            return []
        mid = dom.lower.reshape(-1)[i] + width.reshape(-1)[i] / 2.0
        hi1, lo2 = dom.upper.copy(), dom.lower.copy()
        hi1.reshape(-1)[i] = mid
        lo2.reshape(-1)[i] = mid
        return [dom.child(lower=dom.lower, upper=hi1), dom.child(lower=lo2, upper=dom.upper)]

    def _pick_relu(self, engine: SplitCrown | AlphaEngine, dom: Domain,
                   coeffs: np.ndarray | None = None) -> tuple[str, str, int] | None:
        """The unstable, unsplit ReLU with the best score (vectorised per layer); with "fsb", the best of the top
        ``fsb_candidates`` by that score after bounding both children of each with plain CROWN."""
        scored = self._relu_candidates(engine, dom)
        if not scored:
            return None
        if self.options.branching != "fsb" or coeffs is None or dom.binding is None or len(scored) == 1:
            return scored[0][1:]
        objective = dom.objective if dom.objective is not None else coeffs[dom.binding]
        choices = [c[1:] for c in scored[: self.options.fsb_candidates]]
        crown_engine = engine if isinstance(engine, SplitCrown) else engine.crown
        children = crown_engine.split_scores(dom, objective, choices)
        return choices[int(np.argmax(children.min(axis=1)))]

    def _relu_candidates(self, engine: SplitCrown | AlphaEngine, dom: Domain) -> list[tuple[float, str, str, int]]:
        """Unstable, unsplit ReLUs ``(score, node, tensor, flat index)``, best first: the ``fsb_candidates`` best
        of each layer by the heuristic score (BaBSR's, or the width for "widest")."""
        scored: list[tuple[float, str, str, int]] = []
        for n in engine.relu_nodes:
            t = n.inputs[0]
            lo = dom.pre_lower[t].astype(np.float64).reshape(-1)
            hi = dom.pre_upper[t].astype(np.float64).reshape(-1)
            free = (lo < 0) & (hi > 0) & (dom.splits[n.name].reshape(-1) == 0)
            if not free.any():
                continue
            width = np.where(free, hi - lo, 1.0)
            icpt = np.where(free, -lo * hi / width, 0.0)  # intercept of the upper relaxation u(z - l)/(u - l)
            if self.options.branching in ("babsr", "fsb") and n.name in dom.relu_coeff:
                lam = dom.relu_coeff[n.name].astype(np.float64).reshape(-1)
                # a negative coefficient pays the upper relaxation's intercept; a positive one the lower line's
                # gap (at most min(u, -l)); the intercept is what a split removes outright
                score = np.maximum(-lam, 0.0) * icpt + 0.25 * np.maximum(lam, 0.0) * np.minimum(hi, -lo)
                score = np.where(free, score + 1e-9 * icpt, -np.inf)
            else:
                score = np.where(free, width, -np.inf)
            top = np.argsort(-score)[: max(1, self.options.fsb_candidates)]
            scored.extend((float(score[i]), n.name, t, int(i)) for i in top if np.isfinite(score[i]))
        scored.sort(key=lambda c: -c[0])
        return scored


def _open_rows(spec: OutputSpec, domains: list[Domain]) -> np.ndarray | None:
    """The rows worth bounding for a batch: the certificate rows of every clause some domain has not refuted yet
    (by its parent's bounds); None when that is every row (or the spec has no clauses, the k-th largest rule)."""
    if spec.kth is not None or spec.certs.shape[0] == 0 or any(d.row_upper is None for d in domains):
        return None
    ub = spec.upper(np.stack([d.row_upper for d in domains if d.row_upper is not None]))  # (D, S)
    refuted = np.where(spec.certs[None], ub[:, None, :], np.inf).min(axis=2) < -ROBUST_TOLERANCE  # (D, Q)
    open_clauses = ~refuted.all(axis=0)
    rows = np.flatnonzero(spec.certs[open_clauses].any(axis=0))
    return None if rows.size == spec.rows.shape[0] else rows


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


def _time_left(deadline: float | None) -> float:
    """Seconds until ``deadline`` (never negative; infinite without one)."""
    return float("inf") if deadline is None else max(deadline - time.perf_counter(), 0.0)


def _coeffs(spec: OutputSpec) -> np.ndarray:
    """Lower-bound objectives whose values give the rows' upper bounds: ``-rows`` (constants added later)."""
    return -spec.rows


def _upper(r: DomainBound, spec: OutputSpec) -> np.ndarray:
    """Upper bounds of the spec's rows from a lower-bound result on ``-rows``."""
    return -r.lower + spec.consts


def _corner(dom: Domain) -> np.ndarray:
    """The domain's input corner minimising the binding row's linear lower bound (a likely violation)."""
    assert dom.input_coeff is not None
    a = dom.input_coeff.reshape(dom.lower.shape)
    return np.where(a >= 0, dom.lower, dom.upper)
