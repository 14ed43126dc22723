"""What each verifier tier costs per call on the network at hand, measured as the search runs, and the plans made
from those figures.

Constants tuned on one network size do not carry over to another: a bound computation that takes 0.3 s on a
64x64 network takes 3-4 s on a 3x300x300 one, so a phase planned for a dozen bisection steps, or a branch and bound
limit of a few seconds, starves everything after it there. The search therefore times every call of every tier
(its first call, then a running mean of the later ones) in a :class:`CostModel` and asks it:

- whether a call of a tier can finish in the time left (:meth:`CostModel.fits`): a call that cannot is not started
  — the query falls back to a cheaper tier that fits, or answers "budget" — so that it does not run past its phase
  and starve the rest;
- which of several tiers to use (:meth:`CostModel.choose`: the strongest one whose call fits) and how to share a
  time span between tiers (:meth:`CostModel.share_calls`: each gets the same time, so an expensive tier gets fewer
  calls);
- how many calls fit in a span (:meth:`CostModel.affordable`), which sets how a bisection spends its steps
  (:func:`bisection_steps`).

A tier never measured is assumed to fit (its first call is the measurement). The clock is injectable, so plans are
tested with made-up costs instead of real time.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

#: A call is started only when its expected cost times this margin fits in the time left: running means hide a
#: spread (a bound computation near the boundary has more unstable ReLUs than one far inside it).
FIT_MARGIN = 1.25


@dataclass
class TierCost:
    """The measured calls of one tier: how many, their total seconds, and the first call's seconds."""

    calls: int = 0
    seconds: float = 0.0
    first: float | None = None
    skipped: int = 0  # calls not started: they could not finish in the time left

    @property
    def mean(self) -> float | None:
        """Seconds per call (None before the first call): the running mean of the calls after the first, which
        carries one-off set-up (allocations, caches; 4.7 s against 1.2 s for plain CROWN on Triple-MNIST); the
        first call's seconds while it is the only one."""
        if not self.calls:
            return None
        if self.calls == 1 or self.first is None:
            return self.seconds / self.calls
        return (self.seconds - self.first) / (self.calls - 1)


@dataclass
class CostModel:
    """Measured seconds per call by tier name, with the plans made from them (see the module doc)."""

    clock: Callable[[], float] = time.perf_counter
    tiers: dict[str, TierCost] = field(default_factory=dict)
    fallbacks: dict[str, int] = field(default_factory=dict)  # "from -> to": calls given to a cheaper tier instead

    def record(self, tier: str, seconds: float) -> None:
        """One finished call of ``tier`` that took ``seconds``."""
        cost = self.tiers.setdefault(tier, TierCost())
        cost.calls += 1
        cost.seconds += max(float(seconds), 0.0)
        if cost.first is None:
            cost.first = float(seconds)

    @contextmanager
    def measure(self, tier: str) -> Iterator[None]:
        """Time the block as one call of ``tier`` (also when it raises: the time was spent)."""
        start = self.clock()
        try:
            yield
        finally:
            self.record(tier, self.clock() - start)

    def mean(self, tier: str) -> float | None:
        """Seconds per call of ``tier`` (None: never measured)."""
        cost = self.tiers.get(tier)
        return None if cost is None else cost.mean

    def fits(self, tier: str, seconds_left: float | None) -> bool:
        """Whether a call of ``tier`` is expected to finish in ``seconds_left`` (None: no limit). A tier never
        measured fits: its first call measures it."""
        if seconds_left is None:
            return True
        mean = self.mean(tier)
        if mean is None:
            return seconds_left > 0
        return mean * FIT_MARGIN <= seconds_left

    def affordable(self, tier: str, seconds: float | None) -> float:
        """How many calls of ``tier`` fit in ``seconds`` (``inf`` when unlimited or never measured)."""
        mean = self.mean(tier)
        if seconds is None or mean is None or mean <= 0:
            return math.inf
        return max(seconds, 0.0) / mean

    def choose(self, tiers: Sequence[str], seconds_left: float | None) -> str | None:
        """The strongest of ``tiers`` (listed cheapest first) whose call fits in ``seconds_left``; None when not
        even the cheapest fits."""
        fitting = [t for t in tiers if self.fits(t, seconds_left)]
        return fitting[-1] if fitting else None

    def share_calls(self, tiers: Sequence[str], seconds: float) -> dict[str, float]:
        """Calls per tier when ``seconds`` are shared equally in time between ``tiers``: a tier that costs twice as
        much per call gets half the calls (``inf`` for a tier never measured)."""
        if not tiers:
            return {}
        each = max(seconds, 0.0) / len(tiers)
        return {t: self.affordable(t, each) for t in tiers}

    def skipped(self, tier: str, fallback: str | None) -> None:
        """A call of ``tier`` not started (it could not finish in the time left); ``fallback`` answered instead
        (None: nothing did)."""
        self.tiers.setdefault(tier, TierCost()).skipped += 1
        key = f"{tier} -> {fallback or 'none'}"
        self.fallbacks[key] = self.fallbacks.get(key, 0) + 1

    def to_dict(self) -> dict:
        """Per tier: calls, seconds per call, the first call's seconds and the calls skipped; the fall-backs."""
        out: dict = {name: {"calls": c.calls, "seconds_per_call": None if c.mean is None else round(c.mean, 4),
                            "first_call_s": None if c.first is None else round(c.first, 4), "skipped": c.skipped}
                     for name, c in sorted(self.tiers.items())}
        return {"tiers": out, "fallbacks": dict(sorted(self.fallbacks.items()))}


def bisection_steps(span: float, delta: float) -> int:
    """Calls of a plain bisection of ``[lo, lo + span]`` to ``delta``: the top end, then one per halving."""
    if span <= delta or delta <= 0:
        return 1
    return 1 + math.ceil(math.log2(span / delta))
