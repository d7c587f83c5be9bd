"""The training state and the checkpoint format, in one place: what a checkpoint holds beyond
the weights (RNG states, schedule position, hook state, how many metrics lines it covers), how
it is read back for resuming or rolling back, and where checkpoints are kept."""
from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..checkpoint import load_checkpoint, load_weights, save_checkpoint
from ..config import FIELDS, Config, apply, validate
from ..data import Data, Split
from ..errors import ConfigError
from ..runfolder import MAY_DIFFER, RunFolder, differences
from ..runfolder import METRICS as METRICS_NAME
from ..runtime import rng_state, set_rng_state
from .distributed import Parallel

FORMAT = "zerograd-checkpoint-2"  # 2: with RNG, schedule, hook and log state (+ `in_epoch`, optional)


@dataclass
class Batch:
    """One training step as the hooks see it: the batch this process trained on, its
    perturbation, the loss and the logits of the perturbed batch."""

    x: torch.Tensor
    y: torch.Tensor
    delta: torch.Tensor
    loss: torch.Tensor
    logits: torch.Tensor


@dataclass
class TrainState:
    """Everything the loop changes. Hooks may read anything; only the loop writes."""

    cfg: Config
    model: torch.nn.Module  # the plain module: attacks, checkpoints, evaluation
    optimizer: torch.optim.Optimizer
    data: Data
    method: Callable  # the run's perturbation, bound: method(model, x, y) -> delta
    par: Parallel  # this process's rank and world size (world size 1: a single process)
    schedule: Callable[[int], float]  # step -> learning rate before lr_scale
    checkpoints: CheckpointStore  # where checkpoints are saved and rollbacks load them from
    steps_per_epoch: int = 0
    epoch: int = 0
    step: int = 0
    lr: float = 0.0
    lr_scale: float = 1.0  # lowered by NaN rollbacks
    rollbacks: int = 0  # CO rollbacks so far
    nan_rollbacks: int = 0
    run_config: dict = field(default_factory=dict)  # the config the run started with (config.yaml)
    best: float = -1.0  # best validation PGD accuracy so far
    done: bool = False  # training ended (a Stop); a resumed run goes straight to evaluation
    batch: Batch | None = None  # during AFTER_BACKWARD and STEP_END
    checkpoint_due: bool = False  # during STEP_END: a checkpoint follows (the NaN guard checks its weights)
    in_epoch: dict | None = None  # a partial epoch to continue (a mid-epoch checkpoint's `in_epoch`)
    metrics: dict = field(default_factory=dict)  # the epoch's metrics, during EPOCH_END

    @property
    def device(self) -> torch.device:
        return self.par.device

    def set_lr(self) -> None:
        self.lr = self.schedule(self.step) * self.lr_scale
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr

    # ------------------------------------------------------------------ checkpoints

    def checkpoint(self, hooks: dict, records: int, in_epoch: dict | None = None) -> dict:
        """All a run needs to continue exactly from here; `records` is how many metrics.jsonl
        lines precede this point. `in_epoch`, only in a checkpoint written inside an epoch:
        the next batch of the epoch (`batch`), the epoch's running training sums (`totals`) and
        the hooks' in-epoch states (`callbacks`); an epoch-end checkpoint has no such key, so
        it is what it was before mid-epoch checkpoints existed."""
        extra = {} if in_epoch is None else {"in_epoch": in_epoch}
        return {
            "format": FORMAT,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "best_val_pgd": self.best,
            "method_args": dict(self.cfg.method_args),
            "config": self.cfg.to_dict(),
            "run_config": self.run_config or self.cfg.to_dict(),
            "schedule": {"step": self.step, "lr_scale": self.lr_scale},
            "rng": rng_state(),
            "callbacks": hooks,
            "rollbacks": self.rollbacks,
            "nan_rollbacks": self.nan_rollbacks,
            "records": records,
            "done": self.done,
            "world_size": self.par.world_size,
            **extra,
        }

    def load_weights(self, ckpt: dict, source) -> None:
        """A checkpoint's model, optimizer, epoch and step, and the partial epoch it was
        written in, if any (what rolling back restores)."""
        for key in ("model", "optimizer", "epoch", "step"):
            if key not in ckpt:
                raise ConfigError(f"checkpoint {str(source)!r} is not a zerograd training checkpoint "
                                  f"(no {key!r})")
        load_weights(self.model, ckpt["model"], source)
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError, TypeError, RuntimeError) as e:
            raise ConfigError(f"checkpoint {str(source)!r} has an optimizer state that does not fit "
                              f"this model ({str(e).strip()[:160]})") from None
        self.epoch, self.step = int(ckpt["epoch"]), int(ckpt["step"])
        self.in_epoch = read_in_epoch(ckpt, source, self.steps_per_epoch)

    def resume(self, ckpt: dict, source, changed: tuple[str, ...] = ()) -> dict:
        """Everything needed to continue exactly where `ckpt` was written; returns the hooks'
        states for the caller to load."""
        self.load_weights(ckpt, source)
        self.lr_scale = float(ckpt.get("schedule", {}).get("lr_scale", 1.0))
        self.rollbacks = int(ckpt.get("rollbacks", 0))
        self.nan_rollbacks = int(ckpt.get("nan_rollbacks", 0))
        self.best, self.done = float(ckpt["best_val_pgd"]), bool(ckpt.get("done"))
        if "method_args" not in changed and ckpt.get("method_args") != self.cfg.method_args:  # rollbacks
            self.cfg = validate(apply(self.cfg, {"method_args": ckpt.get("method_args") or {}}))
        if "rng" in ckpt:
            set_rng_state(ckpt["rng"])
        return ckpt.get("callbacks", {})

    def probe_split(self, n: int) -> Split:
        """The first n validation images."""
        val = self.data.val
        return Split(val.x[:n], val.y[:n])


