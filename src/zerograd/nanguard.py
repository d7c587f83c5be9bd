"""The NaN guard: a non-finite loss or weight gradient must never reach the optimizer, since one
such step poisons every weight. The loop asks `nonfinite` before each step and, by
`cfg.nan_policy`, rolls back to its last good checkpoint with the learning rate times
`cfg.nan_lr_factor` ("rollback", at most `cfg.nan_max_rollbacks` times) or stops keeping the
best checkpoint ("stop")."""
from __future__ import annotations

import torch


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
