"""Pattern: fully connected networks with a smooth activation after every hidden layer (VNN-COMP's 6×200 Sigmoid
MNIST network and its Tanh relatives), trained here on a synthetic task so that nothing is downloaded.

- ``sigmoid_6x200``: 64 inputs in [0, 1] (an 8×8 "image"), six hidden layers of 200 with Sigmoid, 10 logits.
- ``tanh_3x100``: the same input, three hidden layers of 100 with Tanh, 10 logits.

Labels come from a fixed random linear teacher (argmax of ``W x + b``); each network is trained for a few hundred
Adam steps (seconds on one core). Properties: L∞ boxes (clipped to [0, 1]) of radius ε around test points the
network classifies correctly, counterexample region "another logit >= the true one" (top-1), at a small ε (CROWN
proves it), a large one (the attack refutes it) and one in between (CROWN's bound is open at 0.015 on all four
points and the attack finds nothing: the case for the MILP and branch and bound).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from benchmarks.vnncomp_models import export_onnx, topk_vnnlib

NAME = "smooth_mlp"

N_IN, N_CLASSES = 64, 10
NETWORKS = {"sigmoid_6x200": (nn.Sigmoid, (200,) * 6), "tanh_3x100": (nn.Tanh, (100,) * 3)}
#: Xavier gains that keep the signal alive through the depth (torch's default init leaves the deep Sigmoid network
#: at 30% accuracy after 1,200 steps; with gain 4 it reaches ~80% in 600).
GAINS = {nn.Sigmoid: 4.0, nn.Tanh: 5.0 / 3.0}
EPSILONS = (0.005, 0.015, 0.05)
POINTS = 2
SEED = 0


def _teacher_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(SEED)  # one teacher for every split
    w, b = rng.normal(size=(N_CLASSES, N_IN)), rng.normal(scale=0.5, size=N_CLASSES)
    x = np.random.default_rng(seed).uniform(0.0, 1.0, (n, N_IN))
    y = np.argmax((x - 0.5) @ w.T + b, axis=1)
    return torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y)


def _net(act: type[nn.Module], hidden: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    prev = N_IN
    for width in hidden:
        layers += [nn.Linear(prev, width), act()]
        prev = width
    layers.append(nn.Linear(prev, N_CLASSES))
    for layer in layers:
        if isinstance(layer, nn.Linear):
            nn.init.xavier_normal_(layer.weight, gain=GAINS[act])
            nn.init.zeros_(layer.bias)
    return nn.Sequential(*layers)


def train(act: type[nn.Module], hidden: tuple[int, ...], steps: int = 600) -> nn.Sequential:
    torch.manual_seed(SEED)
    model = _net(act, hidden)
    x, y = _teacher_data(4096, 1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(SEED)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (256,), generator=gen)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def build(out_dir: Path) -> list[tuple[Path, Path]]:
    """Train and export both networks into ``out_dir`` and write their properties; (onnx, vnnlib) pairs."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    x_test, y_test = _teacher_data(256, 2)
    pairs: list[tuple[Path, Path]] = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pairs = _build(out_dir, x_test, y_test)
    finally:
        torch.set_num_threads(threads)
    return pairs


def _build(out_dir: Path, x_test: torch.Tensor, y_test: torch.Tensor) -> list[tuple[Path, Path]]:
    pairs: list[tuple[Path, Path]] = []
    with torch.random.fork_rng():
        for name, (act, hidden) in NETWORKS.items():
            model = train(act, hidden)
            onnx_path = out_dir / f"{name}.onnx"
            export_onnx(model, N_IN, onnx_path)
            with torch.no_grad():
                correct = np.flatnonzero(model(x_test).argmax(1).numpy() == y_test.numpy())
            for i in correct[:POINTS]:
                centre = x_test[i].numpy().astype(np.float64)
                for eps in EPSILONS:
                    lower, upper = np.clip(centre - eps, 0.0, 1.0), np.clip(centre + eps, 0.0, 1.0)
                    text = topk_vnnlib(lower, upper, N_CLASSES, int(y_test[i]), 1,
                                       f"{name}: test point {i} (label {int(y_test[i])}), L-inf eps {eps}")
                    prop = out_dir / f"{name}_point{i}_eps{eps}.vnnlib"
                    prop.write_text(text)
                    pairs.append((onnx_path, prop))
    return pairs
