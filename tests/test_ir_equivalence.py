"""The imported IR computes what the ONNX model computes: ``Network.forward`` (numpy) and the torch executor against
onnxruntime, on random torch networks exported by both exporters, and on the shipped example models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx_factories import (
    NetSpec,
    Normalize,
    Residual,
    ViewFlatten,
    assert_equivalent,
    export_dynamo,
    export_legacy,
    random_nets,
    randomise_bn,
)

from mlrobust import load_onnx
from mlrobust.ir.graph import Network

REPO = Path(__file__).resolve().parents[1]


def _inputs(spec: NetSpec, seed: int, n: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.0, 1.0, (n, *spec.sample_shape)).astype(np.float32)


def _check_stripped(net: Network, head: str) -> None:
    stripped = [note for note in net.notes if note.startswith("stripped")]
    if head in ("sigmoid", "softmax", "logsoftmax"):
        assert len(stripped) == 1 and {"sigmoid": "Sigmoid", "softmax": "Softmax",
                                       "logsoftmax": "LogSoftmax"}[head] in stripped[0]
    else:
        assert stripped == []


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(spec=random_nets(), dynamic=st.booleans(), folding=st.booleans(), opset=st.sampled_from([11, 13, 17]),
       seed=st.integers(0, 2**16))
def test_legacy_export_matches_onnxruntime(spec: NetSpec, dynamic: bool, folding: bool, opset: int, seed: int):
    model = export_legacy(spec.module, spec.sample_shape, dynamic_batch=dynamic, constant_folding=folding,
                          opset=opset)
    net = load_onnx(model)
    assert net.input_shape == (1, *spec.sample_shape)
    _check_stripped(net, spec.head)
    assert_equivalent(model, net, _inputs(spec, seed), spec.head)


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(spec=random_nets(max_conv_layers=3), dynamic=st.booleans(), seed=st.integers(0, 2**16))
def test_dynamo_export_matches_onnxruntime(spec: NetSpec, dynamic: bool, seed: int):
    model = export_dynamo(spec.module, spec.sample_shape, dynamic_batch=dynamic)
    net = load_onnx(model)
    _check_stripped(net, spec.head)
    assert_equivalent(model, net, _inputs(spec, seed), spec.head)


def _reference_cnn() -> torch.nn.Module:
    """One fixed network with every supported layer kind (the dynamo exporter is too slow for many random ones)."""
    torch.manual_seed(3)
    rng = np.random.default_rng(3)
    bn, bn1 = torch.nn.BatchNorm2d(4), torch.nn.BatchNorm1d(6)
    randomise_bn(bn, rng)
    randomise_bn(bn1, rng)
    return torch.nn.Sequential(
        Normalize(torch.tensor([0.5, 0.4]).reshape(2, 1, 1), torch.tensor([0.25, 0.3]).reshape(2, 1, 1)),
        torch.nn.Conv2d(2, 4, (3, 2), stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2), bn,
        torch.nn.ReLU(), torch.nn.MaxPool2d(3, 2, 1, ceil_mode=True),
        Residual(torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.ReLU())),
        torch.nn.AvgPool2d(2, 1, 1, count_include_pad=False), ViewFlatten("view", 0),
        torch.nn.LazyLinear(6), bn1, torch.nn.ReLU(), torch.nn.Linear(6, 3), torch.nn.Sigmoid()).eval()


@pytest.mark.parametrize("dynamic", [False, True])
def test_dynamo_reference_network(dynamic: bool):
    module = _reference_cnn()
    with torch.no_grad():
        module(torch.zeros(1, 2, 11, 9))  # materialise the lazy layer
    model = export_dynamo(module, (2, 11, 9), dynamic_batch=dynamic)
    reshapes = [n for n in model.graph.node if n.op_type == "Reshape"]
    assert reshapes and all(a.i == 1 for n in reshapes for a in n.attribute if a.name == "allowzero")
    net = load_onnx(model)
    kinds = [n.kind for n in net.nodes]
    # BatchNorm2d folds into the grouped conv, BatchNorm1d into the Linear; normalisation stays one Scale.
    assert kinds == ["Scale", "Conv2d", "Relu", "MaxPool2d", "Conv2d", "Relu", "Add", "AvgPool2d", "Reshape",
                     "Dense", "Relu", "Dense"]
    assert any("Sigmoid" in note for note in net.notes)
    spec = NetSpec(module, (2, 11, 9), head="sigmoid")
    assert_equivalent(model, net, _inputs(spec, 0, n=4), "sigmoid")


def test_legacy_reference_network_keeps_shape_chain():
    """The legacy exporter with a dynamic batch and no constant folding writes ``x.view(x.size(0), -1)`` as
    Shape -> Gather -> Unsqueeze -> Concat -> Reshape, and BatchNormalization as its own node; both must import."""
    module = _reference_cnn()
    with torch.no_grad():
        module(torch.zeros(1, 2, 11, 9))
    model = export_legacy(module, (2, 11, 9), dynamic_batch=True, constant_folding=False, opset=13)
    ops = {n.op_type for n in model.graph.node}
    assert {"Shape", "Gather", "Unsqueeze", "Concat", "BatchNormalization"} <= ops
    net = load_onnx(model)
    assert net.count("Scale") == 1 and net.count("Conv2d") == 2 and net.count("Dense") == 2
    assert any("BatchNormalization" in note and "Conv2d" in note for note in net.notes)
    assert any("Shape" in note and "constant-only" in note for note in net.notes)
    assert_equivalent(model, net, _inputs(NetSpec(module, (2, 11, 9)), 1, n=4), "sigmoid")


EXAMPLES = sorted(p for p in (REPO / "examples").rglob("*.onnx")) if (REPO / "examples").is_dir() else []


@pytest.mark.parametrize("path", EXAMPLES, ids=[str(p.relative_to(REPO)) for p in EXAMPLES])
def test_shipped_examples_match_onnxruntime(path: Path):
    net = load_onnx(path)
    model = onnx.load(str(path))
    # The shipped images are the inputs these models are meant for (uniform noise drives the logits to |y| ~ 50,
    # where float32 rounding alone exceeds the 1e-5 absolute tolerance).
    images = sorted((REPO / "examples" / "images").glob("ex??.png"))
    ladder = REPO / "examples" / "ladder.json"
    if ladder.is_file():  # the scale-ladder models take their own images (84x84, 3x300x300)
        import json

        own = [REPO / "examples" / e["file"] for e in json.loads(ladder.read_text())["images"]
               if e.get("model") == path.stem]
        images = own or images
    if images:
        from mlrobust.neighborhood.image_io import load_image

        x = np.stack([load_image(f, net.sample_shape)[0] for f in images]).astype(np.float32)
    else:
        x = np.random.default_rng(0).uniform(0.0, 1.0, (2, *net.sample_shape)).astype(np.float32)
    heads = {"Sigmoid": "sigmoid", "Softmax": "softmax", "LogSoftmax": "logsoftmax"}
    head = next((v for k, v in heads.items() for note in net.notes if note.startswith(f"stripped trailing {k} ")),
                "none")
    assert_equivalent(model, net, x, head)
