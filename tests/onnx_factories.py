"""Builders of small ONNX models for the import tests: random torch networks (exported by torch's legacy and dynamo
exporters), hand-made graphs in the shapes found in the wild, and an onnxruntime reference that can read any
intermediate tensor."""

from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass, field

import numpy as np
import onnx
import torch
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from mlrobust.ir.graph import Network
from mlrobust.ir.torch_exec import to_torch

torch.set_num_threads(1)


# --- onnxruntime reference ----------------------------------------------------------------------------------------
def ort_run(model: onnx.ModelProto, x: np.ndarray, outputs: list[str] | None = None) -> dict[str, np.ndarray]:
    """Run ``model`` with onnxruntime on the batch ``x`` (float32) and return the requested tensors by name.

    ``outputs`` may name any intermediate tensor; they are added as graph outputs of a copy of the model. A model
    whose batch axis is fixed to 1 is run sample by sample.
    """
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    names = list(outputs) if outputs else [m.graph.output[0].name]
    existing = {o.name for o in m.graph.output}
    for name in names:
        if name not in existing:
            m.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # No graph optimisations: the reference is the plain ONNX semantics, and fused nodes could drop named tensors.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"])
    inits = {i.name for i in m.graph.initializer}
    input_name = next(i.name for i in m.graph.input if i.name not in inits)
    dim0 = m.graph.input[[i.name for i in m.graph.input].index(input_name)].type.tensor_type.shape.dim[0]
    x = np.asarray(x, dtype=np.float32)
    if dim0.HasField("dim_value") and dim0.dim_value > 0:  # a fixed batch size: run in chunks of it
        b, n = dim0.dim_value, x.shape[0]
        padded = np.concatenate([x, np.repeat(x[-1:], (-n) % b, axis=0)])
        runs = [session.run(names, {input_name: padded[i:i + b]}) for i in range(0, len(padded), b)]
        return {name: np.concatenate([r[j] for r in runs])[:n] for j, name in enumerate(names)}
    return dict(zip(names, session.run(names, {input_name: x})))


#: The bar: the IR (float64 numpy, float32 torch) equals onnxruntime (float32) within 1e-5, absolute.
ATOL = 1e-5


def apply_head(name: str, z: np.ndarray) -> np.ndarray:
    """The stripped trailing op applied to the IR output (numpy, float64)."""
    if name == "sigmoid":
        return 1.0 / (1.0 + np.exp(-z))
    if name in ("softmax", "logsoftmax"):
        s = z - z.max(axis=1, keepdims=True)
        log = s - np.log(np.exp(s).sum(axis=1, keepdims=True))
        return log if name == "logsoftmax" else np.exp(log)
    return z


def assert_equivalent(model: onnx.ModelProto, net: Network, x: np.ndarray, head: str = "none") -> None:
    """Every IR tensor (each is named after an ONNX tensor) equals onnxruntime's value within ``ATOL``; the torch
    executor's output too; and the model's own output equals the IR output with the stripped head applied."""
    x = x.astype(np.float32)
    tensors = [t for t in net.tensors if t != net.input_name]
    model_out = model.graph.output[0].name
    ref = ort_run(model, x, outputs=list(dict.fromkeys(tensors + [model_out])))
    ours = net.forward(x, return_all=True)
    for t in tensors:
        assert ref[t].size == ours[t].size, f"tensor {t}: size {ours[t].shape} vs onnxruntime {ref[t].shape}"
        np.testing.assert_allclose(ours[t], ref[t].reshape(ours[t].shape), rtol=0, atol=ATOL, err_msg=f"tensor {t}")
    out = ours[net.output_name]
    with torch.no_grad():
        out_torch = to_torch(net)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out_torch, ref[net.output_name].reshape(out.shape), rtol=0, atol=ATOL,
                               err_msg="torch executor")
    final = apply_head(head, out.reshape(out.shape[0], -1))
    np.testing.assert_allclose(final, ref[model_out].reshape(final.shape), rtol=0, atol=ATOL, err_msg="model output")


