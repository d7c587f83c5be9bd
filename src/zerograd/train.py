"""`zerograd train`: check everything, build the run (data, model, objective, hooks, run
folder), `fit`, then evaluate on the test split. `train(cfg) -> Run` is the library entry."""
from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from .accuracy import evaluate
from .config import (
    Config,
    apply,
    check_user_model,
    data_options,
    dataset_facts,
    model_for,
    validate,
    with_statistics,
)
from .data import Data, check_available, load_data, to_float
from .errors import ConfigError, ZerogradError
from .models import UserModel, is_user_model, needs_user_model, user_model
from .options import DiagnosticsOptions, GuardOptions
from .precision import amp_dtype
from .results import attack_title
from .runfolder import RunFolder, require_tensorboard
from .runtime import environment, seed_everything
from .schedules import SCHEDULES
from .training.diagnostics import diagnostics_for
from .training.distributed import check_resume, setup
from .training.events import Hook, Hooks, Stop, check_hooks
from .training.guard import Guard
from .training.loop import History, fit, no_progress
from .training.nanguard import NanGuard, nonfinite
from .training.objective import Objective
from .training.state import CheckpointStore, TrainState, resume_point
from .userdata import fingerprint, is_user_data


@dataclass
class Run:
    """The result of `train`: the model at the end, its config, the metrics and the folder."""

    cfg: Config
    model: torch.nn.Module
    history: list[dict]
    result: dict
    dir: Path | None
    data: Data


def make_optimizer(cfg: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr_max, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=cfg.lr_max, momentum=cfg.momentum,
                           weight_decay=cfg.weight_decay)


def hooks_for(cfg: Config, objective: Objective) -> list[Hook]:
    """The built-in hooks a config asks for, in the order they run: the NaN guard, the
    diagnostics, the CO guard."""
    hooks: list[Hook] = [NanGuard(cfg.nan_policy, cfg.nan_lr_factor, cfg.nan_max_rollbacks,
                                  check_gradients=objective.checks_gradients)]
    hooks += diagnostics_for(DiagnosticsOptions(**cfg.diagnostics))
    guard = GuardOptions(**cfg.guard)
    if guard.enabled:
        hooks.append(Guard(guard))
    return hooks


def train(cfg: Config, out: str | Path | None = None, *, callbacks=(), quiet: bool = False,
          force: bool = False, resume: bool = False, changed: tuple[str, ...] = (),
          model: str | torch.nn.Module | None = None) -> Run:
    """Train a model by cfg; write the run folder `out` (if given); return the Run. With
    `resume`, continue the unfinished run in `out` from its last checkpoint, bitwise as if it
    had never stopped; `changed` names config keys deliberately changed on resume (see
    runfolder.RESUME_CHANGEABLE), recorded in config.yaml and as a 'config_change' event.
    `callbacks` are extra `zerograd.Hook`s, run after the built-in ones.
    `model`: your own network, a spec (`module:file.py:factory`, `pkg.module:factory`) or an
    nn.Module (recorded as `object:<module>.<Class>`); zerograd puts its Normalize in front.
    Resuming a run of your own network needs the same `model` again: code is never imported
    from a run folder.

    Everything that can be checked is checked before anything is written."""
    cfg = validate(cfg)
    check_hooks(callbacks)
    if resume and out is None:
        raise ConfigError("resume=True needs the run folder to resume as `out`")
    cfg, user = _user_model(cfg, model, resume, RunFolder(out) if out is not None else None)
    par = setup(cfg)  # torchrun's process group, or a single process
    device = par.device
    amp_dtype(cfg.amp, cfg.amp_dtype, device)  # fp16 without CUDA fails here, before any work
    check_available(cfg.dataset, cfg.data_dir)
    quiet = quiet or not par.is_main
    run = RunFolder(out) if out is not None else None
    if run is not None and (run.path.is_dir() or not resume):  # a missing folder: resume_point says so
        par.on_main(run.lock)  # one line if another process writes this folder
    try:
        return _train(cfg, user, par, run, callbacks=callbacks, quiet=quiet, force=force, resume=resume,
                      changed=changed)
    finally:
        if run is not None:
            run.unlock()  # on return and on any exception


