"""The scale ladder's shipped models (Triple-MNIST, RGB objects) and the code that trains them: the architectures the
ladder fixes, ONNX files that mlrobust reads as onnxruntime does, and example images whose predictions the manifest
states."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mlrobust import load_onnx
from mlrobust.neighborhood.image_io import load_image, read_mask
from mlrobust.verify.margin import topk_labels

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
LADDER = json.loads((EXAMPLES / "ladder.json").read_text())
METRICS = json.loads((EXAMPLES / "models" / "ladder_metrics.json").read_text())


def test_architectures_have_the_ladder_sizes():
    from mlrobust.training.ladder import RUNGS, build_network
    from mlrobust.training.model import num_parameters

    relus = {}
    for key, rung in RUNGS.items():
        model = build_network(rung)
        shapes = []
        x = torch.zeros((1,) + rung.input_shape)
        for conv in (model.conv1, model.conv2, model.conv3):
            x = torch.relu(conv(x))
            shapes.append(x.numel())
        assert model(torch.zeros((2,) + rung.input_shape)).shape == (2, 10)
        relus[key] = (sum(shapes), x.numel(), num_parameters(model))
    # Triple-MNIST: 14112 + 3136 + 1568 ReLUs, dense 1568 -> 10; RGB: 28800 + 3600 + 800, dense 800 -> 10.
    assert relus["triple-mnist"][:2] == (18816, 1568) and relus["rgb-objects"][:2] == (33200, 800)
    assert relus["triple-mnist"][2] == 25218


def test_topk_correct_uses_each_images_object_count():
    from mlrobust.training.ladder import topk_correct

    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0], [3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 2.0, 3.0]])
    labels = torch.tensor([[1.0, 1.0, 0, 0], [1.0, 1.0, 1.0, 0], [1.0, 1.0, 0, 0]])
    assert topk_correct(logits, labels).tolist() == [True, True, False]


def test_training_runs_and_learns_on_a_tiny_set():
    """A few steps on eight images lower the loss (the loop, schedule and uint8 scaling are wired right)."""
    from dataclasses import replace

    from mlrobust.training.ladder import RUNGS, train_rung

    rung = replace(RUNGS["triple-mnist"], epochs=8, batch_size=8, lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand((8, 1, 84, 84), generator=gen) * 255).to(torch.uint8)
    y = torch.zeros(8, 10)
    y[torch.arange(8), torch.arange(8)] = 1
    _, history = train_rung(rung, x, y, log=lambda s: None)
    assert history[-1]["loss"] < history[0]["loss"] and len(history) == 8


@pytest.mark.parametrize("entry", LADDER["images"], ids=[e["id"] for e in LADDER["images"]])
def test_shipped_examples_match_the_manifest(entry):
    import onnxruntime as ort

    info = METRICS["models"][entry["model"]]
    path = EXAMPLES / info["file"]
    network = load_onnx(path)
    shape = tuple(info["input_shape"])
    assert network.input_shape[1:] == shape
    image, _ = load_image(EXAMPLES / entry["file"], shape)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ort_logits = sess.run(None, {sess.get_inputs()[0].name: image[None].astype(np.float32)})[0][0]
    ir_logits = network.logits(image[None].astype(np.float64))[0]
    np.testing.assert_allclose(ir_logits, ort_logits, atol=1e-4)
    np.testing.assert_allclose(ir_logits, entry["prediction"]["logits"], atol=1e-4)
    # The example is classified right: its top-k (k = its object count) is exactly its digits.
    assert entry["k"] == len(entry["digits"]) and sorted(topk_labels(ir_logits, entry["k"])[0]) == sorted(entry["digits"])
    assert entry["target_label"] == entry["digits"][0]
    perturbed = read_mask(EXAMPLES / entry["mask"], shape[1:])
    target = read_mask(EXAMPLES / entry["target_mask"], shape[1:])
    assert perturbed.sum() > 20 and target.sum() > 20 and not np.any(perturbed & target)


def test_metrics_state_the_accuracy_of_each_shipped_model():
    for name, info in METRICS["models"].items():
        assert (EXAMPLES / info["file"]).is_file()
        assert 0.0 < info["test"]["exact_set_accuracy"] <= 1.0 and info["test"]["n"] >= 300
        assert any(e["model"] == name for e in LADDER["images"])
