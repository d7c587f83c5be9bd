"""Square Attack (Andriushchenko et al., ECCV 2020), l_inf, score-based and gradient-free.

Start from vertical stripes of +-eps; each query moves one random square window (side from the
p schedule) of one image to a random vertex (+-eps per channel) and keeps the change if the
margin loss z_y - max_{j!=y} z_j decreases or the point becomes misclassified. Positions and
signs are drawn per image and a window may start at any position, as in the paper (the
official AutoAttack code draws one per batch and never starts a window in the last row/column,
which makes it measurably weaker on tiny images such as 8x8 digits).
The p schedule is the unrescaled one AutoAttack uses (halving at 10, 50, 200, 500, ... queries).

Inputs of shape (N, C, *spatial) use C channels and hypercube windows over the spatial axes;
flat inputs (N, d) are one channel with windows that are segments.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ._common import (
    attack_remaining,
    check_data,
    check_eps,
    eval_mode,
    generator,
    margin,
    predict,
    random_signs,
)

# (last query index, divisor of p_init) for the AutoAttack schedule; beyond 8000 it is 512
P_SCHEDULE = ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64),
              (6000, 128), (8000, 256))


def p_at(i: int, p_init: float) -> float:
    """Fraction of pixels changed at query i."""
    for last, div in P_SCHEDULE:
        if i <= last:
            return p_init / div
    return p_init / 512


def _window_mask(n: int, spatial: tuple[int, ...], side: int, gen, device) -> Tensor:
    """(n, 1, *spatial) bool: one random hypercube window of the given side per image."""
    k = len(spatial)
    mask = torch.ones((n,) + (1,) * k, dtype=torch.bool, device=device)
    for j, size in enumerate(spatial):
        start = torch.randint(0, size - side + 1, (n, 1), generator=gen, device=device)
        pos = torch.arange(size, device=device)
        inside = (pos >= start) & (pos < start + side)
        shape = [n] + [1] * k
        shape[1 + j] = size
        mask = mask & inside.view(shape)
    return mask.unsqueeze(1)


def square_run(model, x: Tensor, y: Tensor, *, eps: float, n_queries: int, p_init: float,
               gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """One Square Attack run on every row of x (channels-first, >= 1 spatial axis)."""
    n, c, spatial = x.shape[0], x.shape[1], tuple(x.shape[2:])
    n_spatial = x[0, 0].numel()
    stripes = (n, c) + (1,) * (len(spatial) - 1) + (spatial[-1],)
    x_best = (x + eps * random_signs(stripes, gen, x)).clamp(0.0, 1.0)
    m_best = margin(predict(model, x_best), y)
    for i in range(n_queries):
        idx = (m_best > 0).nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        side = max(round((p_at(i, p_init) * n_spatial) ** (1 / len(spatial))), 1)
        side = min(side, min(spatial))
        window = _window_mask(len(idx), spatial, side, gen, x.device)
        vertex = x[idx] + eps * random_signs((len(idx), c) + (1,) * len(spatial), gen, x)
        x_new = torch.where(window, vertex, x_best[idx]).clamp(0.0, 1.0)
        m_new = margin(predict(model, x_new), y[idx])
        keep = (m_new < m_best[idx]) | (m_new <= 0)
        x_best[idx[keep]] = x_new[keep]
        m_best[idx[keep]] = m_new[keep]
    return m_best <= 0, x_best


def square(model, x: Tensor, y: Tensor, *, eps: float, seed: int = 0, n_queries: int = 5000,
           p_init: float = 0.8, n_restarts: int = 1) -> Tensor:
    """Square Attack with n_queries queries per point (after the initial one) per restart."""
    eps = check_eps(eps)
    check_data(x, y)
    if eps == 0 or n_queries < 0:
        return x.detach().clone()
    with eval_mode(model):
        gen = generator(seed, x.device)
        shaped = x.detach() if x.dim() > 2 else x.detach()[:, None]  # flat -> one channel
        flat_model = model if x.dim() > 2 else (lambda z: model(z[:, 0]))

        def run(idx, xs, ys):
            return square_run(flat_model, xs, ys, eps=eps, n_queries=n_queries, p_init=p_init,
                              gen=gen)

        x_adv = attack_remaining(flat_model, shaped, y, [run] * n_restarts)
        return x_adv.view_as(x)
