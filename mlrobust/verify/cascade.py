"""The verification cascade: PGD attack, then margin bounds, optionally branch and bound, then the MILP only for
what is still undecided.

Cheap tiers first: an attack refutes most non-robust boxes in milliseconds, CROWN margin bounds prove most clearly
robust ones (α-CROWN tightens the margins CROWN leaves open, by default with the conv2 pre-activation bounds
optimised in the same optimisation where that has proven more per second on the earlier queries of the same
network and target: ``joint_intermediate="auto"``, :mod:`mlrobust.bounds.joint_policy`), and only the boxes in
between pay for a MILP. The
bounds the second tier computes are handed to the MILP (no second CROWN pass). With ``use_bab`` a branch and bound
(:mod:`mlrobust.verify.bab`) gets a share of the remaining time between the bounds and the MILP, starting from the
same bounds. Every verdict names the tier that decided it and the seconds spent in each tier; in
optimise mode its weak points merge the attack's best points with the MILP's solutions, largest margin first.
"""

from __future__ import annotations

import time

from mlrobust.backends.base import SolverBackend
from mlrobust.ir.graph import Network
from mlrobust.verify.attack import PgdAttack
from mlrobust.verify.bab import BabVerifier
from mlrobust.verify.base import Mode
from mlrobust.verify.bound_check import BoundCheck, verdict_from_bounds
from mlrobust.verify.counterexample import check_query
from mlrobust.verify.milp_verifier import MilpVerifier
from mlrobust.verify.spec import Box
from mlrobust.verify.verdict import NotRobust, Robust, Unknown, Verdict, WeakPoint


def _merge(*lists: list[WeakPoint], limit: int | None = None) -> list[WeakPoint]:
    out: list[WeakPoint] = []
    for wp in sorted((w for lst in lists for w in lst), key=lambda w: -w.margin):
        if all(wp.x.shape != o.x.shape or (wp.x != o.x).any() for o in out):
            out.append(wp)
    return out if limit is None else out[:limit]


#: Share of the BaB tier's time after which it hands over to the MILP when its worst bound has barely moved.
STALL_SHARE = 0.25

class Cascade:
    """attack -> bounds -> [BaB] -> MILP. Tiers can be switched off; ``milp`` may be any verifier object.

    ``use_bab``: run ``bab`` (default options) after the bounds for ``bab_share`` of the time left (``bab``'s own
    time limit when the call has none); the MILP gets what remains.
    """

    name = "cascade"

    def __init__(self, solver: str | SolverBackend | None = "highs", tightening: str = "crown",
                 attack: PgdAttack | None = None, bounds: BoundCheck | None = None,
                 milp: MilpVerifier | None = None, use_attack: bool = True, use_bounds: bool = True,
                 weak_point_limit: int = 8, use_bab: bool = False, bab: BabVerifier | None = None,
                 bab_share: float = 0.5):
        self.attack = attack or PgdAttack()
        # α-CROWN only runs where CROWN leaves the proof open, and gives up early when it cannot close it
        # (benchmarks/results/alpha.md: larger proven boxes for well under a second per undecided query); its
        # intermediate bounds are optimised jointly where that proves more per second (AlphaOptions' "auto", the
        # tier's default, decided per query by the check's JointPolicy from the earlier queries' figures:
        # benchmarks/results/bound_tier.md, lower k-th margin bounds for ~1.5x the time)
        self.bounds = bounds or BoundCheck("alpha")
        self.milp = milp or MilpVerifier(solver, tightening)
        self.use_attack = use_attack
        self.use_bounds = use_bounds
        self.weak_point_limit = weak_point_limit
        self.use_bab = use_bab
        # the MILP after it can still decide a query the BaB makes no headway on (e.g. a counterexample the
        # attack missed): a stalled BaB hands over early
        self.bab = bab or BabVerifier(stall_share=STALL_SHARE)
        self.bab_share = bab_share
        self.calls = {"attack": 0, "bounds": 0, "bab": 0, "milp": 0}

    def verify(self, network: Network, box: Box, target: int, k: int = 2, mode: Mode = "decide",
               time_limit: float | None = None) -> Verdict:
        check_query(network, box, target, k)
        start = time.perf_counter()
        seconds: dict[str, float] = {}
        stats: dict = {}
        wps: list[WeakPoint] = []
        hints: list = []

        def left() -> float | None:
            return None if time_limit is None else max(time_limit - (time.perf_counter() - start), 0.0)

        if self.use_attack:
            self.calls["attack"] += 1
            result = self.attack.run(network, box, target, k, time_limit=left())
            seconds["attack"] = result.seconds
            stats["attack"] = dict(result.stats, steps=result.steps_run)
            wps = [p.weak_point() for p in result.points]
            hints = [p.x for p in result.points[:3]]
            cex = result.counterexample
            if cex is not None:
                return NotRobust(tier="attack", seconds=seconds, stats=stats, weak_points=_merge(wps, limit=self.weak_point_limit),
                                 counterexample=cex.x, margin=cex.margin)
        tight = None
        if self.use_bounds:
            self.calls["bounds"] += 1
            t0 = time.perf_counter()
            tight = self.bounds.tighten(network, box, target, left(), k)
            verdict = verdict_from_bounds(tight, network, box, target, k, time.perf_counter() - t0)
            seconds["bounds"] = verdict.seconds["bounds"]
            stats.update(verdict.stats)
            if isinstance(verdict, (Robust, NotRobust)):
                verdict.seconds = seconds
                verdict.stats = stats
                verdict.weak_points = _merge(wps, verdict.weak_points, limit=self.weak_point_limit)
                return verdict
        if self.use_bab:
            self.calls["bab"] += 1
            remaining = left()
            share = None if remaining is None else self.bab_share * remaining
            verdict = self.bab.verify(network, box, target, k, mode, share, tightened=tight,
                                      attack=not self.use_attack)
            seconds.update(verdict.seconds)
            stats.update(verdict.stats)
            wps = _merge(wps, verdict.weak_points)
            if isinstance(verdict, (Robust, NotRobust)):
                verdict.seconds = seconds
                verdict.stats = stats
                verdict.weak_points = _merge(wps, limit=self.weak_point_limit)
                return verdict
        remaining = left()
        if remaining is not None and remaining <= 0:
            return Unknown(tier="bab" if self.use_bab else "bounds", seconds=seconds, stats=stats, weak_points=_merge(wps, limit=self.weak_point_limit),
                           reason="time limit reached before the MILP")
        self.calls["milp"] += 1
        # α bounds contain CROWN's (same intermediate bounds, margins never looser): reuse them for a CROWN MILP
        reuse = tight if (tight is not None and isinstance(self.milp, MilpVerifier)
                          and (self.milp.tightening == tight.method
                               or (self.milp.tightening == "crown" and tight.method == "alpha"))) else None
        if isinstance(self.milp, MilpVerifier):
            verdict = self.milp.verify(network, box, target, k, mode, remaining, tightened=reuse, hints=hints)
        else:
            verdict = self.milp.verify(network, box, target, k, mode, remaining)
        seconds.update(verdict.seconds)
        stats["milp"] = verdict.stats
        verdict.seconds = seconds
        verdict.stats = stats
        verdict.weak_points = _merge(verdict.weak_points, wps, limit=self.weak_point_limit)
        return verdict
