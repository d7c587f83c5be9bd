"""The training loop: `train(cfg) -> Run`. It knows no method (it binds one from the config)
and no diagnostic (callbacks return metrics or actions)."""
from __future__ import annotations

import copy
import math
import platform
import random
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import __version__
from .checkpoint import atomic_write, load_checkpoint, save_checkpoint
from .config import Config, to_yaml, validate
from .data import Data, batches, check_available, load_data, to_float
from .diagnostics import callbacks_for
from .distributed import Parallel, check_resume, setup
from .errors import ConfigError
from .evaluate import evaluate, robust_flags
from .models import build_model
from .nanguard import nonfinite
from .perturb import METHODS
from .precision import amp_dtype, grad_scaler
from .regularize import grad_align
from .resume import (
    FORMAT,
    callback_states,
    load_training_state,
    remove_temp_files,
    restore,
    resume_point,
    rng_state,
    truncate_metrics,
)
from .runlog import MetricsLog, prepare_run_dir, write_json
from .schedules import SCHEDULES

# --------------------------------------------------------------------------- actions


@dataclass
class Stop:
    """A callback asks the loop to stop after this step or epoch."""

    reason: str
    info: dict = field(default_factory=dict)  # extra fields for the logged event


@dataclass
class Rollback:
    """A callback asks the loop to reload the checkpoint of `epoch` (0 = the initial
    weights) and continue with `method_args` updated (e.g. a larger q)."""

    epoch: int
    method_args: dict = field(default_factory=dict)
    reason: str = ""
    info: dict = field(default_factory=dict)  # extra fields for the logged event


@dataclass
class TrainState:
    """What callbacks see. They may read anything; they change the run only through actions."""

    cfg: Config
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    data: Data
    attack: object
    device: torch.device
    epoch: int = 0
    step: int = 0
    steps_per_epoch: int = 0
    x: torch.Tensor | None = None  # the current batch (in on_step)
    y: torch.Tensor | None = None
    delta: torch.Tensor | None = None
    metrics: dict = field(default_factory=dict)
    run_dir: Path | None = None
    rollbacks: int = 0
    dist: Parallel | None = None  # rank, world size; None: a single process
    lr_scale: float = 1.0  # the schedule's lr times this (lowered by NaN rollbacks)
    nan_rollbacks: int = 0


@dataclass
class Run:
    """The result of `train`: the model at the end, its config, the metrics and the folder."""

    cfg: Config
    model: torch.nn.Module
    history: list[dict]
    result: dict
    dir: Path | None
    data: Data


# --------------------------------------------------------------------------- helpers


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA, then MPS, then CPU; an unavailable device is a ConfigError."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} is not available on this machine (no CUDA); use device=cpu or auto")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device={name!r} is not available on this machine; use device=cpu or auto")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The data order and augmentation of an epoch depend only on (seed, epoch), so a run can
    be resumed at any epoch without replaying the ones before."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def bind_method(cfg: Config, par: Parallel | None = None):
    """The run's perturbation as a function (model, x, y) -> delta."""
    if par is not None and par.spread > 1:  # MultiGrad's starts spread over a process group
        return partial(par.multigrad, eps=cfg.eps, **cfg.method_args)
    return partial(METHODS[cfg.method], eps=cfg.eps, **cfg.method_args)


def make_optimizer(cfg: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr_max, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=cfg.lr_max, momentum=cfg.momentum,
                           weight_decay=cfg.weight_decay)


def autocast_for(cfg: Config, device: torch.device):
    """The training step's autocast context factory (see precision.amp_dtype)."""
    from .precision import autocast

    return autocast(amp_dtype(cfg.amp, cfg.amp_dtype, device), device)


