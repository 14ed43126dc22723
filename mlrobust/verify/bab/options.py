"""The knobs of the branch and bound (:class:`BabOptions`) and what a run returns (:class:`BabResult`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mlrobust.errors import InputError
from mlrobust.ir.torch_exec import check_device
from mlrobust.verify.bab.spec import PAIR_WEIGHTS
from mlrobust.verify.counterexample import CheckedPoint
from mlrobust.verify.verdict import WeakPoint

#: Bytes one α/β bounding call of the branch and bound may allocate by default (see ``BabOptions``).
DEFAULT_MEMORY_BUDGET = 256 * 2 ** 20


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
    "cuda"; plain CROWN, the attacks and the MILP stay on the CPU). ``max_split_levels``: while fewer domains are
    open than ``batch_size``, each parent is split on up to this many neurons (or input dimensions) at once, its
    ``2**levels`` children filling the round's batch of ``2 * batch_size`` children (1: one split per parent).
    ``root_tier``, ``root_tier_share``: where :meth:`BabVerifier.verify`'s root starts when the caller gives no
    bounds: the bound tier's "alpha" (α-CROWN on the open margins, its intermediate bounds optimised jointly where
    that pays: every domain inherits them) or plain "crown", run on at most that share of the time limit. Measured
    on the whole-image boxes of the reference CNNs at 1.0× their searched vectors (30 s each): from α, 14 of 15
    proven, each in ≤ 2.3 s but one; from CROWN 12 of 15, four of them in 17–18 s.
    ``refresh_stale``: with the α/β engine (and ``refresh_intermediate`` off), a domain whose bound did not improve on
    its parent's gets its intermediate bounds recomputed by CROWN under its splits before it is split
    (:func:`~mlrobust.verify.bab.bounding.refresh_stale`; its descendants inherit them). Without it a split in an
    earlier layer never tightens a later layer's bounds: on mnist2_l0 ex03 at 1.05× the worst bound stuck at 0.0286
    for half of a 60 s run, children inheriting it at every depth. Off by default: one refresh costs about four α/β
    bounds (a CROWN pass per domain), and on the whole-image boxes of the three reference models it changed no
    verdict — with ``--verifier bab`` (30 s) the stalled box's worst bound went 0.0286 → 0.0214, but as the
    cascade's tier (120 s) 0.0286 → 0.0376 on fewer domains (benchmarks/results/bab_stall_*.md).
    ``memory_budget_bytes``: bytes one α/β bounding call may allocate; a round's children (and the root) are bounded
    in chunks whose estimated size fits it (:func:`mlrobust.bounds.alpha_crown.alpha_memory`: the parameters per
    row times the copies the optimiser keeps, and the backward pass's saved tensors), each child getting the same
    bound as in one batch (FSB's candidate children are scored in passes under it too); None: every child in one
    call. The default 256 MiB: a search's process holds ~0.55 GB before its first branch and bound, and with this
    budget ``mlrobust verify`` on the 64×64 rung peaked at 0.98 GB (1.20 GB at 512 MiB;
    benchmarks/results/bab_notes.md). ``memory_target_bytes``: resident bytes the whole process should stay within
    (None: no target, the fixed budget alone): each call returns the heap's free pages to the system, then sizes
    every round's α/β budget (at most ``memory_budget_bytes``) and caps its store of open domains from what the
    process holds, and ends Unknown where the target leaves no room (:mod:`mlrobust.verify.bab.memory`). The
    search sets it on its push's branch and bound (``mlrobust verify --memory-limit``).
    ``seed_split_beta``: a child's warm start from its parent's parameters is also tried with the multiplier β of
    each new split seeded from the coefficient reaching the neuron, so that the neuron keeps its parent's lower line
    (``AlphaOptions.seed_split_beta``, :func:`mlrobust.ops.relu.seed_split_multipliers`; each row keeps the better
    start, one backward pass more per call). Without it β starts at 0 and the child loses what the parent's slope
    won; ten steps often do not win it back, so children bounded worse than their parents at every depth
    (benchmarks/results/bab_ex04.md).
    ``compact_params``: with the α/β engine and ReLU splitting, keep every α/β parameter (and the warm starts in
    the store) only for the neurons unstable and the MaxPool windows not exact under the root's bounds
    (:meth:`~mlrobust.verify.bab_bounds.AlphaEngine.fix_support`): the same bounds for the same parameters, a
    fraction of the memory and of the optimiser's work (benchmarks/results/bab_compact.md); off: dense over every
    unit, as before.
    ``pool_splits``: with the α/β engine, MaxPool windows are split too, a second kind of split beside the ReLU
    phases: a child restricts a window to the input with the largest upper bound among those that may still attain
    its maximum (the window's output is then exactly that input), its sibling to the others
    (:func:`~mlrobust.verify.bab.split.split_windows`); BaBSR scores windows by the coefficient reaching their
    output times their upper line's gap, FSB tries ``fsb_pool_candidates`` of them beside its ReLU candidates. A
    window whose inputs are stably active never becomes exact by ReLU splits: on ``mnist2_nodefense`` ex04 at 1.0×
    the exact MILP with its MaxPool binaries relaxed stays at +0.221 (not robust) where the full MILP proves −0.215
    (benchmarks/results/bab_pool_split.md).
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
    max_split_levels: int = 3
    root_tier: str = "alpha"
    root_tier_share: float = 0.25
    memory_budget_bytes: int | None = DEFAULT_MEMORY_BUDGET
    refresh_stale: bool = False
    memory_target_bytes: int | None = None
    seed_split_beta: bool = True
    compact_params: bool = True
    pool_splits: bool = True
    fsb_pool_candidates: int = 2

    def __post_init__(self) -> None:
        if self.branching not in BRANCHING:
            raise InputError(f"unknown branching {self.branching!r}; choose one of {', '.join(BRANCHING)}")
        if self.engine not in ENGINES:
            raise InputError(f"unknown bound engine {self.engine!r}; choose one of {', '.join(ENGINES)}")
        if self.batch_size < 1 or self.max_domains < 1:
            raise InputError("batch_size and max_domains must be positive")
        if self.fsb_pool_candidates < 0:
            raise InputError(f"fsb_pool_candidates must be 0 or more, not {self.fsb_pool_candidates}")
        if not 1 <= self.max_split_levels <= 3:
            raise InputError(f"max_split_levels must be 1, 2 or 3, not {self.max_split_levels}")
        check_device(self.device)
        if self.root_tier not in ROOT_TIERS:
            raise InputError(f"unknown root tier {self.root_tier!r}; choose one of {', '.join(ROOT_TIERS)}")
        if not 0.0 < self.root_tier_share <= 1.0:
            raise InputError(f"root_tier_share must lie in (0, 1], not {self.root_tier_share}")
        for name in ("memory_budget_bytes", "memory_target_bytes"):
            check_bytes(getattr(self, name), name)


def check_bytes(value: object, name: str) -> None:
    """An input error unless ``value`` is a positive whole number of bytes or None."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0):
        raise InputError(f"{name} must be a positive number of bytes or None, not {value!r}")


BRANCHING = ("babsr", "fsb", "widest")
ENGINES = ("auto", "crown", "alpha")
ROOT_TIERS = ("alpha", "crown")


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
