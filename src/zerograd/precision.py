"""Mixed precision for the training step: which autocast (if any) and whether a gradient
scaler is needed. Attacks keep their decisions in float32 under autocast: input gradients
come back in delta's dtype (float32), thresholds and sign votes upcast (see `perturb`)."""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from functools import partial

import torch

from .errors import ConfigError

AMP_DTYPES = ("auto", "bf16", "fp16")


def amp_dtype(amp: bool, name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for this run, or None for float32 throughout.

    'auto' means bf16 on CUDA (fp16 where bf16 is unsupported) and float32 elsewhere; 'bf16'
    autocasts on any device (CPU included); 'fp16' needs CUDA."""
    if name not in AMP_DTYPES:
        raise ConfigError(f"amp_dtype={name!r} is invalid: must be one of {', '.join(AMP_DTYPES)}")
    if not amp:
        return None
    cuda = device.type == "cuda"
    if name == "auto":
        if not cuda:
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if name == "fp16" and not cuda:
        raise ConfigError(f"amp_dtype='fp16' needs a CUDA device (device is {device.type}); "
                          "use amp_dtype=bf16 or amp=false")
    return torch.bfloat16 if name == "bf16" else torch.float16


def autocast(dtype: torch.dtype | None, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of autocast contexts for the training step (a null context for float32)."""
    if dtype is None:
        return contextlib.nullcontext
    return partial(torch.autocast, device_type=device.type, dtype=dtype)


def grad_scaler(dtype: torch.dtype | None, device: torch.device) -> torch.amp.GradScaler:
    """fp16 needs loss scaling against gradient underflow; bf16 and float32 do not."""
    return torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)
