"""Interval bound propagation (IBP): one interval per neuron, pushed forward op by op.

Every rounded affine image is widened outward by ``FP_REL`` times the magnitude of the terms it sums (see the
floating-point policy in :mod:`mlrobust.bounds`), so the intervals contain the float64 forward values too.
ReLU, MaxPool and Reshape are exact in floating point and are not widened.
"""

from __future__ import annotations

import numpy as np

from mlrobust.ir.graph import Network, Node
from mlrobust.ir.ops import Add, AvgPool2d, Conv2d, Dense, MaxPool2d, Relu, Reshape, Scale

#: Outward widening of every rounded bound, relative to the sum of the absolute values of the terms it adds up.
#: A float64 sum of n products errs by at most ~n·2^-53 of that magnitude, so 1e-10 covers n up to ~10^6.
FP_REL = 1e-10


def interval_affine(node: Node, lows: list[np.ndarray], ups: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Sound interval image of one node's op on per-sample boxes (no batch axis); exact up to the widening."""
    op = node.op
    lo, hi = lows[0], ups[0]
    if isinstance(op, (Dense, Conv2d)):
        mid, rad = (lo + hi) / 2.0, (hi - lo) / 2.0
        if isinstance(op, Dense):
            abs_w = np.abs(op.weight)
            y_mid = op.weight @ mid.reshape(-1) + op.bias
            y_rad = abs_w @ rad.reshape(-1)
            mag = abs_w @ np.abs(mid).reshape(-1) + y_rad + np.abs(op.bias)
            y_mid, y_rad, mag = (v.reshape(node.out_shape) for v in (y_mid, y_rad, mag))
        else:
            y_mid = op.forward(mid[None])[0]
            abs_op = Conv2d(np.abs(op.weight), np.zeros_like(op.bias), op.stride, op.padding, op.dilation, op.groups)
            y_rad = abs_op.forward(rad[None])[0]
            mag = abs_op.forward(np.abs(mid)[None])[0] + y_rad + np.abs(op.bias)[:, None, None]
        # mid/rad themselves are rounded: the widening (relative to |W|(|mid|+rad)) also covers that.
        y_rad = y_rad + FP_REL * mag
        return y_mid - y_rad, y_mid + y_rad
    if isinstance(op, (Relu, MaxPool2d, Reshape)):  # monotone and exact in floating point
        return op.forward(lo[None], node.out_shape)[0], op.forward(hi[None], node.out_shape)[0]
    if isinstance(op, AvgPool2d):  # monotone; the sum and the division round
        mag = op.forward(np.maximum(np.abs(lo), np.abs(hi))[None])[0]
        return op.forward(lo[None])[0] - FP_REL * mag, op.forward(hi[None])[0] + FP_REL * mag
    if isinstance(op, Scale):
        a, b = lo * op.mul, hi * op.mul
        mag = np.maximum(np.abs(a), np.abs(b)) + np.abs(op.add)
        return np.minimum(a, b) + op.add - FP_REL * mag, np.maximum(a, b) + op.add + FP_REL * mag
    if isinstance(op, Add):
        lo_b, hi_b = lows[1], ups[1]
        if op.coeff >= 0:
            out_lo, out_hi = lo + op.coeff * lo_b, hi + op.coeff * hi_b
        else:
            out_lo, out_hi = lo + op.coeff * hi_b, hi + op.coeff * lo_b
        mag = np.maximum(np.abs(lo), np.abs(hi)) + abs(op.coeff) * np.maximum(np.abs(lo_b), np.abs(hi_b))
        return out_lo - FP_REL * mag, out_hi + FP_REL * mag
    raise TypeError(f"IBP has no rule for op {op.kind} (node {node.name})")


def ibp(network: Network, lower: np.ndarray, upper: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Interval bounds for every tensor, given per-sample input bounds."""
    lows = {network.input_name: lower}
    ups = {network.input_name: upper}
    for node in network.nodes:
        lo, hi = interval_affine(node, [lows[t] for t in node.inputs], [ups[t] for t in node.inputs])
        lows[node.output], ups[node.output] = lo, hi
    return lows, ups
