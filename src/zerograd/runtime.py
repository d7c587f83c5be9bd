"""The process a run lives in: which device, seeding, the RNG states a checkpoint carries,
the facts recorded beside every result, and measuring without leaving a trace (eval mode,
forked RNG, restored batch-norm statistics)."""
from __future__ import annotations

import contextlib
import platform
import random
from collections.abc import Iterator

import numpy as np
import torch

from .errors import ConfigError
from .version import __version__


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA, then MPS, then CPU; an unavailable device is a ConfigError."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device={name!r} is invalid: must be auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} is not available on this machine (no CUDA); use device=cpu or auto")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device={name!r} is not available on this machine; use device=cpu or auto")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The data order and augmentation of an epoch depend only on (seed, epoch), so a run can
    be resumed at any epoch without replaying the ones before."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def environment() -> dict:
    """Versions recorded beside every resolved config and results file."""
    return {
        "zerograd_version": __version__,
        "torch_version": str(torch.__version__),
        "python_version": platform.python_version(),
    }


# --------------------------------------------------------------------------- RNG states


def rng_state() -> dict:
    """Python, NumPy, torch (and CUDA/MPS when in use) RNG states as tensors and lists, so
    `torch.load(weights_only=True)` can read them back."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": version, "mt": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        state["mps"] = torch.mps.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    """Inverse of `rng_state` (device states only where that device is in use)."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["mt"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"],
                         npy["has_gauss"], npy["cached"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    if "mps" in state and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        torch.mps.set_rng_state(state["mps"].cpu())


# --------------------------------------------------------------------------- measuring quietly


@contextlib.contextmanager
def eval_mode(model) -> Iterator[None]:
    """Put every submodule in eval mode, then restore each one's own previous mode."""
    modules = list(model.modules()) if isinstance(model, torch.nn.Module) else []
    before = [m.training for m in modules]
    for m in modules:
        m.training = False
    try:
        yield
    finally:
        for m, mode in zip(modules, before):
            m.training = mode


@contextlib.contextmanager
def forked_rng(device: torch.device, seed: int | None = None) -> Iterator[None]:
    """Inside, the global RNG (CPU and `device`) may be used, seeded with `seed` if given;
    afterwards it is as before, so measuring never shifts the training's random numbers."""
    devices = [] if device.type == "cpu" else [device.index or 0]
    with torch.random.fork_rng(devices=devices, device_type=device.type if devices else "cuda"):
        if seed is not None:
            torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def isolated(model: torch.nn.Module, device: torch.device, seed: int) -> Iterator[None]:
    """Run measurements seeded with `seed` and leave no trace: the global RNG (CPU and the
    model's device) and every buffer (batch-norm running statistics) are restored."""
    buffers = [b.detach().clone() for b in model.buffers()]
    with forked_rng(device, seed):
        try:
            yield
        finally:
            with torch.no_grad():
                for b, saved in zip(model.buffers(), buffers):
                    b.copy_(saved)


def check_pixels(x: torch.Tensor, what: str = "x") -> None:
    """The library contract on inputs: a float tensor of pixels in [0, 1] (models normalize
    inside). One clear ConfigError otherwise; one device sync."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        kind = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise ConfigError(f"{what} must be a float tensor of pixels in [0, 1], got {kind}")
    if x.numel() == 0:
        return
    low, high = (float(v) for v in torch.stack([x.detach().min(), x.detach().max()]).float().tolist())
    if not (0.0 <= low and high <= 1.0):  # NaN fails too
        raise ConfigError(f"{what} must hold pixels in [0, 1] (models normalize inside; see "
                          f"docs/api.md), got values in [{low:.4g}, {high:.4g}]")
