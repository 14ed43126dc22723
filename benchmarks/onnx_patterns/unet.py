"""A small U-Net segmenter (3 classes per pixel) without its ArgMax tail: Pad + AveragePool down, ConvTranspose up,
Concat of the skip connection; each property asks one pixel's class to stay."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.onnx_patterns._common import export, label_properties

NAME = "unet"
EPSILONS = (0.05, 0.13, 0.15, 0.16)
CLASSES, SIZE = 3, 8


def build(out_dir: Path) -> list[tuple[Path, Path]]:
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc = nn.Conv2d(1, 4, 3, padding=1)
            self.mid = nn.Conv2d(4, 8, 3, padding=1)
            self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)
            self.bn = nn.BatchNorm2d(4)
            self.head = nn.Conv2d(8, CLASSES, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            skip = torch.relu(self.enc(x))
            down = F.avg_pool2d(F.pad(skip, (1, 1, 1, 1)), 3, stride=2, padding=0)  # 8 -> 10 -> 4
            up = torch.relu(self.bn(self.up(torch.relu(self.mid(down)))))  # 4 -> 8
            return self.head(torch.cat([up, skip], dim=1))

    torch.manual_seed(3)
    net = Net()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.2, 0.2)
        net.bn.running_var.uniform_(0.5, 2.0)
    model = export(net, (1, SIZE, SIZE), out_dir / f"{NAME}.onnx")
    center = np.random.default_rng(3).uniform(0, 1, (1, SIZE, SIZE))
    pairs = []
    for y, x in ((2, 3), (5, 5)):
        pixel = y * SIZE + x
        group = [c * SIZE * SIZE + pixel for c in range(CLASSES)]  # flat indices of the pixel's class scores
        pairs += label_properties(model, center, out_dir, f"{NAME}_px{y}{x}", groups=[group],
                                  epsilons=EPSILONS)
    return pairs
