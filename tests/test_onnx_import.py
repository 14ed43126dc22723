"""ONNX import: the shapes of models found in the wild, each op's attributes, folding and stripping, and the typed
errors (with their messages) for everything the IR cannot represent."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from onnx_factories import (
    assert_equivalent,
    const_node,
    f32,
    make_model,
    mlp_matmul_add,
    mlp_weight_first,
    normalised_conv,
    single_node_model,
)

from mlrobust import load_onnx
from mlrobust.errors import MlrobustError, ModelLoadError, UnsupportedOpError
from mlrobust.ir.onnx_import import SUPPORTED_OPS


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def _x(rng: np.random.Generator, net, n: int = 3) -> np.ndarray:
    return rng.uniform(-1.0, 1.0, (n, *net.sample_shape)).astype(np.float32)


def _load_and_check(model: onnx.ModelProto, rng: np.random.Generator, head: str = "none"):
    net = load_onnx(model)
    assert_equivalent(model, net, _x(rng, net), head)
    return net


# --- models in the shapes found in the wild ------------------------------------------------------------------------
def test_weight_first_matmul_with_initializers_as_inputs_and_relu_logits(rng, tmp_path):
    model = mlp_weight_first(rng, n_in=784, hidden=8, classes=5)
    assert len(model.graph.input) == 5  # the real input and the four initializers
    path = tmp_path / "mlp.onnx"
    onnx.save(model, str(path))
    net = load_onnx(path)
    assert net.source == str(path)
    assert net.input_name == "x" and net.input_shape == (1, 784, 1)
    assert [n.kind for n in net.nodes] == ["Dense", "Relu", "Dense", "Relu"]
    assert net.output_shape == (5, 1) and net.num_classes == 5
    assert net.num_relus == 8 + 5
    # The bias Adds fold into the Dense ops.
    assert sum("folded Add" in note for note in net.notes) == 2
    assert_equivalent(model, net, _x(rng, net, 4))


def test_matmul_add_on_four_dim_input(rng):
    net = _load_and_check(mlp_matmul_add(rng, input_shape=(1, 1, 1, 5)), rng)
    assert net.input_shape == (1, 1, 1, 5)
    assert [n.kind for n in net.nodes] == ["Dense", "Relu", "Dense", "Reshape"]
    assert net.nodes[0].out_shape == (1, 1, 7) and net.output_shape == (3,)


def test_matmul_add_on_flat_input(rng):
    net = _load_and_check(mlp_matmul_add(rng, input_shape=(1, 5)), rng)
    w = net.nodes[0].op.weight
    assert w.shape == (7, 5)
    # Exact float32 -> float64 copy of the initializer (transposed: MatMul's weight is (in, out)).
    init = {t.name: onnx.numpy_helper.to_array(t) for t in mlp_matmul_add(np.random.default_rng(1234),
                                                                          input_shape=(1, 5)).graph.initializer}
    assert w.dtype == np.float64 and np.array_equal(w, init["W0"].T.astype(np.float64))


def test_normalisation_by_constant_nodes_conv_and_gemm_alpha_beta(rng):
    net = _load_and_check(normalised_conv(rng), rng)
    # Sub and Div merge into one Scale; Identity and Dropout vanish; Gemm alpha/beta are applied.
    assert [n.kind for n in net.nodes] == ["Scale", "Conv2d", "Relu", "Reshape", "Dense"]
    scale = net.nodes[0].op
    np.testing.assert_allclose(np.broadcast_to(scale.mul, (2, 1, 1)).ravel(), [4.0, 2.0])
    np.testing.assert_allclose(np.broadcast_to(scale.add, (2, 1, 1)).ravel(), [-2.0, -1.0])
    assert net.nodes[1].op.padding == (1, 0, 0, 1) and net.nodes[1].op.stride == (2, 2)
    assert any("removed 2 no-op" in note and "Dropout" in note and "Identity" in note for note in net.notes)


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("op_type", ["Add", "Sub", "Mul"])
def test_elementwise_constant_on_either_side(rng, op_type, flip):
    c = f32(rng.uniform(0.5, 2.0, (3, 1, 1)))
    inputs = ["c", "x"] if flip else ["x", "c"]
    node = helper.make_node(op_type, inputs, ["y"], name="op")
    net = _load_and_check(make_model([node], [1, 3, 4, 4], None, {"c": c}), rng)
    assert [n.kind for n in net.nodes] == ["Scale"]


def test_div_by_constant_and_neg(rng):
    nodes = [const_node("c", [2.0, 4.0, 0.5]), helper.make_node("Div", ["x", "c"], ["d"], name="div"),
             helper.make_node("Neg", ["d"], ["y"], name="neg")]
    net = _load_and_check(make_model(nodes, [1, 2, 3], None, {}), rng)
    assert [n.kind for n in net.nodes] == ["Scale"]
    np.testing.assert_allclose(np.ravel(net.nodes[0].op.mul), [-0.5, -0.25, -2.0])


def test_residual_add_and_sub_of_two_tensors(rng):
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Sub", ["x", "r"], ["s"], name="sub"),
             helper.make_node("Add", ["s", "x"], ["y"], name="add")]
    net = _load_and_check(make_model(nodes, [1, 6], None, {}), rng)
    assert [(n.kind, getattr(n.op, "coeff", None)) for n in net.nodes] == [("Relu", None), ("Add", -1.0),
                                                                          ("Add", 1.0)]


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_transb_and_scalar_bias(rng, trans_b):
    w = f32(rng.normal(size=(4, 6) if trans_b else (6, 4)))
    node = helper.make_node("Gemm", ["x", "W", "C"], ["y"], name="gemm", transB=trans_b, alpha=2.0, beta=-0.5)
    net = _load_and_check(make_model([node], [1, 6], [1, 4], {"W": w, "C": f32(3.0)}), rng)
    np.testing.assert_allclose(net.nodes[0].op.bias, np.full(4, -1.5))


def test_matmul_over_rows_builds_block_weights(rng):
    """Data-first MatMul on a (2, 3, 4) sample, then weight-first MatMul on the (2, 3, 5) result (kron-built Dense
    weights; the weight has a leading unit axis)."""
    nodes = [helper.make_node("MatMul", ["x", "A"], ["m"], name="data_first"),  # (1,2,3,4)@(4,5) -> (1,2,3,5)
             helper.make_node("Relu", ["m"], ["r"], name="relu"),
             helper.make_node("MatMul", ["B", "r"], ["y"], name="weight_first")]  # (1,2,3)@(1,2,3,5) -> (1,2,2,5)
    inits = {"A": f32(rng.normal(size=(4, 5))), "B": f32(rng.normal(size=(1, 2, 3)))}
    net = _load_and_check(make_model(nodes, [1, 2, 3, 4], None, inits), rng)
    assert net.nodes[0].op.weight.shape == (30, 24) and net.nodes[2].op.weight.shape == (20, 30)
    assert net.output_shape == (2, 2, 5)


def test_conv_auto_pad_and_groups(rng):
    for auto_pad, stride in (("SAME_UPPER", [2, 2]), ("SAME_LOWER", [2, 1]), ("VALID", [1, 2])):
        w = f32(rng.normal(size=(4, 1, 2, 3)))
        node = helper.make_node("Conv", ["x", "W"], ["y"], name="conv", auto_pad=auto_pad, strides=stride,
                                group=2, kernel_shape=[2, 3])
        net = _load_and_check(make_model([node], [1, 2, 7, 6], None, {"W": w}), rng)
        assert net.nodes[0].op.groups == 2
        np.testing.assert_array_equal(net.nodes[0].op.bias, np.zeros(4))


@pytest.mark.parametrize("op_type", ["MaxPool", "AveragePool"])
def test_pool_pads_strides_auto_pad(rng, op_type):
    cases = [dict(kernel_shape=[3, 2], strides=[2, 1], pads=[1, 0, 1, 1]),
             dict(kernel_shape=[2, 2], strides=[2, 2], auto_pad="SAME_UPPER"),
             dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1)]
    if op_type == "AveragePool":
        cases.append(dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1))
    for attrs in cases:
        _load_and_check(single_node_model(op_type, [1, 2, 7, 6], attrs), rng)


@pytest.mark.parametrize("op_type", ["MaxPool", "AveragePool"])
def test_ceil_mode_window_starting_in_the_padding_is_dropped(rng, op_type):
    # 5 wide, kernel 1, stride 3: ceil gives 3 windows, but the third would start at 6, past the input (opset 22
    # shape inference, onnxruntime and torch all drop it).
    model = single_node_model(op_type, [1, 1, 5, 5], dict(kernel_shape=[1, 1], strides=[3, 3], ceil_mode=1),
                              opset=22)
    net = _load_and_check(model, rng)
    assert net.output_shape == (1, 2, 2)


def test_global_pools(rng):
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["a"], name="gap"),
             helper.make_node("GlobalMaxPool", ["x"], ["m"], name="gmp"),
             helper.make_node("Sub", ["a", "m"], ["y"], name="sub")]
    net = _load_and_check(make_model(nodes, [1, 3, 5, 4], None, {}), rng)
    assert net.output_shape == (3, 1, 1)


@pytest.mark.parametrize("target,allowzero,expected", [
    ([1, -1], 0, (24,)), ([0, -1], 0, (24,)), ([-1, 4, 6], 1, (4, 6)), ([0, 0, 2, 2, 3], 0, (2, 2, 2, 3)),
    ([1, 24, 1], 1, (24, 1)),
])
def test_reshape_targets(rng, target, allowzero, expected):
    node = helper.make_node("Reshape", ["x", "s"], ["y"], name="reshape", allowzero=allowzero)
    net = _load_and_check(make_model([node], [1, 2, 4, 3], None, {"s": np.array(target, dtype=np.int64)},
                                     opset=14), rng)
    assert net.output_shape == expected


def test_squeeze_unsqueeze_and_size1_transpose(rng):
    nodes = [helper.make_node("Squeeze", ["x", "ax"], ["s"], name="squeeze"),  # (1,6,1) -> (1,6)
             helper.make_node("Unsqueeze", ["s", "ax2"], ["u"], name="unsqueeze"),  # -> (1,1,6)
             helper.make_node("Transpose", ["u"], ["y"], name="transpose", perm=[0, 2, 1])]  # -> (1,6,1)
    inits = {"ax": np.array([2], dtype=np.int64), "ax2": np.array([-2], dtype=np.int64)}
    net = _load_and_check(make_model(nodes, [1, 6, 1], None, inits), rng)
    assert net.output_shape == (6, 1) and all(n.kind == "Reshape" for n in net.nodes)


def test_symbolic_batch_reads_as_one(rng):
    node = helper.make_node("Relu", ["x"], ["y"], name="relu")
    model = make_model([node], ["N", 4], ["N", 4], {})
    net = _load_and_check(model, rng)
    assert net.input_shape == (1, 4)
    assert any("dynamic batch axis 'N'" in note for note in net.notes)


# --- folding -------------------------------------------------------------------------------------------------------
def _bn_inits(rng, c: int, prefix: str = "bn") -> dict[str, np.ndarray]:
    return {f"{prefix}_s": f32(rng.uniform(0.5, 1.5, c)), f"{prefix}_b": f32(rng.normal(size=c)),
            f"{prefix}_m": f32(rng.normal(size=c)), f"{prefix}_v": f32(rng.uniform(0.5, 2.0, c))}


def _bn(inp: str, out: str, prefix: str = "bn") -> onnx.NodeProto:
    return helper.make_node("BatchNormalization", [inp, f"{prefix}_s", f"{prefix}_b", f"{prefix}_m", f"{prefix}_v"],
                            [out], name=prefix, epsilon=1e-3)


def test_batchnorm_folds_into_conv_and_gemm(rng):
    inits = {"Wc": f32(rng.normal(size=(3, 2, 3, 3))), "Wg": f32(rng.normal(size=(4, 27))),
             **_bn_inits(rng, 3, "bn1"), **_bn_inits(rng, 4, "bn2")}
    nodes = [helper.make_node("Conv", ["x", "Wc"], ["c"], name="conv"), _bn("c", "b1", "bn1"),
             helper.make_node("Relu", ["b1"], ["r"], name="relu"),
             helper.make_node("Flatten", ["r"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "Wg"], ["g"], name="gemm", transB=1), _bn("g", "y", "bn2")]
    net = _load_and_check(make_model(nodes, [1, 2, 5, 5], None, inits), rng)
    assert [n.kind for n in net.nodes] == ["Conv2d", "Relu", "Reshape", "Dense"]
    assert "folded BatchNormalization 'bn1' into Conv2d 'conv'" in net.notes
    assert "folded BatchNormalization 'bn2' into Dense 'gemm'" in net.notes


def test_batchnorm_stays_a_scale_when_the_conv_output_has_another_use(rng):
    inits = {"Wc": f32(rng.normal(size=(2, 2, 3, 3))), **_bn_inits(rng, 2)}
    nodes = [helper.make_node("Conv", ["x", "Wc"], ["c"], name="conv", pads=[1, 1, 1, 1]), _bn("c", "b"),
             helper.make_node("Add", ["b", "c"], ["y"], name="add")]
    net = _load_and_check(make_model(nodes, [1, 2, 4, 4], None, inits), rng)
    assert [n.kind for n in net.nodes] == ["Conv2d", "Scale", "Add"]
    assert not any("folded" in note for note in net.notes)


def test_scale_after_conv_varying_over_pixels_is_not_folded(rng):
    inits = {"Wc": f32(rng.normal(size=(2, 1, 2, 2))), "m": f32(rng.uniform(1, 2, (1, 2, 3, 3)))}
    nodes = [helper.make_node("Conv", ["x", "Wc"], ["c"], name="conv"),
             helper.make_node("Mul", ["c", "m"], ["y"], name="mul")]
    net = _load_and_check(make_model(nodes, [1, 1, 4, 4], None, inits), rng)
    assert [n.kind for n in net.nodes] == ["Conv2d", "Scale"]


@pytest.mark.parametrize("op_type", ["Softmax", "LogSoftmax", "Sigmoid"])
def test_trailing_monotone_op_is_stripped(rng, op_type):
    nodes = [helper.make_node("Gemm", ["x", "W"], ["g"], name="gemm"),
             helper.make_node(op_type, ["g"], ["p"], name="head"),
             helper.make_node("Identity", ["p"], ["y"], name="identity")]
    model = make_model(nodes, [1, 4], [1, 3], {"W": f32(rng.normal(size=(4, 3)))})
    net = _load_and_check(model, rng, head=op_type.lower())
    assert net.output_name == "g" and [n.kind for n in net.nodes] == ["Dense"]
    assert f"stripped trailing {op_type} 'head' (monotone, so the top-k labels are unchanged)" in net.notes


def test_dead_branches_are_ignored(rng):
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="relu"),
             helper.make_node("Tanh", ["x"], ["unused"], name="tanh")]
    net = _load_and_check(make_model(nodes, [1, 3], None, {}), rng)
    assert [n.kind for n in net.nodes] == ["Relu"]


# --- errors ----------------------------------------------------------------------------------------------------------
def test_missing_file_directory_and_non_onnx(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_onnx(tmp_path / "nothere.onnx")
    with pytest.raises(ModelLoadError, match="is not a file"):
        load_onnx(tmp_path)
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model\n" * 5)
    with pytest.raises(ModelLoadError, match="not an ONNX model") as err:
        load_onnx(text)
    assert str(text) in str(err.value)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(ModelLoadError, match="empty.onnx is not an ONNX model"):
        load_onnx(empty)


def test_invalid_model_fails_the_checker(tmp_path):
    node = helper.make_node("Relu", ["x", "extra"], ["y"], name="relu")
    model = make_model([node], [1, 3], None, {})
    path = tmp_path / "bad.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ModelLoadError, match="bad.onnx: not a valid ONNX model"):
        load_onnx(path)


def test_unsupported_op_names_op_node_and_supported_list():
    with pytest.raises(UnsupportedOpError) as err:
        load_onnx(single_node_model("Erf", [1, 3], opset=13))
    msg = str(err.value)
    assert "'Erf'" in msg and "'erf_node'" in msg
    assert "Supported ops: Add, AveragePool, BatchNormalization" in msg
    assert err.value.op_type == "Erf" and err.value.node_name == "erf_node"
    assert set(err.value.supported) == set(SUPPORTED_OPS)
    assert isinstance(err.value, ModelLoadError) and isinstance(err.value, MlrobustError)


def test_several_real_inputs_or_outputs():
    nodes = [helper.make_node("Add", ["x", "z"], ["y"], name="add")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3]),
                                           helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    with pytest.raises(ModelLoadError, match=r"exactly one input .* it has 2 \('x', 'z'\)"):
        load_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="r"), helper.make_node("Neg", ["x"], ["w"], name="n")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3]),
                               helper.make_tensor_value_info("w", TensorProto.FLOAT, [1, 3])])
    with pytest.raises(ModelLoadError, match=r"exactly one output; it has 2 \('y', 'w'\)"):
        load_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))


def test_dynamic_dimension_other_than_batch():
    model = single_node_model("Relu", ["N", 3, "height", 8])
    with pytest.raises(ModelLoadError, match="dynamic dimension 'height' at axis 2; only the batch axis"):
        load_onnx(model)


def test_fixed_batch_larger_than_one(rng):
    """A model exported with a fixed batch of 2 (reshape targets and Shape results carry the 2) runs per sample."""
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], name="conv"),
             helper.make_node("Shape", ["c"], ["shape"], name="shape"),
             helper.make_node("Slice", ["shape", "zero", "one"], ["batch"], name="slice"),
             helper.make_node("Concat", ["batch", "minus_one"], ["target"], name="concat", axis=0),
             helper.make_node("Reshape", ["c", "target"], ["f"], name="reshape"),
             helper.make_node("Gemm", ["f", "Wg", "C"], ["y"], name="gemm", transB=1)]
    inits = {"W": f32(rng.normal(size=(2, 3, 2, 2))), "Wg": f32(rng.normal(size=(4, 8))), "C": f32(rng.normal(size=4)),
             "zero": np.array([0]), "one": np.array([1]), "minus_one": np.array([-1])}
    model = make_model(nodes, [2, 3, 3, 3], [2, 4], inits)
    net = _load_and_check(model, rng)
    assert net.input_shape == (1, 3, 3, 3) and net.output_shape == (4,)
    assert "batch axis of input 'x' fixed to 2; each sample runs on its own" in net.notes
    assert [n.kind for n in net.nodes] == ["Conv2d", "Reshape", "Dense"]


def test_constant_varying_along_a_fixed_batch():
    node = helper.make_node("Add", ["x", "c"], ["y"], name="add")
    with pytest.raises(UnsupportedOpError, match=r"constant of shape \(2, 3\) varies along the batch axis"):
        load_onnx(make_model([node], [2, 3], None, {"c": f32(np.arange(6).reshape(2, 3))}))


def test_integer_input_is_rejected():
    node = helper.make_node("Relu", ["x"], ["y"], name="relu")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.INT64, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.INT64, [1, 3])])
    with pytest.raises(ModelLoadError, match="a float tensor is expected"):
        load_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))


@pytest.mark.parametrize("op_type,attrs,inits,extra,fragment", [
    ("MaxPool", dict(kernel_shape=[2, 2], dilations=[2, 2]), {}, [], "dilations=[2, 2]"),
    ("AveragePool", dict(kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1, count_include_pad=1, pads=[1, 1, 0, 0]),
     {}, [], "ceil_mode=1 with count_include_pad=1"),
    ("Gemm", dict(transA=1), {"W": f32(np.ones((1, 2)))}, ["W"], "transA=1"),
    ("Mul", {}, {}, ["x"], "not piecewise linear"),
    ("Div", {}, {"c": f32([1.0, 0.0, 2.0])}, ["c"], "contains zeros"),
    ("Squeeze", {}, {}, [], "would also remove the batch axis"),
    ("Transpose", dict(perm=[1, 0, 2]), {}, [], "moves the batch axis"),
    ("Pad", dict(mode="reflect"), {"p": np.array([0, 0, 1, 1, 0, 0, 1, 1])}, ["p"], "only constant padding"),
    ("Conv", {}, {"W": f32(np.ones((1, 1, 2)))}, ["W"], "only 2-D convolutions"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_unsupported_attribute_values(op_type, attrs, inits, extra, fragment):
    shape = {"Gemm": [1, 3], "Mul": [1, 3], "Div": [1, 3], "Squeeze": [1, 3], "Conv": [1, 1, 5],
             "Transpose": [1, 2, 3]}.get(op_type, [1, 1, 4, 4])
    with pytest.raises(UnsupportedOpError, match=f"unsupported ONNX op '{op_type}'") as err:
        load_onnx(single_node_model(op_type, shape, attrs, inits, extra))
    assert fragment in str(err.value)


def test_division_of_a_constant_by_data():
    node = helper.make_node("Div", ["c", "x"], ["y"], name="div")
    with pytest.raises(UnsupportedOpError, match="division by a tensor that depends on the input"):
        load_onnx(make_model([node], [1, 3], None, {"c": f32([1.0, 2.0, 3.0])}))


def test_reshape_that_moves_the_batch_axis():
    node = helper.make_node("Reshape", ["x", "s"], ["y"], name="reshape")
    with pytest.raises(UnsupportedOpError, match=r"output shape \(6, 1\) does not keep the batch axis first"):
        load_onnx(make_model([node], [1, 2, 3], None, {"s": np.array([6, 1], dtype=np.int64)}))


def test_reshape_allowzero_keeps_a_zero_as_zero():
    node = helper.make_node("Reshape", ["x", "s"], ["y"], name="reshape", allowzero=1)
    model = make_model([node], [1, 2, 3], [1, 6], {"s": np.array([1, 0, 6], dtype=np.int64)}, opset=14)
    with pytest.raises(ModelLoadError, match=r"cannot reshape \(1, 2, 3\) to \(1, 0, 6\)"):
        load_onnx(model)


def test_softmax_in_the_middle():
    nodes = [helper.make_node("Softmax", ["x"], ["s"], name="softmax", axis=1),
             helper.make_node("Relu", ["s"], ["y"], name="relu")]
    with pytest.raises(UnsupportedOpError, match="'Softmax' at node 'softmax' .*only supported as the last op"):
        load_onnx(make_model(nodes, [1, 4], None, {}))


def test_softmax_over_part_of_the_output():
    node = helper.make_node("Softmax", ["x"], ["y"], name="softmax", axis=2)
    with pytest.raises(UnsupportedOpError, match="may change the top-k labels"):
        load_onnx(make_model([node], [1, 2, 3], None, {}))


def test_output_that_does_not_depend_on_the_input():
    nodes = [const_node("c", [1.0, 2.0]), helper.make_node("Relu", ["c"], ["y"], name="relu"),
             helper.make_node("Relu", ["x"], ["unused"], name="relu_x")]
    with pytest.raises(ModelLoadError, match="does not depend on the input 'x'"):
        load_onnx(make_model(nodes, [1, 2], None, {}))


def test_batchnorm_in_training_mode():
    inits = _bn_inits(np.random.default_rng(0), 2)
    node = helper.make_node("BatchNormalization", ["x", "bn_s", "bn_b", "bn_m", "bn_v"], ["y"], name="bn",
                            training_mode=1)
    with pytest.raises(UnsupportedOpError, match="training_mode=1"):
        load_onnx(make_model([node], [1, 2, 3, 3], [1, 2, 3, 3], inits, opset=15))
