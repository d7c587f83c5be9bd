"""Accuracy under attack over a whole split, batch by batch, with per-sample flags: the one
implementation behind validation, the final test evaluation, `zerograd eval` and the checks."""
from __future__ import annotations

import math
import time

import torch

from .attacks import correct, fgsm_robust, pgd_robust
from .autoattack import autoattack, resolve_plan
from .data import Split, batches, to_float
from .errors import ConfigError
from .runtime import check_pixels, eval_mode


def check_split(split: Split) -> None:
    """The library contract on a split (docs/api.md): images uint8 (0..255) or float pixels in
    [0, 1], labels an integer vector of the same length; one clear ConfigError otherwise."""
    x, y = getattr(split, "x", None), getattr(split, "y", None)
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise ConfigError("evaluate needs a Split(x, y) of tensors: images (N, C, H, W), labels (N,)")
    if x.dtype != torch.uint8:
        check_pixels(x, "split.x")
    if y.dim() != 1 or y.is_floating_point() or y.dtype == torch.bool or len(y) != len(x):
        raise ConfigError(f"split.y must be integer labels of shape ({len(x)},), got {y.dtype} "
                          f"{tuple(y.shape)}")


def robust_flags(model, split: Split, attack: str, *, eps: float, batch_size: int = 256,
                 seed: int | None = None, **params):
    """Per-sample (clean, robust) bool tensors for `attack` in {'pgd', 'fgsm', 'none'}.
    With `seed`, the RNG is reseeded per batch, so two PGD runs with the same seed share
    their random starts (the sanity checks compare PGD-k with PGD-2k point by point)."""
    check_split(split)
    clean, robust = [], []
    with eval_mode(model):
        for i, (x, y) in enumerate(batches(split, batch_size, shuffle=False, augment=False)):
            if seed is not None:
                torch.manual_seed(seed * 1_000_003 + i)
            c = correct(model, x, y)
            if attack == "pgd":
                r = pgd_robust(model, x, y, eps=eps, robust=c, **params)
            elif attack == "fgsm":
                r = fgsm_robust(model, x, y, eps=eps, robust=c)
            else:
                r = c
            clean.append(c.cpu())
            robust.append(r.cpu())
    return torch.cat(clean), torch.cat(robust)


def check_attack_args(*, eps, steps: int = 1, restarts: int = 1, alpha: float = 1.0,
                      batch_size: int = 1) -> None:
    """Finite numbers in range, before any work: eps in [0, 1], alpha > 0, counts >= 1."""
    def number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    if not (number(eps) and 0 <= eps <= 1):
        raise ConfigError(f"eps={eps!r} is invalid: must be in [0, 1] (absolute; e.g. 8/255)")
    if not (number(alpha) and alpha > 0):
        raise ConfigError(f"alpha={alpha!r} is invalid: must be a finite number > 0 (a multiple of eps)")
    for name, value in (("steps", steps), ("restarts", restarts), ("batch_size", batch_size)):
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            raise ConfigError(f"{name}={value!r} is invalid: must be an integer >= 1")


def summary(clean: torch.Tensor, robust: torch.Tensor, attack: dict, start: float) -> dict:
    """The accuracies of per-sample flags, the attack's description, and seconds since start."""
    return {
        "clean_acc": clean.float().mean().item() if len(clean) else float("nan"),
        "robust_acc": robust.float().mean().item() if len(robust) else float("nan"),
        "n": len(clean),
        "attack": attack,
        "seconds": round(time.perf_counter() - start, 3),
    }


def evaluate(model, split: Split, *, eps: float, steps: int = 50, restarts: int = 10,
             alpha: float = 0.25, batch_size: int = 256, seed: int | None = None,
             flags=robust_flags) -> dict:
    """Clean and PGD-steps-restarts accuracy on a split (alpha in units of eps). The split's
    images are uint8 (0..255) or float pixels in [0, 1] and are never modified. `flags` is
    `robust_flags` or a drop-in (e.g. sharded over processes)."""
    check_attack_args(eps=eps, steps=steps, restarts=restarts, alpha=alpha, batch_size=batch_size)
    start = time.perf_counter()
    clean, robust = flags(model, split, "pgd", eps=eps, batch_size=batch_size, seed=seed,
                          steps=steps, restarts=restarts, alpha=alpha)
    return summary(clean, robust, {"name": "pgd", "eps": eps, "steps": steps, "restarts": restarts,
                                   "alpha": alpha}, start)


def evaluate_fgsm(model, split: Split, *, eps: float, batch_size: int = 256) -> dict:
    """Clean and FGSM accuracy (one step of eps from the clean point) on a split."""
    start = time.perf_counter()
    clean, robust = robust_flags(model, split, "fgsm", eps=eps, batch_size=batch_size)
    return summary(clean, robust, {"name": "fgsm", "eps": eps}, start)


def evaluate_autoattack(model, split: Split, *, eps: float, version: str = "standard",
                        attacks: list[str] | None = None, seed: int = 0, batch_size: int = 256,
                        state_path=None, progress=None, attack_params=None) -> dict:
    """Clean and AutoAttack accuracy on a split (zerograd.autoattack, resumable from
    state_path), with the robust accuracy after each attack and each attack's seconds.
    attack_params overrides attack settings, e.g. {"square": {"n_queries": 1000}}."""
    start = time.perf_counter()
    check_split(split)
    names, params = resolve_plan(version, attacks, attack_params)
    with eval_mode(model):
        res = autoattack(model, to_float(split.x), split.y, eps=eps, version=version,
                         attacks=attacks, batch_size=batch_size, seed=seed,
                         state_path=state_path, progress=progress, attack_params=attack_params)
    out = summary(res.clean, res.robust, {"name": "autoattack", "eps": eps, "version": version,
                                          "attacks": names, "params": params}, start)
    out["robust_after"] = res.robust_after
    out["seconds_by_attack"] = {k: round(v, 3) for k, v in res.seconds.items()}
    return out
