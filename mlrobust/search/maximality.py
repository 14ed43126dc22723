"""Per-layer maximality: for each layer ``d``, is ``eps* + delta * e_d`` refuted? This turns condition (2) of the
problem — no vector that expands ``eps*`` is robust — into a checked statement, layer by layer, at resolution
``delta``.

A layer's status is one of

- ``refuted``: growing it by ``delta`` is refuted, with a counterexample confirmed on the network;
- ``saturated``: the layer already spans all of [0, 1]; a larger epsilon gives the same box;
- ``unknown``: the verifier could not decide the grown neighborhood (time limit);
- ``not_maximal``: the grown neighborhood is robust (reported only when growing is switched off, as for the
  baselines; otherwise the layer grows — by doubling steps, then bisection back to ``delta`` — and is checked
  again);
- ``unchecked``: the budget ran out first.

Refutations stay valid while other layers grow: growing a layer only enlarges the box of ``eps* + delta * e_d``, so
the counterexample still lies in it (the problem's cache answers such re-checks without a solver call).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mlrobust.search.problem import SearchProblem
from mlrobust.verify.verdict import NotRobust, Verdict

STATUSES = ("refuted", "saturated", "unknown", "not_maximal", "unchecked")


@dataclass
class LayerMaximality:
    """The maximality check of one layer; ``tried`` is the epsilon of the layer in the last check that failed."""

    layer: int
    status: str
    eps: float
    tried: float | None = None
    tier: str = ""
    margin: float | None = None
    counterexample: np.ndarray | None = None
    reason: str = ""
    refuted_eps: float | None = None  # the smallest eps of the layer known refuted (others at eps*); see intervals
    refuted_tier: str = ""  # who found the counterexample behind refuted_eps
    # the best proven upper bound on the target's top-k margin at ``tried`` where it stayed undecided: a proof needs
    # it below 0, so a positive value says by how much the question stayed open (``margin`` is the counterexample's)
    open_by: float | None = None

    @property
    def gap(self) -> float | None:
        """``refuted_eps - eps``: the layer's true boundary lies within this distance above ``eps``."""
        return None if self.refuted_eps is None else float(self.refuted_eps - self.eps)

    @property
    def certified(self) -> bool:
        """Whether the layer is proven unable to grow by the tolerance (refuted, or already saturated)."""
        return self.status in ("refuted", "saturated")

    def to_dict(self, with_counterexample: bool = True, arrays: dict[str, np.ndarray] | None = None) -> dict:
        """The layer's answer as JSON data; with ``arrays`` its counterexample goes there as
        ``counterexample_layer<d>`` (an image per layer is too large for JSON text at real sizes)."""
        out: dict[str, Any] = {"layer": self.layer, "status": self.status, "certified": self.certified, "eps": self.eps,
               "refuted_eps": self.refuted_eps, "gap": self.gap, "refuted_by": self.refuted_tier or None,
               "tried": self.tried, "tier": self.tier, "margin": self.margin, "open_by": self.open_by,
               "reason": self.reason}
        if with_counterexample and arrays is not None and self.counterexample is not None:
            key = f"counterexample_layer{self.layer}"
            arrays[key] = np.asarray(self.counterexample)
            out["counterexample"] = {"array": key}
        elif with_counterexample:
            out["counterexample"] = None if self.counterexample is None else self.counterexample.tolist()
        return out


