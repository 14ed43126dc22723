"""``--device``: the α/β engine's tensors on a torch device. CPU is the default; asking for cuda where torch sees no
GPU is a one-line input error (exit 2); under a device mode the bounds are the ones computed without it."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pytest
import torch
from ir_factories import random_box, random_cnn
from test_cli_errors import cli, one_error_line
from test_verify_cli import files  # noqa: F401  (the module-scoped fixture: a tiny model, image and mask)

from mlrobust.bounds import alpha_crown
from mlrobust.bounds.alpha_crown import AlphaOptions, alpha_bounds, bounds_at, initial_domain
from mlrobust.errors import InputError
from mlrobust.verify.bab import BabOptions, BabVerifier
from mlrobust.verify.spec import Box


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_cuda_without_a_gpu_is_a_one_line_error_on_both_commands(capsys, files, tmp_path, no_gpu):  # noqa: F811
    code, _, err = cli(capsys, "verify", files["model"], files["image"], "--target", files["target"],
                       "--object-mask", files["mask"], "--verifier", "bab", "--eps", "0.01", "--device", "cuda")
    assert code == 2 and "torch sees no GPU" in one_error_line(err)
    prop = tmp_path / "p.vnnlib"
    prop.write_text("(declare-const X_0 Real)\n")
    code, _, err = cli(capsys, "vnnlib", files["model"], prop, "--verifier", "bab", "--device", "cuda")
    assert code == 2 and "torch sees no GPU" in one_error_line(err)
    code, _, err = cli(capsys, "vnnlib", files["model"], prop, "--device", "tpu")
    assert code == 2 and "unknown device 'tpu'" in one_error_line(err)


def test_the_api_checks_the_device_before_any_work(no_gpu):
    with pytest.raises(InputError, match="no GPU"):
        BabOptions(device="cuda")
    with pytest.raises(InputError, match="unknown device"):
        BabVerifier(device="gpu0")
    net = random_cnn(3)
    lo, hi = random_box(net, 3, 0.1)
    with pytest.raises(InputError, match="no GPU"):
        alpha_bounds(net, initial_domain(net, lo, hi), np.eye(net.num_classes), options=AlphaOptions(device="cuda"))


def test_bounds_under_a_device_mode_equal_the_plain_cpu_ones(monkeypatch):
    """The α/β passes with every tensor made under ``torch.device("cpu")`` (what ``cuda`` does on a GPU: factory
    calls follow the mode, results come back through ``.cpu()``) give the same bounds, bit for bit, as without it."""
    net = random_cnn(12)  # a query the root leaves open (tests/test_bab.py)
    lo, hi = random_box(net, 12, 0.4)
    dom = initial_domain(net, lo, hi)
    coeffs = np.random.default_rng(7).normal(size=(3, net.num_classes))
    options = AlphaOptions(iterations=5, device="cpu")
    plain = alpha_bounds(net, dom, coeffs, options=options)
    plain_at = bounds_at(net, dom, coeffs, plain.state, device="cpu")
    box = Box(lo, hi)
    target = int(np.argmax(net.logits(box.center[None])[0]))
    plain_bab = BabVerifier(root_attack=False, max_domains=40, device="cpu").verify(net, box, target, 2)
    entered = []

    @contextmanager
    def forced(name):
        entered.append(name)
        with torch.device(name):
            yield

    monkeypatch.setattr(alpha_crown, "torch_device", forced)
    moded = alpha_bounds(net, dom, coeffs, options=options)
    assert entered  # the mode was on
    assert np.array_equal(moded.lower, plain.lower) and np.array_equal(moded.crown_lower, plain.crown_lower)
    assert np.array_equal(bounds_at(net, dom, coeffs, moded.state, device="cpu"), plain_at)
    moded_bab = BabVerifier(root_attack=False, max_domains=40, device="cpu").verify(net, box, target, 2)
    assert type(moded_bab) is type(plain_bab) and plain_bab.stats["bab"]["domains"] > 1
    assert moded_bab.stats["bab"]["domains"] == plain_bab.stats["bab"]["domains"]
    assert moded_bab.stats["bab"]["final_bound"] == plain_bab.stats["bab"]["final_bound"]
