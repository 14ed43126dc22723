"""ReLU as big-M rows (Tjeng et al. 2019): only neurons whose pre-activation bounds straddle zero get a binary.

For an unstable neuron with pre-activation ``x̂ ∈ [l, u]``, ``l < 0 < u``, output ``y ∈ [0, u]`` and binary ``a``::

    y >= x̂,   y <= x̂ - l (1 - a),   y <= u a

is exact: ``a = 1`` forces ``y = x̂ >= 0``, ``a = 0`` forces ``y = 0 >= x̂``. Stably inactive neurons (``u <= 0``) are
the constant 0 and stably active ones (``l >= 0``) pass their input form through: neither gets a column or a row.

A neuron that is unstable only by a hair (``min(u, -l) < RELAX_BELOW``) gets the triangle relaxation
``y >= 0, y >= x̂, y <= u (x̂ - l) / (u - l)`` instead of a binary. Its output is then off by less than
``min(u, -l)`` at most, the model stays a relaxation (so a proven bound stays a proof; points are re-checked on the
network anyway), and the solver is spared big-M coefficients of order 1e-6 that HiGHS flags as numerically bad.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from mlrobust.milp.encoding import INF, AffineForm, Encoding, unit_rows

#: Unstable neurons with ``min(u, -l)`` below this get the LP relaxation instead of a binary (see above).
RELAX_BELOW = 1e-6


@dataclass
class ReluColumns:
    """Where a ReLU layer's unstable neurons live: flat neuron index and output column per unstable neuron; the
    binary column of those encoded exactly (``exact`` indexes into ``unstable``)."""

    unstable: np.ndarray
    y: np.ndarray
    a: np.ndarray
    exact: np.ndarray

    def assign(self, v: np.ndarray, pre: np.ndarray) -> None:
        """Write the values a real pre-activation ``pre`` (flattened) implies into ``v``."""
        x = pre[self.unstable]
        v[self.y] = np.maximum(x, 0.0)
        v[self.a] = (x[self.exact] >= 0).astype(np.float64)


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
    exact = np.flatnonzero(np.minimum(u_u, -l_u) >= RELAX_BELOW)
    relaxed = np.flatnonzero(np.minimum(u_u, -l_u) < RELAX_BELOW)
    y = enc.add_columns(np.zeros(nu), u_u, False, "relu")
    a = enc.add_binaries(exact.size, "relu_binary")
    ncols = enc.ncols
    if nu:
        xu = x.rows(uidx, ncols)
        ey = unit_rows(y, ncols)
        # y - x̂ >= 0
        enc.add_rows(ey - xu.A, xu.c, INF, "relu_lower")
    if exact.size:
        xe = AffineForm(xu.A[exact], xu.c[exact])
        ye = unit_rows(y[exact], ncols)
        le, ue = l_u[exact], u_u[exact]
        # y - x̂ - l a <= -l   (y <= x̂ - l (1 - a))
        enc.add_rows(ye - xe.A - unit_rows(a, ncols, le), -INF, xe.c - le, "relu_upper_input")
        # y - u a <= 0
        enc.add_rows(ye - unit_rows(a, ncols, ue), -INF, 0.0, "relu_upper_active")
    if relaxed.size:
        xr = AffineForm(xu.A[relaxed], xu.c[relaxed])
        lr, ur = l_u[relaxed], u_u[relaxed]
        slope = ur / (ur - lr)
        # y - s x̂ <= -s l  (the upper side of the triangle)
        enc.add_rows(unit_rows(y[relaxed], ncols) - xr.A.multiply(slope[:, None]).tocsr(), -INF,
                     slope * (xr.c - lr), "relu_relaxed")
    # Output form: active rows keep the input's form, unstable rows are their new column, inactive rows are 0.
    keep = sp.diags(active.astype(np.float64), format="csr")
    A = keep @ x.widen(ncols)
    if nu:
        Y = sp.csr_matrix((np.ones(nu), (uidx, y)), shape=(x.size, ncols))
        A = A + Y
    A = sp.csr_matrix(A)
    A.eliminate_zeros()
    c = np.where(active, x.c, 0.0)
    stats = {"inactive": int(inactive.sum()), "active": int(active.sum()), "unstable": int(nu),
             "relaxed": int(relaxed.size)}
    return AffineForm(A, c), stats, ReluColumns(uidx, y, a, exact)
