"""The development-set defenses (TRADES, weight decay) and the development-set builder, on tiny data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mlrobust.data.double_mnist import build_double_mnist, save_npz
from mlrobust.training.defenses import trades_adversary, trades_loss
from mlrobust.training.model import build_model
from mlrobust.training.train import DEFENSES, TrainConfig, config_dict, train

bce = torch.nn.functional.binary_cross_entropy_with_logits


def _tiny_labels(n: int) -> torch.Tensor:
    y = torch.zeros(n, 10)
    y[torch.arange(n), torch.arange(n) % 10] = 1
    y[torch.arange(n), (torch.arange(n) + 3) % 10] = 1
    return y


def test_trades_adversary_stays_in_the_ball_and_moves_the_prediction():
    torch.manual_seed(0)
    model = build_model(1).eval()
    x = torch.rand(12, 1, 64, 64)
    adv = trades_adversary(model, x, 0.05, 5, 0.02, torch.Generator().manual_seed(0))
    assert float((adv - x).abs().max()) <= 0.05 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    with torch.no_grad():
        clean, moved = model(x), model(adv)
        near = model((x + 1e-3).clamp(0, 1))
    y = _tiny_labels(12)
    # the divergence term is what the adversary raises: far above that of a tiny uniform shift
    assert float(trades_loss(clean, moved, y, 1.0) - bce(clean, y)) > 10 * float(trades_loss(clean, near, y, 1.0)
                                                                               - bce(clean, y))


def test_trades_loss_is_the_clean_loss_plus_a_nonnegative_divergence():
    rng = torch.Generator().manual_seed(0)
    clean = torch.randn(20, 10, generator=rng)
    adv = clean + torch.randn(20, 10, generator=rng)
    y = _tiny_labels(20)
    assert float(trades_loss(clean, clean, y, 6.0)) == pytest.approx(float(bce(clean, y)), abs=1e-6)
    assert float(trades_loss(clean, adv, y, 6.0)) > float(bce(clean, y))
    assert float(trades_loss(clean, adv, y, 2.0) - bce(clean, y)) == pytest.approx(
        float(trades_loss(clean, adv, y, 1.0) - bce(clean, y)) * 2, rel=1e-5)


def test_trades_and_weight_decay_train_reproducibly():
    assert "trades" in DEFENSES
    x = torch.rand(16, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    y = _tiny_labels(16)
    for config in (TrainConfig(defense="trades", epochs=1, batch_size=8, seed=3, pgd_steps=2, trades_beta=3.0),
                   TrainConfig(defense="none", epochs=1, batch_size=8, seed=3, weight_decay=0.1)):
        a, ha = train(x, y, config, log=lambda s: None)
        b, hb = train(x, y, config, log=lambda s: None)
        assert ha[0]["loss"] == hb[0]["loss"]
        assert all(torch.equal(pa, pb) for pa, pb in zip(a.parameters(), b.parameters()))
    # weight decay shrinks the weights against the same run without it
    plain, _ = train(x, y, TrainConfig(defense="none", epochs=1, batch_size=8, seed=3), log=lambda s: None)
    decayed, _ = train(x, y, TrainConfig(defense="none", epochs=1, batch_size=8, seed=3, weight_decay=1.0),
                       log=lambda s: None)
    assert float(decayed.fc.weight.detach().norm()) < float(plain.fc.weight.detach().norm())


def test_config_dict_names_the_defense_settings():
    assert config_dict(TrainConfig(defense="trades"))["trades_beta"] == 6.0
    assert "pgd_eps" in config_dict(TrainConfig(defense="trades"))
    assert "trades_beta" not in config_dict(TrainConfig(defense="pgd"))
    assert "weight_decay" not in config_dict(TrainConfig())
    assert config_dict(TrainConfig(weight_decay=1e-3))["weight_decay"] == 1e-3


def test_devset_builder_writes_models_and_manifest(tmp_path, monkeypatch):
    from mlrobust import load_onnx
    from mlrobust.training import devset

    rng = np.random.default_rng(0)
    digits = rng.integers(0, 256, (40, 28, 28)).astype(np.uint8)
    labels = np.arange(40) % 10
    sets = {split: build_double_mnist(digits, labels, 24, seed=1, split=split) for split in ("train", "test")}
    data = save_npz(tmp_path / "dm.npz", sets)
    monkeypatch.setattr(devset, "DEVSET", {
        "a": TrainConfig(defense="none", epochs=1, seed=3),
        "b": TrainConfig(defense="trades", epochs=1, seed=4, pgd_steps=1, warm_start="a"),
    })
    manifest = devset.build(data, tmp_path / "out", tmp_path / "work", ["b"], attack_n=8, log=lambda s: None)
    assert set(manifest["models"]) == {"b"}  # "a" was trained only as b's warm start
    entry = manifest["models"]["b"]
    assert entry["defense"] == "trades" and entry["seed"] == 4 and entry["train"]["images"] == 24
    assert 0.0 <= entry["exact_set_accuracy"] <= 1.0 and entry["ir_vs_onnxruntime_max_abs_diff"] < 1e-4
    assert json.loads((tmp_path / "out" / "manifest.json").read_text()) == manifest
    assert load_onnx(tmp_path / "out" / "b.onnx").num_classes == 10
    # a later build of another model adds to the manifest, reusing the stored state dicts
    again = devset.build(data, tmp_path / "out", tmp_path / "work", ["a"], attack_n=8, reuse=True, log=lambda s: None)
    assert set(again["models"]) == {"a", "b"} and again["models"]["b"] == entry
    assert devset.main(["--data", str(data), "--models", "nope"]) == 2
