"""The loop's named events, the hooks that listen to them, and the actions a hook may answer.

    for each epoch:
        EPOCH_START                     hook.on_epoch_start(state)
        for each batch:
            perturb, loss, backward
            AFTER_BACKWARD              hook.on_after_backward(state)  -> an action refuses the update
            optimizer update
            STEP_END                    hook.on_step(state)            -> metrics logged as a record
        validation
        EPOCH_END                       hook.on_epoch(state)           -> metrics join the epoch record
        checkpoints

A hook reads the state and returns None, a dict of metrics, or an action (`Stop`, `Rollback`);
it never changes the state: only the loop carries out actions. When hooks answer one event
with several actions, a Stop wins over a Rollback, the first of a kind over later ones, and
every action not carried out is logged as a 'superseded' event.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..errors import ConfigError

EPOCH_START, AFTER_BACKWARD, STEP_END, EPOCH_END = "on_epoch_start", "on_after_backward", "on_step", "on_epoch"
EVENTS = (EPOCH_START, AFTER_BACKWARD, STEP_END, EPOCH_END)


@dataclass(frozen=True)
class Stop:
    """Ask the loop to stop. At AFTER_BACKWARD the refused step ends the run at once; at
    STEP_END and EPOCH_END the epoch is recorded and checkpointed first."""

    reason: str
    info: dict = field(default_factory=dict)  # extra fields for the logged event
    event: str = "stop"  # the logged event's name
    evaluate: str | None = None  # checkpoint the final evaluation uses (None: cfg.final_checkpoint)


@dataclass(frozen=True)
class Rollback:
    """Ask the loop to reload the checkpoint of `epoch` (0: the initial weights; None: the
    last resume point) and continue with `method_args` updated (e.g. a larger q) and the
    learning rate times `lr_factor` from then on."""

    epoch: int | None
    method_args: dict = field(default_factory=dict)
    reason: str = ""
    info: dict = field(default_factory=dict)  # extra fields for the logged event
    lr_factor: float = 1.0
    event: str = "rollback"  # the logged event's name; also which counter it raises


Action = Stop | Rollback


class Hook:
    """Base class of everything the loop calls at its events. Override the events you need;
    `acts_on` names the events at which the hook may return an action (so that, with several
    processes, the loop agrees on actions only where there can be one); `state_dict` /
    `load_state_dict` carry the hook's own state through checkpoints, `epoch_state_dict` /
    `load_epoch_state_dict` its state within an epoch through mid-epoch checkpoints."""

    acts_on: tuple[str, ...] = (AFTER_BACKWARD, STEP_END, EPOCH_END)

    def on_epoch_start(self, state) -> None:
        """Prepare for the epoch (its answer is ignored)."""
        return

    def on_after_backward(self, state) -> dict | Action | None:
        return None

    def on_step(self, state) -> dict | Action | None:
        return None

    def on_epoch(self, state) -> dict | Action | None:
        return None

    def state_dict(self) -> dict | None:
        return None

    def load_state_dict(self, state: dict) -> None:
        return None

    def epoch_state_dict(self) -> dict | None:
        """State that lives within one epoch (made by on_epoch_start, grown by on_step, read by
        on_epoch), saved only in mid-epoch checkpoints: a run resumed there does not fire
        EPOCH_START again, so this is how its epoch ends as an uninterrupted one's."""
        return None

    def load_epoch_state_dict(self, state: dict) -> None:
        return None


@dataclass
class Fired:
    """What the hooks answered to one event: their metrics, merged, and the action to carry out."""

    metrics: dict
    action: Action | None


class Hooks:
    """The run's hooks, called in order at each event."""

    def __init__(self, hooks: Sequence[Hook], from_main: Callable[[object], object] = lambda a: a,
                 emit: Callable[[dict], None] = lambda record: None):
        check_hooks(hooks)
        self.hooks = list(hooks)
        self.from_main = from_main  # the action every process carries out: rank 0's
        self.emit = emit
        self.acting = {e for h in self.hooks for e in h.acts_on}

    def fire(self, event: str, state) -> Fired:
        metrics: dict = {}
        actions: list[Action] = []
        for hook in self.hooks:
            answer = getattr(hook, event)(state)
            if isinstance(answer, dict):
                metrics.update(answer)
            elif isinstance(answer, (Stop, Rollback)):
                actions.append(answer)
        action = None
        if event in self.acting:  # one collective per event that may have an action
            action = self.from_main(resolve(actions, state, self.emit))
        return Fired(metrics, action)

    def state_dict(self) -> dict:
        """{key: hook state} for the hooks that have one; the key is the class name (#2, #3 ...
        for repeats), as stored in checkpoints."""
        return self._collect("state_dict")

    def load_state_dict(self, states: dict) -> None:
        self._spread("load_state_dict", states)

    def epoch_state_dict(self) -> dict:
        """{key: in-epoch state} (Hook.epoch_state_dict), keyed as `state_dict`."""
        return self._collect("epoch_state_dict")

    def load_epoch_state_dict(self, states: dict) -> None:
        self._spread("load_epoch_state_dict", states)

    def _collect(self, method: str) -> dict:
        out = {}
        for key, hook in zip(self._keys(), self.hooks):
            state = getattr(hook, method)()
            if state is not None:
                out[key] = state
        return out

    def _spread(self, method: str, states: dict) -> None:
        for key, hook in zip(self._keys(), self.hooks):
            if key in states:
                getattr(hook, method)(states[key])

    def _keys(self) -> list[str]:
        keys, seen = [], {}
        for hook in self.hooks:
            name = type(hook).__name__
            seen[name] = seen.get(name, 0) + 1
            keys.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
        return keys


def check_hooks(hooks: Sequence[object]) -> None:
    """ConfigError unless every entry is a Hook (checked before a run does any work)."""
    for h in hooks:
        if not isinstance(h, Hook):
            raise ConfigError(f"callback {type(h).__name__} is not a zerograd.Hook: subclass it "
                              "and override on_step / on_epoch / ...")


def resolve(actions: list[Action], state, emit: Callable[[dict], None]) -> Action | None:
    """The action to carry out (a Stop over a Rollback, else the first); the others are logged."""
    if not actions:
        return None
    chosen = next((a for a in actions if isinstance(a, Stop)), actions[0])
    for a in actions:
        if a is not chosen:
            emit({"event": "superseded", "epoch": state.epoch, "step": state.step,
                  "action": type(a).__name__, "reason": a.reason, "by": chosen.reason})
    return chosen
