"""The base class of every op kind: its traits and the rules each engine calls, one method per engine.

An op kind lives in one module of :mod:`mlrobust.ops` (the IR dataclass, its numpy and torch forward, its interval
image, its CROWN and α-CROWN backward rules and its MILP encoding) and is listed in :data:`mlrobust.ops.OP_CLASSES`.
The engines (IBP, CROWN, α-CROWN, the torch executor, the MILP builder) keep their orchestration and call these
methods; they never test an op's type. Traits are class attributes the engines read instead of lists of kinds.
Importing this package stays free of torch and scipy: rules that need them import them when they run.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

if TYPE_CHECKING:
    import torch

    from mlrobust.ir.graph import Network, Node

#: Outward widening of every rounded bound, relative to the sum of the absolute values of the terms it adds up.
#: A float64 sum of n products errs by at most ~n·2^-53 of that magnitude, so 1e-10 covers n up to ~10^6.
FP_REL = 1e-10

#: What a CROWN backward step returns: coefficients per input tensor, the constant added per row (or None) and
#: the magnitude of that constant's terms (for the floating-point widening).
CrownStep = tuple[list[tuple[str, Any]], "torch.Tensor | None", "torch.Tensor | None"]


@dataclass(frozen=True)
class ParamFamily:
    """One family of α-CROWN parameters of an op kind (see :meth:`OpRules.alpha_init`).

    ``name``: the group of :class:`mlrobust.bounds.alpha_crown.AlphaState` its values are kept in, per node (op kinds
    with the same kind of parameter share a group: ReLU slopes and Sigmoid/Tanh tangent points are both "alpha",
    every split multiplier is "beta"). ``lr``: the field of :class:`mlrobust.bounds.alpha_crown.AlphaOptions` that
    holds its learning rate; a family whose rate is 0 is not optimised and stays at CROWN's choice.
    """

    name: str
    lr: str


#: The β-CROWN multipliers of split constraints ``s z >= 0`` on an op's input (``β >= 0``).
BETA = ParamFamily("beta", "lr_beta")


def out_size(size: int, kernel: int, stride: int, pad_begin: int, pad_end: int, dilation: int = 1) -> int:
    return (size + pad_begin + pad_end - dilation * (kernel - 1) - 1) // stride + 1


def windows(x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int, int, int],
            dilation: tuple[int, int], pad_value: float) -> np.ndarray:
    """(N, C, H, W) -> (N, C, Ho, Wo, kh, kw) view of the (padded) sliding windows."""
    top, left, bottom, right = padding
    if any(padding):
        x = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=pad_value)
    kh, kw = kernel
    dh, dw = dilation
    eff_h, eff_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    win = sliding_window_view(x, (eff_h, eff_w), axis=(2, 3))
    return win[:, :, :: stride[0], :: stride[1], ::dh, ::dw]


class OpRules:
    """Traits and per-engine rules of one op kind (subclassed by each IR op dataclass).

    Traits: ``affine`` (an affine map of its inputs), ``mixing`` (affine and mixes coordinates: IBP is exact for
    one such map of a box, not for two), ``elementwise`` (single input, maps a box onto a box coordinate by
    coordinate), ``activation`` (piecewise linear, relaxed by CROWN and encoded with binaries; its input is a
    pre-activation whose bounds matter), ``pooling`` (a windowed op over ``(C, H, W)``), ``absorbs_relu``
    (``op(relu(x))`` is encoded inside the op's MILP, so a ReLU feeding only such ops gets no binaries of its own),
    ``weight_rows`` (output neuron ``i`` is row ``i`` of a weight matrix on the flattened input plus a bias: see
    :meth:`output_rows`), ``splittable`` (branch and bound may split its input), ``alpha_families`` (the α-CROWN
    parameter families it owns, :class:`ParamFamily`; an op kind with any has an :meth:`alpha_relax`, gives
    CROWN's values in :meth:`alpha_init` and keeps them sound in :meth:`alpha_project`), ``arity`` (number of
    input tensors).
    """

    kind: ClassVar[str] = "?"
    affine: ClassVar[bool] = False
    mixing: ClassVar[bool] = False
    elementwise: ClassVar[bool] = False
    activation: ClassVar[bool] = False
    pooling: ClassVar[bool] = False
    absorbs_relu: ClassVar[bool] = False
    weight_rows: ClassVar[bool] = False
    splittable: ClassVar[bool] = False
    alpha_families: ClassVar[tuple[ParamFamily, ...]] = ()
    arity: ClassVar[int] = 1

    def _missing(self, rule: str, node: Node | None = None) -> TypeError:
        where = f" (node {node.name})" if node is not None else ""
        return TypeError(f"op {self.kind} has no {rule} rule{where}")

    # --- forward -------------------------------------------------------------------------------------------------
    def forward(self, *args: Any) -> np.ndarray:
        """numpy forward on batched inputs (``(N, *shape)``), then ``out_shape``."""
        raise self._missing("numpy forward")

    def torch_buffers(self, network: Network, node: Node) -> dict[str, np.ndarray]:
        """Constant tensors the torch forward reads (registered as module buffers)."""
        return {}

    def forward_torch(self, node: Node, args: list[torch.Tensor], buf: Any) -> torch.Tensor:
        """torch forward; ``buf(key)`` returns the buffer ``key`` of :meth:`torch_buffers`."""
        raise self._missing("torch forward", node)

    def output_rows(self, sel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Weight rows and biases of the output neurons ``sel`` (ops with the ``weight_rows`` trait)."""
        raise self._missing("output rows")

    def describe(self, node: Node, network: Network) -> str:
        """A one-line description of the op's parameters (for the network summary)."""
        return ""

    # --- bounds --------------------------------------------------------------------------------------------------
    def interval(self, node: Node, lows: list[np.ndarray], ups: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Sound interval image on per-sample boxes (no batch axis), widened by ``FP_REL`` where it rounds."""
        raise self._missing("interval", node)

    def crown_relax(self, engine: Any, node: Node, lo: np.ndarray, hi: np.ndarray) -> Any:
        """CROWN's linear relaxation from the bounds of the input (activations only)."""
        raise self._missing("CROWN relaxation", node)

    def refine_index(self, engine: Any, node: Node, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Flat indices of the input neurons whose relaxation depends on their bounds (activations only)."""
        raise self._missing("refine index", node)

    def crown_step(self, engine: Any, node: Node, a: torch.Tensor) -> CrownStep:
        """Substitute ``a · node.output`` (dense coefficients ``(S, *out_shape)``) by a lower bound linear in the
        node's inputs; ``engine`` is the :class:`mlrobust.bounds.crown.BackSubstitution`."""
        raise self._missing("CROWN", node)

    def crown_step_patch(self, engine: Any, node: Node, p: Any) -> CrownStep:
        """:meth:`crown_step` for patch coefficients; by default the patch is made dense."""
        from mlrobust.ops.coeffs import patch_to_dense

        return engine._step(node, patch_to_dense(p, node.out_shape))

    def alpha_step(self, ctx: Any, node: Node, a: torch.Tensor) -> Any:
        """α-CROWN's backward rule on ``(D, S, *out_shape)`` coefficients; returns an :class:`AlphaStep`."""
        raise self._missing("α-CROWN", node)

    def alpha_relax(self, network: Network, node: Node, domains: Any) -> Any:
        """α-CROWN's relaxation over a batch of domains (ops with ``alpha_families``): an object with a
        ``cast(dtype)`` method, kept in the α engine's context under the node's name."""
        raise self._missing("α-CROWN relaxation", node)

    def alpha_init(self, ctx: Any, node: Node, d: int, s: int) -> dict[str, torch.Tensor]:
        """CROWN's values of the op's parameters, ``(D, S, ...)`` (one copy per domain and row), by family name
        (one of :attr:`alpha_families`; a family may be left out, e.g. β where no neuron of the node is split)."""
        return {}

    def alpha_support(self, ctx: Any, node: Node) -> torch.Tensor | None:
        """The units (sorted flat indices of the node's neurons or windows) whose relaxation depends on the op's
        parameters in some domain of ``ctx``, or None (the parameters stay dense). Where a caller fixes a support
        (:func:`mlrobust.bounds.alpha_crown.parameter_support`) the op keeps its families ``(D, S, m, ...)`` over
        those units only (``ctx.support[node.name]``) in :meth:`alpha_init`, :meth:`alpha_step` and
        :meth:`alpha_project`, and the units off it take CROWN's choice."""
        return None

    def alpha_project(self, ctx: Any, node: Node, family: str, value: torch.Tensor) -> None:
        """Project ``value`` (the node's parameters of ``family``) in place onto the set where every line they
        pick is sound; ``ctx`` holds the relaxation (:meth:`alpha_relax`) under ``ctx.relax[node.name]``."""
        raise self._missing("α-CROWN projection", node)

    # --- MILP ----------------------------------------------------------------------------------------------------
    def encode_milp(self, builder: Any, node: Node, inputs: list[Any], shapes: list[tuple[int, ...]]) -> Any:
        """The output affine form of this node in ``builder``'s MILP (adding columns and rows as needed)."""
        raise self._missing("MILP", node)

    def milp_matrix(self, node: Node, in_shape: tuple[int, ...]) -> tuple[Any, np.ndarray]:
        """``(M, b)`` with ``flatten(out) = M @ flatten(in) + b`` (scipy sparse ``M``; single-input affine ops)."""
        raise self._missing("MILP matrix", node)


#: ``affine_matrix`` results per op (weakly: an op that is gone takes its matrices with it) and input shape.
_MATRICES: weakref.WeakKeyDictionary[OpRules, dict[tuple[int, ...], tuple[Any, np.ndarray]]] = (
    weakref.WeakKeyDictionary())


def affine_matrix(node: Node, in_shape: tuple[int, ...]) -> tuple[Any, np.ndarray]:
    """``(M, b)`` with ``flatten(out) = M @ flatten(in) + b`` for a single-input affine op (its ``milp_matrix``),
    cached per op and input shape: the matrix depends on nothing else, and the MILP encoding of every query and the
    bound tier's affine tail reuse it (a search builds tens of models per image)."""
    op = node.op
    per_op = _MATRICES.setdefault(op, {})
    key = tuple(int(s) for s in in_shape)
    if key not in per_op:
        n_in = int(np.prod(in_shape, dtype=np.int64))
        M, b = op.milp_matrix(node, key)
        if M.shape != (node.size, n_in):
            raise ValueError(f"affine matrix of node {node.name} has shape {M.shape}, expected {(node.size, n_in)}")
        per_op[key] = (M, b)
    return per_op[key]


def shape_text(shape: tuple[int, ...]) -> str:
    return "×".join(str(int(s)) for s in shape) if len(shape) else "scalar"


def range_text(a: np.ndarray) -> str:
    a = np.asarray(a)
    lo, hi = float(a.min()), float(a.max())
    return f"{lo:.4g}" if lo == hi else f"[{lo:.4g}, {hi:.4g}]"


def pool_text(op: Any) -> str:
    text = f"k{op.kernel[0]}×{op.kernel[1]} stride {op.stride[0]},{op.stride[1]}"
    if any(op.padding):
        text += " pad " + ",".join(map(str, op.padding))
    return text


def pool_index(op: Any, in_shape: tuple[int, ...]) -> np.ndarray:
    """``(C, Ho, Wo, kh*kw)`` flat indices into the ``(C, H, W)`` input of each pooling window; -1 marks padding."""
    c, h, w = in_shape
    flat = np.arange(c * h * w, dtype=np.int64).reshape(c, h, w)
    top, left, bottom, right = op.padding
    flat = np.pad(flat, ((0, 0), (top, bottom), (left, right)), constant_values=-1)
    win = np.lib.stride_tricks.sliding_window_view(flat, op.kernel, axis=(1, 2))
    win = win[:, :: op.stride[0], :: op.stride[1]]
    return np.ascontiguousarray(win).reshape(*win.shape[:3], -1)
