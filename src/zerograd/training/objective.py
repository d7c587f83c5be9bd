"""The training step, the one used by the loop and by `zerograd bench`: perturb the batch with
the run's method (eps and alpha ramped up over the first epochs if asked), the loss on the
perturbed batch plus the regularizers, backward, then (unless refused) gradient clipping and the
optimizer update, with mixed precision if asked."""
from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

from ..config import Config
from ..methods import METHODS, REGULARIZERS, unchecked
from ..precision import amp_dtype, autocast, grad_scaler
from .distributed import Shard, whole_batch
from .events import Action
from .state import Batch


def bind_method(cfg: Config) -> Callable:
    """The run's perturbation as a function (model, x, y) -> delta."""
    return partial(unchecked(METHODS[cfg.method]), eps=cfg.eps, **cfg.method_args)


def bind_regularizers(cfg: Config) -> list[Callable]:
    """The loss terms the config asks for, each (model, x, y) -> scalar."""
    asked = ({"grad_align": {"lam": cfg.grad_align, "backprop_clean": cfg.grad_align_backprop_clean}}
             if cfg.grad_align > 0 else {})
    return [partial(REGULARIZERS[name], eps=cfg.eps, **args) for name, args in asked.items()]


def ramp(step: int, epochs: int, steps_per_epoch: int) -> float:
    """Linear warm-up factor at a training step: 0 at step 0, 1 from `epochs` epochs on (1
    throughout when epochs is 0), as GradAlign's SVHN code ramps eps or alpha (train.py:132-134,
    166-168). A function of the step alone, so a resumed run ramps as an unbroken one."""
    return 1.0 if epochs == 0 else min(step / (epochs * steps_per_epoch), 1.0)


class Objective:
    """Binds the method, the regularizers, the precision and clipping of a config once;
    `rebind` follows a rollback's new method arguments."""

    def __init__(self, cfg: Config, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 device: torch.device, train_model: torch.nn.Module | None = None,
                 steps_per_epoch: int = 1):
        self.model = model  # the plain module: the attack's input gradients
        self.train_model = train_model or model  # the loss's forward/backward (DDP's wrapper)
        self.optimizer = optimizer
        dtype = amp_dtype(cfg.amp, cfg.amp_dtype, device)
        self.autocast = autocast(dtype, device)
        self.scaler = grad_scaler(dtype, device)
        self.channels_last = device.type == "cuda" and cfg.channels_last
        self.clip = cfg.clip_grad_norm
        self.steps_per_epoch = steps_per_epoch
        self.rebind(cfg)

    def rebind(self, cfg: Config) -> None:
        self.method = bind_method(cfg)
        self.regularizers = bind_regularizers(cfg)
        alpha = {**METHODS.defaults(cfg.method), **cfg.method_args}.get("alpha")
        self.ramps = {k: (full, epochs) for k, full, epochs in (("eps", cfg.eps, cfg.eps_ramp_epochs),
                                                               ("alpha", alpha, cfg.alpha_ramp_epochs))
                      if epochs > 0}

    def method_at(self, step: int | None) -> Callable:
        """The bound method at a training step, its eps and alpha ramped up if asked (alpha
        stays a multiple of the ramped eps); without a step, the full method."""
        if step is None or not self.ramps:
            return self.method
        return partial(self.method, **{k: full * ramp(step, epochs, self.steps_per_epoch)
                                       for k, (full, epochs) in self.ramps.items()})

    @property
    def checks_gradients(self) -> bool:
        """Whether non-finite gradients reach the update (fp16's scaler skips such steps)."""
        return not self.scaler.is_enabled()

    def step(self, shard: Shard | None = None, x: torch.Tensor | None = None, y: torch.Tensor | None = None,
             after_backward: Callable[[Batch], Action | None] = lambda batch: None,
             step: int | None = None) -> tuple[Batch, Action | None]:
        """One training step on `shard` (or on x, y in a single process); `step` counts the
        updates before it (for the ramps). `after_backward` may refuse the update with an
        action; then no step is taken and the gradients are dropped."""
        shard = shard or whole_batch(x, y)
        x, y = shard.x, shard.y
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self.autocast(), shard.context():
            delta = self.method_at(step)(self.model, x, y)
            x, y, delta = shard.train_part(x, y, delta)
            logits = self.train_model(x + delta)
            loss = F.cross_entropy(logits.float(), y)
            for term in self.regularizers:
                loss = loss + term(self.train_model, x, y)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(shard.weight(loss, len(y))).backward()
        batch = Batch(x, y, delta, loss, logits)
        action = after_backward(batch)
        if action is not None:
            self.optimizer.zero_grad(set_to_none=True)
            return batch, action
        if self.clip is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return batch, None

