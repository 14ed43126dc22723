"""Interval bound propagation (IBP): one interval per neuron, pushed forward op by op.

Every rounded affine image is widened outward by ``FP_REL`` times the magnitude of the terms it sums (see the
floating-point policy in :mod:`mlrobust.bounds`), so the intervals contain the float64 forward values too.
ReLU, MaxPool and Reshape are exact in floating point and are not widened.

:func:`propagate_intervals` is the one forward pass every engine runs (IBP itself, CROWN's sweep, α-CROWN after
re-bounding a layer, the bound tier after tightening): each node's interval image, intersected with the tensor's
prior bounds where there are some, optionally refined (CROWN back-substitutes there) before the next node reads it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from mlrobust.ir.graph import Network, Node
from mlrobust.ops.base import FP_REL

__all__ = ["FP_REL", "ibp", "intersect_intervals", "interval_affine", "propagate_intervals"]

#: A refinement step of the forward pass: ``(node, lower, upper)`` of the node's output -> tighter sound bounds.
Refine = Callable[[Node, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def interval_affine(node: Node, lows: list[np.ndarray], ups: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Sound interval image of one node's op on per-sample boxes (no batch axis); exact up to the widening."""
    return node.op.interval(node, lows, ups)


def intersect(lo: np.ndarray, hi: np.ndarray, prior_lo: np.ndarray,
              prior_hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two sound bounds of one tensor intersected; where they cross, which only rounding can cause, the prior stays."""
    new_lo, new_hi = np.maximum(lo, prior_lo), np.minimum(hi, prior_hi)
    ok = new_lo <= new_hi
    return np.where(ok, new_lo, prior_lo), np.where(ok, new_hi, prior_hi)


def propagate_intervals(network: Network, lows: dict[str, np.ndarray], ups: dict[str, np.ndarray],
                        prior_lo: Mapping[str, np.ndarray] | None = None,
                        prior_hi: Mapping[str, np.ndarray] | None = None, refine: Refine | None = None) -> None:
    """Fill ``lows``/``ups`` (which hold the input box, per sample) with bounds of every tensor, node by node: the
    op's interval image of its inputs' bounds, intersected (:func:`intersect`) with ``prior_lo``/``prior_hi`` of
    that tensor where they have it, then passed through ``refine`` when given. The dicts are filled in place, so a
    ``refine`` that reads them (CROWN's back-substitution) sees every tensor before the node."""
    for node in network.nodes:
        out = node.output
        lo, hi = interval_affine(node, [lows[t] for t in node.inputs], [ups[t] for t in node.inputs])
        if prior_lo is not None and prior_hi is not None and out in prior_lo:
            lo, hi = intersect(lo, hi, prior_lo[out], prior_hi[out])
        if refine is not None:
            lo, hi = refine(node, lo, hi)
        lows[out], ups[out] = lo, hi


def ibp(network: Network, lower: np.ndarray, upper: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Interval bounds for every tensor, given per-sample input bounds."""
    lows = {network.input_name: lower}
    ups = {network.input_name: upper}
    propagate_intervals(network, lows, ups)
    return lows, ups


def intersect_intervals(network: Network, lower: Mapping[str, np.ndarray],
                        upper: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Bounds of every tensor (``lower``/``upper`` hold all of them, some already tightened) intersected with the
    interval image of their inputs' intersected bounds: carries a tightening forward to every later tensor."""
    lows = {network.input_name: lower[network.input_name]}
    ups = {network.input_name: upper[network.input_name]}
    propagate_intervals(network, lows, ups, lower, upper)
    return lows, ups
