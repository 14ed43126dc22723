"""A tiny MLP on a rank-1 input of shape [2] (no batch axis), MatMul with the weight second and first."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from benchmarks.onnx_patterns._common import label_properties, save

NAME = "rank1_mlp"
EPSILONS = (0.1, 0.3, 0.4, 0.5)


def build(out_dir: Path) -> list[tuple[Path, Path]]:
    rng = np.random.default_rng(4)
    weights = {"W0": rng.normal(size=(2, 16)), "b0": rng.normal(size=16) * 0.1,
               "W1": rng.normal(size=(16, 16)) / 4, "b1": rng.normal(size=16) * 0.1,
               "W2": rng.normal(size=(3, 16)) / 4}
    nodes = [helper.make_node("MatMul", ["x", "W0"], ["m0"]), helper.make_node("Add", ["m0", "b0"], ["a0"]),
             helper.make_node("Relu", ["a0"], ["r0"]), helper.make_node("MatMul", ["r0", "W1"], ["m1"]),
             helper.make_node("Add", ["m1", "b1"], ["a1"]), helper.make_node("Relu", ["a1"], ["r1"]),
             helper.make_node("MatMul", ["W2", "r1"], ["y"])]  # weight first: W2 @ r1
    graph = helper.make_graph(
        nodes, NAME, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
        initializer=[numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = save(model, out_dir / f"{NAME}.onnx")
    return label_properties(path, np.array([0.3, -0.4]), out_dir, NAME, lo=-1.0, hi=1.0,
                            epsilons=EPSILONS)
