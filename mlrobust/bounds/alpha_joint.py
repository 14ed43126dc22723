"""Intermediate bounds optimised jointly with the output objective (the α-CROWN of α,β-CROWN, on our CROWN start).

α-CROWN with frozen intermediate bounds optimises only the relaxation lines of the output's back-substitution; the
pre-activation bounds those lines are built from stay CROWN's. Here the bounds of one pre-activation tensor ``t``
(the last one CROWN refines: conv2 on the reference architecture) are recomputed at every step of the same
optimisation, by a back-substitution from ``t`` with slopes of its own for the ReLUs before it, and the output's
relaxations (the ReLU after ``t``, the MaxPool chord behind it) are rebuilt from them. The slopes of ``t``'s pass get
their gradient from the output objective only (no optimisation row per neuron): one optimisation, a few more
milliseconds per step.

* Rows: the neurons of ``t`` CROWN refines (unstable, and those whose ReLU output can win an undecided MaxPool
  window: the chord's end points) less the stably inactive ones, as one-hot rows in both directions. For the chain
  conv2 <- ReLU <- conv1 <- input the pass is a few dense im2col operations over all rows (:class:`_ConvPair`);
  other chains keep each row as a patch (:class:`mlrobust.ops.coeffs.Patch`) or a dense row.
* Slopes per start neuron (each row's own lower-line slopes on its receptive field), or shared by every neuron of a
  channel of ``t`` (the rows stay per neuron): in the conv-pair pass when the per-neuron slopes would outnumber one
  slope map per channel, in the generic pass above :data:`SHARE_ABOVE` selected neurons (auto_LiRPA's threshold,
  whose per-neuron slopes span the whole ReLU layer).
* Soundness: every step's bounds of ``t`` are computed in float64 with the outward widening of
  :mod:`mlrobust.bounds` and intersected with the given (CROWN) bounds, so each is sound for its slopes; the bounds
  kept for the certificate are the elementwise best over the steps (an intersection of sound bounds). The later
  pre-activations reached through ReLU/Reshape take the interval image of them, intersected with their own given
  bounds. The caller evaluates the final certificate in float64 on the kept bounds.

Supported: one domain (the bound tier's query, not branch-and-bound batches) and a back-substitution plan from ``t``
to the input that is a chain of ops with a CROWN step (Conv2d, Dense, Scale, Reshape, AvgPool) and ReLUs; anything
else (a MaxPool or Add before ``t``) leaves the bounds frozen (:func:`joint_layer` returns None).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mlrobust.bounds.crown import _needs_crown
from mlrobust.bounds.ibp import FP_REL
from mlrobust.ir.graph import Network, Node
from mlrobust.ops.coeffs import Patch, gather
from mlrobust.ops.conv2d import Conv2d
from mlrobust.ops.maxpool2d import AlphaPoolRelax, maxpool_candidates, pool_index
from mlrobust.ops.relu import AlphaReluRelax, relu_triangle

Tensor = torch.Tensor
_F64 = torch.float64

#: Selected neurons above which the generic pass shares its slopes per channel of the bounded tensor.
SHARE_ABOVE = 512
#: Op kinds a chain from the bounded tensor back to the input may hold (their CROWN step needs no relaxation).
_AFFINE_KINDS = ("Conv2d", "Dense", "Scale", "Reshape", "AvgPool2d")


class _Shim:
    """What the affine ops' CROWN steps read from their engine: the network."""

    def __init__(self, network: Network):
        self.network = network


def _chain(network: Network, t: str) -> list[Node] | None:
    """Nodes from ``t`` back to the input, in reverse order, when they form a supported chain; else None."""
    producer = {n.output: n for n in network.nodes}
    nodes: list[Node] = []
    tensor = t
    while tensor != network.input_name:
        node = producer.get(tensor)
        if node is None or len(node.inputs) != 1 or not (node.kind in _AFFINE_KINDS or node.kind == "Relu"):
            return None
        nodes.append(node)
        tensor = node.inputs[0]
    return nodes


def _target_tensor(network: Network) -> str | None:
    """The last ReLU pre-activation CROWN refines (the one whose bounds the joint optimisation re-derives)."""
    producer = {n.output: n for n in network.nodes}
    found = None
    for node in network.nodes:
        # ReLUs only: other splittable activations (Sigmoid, Tanh) keep relaxations built from the frozen bounds,
        # which the joint pass does not rebuild
        if node.kind == "Relu" and _needs_crown(network, producer, node.inputs[0]):
            found = node.inputs[0]
    return found


