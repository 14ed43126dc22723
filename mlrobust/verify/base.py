"""The backend-neutral verifier interface that every tier (attack, bounds, MILP, cascade) implements."""

from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

from mlrobust.ir.graph import Network
from mlrobust.verify.spec import Box
from mlrobust.verify.verdict import Verdict

Mode = Literal["decide", "optimize"]


@runtime_checkable
class Verifier(Protocol):
    """Decides whether ``target`` stays among the top-``k`` labels for every input of ``box``.

    ``mode="decide"`` may stop as soon as the sign of the worst margin is known; ``mode="optimize"`` also returns
    weak points (the inputs with the largest margins) for gradient-guided search.
    """

    name: str

    def verify(self, network: Network, box: Box, target: int, k: int = 2, mode: Mode = "decide",
               time_limit: float | None = None) -> Verdict: ...
