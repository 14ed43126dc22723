"""Add: ``y = a + coeff * b`` of two tensors (residual connections; ``coeff = -1`` is Sub), and all its rules."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mlrobust.ops.base import FP_REL, CrownStep, OpRules

if TYPE_CHECKING:
    import torch

    from mlrobust.ir.graph import Network, Node


@dataclass(eq=False)
class Add(OpRules):
    """Sum of two tensors ``y = a + coeff * b`` (residual connections; ``coeff = -1`` is Sub)."""

    coeff: float = 1.0
    kind = "Add"
    affine = True
    arity = 2

    def forward(self, a: np.ndarray, b: np.ndarray, out_shape: tuple[int, ...] | None = None) -> np.ndarray:
        return a + self.coeff * b

    num_params = 0

    def describe(self, node: Node, network: Network) -> str:
        if self.coeff == 1.0:
            return f"{node.inputs[0]} + {node.inputs[1]}"
        if self.coeff == -1.0:
            return f"{node.inputs[0]} − {node.inputs[1]}"
        return f"{node.inputs[0]} + {self.coeff:g}·{node.inputs[1]}"

    def forward_torch(self, node: Node, args: list[torch.Tensor], buf: Any) -> torch.Tensor:
        return args[0] + self.coeff * args[1]

    def interval(self, node: Node, lows: list[np.ndarray], ups: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = lows[0], ups[0]
        lo_b, hi_b = lows[1], ups[1]
        if self.coeff >= 0:
            out_lo, out_hi = lo + self.coeff * lo_b, hi + self.coeff * hi_b
        else:
            out_lo, out_hi = lo + self.coeff * hi_b, hi + self.coeff * lo_b
        mag = np.maximum(np.abs(lo), np.abs(hi)) + abs(self.coeff) * np.maximum(np.abs(lo_b), np.abs(hi_b))
        return out_lo - FP_REL * mag, out_hi + FP_REL * mag

    def crown_step(self, engine: Any, node: Node, a: torch.Tensor) -> CrownStep:
        from mlrobust.ops.coeffs import unbroadcast

        shapes = [engine.network.shape_of(t) for t in node.inputs]
        return [(node.inputs[0], unbroadcast(a, shapes[0])),
                (node.inputs[1], unbroadcast(self.coeff * a, shapes[1]))], None, None

    def crown_step_patch(self, engine: Any, node: Node, p: Any) -> CrownStep:
        from mlrobust.ops.coeffs import Patch, patch_to_dense

        if any(engine.network.shape_of(t) != node.out_shape for t in node.inputs):  # broadcasting: dense
            return engine._step(node, patch_to_dense(p, node.out_shape))
        return [(node.inputs[0], p), (node.inputs[1], Patch(self.coeff * p.a, p.oy, p.ox))], None, None

    def alpha_step(self, ctx: Any, node: Node, a: torch.Tensor) -> Any:
        from mlrobust.ops.coeffs import AlphaStep, unbroadcast2

        return AlphaStep([(node.inputs[0], unbroadcast2(a, ctx.network.shape_of(node.inputs[0]))),
                          (node.inputs[1], unbroadcast2(self.coeff * a, ctx.network.shape_of(node.inputs[1])))])

    def encode_milp(self, builder: Any, node: Node, inputs: list[Any], shapes: list[tuple[int, ...]]) -> Any:
        from mlrobust.milp.encoding import AffineForm

        a, b = inputs
        ncols = builder.enc.ncols
        return AffineForm((a.widen(ncols) + self.coeff * b.widen(ncols)).tocsr(), a.c + self.coeff * b.c)