def build_for(cfg: Config, data: Data, device: torch.device) -> torch.nn.Module:
    info = data.info
    model = build_model(cfg.model, num_classes=info.num_classes, in_channels=info.shape[0],
                        mean=info.mean, std=info.std, **cfg.model_args).to(device)
    if device.type == "cuda" and cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def environment() -> dict:
    """Versions and machine facts recorded beside the resolved config."""
    return {
        "zerograd_version": __version__,
        "torch_version": str(torch.__version__),
        "python_version": platform.python_version(),
    }


def format_epoch_line(m: dict) -> str:
    """One fixed-width line per epoch, from the same dict written to metrics.jsonl."""
    def pct(key):
        v = m.get(key)
        return f"{100 * v:6.2f}" if isinstance(v, (int, float)) and math.isfinite(v) else "   n/a"

    return (f"epoch {m['epoch']:>3}  lr {m['lr']:.4f}  loss {m['train/loss']:.4f}  "
            f"train_acc {pct('train/acc')}  val_clean {pct('val/clean_acc')}  "
            f"val_pgd {pct('val/pgd_acc')}  {m['time/epoch_s']:6.1f}s")


def _progress(iterable, total, quiet, desc):
    if quiet or not sys.stderr.isatty():
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)


# --------------------------------------------------------------------------- the loop


def checkpoint_state(state: TrainState, best: float, callbacks=(), records: int = 0,
                     done: bool = False) -> dict:
    """All a run needs to continue exactly from here (see resume.py); `records` is how many
    metrics.jsonl lines precede this point, `done` that training ended (a Stop)."""
    return {
        "format": FORMAT,
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "epoch": state.epoch,
        "step": state.step,
        "best_val_pgd": best,
        "method_args": dict(state.cfg.method_args),
        "config": state.cfg.to_dict(),
        "schedule": {"step": state.step, "lr_scale": state.lr_scale},
        "rng": rng_state(),
        "callbacks": callback_states(callbacks),
        "rollbacks": state.rollbacks,
        "nan_rollbacks": state.nan_rollbacks,
        "records": records,
        "done": done,
        "world_size": state.dist.world_size if state.dist else 1,
    }


def validation_metrics(state: TrainState) -> dict:
    """Clean and PGD accuracy on the validation split (empty split: none)."""
    cfg, val = state.cfg, state.data.val
    if len(val) == 0:
        return {}
    flags = state.dist.robust_flags if state.dist else robust_flags
    clean, robust = flags(state.model, val, "pgd", eps=cfg.eps, batch_size=max(cfg.batch_size, 256),
                                 steps=cfg.val_pgd_steps, restarts=1, alpha=cfg.val_alpha)
    return {"val/clean_acc": clean.float().mean().item(), "val/pgd_acc": robust.float().mean().item()}


