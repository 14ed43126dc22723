"""Verdicts: Robust (proven), NotRobust (with a counterexample re-checked on the real network), Unknown."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

import numpy as np

#: A proven upper bound on the top-k margin must be below ``-ROBUST_TOLERANCE`` to count as Robust.
#: It absorbs the difference between float64 (bounds, MILP) and the float32 arithmetic of deployed networks,
#: and the MILP solvers' feasibility/optimality tolerances (see docs/design.md).
ROBUST_TOLERANCE = 1e-4


@dataclass
class WeakPoint:
    """An input of the box with its real top-k margin (higher = closer to losing the target)."""

    x: np.ndarray
    margin: float


@dataclass
class _VerdictBase:
    tier: str = ""  # which part decided: "attack", "bounds", "milp", "cache", ...
    seconds: dict[str, float] = field(default_factory=dict)  # time spent per tier
    stats: dict = field(default_factory=dict)  # binaries, unstable ReLUs, solver status, ...
    weak_points: list[WeakPoint] = field(default_factory=list)

    @property
    def total_seconds(self) -> float:
        return float(sum(self.seconds.values()))


@dataclass
class Robust(_VerdictBase):
    """Every input of the box keeps the target in the top-k: the margin is proven ``<= bound < 0``."""

    bound: float = float("nan")

    is_robust = True
    is_not_robust = False


@dataclass
class NotRobust(_VerdictBase):
    """``counterexample`` lies in the box and the real network's top-k margin there is ``margin >= 0``."""

    counterexample: np.ndarray | None = None
    margin: float = float("nan")

    is_robust = False
    is_not_robust = True


@dataclass
class Unknown(_VerdictBase):
    """Neither proven nor refuted (time limit, solver failure, unconfirmed counterexample, ...)."""

    reason: str = ""

    is_robust = False
    is_not_robust = False


Verdict = Union[Robust, NotRobust, Unknown]
