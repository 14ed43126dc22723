"""The Python API: ``mlrobust.maximize`` and ``mlrobust.check`` from files or objects, with custom verifiers,
and the clear errors on bad input."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_search_oracles import ExactLpVerifier, exact_worst_margin, tiny_case

import mlrobust
from mlrobust.errors import InputError, ModelLoadError
from mlrobust.neighborhood.image_io import write_image, write_mask
from mlrobust.search.result import sha256_file
from mlrobust.verify.verdict import ROBUST_TOLERANCE


def tiny_onnx(net, path):
    """The tiny Dense-ReLU-Dense network as an ONNX file (Flatten, Gemm, Relu, Gemm)."""
    fc1, fc2 = (n.op for n in net.nodes if n.op.kind == "Dense")
    inits = [numpy_helper.from_array(a.astype(np.float32), name) for name, a in
             (("w1", fc1.weight), ("b1", fc1.bias), ("w2", fc2.weight), ("b2", fc2.bias))]
    nodes = [helper.make_node("Flatten", ["x"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "w1", "b1"], ["h"], transB=1),
             helper.make_node("Relu", ["h"], ["a"]),
             helper.make_node("Gemm", ["a", "w2", "b2"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                            list(net.input_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, fc2.weight.shape[0]])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def case():
    return tiny_case(6, hidden=3, classes=3)


@pytest.fixture()
def files(case, tmp_path):
    net, image, target, mask = case
    img = np.round(image * 255) / 255  # what survives an 8-bit PNG
    write_image(tmp_path / "img.png", img)
    write_mask(tmp_path / "mask.png", mask)
    return tiny_onnx(net, tmp_path / "tiny.onnx"), tmp_path / "img.png", tmp_path / "mask.png"


def test_maximize_from_objects_with_a_custom_verifier(case):
    net, image, target, mask = case
    ver = ExactLpVerifier()
    res = mlrobust.maximize(net, image, target, object_mask=mask, verifier=ver, delta=0.01, time_limit=60)
    assert res.verified and res.verifier == "exact-lp" and ver.calls == res.stats.verifier_calls
    from mlrobust.neighborhood import LayeredNeighborhood

    nbhd = LayeredNeighborhood.build(image, mask, net.sample_shape)
    m, _ = exact_worst_margin(net, nbhd.box(res.epsilons), target, 2)
    assert m < -ROBUST_TOLERANCE
    data = json.loads(json.dumps(res.to_json()))  # serialisable as is
    for key in ("epsilons", "weights", "size", "k", "target", "maximality", "statistics", "timings", "model",
                "image", "versions", "object"):
        assert key in data
    assert data["epsilons"] == pytest.approx(list(res.epsilons))
    assert data["size"] == pytest.approx(res.size)
    assert np.array_equal(np.asarray(data["object"]["mask"], dtype=bool), mask)
    assert data["model"]["path"] is None and len(data["model"]["sha256"]) == 64
    assert data["statistics"]["verifier_calls"] == ver.calls
    assert [m["layer"] for m in data["maximality"]] == list(range(res.num_layers))
    assert data["versions"]["numpy"] == np.__version__


def test_maximize_from_files_records_hashes(files, case):
    model_path, image_path, mask_path = files
    _, _, target, _ = case
    res = mlrobust.maximize(model_path, image_path, target, object_mask=mask_path, verifier=ExactLpVerifier(),
                            method="uniform", certify=False, time_limit=60)
    data = res.to_json()
    assert data["model"] == {"path": str(model_path), "sha256": sha256_file(model_path)}
    assert data["image"]["sha256"] == sha256_file(image_path)
    assert data["method"] == "uniform" and data["cutting"] is None
    assert {m["status"] for m in data["maximality"]} == {"unchecked"}
    assert res.object_source == "mask"


def test_check_agrees_with_the_exact_oracle(case):
    net, image, target, mask = case
    from mlrobust.neighborhood import LayeredNeighborhood

    nbhd = LayeredNeighborhood.build(image, mask, net.sample_shape)
    for eps in (0.01, 0.2, [0.3, 0.0, 0.05, 0.4], 0.9):
        res = mlrobust.check(net, image, target, eps, object_mask=mask, verifier=ExactLpVerifier())
        m, _ = exact_worst_margin(net, nbhd.box(nbhd.eps_vector(eps)), target, 2)
        assert res.status == ("robust" if m < -ROBUST_TOLERANCE else "not_robust" if m >= 0 else "unknown")
        if res.status == "not_robust":
            assert res.margin >= 0 and nbhd.box(nbhd.eps_vector(eps)).contains(res.counterexample)
        assert res.size == pytest.approx(float(np.sum(nbhd.eps_vector(eps))))
        json.dumps(res.to_json())


def test_object_box_and_per_layer_count(case):
    net, image, target, _ = case
    res = mlrobust.check(net, image, target, 0.01, object_box=(0, 0, 2, 2), verifier=ExactLpVerifier())
    assert res.mask[:2, :2].all() and res.mask.sum() == 4
    assert list(res.layer_counts) == [4, 5, 7, 9]


def test_target_not_in_top_k_names_the_prediction(case):
    net, image, target, mask = case
    logits = net.logits(image[None])[0]
    worst = int(np.argmin(logits))
    with pytest.raises(InputError, match=r"not among the top-2 labels.*predicts \["):
        mlrobust.maximize(net, image, worst, object_mask=mask, verifier=ExactLpVerifier())


def test_bad_inputs_are_clear_errors(case, files, tmp_path):
    net, image, target, mask = case
    with pytest.raises(InputError, match="model expects 5x5"):
        mlrobust.maximize(net, np.zeros((6, 6)), target, object_mask=np.ones((6, 6)), verifier=ExactLpVerifier())
    write_image(tmp_path / "big.png", np.zeros((7, 7)))
    with pytest.raises(InputError, match="7x7 pixels"):
        mlrobust.check(files[0], tmp_path / "big.png", target, 0.1, object_mask=mask, verifier=ExactLpVerifier())
    with pytest.raises(ModelLoadError, match="does not exist"):
        mlrobust.maximize(tmp_path / "missing.onnx", image, target, object_mask=mask)
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(InputError, match="cannot read"):
        mlrobust.check(net, tmp_path / "junk.png", target, 0.1, object_mask=mask, verifier=ExactLpVerifier())
    with pytest.raises(InputError, match="search method"):
        mlrobust.maximize(net, image, target, object_mask=mask, method="random", verifier=ExactLpVerifier())
    with pytest.raises(InputError, match="cutting"):
        mlrobust.maximize(net, image, target, object_mask=mask, cutting="random", verifier=ExactLpVerifier())
    with pytest.raises(InputError, match="verify"):
        mlrobust.maximize(net, image, target, object_mask=mask, verifier=object())
    with pytest.raises(InputError, match="unknown verifier"):
        mlrobust.maximize(net, image, target, object_mask=mask, verifier="oracle")
    with pytest.raises(InputError, match="epsilons"):
        mlrobust.check(net, image, target, [0.1, 0.2], object_mask=mask, verifier=ExactLpVerifier())
    with pytest.raises(InputError, match="label"):
        mlrobust.check(net, image, 7, 0.1, object_mask=mask, verifier=ExactLpVerifier())
