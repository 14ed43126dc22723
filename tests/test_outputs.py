"""Result files sized for real images: numbers in the JSON, arrays in one compressed side file, both read back by
``mlrobust.load_result`` (and JSON files written before side files still load)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_search_oracles import ExactLpVerifier, tiny_case

import mlrobust
from mlrobust.errors import InputError
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
    # Counterexamples are stored as their bits XOR the clean image's (zero where a pixel is unchanged).
    assert set(data["arrays"]["xor_keys"]) == {f"counterexample_layer{m.layer}" for m in refuted}
    raw = np.load(side)
    assert raw[data["arrays"]["xor_keys"][0]].dtype == np.uint64 and "clean_image" in raw.files
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
            np.testing.assert_array_equal(layer["counterexample"], m.counterexample)
    assert loaded["epsilons"] == pytest.approx(list(result.epsilons))


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
