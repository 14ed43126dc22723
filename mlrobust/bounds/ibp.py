"""Interval bound propagation (IBP): one interval per neuron, pushed forward op by op.

Every rounded affine image is widened outward by ``FP_REL`` times the magnitude of the terms it sums (see the
floating-point policy in :mod:`mlrobust.bounds`), so the intervals contain the float64 forward values too.
ReLU, MaxPool and Reshape are exact in floating point and are not widened.
"""

from __future__ import annotations

import numpy as np

from mlrobust.ir.graph import Network, Node
from mlrobust.ops.base import FP_REL

__all__ = ["FP_REL", "ibp", "interval_affine"]


def interval_affine(node: Node, lows: list[np.ndarray], ups: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Sound interval image of one node's op on per-sample boxes (no batch axis); exact up to the widening."""
    return node.op.interval(node, lows, ups)


def ibp(network: Network, lower: np.ndarray, upper: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Interval bounds for every tensor, given per-sample input bounds."""
    lows = {network.input_name: lower}
    ups = {network.input_name: upper}
    for node in network.nodes:
        lo, hi = interval_affine(node, [lows[t] for t in node.inputs], [ups[t] for t in node.inputs])
        lows[node.output], ups[node.output] = lo, hi
    return lows, ups
