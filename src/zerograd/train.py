"""The training loop: `train(cfg) -> Run`. It knows no method (it binds one from the config)
and no diagnostic (callbacks return metrics or actions)."""
from __future__ import annotations

import contextlib
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
from .checkpoint import load_checkpoint, save_checkpoint
from .config import Config, to_yaml, validate
from .data import Data, batches, check_available, load_data
from .diagnostics import callbacks_for
from .errors import ConfigError
from .evaluate import evaluate, robust_flags
from .models import build_model
from .perturb import METHODS
from .regularize import grad_align
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


def bind_method(cfg: Config):
    """The run's perturbation as a function (model, x, y) -> delta."""
    return partial(METHODS[cfg.method], eps=cfg.eps, **cfg.method_args)


def make_optimizer(cfg: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr_max, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=cfg.lr_max, momentum=cfg.momentum,
                           weight_decay=cfg.weight_decay)


def autocast_for(cfg: Config, device: torch.device):
    """bf16 (or fp16 where bf16 is unsupported) autocast on CUDA when cfg.amp; else nothing."""
    if device.type == "cuda" and cfg.amp:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return partial(torch.autocast, device_type="cuda", dtype=dtype)
    return contextlib.nullcontext


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


def checkpoint_state(state: TrainState, best: float) -> dict:
    return {
        "format": "zerograd-checkpoint-1",
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "epoch": state.epoch,
        "step": state.step,
        "best_val_pgd": best,
        "method_args": dict(state.cfg.method_args),
        "config": state.cfg.to_dict(),
        "torch_rng": torch.get_rng_state(),
    }


def validation_metrics(state: TrainState) -> dict:
    """Clean and PGD accuracy on the validation split (empty split: none)."""
    cfg, val = state.cfg, state.data.val
    if len(val) == 0:
        return {}
    clean, robust = robust_flags(state.model, val, "pgd", eps=cfg.eps, batch_size=max(cfg.batch_size, 256),
                                 steps=cfg.val_pgd_steps, restarts=1, alpha=cfg.val_alpha)
    return {"val/clean_acc": clean.float().mean().item(), "val/pgd_acc": robust.float().mean().item()}