def read_in_epoch(ckpt: dict, source, steps_per_epoch: int) -> dict | None:
    """A checkpoint's partial epoch (None at an epoch's end, and in files written before
    mid-epoch checkpoints existed), checked: batch in 1..steps_per_epoch - 1, totals, hook states."""
    part = ckpt.get("in_epoch")
    if part is None:
        return None
    try:
        batch, totals, hooks = part["batch"], part["totals"], part["callbacks"]
        ok = (isinstance(batch, int) and not isinstance(batch, bool) and 0 < batch < max(steps_per_epoch, 2)
              and isinstance(hooks, dict) and {"loss", "correct", "seen"} <= set(totals))
    except (TypeError, KeyError):
        ok = False
    if not ok:
        raise ConfigError(f"checkpoint {str(source)!r} has an unreadable in_epoch entry (a mid-epoch resume "
                          f"point of another batch size or program); resume from another checkpoint")
    return part


def resume_point(run: RunFolder, cfg: Config, changed: tuple[str, ...] = ()) -> dict | None:
    """The checkpoint to continue from (checkpoints/last.pt), after checking that the run is
    unfinished and that the checkpoint belongs to this config; None if training never got as
    far as its first checkpoint. `changed`: keys the caller deliberately changes on resume."""
    if not run.config_file.is_file():
        raise ConfigError(f"--resume {str(run.path)!r} is not a zerograd run folder (no config.yaml)")
    if run.finished:
        raise ConfigError(f"--resume {str(run.path)!r}: the run is finished (eval.json exists); "
                          f"evaluate it with 'zerograd eval {run.path}' or start a new run")
    path = run.checkpoint("last")
    if not path.exists():
        return None
    ckpt = load_checkpoint(path)
    if ckpt.get("format") != FORMAT or "config" not in ckpt:
        raise ConfigError(f"checkpoint {str(path)!r} is not a {FORMAT} file (an older zerograd's, or "
                          "another program's): it cannot be resumed exactly")
    records, readable = ckpt.get("records", 0), len(run.read_metrics())
    if isinstance(records, bool) or not isinstance(records, int) or readable < records:
        raise ConfigError(f"--resume {str(run.path)!r}: {METRICS_NAME} has {readable} readable lines but "
                          f"the checkpoint covers {records!r}; restore the file (nothing was changed)")
    # run_config: the config the run started with, method_args included (rollbacks change
    # only `config`); older checkpoints have `config` alone, compared without method_args
    started = ckpt.get("run_config")
    try:
        saved = validate(apply(Config(), {k: v for k, v in (started or ckpt["config"]).items() if k in FIELDS}))
    except (ConfigError, AttributeError, TypeError):
        raise ConfigError(f"checkpoint {str(path)!r} holds an unreadable config") from None
    diff = differences(cfg, saved, MAY_DIFFER + tuple(changed)
                       + (() if isinstance(started, dict) else ("method_args",)))
    if diff:
        raise ConfigError(f"checkpoint {str(path)!r} belongs to another config than config.yaml "
                          f"({'; '.join(diff)[:300]})")
    return ckpt


class CheckpointStore:
    """Where the loop's checkpoints go: a run folder's checkpoints/ (written by rank 0 alone,
    read by every rank) or, without a run folder, memory, which keeps only what rolling back
    can use there: the initial state (epoch 0) and the last resume point."""

    IN_MEMORY = (0, "last")

    def __init__(self, run: RunFolder | None, write: bool, device: torch.device):
        self.run, self.write, self.device = run, write, device
        self.memory: dict = {}

    def save(self, which: str | int, ckpt: dict) -> None:
        if self.run is None:
            if which in self.IN_MEMORY:
                self.memory[which] = copy.deepcopy(ckpt)
        elif self.write:
            save_checkpoint(self.run.checkpoint(which), ckpt)

    def remove(self, which: str | int) -> None:
        """Delete a checkpoint no longer kept (keep_epoch_checkpoints=K)."""
        if self.run is None:
            return  # memory keeps only the initial state and the last resume point anyway
        if self.write:
            self.run.checkpoint(which).unlink(missing_ok=True)

    def has(self, which: str | int) -> bool:
        return which in self.memory if self.run is None else self.run.checkpoint(which).is_file()

    def load(self, which: str | int) -> tuple[dict, str]:
        """(checkpoint, where it came from)."""
        if self.run is None:
            if which not in self.memory:
                raise ConfigError(f"rolling back to checkpoint {which!r} needs a run folder (--out)")
            return copy.deepcopy(self.memory[which]), "memory"
        path = self.run.checkpoint(which)
        return load_checkpoint(path, map_location=self.device), str(path)
