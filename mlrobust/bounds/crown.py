"""CROWN: sound per-neuron bounds by backward linear relaxation (back-substitution) over the IR's DAG.

A linear function ``c · t`` of a tensor ``t`` is pushed backwards through the network to the input box: affine ops
are substituted exactly (Dense ``A @ W``, Conv2d as a transposed convolution, AvgPool2d, Reshape, Scale, Add), and
each ReLU / MaxPool is replaced by a linear lower or upper relaxation chosen by the sign of its coefficient, built
from bounds of its pre-activation computed earlier in the same forward sweep. On a DAG the coefficients of every
consumer of a tensor are accumulated before it is substituted (nodes are visited in reverse topological order).

Relaxations (``l``, ``u``: pre-activation bounds):

* ReLU, unstable (``l < 0 < u``): upper chord ``u (x - l) / (u - l)``; adaptive lower line ``x`` if ``u >= -l`` else
  ``0``. Stable neurons are linear (identity or zero) and need no relaxation.
* MaxPool window: lower bound ``x_i`` for the input ``i`` with the largest lower bound. Upper bound: with ``j`` the
  input with the largest upper bound and ``U'`` the largest upper bound of the others,
  ``max(x) <= max(x_j, U')``, a convex function of ``x_j`` alone, bounded by its chord on ``[l_j, u_j]``:
  ``U' + (u_j - U') (x_j - l_j) / (u_j - l_j)`` (pointwise at or below the constant ``u_j``). When ``l_j >= U'`` the
  window is dominated by ``j`` and the pool is exactly ``x_j``.
* Sigmoid/Tanh: tangent and chord lines chosen by the interval (:mod:`mlrobust.ops.smooth`); every neuron with
  ``l < u`` is refined, since every line depends on both bounds.

Which tensors get CROWN bounds: every pre-activation (input of a ReLU or MaxPool) and the output, except where
intervals are already as tight as back-substitution can make them: a tensor that is a plain reindexing/scaling of a
ReLU or MaxPool output, or a single affine map of the input box (IBP is exact there). With ``refine="unstable"``
(default) only the neurons whose relaxation depends on their bounds are back-substituted: unstable ReLU inputs,
MaxPool inputs that can win an undecided window, and the pre-activations behind a ReLU whose output can win one (a
stably active neuron there needs no relaxation of its own, but its upper bound is an end point of the pool's chord);
the others keep their (already sound) interval bounds.
Every tensor's final bounds are the intersection with IBP's.

Computation is vectorised in torch float64 (no loop over neurons); the rows of a specification are processed in
chunks so that no coefficient tensor exceeds ``chunk_elements`` numbers (peak memory a few times that, ~0.5 GB by
default), and a patch coefficient is concretised over the input box in row slices (:func:`concretise_patch`), so
that step adds at most the coefficients' own size. Every bound is widened outward by ``FP_REL`` times the magnitude
of its terms (see :mod:`mlrobust.bounds`).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from mlrobust.bounds.ibp import FP_REL, ibp, intersect, propagate_intervals
from mlrobust.bounds.result import Bounds, check_box
from mlrobust.errors import InputError
from mlrobust.ir.graph import Network, Node
from mlrobust.ir.torch_exec import torch_threads
from mlrobust.ops.coeffs import Patch as _Patch
from mlrobust.ops.coeffs import conv_adjoint as _conv_adjoint
from mlrobust.ops.coeffs import fit as _fit
from mlrobust.ops.coeffs import gather as _gather
from mlrobust.ops.coeffs import patch_sum as _patch_sum
from mlrobust.ops.coeffs import patch_to_dense as _patch_to_dense
from mlrobust.ops.coeffs import t64 as _t
from mlrobust.ops.coeffs import unbroadcast as _unbroadcast
from mlrobust.ops.maxpool2d import maxpool_candidates, pool_index

__all__ = ["DEFAULT_CHUNK_ELEMENTS", "REFINE_CHOICES", "BackSubstitution", "concretise_patch", "crown",
           "maxpool_candidates", "pool_index", "_conv_adjoint", "_unbroadcast"]

#: Largest coefficient tensor (numbers) of one chunk of specification rows: 2^24 float64 = 128 MiB.
DEFAULT_CHUNK_ELEMENTS = 1 << 24

REFINE_CHOICES = ("unstable", "all")

#: Temporaries of a patch coefficient's size that its concretisation makes at once (the box's lower and upper values
#: at every window, the chosen end, the absolute values, the products); :func:`concretise_patch` slices its rows so
#: that together they take at most the coefficient's own size.
PATCH_TEMPORARIES = 7


def concretise_patch(p: _Patch, lo: torch.Tensor, hi: torch.Tensor,
                     max_elements: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``p`` over the box ``[lo, hi]`` (``(C, H, W)`` each): the lower bound ``Σ a·(lo if a >= 0 else hi)``
    of its linear function and the magnitude ``Σ |a|·max(|lo|, |hi|)`` of its terms (for the widening), computed in
    slices of rows holding at most ``max_elements`` coefficients each (at least one row). Each row's sums are the
    same in any slice, so the slicing bounds the temporaries and changes no number."""
    s = p.a.shape[0]
    per_row = max(1, int(np.prod(p.a.shape[1:])))
    step = max(1, int(max_elements) // per_row)
    biases, mags = [], []
    for k in range(0, s, step):
        part = _Patch(p.a[k:k + step], p.oy[k:k + step], p.ox[k:k + step])
        lo_w, hi_w, a = _gather(lo, part), _gather(hi, part), part.a
        n = a.shape[0]
        biases.append((a * torch.where(a >= 0, lo_w, hi_w)).reshape(n, -1).sum(1))
        mags.append((a.abs() * torch.maximum(lo_w.abs(), hi_w.abs())).reshape(n, -1).sum(1))
    if not biases:
        empty = torch.zeros(0, dtype=p.a.dtype)
        return empty, empty
    return torch.cat(biases), torch.cat(mags)


class BackSubstitution:
    """Lower bounds of linear functions of any tensor over an input box, by CROWN back-substitution.

    ``lower``/``upper`` map tensor names to sound bounds (per-sample shapes) for at least the input (the box) and
    every ReLU/MaxPool pre-activation the substitution passes; the ReLU/MaxPool relaxations are built from them
    lazily, so the dicts may be filled in as a forward sweep goes (a relaxation is only built once every bound it
    needs is final).
    """

    def __init__(self, network: Network, lower: dict[str, np.ndarray], upper: dict[str, np.ndarray],
                 chunk_elements: int = DEFAULT_CHUNK_ELEMENTS):
        self.network = network
        self.lower, self.upper = lower, upper
        self.chunk_elements = int(chunk_elements)
        self._producer = {n.output: n for n in network.nodes}
        self._relax: dict[str, Any] = {}
        self._plans: dict[str, tuple[list[Node], int]] = {}
        self._pool_idx: dict[str, np.ndarray] = {}
        self.rows = 0  # specification rows back-substituted so far (a cost statistic)
        # When a list: every pass appends (input coefficients, bias, magnitude) before concretisation, i.e. the
        # linear bound itself, for callers that concretise it over other (smaller) boxes.
        self.capture: list[tuple[torch.Tensor | _Patch | None, torch.Tensor, torch.Tensor]] | None = None
        self._peak_per_row = 1  # largest coefficient tensor per row seen in the last pass (sizes later chunks)

    # --- planning ----------------------------------------------------------------------------------------
    def _plan(self, start: str) -> tuple[list[Node], int]:
        """Nodes on which ``start`` depends, in reverse topological order, and the largest tensor size among them."""
        if start not in self._plans:
            needed = {start}
            nodes = []
            for node in reversed(self.network.nodes):
                if node.output in needed:
                    nodes.append(node)
                    needed.update(node.inputs)
            sizes = [int(np.prod(self.network.shape_of(t), dtype=np.int64)) for t in needed]
            self._plans[start] = (nodes, max(sizes))
        return self._plans[start]

    def pool_index(self, node: Node) -> np.ndarray:
        if node.name not in self._pool_idx:
            self._pool_idx[node.name] = pool_index(node.op, self.network.shape_of(node.inputs[0]))
        return self._pool_idx[node.name]

    def _relaxation(self, node: Node) -> Any:
        """The op's CROWN relaxation, built once from its input's (final) bounds."""
        if node.name not in self._relax:
            x = node.inputs[0]
            self._relax[node.name] = node.op.crown_relax(self, node, self.lower[x], self.upper[x])
        return self._relax[node.name]

    # --- one backward step -------------------------------------------------------------------------------
    def _step(self, node: Node, a: torch.Tensor) -> tuple[list[tuple[str, torch.Tensor]], torch.Tensor | None,
                                                         torch.Tensor | None]:
        """Substitute ``a · node.output`` by a lower bound linear in the node's inputs (the op's CROWN rule).

        Returns the coefficients per input tensor, the constant added (per row) and the magnitude of that constant's
        terms (for the floating-point widening); constants are None when the step adds none.
        """
        return node.op.crown_step(self, node, a)

    def _step_patch(self, node: Node, p: _Patch) -> tuple[list, torch.Tensor | None, torch.Tensor | None]:
        """:meth:`_step` for a patch; ops that do not keep coefficients local fall back to the dense step."""
        return node.op.crown_step_patch(self, node, p)

    def _combine(self, tensor: str, x: _Patch | torch.Tensor, y: _Patch | torch.Tensor) -> _Patch | torch.Tensor:
        """Accumulate the coefficients two consumers give one tensor."""
        shape = self.network.shape_of(tensor)
        if isinstance(x, _Patch) and isinstance(y, _Patch):
            z = _patch_sum(x, y)
            if z is not None:
                return _fit(z, shape)
        if isinstance(x, _Patch):
            x = _patch_to_dense(x, shape)
        if isinstance(y, _Patch):
            y = _patch_to_dense(y, shape)
        return x + y

    def _pass(self, start: str, a: torch.Tensor | _Patch, bias: torch.Tensor, mag: torch.Tensor) -> torch.Tensor:
        """Lower bounds of ``a · start + bias`` over the input box (rows of ``a``), widened outward."""
        acc = {start: a}
        for node in self._plan(start)[0]:
            coeff = acc.pop(node.output, None)
            if coeff is None:
                continue
            if isinstance(coeff, _Patch):
                terms, d_bias, d_mag = self._step_patch(node, coeff)
            else:
                terms, d_bias, d_mag = self._step(node, coeff)
            if d_bias is not None:
                bias, mag = bias + d_bias, mag + d_mag
            for tensor, a_in in terms:
                acc[tensor] = self._combine(tensor, acc[tensor], a_in) if tensor in acc else a_in
                held = acc[tensor].a if isinstance(acc[tensor], _Patch) else acc[tensor]
                self._peak_per_row = max(self._peak_per_row, held.numel() // max(1, held.shape[0]))
        coeff_x = acc.pop(self.network.input_name, None)
        if self.capture is not None:
            self.capture.append((coeff_x, bias.clone(), mag.clone()))
        if coeff_x is not None:
            lo, hi = _t(self.lower[self.network.input_name]), _t(self.upper[self.network.input_name])
            if isinstance(coeff_x, _Patch):
                # in row slices: at once, the box's values at every window and the products took about seven
                # times the coefficients (the peak of a CROWN call at 3x300x300); sliced, at most their size more
                d_bias, d_mag = concretise_patch(coeff_x, lo, hi, -(-coeff_x.a.numel() // PATCH_TEMPORARIES))
                bias, mag = bias + d_bias, mag + d_mag
            else:  # the same sums as matrix-vector products: no temporaries the size of the coefficients
                a_x = coeff_x
                s = a_x.shape[0]
                a2 = a_x.reshape(s, -1)
                lo, hi = lo.reshape(-1), hi.reshape(-1)
                bias = bias + a2 @ lo + a2.clamp(max=0.0) @ (hi - lo)
                mag = mag + a2.abs() @ torch.maximum(lo.abs(), hi.abs())
        self.rows += bias.shape[0]
        return bias - FP_REL * mag

    # --- public ------------------------------------------------------------------------------------------
    def lower_bounds(self, tensor: str, coeffs: np.ndarray | torch.Tensor) -> np.ndarray:
        """Sound lower bounds of ``coeffs[i] · tensor`` for each row ``i`` (``coeffs``: ``(S, *shape)``)."""
        coeffs = torch.as_tensor(coeffs, dtype=torch.float64)
        shape = self.network.shape_of(tensor)
        coeffs = coeffs.reshape(coeffs.shape[0], *shape)
        per = max(1, self.chunk_elements // self._plan(tensor)[1])
        out = []
        for k in range(0, coeffs.shape[0], per):
            chunk = coeffs[k:k + per]
            zero = torch.zeros(chunk.shape[0], dtype=torch.float64)
            out.append(self._pass(tensor, chunk, zero, zero))
        return torch.cat(out).numpy() if out else np.zeros(0)

    def neuron_bounds(self, tensor: str, idx: np.ndarray, patches: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Sound lower and upper bounds of the neurons ``idx`` (flat indices) of ``tensor``.

        Rows of a ``(C, H, W)`` tensor start as 1×1 patches (``patches=False`` forces dense coefficients).
        """
        idx = np.asarray(idx, dtype=np.int64)
        node = self._producer.get(tensor)
        shape = self.network.shape_of(tensor)
        start = tensor
        if node is not None and node.op.weight_rows:
            # A one-hot row through Dense is a row of the weight: take it instead of multiplying by an identity
            # (8192 one-hot rows through a dense layer would cost S·m·n).
            start = node.inputs[0]
        dense_per = max(1, self.chunk_elements // (2 * self._plan(start)[1]))
        per = dense_per
        lows, ups = np.empty(idx.size), np.empty(idx.size)
        k = 0
        while k < idx.size:
            sel = idx[k:k + per]
            r = sel.size
            bias = torch.zeros(r, dtype=torch.float64)
            if start != tensor:
                w_rows, b_rows = node.op.output_rows(sel)
                rows = _t(w_rows).reshape(r, *self.network.shape_of(start))
                bias = _t(b_rows)
                a = torch.cat([rows, -rows])
            elif len(shape) == 3 and patches:
                ch, y, x = (torch.as_tensor(v) for v in np.unravel_index(sel, shape))
                one = torch.zeros((r, shape[0], 1, 1), dtype=torch.float64)
                one[torch.arange(r), ch] = 1.0
                a = _Patch(torch.cat([one, -one]), torch.cat([y, y]), torch.cat([x, x]))
            else:
                rows = torch.zeros((r, int(np.prod(shape))), dtype=torch.float64)
                rows[torch.arange(r), torch.as_tensor(sel)] = 1.0
                rows = rows.reshape(r, *shape)
                a = torch.cat([rows, -rows])
            self._peak_per_row = 1
            val = self._pass(start, a, torch.cat([bias, -bias]), torch.cat([bias.abs(), bias.abs()]))
            lows[k:k + r], ups[k:k + r] = val[:r].numpy(), -val[r:].numpy()
            k += r
            # The first chunk is sized for dense coefficients; patches stay much smaller, so size the rest by the
            # largest coefficient tensor per row actually held (each tensor is held twice at most in a step).
            per = max(dense_per, min(self.chunk_elements // (4 * self._peak_per_row), 1 << 16))
        return lows, ups


# --- which tensors deserve back-substitution -------------------------------------------------------------------
def _origin(network: Network, producer: dict[str, Node], tensor: str) -> Node | None:
    """The first node behind ``tensor`` that is not a single-input elementwise affine op (Scale, Reshape)."""
    node = producer.get(tensor)
    while node is not None and node.op.affine and node.op.elementwise:
        node = producer.get(node.inputs[0])
    return node


def _interval_is_exact(network: Network, producer: dict[str, Node], tensor: str) -> bool:
    """True when IBP is already exact for ``tensor``: it is one coordinate-mixing affine map of a box.

    A box stays a box under elementwise maps (Scale, Reshape, ReLU), and each coordinate's range under one
    affine map of a box is exactly its interval image; a second mixing map or an Add breaks this.
    """
    mixing = 0
    node = producer.get(tensor)
    while node is not None:
        if node.op.mixing:
            mixing += 1
        elif not node.op.elementwise:
            return False
        if mixing > 1:
            return False
        node = producer.get(node.inputs[0])
    return True


def _needs_crown(network: Network, producer: dict[str, Node], tensor: str) -> bool:
    if tensor == network.input_name:
        return False
    origin = _origin(network, producer, tensor)
    if origin is None or origin.op.activation:
        # elementwise image of a box of ReLU/MaxPool outputs: back-substitution reproduces those intervals
        return False
    return not _interval_is_exact(network, producer, tensor)


def crown(network: Network, lower: np.ndarray, upper: np.ndarray, *, refine: str = "unstable",
          chunk_elements: int = DEFAULT_CHUNK_ELEMENTS, patches: bool = True, threads: int | None = 1) -> Bounds:
    """Sound CROWN bounds on every tensor of ``network`` over the box ``[lower, upper]``, intersected with IBP's.

    ``refine="unstable"`` back-substitutes only the pre-activation neurons whose relaxation depends on their bounds
    (plus the whole output); ``"all"`` does every neuron of every pre-activation. ``info`` records the IBP time,
    the back-substituted rows per tensor and the number of unstable ReLUs under IBP. ``patches=False`` keeps
    every coefficient dense (same bounds, slower on conv layers; for testing and measurement). ``threads`` sets
    torch's intra-op threads for the call (see :func:`torch_threads`).
    """
    if refine not in REFINE_CHOICES:
        raise InputError(f"unknown refine mode {refine!r}; choose one of {', '.join(REFINE_CHOICES)}")
    lower, upper = check_box(network, lower, upper)
    start = time.perf_counter()
    ibp_lo, ibp_hi = ibp(network, lower, upper)
    ibp_seconds = time.perf_counter() - start
    lows = {network.input_name: lower}
    ups = {network.input_name: upper}
    engine = BackSubstitution(network, lows, ups, chunk_elements)
    with torch_threads(threads):
        refined = _sweep(network, lows, ups, ibp_lo, ibp_hi, engine, refine, patches)
    seconds = time.perf_counter() - start
    ibp_unstable = sum(int(np.sum((ibp_lo[n.inputs[0]] < 0) & (ibp_hi[n.inputs[0]] > 0)))
                       for n in network.nodes if n.op.activation and n.op.elementwise)
    info = {"ibp_seconds": ibp_seconds, "refine": refine, "patches": patches, "rows": engine.rows,
            "refined": refined, "ibp_unstable": ibp_unstable}
    return Bounds(network, lows, ups, "crown", seconds, info)


def _pool_inputs_behind_relu(engine: BackSubstitution, consumers: dict[str, list[Node]], users: list[Node],
                             lo: np.ndarray, hi: np.ndarray) -> list[np.ndarray]:
    """Neurons of a pre-activation whose ReLU output can win an undecided MaxPool window (flat indices).

    A stably active neuron needs no relaxation of its own, but its upper bound is the chord's end point of the
    window it may win: left at its interval bound, the pool's upper line is loose (on the reference architecture the
    root margin bound of a whole-image box dropped from 0.50 to 0.15 once these were back-substituted too).
    """
    parts = []
    for relu in users:
        if relu.op.pooling or not relu.op.activation:
            continue
        pools = [c for c in consumers.get(relu.output, []) if c.op.pooling and c.op.activation]
        if pools:
            r_lo, r_hi = np.maximum(lo, 0.0), np.maximum(hi, 0.0)  # the ReLU output's bounds, same flat indices
            parts += [pool.op.refine_index(engine, pool, r_lo, r_hi) for pool in pools]
    return parts


def _put(a: np.ndarray, idx: np.ndarray, values: np.ndarray) -> np.ndarray:
    """A copy of ``a`` with the flat entries ``idx`` set to ``values``."""
    flat = a.reshape(-1).copy()
    flat[idx] = values
    return flat.reshape(a.shape)


def _sweep(network: Network, lows: dict[str, np.ndarray], ups: dict[str, np.ndarray], ibp_lo: dict[str, np.ndarray],
           ibp_hi: dict[str, np.ndarray], engine: BackSubstitution, refine: str, patches: bool) -> dict[str, int]:
    """The forward sweep of :func:`crown`: fills ``lows``/``ups`` tensor by tensor; returns rows refined per tensor."""
    producer = {n.output: n for n in network.nodes}
    consumers: dict[str, list[Node]] = {}
    for node in network.nodes:
        for t in set(node.inputs):
            consumers.setdefault(t, []).append(node)
    # Tensors whose every neuron matters: the output, and what it is an elementwise/pooled image of (a network
    # ending in ReLU gets its logits' pre-activation refined in full, not only the unstable neurons).
    full = {network.output_name}
    tail = producer.get(network.output_name)
    while tail is not None and (tail.op.elementwise or tail.op.activation):
        full.add(tail.inputs[0])
        tail = producer.get(tail.inputs[0])
    refined: dict[str, int] = {}

    def refine_node(node: Node, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = node.output
        users = [c for c in consumers.get(out, []) if c.op.activation]
        if not ((users or out == network.output_name) and _needs_crown(network, producer, out)):
            return lo, hi
        if refine == "all" or out in full:
            idx = np.arange(lo.size)
        else:
            parts = [u.op.refine_index(engine, u, lo, hi) for u in users]
            parts += _pool_inputs_behind_relu(engine, consumers, users, lo, hi)
            idx = np.unique(np.concatenate(parts))
        if idx.size == 0:
            return lo, hi
        c_lo, c_hi = engine.neuron_bounds(out, idx, patches)
        # both sound, so they overlap; where rounding makes them cross, the interval bounds stay
        flat_lo, flat_hi = intersect(c_lo, c_hi, lo.reshape(-1)[idx], hi.reshape(-1)[idx])
        refined[out] = int(idx.size)
        return _put(lo, idx, flat_lo), _put(hi, idx, flat_hi)

    propagate_intervals(network, lows, ups, ibp_lo, ibp_hi, refine_node)
    return refined