def train(cfg: Config, out: str | Path | None = None, *, callbacks=(), quiet: bool = False,
          force: bool = False) -> Run:
    """Train a model by cfg; write the run folder `out` (if given); return the Run.

    Everything that can be checked is checked before anything is written."""
    cfg = validate(cfg)
    callbacks = (*callbacks_for(cfg), *callbacks)
    device = resolve_device(cfg.device)
    check_available(cfg.dataset, cfg.data_dir)
    run_dir = prepare_run_dir(out, force=force) if out is not None else None

    seed_everything(cfg.seed)
    data = load_data(cfg.dataset, data_dir=cfg.data_dir, val_size=cfg.val_size,
                     train_subset=cfg.train_subset, test_subset=cfg.test_n, device=device,
                     seed=cfg.seed)
    model = build_for(cfg, data, device)
    optimizer = make_optimizer(cfg, model)
    augment = data.info.augment if cfg.augment is None else cfg.augment
    steps_per_epoch = math.ceil(len(data.train) / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    schedule = partial(SCHEDULES[cfg.schedule], total=total_steps, lr_max=cfg.lr_max, **cfg.schedule_args)
    autocast = autocast_for(cfg, device)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and cfg.amp
                                  and not torch.cuda.is_bf16_supported())

    state = TrainState(cfg=cfg, model=model, optimizer=optimizer, data=data, attack=bind_method(cfg),
                       device=device, steps_per_epoch=steps_per_epoch, run_dir=run_dir)
    log = None
    if run_dir is not None:
        (run_dir / "config.yaml").write_text(to_yaml(cfg, {"environment": {**environment(), "device": str(device)}}))
        log = MetricsLog(run_dir / "metrics.jsonl", run_dir / "tensorboard" if cfg.tensorboard else None)
        save_checkpoint(run_dir / "checkpoints" / "epoch-0.pt", checkpoint_state(state, -1.0))
    history: list[dict] = []
    best = -1.0
    init_state = {k: v.clone() for k, v in model.state_dict().items()} if run_dir is None else None

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
            restore_epoch(state, action.epoch, init_state)
            state.cfg = validate(Config(**{**state.cfg.to_dict(),
                                           "method_args": {**state.cfg.method_args, **action.method_args}}))
            state.attack = bind_method(state.cfg)
            state.rollbacks += 1
            emit({"event": "rollback", "epoch": state.epoch, "step": state.step, "to_epoch": action.epoch,
                  "method_args": dict(state.cfg.method_args), "reason": action.reason, **action.info})
            return "rolled_back"
        return None

    try:
        epoch = 0
        while epoch < cfg.epochs:
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
                lr = schedule(state.step)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                if device.type == "cuda" and cfg.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with autocast():
                    delta = state.attack(model, x, y)
                    logits = model(x + delta)
                    loss = F.cross_entropy(logits.float(), y)
                    if cfg.grad_align > 0:
                        loss = loss + grad_align(model, x, y, eps=cfg.eps, lam=cfg.grad_align)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if cfg.clip_grad_norm is not None:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                state.step += 1
                loss_sum += loss.item() * len(y)
                correct_sum += (logits.argmax(1) == y).sum().item()
                seen += len(y)
                state.x, state.y, state.delta = x, y, delta
                for cb in callbacks:
                    out_ = getattr(cb, "on_step", None) and cb.on_step(state)
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
            metrics = {"epoch": epoch, "step": state.step, "lr": lr,
                       "train/loss": loss_sum / max(seen, 1), "train/acc": correct_sum / max(seen, 1),
                       "time/epoch_s": time.perf_counter() - t0}
            metrics.update(validation_metrics(state))
            state.metrics = metrics
            action = None
            for cb in callbacks:
                out_ = getattr(cb, "on_epoch", None) and cb.on_epoch(state)
                if isinstance(out_, dict):
                    metrics.update(out_)
                elif out_ is not None and action is None:
                    action = out_
            emit(metrics)
            if not quiet:
                print(format_epoch_line(metrics), file=sys.stderr, flush=True)
            score = metrics.get("val/pgd_acc", -1.0)
            if run_dir is not None:
                ckpt = checkpoint_state(state, max(best, score))
                ckpt_dir = run_dir / "checkpoints"
                if cfg.keep_epoch_checkpoints:
                    save_checkpoint(ckpt_dir / f"epoch-{epoch}.pt", ckpt)
                if score > best or not (ckpt_dir / "best.pt").exists():
                    save_checkpoint(ckpt_dir / "best.pt", ckpt)
                save_checkpoint(ckpt_dir / "last.pt", ckpt)
            best = max(best, score)
            if outcome == "stop":
                break
            if action is not None:
                outcome = act(action)
                if outcome == "stop":
                    break
                if outcome == "rolled_back":
                    epoch = state.epoch
        result = final_evaluation(state, run_dir, quiet)
    finally:
        if log is not None:
            log.close()
    return Run(cfg=state.cfg, model=model, history=history, result=result, dir=run_dir, data=data)


def restore_epoch(state: TrainState, epoch: int, init_state: dict | None) -> None:
    """Reload the model and optimizer saved at the end of `epoch` (exactly those weights)."""
    if state.run_dir is None:
        if epoch != 0 or init_state is None:
            raise ConfigError("rolling back to a past epoch needs a run folder (--out) for its checkpoints")
        state.model.load_state_dict(init_state)
        state.epoch, state.step = 0, 0
        return
    ckpt = load_checkpoint(state.run_dir / "checkpoints" / f"epoch-{epoch}.pt", map_location=state.device)
    state.model.load_state_dict(ckpt["model"])
    state.optimizer.load_state_dict(ckpt["optimizer"])
    state.epoch, state.step = ckpt["epoch"], ckpt["step"]


def final_evaluation(state: TrainState, run_dir: Path | None, quiet: bool) -> dict:
    """Clean and PGD accuracy on the test split with the chosen checkpoint; eval.json."""
    cfg, model = state.cfg, state.model
    if cfg.final_checkpoint == "best" and run_dir is not None and (run_dir / "checkpoints" / "best.pt").exists():
        ckpt = load_checkpoint(run_dir / "checkpoints" / "best.pt", map_location=state.device)
        model.load_state_dict(ckpt["model"])
    result = evaluate(model, state.data.test, eps=cfg.eps, steps=cfg.test_pgd_steps,
                      restarts=cfg.test_restarts, alpha=cfg.test_alpha, batch_size=max(cfg.batch_size, 256))
    result.update({"checkpoint": cfg.final_checkpoint, "dataset": cfg.dataset, "split": "test",
                   "method": cfg.method, "seed": cfg.seed})
    if run_dir is not None:
        write_json(run_dir / "eval.json", result)
    if not quiet:
        a = result["attack"]
        attack = f"PGD-{a['steps']}-{a['restarts']}"
        print(f"\n{'split':<8}{'n':>7}{'clean':>9}{attack:>12}\n"
              f"{'test':<8}{result['n']:>7}{100 * result['clean_acc']:>8.2f}%{100 * result['robust_acc']:>11.2f}%",
              file=sys.stderr)
    return result
