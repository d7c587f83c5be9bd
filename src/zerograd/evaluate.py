"""Accuracy under attack over a whole split, batch by batch, with per-sample flags."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

from .attacks import correct, eval_mode, fgsm_robust, pgd_robust
from .data import Split, batches, to_float
from .errors import ConfigError


def robust_flags(model, split: Split, attack: str, *, eps: float, batch_size: int = 256,
                 seed: int | None = None, **params):
    """Per-sample (clean, robust) bool tensors for `attack` in {'pgd', 'fgsm', 'none'}.
    With `seed`, the RNG is reseeded per batch, so two PGD runs with the same seed share
    their random starts (the sanity checks compare PGD-k with PGD-2k point by point)."""
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
    """Clean and PGD-steps-restarts accuracy on a split (alpha in units of eps). `flags` is
    `robust_flags` or a drop-in (e.g. sharded over processes)."""
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
    from .autoattack import autoattack, resolve_plan

    start = time.perf_counter()
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


def resolve_checkpoint(path, which: str = "last"):
    """A run folder or a checkpoint file -> the checkpoint file to load."""
    path = Path(path)
    if path.is_dir():
        ckpt = path / "checkpoints" / f"{which}.pt"
        if not ckpt.is_file():
            raise ConfigError(f"{str(path)!r} has no checkpoints/{which}.pt: is it a zerograd run folder?")
        return ckpt
    if not path.exists():
        raise ConfigError(f"{str(path)!r} does not exist: give a run folder or a checkpoint file")
    return path


def load_checkpoint_model(path, which: str = "last", *, device="cpu", data_dir=None):
    """(model, config, checkpoint path, checkpoint dict) from a run folder or checkpoint,
    loaded as data only."""
    from .checkpoint import load_checkpoint, load_weights
    from .config import from_yaml_dict
    from .data import DATASETS
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
    return model, cfg, ckpt_path, state


def load_model(path, which: str = "last", *, device="cpu", data_dir=None):
    """(model, config, checkpoint path) from a run folder or checkpoint, loaded as data only."""
    return load_checkpoint_model(path, which, device=device, data_dir=data_dir)[:3]


EVAL_ATTACKS = {"pgd": "PGD with restarts", "fgsm": "FGSM", "autoattack": "AutoAttack"}


def _check_eval_args(attack, n, steps, restarts, alpha, eps, batch_size, version, attacks,
                     attack_params, check_steps) -> float | None:
    """Every eval argument checked before any work; returns eps as a number (or None)."""
    from .autoattack import resolve_plan
    from .config import parse_number
    from .registry import lookup

    lookup(EVAL_ATTACKS, attack, "attack")
    for name, value, low in (("--n", n, 1), ("--steps", steps, 1), ("--restarts", restarts, 1),
                             ("--batch-size", batch_size, 1), ("--check-steps", check_steps, 1)):
        if value is not None and value < low:
            raise ConfigError(f"{name}={value} is invalid: must be >= {low}")
    if alpha is not None and alpha <= 0:
        raise ConfigError(f"--alpha={alpha} is invalid: must be > 0 (a multiple of eps)")
    if attack == "autoattack":
        resolve_plan(version, attacks, attack_params)
    elif attacks or attack_params or version != "standard":
        raise ConfigError(f"--version/--attacks choose AutoAttack's attacks; they need "
                          f"--attack autoattack, not --attack {attack}")
    eps_value = None if eps is None else parse_number(eps, "--eps", float)
    if eps_value is not None and not 0 < eps_value <= 1:
        raise ConfigError(f"--eps={eps} is invalid: must be in (0, 1] (e.g. 8/255)")
    return eps_value


def _check_writable(path: Path, what: str) -> None:
    """The folder a file will be written to exists (or can be made) and is writable."""
    folder = path.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise ConfigError(f"{what} {str(path)!r} cannot be written: {str(folder)!r} is not a "
                          "writable folder")


def _progress_printer(quiet: bool):
    if quiet:
        return None

    def progress(name: str, done: int, total: int) -> None:
        print(f"  {name}: batch {done}/{total}", file=sys.stderr, flush=True)

    return progress


def evaluate_path(path, *, attack: str = "pgd", n=None, steps=50, restarts=10, alpha=None,
                  eps=None, which="last", data_dir=None, batch_size=256, seed=0, device="auto",
                  version: str = "standard", attacks: list[str] | None = None, state=None,
                  attack_params: dict | None = None, out=None, checks: bool = True,
                  check_steps: int = 10, write: bool = True, quiet: bool = True) -> dict:
    """`zerograd eval`: clean and robust accuracy (PGD, FGSM or AutoAttack) of a run or
    checkpoint on the test split, the gradient-masking checks, and a results file (returned
    as a dict; written to RUN/evals/, beside the checkpoint, or to `out`). PGD's alpha (units
    of eps) defaults to the run's test_alpha (0.25: 2/255 at the paper's eps of 8/255). AutoAttack resumes from its
    state file (`state`, default beside the results file) and deletes it when done."""
    from .data import check_available, load_data
    from .results import attack_label, checkpoint_facts, record, results_path
    from .runlog import write_json
    from .sanity import probe_accuracies, sanity_checks
    from .train import resolve_device, seed_everything

    eps_value = _check_eval_args(attack, n, steps, restarts, alpha, eps, batch_size, version,
                                 attacks, attack_params, check_steps)
    dev = resolve_device(device)
    model, cfg, ckpt_path, ckpt = load_checkpoint_model(path, which, device=dev, data_dir=data_dir)
    eps_value = cfg.eps if eps_value is None else eps_value
    alpha = cfg.test_alpha if alpha is None else alpha
    check_available(cfg.dataset, cfg.data_dir)
    data = load_data(cfg.dataset, data_dir=cfg.data_dir, val_size=cfg.val_size, test_subset=n,
                     device=dev, seed=cfg.seed)
    planned = {"name": attack, "eps": eps_value, "steps": steps, "restarts": restarts,
               "version": version, "attacks": attacks}
    eps_tag = "" if eps_value == cfg.eps else f"-eps{eps_value:.4g}"
    target = Path(out) if out is not None else         results_path(ckpt_path, attack_label(planned), len(data.test), eps_tag)
    if write:
        _check_writable(target, "results file")
    facts = checkpoint_facts(ckpt_path, ckpt, cfg)
    state_path = None
    if attack == "autoattack":
        state_path = Path(state) if state is not None else target.with_name(
            f".{target.stem}.{facts['checkpoint_sha256'][:12]}.state.pt")
        _check_writable(state_path, "state file")

    if write:
        target.parent.mkdir(parents=True, exist_ok=True)
    seed_everything(seed)
    if attack == "pgd":
        result = evaluate(model, data.test, eps=eps_value, steps=steps, restarts=restarts,
                          alpha=alpha, batch_size=batch_size, seed=seed)
    elif attack == "fgsm":
        result = evaluate_fgsm(model, data.test, eps=eps_value, batch_size=batch_size)
    else:
        state_path.parent.mkdir(parents=True, exist_ok=True)
        result = evaluate_autoattack(model, data.test, eps=eps_value, version=version,
                                     attacks=attacks, seed=seed, batch_size=batch_size,
                                     state_path=state_path, progress=_progress_printer(quiet),
                                     attack_params=attack_params)
    result.update({"split": "test", "seed": seed})
    if checks:
        t0 = time.perf_counter()
        probes = probe_accuracies(model, data.test, eps=eps_value, steps=check_steps,
                                  alpha=alpha, seed=seed, batch_size=batch_size)
        result["checks"] = [c.to_dict() for c in sanity_checks(probes, result)]
        result["checks_passed"] = all(c["passed"] for c in result["checks"])
        result["check_accuracies"] = probes
        result["checks_seconds"] = round(time.perf_counter() - t0, 3)
    full = record(result, facts, cfg, device=str(dev))
    if write:
        full["results_file"] = str(target)
        write_json(target, full)
    if state_path is not None and state is None:
        state_path.unlink(missing_ok=True)
    return full
