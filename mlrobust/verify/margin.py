"""The top-k margin: the quantity every verifier, attack and search in mlrobust reasons about.

For logits ``y``, target ``t`` and ``k``, the margin is the k-th largest of ``y_c - y_t`` over the classes
``c != t``. The target is among the top-k labels (strictly, ties count against it) exactly when the margin is < 0.
"""

from __future__ import annotations

import numpy as np


def topk_margin(logits: np.ndarray, target: int, k: int) -> np.ndarray:
    """k-th largest ``y_c - y_t`` over ``c != target`` for each row of ``logits`` (shape ``(N, C)``) -> ``(N,)``."""
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim == 1:
        logits = logits[None]
    diffs = np.delete(logits, target, axis=1) - logits[:, target : target + 1]
    # k-th largest = element at index C-1-k after an ascending partition of the C-1 differences
    idx = diffs.shape[1] - k
    return np.partition(diffs, idx, axis=1)[:, idx]


def topk_labels(logits: np.ndarray, k: int) -> list[list[int]]:
    """The k labels with the largest logits per row, best first."""
    logits = np.asarray(logits)
    if logits.ndim == 1:
        logits = logits[None]
    order = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return [list(map(int, row)) for row in order]
