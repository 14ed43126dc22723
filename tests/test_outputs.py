"""Result files sized for real images: numbers in the JSON, arrays in one compressed side file, both read back by
``mlrobust.load_result`` (and JSON files written before side files still load)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_search_oracles import ExactLpVerifier, tiny_case

import mlrobust
from mlrobust.errors import InputError
from mlrobust.neighborhood.layers import layer_index
from mlrobust.search import outputs
from mlrobust.search.outputs import side_file_path


@pytest.fixture(scope="module")
def case():
    return tiny_case(6, hidden=3, classes=3)


@pytest.fixture(scope="module")
def result(case):
    net, image, target, mask = case
    return mlrobust.maximize(net, image, target, object_mask=mask, verifier=ExactLpVerifier(), delta=0.01,
                             time_limit=60)


def test_search_result_arrays_go_to_the_side_file(result, tmp_path):
    refuted = [m for m in result.maximality if m.counterexample is not None]
    assert refuted, "the tiny case refutes some layer, so there are counterexamples to store"
    side = result.write_json(tmp_path / "r.json")
    assert side == tmp_path / "r.npz" and side.is_file()
    text = (tmp_path / "r.json").read_text()
    data = json.loads(text)
    # The JSON names the side file and holds no image: every array is a reference.
    assert data["arrays"]["file"] == "r.npz"
    assert data["object"]["mask"] == {"array": "object_mask"}
    # Counterexamples are stored coded against the clean image: an int8 code per pixel and a few numbers.
    keys = {f"counterexample_layer{m.layer}" for m in refuted}
    assert set(data["arrays"]["corner_keys"]) == keys and "xor_keys" not in data["arrays"]
    assert data["arrays"]["encoding"] == "corner/1"
    raw = np.load(side)
    assert {"clean_image", "counterexample_groups"} <= set(raw.files)
    for key in keys:
        assert key not in raw.files and raw[f"{key}.codes"].dtype == np.int8
        assert raw[f"{key}.codes"].shape == result.image.shape
    np.testing.assert_array_equal(raw["counterexample_groups"], layer_index(result.mask))
    for layer in data["maximality"]:
        assert layer["counterexample"] in (None, {"array": f"counterexample_layer{layer['layer']}"})
    loaded = mlrobust.load_result(tmp_path / "r.json")
    np.testing.assert_array_equal(loaded["object"]["mask"], result.mask)
    np.testing.assert_array_equal(np.load(side)["eps_map"], result.eps_map)
    for m, layer in zip(result.maximality, loaded["maximality"]):
        if m.counterexample is None:
            assert layer["counterexample"] is None
        else:  # bit for bit: the stored counterexample re-runs exactly as found
            assert layer["counterexample"].dtype == np.float64
            np.testing.assert_array_equal(layer["counterexample"].view(np.uint64), m.counterexample.view(np.uint64))
    assert loaded["epsilons"] == pytest.approx(list(result.epsilons))


def test_xor_coded_side_file_still_loads(result, tmp_path, monkeypatch):
    # the layout before the corner code (and the one a counterexample of mostly exceptions still gets)
    monkeypatch.setattr(outputs, "MAX_EXCEPTION_SHARE", -1.0)
    result.write_json(tmp_path / "x.json")
    data = json.loads((tmp_path / "x.json").read_text())
    assert data["arrays"]["xor_keys"] and "corner_keys" not in data["arrays"]
    assert np.load(tmp_path / "x.npz")[data["arrays"]["xor_keys"][0]].dtype == np.uint64
    loaded = mlrobust.load_result(tmp_path / "x.json")
    for m, layer in zip(result.maximality, loaded["maximality"]):
        if m.counterexample is not None:
            np.testing.assert_array_equal(layer["counterexample"].view(np.uint64), m.counterexample.view(np.uint64))


def test_side_file_missing_a_code_part_is_an_input_error(result, tmp_path):
    result.write_json(tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text())
    key = next(iter(data["arrays"]["corner_keys"]))
    with np.load(tmp_path / "r.npz") as z:
        kept = {k: z[k] for k in z.files if k != f"{key}.offsets"}
    np.savez_compressed(tmp_path / "r.npz", **kept)
    with pytest.raises(InputError, match=key):
        mlrobust.load_result(tmp_path / "r.json")


def test_old_json_without_side_file_still_loads(result, tmp_path):
    old = tmp_path / "old.json"
    old.write_text(json.dumps(result.to_json()))  # the layout before side files: arrays as JSON lists
    loaded = mlrobust.load_result(old)
    np.testing.assert_array_equal(loaded["object"]["mask"].astype(bool), result.mask)
    for m, layer in zip(result.maximality, loaded["maximality"]):
        if m.counterexample is not None:
            np.testing.assert_array_equal(layer["counterexample"], m.counterexample)


def test_check_result_side_file_and_errors(case, tmp_path):
    net, image, target, mask = case
    res = mlrobust.check(net, image, target, 0.9, object_mask=mask, verifier=ExactLpVerifier())
    assert res.status == "not_robust"
    res.write_json(tmp_path / "c.json")
    data = json.loads((tmp_path / "c.json").read_text())
    assert data["counterexample"] == {"array": "counterexample"} and data["mask"] == {"array": "mask"}
    loaded = mlrobust.load_result(tmp_path / "c.json")
    np.testing.assert_array_equal(loaded["counterexample"], res.counterexample)
    assert side_file_path(tmp_path / "c.json") == tmp_path / "c.npz"
    (tmp_path / "c.npz").unlink()
    with pytest.raises(InputError, match="side file"):
        mlrobust.load_result(tmp_path / "c.json")
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(InputError, match="not a result JSON"):
        mlrobust.load_result(tmp_path / "bad.json")


def test_counterexamples_past_the_budget_are_left_out_nearest_layers_kept(result, tmp_path, monkeypatch):
    refuted = sorted(m.layer for m in result.maximality if m.counterexample is not None)
    assert len(refuted) >= 2, "the tiny case refutes several layers"
    # a budget smaller than any counterexample: the nearest refuted layer's is still kept, every other one goes
    monkeypatch.setattr(outputs, "COUNTEREXAMPLE_BUDGET_BYTES", 1)
    result.write_json(tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text())
    kept = {f"counterexample_layer{refuted[0]}"}
    assert set(data["arrays"]["corner_keys"]) == kept
    assert data["arrays"]["omitted"] == [f"counterexample_layer{d}" for d in refuted[1:]]
    by_layer = {layer["layer"]: layer for layer in data["maximality"]}
    for d in refuted[1:]:
        assert by_layer[d]["counterexample"] is None and "budget" in by_layer[d]["counterexample_omitted"]
        assert by_layer[d]["refuted_eps"] is not None  # the number stays: only the image is not kept
    loaded = mlrobust.load_result(tmp_path / "r.json")
    first = next(m for m in result.maximality if m.layer == refuted[0])
    got = next(layer for layer in loaded["maximality"] if layer["layer"] == refuted[0])
    assert got["counterexample"].view(np.uint64).tolist() == np.asarray(first.counterexample).view(np.uint64).tolist()
    assert all(layer["counterexample"] is None for layer in loaded["maximality"] if layer["layer"] in refuted[1:])
