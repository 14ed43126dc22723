"""Bounds on linear functions of the output, above all the class margins ``y_c - y_target``.

A margin bounded directly (the objective ``e_c - e_t`` pushed backwards through the network in one CROWN pass)
is much tighter than the difference of two output intervals, because the shared dependence of ``y_c`` and ``y_t``
on the input cancels. The verifier uses these to prove top-k membership without a MILP and for big-M constants.
"""

from __future__ import annotations

import numpy as np

from mlrobust.bounds.crown import BackSubstitution, crown
from mlrobust.bounds.ibp import FP_REL, ibp
from mlrobust.bounds.result import Bounds, check_box
from mlrobust.errors import InputError
from mlrobust.ir.graph import Network
from mlrobust.ir.torch_exec import torch_threads

MARGIN_METHODS = ("crown", "ibp")


def _intermediate(network: Network, lower: np.ndarray, upper: np.ndarray, method: str,
                  bounds: Bounds | None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per-tensor bounds valid on the box ``[lower, upper]`` (given ones are checked to cover the box)."""
    if bounds is None:
        if method == "crown":
            b = crown(network, lower, upper)
            return dict(b.lower), dict(b.upper)
        return ibp(network, lower, upper)
    if bounds.network is not network and bounds.network.tensors != network.tensors:
        raise InputError("the given bounds belong to a different network")
    if np.any(bounds.input_lower > lower) or np.any(bounds.input_upper < upper):
        raise InputError("the given bounds were computed for a box that does not contain this box")
    lows, ups = dict(bounds.lower), dict(bounds.upper)
    # concretise over the (possibly smaller) box asked for; intermediate bounds of a larger box stay sound
    lows[network.input_name], ups[network.input_name] = lower, upper
    return lows, ups


def linear_bounds(network: Network, lower: np.ndarray, upper: np.ndarray, coeffs: np.ndarray,
                  bounds: Bounds | None = None) -> tuple[np.ndarray, np.ndarray]:
    """CROWN lower/upper bounds of ``coeffs @ y`` over the box, ``y`` the flattened output; ``coeffs``: ``(S, C)``.

    ``bounds`` (e.g. from :func:`mlrobust.bounds.propagate` on this box or a larger one) supplies the intermediate
    pre-activation bounds; without it CROWN computes them first. Results are also intersected with the interval
    bound of ``coeffs @ y`` from the output bounds.
    """
    lower, upper = check_box(network, lower, upper)
    coeffs = np.atleast_2d(np.asarray(coeffs, dtype=np.float64))
    if coeffs.shape[1] != network.num_classes:
        raise InputError(f"linear objective has {coeffs.shape[1]} columns; the model has {network.num_classes} outputs")
    lows, ups = _intermediate(network, lower, upper, "crown", bounds)
    engine = BackSubstitution(network, lows, ups)
    out = network.output_name
    with torch_threads(1):
        lo = engine.lower_bounds(out, np.concatenate([coeffs, -coeffs]))
    lo, hi = lo[: coeffs.shape[0]], -lo[coeffs.shape[0]:]
    i_lo, i_hi = _interval_linear(coeffs, lows[out].reshape(-1), ups[out].reshape(-1))
    return np.maximum(lo, i_lo), np.minimum(hi, i_hi)


def _interval_linear(coeffs: np.ndarray, y_lo: np.ndarray, y_hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Interval bounds of ``coeffs @ y`` for ``y`` in a box, widened outward for rounding."""
    pos, neg = np.clip(coeffs, 0, None), np.clip(coeffs, None, 0)
    lo = pos @ y_lo + neg @ y_hi
    hi = pos @ y_hi + neg @ y_lo
    mag = np.abs(coeffs) @ np.maximum(np.abs(y_lo), np.abs(y_hi))
    return lo - FP_REL * mag, hi + FP_REL * mag


def margin_bounds(network: Network, lower: np.ndarray, upper: np.ndarray, target: int, method: str = "crown",
                  bounds: Bounds | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds of ``y_c - y_target`` for every class ``c`` over the box, each of shape ``(C,)``.

    The entry at ``target`` is 0. ``method="crown"`` bounds each margin directly by back-substitution (reusing
    ``bounds`` as intermediate bounds when given, which must cover the box); ``"ibp"`` differences output intervals.
    The CROWN result is never looser than the interval difference (it is intersected with it).
    """
    lower, upper = check_box(network, lower, upper)
    n = network.num_classes
    if isinstance(target, bool) or not isinstance(target, (int, np.integer)) or not 0 <= int(target) < n:
        raise InputError(f"target {target!r} is not a class index of this model (0 .. {n - 1})")
    if method not in MARGIN_METHODS:
        raise InputError(f"unknown margin bound method {method!r}; choose one of {', '.join(MARGIN_METHODS)}")
    target = int(target)
    coeffs = np.eye(n)
    coeffs[:, target] -= 1.0  # row c: e_c - e_target (row target is zero)
    if method == "ibp":
        lows, ups = _intermediate(network, lower, upper, "ibp", bounds)
        out = network.output_name
        lo, hi = _interval_linear(coeffs, lows[out].reshape(-1), ups[out].reshape(-1))
    else:
        lo, hi = linear_bounds(network, lower, upper, coeffs, bounds)
    lo[target] = hi[target] = 0.0
    return lo, hi
