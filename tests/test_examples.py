"""The shipped example models and images, and the training code that made them.

The models must load through mlrobust's ONNX import, compute what onnxruntime computes, and reproduce the
predictions and accuracy the manifest and metrics state on the shipped images.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mlrobust import load_onnx
from mlrobust.neighborhood import LayeredNeighborhood
from mlrobust.neighborhood.image_io import load_image, read_mask
from mlrobust.neighborhood.objects import check_object_mask
from mlrobust.verify.margin import topk_labels, topk_margin

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
MODEL_NAMES = ("mnist2_nodefense", "mnist2_l0", "mnist2_pgd")


@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads((EXAMPLES / "manifest.json").read_text())


@pytest.fixture(scope="module")
def metrics() -> dict:
    return json.loads((EXAMPLES / "models" / "metrics.json").read_text())


@pytest.fixture(scope="module")
def images(manifest) -> np.ndarray:
    return np.stack([load_image(EXAMPLES / e["file"], (1, 64, 64))[0] for e in manifest["images"]])


@pytest.fixture(scope="module")
def networks() -> dict:
    return {name: load_onnx(EXAMPLES / "models" / f"{name}.onnx") for name in MODEL_NAMES}


def _ort_logits(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.astype(np.float32)})[0]


def test_manifest_describes_the_images(manifest, images):
    entries = manifest["images"]
    assert 15 <= len(entries) <= 30 and manifest["k"] == 2 and manifest["all_models_correct"] is True
    assert sorted(manifest["models"]) == sorted(MODEL_NAMES)
    assert images.shape == (len(entries), 1, 64, 64)
    assert len({e["file"] for e in entries}) == len(entries)
    for e, img in zip(entries, images):
        a, b = e["digits"]
        assert a != b
        assert e["labels"] == [int(d in (a, b)) for d in range(10)]
        assert {e["target"]["side"], e["perturbed"]["side"]} == {"left", "right"}
        assert e["target_label"] == e["target"]["digit"] == e["digits"][("left", "right").index(e["target"]["side"])]
        assert e["perturbed"]["digit"] == e["digits"][("left", "right").index(e["perturbed"]["side"])]
        perturbed = read_mask(EXAMPLES / e["mask"], (64, 64))
        target = read_mask(EXAMPLES / e["target_mask"], (64, 64))
        check_object_mask(perturbed, (64, 64), target_mask=target)  # no error, no whole-target overlap
        # Each mask is exactly one digit's ink: inside its own 32-pixel slot, non-zero in the image, and the two
        # masks together are all the ink.
        cols = np.nonzero(perturbed.any(axis=0))[0]
        assert (cols.max() < 32) if e["perturbed"]["side"] == "left" else (cols.min() >= 32)
        assert not np.any(perturbed & target)
        np.testing.assert_array_equal(perturbed | target, img[0] > 0)


def test_models_load_and_match_onnxruntime(networks, images):
    for name, net in networks.items():
        assert net.sample_shape == (1, 64, 64) and net.num_classes == 10
        ours = net.logits(images)
        ort = _ort_logits(EXAMPLES / "models" / f"{name}.onnx", images)
        np.testing.assert_allclose(ours, ort, atol=1e-4, rtol=0)


def test_models_reproduce_stated_predictions(networks, images, manifest, metrics):
    for name, net in networks.items():
        logits = net.logits(images)
        top2 = topk_labels(logits, 2)
        for e, row, z in zip(manifest["images"], top2, logits):
            stated = e["predictions"][name]
            assert row == stated["topk"]
            np.testing.assert_allclose(z, stated["logits"], atol=1e-4)
            assert sorted(row) == sorted(e["digits"])
            # The target is in the top-2 on the clean image: the verification question is well posed.
            assert topk_margin(z[None], e["target_label"], 2)[0] < 0
        shipped = metrics["models"][name]["shipped_images"]
        assert shipped["n"] == len(images)
        correct = np.mean([sorted(r) == sorted(e["digits"]) for r, e in zip(top2, manifest["images"])])
        assert correct == pytest.approx(shipped["exact_set_accuracy"]) == 1.0


def test_metrics_are_complete(metrics):
    for name in MODEL_NAMES:
        m = metrics["models"][name]
        assert m["parameters"] == 3818
        test = m["test"]
        assert test["n"] == metrics["dataset"]["test_images"]
        assert 0.0 < test["exact_set_accuracy"] <= 1.0
        assert len(test["per_label_recall"]) == 10
        acc = test["pgd"]["accuracy"]
        assert set(acc) >= {"0.01", "0.03", "0.05", "0.1"}
        # A larger radius can only make the attack stronger (same start points and steps are not shared, so allow
        # the noise of the attack itself).
        values = [acc[k] for k in ("0.01", "0.03", "0.05", "0.1")]
        assert all(b <= a + 0.02 for a, b in zip(values, values[1:]))
        assert values[0] <= test["exact_set_accuracy"] + 1e-9
    train = {name: metrics["models"][name]["train"] for name in MODEL_NAMES}
    assert train["mnist2_nodefense"]["defense"] == "none"
    assert train["mnist2_l0"]["defense"] == "l0"
    assert train["mnist2_pgd"]["defense"] == "pgd" and train["mnist2_pgd"]["pgd_eps"] > 0


def test_shipped_example_makes_a_neighborhood(networks, manifest):
    e = manifest["images"][0]
    net = networks["mnist2_nodefense"]
    image, _ = load_image(EXAMPLES / e["file"], net.sample_shape)
    nb = LayeredNeighborhood.build(image, read_mask(EXAMPLES / e["mask"], (64, 64)), net.sample_shape)
    assert nb.box(np.zeros(nb.num_layers)).contains(image)
    assert nb.counts[0] == read_mask(EXAMPLES / e["mask"]).sum()


# --- the training code --------------------------------------------------------------------------------------------
def test_architecture_and_export(tmp_path):
    from mlrobust.training.export import export_onnx, onnx_logits
    from mlrobust.training.model import build_model, num_parameters

    model = build_model(7)
    assert num_parameters(model) == 3818
    x = np.random.default_rng(0).random((5, 1, 64, 64)).astype(np.float32)
    path = export_onnx(model, tmp_path / "m.onnx", check_inputs=x)
    net = load_onnx(path)
    np.testing.assert_allclose(net.logits(x), onnx_logits(path, x), atol=1e-5)
    kinds = [n.kind for n in net.nodes]
    assert kinds.count("Conv2d") == 2 and kinds.count("MaxPool2d") == 1 and kinds.count("Dense") == 1
    # The same seed gives the same initial weights.
    for a, b in zip(build_model(7).parameters(), model.parameters()):
        assert torch.equal(a, b)


def test_black_rectangles():
    from mlrobust.training.defenses import black_rectangles

    gen = torch.Generator().manual_seed(0)
    x = torch.ones(200, 1, 64, 64)
    out = black_rectangles(x, gen, 4, 16)
    for img in out[:, 0]:
        rows = torch.nonzero((img == 0).any(dim=1)).flatten()
        cols = torch.nonzero((img == 0).any(dim=0)).flatten()
        h, w = len(rows), len(cols)
        assert 4 <= h <= 16 and 4 <= w <= 16
        assert int((img == 0).sum()) == h * w  # one solid rectangle
        assert rows.max() - rows.min() + 1 == h and cols.max() - cols.min() + 1 == w
    assert torch.equal(x, torch.ones_like(x))  # the input is not modified


def test_pgd_stays_in_the_ball_and_raises_the_loss():
    from mlrobust.training.defenses import pgd_bce
    from mlrobust.training.evaluate import pgd_set_attack, set_margin
    from mlrobust.training.model import build_model

    torch.manual_seed(0)
    model = build_model(1).eval()
    x = torch.rand(16, 1, 64, 64)
    y = torch.zeros(16, 10)
    y[:, 2] = y[:, 5] = 1
    gen = torch.Generator().manual_seed(0)
    adv = pgd_bce(model, x, y, 0.05, 5, 0.02, gen)
    assert float((adv - x).abs().max()) <= 0.05 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    with torch.no_grad():
        assert bce(model(adv), y) > bce(model(x), y)
    # With a zero radius the attack breaks exactly the images that are wrong already.
    with torch.no_grad():
        wrong = set_margin(model(x), y) >= 0
    assert torch.equal(pgd_set_attack(model, x, y, 0.0, steps=3), wrong)


def test_training_is_reproducible():
    from mlrobust.training.train import TrainConfig, train

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(32, 1, 64, 64, generator=gen)
    y = torch.zeros(32, 10)
    y[torch.arange(32), torch.arange(32) % 10] = 1
    y[torch.arange(32), (torch.arange(32) + 3) % 10] = 1
    for defense in ("none", "l0", "pgd"):
        config = TrainConfig(defense=defense, epochs=1, batch_size=16, seed=3, pgd_steps=2)
        a, ha = train(x, y, config, log=lambda s: None)
        b, hb = train(x, y, config, log=lambda s: None)
        assert ha[0]["loss"] == hb[0]["loss"]
        for pa, pb in zip(a.parameters(), b.parameters()):
            assert torch.equal(pa, pb)


def test_example_selection_prefers_new_digit_pairs():
    from mlrobust.data.double_mnist import DoubleMnist
    from mlrobust.training.examples import select_examples

    n = 50
    digits = np.array([[i % 3, 3 + (i % 2)] for i in range(n)], dtype=np.uint8)
    data = DoubleMnist(
        images=np.zeros((n, 64, 64), np.uint8), labels=np.zeros((n, 10), np.uint8), digits=digits,
        masks=np.zeros((n, 2, 64, 64), bool), positions=np.zeros((n, 2, 2), np.int16),
        source=np.zeros((n, 2), np.int32),
    )
    correct = np.arange(n) % 5 != 0
    chosen = select_examples(data, correct, n=10, seed=1)
    assert len(chosen) == len(set(chosen)) == 10 and all(correct[chosen])
    first = {tuple(sorted(digits[i])) for i in chosen[:6]}
    assert len(first) == 6  # the six distinct pairs come first