def train(cfg: Config, out: str | Path | None = None, *, callbacks=(), quiet: bool = False,
          force: bool = False, resume: bool = False) -> Run:
    """Train a model by cfg; write the run folder `out` (if given); return the Run. With
    `resume`, continue the unfinished run in `out` from its last checkpoint, bitwise as if it
    had never stopped.

    Everything that can be checked is checked before anything is written."""
    cfg = validate(cfg)
    callbacks = (*callbacks_for(cfg), *callbacks)
    par = setup(cfg)  # torchrun's process group, or a single process
    device = par.device
    amp_dtype(cfg.amp, cfg.amp_dtype, device)  # fp16 without CUDA fails here, before any work
    check_available(cfg.dataset, cfg.data_dir)
    quiet = quiet or not par.is_main
    if resume and out is None:
        raise ConfigError("resume=True needs the run folder to resume as `out`")
    point = resume_point(Path(out), cfg) if resume else None
    if point is not None:
        check_resume(point, cfg, par.world_size)

    seed_everything(cfg.seed)
    data = load_data(cfg.dataset, data_dir=cfg.data_dir, val_size=cfg.val_size,
                     train_subset=cfg.train_subset, test_subset=cfg.test_n, device=device,
                     seed=cfg.seed)
    run_dir = par.on_main(prepare_run_dir, out, force=force, resume=resume) if out is not None else None
    writer = run_dir if par.is_main else None  # every rank reads the run folder; rank 0 writes it
    model = build_for(cfg, data, device)
    optimizer = make_optimizer(cfg, model)
    model, train_model = par.wrap(model, cfg, to_float(data.train.x[:1]))
    augment = data.info.augment if cfg.augment is None else cfg.augment
    steps_per_epoch = math.ceil(len(data.train) / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    schedule = partial(SCHEDULES[cfg.schedule], total=total_steps, lr_max=cfg.lr_max, **cfg.schedule_args)
    autocast = autocast_for(cfg, device)
    scaler = grad_scaler(amp_dtype(cfg.amp, cfg.amp_dtype, device), device)

    state = TrainState(cfg=cfg, model=model, optimizer=optimizer, data=data, attack=bind_method(cfg, par),
                       device=device, steps_per_epoch=steps_per_epoch, run_dir=run_dir, dist=par)
    log = None
    history: list[dict] = []
    best = -1.0
    done = False
    if writer is not None:
        # resuming keeps the lines the checkpoint covers; a (forced) fresh run keeps none
        history = truncate_metrics(run_dir / "metrics.jsonl", point["records"] if point else 0)
        if resume:
            remove_temp_files(run_dir)
        else:
            (run_dir / "eval.json").unlink(missing_ok=True)
            atomic_write(run_dir / "config.yaml",
                         to_yaml(cfg, {"environment": {**environment(), "device": str(device)}}).encode())
        log = MetricsLog(run_dir / "metrics.jsonl", run_dir / "tensorboard" if cfg.tensorboard else None)
    if point is not None:
        restore(state, point, callbacks, run_dir / "checkpoints" / "last.pt")
        state.attack = bind_method(state.cfg, par)  # method_args may have changed by rollbacks
        best, done = float(point["best_val_pgd"]), bool(point.get("done"))
    elif writer is not None:
        start = checkpoint_state(state, -1.0, callbacks)
        save_checkpoint(run_dir / "checkpoints" / "epoch-0.pt", start)
        save_checkpoint(run_dir / "checkpoints" / "last.pt", start)
    init_state = {k: v.clone() for k, v in model.state_dict().items()} if run_dir is None else None
    # the NaN guard's last good state: last.pt in a run folder, else a copy kept in memory
    last_good = copy.deepcopy(checkpoint_state(state, best, callbacks)) if run_dir is None else None

    def emit(record: dict) -> None:
        history.append(record)
        if log is not None:
            log.write(record)

    def act(action) -> str | None:
        """Carry out a callback's action; returns 'stop', 'rolled_back' or None."""
        nonlocal best
        if isinstance(action, Stop):
            emit({"event": "stop", "epoch": state.epoch, "step": state.step, "reason": action.reason,
                  **action.info})
            return "stop"
        if isinstance(action, Rollback):
            par.barrier()  # rank 0 has written the checkpoint the others read
            restore_epoch(state, action.epoch, init_state)
            state.cfg = validate(Config(**{**state.cfg.to_dict(),
                                           "method_args": {**state.cfg.method_args, **action.method_args}}))
            state.attack = bind_method(state.cfg, par)
            state.rollbacks += 1
            emit({"event": "rollback", "epoch": state.epoch, "step": state.step, "to_epoch": action.epoch,
                  "method_args": dict(state.cfg.method_args), "reason": action.reason, **action.info})
            save_resume_point()
            return "rolled_back"
        return None

    def save_resume_point(finished: bool = False) -> None:
        """last.pt = the state right now, so a crash from here on resumes exactly here."""
        nonlocal last_good
        ckpt = checkpoint_state(state, best, callbacks, len(history), finished)
        if writer is not None:
            save_checkpoint(writer / "checkpoints" / "last.pt", ckpt)
        elif run_dir is None:
            last_good = copy.deepcopy(ckpt)

    def recover(what: str) -> str:
        """A non-finite loss or gradient (no step was taken): roll back to the last good
        state with a lower learning rate, or stop (keeping the best checkpoint)."""
        event = {"event": "nonfinite", "what": what, "epoch": state.epoch, "step": state.step,
                 "lr": lr}
        if cfg.nan_policy == "stop" or state.nan_rollbacks >= cfg.nan_max_rollbacks:
            emit({**event, "action": "stop", "nan_rollbacks": state.nan_rollbacks})
            return "nan_stop"
        source = run_dir / "checkpoints" / "last.pt" if run_dir is not None else "memory"
        good = load_checkpoint(source, map_location=device) if run_dir is not None else last_good
        scale, count = state.lr_scale * cfg.nan_lr_factor, state.nan_rollbacks + 1
        load_training_state(state, good, source)
        state.lr_scale, state.nan_rollbacks = scale, count
        emit({**event, "action": "rollback", "to_epoch": state.epoch, "to_step": state.step,
              "lr_scale": scale, "nan_rollbacks": count})
        save_resume_point()
        return "rolled_back"

    outcome = None
    try:
        epoch = state.epoch
        while epoch < cfg.epochs and not done:
            epoch += 1
            state.epoch = epoch
            model.train()
            for cb in callbacks:
                getattr(cb, "on_epoch_start", None) and cb.on_epoch_start(state)
            t0 = time.perf_counter()
            loss_sum = correct_sum = seen = 0.0
            outcome = None
            it = batches(data.train, cfg.batch_size, shuffle=True, augment=augment,
                         generator=epoch_generator(cfg.seed, epoch))
            for x, y in _progress(it, steps_per_epoch, quiet, f"epoch {epoch}"):
                shard = par.split(x, y)  # this process's part of the global batch
                if shard is None:
                    continue
                x, y = shard.x, shard.y
                lr = schedule(state.step) * state.lr_scale
                for group in optimizer.param_groups:
                    group["lr"] = lr
                if device.type == "cuda" and cfg.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with autocast(), shard.noise():
                    delta = state.attack(model, x, y)
                    x, y, delta = shard.train_part(x, y, delta)
                    logits = train_model(x + delta)
                    loss = F.cross_entropy(logits.float(), y)
                    if cfg.grad_align > 0:
                        loss = loss + grad_align(train_model, x, y, eps=cfg.eps, lam=cfg.grad_align)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(shard.weight(loss, len(y))).backward()
                bad = nonfinite(loss, model, grads=not scaler.is_enabled())  # the scaler skips inf steps
                if bad:
                    optimizer.zero_grad(set_to_none=True)
                    outcome = recover(bad)
                    break
                if cfg.clip_grad_norm is not None:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                state.step += 1
                # running sums stay on the device: no host sync per step on a GPU
                loss_sum = loss_sum + loss.detach() * len(y)
                correct_sum = correct_sum + (logits.argmax(1) == y).sum()
                seen += len(y)
                state.x, state.y, state.delta = x, y, delta
                for cb in callbacks:
                    out_ = par.agree(getattr(cb, "on_step", None) and cb.on_step(state))
                    if isinstance(out_, dict):
                        emit({"epoch": epoch, "step": state.step, **out_})
                    elif out_ is not None:
                        outcome = act(out_)
                        if outcome:
                            break
                if outcome:
                    break
            state.x = state.y = state.delta = None
            if outcome == "rolled_back":
                epoch = state.epoch
                continue
            if outcome == "nan_stop":
                break
            loss_sum, correct_sum, seen = par.sum(loss_sum, correct_sum, seen)
            metrics = {"epoch": epoch, "step": state.step, "lr": lr,
                       "train/loss": float(loss_sum) / max(seen, 1),
                       "train/acc": float(correct_sum) / max(seen, 1),
                       "time/epoch_s": time.perf_counter() - t0}
            metrics.update(validation_metrics(state))
            state.metrics = metrics
            action = None
            for cb in callbacks:
                out_ = par.agree(getattr(cb, "on_epoch", None) and cb.on_epoch(state))
                if isinstance(out_, dict):
                    metrics.update(out_)
                elif out_ is not None and action is None:
                    action = out_
            emit(metrics)
            if not quiet:
                print(format_epoch_line(metrics), file=sys.stderr, flush=True)
            score = metrics.get("val/pgd_acc", -1.0)
            if isinstance(action, Stop):  # before saving, so the checkpoint knows training ended
                outcome, action = act(action), None
            improved = score > best
            best = max(best, score)
            if writer is not None:
                ckpt = checkpoint_state(state, best, callbacks, len(history), outcome == "stop")
                ckpt_dir = run_dir / "checkpoints"
                if cfg.keep_epoch_checkpoints:
                    save_checkpoint(ckpt_dir / f"epoch-{epoch}.pt", ckpt)
                if improved or not (ckpt_dir / "best.pt").exists():
                    save_checkpoint(ckpt_dir / "best.pt", ckpt)
            save_resume_point(outcome == "stop")
            if outcome == "stop":
                break
            if action is not None:
                outcome = act(action)
                if outcome == "stop":
                    break
                if outcome == "rolled_back":
                    epoch = state.epoch
        par.barrier()  # best.pt is written before any rank reads it
        result = final_evaluation(state, run_dir, quiet, after_nan=outcome == "nan_stop")
    finally:
        if log is not None:
            log.close()
        par.close()
    return Run(cfg=state.cfg, model=model, history=history, result=result,
               dir=run_dir if par.is_main else None, data=data)


def restore_epoch(state: TrainState, epoch: int, init_state: dict | None) -> None:
    """Reload the model and optimizer saved at the end of `epoch` (exactly those weights)."""
    if state.run_dir is None:
        if epoch != 0 or init_state is None:
            raise ConfigError("rolling back to a past epoch needs a run folder (--out) for its checkpoints")
        state.model.load_state_dict(init_state)
        state.epoch, state.step = 0, 0
        return
    path = state.run_dir / "checkpoints" / f"epoch-{epoch}.pt"
    load_training_state(state, load_checkpoint(path, map_location=state.device), path)


def final_evaluation(state: TrainState, run_dir: Path | None, quiet: bool, after_nan: bool = False) -> dict:
    """Clean and PGD accuracy on the test split with the chosen checkpoint (the best one after
    a NaN stop); eval.json."""
    cfg, model = state.cfg, state.model
    which = "best" if after_nan else cfg.final_checkpoint
    if which == "best" and run_dir is not None and (run_dir / "checkpoints" / "best.pt").exists():
        ckpt = load_checkpoint(run_dir / "checkpoints" / "best.pt", map_location=state.device)
        model.load_state_dict(ckpt["model"])
    result = evaluate(model, state.data.test, eps=cfg.eps, steps=cfg.test_pgd_steps,
                      restarts=cfg.test_restarts, alpha=cfg.test_alpha, batch_size=max(cfg.batch_size, 256),
                      flags=state.dist.robust_flags if state.dist else robust_flags)
    result.update({"checkpoint": which, "dataset": cfg.dataset, "split": "test",
                   "method": cfg.method, "seed": cfg.seed})
    if run_dir is not None and (state.dist is None or state.dist.is_main):
        write_json(run_dir / "eval.json", result)
    if not quiet:
        a = result["attack"]
        attack = f"PGD-{a['steps']}-{a['restarts']}"
        print(f"\n{'split':<8}{'n':>7}{'clean':>9}{attack:>12}\n"
              f"{'test':<8}{result['n']:>7}{100 * result['clean_acc']:>8.2f}%{100 * result['robust_acc']:>11.2f}%",
              file=sys.stderr)
    return result
