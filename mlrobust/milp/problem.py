"""A solver-neutral MILP in matrix form, with the map from its columns back to network inputs.

Backends read the arrays directly (HiGHS, Gurobi and SCIP take them in bulk) or go through
:func:`mlrobust.milp.pyomo_model.to_pyomo` for any Pyomo solver.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp


@dataclass
class MilpProblem:
    """maximise ``objective @ v + offset`` s.t. ``row_lower <= A v <= row_upper``, ``col_lower <= v <= col_upper``,
    ``v[integer]`` integral. Every column has finite bounds (the LP-tightening dual bound relies on it).

    ``input_cols[i]`` is the column of flattened input pixel ``i`` or -1 where the box fixes it to ``input_base[i]``.
    """

    col_lower: np.ndarray
    col_upper: np.ndarray
    integer: np.ndarray
    A: sp.csr_matrix
    row_lower: np.ndarray
    row_upper: np.ndarray
    objective: np.ndarray
    offset: float
    input_cols: np.ndarray
    input_base: np.ndarray
    input_shape: tuple[int, ...]
    objective_col: int = -1
    col_kind: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=object))
    row_kind: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=object))
    stats: dict = field(default_factory=dict)
    #: A feasible point (column values) known before solving, e.g. the attack's best input completed by
    #: :meth:`MilpBuilder.assignment`; backends that support MIP starts hand it to the solver.
    start: np.ndarray | None = None

    @property
    def num_cols(self) -> int:
        return int(self.col_lower.size)

    @property
    def num_rows(self) -> int:
        return int(self.A.shape[0])

    @property
    def num_binaries(self) -> int:
        return int(np.count_nonzero(self.integer))

    @property
    def nnz(self) -> int:
        return int(self.A.nnz)

    def input_from(self, v: np.ndarray) -> np.ndarray:
        """The input image (per-sample shape) encoded by column values ``v``."""
        x = self.input_base.copy()
        free = self.input_cols >= 0
        x[free] = np.asarray(v, dtype=np.float64)[self.input_cols[free]]
        return x.reshape(self.input_shape)

    def objective_value(self, v: np.ndarray) -> float:
        return float(self.objective @ np.asarray(v, dtype=np.float64) + self.offset)

    def max_violation(self, v: np.ndarray) -> float:
        """Largest violation of a row, a column bound or integrality by ``v`` (0 for a feasible point)."""
        v = np.asarray(v, dtype=np.float64)
        act = self.A @ v
        viol = [np.max(self.row_lower - act, initial=0.0), np.max(act - self.row_upper, initial=0.0),
                np.max(self.col_lower - v, initial=0.0), np.max(v - self.col_upper, initial=0.0)]
        if self.integer.any():
            vi = v[self.integer]
            viol.append(float(np.max(np.abs(vi - np.round(vi)), initial=0.0)))
        return float(max(viol))

    def relaxed(self) -> "MilpProblem":
        """The LP relaxation (same rows, integrality dropped)."""
        return MilpProblem(self.col_lower, self.col_upper, np.zeros_like(self.integer), self.A, self.row_lower,
                           self.row_upper, self.objective, self.offset, self.input_cols, self.input_base,
                           self.input_shape, self.objective_col, self.col_kind, self.row_kind, dict(self.stats),
                           self.start)
