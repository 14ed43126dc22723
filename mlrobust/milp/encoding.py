"""Growing column/row stores for a MILP in matrix form, and affine forms of neurons over its columns.

Every tensor of the network is held as an :class:`AffineForm` ``value = A @ v + c`` over the model's columns ``v``
(rows of ``A`` are neurons, flattened in C order). Neurons fixed by the bounds are constant rows (no column, no row),
stably active ReLUs pass their input's form through, and only what the bounds leave open gets a column: this is how
the encoding stays as small as the bounds allow (MIPVerify does the same with JuMP expressions).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

INF = float("inf")


@dataclass
class AffineForm:
    """``value = A @ v + c`` for a block of neurons; ``A`` is CSR with one row per neuron."""

    A: sp.csr_matrix
    c: np.ndarray

    @property
    def size(self) -> int:
        return int(self.c.shape[0])

    def widen(self, ncols: int) -> sp.csr_matrix:
        """``A`` with ``ncols`` columns (columns added after the form was made have zero coefficients)."""
        A = self.A
        if A.shape[1] == ncols:
            return A
        return sp.csr_matrix((A.data, A.indices, A.indptr), shape=(A.shape[0], ncols))

    def rows(self, idx: np.ndarray, ncols: int) -> "AffineForm":
        return AffineForm(self.widen(ncols)[idx], self.c[idx])

    @classmethod
    def constant(cls, values: np.ndarray, ncols: int) -> "AffineForm":
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        return cls(sp.csr_matrix((values.size, ncols)), values.copy())

    def interval(self, col_lower: np.ndarray, col_upper: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Interval bounds of every row given column bounds (exact for one row taken alone)."""
        A = self.widen(col_lower.size)
        pos, neg = A.maximum(0), A.minimum(0)
        lo = pos @ col_lower + neg @ col_upper + self.c
        hi = pos @ col_upper + neg @ col_lower + self.c
        return np.asarray(lo).reshape(-1), np.asarray(hi).reshape(-1)


def unit_rows(cols: np.ndarray, ncols: int, coef: np.ndarray | float = 1.0) -> sp.csr_matrix:
    """CSR matrix with row i holding ``coef[i]`` at column ``cols[i]``."""
    cols = np.asarray(cols, dtype=np.int64)
    data = np.broadcast_to(np.asarray(coef, dtype=np.float64), cols.shape).astype(np.float64)
    indptr = np.arange(cols.size + 1, dtype=np.int64)
    return sp.csr_matrix((data, cols, indptr), shape=(cols.size, ncols))


class Encoding:
    """Append-only columns (bounds, integrality, kind) and constraint rows ``lower <= A v <= upper``.

    Blocks are appended as numpy arrays / sparse matrices and concatenated once at the end, so building never
    touches single coefficients in Python.
    """

    def __init__(self) -> None:
        self._col_lower: list[np.ndarray] = []
        self._col_upper: list[np.ndarray] = []
        self._col_int: list[np.ndarray] = []
        self._col_kind: list[np.ndarray] = []
        self.ncols = 0
        self._rows: list[sp.csr_matrix] = []
        self._row_lower: list[np.ndarray] = []
        self._row_upper: list[np.ndarray] = []
        self._row_kind: list[np.ndarray] = []
        self.nrows = 0
        self._cache: tuple | None = None

    # --- columns -------------------------------------------------------------------------------------------------
    def add_columns(self, lower: np.ndarray, upper: np.ndarray, integer: bool, kind: str) -> np.ndarray:
        """Append columns with the given bounds; returns their indices."""
        lower = np.asarray(lower, dtype=np.float64).reshape(-1)
        upper = np.broadcast_to(np.asarray(upper, dtype=np.float64), lower.shape).reshape(-1)
        n = lower.size
        idx = np.arange(self.ncols, self.ncols + n, dtype=np.int64)
        if n:
            self._col_lower.append(lower.copy())
            self._col_upper.append(upper.copy())
            self._col_int.append(np.full(n, integer))
            self._col_kind.append(np.full(n, kind, dtype=object))
            self.ncols += n
            self._cache = None
        return idx

    def add_binaries(self, n: int, kind: str) -> np.ndarray:
        return self.add_columns(np.zeros(n), np.ones(n), True, kind)

    # --- rows ----------------------------------------------------------------------------------------------------
    def add_rows(self, A: sp.spmatrix, lower: np.ndarray | float, upper: np.ndarray | float, kind: str) -> None:
        """Append rows ``lower <= A v <= upper`` (A may have fewer columns than the model: they are widened)."""
        A = sp.csr_matrix(A)
        n = A.shape[0]
        if n == 0:
            return
        if A.shape[1] != self.ncols:
            A = sp.csr_matrix((A.data, A.indices, A.indptr), shape=(n, self.ncols))
        self._rows.append(A)
        self._row_lower.append(np.broadcast_to(np.asarray(lower, dtype=np.float64), (n,)).copy())
        self._row_upper.append(np.broadcast_to(np.asarray(upper, dtype=np.float64), (n,)).copy())
        self._row_kind.append(np.full(n, kind, dtype=object))
        self.nrows += n
        self._cache = None

    # --- snapshots -----------------------------------------------------------------------------------------------
    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, sp.csr_matrix, np.ndarray, np.ndarray]:
        """``(col_lower, col_upper, integer, A, row_lower, row_upper)`` of everything appended so far."""
        if self._cache is None:
            def cat(parts: list, dtype: type) -> np.ndarray:
                return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)

            col_lower = cat(self._col_lower, np.float64)
            col_upper = cat(self._col_upper, np.float64)
            integer = cat(self._col_int, bool)
            if self._rows:
                A = sp.vstack([sp.csr_matrix((r.data, r.indices, r.indptr), shape=(r.shape[0], self.ncols))
                               for r in self._rows], format="csr")
            else:
                A = sp.csr_matrix((0, self.ncols))
            row_lower = cat(self._row_lower, np.float64)
            row_upper = cat(self._row_upper, np.float64)
            # Collapse the blocks so later snapshots start from one piece.
            self._rows = [A] if A.shape[0] else []
            self._row_lower = [row_lower] if row_lower.size else []
            self._row_upper = [row_upper] if row_upper.size else []
            self._row_kind = [np.concatenate(self._row_kind)] if self._row_kind else []
            self._col_lower = [col_lower] if col_lower.size else []
            self._col_upper = [col_upper] if col_upper.size else []
            self._col_int = [integer] if integer.size else []
            self._col_kind = [np.concatenate(self._col_kind)] if self._col_kind else []
            self._cache = (col_lower, col_upper, integer, A, row_lower, row_upper)
        return self._cache

    def col_kinds(self) -> np.ndarray:
        return np.concatenate(self._col_kind) if self._col_kind else np.zeros(0, dtype=object)

    def row_kinds(self) -> np.ndarray:
        return np.concatenate(self._row_kind) if self._row_kind else np.zeros(0, dtype=object)
