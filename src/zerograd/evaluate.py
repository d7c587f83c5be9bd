"""`zerograd eval`: clean and robust accuracy (PGD, FGSM or AutoAttack) of a run folder or a
checkpoint on the test split, the gradient-masking checks, and a results file."""
from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

from .accuracy import evaluate, evaluate_autoattack, evaluate_fgsm
from .autoattack import resolve_plan
from .config import MAX_SEED, data_options, parse_number
from .data import check_available, load_data
from .errors import ConfigError
from .files import write_json
from .registry import Registry
from .results import attack_label, record
from .runfolder import checkpoint_facts, load_checkpoint_model, results_path, run_folder_of
from .runtime import resolve_device, seed_everything
from .sanity import check_accuracies, sanity_checks

EVAL_ATTACKS: Registry = Registry("attack")
for _name, _what in (("pgd", "PGD with restarts"), ("fgsm", "FGSM"), ("autoattack", "AutoAttack")):
    EVAL_ATTACKS.register(_name, _what)


def _check_eval_args(attack, n, steps, restarts, alpha, eps, batch_size, version, attacks,
                     attack_params, check_steps, seed=None) -> float | None:
    """Every eval argument checked before any work; returns eps as a number (or None)."""
    EVAL_ATTACKS[attack]  # unknown names: one line with did-you-mean
    for name, value, low in (("--n", n, 1), ("--steps", steps, 1), ("--restarts", restarts, 1),
                             ("--batch-size", batch_size, 1), ("--check-steps", check_steps, 1),
                             ("--seed", seed, 0)):
        if value is not None and value < low:
            raise ConfigError(f"{name}={value} is invalid: must be >= {low}")
    if seed is not None and seed > MAX_SEED:
        raise ConfigError(f"--seed={seed} is invalid: must be in 0..{MAX_SEED}")
    if alpha is not None and not (math.isfinite(alpha) and alpha > 0):
        raise ConfigError(f"--alpha={alpha} is invalid: must be a finite number > 0 (a multiple of eps)")
    if attack == "autoattack":
        resolve_plan(version, attacks, attack_params)
    elif attacks or attack_params or version != "standard":
        raise ConfigError(f"--version/--attacks choose AutoAttack's attacks; they need "
                          f"--attack autoattack, not --attack {attack}")
    eps_value = None if eps is None else parse_number(eps, "--eps", float)
    if eps_value is not None and not 0 < eps_value <= 1:  # NaN fails this too
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


def evaluate_path(path, *, attack: str = "pgd", n=None, steps=None, restarts=None, alpha=None,
                  eps=None, which="last", data_dir=None, batch_size=256, seed=0, device="auto",
                  version: str = "standard", attacks: list[str] | None = None, state=None,
                  attack_params: dict | None = None, out=None, checks: bool = True,
                  check_steps: int = 10, write: bool = True, quiet: bool = True, model=None) -> dict:
    """`zerograd eval`: clean and robust accuracy (PGD, FGSM or AutoAttack) of a run or
    checkpoint on the test split, the gradient-masking checks, and a results file (returned
    as a dict; written to RUN/evals/, beside the checkpoint, or to `out`). PGD's alpha (units
    of eps), steps and restarts default to the run's test_alpha, test_pgd_steps and
    test_restarts (0.25, 50, 10 unless the run chose others). A run of your own model needs
    `model`: the recorded spec (imported only then) or, for a Python object, a module of its
    class. AutoAttack resumes from its
    state file (`state`, default beside the results file) and deletes it when done."""
    eps_value = _check_eval_args(attack, n, steps, restarts, alpha, eps, batch_size, version,
                                 attacks, attack_params, check_steps, seed)
    dev = resolve_device(device)
    model, cfg, ckpt_path, ckpt = load_checkpoint_model(path, which, device=dev, data_dir=data_dir,
                                                         model=model)
    eps_value = cfg.eps if eps_value is None else eps_value
    alpha = cfg.test_alpha if alpha is None else alpha
    steps = cfg.test_pgd_steps if steps is None else steps
    restarts = cfg.test_restarts if restarts is None else restarts
    check_available(cfg.dataset, cfg.data_dir)
    data = load_data(cfg.dataset, **data_options(cfg, dev, train_subset=None, test_subset=n, stream=True))
    planned = {"name": attack, "eps": eps_value, "steps": steps, "restarts": restarts,
               "version": version, "attacks": attacks}
    eps_tag = "" if eps_value == cfg.eps else f"-eps{eps_value:.4g}"
    target = Path(out) if out is not None else results_path(ckpt_path, attack_label(planned), len(data.test), eps_tag)
    if write:
        _check_writable(target, "results file")
    facts = checkpoint_facts(ckpt_path, ckpt, cfg)
    state_path = None
    if attack == "autoattack":
        state_path = Path(state) if state is not None else target.with_name(
            f".{target.stem}.{facts['checkpoint_sha256'][:12]}.state.pt")
        _check_writable(state_path, "state file")

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
        accuracies = check_accuracies(model, data.test, eps=eps_value, steps=check_steps,
                                      alpha=alpha, seed=seed, batch_size=batch_size)
        result["checks"] = [c.to_dict() for c in sanity_checks(accuracies, result)]
        result["checks_passed"] = all(c["passed"] for c in result["checks"])
        result["check_accuracies"] = accuracies
        result["checks_seconds"] = round(time.perf_counter() - t0, 3)
    run = run_folder_of(ckpt_path)
    full = record(result, facts, cfg, device=str(dev), run=None if run is None else str(run.path))
    if write:  # the folder is made only now: a refused evaluation leaves no trace
        full["results_file"] = str(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        write_json(target, full)
    if state_path is not None and state is None:
        state_path.unlink(missing_ok=True)
    return full
