"""ReLU as big-M rows (Tjeng et al. 2019): only neurons whose pre-activation bounds straddle zero get a binary.

For an unstable neuron with pre-activation ``x̂ ∈ [l, u]``, ``l < 0 < u``, output ``y ∈ [0, u]`` and binary ``a``::

    y >= x̂,   y <= x̂ - l (1 - a),   y <= u a

is exact: ``a = 1`` forces ``y = x̂ >= 0``, ``a = 0`` forces ``y = 0 >= x̂``. Stably inactive neurons (``u <= 0``) are
the constant 0 and stably active ones (``l >= 0``) pass their input form through: neither gets a column or a row.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from dataclasses import dataclass

from mlrobust.milp.encoding import INF, AffineForm, Encoding, unit_rows


@dataclass
class ReluColumns:
    """Where a ReLU layer's unstable neurons live: flat neuron index, output column, binary column."""

    unstable: np.ndarray
    y: np.ndarray
    a: np.ndarray

    def assign(self, v: np.ndarray, pre: np.ndarray) -> None:
        """Write the values a real pre-activation ``pre`` (flattened) implies into ``v``."""
        x = pre[self.unstable]
        v[self.y] = np.maximum(x, 0.0)
        v[self.a] = (x >= 0).astype(np.float64)


def relu_split(lower: np.ndarray, upper: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boolean masks (inactive, active, unstable) of flattened pre-activation bounds."""
    lower, upper = lower.reshape(-1), upper.reshape(-1)
    inactive = upper <= 0
    active = (lower >= 0) & ~inactive
    return inactive, active, ~(inactive | active)


def encode_relu(enc: Encoding, x: AffineForm, lower: np.ndarray,
                upper: np.ndarray) -> tuple[AffineForm, dict, ReluColumns]:
    """Encode ``y = max(x, 0)`` given pre-activation bounds; returns the output form, counts and columns."""
    lower, upper = lower.reshape(-1).astype(np.float64), upper.reshape(-1).astype(np.float64)
    inactive, active, unstable = relu_split(lower, upper)
    uidx = np.flatnonzero(unstable)
    nu = uidx.size
    l_u, u_u = lower[uidx], upper[uidx]
    y = enc.add_columns(np.zeros(nu), u_u, False, "relu")
    a = enc.add_binaries(nu, "relu_binary")
    ncols = enc.ncols
    if nu:
        xu = x.rows(uidx, ncols)
        ey = unit_rows(y, ncols)
        # y - x̂ >= 0
        enc.add_rows(ey - xu.A, xu.c, INF, "relu_lower")
        # y - x̂ - l a <= -l   (y <= x̂ - l (1 - a))
        enc.add_rows(ey - xu.A - unit_rows(a, ncols, l_u), -INF, xu.c - l_u, "relu_upper_input")
        # y - u a <= 0
        enc.add_rows(ey - unit_rows(a, ncols, u_u), -INF, 0.0, "relu_upper_active")
    # Output form: active rows keep the input's form, unstable rows are their new column, inactive rows are 0.
    keep = sp.diags(active.astype(np.float64), format="csr")
    A = keep @ x.widen(ncols)
    if nu:
        Y = sp.csr_matrix((np.ones(nu), (uidx, y)), shape=(x.size, ncols))
        A = A + Y
    A = sp.csr_matrix(A)
    A.eliminate_zeros()
    c = np.where(active, x.c, 0.0)
    stats = {"inactive": int(inactive.sum()), "active": int(active.sum()), "unstable": int(nu)}
    return AffineForm(A, c), stats, ReluColumns(uidx, y, a)