# --- torch exports --------------------------------------------------------------------------------------------------
def export_legacy(module: torch.nn.Module, sample_shape: tuple[int, ...], *, dynamic_batch: bool = False,
                  constant_folding: bool = True, opset: int = 17) -> onnx.ModelProto:
    """Export with torch's TorchScript-based exporter (``dynamo=False``)."""
    buf = io.BytesIO()
    x = torch.zeros((1, *sample_shape))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (x,), buf, dynamo=False, input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}} if dynamic_batch else None,
                          do_constant_folding=constant_folding, opset_version=opset)
    return onnx.load_from_string(buf.getvalue())


def export_dynamo(module: torch.nn.Module, sample_shape: tuple[int, ...], *,
                  dynamic_batch: bool = False) -> onnx.ModelProto:
    """Export with torch's dynamo (torch.export-based) exporter."""
    x = torch.zeros((2 if dynamic_batch else 1, *sample_shape))
    logging.getLogger("torch").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        shapes = ({0: torch.export.Dim("batch", min=1, max=1024)},) if dynamic_batch else None
        program = torch.onnx.export(module.eval(), (x,), dynamo=True, verbose=False, dynamic_shapes=shapes)
    return program.model_proto


# --- random torch networks ---------------------------------------------------------------------------------------
class Residual(torch.nn.Module):
    """``x ± body(x)`` with a shape-preserving body (a residual connection: Add/Sub of two tensors)."""

    def __init__(self, body: torch.nn.Module, sign: float = 1.0):
        super().__init__()
        self.body, self.sign = body, sign

    def forward(self, x):
        return x + self.body(x) if self.sign > 0 else x - self.body(x)


