"""Accuracy under attack over a whole split, batch by batch, with per-sample flags."""
from __future__ import annotations

import contextlib
import time

import torch

from .attacks import correct, fgsm_robust, pgd_robust
from .data import Split, batches


@contextlib.contextmanager
def eval_mode(model):
    """Evaluation attacks run with the model in eval mode; the previous mode is restored."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def robust_flags(model, split: Split, attack: str, *, eps: float, batch_size: int = 256, **params):
    """Per-sample (clean, robust) bool tensors for `attack` in {'pgd', 'fgsm', 'none'}."""
    clean, robust = [], []
    with eval_mode(model):
        for x, y in batches(split, batch_size, shuffle=False, augment=False):
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


def evaluate(model, split: Split, *, eps: float, steps: int = 50, restarts: int = 10,
             alpha: float = 0.25, batch_size: int = 256) -> dict:
    """Clean and PGD-steps-restarts accuracy on a split (alpha in units of eps)."""
    start = time.perf_counter()
    clean, robust = robust_flags(model, split, "pgd", eps=eps, batch_size=batch_size,
                                 steps=steps, restarts=restarts, alpha=alpha)
    return {
        "clean_acc": clean.float().mean().item() if len(clean) else float("nan"),
        "robust_acc": robust.float().mean().item() if len(robust) else float("nan"),
        "n": len(clean),
        "attack": {"name": "pgd", "eps": eps, "steps": steps, "restarts": restarts, "alpha": alpha},
        "seconds": round(time.perf_counter() - start, 3),
    }


def resolve_checkpoint(path, which: str = "last"):
    """A run folder or a checkpoint file -> the checkpoint file to load."""
    from pathlib import Path

    from .errors import ConfigError

    path = Path(path)
    if path.is_dir():
        ckpt = path / "checkpoints" / f"{which}.pt"
        if not ckpt.is_file():
            raise ConfigError(f"{str(path)!r} has no checkpoints/{which}.pt: is it a zerograd run folder?")
        return ckpt
    if not path.exists():
        raise ConfigError(f"{str(path)!r} does not exist: give a run folder or a checkpoint file")
    return path


def load_model(path, which: str = "last", *, device="cpu", data_dir=None):
    """(model, config, checkpoint path) from a run folder or checkpoint, loaded as data only."""
    from .checkpoint import load_checkpoint, load_weights
    from .config import from_yaml_dict
    from .data import DATASETS
    from .errors import ConfigError
    from .models import build_model

    ckpt_path = resolve_checkpoint(path, which)
    state = load_checkpoint(ckpt_path, map_location=device)
    if not isinstance(state.get("model"), dict) or not isinstance(state.get("config"), dict):
        raise ConfigError(f"checkpoint {str(ckpt_path)!r} is not a zerograd checkpoint (no model/config)")
    cfg = from_yaml_dict(state["config"])
    if data_dir is not None:
        cfg.data_dir = str(data_dir)
    info = DATASETS[cfg.dataset]
    model = build_model(cfg.model, num_classes=info.num_classes, in_channels=info.shape[0],
                        mean=info.mean, std=info.std, **cfg.model_args).to(device)
    load_weights(model, state["model"], ckpt_path)
    return model, cfg, ckpt_path


def evaluate_path(path, *, n=None, steps=50, restarts=10, alpha=None, eps=None, which="last",
                  data_dir=None, batch_size=256, seed=0, device="auto") -> dict:
    """`zerograd eval`: clean and PGD accuracy of a run or checkpoint on the test split.
    alpha (units of eps) defaults to 2/255 / eps, the paper's PGD-50-10 step."""
    from .config import parse_number
    from .data import check_available, load_data
    from .errors import ConfigError
    from .train import resolve_device, seed_everything

    for name, value, low in (("--n", n, 1), ("--steps", steps, 1), ("--restarts", restarts, 1),
                             ("--batch-size", batch_size, 1)):
        if value is not None and value < low:
            raise ConfigError(f"{name}={value} is invalid: must be >= {low}")
    if alpha is not None and alpha <= 0:
        raise ConfigError(f"--alpha={alpha} is invalid: must be > 0 (a multiple of eps)")
    eps_value = None if eps is None else parse_number(eps, "--eps", float)
    if eps_value is not None and not 0 < eps_value <= 1:
        raise ConfigError(f"--eps={eps} is invalid: must be in (0, 1] (e.g. 8/255)")
    dev = resolve_device(device)
    model, cfg, ckpt_path = load_model(path, which, device=dev, data_dir=data_dir)
    eps_value = cfg.eps if eps_value is None else eps_value
    alpha = (2 / 255) / eps_value if alpha is None else alpha
    check_available(cfg.dataset, cfg.data_dir)
    data = load_data(cfg.dataset, data_dir=cfg.data_dir, val_size=cfg.val_size, test_subset=n,
                     device=dev, seed=cfg.seed)
    seed_everything(seed)
    result = evaluate(model, data.test, eps=eps_value, steps=steps, restarts=restarts, alpha=alpha,
                      batch_size=batch_size)
    result.update({"checkpoint": str(ckpt_path), "dataset": cfg.dataset, "split": "test",
                   "method": cfg.method, "seed": seed})
    return result
