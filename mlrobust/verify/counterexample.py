"""Re-checking candidate counterexamples on the real network before anything is reported.

A point found by a solver or an attack counts only after it is moved into the box (and onto float32 numbers, the
precision of the deployed ONNX model, where the box allows it) and the property's margin is ``>= 0`` both in the
float64 numpy IR and in the float32 torch executor. The margin of a top-k property is the k-th largest
``y_c - y_t``; other output properties (VNN-LIB) plug in through :class:`OutputProperty`.
"""

from __future__ import annotations

import itertools
import math
import weakref
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from mlrobust.ir.graph import Network
from mlrobust.ir.torch_exec import TorchNetwork, to_torch, torch_threads
from mlrobust.verify.margin import topk_margin
from mlrobust.verify.spec import Box
from mlrobust.verify.verdict import WeakPoint

_TORCH: "weakref.WeakKeyDictionary[Network, TorchNetwork]" = weakref.WeakKeyDictionary()


def torch_module(network: Network) -> TorchNetwork:
    """The float32 torch executor of ``network``, built once per network."""
    module = _TORCH.get(network)
    if module is None:
        module = to_torch(network, dtype=torch.float32)
        _TORCH[network] = module
    return module


class OutputProperty(Protocol):
    """A property of the logits with a margin: the property is violated exactly where the margin is ``>= 0``."""

    def margin(self, logits: np.ndarray) -> np.ndarray:
        """(N, C) float64 logits -> (N,) margins."""
        ...

    def margin_torch(self, logits: torch.Tensor) -> torch.Tensor:
        """Differentiable version for attacks: (N, C) tensor -> (N,)."""
        ...


@runtime_checkable
class ClauseMargins(Protocol):
    """An output property that is a disjunction of clauses: violated where some clause's margin is ``>= 0``, its
    margin the largest clause margin. Attacks aim single restarts at single clauses through it."""

    def clause_margins_torch(self, logits: torch.Tensor) -> torch.Tensor:
        """(N, C) tensor -> (N, n_clauses) clause margins, whose row-wise maximum is ``margin_torch``."""
        ...


#: Above this many k-subsets a top-k property is attacked as one clause (its k-th margin), not clause by clause.
MAX_TOPK_CLAUSES = 256


@dataclass(frozen=True)
class TopKProperty:
    """"``target`` is among the top-``k``" — violated where the k-th largest ``y_c - y_t`` is ``>= 0``."""

    target: int
    k: int = 2

    def margin(self, logits: np.ndarray) -> np.ndarray:
        return topk_margin(logits, self.target, self.k)

    def margin_torch(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.topk(self._others(logits), self.k, dim=1).values[:, -1]

    def _others(self, logits: torch.Tensor) -> torch.Tensor:
        diffs = logits - logits[:, self.target : self.target + 1]
        return torch.cat([diffs[:, : self.target], diffs[:, self.target + 1 :]], dim=1)

    def clause_margins_torch(self, logits: torch.Tensor) -> torch.Tensor:
        """One clause per k-subset S of the other labels, margin ``min_{c in S} (y_c - y_t)`` (the k-th largest
        difference is the largest of them); a single clause when there are more than :data:`MAX_TOPK_CLAUSES`."""
        others = self._others(logits)
        n_others = others.shape[1]
        if self.k > n_others or math.comb(n_others, self.k) > MAX_TOPK_CLAUSES:
            return self.margin_torch(logits)[:, None]
        subsets = torch.as_tensor(list(itertools.combinations(range(n_others), self.k)), dtype=torch.long)
        return others[:, subsets].min(dim=2).values


def snap_into_box(box: Box, x: np.ndarray) -> np.ndarray:
    """``x`` clipped into the box and rounded to float32 values that still lie in it.

    Rounding to float32 makes the point the same for the float64 IR, the float32 executor and an ONNX runtime;
    where a box interval holds no float32 number (a degenerate interval at a non-float32 value) the float64 value is
    kept.
    """
    x = box.clip(x)
    x32 = x.astype(np.float32)
    # float32 rounding may step just outside; move one ulp back in.
    below = x32.astype(np.float64) < box.lower
    x32 = np.where(below, np.nextafter(x32, np.float32(np.inf)), x32)
    above = x32.astype(np.float64) > box.upper
    x32 = np.where(above, np.nextafter(x32, np.float32(-np.inf)), x32)
    y = x32.astype(np.float64)
    inside = (y >= box.lower) & (y <= box.upper)
    return np.where(inside, y, x)


@dataclass
class CheckedPoint:
    """A point of the box with its margin in float64 (numpy IR) and float32 (torch executor)."""

    x: np.ndarray
    margin: float
    margin_torch: float

    @property
    def confirmed(self) -> bool:
        """A real counterexample: the property fails in both evaluations."""
        return bool(self.margin >= 0.0 and self.margin_torch >= 0.0)

    def weak_point(self) -> WeakPoint:
        return WeakPoint(self.x, float(self.margin))


def check_points(network: Network, box: Box, xs: list[np.ndarray] | np.ndarray, prop: OutputProperty,
                 torch_net: TorchNetwork | None = None) -> list[CheckedPoint]:
    """Snap every candidate into the box and evaluate the property's margin on both executors (batched)."""
    if len(xs) == 0:
        return []
    batch = np.stack([snap_into_box(box, x) for x in xs])
    m64 = prop.margin(network.logits(batch))
    net = torch_net or torch_module(network)
    with torch_threads(1), torch.no_grad():
        logits32 = net.logits(torch.as_tensor(batch, dtype=torch.float32))
        m32 = prop.margin(logits32.double().numpy())
    # Each point owns its values: a row view would keep the whole batch alive for as long as any one point is
    # kept (a stored counterexample held its attack's 8 restarts, 17 MB at 3x300x300 instead of 2 MB).
    return [CheckedPoint(batch[i].copy(), float(m64[i]), float(m32[i])) for i in range(batch.shape[0])]


def confirm(network: Network, box: Box, x: np.ndarray, target: int, k: int) -> CheckedPoint:
    """Check one candidate counterexample of the top-k property."""
    return check_points(network, box, [x], TopKProperty(target, k))[0]


def weak_points(points: list[CheckedPoint], limit: int | None = None) -> list[WeakPoint]:
    """Distinct points as WeakPoints, largest margin first."""
    out: list[CheckedPoint] = []
    for p in sorted(points, key=lambda q: -q.margin):
        if all(np.max(np.abs(p.x - q.x)) > 0 for q in out):
            out.append(p)
    if limit is not None:
        out = out[:limit]
    return [p.weak_point() for p in out]


def check_query(network: Network, box: Box, target: int, k: int) -> None:
    """Raise InputError unless ``box`` fits the network's input and (target, k) fits its outputs."""
    from mlrobust.errors import InputError
    from mlrobust.verify.spec import TopK

    if tuple(box.shape) != tuple(network.sample_shape):
        raise InputError(f"box of shape {tuple(box.shape)} does not fit the model input of shape "
                         f"{tuple(network.sample_shape)}")
    if isinstance(target, bool) or not isinstance(target, (int, np.integer)):
        raise InputError(f"target must be a class index, got {target!r}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise InputError(f"k must be an integer, got {k!r}")
    TopK(int(target), int(k)).validate(network.num_classes)
