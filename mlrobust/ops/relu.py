"""Relu: ``y = max(x, 0)`` elementwise, and all its rules (the activation CROWN relaxes and the MILP splits)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mlrobust.ops.base import BETA, CrownStep, OpRules, ParamFamily

if TYPE_CHECKING:
    import torch

    from mlrobust.ir.graph import Network, Node


@dataclass
class ReluRelax:
    """CROWN's relaxation of one ReLU node (tensors of the node's shape)."""

    lower_slope: torch.Tensor  # used where the coefficient is >= 0 (lower-bounding pass)
    upper_slope: torch.Tensor  # used where the coefficient is < 0
    upper_icpt: torch.Tensor


def relu_relax(lo: np.ndarray, hi: np.ndarray) -> ReluRelax:
    """Unstable (``l < 0 < u``): upper chord ``u (x - l) / (u - l)``; adaptive lower line ``x`` if ``u >= -l``
    else ``0``. Stable neurons are linear (identity or zero)."""
    from mlrobust.ops.coeffs import t64

    active, inactive = lo >= 0, hi <= 0
    unstable = ~active & ~inactive
    width = np.where(unstable, hi - lo, 1.0)
    s = np.where(active, 1.0, np.where(unstable, hi / width, 0.0))
    icpt = np.where(unstable, -s * lo, 0.0)
    alpha = np.where(active, 1.0, np.where(unstable, (hi >= -lo).astype(np.float64), 0.0))
    return ReluRelax(t64(alpha), t64(s), t64(icpt))


@dataclass
class AlphaReluRelax:
    """One ReLU node over D domains; tensors ``(D, 1, *shape)`` (the row axis broadcasts)."""

    active: torch.Tensor
    unstable: torch.Tensor
    up_slope: torch.Tensor
    up_icpt: torch.Tensor
    default_alpha: torch.Tensor
    sign: torch.Tensor | None  # split sign as float, None when no neuron of this node is split

    def cast(self, dtype: torch.dtype) -> AlphaReluRelax:
        """The same relaxation with its floating-point tensors in ``dtype``."""
        return AlphaReluRelax(self.active, self.unstable, self.up_slope.to(dtype), self.up_icpt.to(dtype),
                              self.default_alpha.to(dtype), None if self.sign is None else self.sign.to(dtype))


def relu_triangle(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, ...]:
    """The triangle relaxation of a ReLU from bounds of any shape: ``(active, unstable, up_slope, up_icpt,
    default_alpha)``, the lower slope starting at 1 where ``hi >= -lo`` (CROWN's adaptive choice), else 0."""
    active, inactive = lo >= 0, hi <= 0
    unstable = ~active & ~inactive
    width = np.where(unstable, hi - lo, 1.0)
    slope = np.where(active, 1.0, np.where(unstable, hi / width, 0.0))
    icpt = np.where(unstable, -slope * lo, 0.0)
    alpha = np.where(active | (unstable & (hi >= -lo)), 1.0, 0.0)
    return active, unstable, slope, icpt, alpha


def alpha_relu_relax(lo: np.ndarray, hi: np.ndarray, split: np.ndarray | None) -> AlphaReluRelax:
    """Relaxation of a ReLU from ``(D, *shape)`` bounds already clamped by the splits."""
    import torch

    active, unstable, slope, icpt, alpha = relu_triangle(lo, hi)

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(a))[:, None]

    sign = None if split is None or not split.any() else t(split.astype(np.float64))
    return AlphaReluRelax(t(active), t(unstable), t(slope), t(icpt), t(alpha), sign)


def seed_split_multipliers(beta: torch.Tensor, alpha: torch.Tensor, pos: torch.Tensor, sign: torch.Tensor,
                           new: torch.Tensor | None = None) -> None:
    """Give the split neurons marked ``new`` (splits made since the warm start; None: every split neuron) the β
    that makes their term of the backward pass what it was before the split, in place.

    Before the split the neuron was unstable and a coefficient ``c >= 0`` on its output took the lower line
    ``c α z``. Split active (``s = +1``), the output is ``z`` and the Lagrangian term ``-β z``: ``β = c (1 - α)``
    gives ``c α z`` again; split inactive (``s = -1``), the output is 0 and the term ``+β z``: ``β = c α``. (Where
    ``c < 0`` the split's own line is already the tighter one: β stays 0.) So a child warm-started from its
    parent's parameters starts from its parent's relaxation for the new split instead of losing the slope's
    contribution, which the parent's α had and ten steps of β from 0 often do not win back. Older splits keep the
    multiplier their optimisation chose, 0 included (re-seeding those undid it and cost proofs on MNIST 256x2).
    Any ``β >= 0`` is sound; the caller keeps this start only where it bounds better (``alpha_crown._optimise``)."""
    import torch

    with torch.no_grad():
        chosen = (sign != 0) if new is None else (sign != 0) & new
        seed = torch.where(sign > 0, pos * (1.0 - alpha), pos * alpha)
        beta.copy_(torch.where(chosen, seed.to(beta.dtype), beta))


