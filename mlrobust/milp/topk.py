"""The top-k membership objective: one linear MILP whose optimum is the k-th largest margin over the box.

With margins ``d_c = y_c - y_t`` (``c != t``) bounded by ``L_c <= d_c <= U_c``, binaries ``z_c`` with ``Σ z_c = k``::

    maximise m   subject to   m <= d_c + M_c (1 - z_c),   M_c = max(m_hi - L_c, 0),   m_lo <= m <= m_hi

where ``m_hi``/``m_lo`` are the k-th largest ``U_c``/``L_c``. For fixed logits the best ``z`` picks the k largest
margins, so ``m* = max over the box of the k-th largest margin``; ``m* < 0`` iff the target stays in the top-k.
``M_c`` is big enough: with ``z_c = 0``, ``d_c + M_c >= L_c + m_hi - L_c = m_hi >= m``.
A class with ``U_c < m_lo`` is beaten everywhere by the k classes with the largest ``L``: it can never be among the
top-k, so it gets no binary and no row. If only k classes remain, every ``z_c`` is 1 and no binary is needed.

Decide mode only needs the sign of ``m*``: a class with ``U_c < θ < 0`` can never be among k classes that all
reach 0, so with ``prune_below=θ`` such classes are dropped too. The restricted optimum ``m_R`` then has the same
sign as ``m*`` whenever ``m* >= 0``, and ``m* <= max(m_R, max of the dropped U_c)`` — the bound the verifier
reports (``TopKObjective.dropped_upper``). Fewer classes means fewer binaries and a much tighter relaxation.

The LP relaxation of this disjunction is weak (fractional ``z`` let ``m`` reach ``m_hi``), so each class also gets
the valid row ``m <= m_hi - (m_hi - U_c) z_c`` (a chosen class caps ``m`` at its own upper bound ``U_c``); it
tightens the root bound when the margin bounds come from CROWN or LP tightening.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from mlrobust.milp.encoding import INF, AffineForm, Encoding, unit_rows


def kth_largest(values: np.ndarray, k: int) -> float:
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    return float(np.partition(values, values.size - k)[values.size - k])


def margin_form(out: AffineForm, target: int, ncols: int) -> tuple[AffineForm, np.ndarray]:
    """Forms of ``d_c = y_c - y_t`` for every ``c != target`` and the class index of each row."""
    classes = np.delete(np.arange(out.size), target)
    A = out.widen(ncols)
    D = (A[classes] - A[[target] * classes.size]).tocsr()
    D.eliminate_zeros()
    return AffineForm(D, out.c[classes] - out.c[target]), classes


@dataclass
class TopKObjective:
    """Where the top-k objective lives in the model and what pruning left."""

    objective_col: int
    classes: np.ndarray  # classes c != t that kept a row
    class_binaries: np.ndarray  # column of z_c per kept class (empty if none were needed)
    m_lower: float
    m_upper: float
    pruned: int
    dropped_upper: float = float("-inf")  # largest U_c among classes dropped by ``prune_below`` (decide mode)


def add_topk(enc: Encoding, out: AffineForm, target: int, k: int, margin_lower: np.ndarray,
             margin_upper: np.ndarray, prune_below: float | None = None) -> TopKObjective:
    """Add ``m`` and the top-k rows; ``margin_lower/upper`` have one entry per class (the target's is ignored).

    ``prune_below`` (decide mode, a negative threshold) also drops classes whose ``U_c`` is below it, as long as
    k classes remain; the optimum then only keeps its sign (see the module docstring).
    """
    num_classes = out.size
    all_others = np.delete(np.arange(num_classes), target)
    L_all = np.asarray(margin_lower, dtype=np.float64).reshape(-1)[all_others]
    U_all = np.asarray(margin_upper, dtype=np.float64).reshape(-1)[all_others]
    dropped_upper = float("-inf")
    others, L, U = all_others, L_all, U_all
    if prune_below is not None and np.count_nonzero(U_all >= prune_below) >= k:
        sel = U_all >= prune_below
        if not sel.all():
            dropped_upper = float(np.max(U_all[~sel]))
        others, L, U = all_others[sel], L_all[sel], U_all[sel]
    m_lo, m_hi = kth_largest(L, k), kth_largest(U, k)
    keep = U >= m_lo
    kept = others[keep]
    Lk = L[keep]
    m = enc.add_columns(np.array([m_lo]), np.array([m_hi]), False, "objective")
    if kept.size > k:
        z = enc.add_binaries(kept.size, "class_binary")
    else:
        z = np.zeros(0, dtype=np.int64)
    ncols = enc.ncols
    D, _ = margin_form(out, target, ncols)
    rows = np.searchsorted(all_others, kept)  # D has one row per class != target
    Dk = AffineForm(D.A[rows], D.c[rows])
    em = unit_rows(np.repeat(m, kept.size), ncols)
    if z.size:
        big_m = np.maximum(m_hi - Lk, 0.0)
        # m - d_c + M_c z_c <= M_c
        enc.add_rows(em - Dk.A + unit_rows(z, ncols, big_m), -INF, Dk.c + big_m, "topk")
        enc.add_rows(sp.csr_matrix((np.ones(z.size), (np.zeros(z.size, dtype=np.int64), z)), shape=(1, ncols)),
                     float(k), float(k), "topk_choice")
        # m + (m_hi - U_c) z_c <= m_hi
        enc.add_rows(em + unit_rows(z, ncols, m_hi - U[keep]), -INF, m_hi, "topk_cap")
    else:
        enc.add_rows(em - Dk.A, -INF, Dk.c, "topk")
    return TopKObjective(int(m[0]), kept, z, m_lo, m_hi, int(all_others.size - kept.size), dropped_upper)
