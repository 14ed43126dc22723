"""The rules shared by the exact index maps (Pad, Slice, Transpose, Concat): each output coordinate is one input
coordinate or a constant.

Such an op is fully described by an index vector over its flattened inputs (taken one after the other, as Concat
lays them out): ``flatten(y)[i] = inputs[index[i]]``, or the op's ``fill`` constant where ``index[i] == -1``. No
arithmetic happens, so the interval image is exact without widening, CROWN's backward step is a scatter-add of the
coefficients onto the input positions (constant positions add ``coefficient · fill`` to the bound), and the MILP
takes rows of the input forms: the encoding stays exact and adds no columns or rows. A kind's own module only says
how its parameters and input shapes give the index (:meth:`GatherOp.index_map`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from mlrobust.ops.base import CrownStep, OpRules

if TYPE_CHECKING:
    import torch

    from mlrobust.ir.graph import Network, Node


def axis_index(in_shape: tuple[int, ...], coords: list[np.ndarray]) -> np.ndarray:
    """Flat index of an output whose coordinate ``o`` along axis ``k`` reads input coordinate ``coords[k][o]``.

    A coordinate outside ``[0, in_shape[k])`` along any axis gives -1 (the op's constant), which is how Pad writes
    its border and Slice/Pad with negative pads crop.
    """
    strides = np.cumprod((1,) + tuple(in_shape[::-1]), dtype=np.int64)[:-1][::-1]
    rank = len(in_shape)
    flat = np.zeros((1,) * rank, dtype=np.int64)
    valid = np.ones((1,) * rank, dtype=bool)
    for k, (size, c) in enumerate(zip(in_shape, coords)):
        c = np.asarray(c, dtype=np.int64)
        shape = [1] * rank
        shape[k] = c.size
        c = c.reshape(shape)
        flat = flat + c * strides[k]
        valid = valid & (c >= 0) & (c < size)
    return np.where(valid, flat, -1)


class GatherOp(OpRules):
    """An op whose output coordinates are input coordinates or the constant ``fill`` (see the module docstring)."""

    affine: ClassVar[bool] = True
    num_params = 0

    @property
    def fill(self) -> float:
        return 0.0

    def index_map(self, in_shapes: list[tuple[int, ...]]) -> np.ndarray:
        """Flat index into the concatenated flattened inputs of every output coordinate (C order); -1 is ``fill``."""
        raise self._missing("index map")

    def out_shape_for(self, in_shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
        """The per-sample output shape for per-sample input shapes."""
        raise self._missing("output shape")

    def index(self, in_shapes: list[tuple[int, ...]]) -> np.ndarray:
        """:meth:`index_map`, cached per input shapes (ops are immutable once imported)."""
        cache: dict[tuple, np.ndarray] = self.__dict__.setdefault("_index_cache", {})
        key = tuple(tuple(int(d) for d in s) for s in in_shapes)
        if key not in cache:
            idx = np.asarray(self.index_map(list(key)), dtype=np.int64).reshape(-1)
            idx.setflags(write=False)
            cache[key] = idx
        return cache[key]

    def _node_index(self, network: Network, node: Node) -> np.ndarray:
        return self.index([network.shape_of(t) for t in node.inputs])

    # --- forward -------------------------------------------------------------------------------------------------
    def forward(self, *args: np.ndarray, out_shape: tuple[int, ...] | None = None) -> np.ndarray:
        in_shapes = [tuple(a.shape[1:]) for a in args]
        n = args[0].shape[0]
        idx = self.index(in_shapes)
        dtype = np.result_type(*args)
        flat = np.concatenate([a.reshape(n, -1) for a in args] + [np.full((n, 1), self.fill, dtype=dtype)], axis=1)
        shape = out_shape if out_shape is not None else self.out_shape_for(in_shapes)
        return flat[:, idx].reshape(n, *shape)  # index -1 reads the fill column appended last

    def torch_buffers(self, network: Network, node: Node) -> dict[str, np.ndarray]:
        # float buffers are cast to the module's dtype; the index is rebuilt from these exact small integers
        return {"index": self._node_index(network, node).astype(np.float64)}

    def forward_torch(self, node: Node, args: list[torch.Tensor], buf: Any) -> torch.Tensor:
        import torch

        n = args[0].shape[0]
        fill = torch.full((n, 1), self.fill, dtype=args[0].dtype, device=args[0].device)
        flat = torch.cat([a.reshape(n, -1) for a in args] + [fill], dim=1)
        idx = buf("index").long()
        idx = torch.where(idx < 0, flat.shape[1] - 1, idx)
        return flat[:, idx].reshape(n, *node.out_shape)

    # --- bounds --------------------------------------------------------------------------------------------------
    def interval(self, node: Node, lows: list[np.ndarray], ups: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        # a selection of coordinates: exact in floating point, no widening
        return (self.forward(*[lo[None] for lo in lows], out_shape=node.out_shape)[0],
                self.forward(*[hi[None] for hi in ups], out_shape=node.out_shape)[0])

    def _scatter(self, network: Network, node: Node, a: torch.Tensor, lead: int) -> tuple[list[tuple[str, Any]],
                                                                                        Any, Any]:
        """Adjoint of the gather on coefficients with ``lead`` leading row axes: scatter-add onto the inputs."""
        import torch

        shapes = [network.shape_of(t) for t in node.inputs]
        sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
        idx = torch.from_numpy(self.index(shapes).copy()).to(a.device)  # the cached index is read-only
        rows = a.shape[:lead]
        flat = a.reshape(*rows, -1)
        total = sum(sizes)
        target = torch.where(idx < 0, total, idx)
        out = torch.zeros(*rows, total + 1, dtype=a.dtype, device=a.device)
        out.index_add_(lead, target, flat)
        terms = []
        start = 0
        for t, shape, size in zip(node.inputs, shapes, sizes):
            terms.append((t, out[..., start:start + size].reshape(*rows, *shape)))
            start += size
        if self.fill == 0.0 or not bool((idx < 0).any()):
            return terms, None, None
        on_fill = idx < 0
        const = flat[..., on_fill].sum(-1)  # the coefficients on constant coordinates
        return terms, const * self.fill, flat[..., on_fill].abs().sum(-1) * abs(self.fill)

    def crown_step(self, engine: Any, node: Node, a: torch.Tensor) -> CrownStep:
        terms, bias, mag = self._scatter(engine.network, node, a, 1)
        return terms, bias, mag

    def alpha_step(self, ctx: Any, node: Node, a: torch.Tensor) -> Any:
        from mlrobust.ops.coeffs import AlphaStep

        terms, bias, mag = self._scatter(ctx.network, node, a, 2)
        return AlphaStep(terms, bias, mag)

    # --- MILP ----------------------------------------------------------------------------------------------------
    def encode_milp(self, builder: Any, node: Node, inputs: list[Any], shapes: list[tuple[int, ...]]) -> Any:
        import scipy.sparse as sp

        from mlrobust.milp.encoding import AffineForm

        ncols = builder.enc.ncols
        idx = self.index(shapes)
        stacked_a = sp.vstack([f.widen(ncols) for f in inputs] + [sp.csr_matrix((1, ncols))], format="csr")
        stacked_c = np.concatenate([f.c for f in inputs] + [np.array([self.fill])])
        rows = np.where(idx < 0, stacked_c.size - 1, idx)
        return AffineForm(stacked_a[rows], stacked_c[rows])

    def milp_matrix(self, node: Node, in_shape: tuple[int, ...]) -> tuple[Any, np.ndarray]:
        import scipy.sparse as sp

        idx = self.index([in_shape])
        n_in = int(np.prod(in_shape, dtype=np.int64))
        keep = idx >= 0
        M = sp.csr_matrix((np.ones(int(keep.sum())), (np.flatnonzero(keep), idx[keep])), shape=(idx.size, n_in))
        return M, np.where(keep, 0.0, self.fill)
