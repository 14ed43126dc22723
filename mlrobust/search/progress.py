"""Progress reporting of a search: a small event record and the callback type the CLI (or any caller) plugs in.

The search never prints. It calls ``progress(event)`` after every verifier query and at every phase change; the
rich live display of ``mlrobust verify`` is one such callback, a test's list.append is another.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np


@dataclass
class ProgressEvent:
    """A snapshot of a running search.

    ``phase`` is one of ``"start"``, ``"search"``, ``"cegis"``, ``"upper bounds"``, ``"maximality"``, ``"done"``;
    ``kind`` says what just happened (``"query"`` after a verifier query, ``"improved"`` when the best robust vector
    grew, ``"phase"`` at a phase change). ``calls`` counts queries by the tier that decided them (``cache`` included).
    """

    phase: str
    kind: str
    iteration: int
    best_size: float
    best_eps: np.ndarray
    elapsed: float
    calls: dict[str, int] = field(default_factory=dict)
    milp_calls: int = 0
    message: str = ""

    @property
    def total_calls(self) -> int:
        return int(sum(self.calls.values()))


ProgressCallback = Callable[[ProgressEvent], None]


def notify(callback: ProgressCallback | None, event: ProgressEvent) -> None:
    """Call ``callback`` if there is one (errors in the callback propagate: a broken display is a bug to see)."""
    if callback is None:
        return
    callback(event)
