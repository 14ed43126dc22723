"""Sound bound propagation (the incomplete verifier): IBP and CROWN over an input box, and margin bounds.

Floating-point policy. All bounds are computed in float64 from the IR's float64 parameters. Rounding is made
sound by an outward widening: every bound that sums rounded terms is moved outward by ``FP_REL = 1e-10`` times the
sum of the absolute values of those terms (the magnitude ``Σ|w_i x_i| + |b|``, not the result, so cancellation is
covered). A float64 dot product of n terms errs by at most about ``n · 2^-53`` of that magnitude, so the widening
covers sums of up to ~10^6 terms, far more than any layer here, and costs a relative 1e-10 of looseness, invisible
next to the relaxation's. For CROWN the magnitude is that of the final back-substituted coefficients and constants;
rounding inside the back-substitution (coefficients that cancel between layers) is bounded the same way in practice
but not proven — a difference orders of magnitude below ``mlrobust.verify.verdict.ROBUST_TOLERANCE`` (1e-4), which
every robustness decision keeps as a margin anyway (it also absorbs float32 deployment arithmetic). ReLU, MaxPool and
reshapes are exact in floating point and are not widened. The property tests check containment of float64 forward
values with no tolerance at all.
"""

from __future__ import annotations

import time

import numpy as np

from mlrobust.bounds.crown import crown
from mlrobust.bounds.ibp import FP_REL, ibp
from mlrobust.bounds.margin import linear_bounds, margin_bounds
from mlrobust.bounds.result import Bounds, check_box
from mlrobust.errors import InputError
from mlrobust.ir.graph import Network

METHODS = ("ibp", "crown")


def propagate(network: Network, lower: np.ndarray, upper: np.ndarray, method: str = "crown") -> Bounds:
    """Sound bounds on every tensor of ``network`` for inputs in the box ``[lower, upper]``.

    ``lower``/``upper`` have the per-sample input shape (a leading batch axis of 1 is accepted).
    ``method`` is ``"ibp"`` or ``"crown"`` (CROWN results are intersected with IBP's).
    """
    if method not in METHODS:
        raise InputError(f"unknown bound method {method!r}; choose one of {', '.join(METHODS)}")
    lower, upper = check_box(network, lower, upper)
    if method == "crown":
        return crown(network, lower, upper)
    start = time.perf_counter()
    lows, ups = ibp(network, lower, upper)
    return Bounds(network, lows, ups, "ibp", time.perf_counter() - start)


__all__ = ["Bounds", "propagate", "METHODS", "ibp", "crown", "margin_bounds", "linear_bounds", "FP_REL"]
