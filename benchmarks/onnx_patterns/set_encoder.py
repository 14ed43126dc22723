"""A set encoder: one input vector packs five set elements and a query; Slice and Split take them apart, a shared
MLP encodes each element, Concat stacks them, ReduceSum pools them, and a head reads the pool and the query."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.onnx_patterns._common import export, label_properties

NAME = "set_encoder"
EPSILONS = (0.01, 0.03, 0.035, 0.04)
ELEMENTS, FEATURES, QUERY = 5, 4, 3


def build(out_dir: Path) -> list[tuple[Path, Path]]:
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.phi = nn.Linear(FEATURES, 16)
            self.rho = nn.Linear(16 + QUERY, 16)
            self.out = nn.Linear(16, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            elements = torch.split(x[:, :ELEMENTS * FEATURES], FEATURES, dim=1)
            query = x[:, ELEMENTS * FEATURES:]
            encoded = torch.cat([torch.relu(self.phi(e)).unsqueeze(1) for e in elements], dim=1)
            pooled = encoded.sum(dim=1)
            return self.out(torch.relu(self.rho(torch.cat([pooled, query], dim=1))))

    torch.manual_seed(2)
    model = export(Net(), (ELEMENTS * FEATURES + QUERY,), out_dir / f"{NAME}.onnx")
    center = np.random.default_rng(2).uniform(0, 1, ELEMENTS * FEATURES + QUERY)
    return label_properties(model, center, out_dir, NAME, epsilons=EPSILONS)
