"""FAB (Croce & Hein, ICML 2020, "Minimally distorted adversarial examples with a fast adaptive
boundary attack"), l_inf version, targeted (FAB-T, used by AutoAttack) and untargeted.

Each step linearises the decision boundary at the current iterate, projects both the iterate
and the original point onto that hyperplane (within the box [0, 1]^d), mixes the two
projections with weight alpha <= alpha_max, overshoots by eta, and after finding an adversarial
point steps back towards the original point by beta. A point counts as broken only if the
smallest adversarial perturbation found is within eps.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ._common import (
    attack_in_rounds,
    linf_dist,
    linf_sphere_noise,
    predict,
)


def project_hyperplane_box(t: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """Per row, the smallest-l_inf delta with <w, t + delta> = b and t + delta in [0, 1]^d.

    With radius lam, the most <w, delta> can move (towards b) is
    g(lam) = sum_i |w_i| min(lam, room_i), room_i being how far coordinate i can go in the
    useful direction before leaving the box. g is piecewise linear and nondecreasing: find the
    piece that reaches |b - <w, t>| and solve for lam. If even lam = inf falls short, return the
    box corner that gets closest (as the official code does)."""
    need = b - (w * t).sum(1)
    direction = w.sign() * torch.where(need >= 0, 1.0, -1.0).to(w.dtype)[:, None]
    room = torch.where(direction > 0, 1 - t, t)
    room_sorted, order = room.sort(1)
    w_sorted = w.abs().gather(1, order)
    full = w_sorted * room_sorted
    saturated = full.cumsum(1) - full  # coordinates below piece k are at their box limit
    free = w_sorted.flip(1).cumsum(1).flip(1)  # total |w| of the coordinates still free
    reach = saturated + room_sorted * free  # g(room_sorted[k])
    k = (reach < need.abs()[:, None]).sum(1, keepdim=True)
    feasible = k.squeeze(1) < t.shape[1]
    k = k.clamp(max=t.shape[1] - 1)
    lam = (need.abs() - saturated.gather(1, k).squeeze(1)) / free.gather(1, k).squeeze(1).clamp_min(1e-12)
    lam = torch.where(feasible, lam, torch.inf)
    return direction * torch.minimum(room, lam[:, None])


def _targeted_boundary(model, y: Tensor, target: Tensor):
    """(f, grad f) for f = z_t - z_y: the one boundary of a targeted attack, shape (B, 1, d)."""
    def boundaries(x: Tensor) -> tuple[Tensor, Tensor]:
        z = x.detach().requires_grad_(True)
        rows = torch.arange(len(y), device=x.device)
        with torch.enable_grad():
            logits = model(z)
            f = logits[rows, target] - logits[rows, y]
        (g,) = torch.autograd.grad(f.sum(), z, allow_unused=True)
        g = torch.zeros_like(z) if g is None else g
        return f.detach()[:, None], g.flatten(1)[:, None]
    return boundaries


def _all_boundaries(model, y: Tensor):
    """(f_k, grad f_k) for f_k = z_k - z_y over all classes k (f_y = 1e10 so it is never
    picked), shape (B, C, d): one backward pass per class."""
    def boundaries(x: Tensor) -> tuple[Tensor, Tensor]:
        z = x.detach().requires_grad_(True)
        rows = torch.arange(len(y), device=x.device)
        with torch.enable_grad():
            logits = model(z)
        grads = []
        for k in range(logits.shape[1]):
            (g,) = torch.autograd.grad(logits[:, k].sum(), z, retain_graph=True,
                                       allow_unused=True)
            grads.append(torch.zeros_like(z) if g is None else g)
        jac = torch.stack([g.flatten(1) for g in grads], 1)
        f = logits.detach() - logits.detach()[rows, y][:, None]
        dg = jac - jac[rows, y][:, None]
        f[rows, y] = 1e10
        return f, dg
    return boundaries


def fab_run(model, x0: Tensor, y: Tensor, boundaries, *, eps: float, n_iter: int,
            alpha_max: float, eta: float, beta: float, gen: torch.Generator,
            random_start: bool) -> tuple[Tensor, Tensor]:
    """One FAB run on every row of x0; returns (found within eps, best adversarial point)."""
    n = x0.shape[0]
    rows = torch.arange(n, device=x0.device)
    flat0 = x0.flatten(1)
    x1 = x0.clone()
    if random_start:
        x1 = (x0 + linf_sphere_noise(x0, 0.5 * eps, gen)).clamp(0, 1)
    best = torch.full((n,), torch.inf, device=x0.device)
    x_best = x0.clone()
    for _ in range(n_iter):
        f, df = boundaries(x1)
        closest = (f.abs() / (df.abs().sum(-1) + 1e-12)).argmin(1)
        w, f = df[rows, closest], f[rows, closest]
        flat1 = x1.flatten(1)
        b = (w * flat1).sum(1) - f  # the linearised boundary {z: <w, z> = b}
        d = project_hyperplane_box(torch.cat([flat1, flat0]), torch.cat([w, w]),
                                   torch.cat([b, b]))
        d1, d2 = d[:n], d[n:]
        a1 = d1.abs().amax(1).clamp_min(1e-8)
        a2 = d2.abs().amax(1).clamp_min(1e-8)
        alpha = (a1 / (a1 + a2)).clamp(0.0, alpha_max)[:, None]
        flat1 = ((flat1 + eta * d1) * (1 - alpha) + (flat0 + eta * d2) * alpha).clamp(0.0, 1.0)
        x1 = flat1.view_as(x0).to(x0.dtype)

        adv = predict(model, x1).argmax(1) != y
        if adv.any():
            dist = linf_dist(x1, x0)
            better = adv & (dist < best)
            x_best[better], best[better] = x1[better], dist[better].to(best.dtype)
            x1[adv] = x0[adv] + beta * (x1[adv] - x0[adv])
    return best <= eps, x_best


def _fab(model, x, y, *, eps, seed, n_iter, n_restarts, alpha_max, eta, beta,
         n_target_classes=None) -> Tensor:
    """Targets x restarts around fab_run (restarts after the first start at random)."""
    def make_round(gen, eps, target, restart):
        def run(idx, xs, ys):
            bounds = _all_boundaries(model, ys) if target is None else _targeted_boundary(model, ys, target(idx))
            return fab_run(model, xs, ys, bounds, eps=eps, n_iter=n_iter, alpha_max=alpha_max, eta=eta,
                           beta=beta, gen=gen, random_start=restart > 0)
        return run

    return attack_in_rounds(model, x, y, eps=eps, seed=seed, n_iter=n_iter, n_restarts=n_restarts,
                            n_target_classes=n_target_classes, make_round=make_round)


def fab_t(model, x: Tensor, y: Tensor, *, eps: float, seed: int = 0, n_iter: int = 100,
          n_restarts: int = 1, n_target_classes: int = 9, alpha_max: float = 0.1,
          eta: float = 1.05, beta: float = 0.9) -> Tensor:
    """Targeted FAB against the clean top-2 .. top-(n_target_classes+1) classes."""
    return _fab(model, x, y, eps=eps, seed=seed, n_iter=n_iter, n_restarts=n_restarts,
                alpha_max=alpha_max, eta=eta, beta=beta, n_target_classes=n_target_classes)


def fab(model, x: Tensor, y: Tensor, *, eps: float, seed: int = 0, n_iter: int = 100,
        n_restarts: int = 1, alpha_max: float = 0.1, eta: float = 1.05,
        beta: float = 0.9) -> Tensor:
    """Untargeted FAB (closest linearised boundary among all classes at every step)."""
    return _fab(model, x, y, eps=eps, seed=seed, n_iter=n_iter, n_restarts=n_restarts,
                alpha_max=alpha_max, eta=eta, beta=beta)
