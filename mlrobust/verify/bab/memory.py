"""What one branch-and-bound call may hold under a process memory target (``BabOptions.memory_target_bytes``).

Without a target a call's α/β rounds are bounded by the fixed ``memory_budget_bytes`` alone, and its store of open
domains grows with them. With one, what the process holds when the call starts (measured after the heap's free
pages are returned: :func:`mlrobust.memory.trim_heap`) is subtracted from the target, and the rest is shared out:
``ROUND_SHARE`` of it for one α/β bounding call (never more than ``memory_budget_bytes``; re-derived before every
round from what the process holds then), ``STORE_SHARE`` for the store of open domains, and what is left for the
round's results, the branching's scores and the heap's fragmentation. A call that finds less than
``MIN_AVAILABLE_BYTES`` free, or whose store would outgrow its share, ends Unknown: cutting the search short for
memory proves nothing and refutes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlrobust.memory import DEFAULT_MEMORY_LIMIT_MIB, MIB

#: The search's default process memory target in bytes (``DEFAULT_MEMORY_LIMIT_MIB``).
DEFAULT_MEMORY_TARGET = int(DEFAULT_MEMORY_LIMIT_MIB * MIB)
#: Shares of the memory left under the target: one α/β bounding call, and the store of open domains.
ROUND_SHARE = 0.5
STORE_SHARE = 0.25
#: Below this much room under the target a call does not start (one α/β call of one domain of the 64x64 reference
#: CNN takes ~6 MB; the round's other arrays and the store need a few times that).
MIN_AVAILABLE_BYTES = 64 * MIB
#: The smallest α/β budget a round is given (a chunk is one domain at least, whatever the budget).
MIN_ROUND_BYTES = 16 * MIB


@dataclass(frozen=True)
class MemoryPlan:
    """A call's memory under a target: ``resident`` bytes the process held at its start, ``available`` the room
    left under ``target``, ``store_bytes`` the cap on its store of open domains; ``round_cap`` the fixed α/β budget
    (``memory_budget_bytes``) that no round exceeds (None: none)."""

    target: int
    resident: int
    available: int
    store_bytes: int
    round_cap: int | None

    @property
    def enough(self) -> bool:
        """Whether the call has room to start at all."""
        return self.available >= MIN_AVAILABLE_BYTES

    def round_bytes(self, resident_now: int | None) -> int:
        """The α/β budget of a round starting while the process holds ``resident_now`` bytes (None: unknown,
        the call's start is assumed)."""
        held = self.resident if resident_now is None else resident_now
        share = int(ROUND_SHARE * max(self.target - held, 0))
        budget = share if self.round_cap is None else min(share, self.round_cap)
        return max(budget, MIN_ROUND_BYTES)


def memory_plan(target: int, resident: int | None, round_cap: int | None) -> MemoryPlan:
    """The plan of a call that starts while the process holds ``resident`` bytes (None where that cannot be read:
    then the target is taken as all free, and only the store's cap and the fixed round budget bound the call)."""
    held = 0 if resident is None else int(resident)
    available = max(int(target) - held, 0)
    return MemoryPlan(int(target), held, available, int(STORE_SHARE * available), round_cap)


def over_target_reason(plan: MemoryPlan) -> str:
    """The Unknown reason of a call the target leaves no room to start."""
    return (f"memory: the process holds {plan.resident / MIB:.0f} MiB of its {plan.target / MIB:.0f} MiB target, "
            f"less than {MIN_AVAILABLE_BYTES // MIB} MiB left for the branch and bound")


def store_over_reason(plan: MemoryPlan, store_bytes: int, open_domains: int, worst: float) -> str:
    """The Unknown reason of a call whose store would outgrow its share of the target."""
    return (f"memory: the open domains' store would hold {store_bytes / MIB:.1f} MiB, over its "
            f"{plan.store_bytes / MIB:.1f} MiB share of the memory target ({open_domains} domains open, worst bound "
            f"{worst:.4g})")
