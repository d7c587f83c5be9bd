"""The NaN guard: a non-finite loss or weight gradient must never reach the optimizer, since one
such step poisons every weight, and non-finite weights (an update too large, e.g. lr_max=1e30)
must never be trained on, saved or evaluated. A hook on the loop's AFTER_BACKWARD event checks
the loss, the gradients and the weights the previous update made, in one device sync, before
each update; at the epoch's last STEP_END (and at one a mid-epoch checkpoint follows) it checks
the weights of the last update (before they are validated or saved). By `cfg.nan_policy`, rolls back to the last resume point with the learning rate
times `cfg.nan_lr_factor` ("rollback", at most `cfg.nan_max_rollbacks` times) or stops keeping
the best checkpoint ("stop")."""
from __future__ import annotations

import torch

from .events import AFTER_BACKWARD, STEP_END, Hook, Rollback, Stop


def _sums_finite(tensors) -> torch.Tensor:
    """A 0-dim bool: every entry is finite (a sum is non-finite iff some entry is, or it
    overflows, which is as bad). No sync."""
    sums = [t.detach().float().sum() for t in tensors]
    return torch.isfinite(torch.stack(sums).sum()) if sums else torch.tensor(True)


def nonfinite(loss: torch.Tensor | None, model: torch.nn.Module, *, grads: bool = True,
              weights: bool = True) -> str | None:
    """'weights', 'loss' or 'gradient' when that is not finite (NaN or inf), else None. One
    device sync."""
    checks, names = [], []
    if weights:
        checks.append(_sums_finite(model.parameters()))
        names.append("weights")
    if loss is not None:
        checks.append(torch.isfinite(loss.detach().float().sum()))
        names.append("loss")
    if grads:
        checks.append(_sums_finite(p.grad for p in model.parameters() if p.grad is not None))
        names.append("gradient")
    if not checks:
        return None
    finite = torch.stack([c.to(checks[0].device) for c in checks]).tolist()
    return next((name for name, ok in zip(names, finite) if not ok), None)


class NanGuard(Hook):
    """Refuses an update whose loss or gradient is not finite: rolls back to the last resume
    point with the learning rate times `lr_factor` (at most `max_rollbacks` times), or, with
    policy 'stop' or past that bound, stops and evaluates the best checkpoint."""

    acts_on = (AFTER_BACKWARD, STEP_END)

    def __init__(self, policy: str, lr_factor: float, max_rollbacks: int, check_gradients: bool = True):
        self.policy, self.lr_factor, self.max_rollbacks = policy, lr_factor, max_rollbacks
        self.check_gradients = check_gradients  # False under fp16, whose scaler skips inf steps

    def on_after_backward(self, state):
        return self._act(state, nonfinite(state.batch.loss, state.model, grads=self.check_gradients))

    def on_step(self, state):
        """After the epoch's last update, or one a mid-epoch checkpoint follows: its weights,
        before they are validated or saved."""
        if state.checkpoint_due or (state.steps_per_epoch and state.step % state.steps_per_epoch == 0):
            return self._act(state, nonfinite(None, state.model, grads=False))
        return None

    def _act(self, state, bad: str | None):
        if bad is None:
            return None
        info = {"what": bad, "lr": state.lr}
        if self.policy == "stop" or state.nan_rollbacks >= self.max_rollbacks:
            return Stop(f"non-finite {bad}: stopping", {**info, "action": "stop",
                        "nan_rollbacks": state.nan_rollbacks}, event="nonfinite", evaluate="best")
        return Rollback(None, reason=f"non-finite {bad}: back to the last resume point",
                        info={**info, "action": "rollback"}, lr_factor=self.lr_factor, event="nonfinite")
