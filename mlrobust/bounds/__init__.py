"""Sound bound propagation (the incomplete verifier): IBP and CROWN over an input box."""

from __future__ import annotations

import time

import numpy as np

from mlrobust.bounds.ibp import ibp
from mlrobust.bounds.result import Bounds
from mlrobust.errors import InputError
from mlrobust.ir.graph import Network

METHODS = ("ibp", "crown")


def _as_sample(network: Network, arr: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(arr, dtype=np.float64)
    if arr.shape == tuple(network.input_shape) and arr.shape[0] == 1:
        arr = arr[0]
    if arr.shape != network.sample_shape:
        raise InputError(f"{what} bound has shape {arr.shape}; the model expects {network.sample_shape}")
    return arr


def propagate(network: Network, lower: np.ndarray, upper: np.ndarray, method: str = "crown") -> Bounds:
    """Sound bounds on every tensor of ``network`` for inputs in the box ``[lower, upper]``.

    ``lower``/``upper`` have the per-sample input shape (a leading batch axis of 1 is accepted).
    ``method`` is ``"ibp"`` or ``"crown"`` (CROWN results are intersected with IBP's).
    """
    lower = _as_sample(network, lower, "lower")
    upper = _as_sample(network, upper, "upper")
    if np.any(lower > upper):
        raise InputError("input box is empty: some lower bound exceeds its upper bound")
    if not (np.all(np.isfinite(lower)) and np.all(np.isfinite(upper))):
        raise InputError("input box bounds must be finite numbers")
    start = time.perf_counter()
    if method == "ibp":
        lows, ups = ibp(network, lower, upper)
        return Bounds(network, lows, ups, "ibp", time.perf_counter() - start)
    if method == "crown":
        from mlrobust.bounds.crown import crown

        return crown(network, lower, upper)
    raise InputError(f"unknown bound method {method!r}; choose one of {', '.join(METHODS)}")


__all__ = ["Bounds", "propagate", "METHODS", "ibp"]
