"""The NaN guard: a non-finite loss or weight gradient must never reach the optimizer, since one
such step poisons every weight. A hook on the loop's AFTER_BACKWARD event checks before each
update and, by `cfg.nan_policy`, rolls back to the last resume point with the learning rate
times `cfg.nan_lr_factor` ("rollback", at most `cfg.nan_max_rollbacks` times) or stops keeping
the best checkpoint ("stop")."""
from __future__ import annotations

import torch

from .events import AFTER_BACKWARD, Hook, Rollback, Stop


def nonfinite(loss: torch.Tensor, model: torch.nn.Module, *, grads: bool = True) -> str | None:
    """'loss' or 'gradient' when that is not finite (NaN or inf), else None. One device sync:
    the sum of all gradient sums is non-finite iff some entry is (or the sum overflows, which
    is as bad)."""
    checks = [loss.detach().float().sum()]
    if grads:
        sums = [p.grad.float().sum() for p in model.parameters() if p.grad is not None]
        if sums:
            checks.append(torch.stack(sums).sum())
    finite = torch.isfinite(torch.stack(checks)).tolist()
    if not finite[0]:
        return "loss"
    return None if all(finite) else "gradient"


class NanGuard(Hook):
    """Refuses an update whose loss or gradient is not finite: rolls back to the last resume
    point with the learning rate times `lr_factor` (at most `max_rollbacks` times), or, with
    policy 'stop' or past that bound, stops and evaluates the best checkpoint."""

    acts_on = (AFTER_BACKWARD,)

    def __init__(self, policy: str, lr_factor: float, max_rollbacks: int, check_gradients: bool = True):
        self.policy, self.lr_factor, self.max_rollbacks = policy, lr_factor, max_rollbacks
        self.check_gradients = check_gradients  # False under fp16, whose scaler skips inf steps

    def on_after_backward(self, state):
        bad = nonfinite(state.batch.loss, state.model, grads=self.check_gradients)
        if bad is None:
            return None
        info = {"what": bad, "lr": state.lr}
        if self.policy == "stop" or state.nan_rollbacks >= self.max_rollbacks:
            return Stop(f"non-finite {bad}: stopping", {**info, "action": "stop",
                        "nan_rollbacks": state.nan_rollbacks}, event="nonfinite", evaluate="best")
        return Rollback(None, reason=f"non-finite {bad}: back to the last resume point",
                        info={**info, "action": "rollback"}, lr_factor=self.lr_factor, event="nonfinite")
