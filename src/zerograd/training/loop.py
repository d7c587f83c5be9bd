"""The training loop: `fit` runs epochs of steps, fires the named events (events.py) and carries
out the actions hooks answer. It knows no method (the objective binds one) and no diagnostic
(hooks measure); it only trains, validates, records and checkpoints."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial

import torch

from ..config import apply, augmentation, validate
from ..data import StreamedSplit, batches
from ..runfolder import MetricsLog
from ..runtime import epoch_generator
from .events import AFTER_BACKWARD, EPOCH_END, EPOCH_START, STEP_END, Hooks, Rollback, Stop
from .objective import Objective
from .state import TrainState
from .validation import validation_metrics

# the clock of checkpoint_every_minutes (a seam: tests replace it instead of sleeping)
clock = time.monotonic
# which counter a rollback raises, by its event name
COUNTERS = {"rollback": "rollbacks", "nonfinite": "nan_rollbacks"}


class History(list):
    """Every record of the run in order, mirrored to metrics.jsonl when a log is given and
    shown by `echo` (the application's console) when one is given."""

    def __init__(self, records: Iterable[dict] = (), log: MetricsLog | None = None,
                 echo: Callable[[dict], None] | None = None):
        super().__init__(records)
        self.log, self.echo = log, echo

    def emit(self, record: dict) -> None:
        self.append(record)
        if self.log is not None:
            self.log.write(record)
        if self.echo is not None:
            self.echo(record)


@dataclass
class Totals:
    """Running sums of an epoch's training loss and accuracy; they stay on the device, so
    a GPU is not synchronised with the host at every step."""

    loss: torch.Tensor | float = 0.0
    correct: torch.Tensor | float = 0.0
    seen: int = 0

    def add(self, batch) -> None:
        self.loss = self.loss + batch.loss.detach() * len(batch.y)
        self.correct = self.correct + (batch.logits.argmax(1) == batch.y).sum()
        self.seen += len(batch.y)

    def metrics(self, state: TrainState) -> dict:
        loss, correct, seen = state.par.sum(self.loss, self.correct, self.seen)
        return {"train/loss": float(loss) / max(seen, 1), "train/acc": float(correct) / max(seen, 1)}

    def state_dict(self, state: TrainState) -> dict:
        """The sums so far over all processes (for a mid-epoch checkpoint; one collective with
        several, none with one, where the tensors are kept bitwise)."""
        loss, correct, seen = state.par.sum(self.loss, self.correct, self.seen)
        return {"loss": loss, "correct": correct, "seen": int(seen)}

    @classmethod
    def load(cls, d: dict, state: TrainState) -> Totals:
        """Sums saved by `state_dict`: rank 0 carries them on, the other ranks start from 0."""
        if not state.par.is_main:
            return cls()
        loss, correct = (v.to(state.device) if isinstance(v, torch.Tensor) else float(v)
                         for v in (d["loss"], d["correct"]))
        return cls(loss, correct, int(d["seen"]))


def no_progress(iterable: Iterable, total: int, desc: str) -> Iterable:
    return iterable


def fit(state: TrainState, objective: Objective, hooks: Hooks, history: History,
        progress: Callable[[Iterable, int, str], Iterable] = no_progress) -> Stop | None:
    """Train from state.epoch to cfg.epochs (from the middle of an epoch when state.in_epoch
    says so); returns the Stop that ended training, if any."""
    stop = None
    points = ResumePoints(state)
    while (state.epoch < state.cfg.epochs or state.in_epoch is not None) and not state.done:
        totals, first = begin_epoch(state, hooks)
        started, action, refused = time.perf_counter(), None, False
        batches = progress(shards(state, first), state.steps_per_epoch - first, f"epoch {state.epoch}")
        for number, shard in enumerate(batches, first + 1):
            state.set_lr()
            state.batch, action = objective.step(shard, after_backward=partial(check_update, state, hooks),
                                                 step=state.step)
            if action is not None:  # the update was refused: no step was taken
                refused = True
                break
            state.step += 1
            totals.add(state.batch)
            state.checkpoint_due = points.due(number)
            fired = hooks.fire(STEP_END, state)
            if fired.metrics:
                history.emit({"epoch": state.epoch, "step": state.step, **fired.metrics})
            if (action := fired.action) is not None:
                # a Stop for non-finite weights: this epoch is neither recorded nor saved
                refused = isinstance(action, Stop) and action.event == "nonfinite"
                break
            if state.checkpoint_due:
                points.save(number, totals, hooks, history)
        state.batch, state.checkpoint_due = None, False
        if isinstance(action, Rollback):
            roll_back(state, action, objective, hooks, history)
            points.saved()
            continue
        if isinstance(action, Stop):
            stop = announce(state, action, history)
            if refused:
                break
        trained = time.perf_counter()
        metrics = {"epoch": state.epoch, "step": state.step, "lr": state.lr, **totals.metrics(state),
                   "time/epoch_s": trained - started, **validation_metrics(state)}
        state.metrics = metrics
        fired = hooks.fire(EPOCH_END, state)
        metrics.update(fired.metrics)
        # validation and the epoch-end diagnostics: part of what a run costs, not of a step
        metrics["time/epoch_end_s"] = time.perf_counter() - trained
        state.metrics = {}
        history.emit(metrics)
        if isinstance(fired.action, Stop) and stop is None:
            stop = announce(state, fired.action, history)
        save_epoch(state, metrics.get("val/pgd_acc", -1.0), hooks, history)
        points.saved()
        if isinstance(fired.action, Rollback) and stop is None:
            roll_back(state, fired.action, objective, hooks, history)
    return stop


def begin_epoch(state: TrainState, hooks: Hooks) -> tuple[Totals, int]:
    """(the epoch's running sums, the batch to start at): a new epoch, announced with
    EPOCH_START; or, after resuming or rolling back to a mid-epoch checkpoint, the rest of
    that epoch, with its sums and the hooks' in-epoch states restored and no EPOCH_START."""
    state.model.train()
    part, state.in_epoch = state.in_epoch, None
    if part is None:
        state.epoch += 1
        hooks.fire(EPOCH_START, state)
        return Totals(), 0
    hooks.load_epoch_state_dict(part["callbacks"])
    return Totals.load(part["totals"], state), part["batch"]


class ResumePoints:
    """Mid-epoch resume points (checkpoints/last.pt): every `checkpoint_every_steps` steps
    (of the whole run, so a resumed run writes them at the same steps) and/or every
    `checkpoint_every_minutes` minutes since the last checkpoint. Minutes are read on rank 0
    and its answer broadcast (one collective per step, only when minutes are set), so every
    rank decides alike. Writing one changes nothing in the run: no RNG is drawn."""

    def __init__(self, state: TrainState):
        self.state = state
        self.steps = state.cfg.checkpoint_every_steps
        self.seconds = None if state.cfg.checkpoint_every_minutes is None else 60 * state.cfg.checkpoint_every_minutes
        self.since = clock()

    def due(self, number: int) -> bool:
        """Whether a resume point follows batch `number` (1-based) of the epoch; never after
        its last batch, whose epoch-end checkpoint comes anyway."""
        state = self.state
        if number >= state.steps_per_epoch:
            return False
        if self.steps is not None and state.step % self.steps == 0:
            return True
        if self.seconds is None:
            return False
        return bool(state.par.from_main(clock() - self.since >= self.seconds))

    def save(self, number: int, totals: Totals, hooks: Hooks, history: History) -> None:
        state = self.state
        part = {"batch": number, "totals": totals.state_dict(state), "callbacks": hooks.epoch_state_dict()}
        state.checkpoints.save("last", state.checkpoint(hooks.state_dict(), len(history), part))
        self.saved()

    def saved(self) -> None:
        """A checkpoint was just written: the minutes count from here."""
        self.since = clock()


def check_update(state: TrainState, hooks: Hooks, batch) -> Rollback | Stop | None:
    """AFTER_BACKWARD: the hooks may refuse the update this batch's gradients would make."""
    state.batch = batch
    return hooks.fire(AFTER_BACKWARD, state).action


def shards(state: TrainState, start: int = 0) -> Iterator:
    """This process's part of each global batch of the epoch from batch `start` on (order and
    augmentation depend only on seed and epoch; the skipped batches' draws are made). A
    streamed split reads only this process's rows of each batch."""
    train = state.data.train
    rows = state.par.rows if isinstance(train, StreamedSplit) and state.par.world_size > 1 else None
    for x, y in batches(train, state.cfg.batch_size, shuffle=True, start=start, rows=rows,
                        generator=epoch_generator(state.cfg.seed, state.epoch), **augmentation(state.cfg)):
        shard = state.par.split(x, y)
        if shard is not None:
            yield shard


def announce(state: TrainState, stop: Stop, history: History) -> Stop:
    """Log a Stop and mark training as done (checkpoints written from here on say so)."""
    history.emit({"event": stop.event, "epoch": state.epoch, "step": state.step, "reason": stop.reason,
                  **stop.info})
    state.done = True
    return stop


def save_epoch(state: TrainState, score: float, hooks: Hooks, history: History) -> None:
    """The epoch's checkpoints: epoch-N (for rolling back), best (by validation PGD accuracy,
    never the test split) and last (the resume point)."""
    improved = score > state.best
    state.best = max(state.best, score)
    ckpt = state.checkpoint(hooks.state_dict(), len(history))
    keep = state.cfg.keep_epoch_checkpoints  # True: all; False/0: none; K: the last K
    if keep:
        state.checkpoints.save(state.epoch, ckpt)
    if keep is not True and state.epoch - keep >= 0:
        state.checkpoints.remove(state.epoch - keep)
    if improved or not state.checkpoints.has("best"):
        state.checkpoints.save("best", ckpt)
    state.checkpoints.save("last", ckpt)


def roll_back(state: TrainState, action: Rollback, objective: Objective, hooks: Hooks,
              history: History) -> None:
    """The one place a rollback happens (CO or a non-finite step): reload the checkpoint of
    `action.epoch` (None: the last resume point, which may be inside an epoch: then the loop
    goes on from there, as a resumed run would), apply the new method arguments and learning
    rate factor, log it, and save the new resume point."""
    state.par.barrier()  # rank 0 has written the checkpoint the others read
    epoch, step = state.epoch, state.step
    ckpt, source = state.checkpoints.load("last" if action.epoch is None else action.epoch)
    state.load_weights(ckpt, source)
    if action.method_args:
        state.cfg = validate(apply(state.cfg, {"method_args": {**state.cfg.method_args, **action.method_args}}))
        objective.rebind(state.cfg)
        state.method = objective.method
    state.lr_scale *= action.lr_factor
    counter = COUNTERS.get(action.event, "rollbacks")
    setattr(state, counter, getattr(state, counter) + 1)
    history.emit({"event": action.event, "epoch": epoch, "step": step, "reason": action.reason,
                  **action.info, "to_epoch": state.epoch, "to_step": state.step,
                  "method_args": dict(state.cfg.method_args), "lr_scale": state.lr_scale,
                  counter: getattr(state, counter)})
    state.checkpoints.save("last", state.checkpoint(hooks.state_dict(), len(history), state.in_epoch))
