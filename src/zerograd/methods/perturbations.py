"""Training perturbations: ZeroGrad, MultiGrad and the baselines, one function each.

Every method is `method(model, x, y, *, eps, **hparams) -> delta`: keyword-only
hyperparameters whose signature is the schema the CLI and presets read. eps is absolute
(pixels in [0, 1]); every step size `alpha` is in units of eps. All methods return a
detached delta with x + delta in [0, 1] and leave parameter gradients and the model's
train/eval mode untouched (input gradients come from `torch.autograd.grad`).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .primitives import (
    input_grad,
    input_grad_and_logits,
    random_start,
    sign_step,
    vote_share,
    zero_small,
)


def fgsm(model, x: Tensor, y: Tensor, *, eps: float, alpha: float = 1.0) -> Tensor:
    """FGSM (Goodfellow et al. 2015) from the clean point; alpha in units of eps."""
    delta = torch.zeros_like(x)
    return sign_step(x, delta, input_grad(model, x, y, delta), alpha * eps, eps)


def fgsm_rs(model, x: Tensor, y: Tensor, *, eps: float, alpha: float = 1.25) -> Tensor:
    """FGSM-RS (Wong et al. 2020, "Fast is better than free"): FGSM from a uniform random
    start in the eps-ball; alpha in units of eps."""
    return zerograd(model, x, y, eps=eps, alpha=alpha, q=0.0)


def zerograd(
    model, x: Tensor, y: Tensor, *, eps: float, alpha: float = 2.0, q: float = 0.35,
    iters: int = 1, random_init: bool = True,
) -> Tensor:
    """ZeroGrad (Golgooni et al., Alg. 1): FGSM from a random start with input-gradient
    entries below the per-sample q-quantile of |grad| zeroed (they keep their start value).
    alpha in units of eps; iters = 2 is the paper's ZeroGrad + PGD-2 (Appendix C.2)."""
    delta = random_start(x, eps) if random_init else torch.zeros_like(x)
    for _ in range(iters):
        g = zero_small(input_grad(model, x, y, delta), q)
        delta = sign_step(x, delta, g, alpha * eps, eps)
    return delta


def multigrad(
    model, x: Tensor, y: Tensor, *, eps: float, alpha: float = 1.0, n: int = 3,
    agree: int | None = None, chunk: int | None = None,
) -> Tensor:
    """MultiGrad (Golgooni et al., Alg. 2): input gradients at n random starts; keep the
    sign where at least `agree` (default n) of them agree, zero elsewhere, and step from
    the clean point. alpha in units of eps (any alpha >= 1 gives the same delta).

    `chunk` starts go through one batched pass (bounding memory). The default (None) is
    where the hardware gains: all n in one pass of n*B inputs on an accelerator, one start per
    pass on a CPU, where the larger batch is slower (`zerograd bench`: 2.26x vs 1.81x FGSM-RS).
    Starts are drawn in order whatever the chunking, so it never changes them (with the model
    in train mode, BatchNorm normalizes over the whole pass)."""
    mine, reduce = vote_share()  # a group of processes may share the starts (distributed.py)
    votes = sign_votes(model, x, y, eps=eps, n=n, chunk=chunk, mine=mine)
    if reduce is not None:
        reduce(votes)
    return sign_step(x, torch.zeros_like(x), agreed_direction(votes, n, agree), alpha * eps, eps)


def sign_votes(model, x: Tensor, y: Tensor, *, eps: float, n: int, chunk: int | None = None,
               mine: Callable[[int], bool] = lambda i: True) -> Tensor:
    """Sum over the random starts i < n with mine(i) of sign(input gradient at start i):
    (#plus - #minus) per entry, exact in float32. All n starts are drawn, in order, so a
    rank computing only some of them (`mine`) sees the same starts as a single process."""
    votes = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    per_pass = chunk if chunk is not None else (1 if x.device.type == "cpu" else n)
    pending: list[Tensor] = []

    def flush() -> None:
        k = len(pending)
        xk = x.expand(k, *x.shape).reshape(-1, *x.shape[1:])
        g = input_grad(model, xk, y.repeat(k), torch.cat(pending))
        votes.add_(g.view(k, *x.shape).sign().float().sum(0))
        pending.clear()

    for i in range(n):
        start = random_start(x, eps)
        if mine(i):
            pending.append(start)
            if len(pending) == per_pass:
                flush()
    if pending:
        flush()
    return votes


def agreed_direction(votes: Tensor, n: int, agree: int | None = None) -> Tensor:
    """+1 / -1 where at least `agree` (default n) of n signs agree, 0 elsewhere (float32)."""
    agree = n if agree is None else agree
    plus = (n + votes) / 2
    minus = (n - votes) / 2
    return (plus >= agree).float() - (minus >= agree).float()


def pgd(
    model, x: Tensor, y: Tensor, *, eps: float, alpha: float = 0.25, steps: int = 10,
    random_init: bool = True, early_stop: bool = False,
) -> Tensor:
    """PGD-k (Madry et al. 2018) in the l_inf ball; alpha in units of eps. With
    early_stop, a sample stops moving once misclassified (used for evaluation, so the
    returned delta is adversarial whenever any iterate was)."""
    delta = random_start(x, eps) if random_init else torch.zeros_like(x)
    for _ in range(steps):
        g, logits = input_grad_and_logits(model, x, y, delta)
        if early_stop:
            still_right = logits.argmax(1) == y
            g = g * still_right.view(-1, *[1] * (x.dim() - 1))
        delta = sign_step(x, delta, g, alpha * eps, eps)
    return delta


def n_fgsm(model, x: Tensor, y: Tensor, *, eps: float, alpha: float = 1.0, k: float = 2.0) -> Tensor:
    """N-FGSM (de Jorge et al. 2022): noise U(-k*eps, k*eps), then an FGSM step of alpha*eps,
    with no projection to the eps-ball (|delta| <= (k + alpha) * eps); x + delta in [0, 1]."""
    delta = random_start(x, eps, scale=k)
    return sign_step(x, delta, input_grad(model, x, y, delta), alpha * eps, None)


