"""A disjunction of conjunctions of linear output constraints as one MILP objective (VNN-LIB properties).

Clause ``i`` holds when every row ``g_ij(y) = h_ij - G_ij · y >= 0``. With bounds ``L_ij <= g_ij <= U_ij``::

    maximise m   subject to   m <= g_ij + M_ij (1 - δ_i),   Σ_i δ_i = 1,   M_ij = max(m_hi - L_ij, 0)

where ``m_hi = max_i min_j U_ij``. The optimum is ``max_i min_j g_ij`` over the box: some clause is satisfiable
(VNN-LIB "sat") iff it is ``>= 0``. The big-M argument is the one of :mod:`mlrobust.milp.topk` (k = 1 over
clauses, with a minimum inside each clause); a single clause needs no binary. As for top-k, deciding only the sign
allows dropping every clause with ``min_j U_ij < prune_below < 0`` (it can never hold); the optimum is then capped by
``max(m_R, dropped_upper)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from mlrobust.milp.encoding import INF, AffineForm, Encoding, unit_rows


@dataclass
class Clause:
    """``G @ y <= h`` (all rows) over the flattened output ``y``."""

    G: np.ndarray  # (rows, num_outputs)
    h: np.ndarray  # (rows,)


def clause_forms(out: AffineForm, clauses: list[Clause], ncols: int) -> list[AffineForm]:
    """Forms of ``g_ij = h_ij - G_ij · y`` per clause."""
    A = out.widen(ncols)
    forms = []
    for cl in clauses:
        G = sp.csr_matrix(np.asarray(cl.G, dtype=np.float64))
        forms.append(AffineForm((-(G @ A)).tocsr(), np.asarray(cl.h, dtype=np.float64) - G @ out.c))
    return forms


def clause_margin(logits: np.ndarray, clauses: list[Clause]) -> np.ndarray:
    """``max_i min_j (h_ij - G_ij · y)`` per row of ``logits`` (N, C); ``>= 0`` where some clause holds."""
    y = np.asarray(logits, dtype=np.float64)
    vals = [np.min(np.asarray(cl.h)[None, :] - y @ np.asarray(cl.G).T, axis=1) if len(cl.h) else np.full(len(y), INF)
            for cl in clauses]
    return np.max(np.stack(vals, axis=1), axis=1)


@dataclass
class DisjunctionObjective:
    objective_col: int
    clause_binaries: np.ndarray
    m_lower: float
    m_upper: float
    dropped_upper: float = float("-inf")


def add_disjunction(enc: Encoding, out: AffineForm, clauses: list[Clause], lower: list[np.ndarray],
                    upper: list[np.ndarray], prune_below: float | None = None) -> DisjunctionObjective:
    """Add ``m`` and its rows; ``lower[i]``/``upper[i]`` bound the rows ``g_ij`` of clause ``i``.

    Every clause must have at least one row (a clause without rows always holds; callers decide it directly).
    """
    mins_U = np.array([np.min(u) for u in upper])
    mins_L = np.array([np.min(lo) for lo in lower])
    dropped_upper = float("-inf")
    candidates = np.arange(len(clauses))
    if prune_below is not None and np.any(mins_U >= prune_below):
        candidates = np.flatnonzero(mins_U >= prune_below)
        if candidates.size < len(clauses):
            dropped_upper = float(np.max(np.delete(mins_U, candidates)))
    m_hi, m_lo = float(np.max(mins_U[candidates])), float(np.max(mins_L[candidates]))
    # A clause whose best case is below another clause's worst case never attains the maximum.
    keep = candidates[mins_U[candidates] >= m_lo]
    m = enc.add_columns(np.array([m_lo]), np.array([m_hi]), False, "objective")
    delta = enc.add_binaries(keep.size, "clause_binary") if keep.size > 1 else np.zeros(0, dtype=np.int64)
    ncols = enc.ncols
    forms = clause_forms(out, [clauses[i] for i in keep], ncols)
    for pos, (i, g) in enumerate(zip(keep, forms)):
        em = unit_rows(np.repeat(m, g.size), ncols)
        if delta.size:
            big_m = np.maximum(m_hi - lower[i], 0.0)
            enc.add_rows(em - g.A + unit_rows(np.repeat(delta[pos], g.size), ncols, big_m), -INF, g.c + big_m,
                         "clause")
        else:
            enc.add_rows(em - g.A, -INF, g.c, "clause")
    if delta.size:
        enc.add_rows(sp.csr_matrix((np.ones(delta.size), (np.zeros(delta.size, dtype=np.int64), delta)),
                                   shape=(1, ncols)), 1.0, 1.0, "clause_choice")
    return DisjunctionObjective(int(m[0]), delta, m_lo, m_hi, dropped_upper)
