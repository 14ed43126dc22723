"""Interval bound propagation (IBP): one interval per neuron, pushed forward op by op."""

from __future__ import annotations

import numpy as np

from mlrobust.ir.graph import Network, Node
from mlrobust.ir.ops import Add, AvgPool2d, Conv2d, Dense, MaxPool2d, Relu, Reshape, Scale


def interval_affine(node: Node, lows: list[np.ndarray], ups: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Exact interval image of one node's op on per-sample boxes (no batch axis)."""
    op = node.op
    lo, hi = lows[0], ups[0]
    if isinstance(op, (Dense, Conv2d)):
        mid, rad = (lo + hi) / 2.0, (hi - lo) / 2.0
        if isinstance(op, Dense):
            y_mid = op.weight @ mid.reshape(-1) + op.bias
            y_rad = np.abs(op.weight) @ rad.reshape(-1)
            y_mid, y_rad = y_mid.reshape(node.out_shape), y_rad.reshape(node.out_shape)
        else:
            y_mid = op.forward(mid[None])[0]
            abs_op = Conv2d(np.abs(op.weight), np.zeros_like(op.bias), op.stride, op.padding, op.dilation, op.groups)
            y_rad = abs_op.forward(rad[None])[0]
        return y_mid - y_rad, y_mid + y_rad
    if isinstance(op, (Relu, MaxPool2d, AvgPool2d, Reshape)):  # monotone non-decreasing maps
        return op.forward(lo[None], node.out_shape)[0], op.forward(hi[None], node.out_shape)[0]
    if isinstance(op, Scale):
        a, b = lo * op.mul, hi * op.mul
        return np.minimum(a, b) + op.add, np.maximum(a, b) + op.add
    if isinstance(op, Add):
        lo_b, hi_b = lows[1], ups[1]
        if op.coeff >= 0:
            return lo + op.coeff * lo_b, hi + op.coeff * hi_b
        return lo + op.coeff * hi_b, hi + op.coeff * lo_b
    raise TypeError(f"IBP has no rule for op {op.kind} (node {node.name})")


def ibp(network: Network, lower: np.ndarray, upper: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Interval bounds for every tensor, given per-sample input bounds."""
    lows = {network.input_name: lower}
    ups = {network.input_name: upper}
    for node in network.nodes:
        lo, hi = interval_affine(node, [lows[t] for t in node.inputs], [ups[t] for t in node.inputs])
        lows[node.output], ups[node.output] = lo, hi
    return lows, ups
