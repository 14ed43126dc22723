"""Whether the bound tier's next α-CROWN call optimises its intermediate bounds jointly, decided by measured gain per
second on the queries already asked of the same network and target.

The joint pass (:mod:`mlrobust.bounds.alpha_joint`) gives lower k-th margin bounds for 1.4-1.8× the seconds per
query (medians) of an optimisation with frozen intermediate bounds (``benchmarks/results/bound_tier.md``). Whether
that pays depends on the network and on the boxes: on one development model it proves 8 whole-image boxes of 15
where frozen bounds prove 2, on another the same 3, more slowly.
A fixed switch cannot know which; the queries of a search can measure it. :class:`JointPolicy` keeps, per query
family (the key of :class:`~mlrobust.bounds.alpha_margin.AlphaCache`: network and target), the last
:data:`WINDOW` outcomes of each *arm* ("joint" and "frozen"): the seconds of the bound-tier call, whether it proved
the query, and its *gain*: the share of the way from CROWN's k-th margin bound to a proof it went
(:func:`progress`). Only calls where α-CROWN ran are recorded: where CROWN alone decides, the choice changes
nothing.

:meth:`JointPolicy.choose` answers for the next call, in this order:

1. **Explore**: while an arm has fewer than :data:`EXPLORE_CALLS` measured calls, run the arm with fewer (joint on a
   tie: it is the tighter one, so a lone call behaves as the tier did before the policy, joint wherever the pass is
   cheap enough to run).
2. **Re-explore**: an arm not run for :data:`REEXPLORE_EVERY` measured calls is run once more. A search grows its
   boxes as it goes, so an arm that lost on the small boxes may win on the larger ones; its figures are only as
   fresh as its last call.
3. **Exploit** by gain per second over the arms' windows: *proofs per second* (proofs are what the tier is for; the
   seconds are the whole tier call, since the search buys queries, not optimisations) once the two windows hold
   :data:`MIN_PROOFS` proofs between them and the two rates differ; otherwise (proofs still few, e.g. far inside
   or far outside the provable region) the *k-th margin gain per second*. Comparing the arms' gain per second is the
   same as asking whether joint's extra gain per extra second beats what frozen gains per second
   (``(G_f + ΔG) / (T_f + ΔT) > G_f / T_f`` iff ``ΔG / ΔT > G_f / T_f``). A tie goes to the arm with fewer seconds
   per call.

Exploring must not cost the query its answer: a frozen call made to explore (not because frozen measured better)
that leaves the box open is followed by a joint call on the same box (:meth:`JointPolicy.run`), whose bound the
tier keeps where it is lower. Without that, in a search that grows a box while the tier proves it, one exploring
frozen call that fails where the joint pass would prove ends the growth there for good. The follow-up is measured
too: the two arms on the same box. It is skipped where the joint pass has never run on the family (unavailable
there: the second call would repeat the first).

Everything is a function of the recorded figures, so the choice is deterministic given them. The clock is
injectable (tests record made-up costs). A choice of "joint" is a request: the joint pass can still be unavailable
(a network without a supported conv chain, a box with no neuron whose bounds matter) or skip itself over its work
cap (``JOINT_MAX_WORK``, a guard on memory and time per step); the call is then recorded under the arm that ran.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from mlrobust.bounds.alpha_margin import TopKBound

ARMS = ("joint", "frozen")
#: Calls each arm is measured before the policy exploits (the first open calls alternate between the arms).
EXPLORE_CALLS = 2
#: Recent calls per arm the rates are estimated from (older ones describe smaller or other boxes of the search).
WINDOW = 8
#: An arm not run for this many measured calls of its family is run once more.
REEXPLORE_EVERY = 8
#: Proofs in the two windows together below which the k-th margin gain per second decides instead of proofs.
MIN_PROOFS = 2
#: A k-th margin bound below minus this proves the query (``alpha_topk_bounds``' tolerance, the verdict's
#: ``ROBUST_TOLERANCE``).
PROOF_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Outcome:
    """One measured bound-tier call: its seconds, whether it proved the query, and its k-th margin gain over CROWN."""

    seconds: float
    proven: bool
    gain: float


@dataclass
class ArmRecord:
    """The last :data:`WINDOW` outcomes of one arm, the measured calls in all, and when it last ran."""

    outcomes: deque[Outcome] = field(default_factory=lambda: deque(maxlen=WINDOW))
    calls: int = 0
    last: int = 0  # the family's measured-call count when this arm last ran
    total_seconds: float = 0.0  # over every call, not only the window (the summary of a search)
    total_proofs: int = 0

    @property
    def seconds(self) -> float:
        return sum(o.seconds for o in self.outcomes)

    @property
    def proofs(self) -> int:
        return sum(o.proven for o in self.outcomes)

    @property
    def proofs_per_second(self) -> float:
        return self.proofs / max(self.seconds, 1e-9)

    @property
    def gain_per_second(self) -> float:
        return sum(o.gain for o in self.outcomes) / max(self.seconds, 1e-9)

    @property
    def seconds_per_call(self) -> float:
        return self.seconds / len(self.outcomes) if self.outcomes else 0.0


@dataclass
class _Family:
    arms: dict[str, ArmRecord] = field(default_factory=lambda: {a: ArmRecord() for a in ARMS})
    calls: int = 0


@dataclass(frozen=True)
class JointChoice:
    """The answer for one call: run the joint pass or not, and why (both go to the tier's stats)."""

    joint: bool
    reason: str
    exploring: bool = False  # explore or re-explore: not the arm the measurements favour

    @property
    def arm(self) -> str:
        return "joint" if self.joint else "frozen"


class JointPolicy:
    """Joint or frozen intermediate bounds for the next bound-tier call of a query family (see the module doc).

    ``clock``: seconds (``time.perf_counter`` by default; a fake in tests); ``families``: families kept, least
    recently used dropped beyond it (as :class:`~mlrobust.bounds.alpha_margin.AlphaCache`).
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter, families: int = 16):
        self.clock = clock
        self.families = int(families)
        self._store: OrderedDict[Hashable, _Family] = OrderedDict()

    def _family(self, family: Hashable) -> _Family:
        fam = self._store.get(family)
        if fam is None:
            fam = self._store[family] = _Family()
            while len(self._store) > self.families:
                self._store.popitem(last=False)
        self._store.move_to_end(family)
        return fam

    def choose(self, family: Hashable) -> JointChoice:
        """Joint or frozen for the next call of ``family``, with the reason."""
        fam = self._family(family)
        joint, frozen = fam.arms["joint"], fam.arms["frozen"]
        if min(joint.calls, frozen.calls) < EXPLORE_CALLS:
            return JointChoice(joint.calls <= frozen.calls,
                               f"explore: {joint.calls} joint and {frozen.calls} frozen calls measured", True)
        favoured, why = _favoured(joint, frozen)
        other = "frozen" if favoured == "joint" else "joint"
        if fam.calls - fam.arms[other].last >= REEXPLORE_EVERY:
            return JointChoice(other == "joint", f"re-explore: {other} not run for {fam.calls - fam.arms[other].last} "
                                                 f"calls ({why})", True)
        return JointChoice(favoured == "joint", why)

    def run(self, family: Hashable, alpha: Callable[[bool], TopKBound], started: float) -> tuple[TopKBound, dict]:
        """The α-CROWN part of one bound-tier call of ``family``, as the policy chooses: ``alpha(joint)`` runs it
        with the joint pass or without; ``started`` is the clock when the tier call began (its CROWN part is
        charged to whichever arm runs). Records what ran, follows an exploring frozen call that leaves the box open
        with a joint one (see the module doc), and returns the result kept and the notes for the tier's stats
        (``joint_choice``, ``joint_reason``, ``joint_followed``)."""
        choice = self.choose(family)
        t0 = self.clock()
        common = t0 - started
        top = alpha(choice.joint)
        t1 = self.clock()
        notes: dict = {"joint_choice": choice.arm, "joint_reason": choice.reason}
        ran = top.stats.get("joint")
        if ran is None:  # CROWN decided alone (α had nothing to do): the choice changed nothing
            return top, notes
        proven = top.kth_upper < -PROOF_TOLERANCE
        self.record(family, ran == "on", common + t1 - t0, proven, top.kth_upper, top.crown_kth_upper)
        fam = self._family(family)
        if choice.exploring and not choice.joint and not proven and fam.arms["joint"].calls > 0:
            second = alpha(True)
            t2 = self.clock()
            if second.stats.get("joint") == "on":
                self.record(family, True, common + t2 - t1, second.kth_upper < -PROOF_TOLERANCE, second.kth_upper,
                            second.crown_kth_upper)
            notes["joint_followed"] = True
            if second.kth_upper <= top.kth_upper:
                top = second
        return top, notes

    def record(self, family: Hashable, joint: bool, seconds: float, proven: bool, kth: float,
               crown_kth: float) -> None:
        """One measured call of ``family`` that ran the joint pass (``joint``) or not: its ``seconds``, whether it
        proved the query (``proven``), the k-th margin bound it reached (``kth``) and CROWN's (``crown_kth``)."""
        fam = self._family(family)
        arm = fam.arms["joint" if joint else "frozen"]
        arm.outcomes.append(Outcome(max(float(seconds), 0.0), bool(proven), progress(kth, crown_kth, proven)))
        arm.total_seconds += max(float(seconds), 0.0)
        arm.total_proofs += bool(proven)
        arm.calls += 1
        fam.calls += 1
        arm.last = fam.calls

    def totals(self) -> dict:
        """Per arm, over every family kept: calls measured, proofs and seconds (a search's summary)."""
        arms = [fam.arms for fam in self._store.values()]
        return {name: {"calls": sum(a[name].calls for a in arms), "proofs": sum(a[name].total_proofs for a in arms),
                       "seconds": round(sum(a[name].total_seconds for a in arms), 4)} for name in ARMS}

    def to_dict(self) -> dict:
        """Per family (as a string) and arm: measured calls, and over the window proofs, seconds and the rates."""
        return {str(key): {name: {"calls": a.calls, "window_proofs": a.proofs, "window_seconds": round(a.seconds, 4),
                                  "proofs_per_second": round(a.proofs_per_second, 4),
                                  "gain_per_second": round(a.gain_per_second, 4)}
                           for name, a in fam.arms.items()}
                for key, fam in self._store.items()}


def progress(kth: float, crown_kth: float, proven: bool) -> float:
    """A call's k-th margin gain as the share of the way to a proof it went: ``(crown_kth - kth) / crown_kth`` in
    [0, 1], 1 for a proof. CROWN left ``crown_kth >= 0`` (else α would not have run); the same gain brings a box
    CROWN left at +0.1 to a proof and one left at +2 nowhere near it, so the raw difference would reward lowering
    hopeless bounds."""
    if proven:
        return 1.0
    if not (math.isfinite(kth) and math.isfinite(crown_kth)) or crown_kth <= 0:
        return 0.0
    return float(min(max((crown_kth - kth) / crown_kth, 0.0), 1.0))


def _favoured(joint: ArmRecord, frozen: ArmRecord) -> tuple[str, str]:
    """The arm with the higher gain per second over the windows, and the figures that decided it."""
    if joint.proofs + frozen.proofs >= MIN_PROOFS and joint.proofs_per_second != frozen.proofs_per_second:
        best = "joint" if joint.proofs_per_second > frozen.proofs_per_second else "frozen"
        return best, (f"proofs per second: joint {joint.proofs_per_second:.3g}, frozen "
                      f"{frozen.proofs_per_second:.3g}")
    figures = (f"k-th margin gain per second: joint {joint.gain_per_second:.3g}, frozen "
               f"{frozen.gain_per_second:.3g} ({joint.proofs + frozen.proofs} proofs)")
    if joint.gain_per_second != frozen.gain_per_second:
        return ("joint" if joint.gain_per_second > frozen.gain_per_second else "frozen"), figures
    return ("joint" if joint.seconds_per_call <= frozen.seconds_per_call else "frozen"), figures + ", tie: cheaper"
