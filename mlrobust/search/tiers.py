"""Verifier adapters the search uses to spend the exact MILP only where it matters.

``cheap_tiers(verifier)`` is the cascade without its MILP tier: the same attack and the same bounds, and Unknown
where both fail. The search runs its exploration phase on it — hundreds of queries at a fraction of a second each —
and calls the full cascade (with the MILP) only to push past what the bounds can prove and to certify maximality.
A verifier that is not a cascade has no cheaper part, so there is no cheap phase for it.
"""

from __future__ import annotations

from dataclasses import replace

from mlrobust.ir.graph import Network
from mlrobust.verify.base import Mode, Verifier
from mlrobust.verify.spec import Box
from mlrobust.verify.verdict import Unknown, Verdict


class _Undecided:
    """The MILP tier, skipped: every box that reaches it stays Unknown."""

    name = "skip-milp"

    def verify(self, network: Network, box: Box, target: int, k: int = 2, mode: Mode = "decide",
               time_limit: float | None = None) -> Verdict:
        return Unknown(tier="bounds", reason="undecided by the attack and the bounds (the MILP tier is skipped in "
                                             "this phase)")


def cheap_tiers(verifier: Verifier, attack: bool = True, bounds: Verifier | None = None) -> Verifier | None:
    """The attack-and-bounds part of a :class:`~mlrobust.verify.cascade.Cascade`, or None for other verifiers.

    ``attack=False`` leaves the attack out as well (the search runs its own, warm-started from the points it knows,
    with random restarts; see :class:`~mlrobust.search.problem.SearchProblem`). ``bounds`` replaces the cascade's
    bound tier (e.g. plain CROWN where many quick queries matter more than the tightest bound)."""
    from mlrobust.verify.cascade import Cascade

    if not isinstance(verifier, Cascade):
        return None
    cheap = Cascade(attack=verifier.attack, bounds=bounds or verifier.bounds, milp=_Undecided(),  # type: ignore[arg-type]
                    use_attack=verifier.use_attack and attack, use_bounds=verifier.use_bounds,
                    weak_point_limit=verifier.weak_point_limit)
    cheap.name = "cascade without MILP" if attack else "bounds of the cascade"
    return cheap


def crown_tiers(verifier: Verifier) -> Verifier | None:
    """The cascade's cheap part with plain CROWN as its bound tier and no attack (None for other verifiers)."""
    from mlrobust.verify.bound_check import BoundCheck

    crown = cheap_tiers(verifier, attack=False, bounds=BoundCheck("crown"))
    if crown is not None:
        crown.name = "CROWN bounds of the cascade"  # its own entry in the cost model (plain CROWN, not the α tier)
    return crown


#: Per-query seconds of the push's cheap tiers (mlrobust.search.boundary) before their cost is measured: the bound
#: tier answers in well under a second on the 64x64 models, a short branch and bound decides what is close to it or
#: gives up.
PUSH_BOUNDS_LIMIT = 10.0
PUSH_BAB_LIMIT = 4.0
#: Once the bound tier's cost per call is measured (mlrobust.search.costs), its limit is this many of its calls
#: (never below PUSH_BOUNDS_LIMIT), and the branch and bound gets this many bound computations' time (never below
#: PUSH_BAB_LIMIT): a fixed few seconds are a dozen bound computations on a 64x64 network and not one on a
#: 3x300x300 one, where branch and bound could then never split a single box.
PUSH_BOUNDS_CALLS = 3.0
PUSH_BAB_BOUND_CALLS = 12.0


def push_limits(bounds_seconds: float | None) -> tuple[float, float]:
    """The push's per-query limits of its bound tier and its branch and bound, from the bound tier's measured
    seconds per call (None: not measured yet, the 64x64 defaults)."""
    if bounds_seconds is None:
        return PUSH_BOUNDS_LIMIT, PUSH_BAB_LIMIT
    return (max(PUSH_BOUNDS_LIMIT, PUSH_BOUNDS_CALLS * bounds_seconds),
            max(PUSH_BAB_LIMIT, PUSH_BAB_BOUND_CALLS * bounds_seconds))


def push_tiers(verifier: Verifier, query_time_limit: float | None, milp: bool = True,
               bounds_seconds: float | None = None, memory_target: int | None = None) -> list:
    """The verifier tiers of the push to the boundary, cheapest first: for a cascade its bound tier (no attack:
    the search's warm attack runs before every call), then its branch and bound with a short limit, then (with
    ``milp``) the whole cascade with the MILP; any other verifier is one tier. ``bounds_seconds``: the bound
    tier's measured seconds per call, which sets the limits (:func:`push_limits`). ``memory_target``: the
    process's memory target in bytes, which the branch and bound plans each call under
    (``BabOptions.memory_target_bytes``; None: the cascade's own options as they are)."""
    from mlrobust.search.boundary import Tier
    from mlrobust.verify.bab import BabVerifier
    from mlrobust.verify.cascade import Cascade

    bounds_limit, bab_limit = push_limits(bounds_seconds)

    def limit(cap: float) -> float:
        return cap if query_time_limit is None else min(cap, query_time_limit)

    if not isinstance(verifier, Cascade):
        return [Tier(getattr(verifier, "name", type(verifier).__name__), verifier, query_time_limit)]
    bounds = cheap_tiers(verifier, attack=False)
    brancher = verifier.bab
    if memory_target is not None:
        brancher = BabVerifier(replace(brancher.options, memory_target_bytes=int(memory_target)), milp=brancher.milp)
    bab = Cascade(attack=verifier.attack, bounds=verifier.bounds, milp=_Undecided(),  # type: ignore[arg-type]
                  use_attack=False, use_bounds=verifier.use_bounds, use_bab=True, bab=brancher, bab_share=1.0,
                  weak_point_limit=verifier.weak_point_limit)
    bab.name = "bounds and branch and bound of the cascade"
    tiers = [Tier("bounds", bounds, limit(bounds_limit)), Tier("bab", bab, limit(bab_limit))]
    if milp:
        tiers.append(Tier("milp", verifier, query_time_limit))
    return tiers
