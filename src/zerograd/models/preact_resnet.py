"""PreActResNet-18, the standard network of fast adversarial training.

Follows He et al. 2016 ("Identity Mappings in Deep Residual Networks") exactly as in the
code of Wong et al. 2020 ("Fast is better than free"), which later fast-AT papers reuse:
BN-ReLU-conv blocks, bias-free convs, a 1x1 conv shortcut when the shape changes, a final
BN-ReLU, and PyTorch's default initialisation. `shortcut="input"` (the default, so older
checkpoints keep their meaning) feeds that 1x1 conv the block's raw input, as Wong et al. do;
`shortcut="activated"` feeds it relu(bn1(x)), as the ZeroGrad paper's preactresnet.py (l.29-30)
and kuangliu/pytorch-cifar do. Both have the same parameters; they compute different functions.
That final BN is why the count is 11,172,170 and not the often-quoted 11,171,146 of the
kuangliu PreActResNet-18, which has none (512 weights + 512 biases).
The only change is adaptive average pooling instead of a fixed 4x4 pool, so any input of
at least 8x8 pixels works.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError


class PreActBlock(nn.Module):
    """Two 3x3 convs, each preceded by BN-ReLU, plus an identity or 1x1-conv shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, activated_shortcut: bool = False):
        super().__init__()
        self.activated_shortcut = activated_shortcut
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out if self.activated_shortcut else x)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    """Stem conv, four stages of PreActBlocks (strides 1,2,2,2), BN-ReLU, pool, linear."""

    def __init__(self, num_blocks: list[int], num_classes: int, in_channels: int, width: int,
                 activated_shortcut: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        stages, in_planes = [], width
        for i, n in enumerate(num_blocks):
            planes, stride = width * 2**i, 1 if i == 0 else 2
            blocks = []
            for s in [stride] + [1] * (n - 1):
                blocks.append(PreActBlock(in_planes, planes, s, activated_shortcut))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layers = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(in_planes)
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn(self.layers(self.conv1(x))))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


SHORTCUTS = ("input", "activated")


def preact_resnet18(num_classes: int, in_channels: int, width: int = 64,
                    shortcut: str = "input") -> nn.Module:
    """PreActResNet-18; `width` is the number of channels of the first stage (64 standard);
    `shortcut` what the 1x1 shortcut convs see: "input" (Wong et al.) or "activated" (the paper)."""
    if shortcut not in SHORTCUTS:
        raise ConfigError(f"model_args.shortcut={shortcut!r} is invalid: must be one of {', '.join(SHORTCUTS)}")
    return PreActResNet([2, 2, 2, 2], num_classes, in_channels, width, shortcut == "activated")
