"""Regularizers: loss terms the training objective adds to the loss on the perturbed batch,
each `term(model, x, y, *, eps, **hparams) -> scalar`."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .primitives import random_start


def grad_align(model, x: Tensor, y: Tensor, *, eps: float, lam: float = 0.2,
               backprop_clean: bool = False) -> Tensor:
    """GradAlign (Andriushchenko & Flammarion 2020): lam * (1 - mean cosine) between the
    input gradients at x and at a uniform random point of the eps-ball. The weights get the
    regularizer's gradient through the random point's input gradient (double backpropagation);
    the clean one is detached, as in the reference (its train.py:162), unless `backprop_clean`
    (then through both: one more double backward; its authors report no accuracy difference)."""
    g_clean = _input_grad(model, x, y, torch.zeros_like(x), graph=backprop_clean)
    g_rand = _input_grad(model, x, y, random_start(x, eps), graph=True)
    cos = F.cosine_similarity(g_clean.flatten(1), g_rand.flatten(1), dim=1)
    return lam * (1.0 - cos.mean())


def _input_grad(model, x: Tensor, y: Tensor, delta: Tensor, graph: bool) -> Tensor:
    """Input gradient; with `graph` it keeps its graph, so a loss on it reaches the weights."""
    delta = delta.detach().requires_grad_(True)
    loss = F.cross_entropy(model(x + delta).float(), y)
    (g,) = torch.autograd.grad(loss, delta, create_graph=graph)
    return g if graph else g.detach()
