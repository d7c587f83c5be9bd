"""Small networks for CPU runs, tests and the single-layer catastrophic-overfitting study.

`one_layer_cnn` and `mlp` flatten a feature map whose size depends on the input, so their
first linear layer is an `nn.LazyLinear`: its shape is fixed by the first forward pass.
Optimizers may be created before that pass (the parameter object is materialised in
place), and a state_dict loads into a fresh, not yet materialised copy.
"""
from __future__ import annotations

from torch import nn


def small_cnn(num_classes: int, in_channels: int, width: int = 32,
              batch_norm: bool = True) -> nn.Module:
    """Four 3x3 convs (w, 2w/2, 2w, 4w/2; /2 = stride 2), 2x2 adaptive pool, two linears.

    Downsamples only twice, so 8x8 digits keep a 2x2 map; ~0.26M parameters at width 32.
    """
    layers: list[nn.Module] = []
    c_in = in_channels
    for c_out, stride in [(width, 1), (2 * width, 2), (2 * width, 1), (4 * width, 2)]:
        layers.append(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(c_out))
        layers.append(nn.ReLU())
        c_in = c_out
    return nn.Sequential(
        *layers,
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * c_in, 2 * c_in),
        nn.ReLU(),
        nn.Linear(2 * c_in, num_classes),
    )


def one_layer_cnn(num_classes: int, in_channels: int, filters: int = 4,
                  kernel_size: int = 3) -> nn.Module:
    """conv(filters) - ReLU - linear on the whole flattened feature map.

    The single-layer CNN in which Andriushchenko & Flammarion (NeurIPS 2020, "Understanding
    and improving fast adversarial training", Sec. 4) show catastrophic overfitting with 4
    filters. Their code (tml-epfl/understanding-fast-adv-training, models.py `CNN` with
    n_conv=1) uses a 3x3 conv with stride 1, padding 1 and a bias, then ReLU, then a linear
    layer on all filters*H*W activations (no pooling); we use padding kernel_size // 2 so
    the default reproduces that and other odd sizes keep the map at HxW.
    """
    return nn.Sequential(
        nn.Conv2d(in_channels, filters, kernel_size, stride=1, padding=kernel_size // 2),
        nn.ReLU(),
        nn.Flatten(),
        nn.LazyLinear(num_classes),
    )


def mlp(num_classes: int, in_channels: int, hidden: int = 256, depth: int = 2) -> nn.Module:
    """Flatten, then `depth` hidden Linear-ReLU layers of size `hidden`, then a linear head.

    in_channels is unused: the input size is read on the first forward pass.
    """
    layers: list[nn.Module] = [nn.Flatten(), nn.LazyLinear(hidden), nn.ReLU()]
    for _ in range(depth - 1):
        layers += [nn.Linear(hidden, hidden), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(hidden, num_classes))