def _selected(network: Network, t: str, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Flat neurons of ``t`` whose bounds matter: unstable, or (through a ReLU) a possible winner of a pool window
    that can be positive (CROWN's selection less the stably inactive neurons)."""
    parts = [np.flatnonzero((lo < 0) & (hi > 0))]
    consumers: dict[str, list[Node]] = {}
    for node in network.nodes:
        for x in node.inputs:
            consumers.setdefault(x, []).append(node)
    for relu in consumers.get(t, []):
        if relu.kind != "Relu":
            continue
        for pool in consumers.get(relu.output, []):
            if pool.kind == "MaxPool2d":
                idx = pool_index(pool.op, network.shape_of(relu.output))
                parts.append(maxpool_candidates(idx, np.maximum(lo, 0.0), np.maximum(hi, 0.0)))
    idx = np.unique(np.concatenate(parts)).astype(np.int64)
    # a stably inactive neuron's ReLU output is 0 whatever its bounds: tightening them changes no relaxation
    return idx[hi.reshape(-1)[idx] > 0]


@dataclass
class _FrozenRelu:
    """A ReLU before ``t``: its relaxation from its given (fixed) bounds, float64 ``(*shape)``."""

    active: Tensor
    unstable: Tensor
    up_slope: Tensor
    up_icpt: Tensor
    default_alpha: Tensor


def _frozen_relu(lo: np.ndarray, hi: np.ndarray) -> _FrozenRelu:
    return _FrozenRelu(*(torch.as_tensor(np.ascontiguousarray(v)) for v in relu_triangle(lo, hi)))


class _ConvPair:
    """The pass of ``t = conv2(relu(conv1(x)))`` (``x`` the input box) for every neuron of ``t`` at once.

    The generic pass keeps one patch per row; here each row's coefficients on conv1's output are the unfolded
    (im2col) windows of conv2's weight times the slopes, and on the input one matrix product with the fixed map
    ``window of conv1 outputs -> window of inputs``: a few dense operations on tensors of ``2 · |t| · C1 · k²``
    numbers (about 0.6 M on the reference architecture), instead of index gathers per row.
    """

    def __init__(self, network: Network, conv2: Node, relu: _FrozenRelu, conv1: Node, in_lower: Tensor,
                 in_upper: Tensor, idx: np.ndarray):
        c2op, c1op = conv2.op, conv1.op
        if not (isinstance(c2op, Conv2d) and isinstance(c1op, Conv2d)):  # the caller checked; for the type checker
            raise TypeError("the fast joint pass needs two Conv2d nodes")
        w2 = torch.as_tensor(np.asarray(c2op.weight, dtype=np.float64))  # (C2, C1, k2h, k2w)
        b2 = torch.as_tensor(np.asarray(c2op.bias, dtype=np.float64))
        w1 = torch.as_tensor(np.asarray(c1op.weight, dtype=np.float64))  # (C1, Cin, k1h, k1w)
        b1 = torch.as_tensor(np.asarray(c1op.bias, dtype=np.float64))
        c2, c1, k2h, k2w = w2.shape
        _, cin, k1h, k1w = w1.shape
        h2, wd2 = network.shape_of(conv2.output)[1:]
        h1, wd1 = network.shape_of(conv1.output)[1:]
        self.c2, self.c1, self.h1, self.w1 = c2, c1, h1, wd1
        s2, s1 = c2op.stride, c1op.stride
        self.s2, self.k2 = s2, (k2h, k2w)
        self.window = c1 * k2h * k2w
        top2, left2, bottom2, right2 = c2op.padding
        self.pad2 = (left2, right2, top2, bottom2)
        self.default_alpha = relu.default_alpha
        # the selected neurons: channel and window position (flat index over conv2's output grid)
        ch, pos_l = np.divmod(idx, h2 * wd2)
        self.ch, self.pos = torch.as_tensor(ch), torch.as_tensor(pos_l)
        # the fixed map from a window of conv1 outputs (C1, k2h, k2w) to the input window it reads
        eye = torch.eye(c1 * k2h * k2w, dtype=_F64).reshape(-1, c1, k2h, k2w)
        to_input = F.conv_transpose2d(eye, w1, stride=s1).reshape(c1 * k2h * k2w, -1)  # (C1·k², Cin·KH·KW)
        kh, kw = s1[0] * (k2h - 1) + k1h, s1[1] * (k2w - 1) + k1w
        top1, left1 = c1op.padding[0], c1op.padding[1]
        sy, sx = s1[0] * s2[0], s1[1] * s2[1]
        py, px = s1[0] * top2 + top1, s1[1] * left2 + left1
        h0, w0 = in_lower.shape[1:]
        pb, pr = sy * (h2 - 1) + kh - h0 - py, sx * (wd2 - 1) + kw - w0 - px  # negative: crop

        def windows(x: Tensor) -> Tensor:  # (Cin, H, W) -> (N, Cin·KH·KW) of the selected; outside the image: 0
            return F.unfold(F.pad(x[None], (px, pr, py, pb)), (kh, kw), stride=(sy, sx))[0].T[self.pos]

        x_lo, x_hi = windows(in_lower), windows(in_upper)
        self.input_window = int(x_lo.shape[1])
        sign = torch.tensor([1.0, -1.0], dtype=_F64).reshape(2, 1, 1)
        w = w2.reshape(c2, -1)[self.ch][None] * sign  # (2, N, C1·k²): rows z and -z
        pos, neg = w.clamp(min=0.0), w.clamp(max=0.0)

        def unfolded(v: Tensor) -> Tensor:  # conv1-level (C1, H1, W1) -> (N, C1·k²) windows, zeros in the padding
            return self._unfold(v[None].to(_F64))[0].T[self.pos]

        # the relaxation of conv1's ReLU in each selected neuron's window
        active, unstable, up_slope, up_icpt = (unfolded(v) for v in (relu.active, relu.unstable, relu.up_slope,
                                                                      relu.up_icpt))
        b1_win = b1.repeat_interleave(k2h * k2w)[None] * unfolded(torch.ones((c1, h1, wd1), dtype=_F64))
        # coefficients on conv1's output, linear in the slopes: fixed + scale · α (α only on unstable neurons)
        fixed = pos * active + neg * up_slope  # (2, N, C1·k²)
        scale = pos * unstable
        bias0 = (neg * up_icpt).sum(-1) + (fixed * b1_win).sum(-1) + sign[..., 0] * b2[self.ch][None]
        # magnitudes for the widening, bounded once for every α in [0, 1] (|fixed + scale·α| <= |fixed| + |scale|)
        a1_max = fixed.abs() + scale.abs()
        self.mag = ((neg.abs() * up_icpt.abs()).sum(-1) + (a1_max * b1_win.abs()).sum(-1) + b2.abs()[self.ch][None]
                    + ((a1_max @ to_input.abs()) * torch.maximum(x_lo.abs(), x_hi.abs())).sum(-1))
        self._f64 = {"fixed_input": fixed @ to_input, "scale": scale, "scale_b1": scale * b1_win, "bias0": bias0,
                     "to_input": to_input, "x_lo": x_lo, "x_width": x_hi - x_lo}
        self._cast: dict[torch.dtype, dict[str, Tensor]] = {_F64: self._f64}

    def _unfold(self, x: Tensor) -> Tensor:
        """``(B, C1, H1, W1)`` -> ``(B, C1·k², L)``: conv2's windows (its padding as zeros)."""
        return F.unfold(F.pad(x, self.pad2), self.k2, stride=self.s2)

    def alpha_start(self, shared: bool) -> Tensor:
        """CROWN's slopes: ``(2, C2, C1, H1, W1)`` shared per channel, else ``(2, N, C1·k²)`` per selected neuron."""
        if shared:
            return self.default_alpha.expand(2, self.c2, *self.default_alpha.shape).clone()
        unf = self._unfold(self.default_alpha[None].to(_F64))[0].T[self.pos]
        return unf.expand(2, *unf.shape).clone()

    def lower(self, alpha: Tensor, shared: bool, dtype: torch.dtype = _F64) -> Tensor:
        """Lower bounds of ``z`` and of ``-z`` for the selected neurons, ``(2, N)``; in float64 sound (widened)."""
        if dtype not in self._cast:
            self._cast[dtype] = {k: v.to(dtype) for k, v in self._f64.items()}
        c = self._cast[dtype]
        a = alpha.to(dtype)
        if shared:  # each selected neuron reads its channel's slopes in its window
            unf = self._unfold(a.reshape(2 * self.c2, self.c1, self.h1, self.w1))  # (2·C2, C1·k², L)
            unf = unf.reshape(2, self.c2, *unf.shape[1:])
            a = unf[:, self.ch, :, self.pos].transpose(0, 1)  # (2, N, C1·k²)
        scaled = c["scale"] * a
        ax = c["fixed_input"] + scaled @ c["to_input"]  # (2, N, Cin·KH·KW)
        bias = (c["bias0"] + (c["scale_b1"] * a).sum(-1) + (ax * c["x_lo"]).sum(-1)
                + (ax.clamp(max=0.0) * c["x_width"]).sum(-1))
        return bias - FP_REL * self.mag.to(dtype)


def _conv_pair(network: Network, chain: list[Node], relus: dict[str, _FrozenRelu], in_lower: Tensor,
               in_upper: Tensor, idx: np.ndarray) -> _ConvPair | None:
    """The fast pass where the chain is conv2 <- ReLU <- conv1 <- input (plain convolutions), else None."""
    if [n.kind for n in chain] != ["Conv2d", "Relu", "Conv2d"] or in_lower.dim() != 3:
        return None
    conv2, relu, conv1 = chain
    for conv in (conv2.op, conv1.op):
        if not isinstance(conv, Conv2d) or conv.groups != 1 or tuple(conv.dilation) != (1, 1):
            return None
    return _ConvPair(network, conv2, relus[relu.name], conv1, in_lower, in_upper, idx)


@dataclass
class JointLayer:
    """The re-derived bounds of one pre-activation tensor and everything rebuilt from them at every step."""

    network: Network
    tensor: str
    chain: list[Node]
    idx: np.ndarray  # selected flat neurons of ``tensor``
    frozen_lo: dict[str, Tensor]  # given bounds (float64, per-sample shape) of ``tensor`` and the tensors after it
    frozen_hi: dict[str, Tensor]
    after: list[Node]  # ReLU/Reshape nodes carrying the bounds of ``tensor`` forward (interval images)
    relus: dict[str, _FrozenRelu]  # ReLUs inside the chain
    in_lower: Tensor
    in_upper: Tensor
    shared: bool
    groups: Tensor  # (S,) channel of each row (shared slopes), S = 2 * len(idx)
    alpha: dict[str, Tensor] = field(default_factory=dict)  # ReLU node -> slopes (rows or channels, *patch/shape)
    best_lo: Tensor | None = None  # elementwise best sound bounds of ``tensor`` so far, float64 flat
    best_hi: Tensor | None = None
    steps: int = 0
    fast: _ConvPair | None = None
    param_dtype: torch.dtype = _F64  # of the fast pass's slopes (the optimisation's precision; any value is sound)

    @property
    def rows(self) -> int:
        return int(self.groups.shape[0])

    @property
    def work(self) -> int:
        """Coefficients the pass holds per step (its cost estimate): per row the window on conv1's output and on
        the input for the fast pass, the dense tensors of the chain for the generic one (an upper bound)."""
        if self.fast is not None:
            return self.rows * (self.fast.window + int(self.fast.input_window))
        return self.rows * sum(int(np.prod(self.network.shape_of(n.inputs[0]))) for n in self.chain)

    # --- the intermediate back-substitution -------------------------------------------------------------------
    def _slopes(self, node: Node, coeff: Tensor | Patch) -> Tensor:
        """The lower-line slopes of ``node``'s unstable neurons as seen by each row's coefficients."""
        r = self.relus[node.name]
        key = node.name
        if self.shared:
            if key not in self.alpha:
                channels = int(self.groups.max()) + 1
                self.alpha[key] = r.default_alpha.expand(channels, *r.default_alpha.shape).clone()
            full = self.alpha[key]  # (channels, *shape)
            if isinstance(coeff, Patch):
                h, w = full.shape[-2:]
                ys, xs = coeff.grid()
                c = full.shape[1]
                return full[self.groups[:, None, None, None], torch.arange(c)[None, :, None, None],
                            ys.clamp(0, h - 1)[:, None, :, None], xs.clamp(0, w - 1)[:, None, None, :]]
            return full[self.groups]
        if key not in self.alpha:
            start = gather(r.default_alpha, coeff) if isinstance(coeff, Patch) else (
                r.default_alpha.expand(self.rows, *r.default_alpha.shape))
            self.alpha[key] = start.clone()
        return self.alpha[key]

    def _relu_step(self, node: Node, coeff: Tensor | Patch) -> tuple[Tensor | Patch, Tensor, Tensor]:
        r = self.relus[node.name]
        alpha = self._slopes(node, coeff)
        if isinstance(coeff, Patch):
            active, unstable, up_s, icpt = (gather(v, coeff) for v in (r.active, r.unstable, r.up_slope, r.up_icpt))
            a = coeff.a
        else:
            active, unstable, up_s, icpt = r.active, r.unstable, r.up_slope, r.up_icpt
            a = coeff
        lower_slope = torch.where(active, 1.0, torch.where(unstable, alpha, 0.0))
        neg = a.clamp(max=0.0)
        a_in = a.clamp(min=0.0) * lower_slope + neg * up_s
        s = a.shape[0]
        bias = (neg * icpt).reshape(s, -1).sum(1)
        mag = (neg.abs() * icpt.abs()).reshape(s, -1).sum(1)
        return (Patch(a_in, coeff.oy, coeff.ox) if isinstance(coeff, Patch) else a_in), bias, mag

    def _start_rows(self) -> Tensor | Patch:
        shape = self.network.shape_of(self.tensor)
        n = self.idx.size
        sign = torch.cat([torch.ones(n, dtype=_F64), -torch.ones(n, dtype=_F64)])
        if len(shape) == 3:
            ch, y, x = (torch.as_tensor(np.tile(v, 2)) for v in np.unravel_index(self.idx, shape))
            one = torch.zeros((2 * n, shape[0], 1, 1), dtype=_F64)
            one[torch.arange(2 * n), ch, 0, 0] = sign
            return Patch(one, y, x)
        rows = torch.zeros((2 * n, int(np.prod(shape))), dtype=_F64)
        rows[torch.arange(2 * n), torch.as_tensor(np.tile(self.idx, 2))] = sign
        return rows.reshape(2 * n, *shape)

    def _pass(self) -> Tensor:
        """Sound lower bounds (widened) of the start rows, float64, differentiable in the slopes."""
        shim = _Shim(self.network)
        coeff: Tensor | Patch = self._start_rows()
        s = self.rows
        bias = torch.zeros(s, dtype=_F64)
        mag = torch.zeros(s, dtype=_F64)
        for node in self.chain:
            d_bias: Tensor | None
            d_mag: Tensor | None
            if node.kind == "Relu":
                coeff, d_bias, d_mag = self._relu_step(node, coeff)
            else:
                if isinstance(coeff, Patch):
                    terms, d_bias, d_mag = node.op.crown_step_patch(shim, node, coeff)
                else:
                    terms, d_bias, d_mag = node.op.crown_step(shim, node, coeff)
                coeff = terms[0][1]
            if d_bias is not None and d_mag is not None:
                bias, mag = bias + d_bias, mag + d_mag
        if isinstance(coeff, Patch):
            a2 = coeff.a.reshape(s, -1)
            lo, hi = gather(self.in_lower, coeff).reshape(s, -1), gather(self.in_upper, coeff).reshape(s, -1)
        else:
            a2 = coeff.reshape(s, -1)
            lo, hi = self.in_lower.reshape(1, -1), self.in_upper.reshape(1, -1)
        bias = bias + (a2 * torch.where(a2 >= 0, lo, hi)).sum(1)
        mag = mag + (a2.abs() * torch.maximum(lo.abs(), hi.abs())).sum(1)
        return bias - FP_REL * mag

    def bounds(self, dtype: torch.dtype = _F64) -> tuple[Tensor, Tensor]:
        """This step's bounds of ``tensor`` (flat, differentiable in the slopes) intersected with the given ones, in
        ``dtype``; in float64 they are sound and update the kept best bounds (float32 steps only steer)."""
        if self.fast is not None:
            if "fast" not in self.alpha:
                self.alpha["fast"] = self.fast.alpha_start(self.shared).to(self.param_dtype)
            val = self.fast.lower(self.alpha["fast"], self.shared, dtype).reshape(-1)
        else:
            val = self._pass().to(dtype)
        idx = torch.as_tensor(self.idx)
        n = self.idx.size
        f_lo = self.frozen_lo[self.tensor].reshape(-1).to(dtype)
        f_hi = self.frozen_hi[self.tensor].reshape(-1).to(dtype)
        new_lo = torch.maximum(f_lo[idx], val[:n])
        new_hi = torch.minimum(f_hi[idx], -val[n:])
        ok = new_lo <= new_hi  # both sound: a crossing can only come from rounding; keep the given bounds there
        new_lo, new_hi = torch.where(ok, new_lo, f_lo[idx]), torch.where(ok, new_hi, f_hi[idx])
        # The values are the intersection; the gradient is the pass's own, also where the given bound is tighter
        # (at CROWN's slopes the pass reproduces CROWN's bounds up to the widening, so the intersection alone would
        # pass no gradient at the start).
        # (``v - v.detach()`` is exactly 0, so the values are exactly the intersection)
        new_lo = new_lo.detach() + (val[:n] - val[:n].detach())
        new_hi = new_hi.detach() - (val[n:] - val[n:].detach())
        lo = f_lo.index_put((idx,), new_lo)
        hi = f_hi.index_put((idx,), new_hi)
        if dtype != _F64:
            return lo, hi
        with torch.no_grad():
            if self.best_lo is None or self.best_hi is None:
                self.best_lo, self.best_hi = lo.detach().clone(), hi.detach().clone()
            else:
                b_lo, b_hi = torch.maximum(self.best_lo, lo.detach()), torch.minimum(self.best_hi, hi.detach())
                ok = b_lo <= b_hi
                self.best_lo = torch.where(ok, b_lo, self.best_lo)
                self.best_hi = torch.where(ok, b_hi, self.best_hi)
        self.steps += 1
        return lo, hi

    def carried(self, lo: Tensor, hi: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
        """Bounds (per-sample shape, ``lo``'s dtype) of ``tensor`` and of the tensors after it reached through
        ReLU/Reshape."""
        shape = self.network.shape_of(self.tensor)
        out = {self.tensor: (lo.reshape(shape), hi.reshape(shape))}
        for node in self.after:
            x_lo, x_hi = out[node.inputs[0]]
            if node.kind == "Relu":
                y_lo, y_hi = x_lo.clamp(min=0.0), x_hi.clamp(min=0.0)
            else:
                y_lo, y_hi = x_lo.reshape(node.out_shape), x_hi.reshape(node.out_shape)
            f_lo, f_hi = self.frozen_lo.get(node.output), self.frozen_hi.get(node.output)
            if f_lo is not None and f_hi is not None:
                f_lo, f_hi = f_lo.to(lo.dtype), f_hi.to(lo.dtype)
                n_lo, n_hi = torch.maximum(y_lo, f_lo), torch.minimum(y_hi, f_hi)
                ok = n_lo <= n_hi
                y_lo, y_hi = torch.where(ok, n_lo, f_lo), torch.where(ok, n_hi, f_hi)
            out[node.output] = (y_lo, y_hi)
        return out

    def snapshot(self) -> dict[str, Tensor]:
        return {k: v.detach().clone() for k, v in self.alpha.items()}

    def restore(self, values: dict[str, Tensor]) -> None:
        with torch.no_grad():
            for k, v in values.items():
                self.alpha[k].copy_(v)

    def project(self) -> None:
        with torch.no_grad():
            for v in self.alpha.values():
                v.clamp_(0.0, 1.0)

    def parameters(self) -> list[Tensor]:
        return list(self.alpha.values())


def joint_layer(network: Network, domains: Any, fast_path: bool = True) -> JointLayer | None:
    """The joint optimisation's state for one domain (``DomainBatch`` of size 1), or None where unsupported or where
    no neuron of the bounded tensor has bounds that matter. ``fast_path=False`` keeps the generic (patch) pass where
    the fast one applies (the same bounds; for testing)."""
    if domains.size != 1:
        return None
    t = _target_tensor(network)
    if t is None or t not in domains.pre_lower:
        return None
    chain = _chain(network, t)
    if chain is None:
        return None
    lo, hi = domains.pre_lower[t][0], domains.pre_upper[t][0]
    idx = _selected(network, t, lo, hi)
    if idx.size == 0:
        return None
    relus: dict[str, _FrozenRelu] = {}
    for node in chain:
        if node.kind == "Relu":
            x = node.inputs[0]
            if x not in domains.pre_lower:
                return None
            relus[node.name] = _frozen_relu(domains.pre_lower[x][0], domains.pre_upper[x][0])
    frozen_lo = {t: torch.as_tensor(lo, dtype=_F64)}
    frozen_hi = {t: torch.as_tensor(hi, dtype=_F64)}
    after: list[Node] = []
    reached = {t}
    for node in network.nodes:  # ReLU/Reshape images of ``t`` carry its bounds forward exactly
        if len(node.inputs) == 1 and node.inputs[0] in reached and node.kind in ("Relu", "Reshape"):
            after.append(node)
            reached.add(node.output)
            if node.output in domains.pre_lower:
                frozen_lo[node.output] = torch.as_tensor(domains.pre_lower[node.output][0], dtype=_F64)
                frozen_hi[node.output] = torch.as_tensor(domains.pre_upper[node.output][0], dtype=_F64)
    shape = network.shape_of(t)
    in_lower = torch.as_tensor(domains.lower[0], dtype=_F64)
    in_upper = torch.as_tensor(domains.upper[0], dtype=_F64)
    fast = _conv_pair(network, chain, relus, in_lower, in_upper, idx) if fast_path else None
    if fast is not None:  # slopes per neuron on its window unless that outgrows one slope map per channel
        shared = idx.size * fast.window > fast.c2 * fast.c1 * fast.h1 * fast.w1
    else:
        shared = idx.size > SHARE_ABOVE
    channel = np.unravel_index(idx, shape)[0] if (shared and len(shape) == 3) else np.zeros(idx.size, dtype=np.int64)
    groups = torch.as_tensor(np.tile(channel, 2).astype(np.int64))
    if shared:  # the two directions get slopes of their own
        groups = groups + torch.cat([torch.zeros(idx.size, dtype=torch.int64),
                                     torch.full((idx.size,), int(channel.max()) + 1, dtype=torch.int64)])
    return JointLayer(network, t, chain, idx, frozen_lo, frozen_hi, after, relus, in_lower, in_upper, shared, groups,
                      fast=fast)


def relu_relax_of(lo: Tensor, hi: Tensor, old: AlphaReluRelax, dtype: torch.dtype) -> AlphaReluRelax:
    """The α relaxation of a ReLU rebuilt from bounds ``(*shape)`` (torch, differentiable), one domain."""
    lo, hi = lo.to(dtype)[None, None], hi.to(dtype)[None, None]
    active, inactive = lo >= 0, hi <= 0
    unstable = ~active & ~inactive
    width = torch.where(unstable, hi - lo, torch.ones_like(hi))
    slope = torch.where(active, 1.0, torch.where(unstable, hi / width, 0.0)).to(dtype)
    icpt = torch.where(unstable, -slope * lo, torch.zeros_like(lo))
    return AlphaReluRelax(active, unstable, slope, icpt, old.default_alpha.to(dtype),
                          None if old.sign is None else old.sign.to(dtype))


def pool_relax_of(lo: Tensor, hi: Tensor, old: AlphaPoolRelax, dtype: torch.dtype) -> tuple[AlphaPoolRelax, Tensor]:
    """The α relaxation of a MaxPool rebuilt from its input's bounds (torch, differentiable), one domain, and the
    θ of CROWN's chord on them (the upper line's threshold as a fraction of ``[max l, max u]``)."""
    valid = old.valid
    safe = torch.where(old.win_idx < old.n_in, old.win_idx, 0).reshape(valid.shape)
    l_win = torch.where(valid, lo.to(dtype).reshape(-1)[safe], 0.0)
    u_win = torch.where(valid, hi.to(dtype).reshape(-1)[safe], 0.0)
    neg_inf = torch.tensor(float("-inf"), dtype=dtype)
    l_m, u_m = torch.where(valid, l_win, neg_inf), torch.where(valid, u_win, neg_inf)
    tau_lo = l_m.max(-1).values
    u_top, k_up = u_m.max(-1)
    l_top = l_win.gather(-1, k_up[..., None])[..., 0]
    others = u_m.scatter(-1, k_up[..., None], float("-inf"))
    u_second = others.max(-1).values
    dominated = l_top >= u_second
    tau = torch.where(dominated, l_top, u_second)
    span = u_top - tau_lo
    theta = torch.where(span > 0, (tau - tau_lo) / torch.where(span > 0, span, torch.ones_like(span)),
                        torch.zeros_like(span)).clamp(0.0, 1.0)
    relax = AlphaPoolRelax(old.win_idx, valid, old.n_in, l_win[None, None], u_win[None, None], tau_lo[None, None],
                           u_top[None, None], old.default_lam.to(dtype), old.default_tau.to(dtype))
    return relax, theta[None, None]


__all__ = ["SHARE_ABOVE", "JointLayer", "joint_layer", "pool_relax_of", "relu_relax_of"]
