"""Branching strategies: which neurons (or input dimensions) to split, ranked for every domain of a batch at once.

Every strategy follows :class:`Branching`: ``rank(doms, count)`` returns, per domain, its ``count`` best
splits as :class:`Choices` (node index and flat neuron index into that node's input, or ``INPUT`` and an input
coordinate, best first; ``-1`` where a domain has fewer candidates). Scores are computed on ``(D, neurons)`` arrays per ReLU node; the only
loops run over the network's ReLU nodes and, for FSB on the plain-CROWN engine, over domains (that engine bounds one
domain at a time anyway).

- :class:`BabsrBranching` — BaBSR-style: a neuron whose coefficient ``λ`` in the binding row's bound is negative
  pays its upper relaxation's intercept ``-l u / (u - l)``, a positive one the lower line's gap (at most
  ``min(u, -l)``); the intercept is what a split removes outright. Without coefficients: the width. With window
  splits (a layout with ``pool_nodes``), every MaxPool window with two or more inputs that may still attain its
  maximum is a candidate too (:func:`window_scores`): the coefficient reaching the window's output times the gap
  of its upper line (the second-largest upper bound of those inputs less their largest lower bound); its choices
  have ``layer`` = the number of ReLU nodes + the pool node's position, ``index`` the flat window.
- :class:`WidestBranching` — the widest unstable neuron ``u - l``.
- :class:`FsbBranching` — filtered smart branching: BaBSR's ``candidates`` best, each tried by bounding its two
  children on the parent's bounds at the parent's α/β (all candidates of all domains in one
  :func:`~mlrobust.bounds.alpha_crown.bounds_at` pass) or with plain CROWN; the split whose worse child is best wins.
  No scoring pass starts that would not end before its deadline at the last pass's rate: the domains not scored
  keep BaBSR's order. With window splits, BaBSR's ``pool_candidates`` best windows are tried alongside
  (separately ranked: the two scores are not on one scale), so the split whose worse child is best wins, ReLU or
  window; a window candidate's children start with that window's pool parameters reset to CROWN's, as the real
  children do (:func:`~mlrobust.verify.bab.split.split_windows`).
- :class:`InputBisection` — input dimensions by ``|coefficient| × width`` (the width alone without coefficients),
  for small inputs and once no unstable neuron is left; its choices have ``layer == INPUT``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np
import torch

from mlrobust.bounds.alpha_crown import bounds_at
from mlrobust.verify.bab.bounding import Engine, as_batch, domain_views, state_of
from mlrobust.verify.bab.split import split_choices, window_entries
from mlrobust.verify.bab.store import DomainLayout, Domains
from mlrobust.verify.bab_bounds import AlphaEngine, SplitCrown

#: ``Choices.layer`` of an input dimension (its ``index`` is the flat input coordinate).
INPUT = -2


@dataclass
class Choices:
    """Ranked splits per domain, best first: ``layer`` ``(D, K)`` into the layout's ReLU nodes (``INPUT``: an input
    dimension; -1: none), ``index`` ``(D, K)`` flat neuron (or input) indices, ``score`` ``(D, K)`` (``-inf`` where
    there is none)."""

    layer: np.ndarray
    index: np.ndarray
    score: np.ndarray

    @property
    def available(self) -> np.ndarray:
        """How many splits each domain has ``(D,)``."""
        return (self.layer != -1).sum(axis=1)

    def first(self, levels: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``levels`` best splits of every domain, ``(D, levels)`` each."""
        return self.layer[:, :levels], self.index[:, :levels]


class Branching(Protocol):
    """Ranks the ReLU splits of a batch of domains (see the module docstring)."""

    name: str

    def rank(self, doms: Domains, count: int) -> Choices: ...


