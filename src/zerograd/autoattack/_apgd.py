"""APGD (Croce & Hein, ICML 2020) for l_inf: one core, three losses (CE, DLR, targeted DLR).

The core follows Algorithm 1 of the paper and the choices of the official code
(fra31/auto-attack) where the paper leaves room: random start on the eps-sphere, first step
without momentum, the oscillation test `count <= rho * window`, and the returned point is the
last misclassified iterate. The first window's count includes the step from the start point
(the paper's sum over i = w_0 .. w_1 - 1; the official code compares with a zero there).
EOT (rand version) averages the gradient and the loss over eot_iter forward passes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ._common import (
    attack_in_rounds,
    linf_sphere_noise,
    loss_and_grad,
    margin,
    project,
)

ALPHA = 0.75  # momentum weight of the new step (the paper's alpha)


# --------------------------------------------------------------------------- losses


def dlr_loss(logits: Tensor, y: Tensor) -> Tensor:
    """-(z_y - max_{i!=y} z_i) / (z_pi1 - z_pi3): shift and scale invariant margin.

    With fewer than 3 classes the denominator does not exist; the plain margin is used."""
    num = margin(logits, y)
    if logits.shape[1] < 3:
        return -num
    top = logits.topk(3, dim=1).values
    return -num / (top[:, 0] - top[:, 2] + 1e-12)


def dlr_targeted_loss(logits: Tensor, y: Tensor, target: Tensor) -> Tensor:
    """-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2), maximised to reach class t.

    With fewer than 4 classes the denominator does not exist; the plain difference is used."""
    rows = torch.arange(len(y), device=logits.device)
    num = logits[rows, y] - logits[rows, target]
    if logits.shape[1] < 4:
        return -num
    top = logits.topk(4, dim=1).values
    return -num / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)


def ce_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Per-sample cross-entropy (in float32, so half-precision models do not saturate)."""
    return F.cross_entropy(logits.float(), y, reduction="none")


# --------------------------------------------------------------------------- core


def checkpoint_windows(n_iter: int) -> tuple[int, int, int]:
    """(first window, decrement, minimum) in iterations for p_0=0, p_1=0.22,
    p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06) (integer rounding as in the official code)."""
    return (max(int(0.22 * n_iter), 1), max(int(0.03 * n_iter), 1), max(int(0.06 * n_iter), 1))


def apgd_run(model, x: Tensor, y: Tensor, loss_fn, *, eps: float, n_iter: int, rho: float,
             eot_iter: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """One APGD run (maximising loss_fn(logits)) from a random start on every row of x.

    Returns (fooled, x_fooled): which rows were misclassified at some iterate and the last such
    iterate (rows never fooled keep the start point, which callers ignore)."""
    shape = (-1,) + (1,) * (x.dim() - 1)
    x_cur = project(x + linf_sphere_noise(x, eps, gen), x, eps)
    logits, loss, grad = loss_and_grad(model, x_cur, loss_fn, eot_iter)
    fooled = logits.argmax(1) != y
    x_fooled = x_cur.clone()
    x_best, loss_best, grad_best = x_cur.clone(), loss.clone(), grad.clone()

    step = torch.full((x.shape[0],), 2.0 * eps, device=x.device, dtype=x.dtype)
    x_prev = x_cur.clone()
    history = torch.empty(n_iter + 1, x.shape[0], device=x.device)
    history[0] = loss
    window, decrement, min_window = checkpoint_windows(n_iter)
    since_check = 0
    loss_best_at_check = loss_best.clone()
    reduced_at_check = torch.ones_like(fooled)

    for i in range(n_iter):
        with torch.no_grad():
            z = project(x_cur + step.view(shape) * grad.sign(), x, eps)
            a = 1.0 if i == 0 else ALPHA
            x_next = project(x_cur + a * (z - x_cur) + (1 - a) * (x_cur - x_prev), x, eps)
            x_prev, x_cur = x_cur, x_next

        logits, loss, grad = loss_and_grad(model, x_cur, loss_fn, eot_iter)
        wrong = logits.argmax(1) != y
        x_fooled[wrong] = x_cur[wrong]
        fooled |= wrong

        history[i + 1] = loss
        better = loss > loss_best
        x_best[better], grad_best[better], loss_best[better] = \
            x_cur[better], grad[better], loss[better]

        since_check += 1
        if since_check == window:  # checkpoint w_j: halve the step where progress stalled
            steps_up = (history[i + 2 - window:i + 2] > history[i + 1 - window:i + 1]).sum(0)
            oscillating = steps_up <= rho * window
            stalled = ~reduced_at_check & (loss_best <= loss_best_at_check)
            reduce = oscillating | stalled
            step[reduce] /= 2.0
            x_cur[reduce] = x_best[reduce]  # restart from the best point
            grad[reduce] = grad_best[reduce]
            reduced_at_check, loss_best_at_check = reduce, loss_best.clone()
            window, since_check = max(window - decrement, min_window), 0
    return fooled, x_fooled


def _apgd(model, x, y, *, eps, seed, make_loss, n_iter, n_restarts, rho, eot_iter,
          targets=None) -> Tensor:
    """Restarts (and target classes) around apgd_run, each on the points still robust.

    make_loss(y_sub, target_sub) builds the loss; with targets=k the rounds aim at the clean
    top-2 .. top-(k+1) classes in turn (target_sub is None when untargeted)."""
    def make_round(gen, eps, target, restart):
        def run(idx, xs, ys):
            return apgd_run(model, xs, ys, make_loss(ys, None if target is None else target(idx)), eps=eps,
                            n_iter=n_iter, rho=rho, eot_iter=eot_iter, gen=gen)
        return run

    return attack_in_rounds(model, x, y, eps=eps, seed=seed, n_iter=n_iter, n_restarts=n_restarts,
                            n_target_classes=targets, make_round=make_round)


def apgd_ce(model, x: Tensor, y: Tensor, *, eps: float, seed: int = 0, n_iter: int = 100,
            n_restarts: int = 1, rho: float = 0.75, eot_iter: int = 1) -> Tensor:
    """APGD on the cross-entropy loss."""
    return _apgd(model, x, y, eps=eps, seed=seed, n_iter=n_iter, n_restarts=n_restarts,
                 rho=rho, eot_iter=eot_iter, make_loss=lambda ys, _: lambda z: ce_loss(z, ys))


def apgd_dlr(model, x: Tensor, y: Tensor, *, eps: float, seed: int = 0, n_iter: int = 100,
             n_restarts: int = 1, rho: float = 0.75, eot_iter: int = 1) -> Tensor:
    """APGD on the (untargeted) DLR loss."""
    return _apgd(model, x, y, eps=eps, seed=seed, n_iter=n_iter, n_restarts=n_restarts,
                 rho=rho, eot_iter=eot_iter, make_loss=lambda ys, _: lambda z: dlr_loss(z, ys))


def apgd_t(model, x: Tensor, y: Tensor, *, eps: float, seed: int = 0, n_iter: int = 100,
           n_restarts: int = 1, n_target_classes: int = 9, rho: float = 0.75,
           eot_iter: int = 1) -> Tensor:
    """APGD on the targeted DLR loss, targets = the clean top-2 .. top-(n_target_classes+1)."""
    return _apgd(model, x, y, eps=eps, seed=seed, n_iter=n_iter, n_restarts=n_restarts,
                 rho=rho, eot_iter=eot_iter, targets=n_target_classes,
                 make_loss=lambda ys, t: lambda z: dlr_targeted_loss(z, ys, t))
