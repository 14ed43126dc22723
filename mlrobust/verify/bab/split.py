"""Splitting a batch of domains into children, one or several levels at once, as array operations.

A parent split on ``L`` decisions at once has ``2**L`` children: child ``c`` takes side ``+`` of decision ``l``
where bit ``l`` of ``c`` is 0 and side ``-`` where it is 1, so the children's split regions partition the parent
(up to the shared boundary ``z = 0`` / the midpoint, which has measure zero and belongs to both sides: sound).
Children start as copies of their parent: its bounds (valid on a subset), its row bounds and its α/β warm start;
ReLU splits keep the parent's box row, input bisection gives each child a row of its own.

A decision may also split a MaxPool window (:func:`split_windows`): side ``+`` restricts the window to its input
``j`` with the largest upper bound among those that may still attain its maximum ("the maximum is attained at
``j``": the window's output is exactly ``x_j``), side ``-`` to the others. Every point lies in at least one of the
two (ties in both), so the children cover their parent, which is what soundness needs; see
:class:`~mlrobust.ops.maxpool2d.AlphaPoolRelax` for the relaxation of a restricted window.
"""

from __future__ import annotations

import numpy as np
import torch

from mlrobust.ops.base import BETA
from mlrobust.ops.coeffs import support_columns
from mlrobust.ops.maxpool2d import POOL_THRESHOLDS, POOL_WEIGHTS, window_live
from mlrobust.verify.bab.store import DomainLayout, Domains


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
        beta = [v for v in (kids.warm.get(f"{BETA.name}.{name}"),) if v is not None]
        for lev in range(levels):
            rows = np.flatnonzero(lay[:, lev] == r)
            flat[rows, idx[rows, lev]] = sign[rows, lev]
            kids.changed[rows, r] = True
            if rows.size:
                # the new split's multiplier is unknown (NaN), which marks it for seeding (alpha_crown._optimise)
                _forget(beta, rows, idx[rows, lev], flat.shape[1], None if support is None else support.get(name))
    kids.depth += levels
    return kids


def _forget(values: list[torch.Tensor], rows: np.ndarray, units: np.ndarray, dense_units: int,
            node_support: torch.Tensor | None) -> None:
    """Mark unknown (NaN), in place, unit ``units[i]`` of domain ``rows[i]`` in each of a node's warm-start families
    ``values`` (``(n, S, *units, *rest)`` over ``dense_units`` units, or ``(n, S, m, *rest)`` over
    ``node_support``): the engine then starts them afresh. A unit off the support has no value to forget."""
    width = dense_units
    if node_support is not None:  # the units' columns in the compact layout
        held, col = support_columns(node_support, torch.as_tensor(units, dtype=node_support.dtype,
                                                                  device=node_support.device))
        rows, units, width = rows[held.cpu().numpy()], col[held].cpu().numpy(), node_support.numel()
    for v in values:
        t_rows, t_units = torch.as_tensor(rows, device=v.device), torch.as_tensor(units, device=v.device)
        v.reshape(v.shape[0], v.shape[1], width, -1)[t_rows, :, t_units] = float("nan")


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


def split_choices(parents: Domains, layout: DomainLayout, layer: np.ndarray, index: np.ndarray,
                  support: dict[str, torch.Tensor] | None = None) -> Domains:
    """:func:`split_relus` where each decision ``(layer[b, l], index[b, l])`` is a ReLU neuron (``layer`` below the
    layout's number of ReLU nodes) or a MaxPool window (``layer`` = that number + the pool node's position in
    ``layout.pool_nodes``, ``index`` the flat window; see :func:`split_windows`); distinct decisions per parent.
    ``support``: the warm starts' compact layout, as for :func:`split_relus`."""
    kids = split_relus(parents, layout.relu_nodes, layer, index, support)
    if layout.pool_nodes:
        split_windows(kids, layout, np.tile(level_signs(layer.shape[1]), (layer.shape[0], 1)),
                      np.repeat(layer, 2 ** layer.shape[1], axis=0), np.repeat(index, 2 ** layer.shape[1], axis=0),
                      support)
    return kids


def window_entries(doms: Domains, layout: DomainLayout, p: int, rows: np.ndarray,
                   windows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For domains ``rows`` and their windows ``windows`` (flat, of pool node ``layout.pool_nodes[p]``): the window
    entries' lower and upper bounds ``(m, K)`` (-inf for padding), which are real inputs, and which may still attain
    the window's maximum on the domain (:func:`~mlrobust.ops.maxpool2d.window_live`)."""
    name, tensor, win = layout.pool_nodes[p], layout.pool_tensors[p], layout.pool_windows[p]
    n = doms.size
    entries = win[windows]  # (m, K)
    real = entries >= 0
    safe = np.where(real, entries, 0)
    lo = doms.pre_lower[tensor].reshape(n, -1)[rows[:, None], safe].astype(np.float64)
    hi = doms.pre_upper[tensor].reshape(n, -1)[rows[:, None], safe].astype(np.float64)
    lo, hi = np.where(real, lo, -np.inf), np.where(real, hi, -np.inf)
    return lo, hi, real, window_live(lo, hi, real, doms.pool_excluded[name][rows, windows])


def split_windows(kids: Domains, layout: DomainLayout, sign: np.ndarray, layer: np.ndarray,
                  index: np.ndarray, support: dict[str, torch.Tensor] | None = None) -> None:
    """Apply, in place, the window decisions among ``(layer, index)`` ``(n, L)`` (see :func:`split_choices`) to the
    children ``kids`` with sides ``sign`` ``(n, L)``: side ``+`` keeps only the window's input with the largest upper
    bound among those that may still attain its maximum, side ``-`` rules that input out. The pool weights and
    threshold of the split window in the children's warm start become unknown (NaN: CROWN's choice for the
    restricted window; a threshold kept as a fraction of the parent's range would keep the parent's chord).
    ``support``: the warm starts' compact layout (windows kept per pool node; None: dense)."""
    levels = layer.shape[1]
    base = len(layout.relu_nodes)
    for p, name in enumerate(layout.pool_nodes):
        excluded = kids.pool_excluded[name]
        params = [kids.warm[k] for k in (f"{POOL_WEIGHTS.name}.{name}", f"{POOL_THRESHOLDS.name}.{name}")
                  if k in kids.warm]
        for lev in range(levels):
            rows = np.flatnonzero(layer[:, lev] == base + p)
            if rows.size == 0:
                continue
            windows = index[rows, lev]
            _, hi, _, live = window_entries(kids, layout, p, rows, windows)
            best = np.argmax(np.where(live, hi, -np.inf), axis=1)
            chosen = np.arange(hi.shape[1])[None] == best[:, None]
            keep_one = (sign[rows, lev] > 0)[:, None]
            excluded[rows, windows] = np.where(keep_one, ~chosen, excluded[rows, windows] | chosen)
            # (n, S, P, K) weights, (n, S, P) thresholds
            _forget(params, rows, windows, len(layout.pool_windows[p]),
                    None if support is None else support.get(name))
