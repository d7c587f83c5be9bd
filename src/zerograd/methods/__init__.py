"""Training perturbations and regularizers, each an entry of a registry.

A perturbation is `method(model, x, y, *, eps, **hparams) -> delta` and a regularizer
`term(model, x, y, *, eps, **hparams) -> loss`; the keyword hyperparameters (with their
defaults) are the schema the config, the CLI and `zerograd methods` read. eps is absolute
(pixels in [0, 1]); every step size `alpha` is in units of eps. A new method is a function in
perturbations.py and one `METHODS.register` line here.
"""
from __future__ import annotations

import functools
from collections.abc import Callable

from torch import Tensor

from ..errors import ConfigError
from ..registry import Registry
from ..runtime import check_pixels
from . import perturbations as _p
from .perturbations import agreed_direction, sign_votes
from .primitives import (
    THRESHOLD_BUDGET,
    input_grad,
    noise_source,
    project,
    quantile_threshold,
    random_start,
    sign_step,
    vote_sharing,
    zero_small,
)
from .regularizers import grad_align

__all__ = [
    "METHODS", "REGULARIZERS", "THRESHOLD_BUDGET", "agreed_direction", "delta_bound", "grad_align",
    "input_grad", "noise_source", "project", "quantile_threshold", "random_start", "sign_step",
    "sign_votes", "unchecked", "vote_sharing", "zero_small", "zeroed_fraction",
]

RULES = {
    "alpha": (lambda v: v > 0, "> 0 (a multiple of eps)"),
    "q": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "n": (lambda v: v >= 1, ">= 1"),
    "iters": (lambda v: v >= 1, ">= 1"),
    "steps": (lambda v: v >= 1, ">= 1"),
    "k": (lambda v: v >= 0, ">= 0"),
    "chunk": (lambda v: v is None or v >= 1, ">= 1 or null"),
    "lam": (lambda v: v >= 0, ">= 0"),
}


def _check_together(name: str, params: dict) -> None:
    """Constraints between hyperparameters (params: defaults updated by the given ones)."""
    if name == "multigrad":
        n, agree = params["n"], params["agree"]
        if agree is not None and not (n / 2 < agree <= n):
            raise ConfigError(
                f"method_args.agree={agree!r} is invalid for multigrad with n={n}: "
                f"must be in ({n / 2:g}, {n}] so that the agreeing sign is unique")


def checked(method: Callable) -> Callable:
    """The library contract around a method (docs/api.md): x holds pixels in [0, 1] (one clear
    error otherwise), eps is a finite number in [0, 1], and the delta comes back detached. The
    caller's tensors are never modified. `unchecked` gives the bare function."""

    @functools.wraps(method)
    def run(model, x: Tensor, y: Tensor, *, eps: float, **params) -> Tensor:
        check_pixels(x, f"{method.__name__}: x")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 <= eps <= 1:
            raise ConfigError(f"{method.__name__}: eps={eps!r} must be a number in [0, 1] "
                              "(absolute, pixels in [0, 1]; e.g. 8/255)")
        return method(model, x, y, eps=eps, **params).detach()

    return run


def unchecked(method: Callable) -> Callable:
    """A METHODS entry without the input check (for the training loop, whose batches are in
    [0, 1] by construction: the check would cost a device sync per step)."""
    return getattr(method, "__wrapped__", method)


METHODS: Registry = Registry("method", section="method_args", fixed=("model", "x", "y", "eps"),
                             rules=RULES, check=_check_together)
for _fn in (_p.fgsm, _p.fgsm_rs, _p.zerograd, _p.multigrad, _p.pgd, _p.n_fgsm):
    METHODS.register(_fn.__name__, checked(_fn))

REGULARIZERS: Registry = Registry("regularizer", fixed=("model", "x", "y", "eps"), rules=RULES)
REGULARIZERS.register("grad_align", grad_align)


def delta_bound(name: str, eps: float, **params) -> float:
    """The l_inf bound a method's delta obeys: eps, except N-FGSM's (k + alpha) * eps."""
    if name == "n_fgsm":
        p = {**METHODS.defaults(name), **params}
        return (p["k"] + p["alpha"]) * eps
    return eps



def zeroed_fraction(name: str, model, x: Tensor, y: Tensor, delta: Tensor, *, eps: float,
                    **params) -> float | None:
    """Fraction of input entries whose gradient step the method zeroed: for ZeroGrad the
    entries below the q-quantile of |grad| at a random start, for MultiGrad the entries
    without a sign agreement (delta == 0 where x is strictly inside (0, 1)); None for the
    methods that zero nothing. `delta` is the method's perturbation of x."""
    p = {**METHODS.defaults(name), **params}
    if name == "zerograd":
        g = input_grad(model, x, y, random_start(x, eps))
        return (zero_small(g, p["q"]) == 0).float().mean().item()
    if name == "multigrad":
        inside = (x > 0) & (x < 1)
        return ((delta == 0) & inside).float().sum().item() / max(inside.sum().item(), 1)
    return None