class Normalize(torch.nn.Module):
    """``(x - mean) / std`` by constants (exported as Sub and Div by constants)."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x):
        return (x - self.mean) / self.std


class Affine(torch.nn.Module):
    """``x * a + b`` or ``b - x * a`` by scalars, in either operand order (Mul/Add/Sub with constants)."""

    def __init__(self, a: float, b: float, flip: bool):
        super().__init__()
        self.a, self.b, self.flip = a, b, flip

    def forward(self, x):
        return self.b - self.a * x if self.flip else x * self.a + self.b


class ViewFlatten(torch.nn.Module):
    """Flatten as written in hand-made models: ``x.view(x.size(0), -1)`` or ``x.reshape(-1, n)``."""

    def __init__(self, style: str, n: int):
        super().__init__()
        self.style, self.n = style, n

    def forward(self, x):
        if self.style == "view":
            return x.view(x.size(0), -1)
        return x.reshape(-1, self.n)


@dataclass
class NetSpec:
    """A random network: the module, its per-sample input shape and a short description for failure reports."""

    module: torch.nn.Module
    sample_shape: tuple[int, ...]
    layers: list[str] = field(default_factory=list)
    head: str = "none"

    def __repr__(self) -> str:
        return f"NetSpec({self.sample_shape}, {self.layers}, head={self.head})"


def randomise_bn(bn: torch.nn.Module, rng: np.random.Generator) -> None:
    n = bn.num_features
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor(rng.uniform(-0.5, 0.5, n), dtype=torch.float32))
        bn.running_var.copy_(torch.tensor(rng.uniform(0.5, 2.0, n), dtype=torch.float32))
        bn.weight.copy_(torch.tensor(rng.uniform(0.5, 1.5, n) * rng.choice([-1, 1], n), dtype=torch.float32))
        bn.bias.copy_(torch.tensor(rng.uniform(-0.5, 0.5, n), dtype=torch.float32))


@st.composite
def random_nets(draw, max_conv_layers: int = 4, allow_heads: bool = True) -> NetSpec:
    """Random feed-forward networks using every op kind the importer supports on image inputs."""
    seed = draw(st.integers(0, 2**31 - 1))
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    c = draw(st.integers(1, 3))
    h, w = draw(st.integers(5, 11)), draw(st.integers(5, 11))
    sample_shape = (c, h, w)
    mods: list[torch.nn.Module] = []
    names: list[str] = []

    def shape_after(m: torch.nn.Module) -> tuple[int, ...] | None:
        try:
            with torch.no_grad():
                out = torch.nn.Sequential(*mods, m).eval()(torch.zeros(1, *sample_shape))
        except RuntimeError:
            return None
        return tuple(out.shape[1:]) if all(s > 0 for s in out.shape) else None

    def add(m: torch.nn.Module, name: str) -> bool:
        if shape_after(m) is None:
            return False
        mods.append(m)
        names.append(name)
        return True

    if draw(st.booleans()):
        mean = torch.tensor(rng.uniform(0.2, 0.6, (c, 1, 1)), dtype=torch.float32)
        std = torch.tensor(rng.uniform(0.2, 0.5, (c, 1, 1)), dtype=torch.float32)
        add(Normalize(mean, std), "normalize")
    shape = sample_shape
    for _ in range(draw(st.integers(0, max_conv_layers))):
        kind = draw(st.sampled_from(["conv", "conv", "relu", "maxpool", "avgpool", "bn", "residual", "affine"]))
        cin = shape[0]
        if kind == "conv":
            groups = draw(st.sampled_from([g for g in (1, 2, 3) if cin % g == 0]))
            cout = groups * draw(st.integers(1, 3))
            k = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
            m = torch.nn.Conv2d(cin, cout, k, stride=(draw(st.integers(1, 3)), draw(st.integers(1, 2))),
                                padding=(draw(st.integers(0, 2)), draw(st.integers(0, 2))),
                                dilation=(draw(st.integers(1, 2)), draw(st.integers(1, 2))), groups=groups,
                                bias=draw(st.booleans()))
            name = f"conv{tuple(m.kernel_size)}s{m.stride}p{m.padding}d{m.dilation}g{groups}"
        elif kind == "relu":
            m, name = torch.nn.ReLU(), "relu"
        elif kind in ("maxpool", "avgpool"):
            k = draw(st.integers(1, 3))
            s = draw(st.integers(1, 3))
            p = draw(st.integers(0, k // 2))
            # Where the last ceil-mode window would start in the end padding, torch and onnxruntime drop it but
            # ONNX shape inference before opset 22 keeps it, and onnxruntime then refuses the model: avoid that case.
            ceil = draw(st.booleans()) and all(-(-(n + 2 * p - k) // s) * s < n + p for n in shape[1:])
            if kind == "maxpool":
                m = torch.nn.MaxPool2d(k, s, p, ceil_mode=ceil)
                name = f"maxpool k{k}s{s}p{p}{' ceil' if ceil else ''}"
            else:
                include = (not ceil) and draw(st.booleans())
                m = torch.nn.AvgPool2d(k, s, p, ceil_mode=ceil, count_include_pad=include)
                name = f"avgpool k{k}s{s}p{p}{' ceil' if ceil else ''}{' incl' if include else ''}"
        elif kind == "bn":
            m = torch.nn.BatchNorm2d(cin)
            randomise_bn(m, rng)
            name = "bn"
        elif kind == "residual":
            conv = torch.nn.Conv2d(cin, cin, 3, padding=1)
            body = torch.nn.Sequential(conv, torch.nn.ReLU()) if draw(st.booleans()) else conv
            sign = draw(st.sampled_from([1.0, -1.0]))
            m, name = Residual(body, sign), f"residual{'+' if sign > 0 else '-'}"
        else:
            a = float(rng.uniform(0.5, 2.0))
            m, name = Affine(a, float(rng.uniform(-1, 1)), draw(st.booleans())), "affine"
        if add(m, name):
            shape = shape_after(torch.nn.Identity())
    flat = int(np.prod(shape))
    style = draw(st.sampled_from(["flatten", "view", "reshape"]))
    add(torch.nn.Flatten() if style == "flatten" else ViewFlatten(style, flat), style)
    width = flat
    for _ in range(draw(st.integers(0, 2))):
        out = draw(st.integers(2, 12))
        add(torch.nn.Linear(width, out), f"linear{width}->{out}")
        width = out
        extra = draw(st.sampled_from(["relu", "bn1d", "bn1d+relu", "none"]))
        if "bn1d" in extra:
            bn = torch.nn.BatchNorm1d(width)
            randomise_bn(bn, rng)
            add(bn, "bn1d")
        if "relu" in extra:
            add(torch.nn.ReLU(), "relu")
    classes = draw(st.integers(2, 6))
    add(torch.nn.Linear(width, classes), f"linear{width}->{classes}")
    head = draw(st.sampled_from(["none", "relu", "sigmoid", "softmax", "logsoftmax"])) if allow_heads else "none"
    heads = {"relu": torch.nn.ReLU(), "sigmoid": torch.nn.Sigmoid(), "softmax": torch.nn.Softmax(dim=1),
             "logsoftmax": torch.nn.LogSoftmax(dim=1)}
    if head in heads:
        add(heads[head], head)
    return NetSpec(torch.nn.Sequential(*mods).eval(), sample_shape, names, head)


# --- hand-built ONNX graphs ---------------------------------------------------------------------------------------
def f32(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float32)


def make_model(nodes: list, input_shape: list, output_shape: list | None, initializers: dict[str, np.ndarray],
               *, input_name: str = "x", output_name: str = "y", opset: int = 13,
               inits_as_inputs: bool = False, ir_version: int | None = None) -> onnx.ModelProto:
    """A single-input, single-output model from onnx.helper nodes; ``inits_as_inputs`` also lists every
    initializer as a graph input, as older exporters do. ``output_shape=None`` takes it from shape inference."""
    tensors = [numpy_helper.from_array(np.asarray(v), name=k) for k, v in initializers.items()]
    inputs = [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, input_shape)]
    if inits_as_inputs:
        inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in tensors]
    outputs = [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, output_shape)]
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=tensors)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version or min(model.ir_version, 8)
    if output_shape is None:  # graph outputs must carry a shape: let ONNX shape inference write it
        inferred = onnx.shape_inference.infer_shapes(model)
        model.graph.output[0].CopyFrom(inferred.graph.output[0])
    return model


def const_node(name: str, value) -> onnx.NodeProto:
    """A Constant node holding ``value`` (float32 unless it is an integer array)."""
    arr = np.asarray(value)
    if arr.dtype.kind == "f":
        arr = arr.astype(np.float32)
    return helper.make_node("Constant", [], [name], name=f"const_{name}", value=numpy_helper.from_array(arr, name))


def mlp_weight_first(rng: np.random.Generator, n_in: int = 12, hidden: int = 8, classes: int = 5,
                     relu_logits: bool = True) -> onnx.ModelProto:
    """A VNN-COMP-style MLP: input (1, n, 1), ``MatMul(W, x) + b`` with the weight first, every initializer listed
    as an input too, and a ReLU on the logits."""
    inits = {"W0": f32(rng.normal(size=(hidden, n_in)) / np.sqrt(n_in)), "b0": f32(rng.normal(size=(hidden, 1))),
             "W1": f32(rng.normal(size=(classes, hidden)) / np.sqrt(hidden)), "b1": f32(rng.normal(size=(classes, 1)))}
    nodes = [helper.make_node("MatMul", ["W0", "x"], ["m0"], name="matmul0"),
             helper.make_node("Add", ["m0", "b0"], ["a0"], name="add0"),
             helper.make_node("Relu", ["a0"], ["r0"], name="relu0"),
             helper.make_node("MatMul", ["W1", "r0"], ["m1"], name="matmul1"),
             helper.make_node("Add", ["m1", "b1"], ["a1" if relu_logits else "y"], name="add1")]
    if relu_logits:
        nodes.append(helper.make_node("Relu", ["a1"], ["y"], name="relu_logits"))
    return make_model(nodes, [1, n_in, 1], [1, classes, 1], inits, inits_as_inputs=True, ir_version=4, opset=11)


def mlp_matmul_add(rng: np.random.Generator, input_shape=(1, 1, 1, 5), hidden: int = 7,
                   classes: int = 3) -> onnx.ModelProto:
    """MatMul (data first) + Add fully connected net on an input shaped like (1, 1, 1, 5), bias added first."""
    n = input_shape[-1]
    inits = {"W0": f32(rng.normal(size=(n, hidden))), "b0": f32(rng.normal(size=(hidden,))),
             "W1": f32(rng.normal(size=(hidden, classes)) / 3), "b1": f32(rng.normal(size=(classes,))),
             "shape": np.array([1, classes], dtype=np.int64)}
    nodes = [helper.make_node("MatMul", ["x", "W0"], ["m0"], name="matmul0"),
             helper.make_node("Add", ["b0", "m0"], ["a0"], name="add0"),  # constant first
             helper.make_node("Relu", ["a0"], ["r0"], name="relu0"),
             helper.make_node("MatMul", ["r0", "W1"], ["m1"], name="matmul1"),
             helper.make_node("Add", ["m1", "b1"], ["a1"], name="add1"),
             helper.make_node("Reshape", ["a1", "shape"], ["y"], name="reshape")]
    return make_model(nodes, list(input_shape), [1, classes], inits)


def normalised_conv(rng: np.random.Generator, opset: int = 13) -> onnx.ModelProto:
    """Sub/Div by Constant nodes (input normalisation), Conv, Relu, Flatten, Gemm (transB=0, alpha, beta), and an
    Identity and a Dropout on the way."""
    inits = {"Wc": f32(rng.normal(size=(3, 2, 3, 3)) / 4), "bc": f32(rng.normal(size=(3,))),
             "Wg": f32(rng.normal(size=(3 * 3 * 3, 4)) / 5), "bg": f32(rng.normal(size=(1, 4)))}
    nodes = [const_node("mean", np.full((1, 2, 1, 1), 0.5)), const_node("std", [[[0.25]], [[0.5]]]),
             helper.make_node("Sub", ["x", "mean"], ["s"], name="sub"),
             helper.make_node("Div", ["s", "std"], ["d"], name="div"),
             helper.make_node("Identity", ["d"], ["d2"], name="identity"),
             helper.make_node("Conv", ["d2", "Wc", "bc"], ["c"], name="conv", kernel_shape=[3, 3], strides=[2, 2],
                              pads=[1, 0, 0, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Dropout", ["r"], ["r2"], name="dropout"),
             helper.make_node("Flatten", ["r2"], ["f"], name="flatten", axis=1),
             helper.make_node("Gemm", ["f", "Wg", "bg"], ["y"], name="gemm", alpha=0.5, beta=2.0, transB=0)]
    return make_model(nodes, [1, 2, 6, 6], [1, 4], inits, opset=opset)


def single_node_model(op_type: str, input_shape: list, attrs: dict | None = None, inits: dict | None = None,
                      extra_inputs: list[str] | None = None, output_shape: list | None = None,
                      opset: int = 13) -> onnx.ModelProto:
    """``y = op(x, *extra_inputs)``: a one-node model to probe one op or one attribute value."""
    node = helper.make_node(op_type, ["x", *(extra_inputs or [])], ["y"], name=f"{op_type.lower()}_node",
                            **(attrs or {}))
    return make_model([node], input_shape, output_shape, inits or {}, opset=opset)