#: The lower-line slopes ``α ∈ [0, 1]`` of the unstable ReLUs (``max(x, 0) >= α x`` for every ``x``).
RELU_SLOPES = ParamFamily("alpha", "lr_alpha")


@dataclass(eq=False)
class Relu(OpRules):
    """``y = max(x, 0)`` elementwise."""

    kind = "Relu"
    elementwise = True
    activation = True
    splittable = True
    alpha_families = (RELU_SLOPES, BETA)

    def forward(self, x: np.ndarray, out_shape: tuple[int, ...] | None = None) -> np.ndarray:
        return np.maximum(x, 0.0)

    num_params = 0

    def forward_torch(self, node: Node, args: list[torch.Tensor], buf: Any) -> torch.Tensor:
        import torch.nn.functional as F

        return F.relu(args[0])

    def interval(self, node: Node, lows: list[np.ndarray], ups: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        # monotone and exact in floating point: no widening
        return self.forward(lows[0][None], node.out_shape)[0], self.forward(ups[0][None], node.out_shape)[0]

    def crown_relax(self, engine: Any, node: Node, lo: np.ndarray, hi: np.ndarray) -> ReluRelax:
        return relu_relax(lo, hi)

    def refine_index(self, engine: Any, node: Node, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        return np.flatnonzero((lo < 0) & (hi > 0))

    def crown_step(self, engine: Any, node: Node, a: torch.Tensor) -> CrownStep:
        import torch

        s = a.shape[0]
        r = engine._relaxation(node)
        neg = a.clamp(max=0.0)
        # a·lower_slope where a >= 0, a·upper_slope where a < 0, in two passes over the (large) coefficients
        a_in = torch.addcmul(a * r.lower_slope, neg, r.upper_slope - r.lower_slope)
        neg2 = neg.reshape(s, -1)
        icpt = r.upper_icpt.reshape(-1)
        return [(node.inputs[0], a_in)], neg2 @ icpt, -(neg2 @ icpt.abs())

    def crown_step_patch(self, engine: Any, node: Node, p: Any) -> CrownStep:
        import torch

        from mlrobust.ops.coeffs import Patch, gather

        r = engine._relaxation(node)
        lo_s, up_s, icpt = (gather(v, p) for v in (r.lower_slope, r.upper_slope, r.upper_icpt))
        neg = p.a.clamp(max=0.0)
        a_in = p.a * torch.where(p.a >= 0, lo_s, up_s)
        return ([(node.inputs[0], Patch(a_in, p.oy, p.ox))], (neg * icpt).sum(dim=(1, 2, 3)),
                (neg.abs() * icpt.abs()).sum(dim=(1, 2, 3)))

    def alpha_step(self, ctx: Any, node: Node, a: torch.Tensor) -> Any:
        import torch

        from mlrobust.ops.coeffs import AlphaStep, rows

        r = ctx.relax[node.name]
        if ctx.capture is not None:
            ctx.capture[node.name] = a.detach()
        pos, neg = a.clamp(min=0.0), a.clamp(max=0.0)
        if ctx.support.get(node.name) is not None:
            a_in = self._compact_terms(ctx, node, r, pos, neg)
        else:
            alpha = ctx.params.family(RELU_SLOPES.name).get(node.name, r.default_alpha)
            lower_slope = torch.where(r.active, 1.0, torch.where(r.unstable, alpha, 0.0))
            a_in = pos * lower_slope + neg * r.up_slope
            beta = ctx.params.family(BETA.name).get(node.name)
            if beta is not None and r.sign is not None:
                if ctx.seed_beta:
                    seed_split_multipliers(beta, alpha, pos, r.sign, ctx.seed_new.get(node.name))
                a_in = a_in - beta * r.sign  # the Lagrangian term -β s z of the split constraints s z >= 0
        return AlphaStep([(node.inputs[0], a_in)], rows(neg * r.up_icpt), rows(neg.abs() * r.up_icpt.abs()))

    def _compact_terms(self, ctx: Any, node: Node, r: AlphaReluRelax, pos: torch.Tensor,
                       neg: torch.Tensor) -> torch.Tensor:
        """The input coefficients of :meth:`alpha_step` with α and β kept on the node's support only
        (``(D, S, m)``, see :meth:`alpha_support`): every neuron takes the slope its relaxation fixes (1 active,
        0 inactive, CROWN's for an unstable one off the support), then the support's neurons add what their
        parameters change, in one ``index_add`` (same lines as the dense layout; the gradient stays compact)."""
        import torch

        from mlrobust.ops.coeffs import on_units, support_mask

        idx = ctx.support[node.name]
        units = r.unstable.dim() - 2
        off = ~support_mask(r.unstable[0, 0].numel(), idx).reshape(r.unstable.shape[2:])
        fixed = torch.where(r.active, 1.0, torch.where(r.unstable & off, r.default_alpha, 0.0))
        a_in = pos * fixed + neg * r.up_slope
        pos_c = on_units(pos, units, idx)
        alpha = ctx.params.family(RELU_SLOPES.name).get(node.name)
        if alpha is None:
            alpha = on_units(r.default_alpha, units, idx)
        change = pos_c * torch.where(on_units(r.unstable, units, idx), alpha, 0.0)
        beta = ctx.params.family(BETA.name).get(node.name)
        if beta is not None and r.sign is not None:
            sign = on_units(r.sign, units, idx)
            if ctx.seed_beta:
                seed_split_multipliers(beta, alpha, pos_c, sign, ctx.seed_new.get(node.name))
            change = change - beta * sign  # the Lagrangian term -β s z of the split constraints s z >= 0
        d, s = a_in.shape[:2]
        return a_in.reshape(d, s, -1).index_add(2, idx, change.to(a_in.dtype)).reshape(a_in.shape)

    def alpha_relax(self, network: Network, node: Node, domains: Any) -> AlphaReluRelax:
        t = node.inputs[0]
        return alpha_relu_relax(domains.pre_lower[t], domains.pre_upper[t], domains.splits.get(node.name))

    def alpha_support(self, ctx: Any, node: Node) -> torch.Tensor:
        """The neurons unstable or split in some domain of ``ctx`` (only an unstable neuron's lower line has a slope
        to choose, only a split one a multiplier; a sub-domain inheriting these bounds is unstable on fewer)."""
        import torch

        r = ctx.relax[node.name]
        used = r.unstable if r.sign is None else r.unstable | (r.sign != 0)
        return torch.nonzero(used.reshape(used.shape[0], -1).any(dim=0)).reshape(-1)

    def alpha_init(self, ctx: Any, node: Node, d: int, s: int) -> dict[str, torch.Tensor]:
        import torch

        from mlrobust.ops.coeffs import on_units

        r = ctx.relax[node.name]
        default = on_units(r.default_alpha, r.default_alpha.dim() - 2, ctx.support.get(node.name))
        slopes = default.expand(d, s, *default.shape[2:]).clone()
        if r.sign is None:
            return {RELU_SLOPES.name: slopes}
        return {RELU_SLOPES.name: slopes, BETA.name: torch.zeros_like(slopes)}

    def alpha_project(self, ctx: Any, node: Node, family: str, value: torch.Tensor) -> None:
        if family == BETA.name:
            value.clamp_(min=0.0)
        else:
            value.clamp_(0.0, 1.0)

    def encode_milp(self, builder: Any, node: Node, inputs: list[Any], shapes: list[tuple[int, ...]]) -> Any:
        from mlrobust.milp.layers.relu import encode_relu, relu_split

        t = node.inputs[0]
        if builder._feeds_only_pools(node):
            # fused into the MaxPool after it (max(relu(x)) = relu(max(x))): no columns of its own
            builder.set_bounds(t, *builder.form_interval(t))
            builder.fused[node.output] = t
            inactive, active, unstable = relu_split(builder.lower[t], builder.upper[t])
            builder.layer_stats[node.name] = {"kind": "Relu", "inactive": int(inactive.sum()),
                                              "active": int(active.sum()), "unstable": int(unstable.sum()),
                                              "binaries": 0, "fused_into_maxpool": True}
            return None
        if t in builder.fused:
            t = builder.fused[t]
            inputs = [builder.forms[t]]
        builder.set_bounds(t, *builder.form_interval(t))
        out, stats, cols = encode_relu(builder.enc, inputs[0], builder.lower[t], builder.upper[t])
        stats["binaries"] = stats["unstable"] - stats["relaxed"]
        builder.layer_stats[node.name] = {"kind": node.kind, **stats}
        builder.columns[node.name] = cols
        return out
