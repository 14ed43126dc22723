"""The reference experiment's classifier: 2 convolutions, 1 max-pool, 1 fully connected layer (4,106 parameters)."""

from __future__ import annotations

import torch
from torch import nn

INPUT_SHAPE = (1, 64, 64)
NUM_LABELS = 10


class DoubleMnistNet(nn.Module):
    """Input (N, 1, 64, 64) in [0, 1] -> 10 logits, one per digit (multi-label: the prediction is the top-2 set).

    Conv(1->8, k3, s2, p1), ReLU, Conv(8->16, k3, s2, p1), ReLU, MaxPool(4, stride 4), flatten (256), Linear(256->10).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, kernel_size=3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(8, 16, kernel_size=3, stride=2, padding=1)
        self.pool = nn.MaxPool2d(kernel_size=4, stride=4)
        self.fc = nn.Linear(256, NUM_LABELS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        x = self.pool(x)
        return self.fc(torch.flatten(x, 1))


def build_model(seed: int) -> DoubleMnistNet:
    """A freshly initialised network; the same seed gives the same weights.

    The convolutions get He (Kaiming) normal weights and a small positive bias: with PyTorch's default
    initialisation two of the sixteen conv2 channels died (never active) during training and learning was slower.
    """
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = DoubleMnistNet()
    for conv in (model.conv1, model.conv2):
        nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
        nn.init.constant_(conv.bias, 0.05)
    torch.random.set_rng_state(gen_state)
    return model


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
