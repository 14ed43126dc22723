"""ONNX -> intermediate graph: read a feed-forward ReLU classifier from an ONNX file as a :class:`Network`.

The importer walks the ONNX graph once in topological order. Every tensor is either a *constant* (an initializer,
a Constant node, or anything computed only from constants, which is folded with onnx's reference evaluator) or a
*data* tensor that depends on the one real input. Only data tensors become IR nodes. A symbolic batch axis is read
as 1 (a fixed one keeps its size), so shape arithmetic (``Shape -> Gather -> Concat -> Reshape`` chains) folds to
constants; every data tensor must keep the batch axis first, which is what lets the IR run each sample on its own.

After the walk, elementwise affine ops (normalisation, BatchNormalization, ``+ bias``) are folded into the Dense,
Conv or Scale op in front of them where that op's output has no other use, and a trailing Softmax, LogSoftmax,
Sigmoid or Tanh is stripped: each is monotone, so the top-k set of labels is unchanged. A Sigmoid or Tanh anywhere
else becomes an IR op of its own. ``Network.notes`` records all of it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Union

import numpy as np

from mlrobust.errors import ModelLoadError, UnsupportedOpError
from mlrobust.ir.graph import Network, Node
from mlrobust.ir.ops import Op
from mlrobust.ops import (
    Add,
    AvgPool2d,
    Concat,
    Conv2d,
    ConvTranspose2d,
    Dense,
    MaxPool2d,
    Pad,
    ReduceSum,
    Relu,
    Reshape,
    Scale,
    Sigmoid,
    Slice,
    Tanh,
    Transpose,
)

#: ONNX op types accepted on the data path (the path from the input to the output). Any op whose inputs are all
#: constants is evaluated at load time, whatever its type.
SUPPORTED_OPS: tuple[str, ...] = (
    "Add", "AveragePool", "BatchNormalization", "Cast", "Concat", "Constant", "Conv", "ConvTranspose", "Div",
    "Dropout", "Flatten", "Gemm", "GlobalAveragePool", "GlobalMaxPool", "Identity", "LogSoftmax", "MatMul", "MaxPool",
    "Mul", "Neg", "Pad", "ReduceMean", "ReduceSum", "Relu", "Reshape", "Shape", "Sigmoid", "Size", "Slice", "Softmax",
    "Split", "Squeeze", "Sub", "Tanh", "Transpose", "Unsqueeze",
)

#: Ops that turn scores into labels, masks or integers (a segmentation or classification "tail"). mlrobust verifies
#: the scores themselves, so such a node is refused with the tensor to cut the graph at (``--output``).
OUTPUT_TAIL_OPS = ("ArgMax", "ArgMin", "Equal", "Greater", "GreaterOrEqual", "Hardmax", "Less", "LessOrEqual",
                   "OneHot", "TopK")

#: Ops that may end the network and are stripped (monotone: the order of the outputs, hence the top-k, is kept).
STRIPPABLE_OPS = ("Softmax", "LogSoftmax", "Sigmoid", "Tanh")

#: Ops that may sit on the path from a stripped op to the output.
_TRAILING_OPS = ("Identity", "Dropout", "Cast", *STRIPPABLE_OPS)

#: Ops accepted on the data path of a rank-1 input (read as one sample with an implicit batch axis): those without
#: axis arguments, whose ONNX shapes are the IR's shapes without that axis.
RANK1_OPS = ("Add", "Cast", "Div", "Dropout", "Identity", "MatMul", "Mul", "Neg", "Relu", "Sigmoid", "Sub", "Tanh")

#: A Dense weight built for a MatMul over a multi-row tensor is materialised; refuse absurd sizes with a clear error.
MAX_DENSE_ENTRIES = 200_000_000

_FLOAT_TYPES = {1: "float32", 10: "float16", 11: "float64", 16: "bfloat16"}


@dataclass
class _Data:
    """A tensor that depends on the input: its IR tensor name and its full static shape (batch axis first)."""

    ir_name: str
    shape: tuple[int, ...]
    #: (op type, node name) of the Softmax/Sigmoid stripped to give this tensor; such a tensor may only be the output
    stripped_by: tuple[str, str] | None = None


def load_onnx(path_or_model: Union[str, os.PathLike, "onnx.ModelProto"],  # noqa: F821
              output: str | None = None) -> Network:
    """Load an ONNX classifier as a :class:`Network`.

    ``path_or_model`` is a path to an ``.onnx`` file or an ``onnx.ModelProto``. ``output`` names the tensor (or the
    node, for its first output) to use as the network's output instead of the graph's own: the scores in front of
    a post-processing tail, say. Raises :class:`ModelLoadError`
    (file missing, not ONNX, several inputs/outputs, dynamic non-batch dimensions, ...) or
    :class:`UnsupportedOpError` (op type or attribute values the IR cannot represent).
    """
    import onnx

    if isinstance(path_or_model, onnx.ModelProto):
        model, source = path_or_model, ""
    else:
        model, source = _read_model(path_or_model), str(path_or_model)
    where = f"{source}: " if source else ""
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx raises ValidationError / C++ errors with useful first lines
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"{where}not a valid ONNX model: {first}") from None
    network = _Importer(model, where, output).run()
    network.source = source
    return network


def _read_model(path: Union[str, os.PathLike]) -> "onnx.ModelProto":  # noqa: F821
    import onnx
    from google.protobuf.message import DecodeError

    p = Path(path)
    if not p.exists():
        raise ModelLoadError(f"model file {str(p)!r} does not exist")
    if not p.is_file():
        raise ModelLoadError(f"model path {str(p)!r} is not a file")
    try:
        model = onnx.load(str(p))
    except DecodeError:
        raise ModelLoadError(f"{p} is not an ONNX model (the file cannot be decoded as an ONNX protobuf)") from None
    except Exception as exc:  # e.g. missing external-data files, unreadable file
        raise ModelLoadError(f"cannot read ONNX model {p}: {exc}") from None
    if not model.HasField("graph"):  # e.g. an empty file, which decodes as an empty protobuf
        raise ModelLoadError(f"{p} is not an ONNX model (it holds no graph)")
    return model


def _attrs(node) -> dict:
    from onnx import helper

    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


def _node_label(node, index: int) -> str:
    return node.name or f"{node.op_type}_{index}"


def _pads_2d(pads: list[int] | None, node_name: str, op_type: str) -> tuple[int, int, int, int]:
    if pads is None:
        return (0, 0, 0, 0)
    if len(pads) != 4:
        raise UnsupportedOpError(op_type, node_name, SUPPORTED_OPS, f"pads={list(pads)} (expected 4 values for 2-D)")
    if any(p < 0 for p in pads):
        raise UnsupportedOpError(op_type, node_name, SUPPORTED_OPS, f"negative pads={list(pads)}")
    # ONNX order: (x1_begin, x2_begin, x1_end, x2_end) = (top, left, bottom, right), the IR's own order.
    return (int(pads[0]), int(pads[1]), int(pads[2]), int(pads[3]))


def _positive(node_name: str, op_type: str, **params: tuple[int, ...]) -> None:
    for key, values in params.items():
        if any(v < 1 for v in values):
            raise UnsupportedOpError(op_type, node_name, SUPPORTED_OPS, f"{key}={list(values)} (must be >= 1)")


def _auto_pads(auto_pad: str, hw: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int],
               dilation: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """Explicit pads for ``auto_pad`` (None for NOTSET: use the ``pads`` attribute)."""
    if auto_pad in ("", "NOTSET"):
        return None
    if auto_pad == "VALID":
        return (0, 0, 0, 0)
    begins, ends = [], []
    for size, k, s, d in zip(hw, kernel, stride, dilation):
        out = -(-size // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
        small = total // 2
        begin = small if auto_pad == "SAME_UPPER" else total - small
        begins.append(begin)
        ends.append(total - begin)
    return (begins[0], begins[1], ends[0], ends[1])


class _Importer:
    """One pass over an ONNX graph, building IR nodes; see the module docstring."""

    def __init__(self, model, where: str, output: str | None = None):
        self.model = model
        self.output_override = output
        self.implicit_batch = False
        self.graph = model.graph
        self.where = where
        self.opsets = {o.domain or "": o.version for o in model.opset_import}
        self.opset = self.opsets.get("", self.opsets.get("ai.onnx", 1))
        self.consts: dict[str, np.ndarray] = {}
        self.data: dict[str, _Data] = {}
        self.nodes: list[Node] = []
        self.origin: dict[str, str] = {}  # IR node name -> "OpType 'onnx name'" it came from
        self.notes: list[str] = []
        self._names: set[str] = set()  # IR node names given so far (ONNX node names need not be unique or set)
        self.inferred: dict[str, tuple[int, ...]] = {}
        self.untrusted: set[str] = set()  # tensors whose inferred shapes are no reference (see check_shape)
        self.removed: list[str] = []  # no-op nodes on the data path (Identity, Dropout, Cast, no-op reshapes)
        self.folded: dict[str, int] = {}  # op type -> number of constant-only nodes evaluated at load time

    # --- errors ----------------------------------------------------------------------------------------------
    def fail(self, msg: str) -> ModelLoadError:
        return ModelLoadError(self.where + msg)

    def unsupported(self, node, label: str, detail: str = "") -> UnsupportedOpError:
        op_type = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        return UnsupportedOpError(op_type, label, SUPPORTED_OPS, detail)

    # --- set-up ----------------------------------------------------------------------------------------------
    def run(self) -> Network:
        from onnx import numpy_helper

        g = self.graph
        for init in g.initializer:
            self.consts[init.name] = numpy_helper.to_array(init)
        if len(g.sparse_initializer):
            raise self.fail("sparse initializers are not supported; store the weights densely")
        real_inputs = [i for i in g.input if i.name not in self.consts]
        if len(real_inputs) != 1:
            names = ", ".join(repr(i.name) for i in real_inputs) or "none"
            raise self.fail(f"the model must have exactly one input that is not an initializer; it has "
                            f"{len(real_inputs)} ({names})")
        output = self._output_tensor()
        inp = real_inputs[0]
        full_shape = self._input_shape(inp)
        # A rank-1 input (n,) has no batch axis: it is read as one sample (1, n), and every data tensor carries that
        # implicit axis; only ops without axis arguments may follow (RANK1_OPS).
        self.implicit_batch = len(full_shape) == 1
        if self.implicit_batch:
            full_shape = (1, *full_shape)
            self.notes.append(f"rank-1 input {inp.name!r} of shape ({full_shape[1]},) read as one sample "
                              f"(1, {full_shape[1]})")
        # Shapes are computed at the model's own batch size (its fixed one, or 1 for a symbolic batch axis); the
        # Network itself is per sample, and records the input shape with a batch of 1.
        self.batch = full_shape[0]
        input_shape = (1, *full_shape[1:])
        self.input_name = inp.name
        self.data[inp.name] = _Data(inp.name, full_shape)
        self._infer_shapes(inp.name)

        live = self._live_nodes(output)
        self.output = output
        self.live = [n for _, n in live]
        handlers = self._handlers()
        for index, node in live:
            label = self._unique(_node_label(node, index))
            inputs = [t for t in node.input if t]
            data_in = [t for t in inputs if t in self.data]
            missing = [t for t in inputs if t not in self.data and t not in self.consts]
            if missing:
                raise self.fail(f"node {label!r} ({node.op_type}) reads {missing}, which no node produces")
            if not data_in or node.op_type in ("Shape", "Size"):
                if data_in:
                    self.shape(node, label)
                else:
                    self._fold(node, label)
                self.folded[node.op_type] = self.folded.get(node.op_type, 0) + 1
                continue
            if node.domain in ("", "ai.onnx") and (node.op_type in OUTPUT_TAIL_OPS or (
                    node.op_type == "Cast" and _attrs(node).get("to") not in _FLOAT_TYPES)):
                raise self.output_tail(node, label, data_in[0])
            for t in data_in:
                stripped = self.data[t].stripped_by
                if stripped and node.op_type not in _TRAILING_OPS:
                    raise UnsupportedOpError(
                        stripped[0], stripped[1], SUPPORTED_OPS,
                        f"only supported as the last op of the network, but its output feeds {node.op_type} {label!r}")
            handler = handlers.get(node.op_type) if node.domain in ("", "ai.onnx") else None
            if self.implicit_batch and node.op_type not in RANK1_OPS:
                raise self.unsupported(node, label, "on a rank-1 input (no batch axis) only "
                                       f"{', '.join(RANK1_OPS)} are supported")
            if handler is None:
                raise self.unsupported(node, label, "the intermediate graph has no equivalent on the data path")
            try:
                handler(node, label)
            except (KeyError, IndexError, ValueError, TypeError, ZeroDivisionError) as exc:  # malformed attributes
                raise self.fail(f"node {label!r} ({node.op_type}) cannot be imported: {type(exc).__name__}: {exc}") \
                    from None

        if output not in self.data:
            raise self.fail(f"the output {output!r} does not depend on the input {self.input_name!r}")
        out = self.data[output]
        if self.removed:
            self.notes.append(f"removed {len(self.removed)} no-op node(s): {', '.join(self.removed)}")
        if self.folded:
            kinds = ", ".join(f"{k}×{v}" if v > 1 else k for k, v in sorted(self.folded.items()))
            self.notes.append(f"evaluated {sum(self.folded.values())} constant-only node(s) at load time ({kinds})")
        if out.stripped_by:
            op_type, name = out.stripped_by
            self.notes.append(f"stripped trailing {op_type} {name!r} (monotone, so the top-k labels are unchanged)")
        output_ir = _fuse(self.nodes, out.ir_name, self.origin, self.notes)
        return Network(input_name=self.input_name, input_shape=input_shape, nodes=self.nodes,
                       output_name=output_ir, notes=self.notes)

    def _output_tensor(self) -> str:
        """The tensor verified: the graph's one output, or the tensor/node named by ``output``."""
        g = self.graph
        name = self.output_override
        if name is None:
            if len(g.output) != 1:
                names = ", ".join(repr(o.name) for o in g.output)
                raise self.fail(f"the model must have exactly one output; it has {len(g.output)} ({names}); "
                                "name the one to verify with --output")
            return g.output[0].name
        produced = {t for n in g.node for t in n.output if t}
        if name in produced:
            return name
        by_node = [n for n in g.node if n.name == name and n.output and n.output[0]]
        if by_node:
            return by_node[0].output[0]
        raise self.fail(f"--output {name!r} names no tensor and no node of the graph")

    def output_tail(self, node, label: str, data_in: str) -> UnsupportedOpError:
        """The error for a post-processing node: which tensor holds the scores to verify instead."""
        return self.unsupported(
            node, label, f"it turns the scores into labels, masks or integers, which is not piecewise linear; verify "
            f"the scores in front of it instead: cut the graph at tensor {data_in!r} (--output {data_in})")

    def _input_shape(self, inp) -> tuple[int, ...]:
        ttype = inp.type.tensor_type
        if not inp.type.HasField("tensor_type"):
            raise self.fail(f"the input {inp.name!r} is not a tensor")
        if ttype.elem_type not in _FLOAT_TYPES:
            raise self.fail(f"the input {inp.name!r} has element type {ttype.elem_type}; a float tensor is expected")
        if not ttype.HasField("shape") or len(ttype.shape.dim) == 0:
            raise self.fail(f"the input {inp.name!r} has no static shape; mlrobust needs (N, ...) with a batch axis")
        if len(ttype.shape.dim) == 1:  # a rank-1 input is one sample; its only axis must be fixed
            d = ttype.shape.dim[0]
            if not (d.HasField("dim_value") and d.dim_value > 0):
                raise self.fail(f"the rank-1 input {inp.name!r} has a dynamic size; export it with a fixed size")
            return (int(d.dim_value),)
        dims = []
        for axis, d in enumerate(ttype.shape.dim):
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(int(d.dim_value))
            elif axis == 0:
                self.notes.append(f"dynamic batch axis {d.dim_param or '?'!r} of input {inp.name!r} read as 1")
                dims.append(1)
            else:
                name = d.dim_param or "unknown"
                raise self.fail(f"the input {inp.name!r} has a dynamic dimension {name!r} at axis {axis}; only the "
                                f"batch axis (0) may be dynamic. Export the model with a fixed input size.")
        if dims[0] != 1:
            self.notes.append(f"batch axis of input {inp.name!r} fixed to {dims[0]}; each sample runs on its own")
        return tuple(dims)

    def _infer_shapes(self, input_name: str) -> None:
        """ONNX shape inference with a symbolic batch read as 1, kept only as a cross-check of the shapes computed here."""
        import onnx

        model = onnx.ModelProto()
        model.CopyFrom(self.model)
        for i in model.graph.input:
            # a rank-1 input has no batch axis: its only axis is a fixed size already
            if i.name == input_name and i.type.tensor_type.HasField("shape") and not self.implicit_batch:
                d0 = i.type.tensor_type.shape.dim[0]
                d0.Clear()
                d0.dim_value = self.batch
        try:
            inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
        except Exception:  # inference is a cross-check only; models it cannot handle still load
            return
        for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
            t = vi.type.tensor_type
            if t.HasField("shape") and all(d.HasField("dim_value") for d in t.shape.dim):
                self.inferred[vi.name] = tuple(int(d.dim_value) for d in t.shape.dim)

    def _live_nodes(self, output: str) -> list:
        """Nodes the output depends on, in graph order (dead branches are ignored, whatever their ops)."""
        producers = {}
        for i, node in enumerate(self.graph.node):
            for t in node.output:
                if t:
                    producers[t] = i
        needed, stack = set(), [output]
        while stack:
            t = stack.pop()
            i = producers.get(t)
            if i is None or i in needed:
                continue
            needed.add(i)
            stack.extend(x for x in self.graph.node[i].input if x)
            for attr in self.graph.node[i].attribute:  # subgraphs (If/Loop) read outer tensors implicitly
                if attr.g.node or attr.graphs:
                    raise self.unsupported(self.graph.node[i], _node_label(self.graph.node[i], i), "control flow")
        return [(i, self.graph.node[i]) for i in sorted(needed)]

    def _unique(self, name: str) -> str:
        base, k = name, 1
        while name in self._names:
            k += 1
            name = f"{base}_{k}"
        self._names.add(name)
        return name

    # --- constants ---------------------------------------------------------------------------------------------
    def _fold(self, node, label: str) -> None:
        """Evaluate a node whose inputs are all constants with onnx's reference implementation."""
        from onnx import helper
        from onnx.reference import ReferenceEvaluator

        ins = [helper.make_tensor_value_info(t, 1, None) for t in node.input if t]
        outs = [helper.make_tensor_value_info(t, 1, None) for t in node.output if t]
        graph = helper.make_graph([node], "fold", ins, outs)
        model = helper.make_model(graph, opset_imports=list(self.model.opset_import))
        model.ir_version = self.model.ir_version
        try:
            values = ReferenceEvaluator(model).run(None, {t: self.consts[t] for t in node.input if t})
        except Exception as exc:
            raise self.fail(f"cannot evaluate constant node {label!r} ({node.op_type}): {exc}") from None
        for name, value in zip([t for t in node.output if t], values):
            self.consts[name] = np.asarray(value)

    def const(self, node, label: str, index: int, what: str) -> np.ndarray:
        if index >= len(node.input) or not node.input[index]:
            raise self.unsupported(node, label, f"missing {what}")
        name = node.input[index]
        if name not in self.consts:
            raise self.unsupported(node, label, f"its {what} {name!r} depends on the input; it must be a constant")
        return self.consts[name]

    # --- emitting IR nodes -------------------------------------------------------------------------------------
    def emit(self, node, label: str, op: Op, inputs: list[str], shape: tuple[int, ...], out: str | None = None) -> None:
        """Append an IR node computing ``node``'s output ``out`` (its first by default) from data tensors."""
        out = node.output[0] if out is None else out
        self.check_shape(node, label, out, shape)
        self.nodes.append(Node(name=label, op=op, inputs=tuple(self.data[t].ir_name for t in inputs), output=out,
                               out_shape=tuple(shape[1:])))
        self.origin[label] = f"{node.op_type} {label!r}"
        self.data[out] = _Data(out, tuple(shape))

    def alias(self, node, label: str, src: str, stripped_by: tuple[str, str] | None = None) -> None:
        """Let the node's output name the same IR tensor as ``src`` (no-op nodes and stripped trailing ops)."""
        if stripped_by is None:
            self.removed.append(f"{node.op_type} {label!r}")
        if src in self.untrusted:
            self.untrusted.add(node.output[0])
        d = self.data[src]
        self.data[node.output[0]] = _Data(d.ir_name, d.shape, stripped_by or d.stripped_by)

    def check_shape(self, node, label: str, out: str, shape: tuple[int, ...]) -> None:
        if len(shape) == 0 or shape[0] != self.batch:
            raise self.unsupported(node, label, f"its output shape {tuple(shape)} does not keep the batch axis first")
        if any(s <= 0 for s in shape):
            raise self.unsupported(node, label, f"empty output of shape {tuple(shape)}")
        # ONNX shape inference before opset 22 keeps a ceil_mode pooling window that starts in the end padding,
        # which onnxruntime and torch drop; from such a pool on, its shapes are not a reference any more.
        if any(t in self.untrusted for t in node.input) or (node.op_type.endswith("Pool") and
                                                               _attrs(node).get("ceil_mode", 0)):
            self.untrusted.add(out)
            return
        known = self.inferred.get(out)
        if known is not None and self.implicit_batch and known == tuple(shape[1:]):
            return  # ONNX's shape of a tensor of a rank-1 input has no batch axis
        if known is not None and known != tuple(shape):
            raise self.fail(f"node {label!r} ({node.op_type}): computed output shape {tuple(shape)} differs from "
                            f"ONNX shape inference {known}")

    def data_input(self, node, label: str) -> tuple[str, _Data]:
        names = [t for t in node.input if t in self.data]
        if len(names) != 1 or node.input[0] != names[0]:
            raise self.unsupported(node, label, "only its first input may depend on the network input")
        return names[0], self.data[names[0]]

    def single_output(self, node, label: str) -> None:
        used = {t for n in self.graph.node for t in n.input} | {o.name for o in self.graph.output}
        extra = [t for t in node.output[1:] if t and t in used]
        if extra:
            raise self.unsupported(node, label, f"its extra outputs {extra} are used")

    # --- handlers ------------------------------------------------------------------------------------------------
    def _handlers(self) -> dict[str, Callable]:
        return {
            "Relu": self.relu, "Conv": self.conv, "Gemm": self.gemm, "MatMul": self.matmul,
            "MaxPool": self.pool, "AveragePool": self.pool, "GlobalAveragePool": self.global_pool,
            "GlobalMaxPool": self.global_pool, "Flatten": self.flatten, "Reshape": self.reshape,
            "Squeeze": self.squeeze, "Unsqueeze": self.squeeze, "Transpose": self.transpose,
            "Add": self.binary, "Sub": self.binary, "Mul": self.binary, "Div": self.binary, "Neg": self.neg,
            "BatchNormalization": self.batchnorm, "Identity": self.identity, "Dropout": self.identity,
            "Cast": self.identity, "Softmax": self.strip, "LogSoftmax": self.strip, "Sigmoid": self.smooth,
            "Tanh": self.smooth,
            "Pad": self.pad, "Concat": self.concat, "Slice": self.slice, "Split": self.split,
            "ReduceSum": self.reduce, "ReduceMean": self.reduce, "ConvTranspose": self.conv_transpose,
        }

    def relu(self, node, label):
        name, d = self.data_input(node, label)
        self.emit(node, label, Relu(), [name], d.shape)

    def identity(self, node, label):
        name, d = self.data_input(node, label)
        if node.op_type == "Cast" and _attrs(node).get("to") not in _FLOAT_TYPES:
            raise self.unsupported(node, label, f"cast of a data tensor to non-float type {_attrs(node).get('to')}")
        if node.op_type == "Dropout":
            self.single_output(node, label)
            if len(node.input) > 2 and node.input[2]:
                if node.input[2] not in self.consts or bool(np.asarray(self.consts[node.input[2]]).item()):
                    raise self.unsupported(node, label, "training_mode must be a constant False")
        self.alias(node, label, name)

    def shape(self, node, label):
        d = self.data[node.input[0]]
        if node.op_type == "Size":
            self.consts[node.output[0]] = np.array(int(np.prod(d.shape)), dtype=np.int64)
            return
        a = _attrs(node)
        rank = len(d.shape)
        start, end = a.get("start", 0), a.get("end", rank)
        self.consts[node.output[0]] = np.array(d.shape, dtype=np.int64)[slice(start, end)]

    def strip(self, node, label):
        name, d = self.data_input(node, label)
        if node.op_type in ("Softmax", "LogSoftmax"):
            rank = len(d.shape)
            default = -1 if self.opset >= 13 else 1
            axis = _attrs(node).get("axis", default)
            axis = axis + rank if axis < 0 else axis
            covered = d.shape[axis:] if self.opset < 13 else d.shape[axis:axis + 1]
            if axis == 0 or int(np.prod(covered)) != int(np.prod(d.shape[1:])):
                raise self.unsupported(node, label, f"axis={axis} does not normalise over all outputs of the "
                                       f"sample (shape {d.shape}), so it may change the top-k labels")
        self.alias(node, label, name, stripped_by=(node.op_type, label))

    def _trailing(self, tensor: str) -> bool:
        """True when ``tensor`` reaches the output only through no-op and strippable (monotone) nodes."""
        if tensor == self.output:
            return True
        users = [n for n in self.live if tensor in n.input]
        return bool(users) and all(n.op_type in _TRAILING_OPS and self._trailing(n.output[0]) for n in users)

    def smooth(self, node, label):
        """Sigmoid/Tanh: stripped at the end of the network (monotone), an IR activation anywhere else."""
        if self._trailing(node.output[0]):
            self.strip(node, label)
            return
        name, d = self.data_input(node, label)
        if d.stripped_by:  # a monotone op before it was only stripped because it seemed to end the network
            raise UnsupportedOpError(d.stripped_by[0], d.stripped_by[1], SUPPORTED_OPS,
                                     f"only supported as the last op of the network, but its output feeds "
                                     f"{node.op_type} {label!r}")
        self.emit(node, label, Sigmoid() if node.op_type == "Sigmoid" else Tanh(), [name], d.shape)

    def conv(self, node, label):
        name, d = self.data_input(node, label)
        a = _attrs(node)
        if len(d.shape) != 4:
            raise self.unsupported(node, label, f"only 2-D convolutions are supported (input shape {d.shape})")
        w = self.const(node, label, 1, "weight").astype(np.float64)
        c_out = w.shape[0]
        b = (self.const(node, label, 2, "bias").astype(np.float64) if len(node.input) > 2 and node.input[2]
             else np.zeros(c_out))
        groups = int(a.get("group", 1))
        kernel = (int(w.shape[2]), int(w.shape[3]))
        if "kernel_shape" in a and tuple(a["kernel_shape"]) != kernel:
            raise self.unsupported(node, label, f"kernel_shape={a['kernel_shape']} differs from the weight {w.shape}")
        if d.shape[1] != w.shape[1] * groups or c_out % groups:
            raise self.fail(f"node {label!r} (Conv): weight {w.shape} with group={groups} does not fit input {d.shape}")
        stride = tuple(int(s) for s in a.get("strides", (1, 1)))
        dilation = tuple(int(s) for s in a.get("dilations", (1, 1)))
        if len(stride) != 2 or len(dilation) != 2:
            raise self.unsupported(node, label, f"strides={list(stride)}, dilations={list(dilation)} (2-D expected)")
        _positive(label, "Conv", strides=stride, dilations=dilation)
        pads = _auto_pads(a.get("auto_pad", "NOTSET"), d.shape[2:], kernel, stride, dilation)
        if pads is None:
            pads = _pads_2d(a.get("pads"), label, "Conv")
        op = Conv2d(weight=w, bias=b.reshape(c_out), stride=stride, padding=pads, dilation=dilation, groups=groups)
        ho, wo = op.output_hw(*d.shape[2:])
        self.emit(node, label, op, [name], (self.batch, c_out, ho, wo))

    def gemm(self, node, label):
        a = _attrs(node)
        if node.input[0] not in self.data:
            raise self.unsupported(node, label, "the data tensor must be the first operand A (the batch axis of B "
                                   "would be contracted)")
        name, d = self.data_input(node, label)
        if a.get("transA", 0):
            raise self.unsupported(node, label, "transA=1 on the data operand would contract the batch axis")
        if len(d.shape) != 2:
            raise self.fail(f"node {label!r} (Gemm): input shape {d.shape} is not 2-D")
        bmat = self.const(node, label, 1, "weight B").astype(np.float64)
        if a.get("transB", 0):
            bmat = bmat.T
        alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
        k, m = bmat.shape
        if d.shape[1] != k:
            raise self.fail(f"node {label!r} (Gemm): input {d.shape} does not fit the weight of shape {bmat.shape}")
        bias = np.zeros(m)
        if len(node.input) > 2 and node.input[2]:
            c = self.const(node, label, 2, "bias C").astype(np.float64)
            if c.ndim > 2 or (c.ndim == 2 and c.shape[0] != 1):
                raise self.unsupported(node, label, f"bias C of shape {c.shape} varies along the batch axis")
            try:
                bias = beta * np.broadcast_to(c.reshape(-1) if c.ndim else c, (m,))
            except ValueError:
                raise self.unsupported(node, label, f"bias C of shape {c.shape} does not broadcast to ({m},)") from None
        self.emit(node, label, Dense(weight=alpha * bmat.T, bias=np.array(bias, dtype=np.float64)), [name],
                  (self.batch, m))

    def matmul(self, node, label):
        if node.input[0] in self.data and node.input[1] in self.data:
            raise self.unsupported(node, label, "a product of two tensors that depend on the input is not linear")
        data_first = node.input[0] in self.data
        name = node.input[0] if data_first else node.input[1]
        d = self.data[name]
        w = self.const(node, label, 1 if data_first else 0, "weight").astype(np.float64)
        # A weight with leading unit axes broadcasts over the sample like a plain matrix.
        while w.ndim > 2 and w.shape[0] == 1:
            w = w[0]
        if w.ndim != 2:
            raise self.unsupported(node, label, f"weight of shape {w.shape} (only 2-D weights are supported)")
        x = d.shape
        if data_first:
            k, m = w.shape
            if len(x) < 2 or x[-1] != k:
                raise self.fail(f"node {label!r} (MatMul): input {x} does not fit the weight {w.shape}")
            rows = int(np.prod(x[1:-1], dtype=np.int64))
            out = (*x[:-1], m)
            self._check_dense_size(node, label, rows * m, rows * k)
            # y[r, j] = sum_l x[r, l] W[l, j] on the flattened sample: block diagonal of W^T.
            weight = np.kron(np.eye(rows), w.T) if rows > 1 else w.T.copy()
        elif self.implicit_batch and len(x) == 2:  # W @ x of a rank-1 x is x @ Wᵀ
            m, k = w.shape
            if x[-1] != k:
                raise self.fail(f"node {label!r} (MatMul): input {x[1:]} does not fit the weight {w.shape}")
            out = (1, m)
            weight = w.copy()
        else:
            m, k = w.shape
            if len(x) < 3 or x[-2] != k:
                raise self.unsupported(node, label, f"weight-first MatMul needs a data tensor of shape (N, ..., {k}, n)"
                                       f"; got {x} (it would contract the batch axis)")
            outer = int(np.prod(x[1:-2], dtype=np.int64))
            n = x[-1]
            out = (*x[:-2], m, n)
            self._check_dense_size(node, label, outer * m * n, outer * k * n)
            # y[b, i, j] = sum_l W[i, l] x[b, l, j]: I_outer (x) W (x) I_n on the flattened sample.
            weight = np.kron(np.kron(np.eye(outer), w), np.eye(n))
        self.emit(node, label, Dense(weight=weight, bias=np.zeros(weight.shape[0])), [name], tuple(out))

    def _check_dense_size(self, node, label, rows: int, cols: int) -> None:
        if rows * cols > MAX_DENSE_ENTRIES:
            raise self.unsupported(node, label, f"its equivalent dense weight would have {rows}x{cols} entries")

    def _per_sample(self, node, label, c: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """A constant operand of an elementwise op, as an array broadcastable to the per-sample shape."""
        c = np.asarray(c, dtype=np.float64)
        if c.ndim > len(shape):
            raise self.unsupported(node, label, f"constant of shape {c.shape} broadcasts the data {shape} to a "
                                   "higher rank")
        full = c.reshape((1,) * (len(shape) - c.ndim) + c.shape)
        try:
            result = np.broadcast_shapes(full.shape, shape)
        except ValueError:
            raise self.fail(f"node {label!r} ({node.op_type}): constant {c.shape} does not broadcast with {shape}") from None
        if result != tuple(shape):
            raise self.unsupported(node, label, f"constant of shape {c.shape} enlarges the data tensor {shape}")
        if full.shape[0] != 1:
            raise self.unsupported(node, label, f"constant of shape {c.shape} varies along the batch axis")
        return full[0]

    def binary(self, node, label):
        op_type = node.op_type
        x_in, y_in = node.input[0], node.input[1]
        if x_in in self.data and y_in in self.data:
            dx, dy = self.data[x_in], self.data[y_in]
            if op_type in ("Mul", "Div"):
                raise self.unsupported(node, label, "a product or quotient of two tensors that depend on the input "
                                       "is not piecewise linear")
            if dx.shape != dy.shape:
                raise self.unsupported(node, label, f"broadcasting between data tensors {dx.shape} and {dy.shape}")
            self.emit(node, label, Add(coeff=1.0 if op_type == "Add" else -1.0), [x_in, y_in], dx.shape)
            return
        data_first = x_in in self.data
        name, cname = (x_in, y_in) if data_first else (y_in, x_in)
        d = self.data[name]
        c = self._per_sample(node, label, self.consts[cname], d.shape)
        one, zero = np.ones(()), np.zeros(())
        if op_type == "Add":
            mul, add = one, c
        elif op_type == "Sub":
            mul, add = (one, -c) if data_first else (-one, c)
        elif op_type == "Mul":
            mul, add = c, zero
        else:  # Div
            if not data_first:
                raise self.unsupported(node, label, "division by a tensor that depends on the input")
            if np.any(c == 0):
                raise self.unsupported(node, label, "division by a constant that contains zeros")
            mul, add = 1.0 / c, zero
        self.emit(node, label, Scale(mul=np.asarray(mul, dtype=np.float64), add=np.asarray(add, dtype=np.float64)),
                  [name], d.shape)

    def neg(self, node, label):
        name, d = self.data_input(node, label)
        self.emit(node, label, Scale(mul=-np.ones(()), add=np.zeros(())), [name], d.shape)

    def batchnorm(self, node, label):
        name, d = self.data_input(node, label)
        a = _attrs(node)
        self.single_output(node, label)
        if a.get("training_mode", 0) or a.get("is_test", 1) == 0:
            raise self.unsupported(node, label, "training_mode=1 (export the model in eval mode)")
        if len(d.shape) < 2:
            raise self.fail(f"node {label!r} (BatchNormalization): input {d.shape} has no channel axis")
        scale, bias, mean, var = (self.const(node, label, i, w).astype(np.float64).reshape(-1)
                                  for i, w in enumerate(("scale", "B", "mean", "var"), start=1))
        eps = float(a.get("epsilon", 1e-5))
        mul = scale / np.sqrt(var + eps)
        add = bias - mean * mul
        channel = (d.shape[1],) + (1,) * (len(d.shape) - 2)
        self.emit(node, label, Scale(mul=mul.reshape(channel), add=add.reshape(channel)), [name], d.shape)

    def pool(self, node, label):
        name, d = self.data_input(node, label)
        self.single_output(node, label)
        a = _attrs(node)
        if len(d.shape) != 4:
            raise self.unsupported(node, label, f"only 2-D pooling is supported (input shape {d.shape})")
        kernel = tuple(int(k) for k in a["kernel_shape"])
        stride = tuple(int(s) for s in a.get("strides", (1, 1)))
        dilation = tuple(int(s) for s in a.get("dilations", (1, 1)))
        if len(kernel) != 2 or len(stride) != 2:
            raise self.unsupported(node, label, f"kernel_shape={list(kernel)}, strides={list(stride)} (2-D expected)")
        _positive(label, node.op_type, kernel_shape=kernel, strides=stride)
        if dilation != (1, 1):
            raise self.unsupported(node, label, f"dilations={list(dilation)} (only 1 is supported)")
        pads = _auto_pads(a.get("auto_pad", "NOTSET"), d.shape[2:], kernel, stride, (1, 1))
        if pads is None:
            pads = _pads_2d(a.get("pads"), label, node.op_type)
        is_max = node.op_type == "MaxPool"
        include_pad = bool(a.get("count_include_pad", 0))
        if a.get("ceil_mode", 0):
            pads = self._ceil_pads(node, label, d.shape[2:], kernel, stride, pads, not is_max and include_pad)
        op = (MaxPool2d(kernel=kernel, stride=stride, padding=pads) if is_max else
              AvgPool2d(kernel=kernel, stride=stride, padding=pads, count_include_pad=include_pad))
        ho, wo = op.output_hw(*d.shape[2:])
        self.emit(node, label, op, [name], (self.batch, d.shape[1], ho, wo))

    def _ceil_pads(self, node, label, hw, kernel, stride, pads, include_pad: bool) -> tuple[int, int, int, int]:
        """ceil_mode=1 as extra end padding that no window can take a value from (-inf for max, uncounted for avg).

        As in onnxruntime and torch, a last window that would start in the end padding is dropped.
        """
        extra = []
        for axis in range(2):
            size, k, s = hw[axis], kernel[axis], stride[axis]
            begin, end = pads[axis], pads[axis + 2]
            span = size + begin + end - k
            out = -(-span // s) + 1
            if (out - 1) * s >= size + begin:
                out -= 1
            extra.append(max(0, (out - 1) * s + k - (size + begin + end)))
        if any(extra) and include_pad:
            raise self.unsupported(node, label, "ceil_mode=1 with count_include_pad=1 where it changes the output size")
        return (pads[0], pads[1], pads[2] + extra[0], pads[3] + extra[1])

    def global_pool(self, node, label):
        name, d = self.data_input(node, label)
        if len(d.shape) != 4:
            raise self.unsupported(node, label, f"only 2-D pooling is supported (input shape {d.shape})")
        kernel = (d.shape[2], d.shape[3])
        op = (MaxPool2d(kernel=kernel, stride=(1, 1)) if node.op_type == "GlobalMaxPool"
              else AvgPool2d(kernel=kernel, stride=(1, 1)))
        self.emit(node, label, op, [name], (self.batch, d.shape[1], 1, 1))

    def _reshape_to(self, node, label, name: str, shape: tuple[int, ...]) -> None:
        d = self.data[name]
        shape = tuple(int(s) for s in shape)
        if int(np.prod(shape)) != int(np.prod(d.shape)):
            raise self.fail(f"node {label!r} ({node.op_type}): cannot reshape {d.shape} to {shape}")
        if shape[1:] == d.shape[1:] and shape[:1] == (self.batch,):
            self.check_shape(node, label, node.output[0], shape)
            self.alias(node, label, name)  # a no-op on the sample (e.g. Flatten of an already flat tensor)
            return
        self.emit(node, label, Reshape(shape=shape[1:]), [name], shape)

    def flatten(self, node, label):
        name, d = self.data_input(node, label)
        axis = int(_attrs(node).get("axis", 1))
        axis = axis + len(d.shape) if axis < 0 else axis
        self._reshape_to(node, label, name, (int(np.prod(d.shape[:axis])), int(np.prod(d.shape[axis:]))))

    def reshape(self, node, label):
        name, d = self.data_input(node, label)
        target = [int(s) for s in self.const(node, label, 1, "target shape").reshape(-1)]
        allowzero = int(_attrs(node).get("allowzero", 0))
        shape = []
        for i, s in enumerate(target):
            if s == 0 and not allowzero:
                if i >= len(d.shape):
                    raise self.fail(f"node {label!r} (Reshape): 0 at axis {i} copies a dimension the input {d.shape} "
                                    "lacks")
                s = d.shape[i]
            shape.append(s)
        if shape.count(-1) > 1:
            raise self.fail(f"node {label!r} (Reshape): target {target} has more than one -1")
        if -1 in shape:
            rest = int(np.prod([s for s in shape if s != -1]))
            total = int(np.prod(d.shape))
            if rest == 0 or total % rest:
                raise self.fail(f"node {label!r} (Reshape): cannot reshape {d.shape} to {target}")
            shape[shape.index(-1)] = total // rest
        self._reshape_to(node, label, name, tuple(shape))

    def squeeze(self, node, label):
        name, d = self.data_input(node, label)
        a = _attrs(node)
        if "axes" in a:
            axes = list(a["axes"])
        elif len(node.input) > 1 and node.input[1]:
            axes = [int(v) for v in self.const(node, label, 1, "axes").reshape(-1)]
        elif node.op_type == "Squeeze":
            raise self.unsupported(node, label, "Squeeze without axes would also remove the batch axis")
        else:
            raise self.fail(f"node {label!r} (Unsqueeze): no axes given")
        shape = list(d.shape)
        if node.op_type == "Squeeze":
            axes = sorted({ax + len(shape) if ax < 0 else ax for ax in axes})
            if 0 in axes or any(shape[ax] != 1 for ax in axes):
                raise self.unsupported(node, label, f"axes={axes} of a tensor of shape {d.shape} (the batch axis "
                                       "must stay and only size-1 axes can be squeezed)")
            shape = [s for i, s in enumerate(shape) if i not in axes]
        else:
            rank = len(shape) + len(axes)
            axes = sorted(ax + rank if ax < 0 else ax for ax in axes)
            if 0 in axes:
                raise self.unsupported(node, label, "Unsqueeze at axis 0 would move the batch axis")
            for ax in axes:
                shape.insert(ax, 1)
        self._reshape_to(node, label, name, tuple(shape))

    def transpose(self, node, label):
        name, d = self.data_input(node, label)
        perm = [int(p) for p in _attrs(node).get("perm", range(len(d.shape) - 1, -1, -1))]
        if sorted(perm) != list(range(len(d.shape))):
            raise self.fail(f"node {label!r} (Transpose): perm={perm} is not a permutation of the axes of {d.shape}")
        if perm[0] != 0:
            raise self.unsupported(node, label, f"perm={perm} moves the batch axis")
        shape = tuple(d.shape[p] for p in perm)
        moved = [p for p in perm if d.shape[p] != 1]
        if moved == sorted(moved):  # only size-1 axes move: the data keeps its order
            self._reshape_to(node, label, name, shape)
            return
        self.emit(node, label, Transpose(perm=tuple(p - 1 for p in perm[1:])), [name], shape)

    # --- exact index maps and reductions ------------------------------------------------------------------------
    def _sample_axis(self, node, label, axis: int, rank: int) -> int:
        """A per-sample axis (0 = the first axis after the batch) from an ONNX axis of a rank-``rank`` tensor."""
        axis = int(axis)
        full = axis + rank if axis < 0 else axis
        if not 0 <= full < rank:
            raise self.fail(f"node {label!r} ({node.op_type}): axis {axis} is out of range for rank {rank}")
        if full == 0:
            raise self.unsupported(node, label, "it acts along the batch axis")
        return full - 1

    def _optional_const(self, node, index: int) -> np.ndarray | None:
        if index < len(node.input) and node.input[index]:
            if node.input[index] not in self.consts:
                raise self.unsupported(node, _node_label(node, 0), f"its input {node.input[index]!r} depends on the "
                                       "network input; it must be a constant")
            return np.asarray(self.consts[node.input[index]])
        return None

    def pad(self, node, label):
        name, d = self.data_input(node, label)
        a = _attrs(node)
        mode = a.get("mode", "constant")
        if mode != "constant":
            raise self.unsupported(node, label, f"mode={mode!r} (only constant padding is supported)")
        rank = len(d.shape)
        if self.opset < 11:
            pads = [int(p) for p in a.get("pads", [])]
            value = float(a.get("value", 0.0))
            axes = list(range(rank))
        else:
            pads = [int(p) for p in self.const(node, label, 1, "pads").reshape(-1)]
            const = self._optional_const(node, 2)
            value = float(const.reshape(-1)[0]) if const is not None and const.size else 0.0
            axes_in = self._optional_const(node, 3)
            axes = ([int(v) + rank if int(v) < 0 else int(v) for v in axes_in.reshape(-1)] if axes_in is not None
                    else list(range(rank)))
        if len(pads) != 2 * len(axes):
            raise self.fail(f"node {label!r} (Pad): {len(pads)} pads for {len(axes)} axes")
        per_axis = {ax: (pads[i], pads[i + len(axes)]) for i, ax in enumerate(axes)}
        if per_axis.get(0, (0, 0)) != (0, 0):
            raise self.unsupported(node, label, f"pads={pads} pad the batch axis")
        op = Pad(pads=tuple(per_axis.get(ax, (0, 0)) for ax in range(1, rank)), value=value)
        shape = (d.shape[0], *op.out_shape_for([d.shape[1:]]))
        if all(p == (0, 0) for p in op.pads):
            self.alias(node, label, name)
            return
        self.emit(node, label, op, [name], shape)

    def concat(self, node, label):
        names = [t for t in node.input if t]
        consts = [t for t in names if t not in self.data]
        if consts:
            raise self.unsupported(node, label, f"it joins the constant {consts[0]!r} to data (only tensors that "
                                   "depend on the input can be joined)")
        shapes = [self.data[t].shape for t in names]
        rank = len(shapes[0])
        axis = self._sample_axis(node, label, _attrs(node)["axis"], rank)
        if any(len(sh) != rank or sh[:axis + 1] + sh[axis + 2:] != shapes[0][:axis + 1] + shapes[0][axis + 2:]
               for sh in shapes):
            raise self.fail(f"node {label!r} (Concat): shapes {shapes} do not match off axis {axis + 1}")
        if len(names) == 1:
            self.alias(node, label, names[0])
            return
        op = Concat(axis=axis)
        self.emit(node, label, op, names, (shapes[0][0], *op.out_shape_for([sh[1:] for sh in shapes])))

    def slice(self, node, label):
        name, d = self.data_input(node, label)
        rank = len(d.shape)
        if self.opset < 10:
            a = _attrs(node)
            starts, ends = list(a["starts"]), list(a["ends"])
            axes = list(a.get("axes", range(len(starts))))
            steps = [1] * len(starts)
        else:
            starts = [int(v) for v in self.const(node, label, 1, "starts").reshape(-1)]
            ends = [int(v) for v in self.const(node, label, 2, "ends").reshape(-1)]
            axes_in, steps_in = self._optional_const(node, 3), self._optional_const(node, 4)
            axes = [int(v) for v in axes_in.reshape(-1)] if axes_in is not None else list(range(len(starts)))
            steps = [int(v) for v in steps_in.reshape(-1)] if steps_in is not None else [1] * len(starts)
        if not len(starts) == len(ends) == len(axes) == len(steps):
            raise self.fail(f"node {label!r} (Slice): starts, ends, axes and steps differ in length")
        ranges = [(0, n, 1) for n in d.shape]
        for start, end, axis, step in zip(starts, ends, axes, steps):
            axis = axis + rank if axis < 0 else axis
            if step == 0:
                raise self.fail(f"node {label!r} (Slice): step 0")
            # Python's slice resolution clamps and wraps exactly as ONNX specifies for Slice
            ranges[axis] = slice(start, end, step).indices(d.shape[axis])
        if ranges[0] != (0, d.shape[0], 1):
            raise self.unsupported(node, label, "it slices the batch axis")
        op = Slice(ranges=tuple(tuple(int(v) for v in r) for r in ranges[1:]))
        shape = (d.shape[0], *op.out_shape_for([d.shape[1:]]))
        if shape == d.shape and all(r[2] == 1 for r in op.ranges):
            self.check_shape(node, label, node.output[0], shape)
            self.alias(node, label, name)
            return
        self.emit(node, label, op, [name], shape)

    def split(self, node, label):
        """Split as one Slice per output that is used (the IR's nodes have one output each)."""
        name, d = self.data_input(node, label)
        a = _attrs(node)
        rank = len(d.shape)
        axis = self._sample_axis(node, label, a.get("axis", 0), rank)
        size = d.shape[axis + 1]
        outs = list(node.output)
        if "split" in a:
            parts = [int(v) for v in a["split"]]
        elif (given := self._optional_const(node, 1)) is not None:
            parts = [int(v) for v in given.reshape(-1)]
        else:
            count = int(a.get("num_outputs", len(outs)))
            chunk = -(-size // count)  # ONNX: equal parts, the last one smaller when it does not divide
            parts = [min(chunk, size - i * chunk) for i in range(count)]
        if len(parts) != len(outs) or sum(parts) != size or min(parts) < 0:
            raise self.fail(f"node {label!r} (Split): parts {parts} do not split {size} into {len(outs)} outputs")
        used = {t for n in self.graph.node for t in n.input} | {o.name for o in self.graph.output}
        start = 0
        for i, (out, part) in enumerate(zip(outs, parts)):
            ranges = [(0, n, 1) for n in d.shape[1:]]
            ranges[axis] = (start, start + part, 1)
            start += part
            if not out or out not in used:
                continue
            shape = (d.shape[0], *(len(range(*r)) for r in ranges))
            self.emit(node, self._unique(f"{label}_{i}"), Slice(ranges=tuple(ranges)), [name], shape, out=out)

    def reduce(self, node, label):
        name, d = self.data_input(node, label)
        a = _attrs(node)
        rank = len(d.shape)
        if "axes" in a:
            axes_list = [int(v) for v in a["axes"]]
        else:
            given = self._optional_const(node, 1)
            axes_list = [int(v) for v in given.reshape(-1)] if given is not None else []
        if not axes_list:
            if a.get("noop_with_empty_axes", 0):
                self.alias(node, label, name)
                return
            raise self.unsupported(node, label, "no axes: it would reduce over the batch axis too")
        axes = tuple(sorted({self._sample_axis(node, label, ax, rank) for ax in axes_list}))
        keepdims = bool(a.get("keepdims", 1))
        count = int(np.prod([d.shape[ax + 1] for ax in axes]))
        op = ReduceSum(axes=axes, keepdims=keepdims, scale=1.0 if node.op_type == "ReduceSum" else 1.0 / count)
        shape = [1 if k - 1 in axes else n for k, n in enumerate(d.shape)]
        if not keepdims:
            shape = [n for k, n in enumerate(shape) if k - 1 not in axes]
        self.emit(node, label, op, [name], tuple(shape))

    def conv_transpose(self, node, label):
        name, d = self.data_input(node, label)
        a = _attrs(node)
        if len(d.shape) != 4:
            raise self.unsupported(node, label, f"only 2-D transposed convolutions are supported (input {d.shape})")
        w = self.const(node, label, 1, "weight").astype(np.float64)
        groups = int(a.get("group", 1))
        c_out = int(w.shape[1]) * groups
        b = (self.const(node, label, 2, "bias").astype(np.float64).reshape(c_out) if len(node.input) > 2 and
             node.input[2] else np.zeros(c_out))
        if d.shape[1] != w.shape[0] or w.shape[0] % groups:
            raise self.fail(f"node {label!r} (ConvTranspose): weight {w.shape} with group={groups} does not fit "
                            f"input {d.shape}")
        kernel = (int(w.shape[2]), int(w.shape[3]))
        stride = tuple(int(v) for v in a.get("strides", (1, 1)))
        dilation = tuple(int(v) for v in a.get("dilations", (1, 1)))
        out_pad = tuple(int(v) for v in a.get("output_padding", (0, 0)))
        if len(stride) != 2 or len(dilation) != 2 or len(out_pad) != 2:
            raise self.unsupported(node, label, "strides, dilations and output_padding must be 2-D")
        _positive(label, "ConvTranspose", strides=stride, dilations=dilation)
        auto_pad = a.get("auto_pad", "NOTSET")
        target = [int(v) for v in a["output_shape"]][-2:] if "output_shape" in a else None
        if target is None and auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            target = [d.shape[2] * stride[0], d.shape[3] * stride[1]]
        if target is not None:  # ONNX: pads follow from the requested output size
            begins, ends = [], []
            for i in range(2):
                total = (stride[i] * (d.shape[2 + i] - 1) + out_pad[i] + (kernel[i] - 1) * dilation[i] + 1
                         - target[i])
                if total < 0:
                    raise self.unsupported(node, label, f"output_shape {target} larger than the full output")
                small, large = total // 2, total - total // 2
                begin, end = (small, large) if auto_pad == "SAME_UPPER" else (large, small)
                begins.append(begin)
                ends.append(end)
            pads = (begins[0], begins[1], ends[0], ends[1])
        elif auto_pad == "VALID":
            pads = (0, 0, 0, 0)
        else:
            pads = _pads_2d(a.get("pads"), label, "ConvTranspose")
        op = ConvTranspose2d(weight=w, bias=b, stride=stride, padding=pads, output_padding=out_pad,
                             dilation=dilation, groups=groups)
        ho, wo = op.output_hw(*d.shape[2:])
        self.emit(node, label, op, [name], (d.shape[0], c_out, ho, wo))


# --- folding of elementwise affine ops into the op in front of them ----------------------------------------------
def _channel_vector(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
    """The per-channel vector of a Scale constant on a (C, H, W) tensor, or None if it varies over H or W."""
    a = np.asarray(a)
    a3 = a.reshape((1,) * (3 - a.ndim) + a.shape)
    if a3.shape[1] != 1 or a3.shape[2] != 1:
        full = np.broadcast_to(a3, shape)
        if not (np.all(full == full[:, :1, :1])):
            return None
        a3 = full[:, :1, :1]
    return np.broadcast_to(a3[:, 0, 0], (shape[0],)).astype(np.float64)


def _merge(prev: Node, scale: Scale) -> Op | None:
    """``scale ∘ prev.op`` as one op of prev's kind, or None when it is not representable."""
    op = prev.op
    shape = prev.out_shape
    if isinstance(op, Dense):
        m = np.broadcast_to(scale.mul, shape).reshape(-1)
        a = np.broadcast_to(scale.add, shape).reshape(-1)
        return Dense(weight=m[:, None] * op.weight, bias=m * op.bias + a)
    if isinstance(op, Conv2d):
        m, a = _channel_vector(scale.mul, shape), _channel_vector(scale.add, shape)
        if m is None or a is None:
            return None
        return Conv2d(weight=op.weight * m[:, None, None, None], bias=op.bias * m + a, stride=op.stride,
                      padding=op.padding, dilation=op.dilation, groups=op.groups)
    if isinstance(op, ConvTranspose2d) and op.groups == 1:
        m, a = _channel_vector(scale.mul, shape), _channel_vector(scale.add, shape)
        if m is None or a is None:
            return None
        return ConvTranspose2d(weight=op.weight * m[None, :, None, None], bias=op.bias * m + a, stride=op.stride,
                               padding=op.padding, output_padding=op.output_padding, dilation=op.dilation)
    if isinstance(op, Scale):
        return Scale(mul=np.asarray(op.mul * scale.mul, dtype=np.float64),
                     add=np.asarray(op.add * scale.mul + scale.add, dtype=np.float64))
    return None


def _fuse(nodes: list[Node], output: str, origin: dict[str, str], notes: list[str]) -> str:
    """Fold each Scale into the Dense/Conv/ConvTranspose/Scale in front of it when that op's output feeds nothing else.

    Works in place on ``nodes``; returns the (possibly renamed) output tensor.
    """
    i = 0
    while i < len(nodes):
        node = nodes[i]
        if node.kind != "Scale":
            i += 1
            continue
        src = node.inputs[0]
        prev = next((n for n in nodes[:i] if n.output == src), None)
        users = [n for n in nodes if src in n.inputs]
        merged = _merge(prev, node.op) if prev is not None and len(users) == 1 and src != output else None
        if merged is None:
            i += 1
            continue
        notes.append(f"folded {origin.get(node.name, node.name)} into {prev.kind} {prev.name!r}"
                     if prev.kind != "Scale" else
                     f"merged {origin.get(node.name, node.name)} into the Scale {prev.name!r}")
        prev.op = merged
        prev.output = node.output  # consumers of the Scale now read the merged op directly
        del nodes[i]
    return output
