"""Wide ResNet (Zagoruyko & Komodakis 2016) as used by TRADES and Rice et al. 2020.

Pre-activation basic blocks; when a block changes shape, its 1x1 shortcut conv and its
first conv both take the pre-activated input. Bias-free convs, optional dropout between
the two convs of a block. Initialisation as in the common (TRADES) implementation:
kaiming normal (fan_out, ReLU) for convs, BN weight 1 / bias 0, linear bias 0.
The TRADES file also defines an unused `sub_block1` that never runs in forward; it is
left out here, so the parameter count is that of the network that actually computes.
Adaptive average pooling replaces the fixed 8x8 pool so inputs of any size >= 8 work.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError


class WideBasic(nn.Module):
    """BN-ReLU-conv3x3 (-dropout) -BN-ReLU-conv3x3 with an identity or 1x1-conv shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.dropout = dropout
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = F.relu(self.bn2(self.conv1(out)))
        out = F.dropout(out, p=self.dropout, training=self.training)
        return self.conv2(out) + shortcut


class WideResNet(nn.Module):
    """Stem conv (16 channels), three stages of n blocks (strides 1,2,2), BN-ReLU, pool, fc."""

    def __init__(self, depth: int, widen_factor: int, dropout: float,
                 num_classes: int, in_channels: int):
        super().__init__()
        n = (depth - 4) // 6
        channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, channels[0], 3, stride=1, padding=1, bias=False)
        stages = []
        for i, stride in enumerate([1, 2, 2]):
            blocks = [WideBasic(channels[i] if j == 0 else channels[i + 1], channels[i + 1],
                                stride if j == 0 else 1, dropout) for j in range(n)]
            stages.append(nn.Sequential(*blocks))
        self.layers = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(channels[3])
        self.fc = nn.Linear(channels[3], num_classes)
        # check_model_args builds on the meta device: no values to set, and normal_ is slow there.
        if not self.fc.weight.is_meta:
            self._init_weights()

    def _init_weights(self) -> None:
        """TRADES init: kaiming normal (fan_out) convs, BN weight 1 / bias 0, fc bias 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn(self.layers(self.conv1(x))))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


def wide_resnet(num_classes: int, in_channels: int, depth: int = 34, widen_factor: int = 10,
                dropout: float = 0.0) -> nn.Module:
    """WRN-depth-widen_factor; depth = 6n + 4 (n blocks per stage)."""
    if depth < 10 or (depth - 4) % 6:
        raise ConfigError(f"wide_resnet depth={depth} is invalid: depth must be 6n+4 with "
                          f"n >= 1, e.g. 10, 16, 22, 28, 34, 40")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"wide_resnet dropout={dropout} is invalid: must be in [0, 1)")
    return WideResNet(depth, widen_factor, dropout, num_classes, in_channels)