def unstable(doms: Domains, layout: DomainLayout, r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pre-activation bounds ``(D, n)`` of ReLU node ``r`` (float64) and which neurons are free to split."""
    t, name = layout.relu_tensors[r], layout.relu_nodes[r]
    d = doms.size
    lo = doms.pre_lower[t].reshape(d, -1).astype(np.float64)
    hi = doms.pre_upper[t].reshape(d, -1).astype(np.float64)
    free = (lo < 0) & (hi > 0) & (doms.splits[name].reshape(d, -1) == 0)
    return lo, hi, free


def top_choices(scores: list[np.ndarray], count: int) -> Choices:
    """The ``count`` best entries per domain over every node's scores (``(D, n_r)`` each, ``-inf``: not a
    candidate), best first; ties keep the node order and then the neuron order."""
    d = scores[0].shape[0] if scores else 0
    layers, indices, values = [], [], []
    for r, s in enumerate(scores):
        k = min(count, s.shape[1])
        if k == 0:
            continue
        # a stable order among equal scores: sort the top-k block itself
        part = np.argpartition(-s, k - 1, axis=1)[:, :k] if k < s.shape[1] else np.tile(np.arange(k), (d, 1))
        vals = np.take_along_axis(s, part, axis=1)
        order = np.lexsort((part, -vals), axis=1)
        part, vals = np.take_along_axis(part, order, axis=1), np.take_along_axis(vals, order, axis=1)
        layers.append(np.full((d, k), r))
        indices.append(part)
        values.append(vals)
    if not values:
        return Choices(np.full((d, 0), -1), np.zeros((d, 0), dtype=np.int64), np.zeros((d, 0)))
    layer, index, value = np.concatenate(layers, 1), np.concatenate(indices, 1), np.concatenate(values, 1)
    order = np.argsort(-value, axis=1, kind="stable")[:, :count]
    layer, index, value = (np.take_along_axis(a, order, axis=1) for a in (layer, index, value))
    none = ~np.isfinite(value)
    return Choices(np.where(none, -1, layer), np.where(none, 0, index), np.where(none, -np.inf, value))


def window_scores(doms: Domains, layout: DomainLayout, p: int) -> np.ndarray:
    """BaBSR-like scores ``(D, P)`` of the windows of pool node ``layout.pool_nodes[p]``: ``|c| × gap`` with ``c``
    the binding row's coefficient on the window's output (without one, the gap alone) and ``gap`` the second-largest
    upper bound of the inputs that may still attain the window's maximum less the largest lower bound of the
    window's inputs (what the upper line's chord concedes, and what a split can win back); ``-inf`` for a window
    whose gap is not positive (at most one input can exceed what the maximum is known to be: a split would change
    nothing, e.g. a window of inactive ReLUs' outputs, all ``[0, 0]``)."""
    d = doms.size
    n_win = layout.pool_windows[p].shape[0]
    rows, windows = np.repeat(np.arange(d), n_win), np.tile(np.arange(n_win), d)
    lo, hi, _, live = window_entries(doms, layout, p, rows, windows)
    top_hi = np.sort(np.where(live, hi, -np.inf), axis=1)
    second = top_hi[:, -2] if top_hi.shape[1] > 1 else np.full(rows.size, -np.inf)
    floor = lo.max(axis=1)  # the maximum is at least every input's lower bound (padding: -inf)
    open_ = (live.sum(axis=1) >= 2) & (second > floor)
    gap = np.where(open_, second - np.where(open_, floor, 0.0), 0.0).reshape(d, n_win)
    c = doms.pool_coeff[layout.pool_nodes[p]].reshape(d, -1).astype(np.float64)
    known = ~np.isnan(c).any(axis=1, keepdims=True)
    score = np.where(known, np.abs(np.nan_to_num(c)) * gap, gap) + 1e-9 * gap
    return np.where(open_.reshape(d, n_win), score, -np.inf)


class WidestBranching:
    """The widest unstable, unsplit neurons ``u - l``."""

    name = "widest"

    def __init__(self, layout: DomainLayout):
        self.layout = layout

    def rank(self, doms: Domains, count: int) -> Choices:
        scores = []
        for r in range(len(self.layout.relu_nodes)):
            lo, hi, free = unstable(doms, self.layout, r)
            scores.append(np.where(free, hi - lo, -np.inf))
        return top_choices(scores, count)


class BabsrBranching:
    """BaBSR-style scores from the binding row's coefficients on the ReLU outputs (the width where a domain has
    none)."""

    name = "babsr"

    def __init__(self, layout: DomainLayout):
        self.layout = layout

    def rank(self, doms: Domains, count: int) -> Choices:
        return top_choices(self.scores(doms), count)

    def scores(self, doms: Domains) -> list[np.ndarray]:
        """Scores ``(D, n)`` per ReLU node, then per MaxPool node whose windows may be split (``-inf``: not a
        candidate), in the order of :class:`Choices`' ``layer``."""
        scores = []
        for r, name in enumerate(self.layout.relu_nodes):
            lo, hi, free = unstable(doms, self.layout, r)
            width = np.where(free, hi - lo, 1.0)
            icpt = np.where(free, -lo * hi / width, 0.0)  # intercept of the upper relaxation u(z - l)/(u - l)
            lam = doms.relu_coeff[name].reshape(doms.size, -1).astype(np.float64)
            known = ~np.isnan(lam).any(axis=1, keepdims=True)
            lam = np.nan_to_num(lam)
            score = np.maximum(-lam, 0.0) * icpt + 0.25 * np.maximum(lam, 0.0) * np.minimum(hi, -lo) + 1e-9 * icpt
            scores.append(np.where(free, np.where(known, score, hi - lo), -np.inf))
        scores.extend(window_scores(doms, self.layout, p) for p in range(len(self.layout.pool_nodes)))
        return scores


class FsbBranching:
    """Filtered smart branching: BaBSR's ``candidates`` best, re-ranked by the worse of their two children's
    bounds of the binding row on the parent's bounds (the α/β engine: at the parent's parameters, batched passes
    of at most ``max_children`` children when ``batched``; otherwise plain CROWN per domain). Scoring is not
    needed for soundness, only for good splits: no pass starts that would not end before ``deadline`` (a
    ``time.perf_counter()`` value) at the last pass's seconds per child (before the first, the engine's last final
    evaluation's, and its memory probe's), and the domains left unscored keep BaBSR's order (:attr:`fallbacks`
    counts them)."""

    name = "fsb"

    def __init__(self, layout: DomainLayout, engine: Engine, coeffs: np.ndarray, candidates: int = 4,
                 batched: bool = True, max_children: int = 64, deadline: float | None = None,
                 pool_candidates: int = 2):
        self.layout = layout
        self.engine = engine
        self.coeffs = coeffs  # (S, C) lower-bound objectives of the spec's rows
        self.candidates = max(1, candidates)
        #: windows tried besides the ReLU candidates (only with a layout with ``pool_nodes``)
        self.pool_candidates = max(0, pool_candidates) if layout.pool_nodes else 0
        self.batched = batched
        # Children bounded in one pass: a round's candidates make 2 x candidates children per domain, four times
        # the round's own batch with the defaults, each with its copy of every pre-activation's bounds and its
        # relaxations (on the 64x64 reference CNN the scoring pass held 0.7 GB more than the bounding step).
        self.max_children = max(1, int(max_children))
        self.babsr = BabsrBranching(layout)
        self.deadline = deadline
        #: domains ranked by BaBSR alone because their scoring pass would not have ended before the deadline
        self.fallbacks = 0
        #: seconds per child of the last scoring pass (per domain on the CROWN path): a pass is not started unless
        #: it ends before the deadline at that rate
        self.child_seconds = 0.0

    def _pass_seconds(self, children: int) -> float:
        """Expected seconds of a scoring pass over ``children`` children: at the last pass's rate, or before the
        first, as long as the engine's last final evaluation (one pass over the domains it bounded)."""
        if self.child_seconds > 0.0 or not isinstance(self.engine, AlphaEngine):
            return self.child_seconds * children
        return self.engine.costs.final_seconds

    def _fits(self, seconds: float) -> bool:
        """Whether work of ``seconds`` started now ends before the deadline."""
        return self.deadline is None or time.perf_counter() + seconds <= self.deadline

    def rank(self, doms: Domains, count: int) -> Choices:
        if self.pool_candidates:
            return self._rank_with_windows(doms, count)
        ch = self.babsr.rank(doms, max(self.candidates, count))
        scored = (doms.binding >= 0) & (ch.available > 1)
        if not scored.any():
            return Choices(ch.layer[:, :count], ch.index[:, :count], ch.score[:, :count])
        k = self.candidates
        sel = np.flatnonzero(scored)
        sel, layer, index, fsb = self._worse_children(doms, sel, ch.layer[sel, :k], ch.index[sel, :k])
        order = np.argsort(-fsb, axis=1, kind="stable")
        layer, index = np.take_along_axis(layer, order, 1), np.take_along_axis(index, order, 1)
        fsb = np.take_along_axis(fsb, order, 1)
        out_layer, out_index, out_score = ch.layer.copy(), ch.index.copy(), ch.score.copy()
        out_layer[sel, :k], out_index[sel, :k], out_score[sel, :k] = layer, index, fsb
        return Choices(out_layer[:, :count], out_index[:, :count], out_score[:, :count])

    def _worse_children(self, doms: Domains, sel: np.ndarray, layer: np.ndarray, index: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Domains ``sel`` of ``doms`` with their candidates ``(layer, index)`` ``(D', k)`` scored by bounding both
        children: those scored before the deadline, their candidates and each candidate's worse child's bound
        (``-inf`` for an absent candidate)."""
        sub = doms.take(sel)
        objective = np.where(np.isnan(sub.objective), self.coeffs[sub.binding], sub.objective)
        if self.batched and isinstance(self.engine, AlphaEngine):
            children = self._alpha_scores(sub, layer, index, objective)
        else:
            children = self._crown_scores(sub, layer, index, objective)
        done = ~np.isnan(children).any(axis=(1, 2))  # NaN: the deadline came before the domain's pass
        self.fallbacks += int((~done).sum())
        sel, layer, index, children = sel[done], layer[done], index[done], children[done]
        return sel, layer, index, np.where(layer >= 0, children.min(axis=2), -np.inf)

    def _rank_with_windows(self, doms: Domains, count: int) -> Choices:
        """:meth:`rank` with window candidates: BaBSR's ``candidates`` best ReLU splits and ``pool_candidates`` best
        window splits (ranked apart), re-ranked together by the worse child's bound; the domains not scored keep
        BaBSR's order over both kinds."""
        scores = self.babsr.scores(doms)
        relus = len(self.layout.relu_nodes)
        ch = top_choices(scores, count)
        only_relu = top_choices([s if r < relus else np.full_like(s, -np.inf) for r, s in enumerate(scores)],
                                self.candidates)
        only_win = top_choices([s if r >= relus else np.full_like(s, -np.inf) for r, s in enumerate(scores)],
                               self.pool_candidates)
        layer_all = np.concatenate([only_relu.layer, only_win.layer], axis=1)
        index_all = np.concatenate([only_relu.index, only_win.index], axis=1)
        scored = (doms.binding >= 0) & ((layer_all != -1).sum(axis=1) > 1)
        if not scored.any():
            return ch
        sel = np.flatnonzero(scored)
        sel, layer, index, fsb = self._worse_children(doms, sel, layer_all[sel], index_all[sel])
        # best first, absent candidates last (an unscored window's -inf must not fall behind one)
        order = np.lexsort((-fsb, layer < 0), axis=1)
        layer, index = np.take_along_axis(layer, order, 1), np.take_along_axis(index, order, 1)
        fsb = np.take_along_axis(fsb, order, 1)
        width = max(count, layer.shape[1])
        out_layer, out_index, out_score = (np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=v)
                                           for a, v in ((ch.layer, -1), (ch.index, 0), (ch.score, -np.inf)))
        out_layer[sel], out_index[sel], out_score[sel] = -1, 0, -np.inf
        k = layer.shape[1]
        out_layer[sel, :k], out_index[sel, :k], out_score[sel, :k] = (np.where(layer >= 0, layer, -1), index, fsb)
        return Choices(out_layer[:, :count], out_index[:, :count], out_score[:, :count])

    def _alpha_scores(self, doms: Domains, layer: np.ndarray, index: np.ndarray,
                      objective: np.ndarray) -> np.ndarray:
        """``(D, k, 2)`` lower bounds of each domain's objective on the two children of each candidate, in passes
        of at most :attr:`max_children` children (at least one domain's); each child's bound is its own, so the
        passes change what is held at once, not the scores (bit for bit on the tests' networks). NaN for the
        domains whose pass the deadline came before."""
        d, k = layer.shape
        step = max(1, self.max_children // (2 * k))
        out = np.full((d, k, 2), np.nan)
        assert isinstance(self.engine, AlphaEngine)
        for start in range(0, d, step):
            part = np.arange(start, min(d, start + step))
            if not self._fits(self.engine.probe_seconds() + self._pass_seconds(2 * k * part.size)):
                break
            out[part] = self._alpha_scores_of(doms, part, layer[part], index[part], objective[part])
        return out

    def _alpha_scores_of(self, doms: Domains, part: np.ndarray, layer: np.ndarray, index: np.ndarray,
                         objective: np.ndarray) -> np.ndarray:
        """:meth:`_alpha_scores` of the domains ``part`` of ``doms`` (``layer`` and the others: theirs)."""
        assert isinstance(self.engine, AlphaEngine)
        d, k = layer.shape
        # the children are scored on one row, their parent's binding row: only that row of the warm start is
        # copied to the 2k children of each parent (not every row's, S times the memory)
        at, rows_of = torch.as_tensor(doms.binding[part]), torch.as_tensor(part)
        one = {key: v[rows_of.to(v.device), at.to(v.device)][:, None] for key, v in doms.warm.items()}
        parents = replace(doms, warm={}).take(np.repeat(part, k))
        flat_layer, flat_index = layer.reshape(-1, 1), index.reshape(-1, 1)
        valid = flat_layer[:, 0] >= 0
        # an absent candidate is scored as a split of neuron 0 of node 0 and masked out afterwards
        if self.pool_candidates and self.engine.keep_warm and one:
            # the children carry their parent's row of the warm start, so that a window split resets the split
            # window's pool parameters (its threshold relative to the parent's window would keep the parent's
            # chord, e.g. the constant u_j for a window restricted to j)
            parents.warm = {key: v[torch.as_tensor(np.repeat(np.arange(d), k)).to(v.device)]
                            for key, v in one.items()}
        kids = split_choices(parents, self.layout, np.where(valid[:, None], flat_layer, 0),
                             np.where(valid[:, None], flat_index, 0), self.engine.support)
        owner = torch.as_tensor(np.repeat(np.arange(d), 2 * k))
        coeffs = np.repeat(objective, 2 * k, axis=0)[:, None, :]
        batch = as_batch(kids)
        # in chunks under the engine's memory budget (each child's bound is its own: the same in any chunk)
        step = self.engine.chunk_size(batch, 1)
        lower = np.full((kids.size, 1), np.nan)
        for start in range(0, kids.size, step):
            sel = np.arange(start, min(start + step, kids.size))
            if not self._fits(self._pass_seconds(sel.size)):
                break  # NaN: not scored
            t0 = time.perf_counter()
            warm = None
            if self.engine.keep_warm and kids.warm:
                warm = self.engine.own(state_of({key: v[torch.as_tensor(sel).to(v.device)]
                                                 for key, v in kids.warm.items()}))
            elif self.engine.keep_warm and one:
                # each child starts from its parent's parameters of the row being scored
                warm = self.engine.own(state_of({key: v[owner[sel].to(v.device)] for key, v in one.items()}))
            lower[sel] = bounds_at(self.engine.network, batch.select(sel), coeffs[sel], warm,
                                   device=self.engine.options.device, support=self.engine.support)
            self.child_seconds = (time.perf_counter() - t0) / sel.size
        return lower[:, 0].reshape(d, k, 2)

    def _crown_scores(self, doms: Domains, layer: np.ndarray, index: np.ndarray,
                      objective: np.ndarray) -> np.ndarray:
        crown = self.engine if isinstance(self.engine, SplitCrown) else self.engine.crown
        out = np.full((*layer.shape, 2), -np.inf)
        for i, dom in enumerate(domain_views(doms, self.layout)):
            if not self._fits(self.child_seconds):
                out[i:] = np.nan  # not scored
                break
            t0 = time.perf_counter()
            # plain CROWN does not read window restrictions: window candidates stay unscored (ranked last)
            ok = np.flatnonzero((layer[i] >= 0) & (layer[i] < len(self.layout.relu_nodes)))
            choices = [(self.layout.relu_nodes[layer[i, j]], self.layout.relu_tensors[layer[i, j]],
                        int(index[i, j])) for j in ok]
            if choices:
                out[i, ok] = crown.split_scores(dom, objective[i], choices)
            self.child_seconds = time.perf_counter() - t0
        return out


class InputBisection:
    """Input dimensions to bisect, best first: ``|coefficient| × width`` (the width where a domain has no input
    coefficients); dimensions of zero width are never chosen."""

    name = "input"

    def rank(self, doms: Domains, count: int) -> Choices:
        d = doms.size
        width = (doms.upper - doms.lower).reshape(d, -1)
        if doms.input_coeff is None:
            coeff = np.full_like(width, np.nan)
        else:
            coeff = np.abs(doms.input_coeff.reshape(d, -1).astype(np.float64))
        known = ~np.isnan(coeff).any(axis=1, keepdims=True)
        score = np.where(width > 0, np.where(known, width * (np.nan_to_num(coeff) + 1e-12), width), -np.inf)
        count = min(count, width.shape[1])
        dims = np.argsort(-score, axis=1, kind="stable")[:, :count]
        best = np.take_along_axis(score, dims, axis=1)
        return Choices(np.where(np.isfinite(best), INPUT, -1), dims, best)


def make_branching(name: str, layout: DomainLayout, engine: Engine, coeffs: np.ndarray, candidates: int,
                   batched: bool, max_children: int = 64, deadline: float | None = None,
                   pool_candidates: int = 2) -> Branching:
    """The strategy named by :attr:`BabOptions.branching` (``max_children``: FSB's most children per pass;
    ``deadline``: when FSB stops scoring and keeps BaBSR's order; ``pool_candidates``: FSB's window candidates
    where the layout has windows to split)."""
    if name == "fsb":
        return FsbBranching(layout, engine, coeffs, candidates, batched, max_children, deadline, pool_candidates)
    if name == "babsr":
        return BabsrBranching(layout)
    return WidestBranching(layout)
