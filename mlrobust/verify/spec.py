"""What a verifier is asked: an input box and a top-k property of a target label."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mlrobust.errors import InputError

#: How a VNN-LIB region is decided after the attack and the bounds: the MILP, branch and bound, or both in turn.
VNNLIB_VERIFIERS = ("cascade", "bab", "cascade-bab")


@dataclass(frozen=True, eq=False)
class Box:
    """Per-pixel input bounds with the network's per-sample input shape (no batch axis)."""

    lower: np.ndarray
    upper: np.ndarray

    def __post_init__(self) -> None:
        lo = np.asarray(self.lower, dtype=np.float64)
        hi = np.asarray(self.upper, dtype=np.float64)
        if lo.shape != hi.shape:
            raise InputError(f"box bounds have different shapes {lo.shape} and {hi.shape}")
        if np.any(lo > hi):
            raise InputError("box is empty: a lower bound exceeds its upper bound")
        if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
            raise InputError("box bounds must be finite")
        object.__setattr__(self, "lower", lo)
        object.__setattr__(self, "upper", hi)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.lower.shape

    @property
    def center(self) -> np.ndarray:
        return (self.lower + self.upper) / 2.0

    def contains(self, x: np.ndarray, atol: float = 0.0) -> bool:
        x = np.asarray(x).reshape(self.shape)
        return bool(np.all(x >= self.lower - atol) and np.all(x <= self.upper + atol))

    def clip(self, x: np.ndarray) -> np.ndarray:
        return np.clip(np.asarray(x, dtype=np.float64).reshape(self.shape), self.lower, self.upper)

    @classmethod
    def around(cls, x: np.ndarray, eps: float, clip: tuple[float, float] | None = (0.0, 1.0)) -> "Box":
        """The L-inf ball of radius ``eps`` around ``x``, clipped to ``clip`` if given."""
        x = np.asarray(x, dtype=np.float64)
        lo, hi = x - eps, x + eps
        if clip is not None:
            lo, hi = np.clip(lo, *clip), np.clip(hi, *clip)
        return cls(lo, hi)


@dataclass(frozen=True)
class TopK:
    """The property "label ``target`` stays among the ``k`` largest outputs"."""

    target: int
    k: int = 2

    def validate(self, num_classes: int) -> None:
        if not 0 <= self.target < num_classes:
            raise InputError(f"target {self.target} is not a label of this model (labels 0..{num_classes - 1})")
        if not 1 <= self.k < num_classes:
            raise InputError(f"k must be between 1 and {num_classes - 1} for a model with {num_classes} labels")
