"""Named verifier configurations for the comparison benchmarks (``vnncomp``, ``scale``).

A method is a name for a top-k verifier built from the installed mlrobust: "crown", "alpha", "bab", "milp",
"milp_alpha", "crown_milp" (today's cascade: attack -> CROWN -> MILP) and "alpha_bab_milp" (attack -> α-CROWN ->
BaB -> MILP). Parts that the installed code lacks (α-CROWN, the branch-and-bound verifier) are looked up by import
and by a probe on a tiny network; a method that needs them is *not available* (with the reason) instead of failing
the run.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlrobust.bounds.tier import Tightened
from mlrobust.ir.graph import Network
from mlrobust.verify.base import Mode, Verifier
from mlrobust.verify.spec import Box
from mlrobust.verify.verdict import NotRobust, Robust, Unknown, Verdict


class MethodUnavailable(Exception):
    """The installed mlrobust lacks a part this method needs."""


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    build: Callable[[], Verifier]


# --- lookups -------------------------------------------------------------------------------------------------------
def _tiny_network() -> Network:
    from mlrobust.ir.graph import Node
    from mlrobust.ir.ops import Dense, Relu

    w1 = np.array([[1.0, -1.0], [0.5, 1.0], [-1.0, 0.3]])
    w2 = np.array([[1.0, 0.2, -0.5], [-0.4, 1.0, 0.6], [0.3, -0.7, 1.0]])
    nodes = [Node("fc1", Dense(w1, np.array([0.1, -0.2, 0.05])), ("input",), "h", (3,)),
             Node("relu", Relu(), ("h",), "r", (3,)),
             Node("fc2", Dense(w2, np.zeros(3)), ("r",), "y", (3,))]
    return Network("input", (1, 2), nodes, "y")


def probe(verifier: Verifier) -> Verifier:
    """Run ``verifier`` once on a tiny box; any exception means the installed code cannot run it."""
    net = _tiny_network()
    x = np.array([0.3, 0.2])
    target = int(np.argmax(net.logits(x[None])[0]))
    try:
        verifier.verify(net, Box(x - 0.01, x + 0.01), target, 1, "decide", time_limit=5.0)
    except Exception as exc:  # noqa: BLE001 — a probe: whatever fails, the method is unavailable
        raise MethodUnavailable(f"{type(exc).__name__}: {exc}") from None
    return verifier


def _bound_check(method: str) -> Verifier:
    from mlrobust.verify.bound_check import BoundCheck

    if method == "alpha":
        try:
            import mlrobust.bounds.alpha_crown  # noqa: F401
        except ImportError:
            raise MethodUnavailable("mlrobust.bounds.alpha_crown is not installed") from None
        try:
            return probe(BoundCheck("alpha"))
        except MethodUnavailable:
            return probe(AlphaBoundCheck())  # the bound tier has no "alpha" yet: the same check built here
    return probe(BoundCheck(method))


class AlphaBoundCheck:
    """The bound tier on α-CROWN margin bounds (:func:`mlrobust.bounds.alpha_crown.alpha_margin_bounds`), for an
    installed BoundCheck without an "alpha" method: CROWN intermediate bounds, α-optimised margins, the same verdict
    rule as BoundCheck. ``last`` keeps the Tightened of the last call for a MILP after it."""

    name = "bounds"

    def __init__(self, iterations: int = 50):
        self.iterations = iterations
        self.last: Tightened | None = None

    def tighten(self, network: Network, box: Box, target: int, time_limit: float | None = None) -> Tightened:
        from mlrobust.bounds.alpha_crown import AlphaOptions, alpha_margin_bounds
        from mlrobust.bounds.tier import tighten

        start = time.perf_counter()
        crown = tighten(network, box.lower, box.upper, "crown", target=target)
        left = None if time_limit is None else max(time_limit - crown.seconds, 0.1)
        lo, hi, _ = alpha_margin_bounds(network, box.lower, box.upper, target, intermediate=crown.bounds,
                                        options=AlphaOptions(iterations=self.iterations, time_limit=left))
        assert crown.margin_lower is not None and crown.margin_upper is not None
        # both are sound: keep the tighter side of each
        crown.margin_lower = np.maximum(crown.margin_lower, lo)
        crown.margin_upper = np.minimum(crown.margin_upper, hi)
        crown.method = "alpha"
        crown.seconds = time.perf_counter() - start
        self.last = crown
        return crown

    def verify(self, network: Network, box: Box, target: int, k: int = 2, mode: Mode = "decide",
               time_limit: float | None = None) -> Verdict:
        from mlrobust.verify.bound_check import verdict_from_bounds
        from mlrobust.verify.counterexample import check_query

        check_query(network, box, target, k)
        start = time.perf_counter()
        tight = self.tighten(network, box, target, time_limit)
        return verdict_from_bounds(tight, network, box, target, k, time.perf_counter() - start)


class MilpOnBounds:
    """The MILP on the margin bounds of a bound tier run just before (``bounds.last``) or computed here."""

    name = "milp"

    def __init__(self, bounds: AlphaBoundCheck):
        from mlrobust.verify.milp_verifier import MilpVerifier

        self.bounds = bounds
        self.milp = MilpVerifier("highs", "crown")

    def verify(self, network: Network, box: Box, target: int, k: int = 2, mode: Mode = "decide",
               time_limit: float | None = None) -> Verdict:
        last = self.bounds.last
        same = (last is not None and last.target == target
                and np.array_equal(last.bounds.input_lower, box.lower)
                and np.array_equal(last.bounds.input_upper, box.upper))
        tight = last if same and last is not None else self.bounds.tighten(network, box, target, time_limit)
        left = None if time_limit is None else max(time_limit - (0.0 if same else tight.seconds), 0.1)
        return self.milp.verify(network, box, target, k, mode, left, tightened=tight)


def _bab() -> Verifier:
    try:
        from mlrobust.verify.bab import BabVerifier
    except ImportError:
        raise MethodUnavailable("mlrobust.verify.bab.BabVerifier is not installed") from None
    return probe(BabVerifier())


def _milp(tightening: str) -> Verifier:
    from mlrobust.milp.tightening import METHODS
    from mlrobust.verify.milp_verifier import MilpVerifier

    if tightening == "alpha" and "alpha" not in METHODS:
        bounds = _bound_check("alpha")
        if isinstance(bounds, AlphaBoundCheck):
            return probe(MilpOnBounds(bounds))
    if tightening not in METHODS:
        raise MethodUnavailable(f"the MILP's bound tightening has no {tightening!r} (it has {', '.join(METHODS)})")
    return probe(MilpVerifier("highs", tightening))


def _default_cascade() -> Verifier:
    from mlrobust.api import make_verifier

    return make_verifier("cascade")


def _cascade_crown() -> Verifier:
    from mlrobust.verify.bound_check import BoundCheck
    from mlrobust.verify.cascade import Cascade

    # the bound tier named explicitly: "crown_milp" stays CROWN whatever the cascade's default bound tier becomes
    kwargs: dict[str, Any] = {"bounds": BoundCheck("crown")}
    if "use_bab" in inspect.signature(Cascade).parameters:
        kwargs["use_bab"] = False
    return probe(Cascade("highs", "crown", **kwargs))


def _cascade_alpha_bab() -> Verifier:
    """The cascade with α-CROWN bounds and the BaB tier where the installed Cascade offers one; otherwise the same
    tiers chained here (attack -> α-CROWN -> BaB -> MILP)."""
    from mlrobust.verify.attack import PgdAttack
    from mlrobust.verify.cascade import Cascade

    bounds = _bound_check("alpha")
    bab = _bab()
    try:  # as the cascade builds its own tier: a stalled BaB hands the rest of the time to the MILP
        from mlrobust.verify.cascade import STALL_SHARE

        bab.options.stall_share = STALL_SHARE  # type: ignore[attr-defined]
    except (ImportError, AttributeError):
        pass
    if isinstance(bounds, AlphaBoundCheck):
        milp: Verifier = MilpOnBounds(bounds)  # reuses the bound tier's α margins of the same box
    else:
        try:
            milp = _milp("alpha")
        except MethodUnavailable:
            milp = _milp("crown")
    params = inspect.signature(Cascade).parameters
    if "bab" in params:
        kwargs: dict[str, Any] = {"bounds": bounds, "bab": bab, "milp": milp}
        if "use_bab" in params:
            kwargs["use_bab"] = True
        return probe(Cascade("highs", getattr(milp, "tightening", "crown"), **kwargs))
    return probe(Chain([("attack", PgdAttack()), ("bounds", bounds), ("bab", bab), ("milp", milp)],
                       shares={"bab": 0.75}))


class Chain:
    """Tiers in order, each on the time the earlier ones left; the first Robust or NotRobust verdict wins.

    ``shares``: a tier named here gets at most that fraction of the time left when it starts (so a complete tier
    after it still runs). Used only when the installed Cascade has no slot for a tier.
    """

    name = "chain"

    def __init__(self, tiers: list[tuple[str, Verifier]], shares: dict[str, float] | None = None):
        self.tiers = tiers
        self.shares = shares or {}

    def verify(self, network: Network, box: Box, target: int, k: int = 2, mode: Mode = "decide",
               time_limit: float | None = None) -> Verdict:
        start = time.perf_counter()
        seconds: dict[str, float] = {}
        stats: dict = {}
        last: Verdict = Unknown(tier="", reason="no tier ran")
        for i, (name, tier) in enumerate(self.tiers):
            left = None if time_limit is None else time_limit - (time.perf_counter() - start)
            if left is not None and left <= 0:
                break
            if left is not None and name in self.shares and i < len(self.tiers) - 1:
                left *= self.shares[name]
            t0 = time.perf_counter()
            verdict = tier.verify(network, box, target, k, mode, left)
            seconds[name] = time.perf_counter() - t0
            stats[name] = verdict.stats
            last = verdict
            if isinstance(verdict, (Robust, NotRobust)):
                verdict.tier = name
                break
        last.seconds = seconds
        last.stats = stats
        return last


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("crown", "CROWN margin bounds alone", lambda: _bound_check("crown")),
    Method("alpha", "α-CROWN margin bounds alone", lambda: _bound_check("alpha")),
    Method("bab", "branch and bound alone", _bab),
    Method("milp", "the MILP on CROWN bounds (HiGHS)", lambda: _milp("crown")),
    Method("milp_alpha", "the MILP on α-CROWN bounds (HiGHS)", lambda: _milp("alpha")),
    Method("cascade", "verify's default cascade (mlrobust.api.make_verifier)", lambda: probe(_default_cascade())),
    Method("crown_milp", "the cascade: attack -> CROWN -> MILP", _cascade_crown),
    Method("alpha_bab_milp", "attack -> α-CROWN -> BaB -> MILP", _cascade_alpha_bab),
)}


def build(name: str) -> Verifier:
    """The verifier of method ``name`` (MethodUnavailable when the installed code lacks a part)."""
    if name not in METHODS:
        raise MethodUnavailable(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    return METHODS[name].build()


def availability(names: list[str]) -> dict[str, str]:
    """``{name: "" if available else the reason}``."""
    out = {}
    for name in names:
        try:
            build(name)
            out[name] = ""
        except MethodUnavailable as exc:
            out[name] = str(exc)
    return out