def certify(problem: SearchProblem, eps_star: np.ndarray, delta: float, grow: bool = True,
            order: list[int] | None = None, previous: list[LayerMaximality] | None = None,
            give_up_after: int | None = None) -> tuple[np.ndarray, list[LayerMaximality]]:
    """Check every layer of the robust ``eps_star``; with ``grow`` a layer that can grow does, until refuted.

    ``previous`` statuses of an earlier pass are kept for layers they settled (``refuted`` is re-checked through
    the caches, which answer it at no cost while its counterexample still lies in the grown box; ``not_maximal``
    and ``saturated`` are kept); the others are checked again. ``give_up_after``: once that many layers in a row
    came back undecided (no refutation, no growth between them), the remaining layers are not asked — the verifier
    that could not decide those will not decide their neighbours either, and the time is better spent elsewhere;
    they are reported ``unchecked`` with the reason. Returns the (possibly grown, always proven robust) vector and
    the per-layer statuses.
    """
    eps = problem.clip(eps_star).copy()
    sat = problem.saturation
    layers = list(range(problem.num_layers)) if order is None else list(order)
    results: dict[int, LayerMaximality] = {}
    if previous is not None:
        for m in previous:
            if m.status in ("not_maximal",) or (m.status == "saturated" and eps[m.layer] >= sat[m.layer]):
                results[m.layer] = m
        layers = [d for d in layers if d not in results]
    problem.phase = "maximality"
    undecided_run: list[int] = []
    ahead: dict[tuple[int, bytes], Verdict] = {}  # first questions answered ahead by the pool's workers
    for at, d in enumerate(layers):
        problem.iteration = d
        if give_up_after is not None and len(undecided_run) >= give_up_after and d not in results:
            results[d] = _kept(previous, d) or LayerMaximality(
                d, "unchecked", float(eps[d]),
                reason=f"not asked: the verifier left layers {', '.join(map(str, undecided_run))} undecided in a row")
            continue
        if eps[d] >= sat[d]:
            results[d] = LayerMaximality(d, "saturated", float(eps[d]), reason="the layer spans all of [0, 1]")
            continue
        if problem.exhausted():
            results[d] = _kept(previous, d) or LayerMaximality(
                d, "unchecked", float(eps[d]), reason=_unchecked_reason(previous, d, str(problem.exhausted())))
            continue
        step, expanding = delta, True
        if problem.pool is not None and problem.pool.parallel and (d, eps.tobytes()) not in ahead:
            ahead.update(_ask_ahead(problem, eps, delta, [x for x in layers[at:] if x not in results]))
        while True:
            trial = eps.copy()
            trial[d] = min(eps[d] + step, sat[d])
            # an answer asked ahead counts only while it is about this very question (the same vector)
            early = ahead.pop((d, eps.tobytes()), None) if step == delta else None
            verdict = early if early is not None else problem.query(trial, purpose=f"maximality of layer {d}")
            if verdict.is_robust:
                if not grow:
                    results[d] = LayerMaximality(d, "not_maximal", float(eps[d]), float(trial[d]), verdict.tier,
                                                 reason=f"eps + {delta:g} in this layer is proven robust")
                    break
                eps = trial
                problem.improve(eps)
                if eps[d] >= sat[d]:
                    results[d] = LayerMaximality(d, "saturated", float(eps[d]), reason="grew until it spans [0, 1]")
                    break
                step = 2 * step if expanding else max(delta, step / 2)
                continue
            if step > delta * (1 + 1e-9):  # a larger step failed: bisect back down to delta
                expanding = False
                step = max(delta, step / 2)
                continue
            if isinstance(verdict, NotRobust):
                results[d] = LayerMaximality(d, "refuted", float(eps[d]), float(trial[d]), verdict.tier,
                                             float(verdict.margin), np.asarray(verdict.counterexample))
            elif verdict.tier == "budget":
                results[d] = _kept(previous, d) or LayerMaximality(
                    d, "unchecked", float(eps[d]), float(trial[d]), verdict.tier,
                    reason=_unchecked_reason(previous, d, getattr(verdict, "reason", "")))
            else:
                results[d] = LayerMaximality(d, "unknown", float(eps[d]), float(trial[d]), verdict.tier,
                                             reason=getattr(verdict, "reason", ""),
                                             open_by=verdict.stats.get("bounds", {}).get("margin_upper"))
            break
        undecided_run = undecided_run + [d] if results[d].status == "unknown" else []
    # Layers checked before a later one grew keep their status; report the final epsilons.
    out = []
    for d in range(problem.num_layers):
        res = results.get(d) or LayerMaximality(d, "unchecked", float(eps[d]), reason="not in the checked order")
        res.eps = float(eps[d])
        out.append(res)
    return eps, out


def _ask_ahead(problem: SearchProblem, eps: np.ndarray, delta: float,
               layers: list[int]) -> dict[tuple[int, bytes], Verdict]:
    """The first question (``eps + delta e_d``, the others fixed) of the next layers still open, one per worker,
    asked together (:meth:`~mlrobust.search.problem.SearchProblem.query_many`). Keyed by the layer and the vector
    they were asked at: once a layer grows, the later layers' answers are about a smaller box than their question
    and are not used (their facts stay in the caches, where they are sound: a proof of a smaller box proves only
    that box, a counterexample stays in every larger one)."""
    assert problem.pool is not None
    sat = problem.saturation
    todo = [d for d in layers if eps[d] < sat[d]][:problem.pool.workers]
    trials = []
    for d in todo:
        trial = eps.copy()
        trial[d] = min(eps[d] + delta, sat[d])
        trials.append(trial)
    verdicts = problem.query_many(trials, [f"maximality of layer {d}" for d in todo])
    return {(d, eps.tobytes()): v for d, v in zip(todo, verdicts)}


def _kept(previous: list[LayerMaximality] | None, d: int) -> LayerMaximality | None:
    """An earlier pass's status of layer ``d`` that still stands when the budget ends this pass: a settled one, or
    an ``unknown`` the full verifier itself returned. An ``unknown`` of the cheap tiers alone is not kept: the layer
    was never given to the MILP, so it is reported ``unchecked``."""
    for m in previous or []:
        if m.layer == d and (m.status in ("refuted", "saturated", "not_maximal")
                             or (m.status == "unknown" and m.tier == "milp")):
            return m
    return None


def _unchecked_reason(previous: list[LayerMaximality] | None, d: int, why: str) -> str:
    cheap = any(m.layer == d and m.status == "unknown" for m in previous or [])
    return (f"budget spent ({why}) before the MILP check" + ("; the attack and the bounds were inconclusive"
                                                               if cheap else ""))
