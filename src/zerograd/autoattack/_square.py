"""Square Attack (Andriushchenko et al., ECCV 2020), l_inf, score-based and gradient-free.

Start from vertical stripes of +-eps; each query moves a random square window (side from the
p schedule) to a random vertex (+-eps per channel) and keeps the change if the margin loss
z_y - max_{j!=y} z_j decreases or the point becomes misclassified.

`windows="shared"` (the default, used by AutoAttack `standard`) is the official code point
for point (fra31/auto-attack, autoattack/square.py:234-261): ONE window position and ONE
per-channel sign per query, shared by every image still robust; a window starts at
0..h-s-1 (`random_int(0, h - s)`), never at the last position h-s unless s = h; and the same
random draws in the same order (stripes, then per query vh, vw, signs), so with the
same seed on the CPU both give the same points. `windows="per_image"` draws a position and
signs per image over all positions, as in the Square Attack paper: measurably stronger on tiny
images such as 8x8 digits, so not the standard one.
The p schedule is the unrescaled one AutoAttack uses (halving at 10, 50, 200, 500, ... queries).

Inputs of shape (N, C, *spatial) use C channels and hypercube windows over the spatial axes;
flat inputs (N, d) are one channel with windows that are segments.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import ConfigError
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


WINDOWS = ("shared", "per_image")


def _official_signs(shape, gen: torch.Generator, like: Tensor) -> Tensor:
    """+-1 drawn as the official `random_choice`: sign(2 U - 1), U from a CPU generator."""
    return torch.sign(2 * torch.rand(shape, generator=gen) - 1).to(like)


def _shared_window(spatial: tuple[int, ...], side: int, gen, device) -> Tensor:
    """(1, 1, *spatial) bool: one window for the whole batch, each start drawn as the official
    `random_int(0, size - side)`: floor((size - side) * U), U from a CPU generator."""
    mask = torch.ones((1, 1) + (1,) * len(spatial), dtype=torch.bool, device=device)
    for j, size in enumerate(spatial):
        start = int(((size - side) * torch.rand([1], generator=gen)).long())
        inside = torch.zeros(size, dtype=torch.bool, device=device)
        inside[start:start + side] = True
        shape = [1, 1] + [1] * len(spatial)
        shape[2 + j] = size
        mask = mask & inside.view(shape)
    return mask


def _side(p: float, spatial: tuple[int, ...]) -> int:
    """Window side for the fraction p of the spatial positions (the official rounding in 2-d)."""
    n_spatial = math.prod(spatial)
    root = math.sqrt(p * n_spatial) if len(spatial) == 2 else (p * n_spatial) ** (1 / len(spatial))
    return min(max(round(root), 1), min(spatial))


def square_run(model, x: Tensor, y: Tensor, *, eps: float, n_queries: int, p_init: float,
               gen: torch.Generator, windows: str = "shared") -> tuple[Tensor, Tensor]:
    """One Square Attack run on every row of x (channels-first, >= 1 spatial axis). With
    windows='shared', `gen` must be a CPU generator (the official draws)."""
    n, c, spatial = x.shape[0], x.shape[1], tuple(x.shape[2:])
    stripes = (n, c) + (1,) * (len(spatial) - 1) + (spatial[-1],)
    shared = windows == "shared"
    signs = _official_signs if shared else random_signs
    x_best = (x + eps * signs(stripes, gen, x)).clamp(0.0, 1.0)
    m_best = margin(predict(model, x_best), y)
    for i in range(n_queries):
        idx = (m_best > 0).nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        side = _side(p_at(i, p_init), spatial)
        if shared:
            window = _shared_window(spatial, side, gen, x.device)
            vertex = x[idx] + eps * _official_signs((1, c) + (1,) * len(spatial), gen, x)
        else:
            window = _window_mask(len(idx), spatial, side, gen, x.device)
            vertex = x[idx] + eps * random_signs((len(idx), c) + (1,) * len(spatial), gen, x)
        x_new = torch.where(window, vertex, x_best[idx]).clamp(0.0, 1.0)
        m_new = margin(predict(model, x_new), y[idx])
        keep = (m_new < m_best[idx]) | (m_new <= 0)
        x_best[idx[keep]] = x_new[keep]
        m_best[idx[keep]] = m_new[keep]
    return m_best <= 0, x_best


def square(model, x: Tensor, y: Tensor, *, eps: float, seed: int = 0, n_queries: int = 5000,
           p_init: float = 0.8, n_restarts: int = 1, windows: str = "shared") -> Tensor:
    """Square Attack with n_queries queries per point (after the initial one) per restart.
    windows: 'shared' (the official AutoAttack draws, the standard) or 'per_image'."""
    if windows not in WINDOWS:
        raise ConfigError(f"square windows={windows!r} is invalid: must be one of {', '.join(WINDOWS)}")
    eps = check_eps(eps)
    check_data(x, y)
    if eps == 0 or n_queries < 0:
        return x.detach().clone()
    with eval_mode(model):
        gen = generator(seed, torch.device("cpu") if windows == "shared" else x.device)
        shaped = x.detach() if x.dim() > 2 else x.detach()[:, None]  # flat -> one channel
        flat_model = model if x.dim() > 2 else (lambda z: model(z[:, 0]))

        def run(idx, xs, ys):
            return square_run(flat_model, xs, ys, eps=eps, n_queries=n_queries, p_init=p_init,
                              gen=gen, windows=windows)

        x_adv = attack_remaining(flat_model, shaped, y, [run] * n_restarts)
        return x_adv.view_as(x)
