"""A conv net with an explicit Pad (constant 0) before each AveragePool, as some exporters write padded pooling."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.onnx_patterns._common import export, label_properties

NAME = "pad_avgpool"
EPSILONS = (0.02, 0.08, 0.1, 0.13)


def build(out_dir: Path) -> list[tuple[Path, Path]]:
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(1, 4, 3)
            self.conv2 = nn.Conv2d(4, 8, 3)
            self.fc = nn.Linear(8 * 2 * 2, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = F.avg_pool2d(F.pad(torch.relu(self.conv1(x)), (1, 1, 1, 1)), 2)  # 12 -> 10 -> 12 -> 6
            x = F.avg_pool2d(F.pad(torch.relu(self.conv2(x)), (0, 1, 0, 1)), 2)  # 6 -> 4 -> 5 -> 2
            return self.fc(x.flatten(1))

    torch.manual_seed(1)
    model = export(Net(), (1, 12, 12), out_dir / f"{NAME}.onnx")
    center = np.random.default_rng(1).uniform(0, 1, (1, 12, 12))
    return label_properties(model, center, out_dir, NAME, epsilons=EPSILONS)
