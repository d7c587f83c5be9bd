"""Shared fixtures: one torch thread per test process (pytest -n 2 on 2 cores), the shared
CIFAR-10 copy, and tiny models."""
from pathlib import Path

import pytest
import torch

from zerograd import Hook

torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "cifar-10-batches-py" / "data_batch_1").is_file():
        pytest.skip("shared CIFAR-10 copy not found beside the project")
    return SHARED_DATA


class Linear2(torch.nn.Module):
    """f(x) = W x + b on flattened x: its optimal l_inf attack is known in closed form."""

    def __init__(self, d: int, classes: int = 2, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.fc = torch.nn.Linear(d, classes)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(classes, d, generator=g))
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(x.flatten(1))


@pytest.fixture
def tiny_cnn():
    torch.manual_seed(0)
    from zerograd.models import build_model

    return build_model("small_cnn", num_classes=10, in_channels=3, mean=(0.5,) * 3, std=(0.25,) * 3,
                       width=4)


class Crash(Exception):
    pass


class CrashAt(Hook):
    """Simulates a crash (the process dying) after `step` optimizer steps."""

    def __init__(self, step):
        self.step = step

    def on_step(self, state):
        if state.step == self.step:
            raise Crash
