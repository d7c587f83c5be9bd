"""`zerograd eval`: clean and robust accuracy (PGD, FGSM or AutoAttack) of a run folder, a
checkpoint, or weights zerograd did not train (`--model SPEC --weights FILE --dataset NAME`)
on the test split, the gradient-masking checks, and a results file. Both kinds go through
one evaluation (`_evaluate_model`): the same attacks, checks and results record."""
from __future__ import annotations

import copy
import dataclasses
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn

from .accuracy import evaluate, evaluate_autoattack, evaluate_fgsm
from .autoattack import resolve_plan
from .checkpoint import fit_weights, read_weights
from .config import (
    MAX_SEED,
    Config,
    apply,
    data_options,
    dataset_facts,
    model_for,
    normalization,
    parse_number,
    parse_override,
    validate,
)
from .data import check_available, load_data, to_float
from .errors import ConfigError
from .files import sha256_file, write_json
from .models import is_user_model, user_model
from .registry import Registry
from .results import attack_label, record
from .runfolder import (
    check_output,
    checkpoint_facts,
    external_results_path,
    load_checkpoint_model,
    results_path,
    run_folder_of,
)
from .runtime import eval_mode, resolve_device, seed_everything
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


def _progress_printer(quiet: bool):
    if quiet:
        return None

    def progress(name: str, done: int, total: int) -> None:
        print(f"  {name}: batch {done}/{total}", file=sys.stderr, flush=True)

    return progress