def _train(cfg: Config, user: UserModel | None, par, run: RunFolder | None, *, callbacks, quiet: bool,
           force: bool, resume: bool, changed: tuple[str, ...]) -> Run:
    """`train` with the run folder held: the rest of the checks, then the work."""
    device = par.device
    data_record = fingerprint(cfg.dataset) if is_user_data(cfg.dataset) else None
    if resume and run is not None:
        recorded = _recorded_config(run)
        _check_same_data(cfg, run, data_record, recorded)
        cfg = _recorded_statistics(cfg, recorded)
    point = resume_point(run, cfg, changed) if resume else None
    if point is not None:
        check_resume(point, cfg, par.world_size)
    if cfg.tensorboard and par.is_main and run is not None:
        require_tensorboard()

    seed_everything(cfg.seed)
    # your own data (issue 12): the training split may be streamed (data_budget, stream), and
    # mean/std not given are computed from it here, before config.yaml records cfg
    data = load_data(cfg.dataset, **data_options(cfg, device))
    cfg = with_statistics(cfg, data)
    if run is not None:
        par.on_main(run.prepare, force=force, resume=resume)
    model = model_for(cfg, user).to(device)
    if device.type == "cuda" and cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(cfg, model)
    model, train_model = par.wrap(model, cfg, to_float(data.train.take(torch.arange(1))))
    steps_per_epoch = math.ceil(len(data.train) / cfg.batch_size)
    objective = Objective(cfg, model, optimizer, device, train_model, steps_per_epoch)
    schedule = partial(SCHEDULES[cfg.schedule], total=cfg.epochs * steps_per_epoch, lr_max=cfg.lr_max,
                       **cfg.schedule_args)
    state = TrainState(cfg=cfg, model=model, optimizer=optimizer, data=data, method=objective.method,
                       par=par, schedule=schedule, checkpoints=CheckpointStore(run, par.is_main, device),
                       steps_per_epoch=steps_per_epoch, run_config=cfg.to_dict())
    history = History(echo=None if quiet else print_epoch_line)
    hooks = Hooks([*hooks_for(cfg, objective), *callbacks], from_main=par.from_main, emit=history.emit)

    log = None
    if run is not None and par.is_main:  # every rank reads the run folder; rank 0 writes it
        if resume:
            history.extend(run.keep_metrics(point["records"] if point else 0))
            run.remove_temp_files()
        else:
            run.start(cfg, {"environment": {**environment(), "device": str(device)},
                            **({"data": data_record} if data_record else {})})
        log = history.log = run.open_metrics(cfg.tensorboard)
    if point is not None:
        hooks.load_state_dict(state.resume(point, run.checkpoint("last"), changed))
        objective.rebind(state.cfg)  # method_args may have changed by rollbacks
        state.method = objective.method
    else:
        start = state.checkpoint(hooks.state_dict(), 0)
        state.checkpoints.save(0, start)
        state.checkpoints.save("last", start)
    if changed and run is not None and par.is_main:
        before = (point or {}).get("run_config") or (point or {}).get("config") or {}
        run.rewrite_config(state.cfg)
        history.emit({"event": "config_change", "epoch": state.epoch, "step": state.step,
                      "changes": {k: {"from": before.get(k), "to": getattr(state.cfg, k)} for k in changed}})
    try:
        stop = fit(state, objective, hooks, history, progress=no_progress if quiet else progress_bar)
        par.barrier()  # best.pt is written before any rank reads it
        result = final_evaluation(state, run, stop, quiet)
        # every rank is done with the group before any tears it down (gloo can abort a rank
        # that destroys its group while a peer still uses it); not on failure: a barrier there
        # would wait for a rank that is gone
        par.barrier()
    finally:
        if log is not None:
            log.close()
        par.close()
    return Run(cfg=state.cfg, model=model, history=list(history), result=result,
               dir=run.path if run is not None and par.is_main else None, data=data)


def _recorded_config(run: RunFolder) -> dict:
    """The run's config.yaml as data, or {} when it is missing or unreadable (resume_point
    then explains in one line)."""
    if not run.config_file.is_file():
        return {}
    try:
        return run.read_config_dict()
    except ConfigError:
        return {}


def _check_same_data(cfg: Config, run: RunFolder, now: dict | None, recorded_config: dict) -> None:
    """Refuse to resume on your own data changed since the run started (`userdata.fingerprint`):
    an image added or removed shifts the validation carve and every epoch's order, so the
    resumed run would silently be another run. Runs recorded without a fingerprint pass."""
    if now is None:
        return
    recorded = recorded_config.get("data")
    if not isinstance(recorded, dict) or recorded.get("fingerprint") in (None, now["fingerprint"]):
        return
    before = recorded.get("images") if isinstance(recorded.get("images"), dict) else {}  # hand edits
    counts = ", ".join(f"{k} {before.get(k, '?')} -> {v}" for k, v in now["images"].items())
    raise ConfigError(f"--resume {str(run.path)!r}: dataset {cfg.dataset} changed since the run started "
                      f"(images {counts}; an image added, removed or renamed); restore it, "
                      "or start a new run")


