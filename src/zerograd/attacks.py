"""Evaluation attacks on one batch: which samples stay correctly classified.

The model must already be in eval mode (see `runtime.eval_mode`). PGD reuses the
training implementation in `methods`, with early stopping per sample and restarts that
attack only the samples still robust, so each sample's worst case over restarts counts.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .methods import METHODS


@torch.no_grad()
def correct(model, x: Tensor, y: Tensor) -> Tensor:
    """Per-sample bool: the model classifies x correctly."""
    return model(x).argmax(1) == y


def pgd_robust(
    model, x: Tensor, y: Tensor, *, eps: float, alpha: float = 0.25, steps: int = 50,
    restarts: int = 10, robust: Tensor | None = None,
) -> Tensor:
    """Per-sample bool: still correct after PGD-`steps` with `restarts` random restarts
    (alpha in units of eps). `robust` limits the attack to samples not yet broken."""
    robust = correct(model, x, y) if robust is None else robust.clone()
    for _ in range(restarts):
        idx = robust.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        xi, yi = x[idx], y[idx]
        delta = METHODS["pgd"](model, xi, yi, eps=eps, alpha=alpha, steps=steps, random_init=True, early_stop=True)
        robust[idx] = correct(model, xi + delta, yi)
    return robust


def fgsm_robust(model, x: Tensor, y: Tensor, *, eps: float, robust: Tensor | None = None) -> Tensor:
    """Per-sample bool: still correct after FGSM with step eps from the clean point."""
    robust = correct(model, x, y) if robust is None else robust.clone()
    idx = robust.nonzero().squeeze(1)
    if idx.numel():
        delta = METHODS["fgsm"](model, x[idx], y[idx], eps=eps, alpha=1.0)
        robust[idx] = correct(model, x[idx] + delta, y[idx])
    return robust
