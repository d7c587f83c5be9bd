"""Training: the state and checkpoint format (state.py), the events, hooks and actions
(events.py), the step (objective.py), the loop (loop.py), validation, the built-in hooks
(diagnostics.py, guard.py, nanguard.py) and multi-process setup (distributed.py)."""
from .events import AFTER_BACKWARD, EPOCH_END, EPOCH_START, STEP_END, Hook, Hooks, Rollback, Stop
from .state import TrainState

__all__ = ["AFTER_BACKWARD", "EPOCH_END", "EPOCH_START", "STEP_END", "Hook", "Hooks", "Rollback",
           "Stop", "TrainState"]