def evaluate_path(path, *, attack: str = "pgd", n=None, steps=None, restarts=None, alpha=None,
                  eps=None, which=None, data_dir=None, batch_size=256, seed=0, device="auto",
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
    run = run_folder_of(ckpt_path)
    return _evaluate_model(
        model, cfg, checkpoint_facts(ckpt_path, ckpt, cfg), dev=dev, trained=True,
        run=None if run is None else str(run.path),
        target=lambda label, size, tag: results_path(ckpt_path, label, size, tag),
        attack=attack, n=n, steps=steps, restarts=restarts, alpha=alpha, eps_value=eps_value,
        batch_size=batch_size, seed=seed, version=version, attacks=attacks, state=state,
        attack_params=attack_params, out=out, checks=checks, check_steps=check_steps,
        write=write, quiet=quiet)


NORMALIZE = ("none", "dataset")
ZEROGRAD_LAYOUT = ("0.mean", "0.std")  # build_model's Normalize first: a zerograd state_dict


def evaluate_external(weights, *, model, dataset, model_args: dict | None = None,
                      normalize: str = "none", mean=None, std=None, image_size=None,
                      attack: str = "pgd", n=None,
                      steps=None, restarts=None, alpha=None, eps=None, data_dir=None,
                      batch_size=256, seed=0, device="auto", version: str = "standard",
                      attacks: list[str] | None = None, state=None,
                      attack_params: dict | None = None, out=None, checks: bool = True,
                      check_steps: int = 10, write: bool = True, quiet: bool = True) -> dict:
    """`zerograd eval --model SPEC --weights FILE --dataset NAME`: the evaluation of
    `evaluate_path` for weights zerograd did not train. `model` is a spec
    (module:file.py:factory or pkg.module:factory, imported now: the caller gave it), a
    registered model name, or an nn.Module; a factory gets num_classes and in_channels from
    the dataset plus `model_args`. The network sees pixels in [0, 1] (the threat model's space)
    unless `normalize="dataset"` (the dataset's mean/std) or `mean`/`std` put zerograd's
    Normalize in front; a zerograd state_dict (an export or checkpoint: Normalize then the
    network) brings its own. `image_size` resizes a folder's images as in training (a folder
    of mixed sizes needs it; the size tags the results file). Weights: see `checkpoint.read_weights`. Attack defaults are a
    fresh config's (eps 8/255, PGD-50-10, alpha 0.25). Results go beside the weights
    (`runfolder.external_results_path`) or to `out`."""
    missing = [flag for flag, v in (("--model SPEC", model), ("--weights FILE", weights),
                                    ("--dataset NAME", dataset)) if v is None]
    if missing:
        raise ConfigError("zerograd eval takes a run folder or checkpoint (zerograd eval RUN), or a "
                          "model zerograd did not train (--model SPEC --weights FILE --dataset NAME); "
                          f"missing: {', '.join(missing)}")
    eps_value = _check_eval_args(attack, n, steps, restarts, alpha, eps, batch_size, version,
                                 attacks, attack_params, check_steps, seed)
    if normalize not in NORMALIZE:
        raise ConfigError(f"--normalize {normalize!r} is invalid: must be one of {', '.join(NORMALIZE)}")
    if (mean is None) != (std is None):
        raise ConfigError("--mean and --std go together: give both (one value per channel) or neither")
    if mean is not None and normalize != "none":
        raise ConfigError("--mean/--std and --normalize dataset both choose the normalization: give one")
    # a module is a copy: the weights are loaded into it, never into the caller's object
    user = user_model(copy.deepcopy(model)) if isinstance(model, nn.Module) else None
    cfg = validate(apply(Config(), {
        "dataset": dataset, "model": model if user is None else user.spec,
        "model_args": model_args or {}, "mean": mean, "std": std, "val_size": 0, "image_size": image_size,
        "data_dir": None if data_dir is None else str(data_dir)}, source="eval"))
    state_dict = read_weights(weights)
    check_available(cfg.dataset, cfg.data_dir)
    if user is None and is_user_model(cfg.model):
        user = user_model(cfg.model)  # the spec given on this command line: imported only now
    normalized = normalize == "dataset" or mean is not None
    info = dataset_facts(cfg)
    if normalize == "dataset" and (info.mean is None or info.std is None):
        raise ConfigError(f"--normalize dataset: {cfg.dataset} has no built-in mean/std (a run "
                          "computes them from its training split); give --mean M... --std S... instead")
    channels = info.shape[0]
    mean, std = normalization(cfg) if normalized else ([0.0] * channels, [1.0] * channels)
    net = model_for(dataclasses.replace(cfg, mean=mean, std=std), user)  # Normalize(0, 1): identity
    what = f"model {cfg.model!r}"
    # the network's own keys first: a network may well begin with a layer named like Normalize
    if set(state_dict) != set(net[1].state_dict()) and all(k in state_dict for k in ZEROGRAD_LAYOUT):
        if normalized:
            raise ConfigError(f"weights file {str(weights)!r} is a zerograd model with its own "
                              f"normalization ({', '.join(ZEROGRAD_LAYOUT)}): drop --normalize/--mean/--std")
        fit_weights(net, state_dict, weights, what)
        norm = {"mean": net[0].mean.flatten().tolist(), "std": net[0].std.flatten().tolist(),
                "from": "weights"}
    else:
        fit_weights(net[1], state_dict, weights, what)
        norm = {"mean": list(mean), "std": list(std),
                "from": "dataset" if normalize == "dataset" else "options"} if normalized else None
    dev = resolve_device(device)
    facts = {"checkpoint": str(weights), "checkpoint_sha256": sha256_file(weights),
             "checkpoint_kind": "external", "checkpoint_epoch": None, "best_selected_by": None,
             "model_args": dict(cfg.model_args), "normalization": norm}
    norm_tag = ("-normalized" if normalized else "") + (
        f"-{cfg.image_size[0]}x{cfg.image_size[1]}px" if cfg.image_size else "")
    return _evaluate_model(
        net.to(dev), cfg, facts, dev=dev, trained=False, run=None,
        target=lambda label, size, tag: external_results_path(weights, cfg.dataset, label, size,
                                                              tag + norm_tag),
        attack=attack, n=n, steps=steps, restarts=restarts, alpha=alpha, eps_value=eps_value,
        batch_size=batch_size, seed=seed, version=version, attacks=attacks, state=state,
        attack_params=attack_params, out=out, checks=checks, check_steps=check_steps,
        write=write, quiet=quiet)


def model_args_of(overrides) -> dict:
    """`--set model_args.KEY=VALUE` (or `--set model_args={...}`) of `zerograd eval --weights`
    as one mapping; the only key it takes (eps, n, steps, ... are options of their own)."""
    args: dict = {}
    for text in overrides or ():
        parsed = parse_override(text)
        if set(parsed) != {"model_args"} or not isinstance(parsed["model_args"], dict):
            raise ConfigError(f"--set {text!r}: zerograd eval takes only model_args.KEY=VALUE here "
                              "(eps, n, steps and the rest are options: see zerograd eval --help)")
        args.update(parsed["model_args"])
    return args


def _probe(model, split, num_classes: int, name: str) -> None:
    """One test image through a model zerograd did not train, before any attack: a network
    built for another input size or class count fails here in one line, not mid-evaluation."""
    x = to_float(split.x[:1])
    try:
        with torch.no_grad(), eval_mode(model):
            logits = model(x)
    except Exception as e:  # noqa: BLE001 (the user's network: any failure is a bad input)
        raise ConfigError(f"model {name!r} fails on a test image of shape {tuple(x.shape)}: "
                          f"{type(e).__name__}: {' '.join(str(e).split())[:200]}") from None
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (1, num_classes):
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ConfigError(f"model {name!r} returned {got} for one test image; the evaluation needs "
                          f"logits of shape (1, {num_classes}) (one per class)")


def _evaluate_model(model, cfg, facts: dict, *, dev, trained: bool, run: str | None, target,
                    attack, n, steps, restarts, alpha, eps_value, batch_size, seed, version,
                    attacks, state, attack_params, out, checks, check_steps, write, quiet) -> dict:
    """The one evaluation behind `evaluate_path` and `evaluate_external`: `model` ready on
    `dev`; `cfg` gives the dataset and the attack defaults; `target(label, n, eps_tag)` is the
    default results file."""
    eps_value = cfg.eps if eps_value is None else eps_value
    alpha = cfg.test_alpha if alpha is None else alpha
    steps = cfg.test_pgd_steps if steps is None else steps
    restarts = cfg.test_restarts if restarts is None else restarts
    check_available(cfg.dataset, cfg.data_dir)
    data = load_data(cfg.dataset, **data_options(cfg, dev, train_subset=None, test_subset=n, stream=True))
    if not trained:
        _probe(model, data.test, data.info.num_classes, cfg.model)
    planned = {"name": attack, "eps": eps_value, "steps": steps, "restarts": restarts,
               "version": version, "attacks": attacks}
    eps_tag = "" if eps_value == cfg.eps else f"-eps{eps_value:.4g}"
    if attack == "pgd" and alpha != cfg.test_alpha:  # PGD with another step: another file
        eps_tag += f"-alpha{alpha:.4g}"
    target = Path(out) if out is not None else target(attack_label(planned), len(data.test), eps_tag)
    if write:
        check_output(target, "results file")
    state_path = None
    if attack == "autoattack":
        state_path = Path(state) if state is not None else target.with_name(
            f".{target.stem}.{facts['checkpoint_sha256'][:12]}.state.pt")
        check_output(state_path, "state file")

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
    full = record(result, facts, cfg, device=str(dev), run=run, trained=trained)
    if write:  # the folder is made only now: a refused evaluation leaves no trace
        full["results_file"] = str(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        write_json(target, full)
    if state_path is not None and state is None:
        state_path.unlink(missing_ok=True)
    return full
