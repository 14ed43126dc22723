"""A Keras-style CNN: NHWC input (8x8x3) that starts with Transpose(perm=[0, 3, 1, 2]), two convs, a dense head."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.onnx_patterns._common import export, label_properties

NAME = "nhwc_cnn"
EPSILONS = (0.001, 0.002, 0.0025, 0.003)


def build(out_dir: Path) -> list[tuple[Path, Path]]:
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
            self.fc = nn.Linear(8 * 4 * 4, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x.permute(0, 3, 1, 2)  # channels-last input, as Keras exports it
            x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
            return self.fc(x.flatten(1))

    torch.manual_seed(0)
    model = export(Net(), (8, 8, 3), out_dir / f"{NAME}.onnx")
    center = np.random.default_rng(0).uniform(0, 1, (8, 8, 3))
    return label_properties(model, center, out_dir, NAME, epsilons=EPSILONS)
