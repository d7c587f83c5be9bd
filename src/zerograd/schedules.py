"""Learning-rate schedules: plain functions (step, total_steps, lr_max, ...) -> lr, updated
every iteration."""
from __future__ import annotations

from .registry import Registry


def cyclic(step: int, total: int, lr_max: float, *, peak: float = 0.5) -> float:
    """Triangular cyclic schedule (Smith 2017): 0 -> lr_max at `peak` (a fraction of training;
    the ZeroGrad paper peaks at half, Wong et al. at 2/5) -> 0 at the end."""
    top = peak * total
    if step <= top:
        return lr_max * step / top if top > 0 else lr_max
    return lr_max * max(total - step, 0) / (total - top)


def onedrop(step: int, total: int, lr_max: float, *, drop: float = 50 / 52) -> float:
    """Constant lr_max, divided by 10 from `drop` (a fraction of training; the paper's
    WideResNet runs train 52 epochs and drop at epoch 50)."""
    return lr_max if step < drop * total else lr_max / 10


def constant(step: int, total: int, lr_max: float) -> float:
    """lr_max throughout."""
    return lr_max


SCHEDULES: Registry = Registry("schedule", section="schedule_args", fixed=("step", "total", "lr_max"),
                               rules={"peak": (lambda v: 0 < v <= 1, "in (0, 1] (a fraction of training)"),
                                      "drop": (lambda v: 0 < v <= 1, "in (0, 1] (a fraction of training)")})
for _fn in (cyclic, onedrop, constant):
    SCHEDULES.register(_fn.__name__, _fn)
