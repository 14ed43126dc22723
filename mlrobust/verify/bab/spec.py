"""What a branch-and-bound domain must prove: the property as clauses of affine rows of the logits.

The property is an :class:`OutputSpec`: a disjunction of *clauses*, each a conjunction ``g_j(y) >= 0`` of affine
functions of the logits; the property is violated where some clause holds. A domain is proven when every clause
has a certificate row (one of its ``g_j``, or a convex combination of them, since ``min_j g_j <= Σ λ_j g_j``)
whose upper bound is below ``-ROBUST_TOLERANCE``. Top-k membership of target ``t``: the clauses are the k-subsets
``K`` of classes with ``g_c = y_c - y_t`` (the target leaves the top-k exactly when ``k`` margins are ``>= 0``), so
the k-th largest upper bound below zero proves it, and for ``k = 2`` a combination ``λ m_a + (1-λ) m_b`` can prove
a pair that neither margin proves alone. VNN-LIB regions map onto the same form. Every function here works on all
domains of a batch at once (``(D, S)`` row bounds).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from mlrobust.bounds.alpha_crown import RowMix
from mlrobust.verify.counterexample import OutputProperty, TopKProperty
from mlrobust.verify.verdict import ROBUST_TOLERANCE

#: Above this many k-subsets of candidate classes the top-k spec keeps single margins and the k-th largest rule.
MAX_CLAUSES = 256
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

    def binding_rows(self, ub: np.ndarray) -> np.ndarray:
        """The row deciding :meth:`value` for each domain (``ub``: ``(D, S)``) -> ``(D,)``: what branching should
        improve."""
        ub = np.atleast_2d(self.upper(ub))
        if self.kth is not None:
            return np.argsort(-ub, axis=1, kind="stable")[:, self.kth - 1]
        if self.certs.shape[0] == 0:
            return np.argmax(ub, axis=1)
        best = np.where(self.certs[None], ub[:, None, :], np.inf)  # (D, Q, S)
        q = np.argmax(best.min(axis=2), axis=1)  # the worst clause of each domain
        return np.argmin(best[np.arange(ub.shape[0]), q], axis=1)

    def binding_row(self, ub: np.ndarray) -> int:
        """:meth:`binding_rows` of one domain (``ub``: ``(S,)``)."""
        return int(self.binding_rows(np.asarray(ub)[None])[0])


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


def open_rows(spec: OutputSpec, row_upper: np.ndarray) -> np.ndarray | None:
    """The rows worth bounding for a batch whose known row bounds are ``row_upper`` ``(D, S)`` (``+inf`` where
    nothing is known): the certificate rows of every clause some domain has not refuted yet; None when that is
    every row (or the spec has no clauses, the k-th largest rule)."""
    if spec.kth is not None or spec.certs.shape[0] == 0:
        return None
    ub = spec.upper(np.atleast_2d(row_upper))  # (D, S)
    refuted = np.where(spec.certs[None], ub[:, None, :], np.inf).min(axis=2) < -ROBUST_TOLERANCE  # (D, Q)
    open_clauses = ~refuted.all(axis=0)
    rows = np.flatnonzero(spec.certs[open_clauses].any(axis=0))
    return None if rows.size == spec.rows.shape[0] else rows


def objective_coeffs(spec: OutputSpec) -> np.ndarray:
    """Lower-bound objectives whose values give the rows' upper bounds: ``-rows`` (constants added later)."""
    return -spec.rows


def row_upper_bounds(lower: np.ndarray, spec: OutputSpec) -> np.ndarray:
    """Upper bounds of the spec's rows from lower bounds of ``-rows`` (any leading shape)."""
    return -lower + spec.consts
