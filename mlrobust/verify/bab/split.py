"""Splitting a batch of domains into children, one or several levels at once, as array operations.

A parent split on ``L`` decisions at once has ``2**L`` children: child ``c`` takes side ``+`` of decision ``l``
where bit ``l`` of ``c`` is 0 and side ``-`` where it is 1, so the children's split regions partition the parent
(up to the shared boundary ``z = 0`` / the midpoint, which has measure zero and belongs to both sides: sound).
Children start as copies of their parent: its bounds (valid on a subset), its row bounds and its α/β warm start;
ReLU splits keep the parent's box row, input bisection gives each child a row of its own.
"""

from __future__ import annotations

import numpy as np
import torch

from mlrobust.ops.base import BETA
from mlrobust.verify.bab.store import Domains


def level_signs(levels: int) -> np.ndarray:
    """``(2**levels, levels)`` sides of every child: +1 where bit ``l`` of the child's number is 0, else -1."""
    bits = (np.arange(2 ** levels)[:, None] >> np.arange(levels)[None]) & 1
    return np.where(bits == 1, -1, 1).astype(np.int8)


def split_relus(parents: Domains, relu_nodes: tuple[str, ...], layer: np.ndarray, index: np.ndarray,
                support: dict[str, torch.Tensor] | None = None) -> Domains:
    """Children of each parent ``b`` fixing the sign of neuron ``index[b, l]`` of ReLU node ``relu_nodes[layer[b,
    l]]`` for every level ``l`` (``layer``/``index``: ``(B, L)``, distinct neurons per parent): ``B * 2**L``
    children, those of parent ``b`` contiguous. ``support``: per node kept compact, the neurons the warm starts'
    parameters are kept for (:meth:`~mlrobust.verify.bab_bounds.AlphaEngine.fix_support`; None: dense)."""
    b, levels = layer.shape
    per = 2 ** levels
    kids = parents.take(np.repeat(np.arange(b), per))
    n = kids.size
    sign = np.tile(level_signs(levels), (b, 1))  # (n, L)
    lay = np.repeat(layer, per, axis=0)
    idx = np.repeat(index, per, axis=0)
    for r, name in enumerate(relu_nodes):
        flat = kids.splits[name].reshape(n, -1)
        beta = kids.warm.get(f"{BETA.name}.{name}")
        units = None if support is None or name not in support else support[name].cpu().numpy()
        for lev in range(levels):
            rows = np.flatnonzero(lay[:, lev] == r)
            flat[rows, idx[rows, lev]] = sign[rows, lev]
            kids.changed[rows, r] = True
            if beta is not None and rows.size:
                # the new split's multiplier is unknown (NaN), which marks it for seeding (alpha_crown._optimise)
                at = idx[rows, lev]
                if units is not None:  # its column in the compact layout (a neuron off it has no multiplier)
                    col = np.searchsorted(units, at).clip(max=max(units.size - 1, 0))
                    kept = (units[col] == at) if units.size else np.zeros(at.size, dtype=bool)
                    rows, at = rows[kept], col[kept]
                t_rows = torch.as_tensor(rows, device=beta.device)
                t_idx = torch.as_tensor(at, device=beta.device)
                beta.reshape(n, beta.shape[1], -1)[t_rows, :, t_idx] = float("nan")
    kids.depth += levels
    return kids


def split_inputs(parents: Domains, dims: np.ndarray) -> Domains:
    """Children of each parent ``b`` bisecting its box along input dimensions ``dims[b, l]`` for every level ``l``
    (``dims``: ``(B, L)``, distinct per parent): side ``+`` is the lower half, side ``-`` the upper half."""
    b, levels = dims.shape
    per = 2 ** levels
    kids = parents.take(np.repeat(np.arange(b), per))
    n = kids.size
    lo, hi = kids.lower.reshape(n, -1), kids.upper.reshape(n, -1)  # copies gathered from the box table
    sign = np.tile(level_signs(levels), (b, 1))
    d = np.repeat(dims, per, axis=0)
    rows = np.arange(n)
    for lev in range(levels):
        dim = d[:, lev]
        mid = lo[rows, dim] + (hi[rows, dim] - lo[rows, dim]) / 2.0
        low_half = sign[:, lev] > 0
        hi[rows[low_half], dim[low_half]] = mid[low_half]
        lo[rows[~low_half], dim[~low_half]] = mid[~low_half]
    shape = (n, *kids.boxes.lower.shape[1:])
    kids.set_boxes(lo.reshape(shape), hi.reshape(shape))  # new rows of the table: the halves
    kids.box_changed[:] = True
    kids.depth += levels
    return kids