def _recorded_statistics(cfg: Config, recorded: dict) -> Config:
    """On resume, the mean/std the run computed from its own data (config.yaml records them)
    where cfg leaves them to be computed: the resumed model normalizes as before, and the
    training images are not read again for them."""
    if cfg.mean is not None and cfg.std is not None or not recorded:
        return cfg
    facts = dataset_facts(cfg)
    if facts.mean is not None and facts.std is not None:
        return cfg  # a built-in dataset's constants: nothing was computed
    return validate(dataclasses.replace(cfg, mean=cfg.mean or recorded.get("mean"),
                                        std=cfg.std or recorded.get("std")))


def _user_model(cfg: Config, model, resume: bool, run: RunFolder | None) -> tuple[Config, UserModel | None]:
    """cfg with the user's model recorded, and that model imported and checked (one line for
    a bad one, before any work). A spec in cfg is imported only for a new run (the user wrote
    it for this run); a resumed run of a user model needs it passed as `model` again."""
    recorded = cfg.model
    if resume and run is not None:  # the run's own record (data only): what the caller must pass again
        recorded = str(_recorded_config(run).get("model", cfg.model))
    if model is None:
        if resume and is_user_model(recorded):
            raise ConfigError(needs_user_model(recorded))
        if not is_user_model(cfg.model):
            return cfg, None
        user = user_model(cfg.model)
    elif resume:
        if not is_user_model(recorded):
            raise ConfigError(f"the run uses the built-in model {recorded!r}: resume it without model=")
        user = user_model(model, recorded=recorded)
    else:
        user = user_model(model)
        if is_user_model(cfg.model) and cfg.model != user.spec:
            raise ConfigError(f"model={user.spec!r} and the config's model={cfg.model!r} disagree; "
                              "give one")
    if user.spec != cfg.model:
        cfg = validate(apply(cfg, {"model": user.spec}))
    check_user_model(cfg, user)
    return cfg, user


def final_evaluation(state: TrainState, run: RunFolder | None, stop: Stop | None, quiet: bool) -> dict:
    """Clean and PGD accuracy on the test split with the chosen checkpoint (a Stop may choose
    it, e.g. the best one after a non-finite loss); eval.json."""
    cfg, model = state.cfg, state.model
    which = (stop.evaluate if stop is not None else None) or cfg.final_checkpoint
    epoch = state.epoch
    if which == "best" and state.checkpoints.has("best"):
        ckpt = state.checkpoints.load("best")[0]
        model.load_state_dict(ckpt["model"])
        epoch = ckpt["epoch"]
    elif stop is not None and (which == "best" or nonfinite(None, model, grads=False)):
        which = "last"  # no best.pt yet, or broken weights: the last resume point (checked finite)
        ckpt = state.checkpoints.load("last")[0]
        model.load_state_dict(ckpt["model"])
        epoch = ckpt["epoch"]
    if nonfinite(None, model, grads=False) is not None:
        raise ZerogradError(f"training ended with non-finite weights (checkpoint {which!r}); no "
                            "evaluation was made: lower lr_max or use nan_policy=rollback")
    result = evaluate(model, state.data.test, eps=cfg.eps, steps=cfg.test_pgd_steps,
                      restarts=cfg.test_restarts, alpha=cfg.test_alpha, batch_size=cfg.eval_batch_size,
                      flags=state.par.robust_flags)
    result.update({"checkpoint": which, "checkpoint_epoch": epoch, "dataset": cfg.dataset,
                   "split": "test", "method": cfg.method, "seed": cfg.seed,
                   "stopped": None if stop is None else stop.reason})
    if run is not None and state.par.is_main:
        run.write_result(result)
    if not quiet:
        attack = attack_title(result["attack"])
        print(f"\n{'split':<8}{'n':>7}{'clean':>9}{attack:>12}\n"
              f"{'test':<8}{result['n']:>7}{100 * result['clean_acc']:>8.2f}%{100 * result['robust_acc']:>11.2f}%",
              file=sys.stderr)
    return result


# --------------------------------------------------------------------------- the console


def format_epoch_line(m: dict) -> str:
    """One fixed-width line per epoch, from the same dict written to metrics.jsonl."""
    def pct(key):
        v = m.get(key)
        return f"{100 * v:6.2f}" if isinstance(v, (int, float)) and math.isfinite(v) else "   n/a"

    return (f"epoch {m['epoch']:>3}  lr {m['lr']:.4f}  loss {m['train/loss']:.4f}  "
            f"train_acc {pct('train/acc')}  val_clean {pct('val/clean_acc')}  "
            f"val_pgd {pct('val/pgd_acc')}  {m['time/epoch_s']:6.1f}s")


def print_epoch_line(record: dict) -> None:
    if "train/loss" in record:
        print(format_epoch_line(record), file=sys.stderr, flush=True)


def progress_bar(iterable, total: int, desc: str):
    if not sys.stderr.isatty():
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)
