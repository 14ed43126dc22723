"""Scale: elementwise affine map ``y = x * mul + add`` (normalisation, unfolded batch norm), and all its rules."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mlrobust.ops.base import FP_REL, CrownStep, OpRules, range_text

if TYPE_CHECKING:
    import torch

    from mlrobust.ir.graph import Network, Node


@dataclass(eq=False)
class Scale(OpRules):
    """Elementwise affine map ``y = x * mul + add`` with per-sample-shaped constants (normalisation, unfolded BN)."""

    mul: np.ndarray  # broadcastable to the per-sample shape
    add: np.ndarray
    kind = "Scale"
    affine = True
    elementwise = True

    def forward(self, x: np.ndarray, out_shape: tuple[int, ...] | None = None) -> np.ndarray:
        return x * self.mul + self.add

    @property
    def num_params(self) -> int:
        return self.mul.size + self.add.size

    def describe(self, node: Node, network: Network) -> str:
        return f"x·{range_text(self.mul)} + {range_text(self.add)}"

    def torch_buffers(self, network: Network, node: Node) -> dict[str, np.ndarray]:
        return {"mul": np.asarray(self.mul), "add": np.asarray(self.add)}

    def forward_torch(self, node: Node, args: list[torch.Tensor], buf: Any) -> torch.Tensor:
        return args[0] * buf("mul") + buf("add")

    def interval(self, node: Node, lows: list[np.ndarray], ups: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        a, b = lows[0] * self.mul, ups[0] * self.mul
        mag = np.maximum(np.abs(a), np.abs(b)) + np.abs(self.add)
        return np.minimum(a, b) + self.add - FP_REL * mag, np.maximum(a, b) + self.add + FP_REL * mag

    def crown_step(self, engine: Any, node: Node, a: torch.Tensor) -> CrownStep:
        from mlrobust.ops.coeffs import t64, unbroadcast

        s = a.shape[0]
        add = t64(self.add)
        a_in = unbroadcast(a * t64(self.mul), engine.network.shape_of(node.inputs[0]))
        return ([(node.inputs[0], a_in)], (a * add).reshape(s, -1).sum(1),
                (a.abs() * add.abs()).reshape(s, -1).sum(1))

    def crown_step_patch(self, engine: Any, node: Node, p: Any) -> CrownStep:
        import torch

        from mlrobust.ops.coeffs import Patch, gather, patch_to_dense, t64

        if engine.network.shape_of(node.inputs[0]) != node.out_shape:  # broadcasting input: dense
            return engine._step(node, patch_to_dense(p, node.out_shape))
        mul = gather(torch.broadcast_to(t64(self.mul), node.out_shape), p)
        add = gather(torch.broadcast_to(t64(self.add), node.out_shape), p)
        return ([(node.inputs[0], Patch(p.a * mul, p.oy, p.ox))], (p.a * add).sum(dim=(1, 2, 3)),
                (p.a.abs() * add.abs()).sum(dim=(1, 2, 3)))

    def alpha_step(self, ctx: Any, node: Node, a: torch.Tensor) -> Any:

        from mlrobust.ops.coeffs import AlphaStep, rows, unbroadcast2

        mul, add = ctx.const(self.mul), ctx.const(self.add)
        return AlphaStep([(node.inputs[0], unbroadcast2(a * mul, ctx.network.shape_of(node.inputs[0])))],
                         rows(a * add), rows(a.abs() * add.abs()))

    def encode_milp(self, builder: Any, node: Node, inputs: list[Any], shapes: list[tuple[int, ...]]) -> Any:
        from mlrobust.milp.layers.affine import encode_linear

        return encode_linear(node, inputs[0], shapes[0], builder.enc.ncols)

    def milp_matrix(self, node: Node, in_shape: tuple[int, ...]) -> tuple[Any, np.ndarray]:
        import scipy.sparse as sp

        mul = np.broadcast_to(np.asarray(self.mul, dtype=np.float64), in_shape).reshape(-1)
        return (sp.diags(mul, format="csr"),
                np.broadcast_to(np.asarray(self.add, dtype=np.float64), in_shape).reshape(-1).copy())
