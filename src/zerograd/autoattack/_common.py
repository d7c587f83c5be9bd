"""Helpers shared by the AutoAttack attacks: eval mode, seeding, projection, input gradients."""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from ..errors import ConfigError
from ..runtime import eval_mode


def check_eps(eps) -> float:
    """eps as a float in [0, 1]; 0 is the degenerate 'no perturbation' budget."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps):
        raise ConfigError(f"eps must be a number in [0, 1] (pixels in [0, 1]), got {eps!r}")
    if not 0 <= eps <= 1:
        raise ConfigError(f"eps must be in [0, 1] (an l_inf radius on pixels in [0, 1]), "
                          f"got {eps!r}")
    return float(eps)


def check_data(x, y) -> None:
    """x: float (N, ...) with values in [0, 1]; y: integer labels of shape (N,)."""
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 2:
        raise ConfigError("x must be a floating-point tensor of shape (N, ...) with N >= 1, "
                          f"got {type(x).__name__} {tuple(getattr(x, 'shape', ()))}")
    if not isinstance(y, Tensor) or y.dtype.is_floating_point or y.dtype == torch.bool \
            or y.shape != x.shape[:1]:
        raise ConfigError(f"y must be an integer tensor of shape ({x.shape[0]},), got "
                          f"{getattr(y, 'dtype', type(y).__name__)} "
                          f"{tuple(getattr(y, 'shape', ()))}")
    if x.numel() == 0:
        raise ConfigError("x is empty; pass at least one sample")
    lo, hi = x.min().item(), x.max().item()
    if not (0.0 <= lo and hi <= 1.0):  # also catches NaN
        raise ConfigError(f"x must have pixels in [0, 1] (models take unnormalised inputs), "
                          f"got values in [{lo:.4g}, {hi:.4g}]")


def generator(seed: int, device: torch.device) -> torch.Generator:
    """A local generator, so attacks are reproducible without touching the global RNG."""
    return torch.Generator(device=device).manual_seed(int(seed))


def uniform(shape, gen: torch.Generator, like: Tensor) -> Tensor:
    """Uniform [0, 1) noise with like's dtype and device, drawn from gen."""
    return torch.rand(shape, generator=gen, device=like.device, dtype=like.dtype)


def random_signs(shape, gen: torch.Generator, like: Tensor) -> Tensor:
    """Independent +-1 entries with like's dtype and device."""
    bits = torch.randint(0, 2, shape, generator=gen, device=like.device)
    return (bits * 2 - 1).to(like.dtype)


def linf_sphere_noise(x: Tensor, radius: float, gen: torch.Generator) -> Tensor:
    """Uniform noise in [-1, 1]^d rescaled to l_inf norm `radius` (the official random start)."""
    t = uniform(x.shape, gen, x) * 2 - 1
    norm = t.flatten(1).abs().amax(1).view(-1, *[1] * (x.dim() - 1))
    return radius * t / (norm + 1e-12)


def project(z: Tensor, x: Tensor, eps: float) -> Tensor:
    """Project z onto the l_inf ball of radius eps around x intersected with [0, 1]^d."""
    return torch.minimum(torch.maximum(z, x - eps), x + eps).clamp(0.0, 1.0)


def linf_dist(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample l_inf distance."""
    return (a - b).flatten(1).abs().amax(1)


@torch.no_grad()
def predict(model, x: Tensor) -> Tensor:
    """Logits without building a graph."""
    return model(x)


def margin(logits: Tensor, y: Tensor) -> Tensor:
    """z_y - max_{j != y} z_j: positive iff the sample is classified correctly (no ties)."""
    rows = torch.arange(len(y), device=logits.device)
    z_y = logits[rows, y]
    others = logits.clone()
    others[rows, y] = -torch.inf
    return z_y - others.amax(1)


def loss_and_grad(model, x: Tensor, loss_fn: Callable[[Tensor], Tensor],
                  n_samples: int = 1) -> tuple[Tensor, Tensor, Tensor]:
    """(logits, per-sample loss, d loss / d x), averaged over n_samples forward passes (EOT).

    Uses torch.autograd.grad on the input only, so parameter .grad is never touched. A model
    whose output does not depend on x differentiably gets a zero gradient, not an error.
    The logits are those of the last pass (the prediction check of the official code)."""
    grad = torch.zeros_like(x)
    loss_sum = torch.zeros(x.shape[0], device=x.device, dtype=torch.float32)
    logits = None
    for _ in range(n_samples):
        z = x.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = model(z)
            loss = loss_fn(logits)
        if loss.requires_grad:
            (g,) = torch.autograd.grad(loss.sum(), z, allow_unused=True)
            if g is not None:
                grad += g
        loss_sum += loss.detach().float()
    return logits.detach(), loss_sum / n_samples, grad / n_samples


def attack_remaining(model, x: Tensor, y: Tensor,
                     rounds: Iterable[Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]]
                     ) -> Tensor:
    """Run each round on the points not yet fooled; keep the first adversarial found.

    A round is called as round(idx, x[idx], y[idx]) and returns (fooled mask, candidates).
    Points misclassified from the start are returned unchanged, like every non-fooled point.
    """
    x_adv = x.detach().clone()
    active = predict(model, x).argmax(1) == y
    for run in rounds:
        idx = active.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        fooled, cand = run(idx, x[idx], y[idx])
        hit = idx[fooled]
        active[hit] = False
        x_adv[hit] = cand[fooled].to(x_adv.dtype)
    return x_adv


def attack_in_rounds(model, x: Tensor, y: Tensor, *, eps, seed: int, n_iter: int, n_restarts: int,
                     n_target_classes: int | None, make_round: Callable) -> Tensor:
    """The frame APGD and FAB share: the checks, then rounds on the points still robust, for
    each target class (the clean top-2 .. top-(n_target_classes+1); one untargeted class when
    None) n_restarts times. make_round(gen, eps, target, restart) returns a round for
    `attack_remaining`; target(idx) gives the target class of the points idx (None untargeted)."""
    eps = check_eps(eps)
    check_data(x, y)
    if eps == 0 or n_iter < 1:
        return x.detach().clone()
    with eval_mode(model):
        gen = generator(seed, x.device)
        targeted = n_target_classes is not None
        order = predict(model, x).argsort(1, descending=True) if targeted else None
        n_targets = min(n_target_classes, order.shape[1] - 1) if targeted else 1

        def target(rank):
            return (lambda idx: order[idx, rank]) if targeted else None

        rounds = (make_round(gen, eps, target(rank), restart) for rank in range(1, n_targets + 1)
                  for restart in range(n_restarts))
        return attack_remaining(model, x.detach(), y, rounds)
