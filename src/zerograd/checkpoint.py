"""Checkpoint files: atomic writes (files.atomic_write) and loading that never runs code
(`torch.load(weights_only=True)`); every failure becomes one clear line."""
from __future__ import annotations

import io
import pickle
import re
import zipfile
from pathlib import Path

import torch

from .errors import ConfigError
from .files import atomic_write


def save_checkpoint(path: str | Path, state: dict) -> None:
    """torch.save `state` (tensors, numbers, strings, lists, dicts only) atomically."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(path, buf.getvalue())


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a checkpoint as data only: a file carrying pickled code, a truncated or corrupt
    file, or a missing one gets a ConfigError, and nothing in it is executed."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        if found is None:  # not a pickle at all: random bytes, a torn legacy file
            raise ConfigError(f"checkpoint {str(path)!r} is truncated or corrupt and cannot be read "
                              "(not a torch checkpoint)") from None
        raise ConfigError(
            f"checkpoint {str(path)!r} was refused: it asks to run {found[1]}, not plain data; "
            "nothing in it was executed"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise ConfigError(
            f"checkpoint {str(path)!r} is truncated or corrupt and cannot be read ({_first(e)})"
        ) from None
    if not isinstance(state, dict):
        raise ConfigError(f"checkpoint {str(path)!r} is not a zerograd checkpoint (expected a mapping)")
    return state


def load_weights(model: torch.nn.Module, weights: dict, source: str | Path) -> None:
    """model.load_state_dict, with another architecture or number of classes as one line."""
    try:
        model.load_state_dict(weights)
    except (RuntimeError, KeyError, TypeError, AttributeError) as e:
        lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
        detail = (lines[1] if len(lines) > 1 else lines[0] if lines else type(e).__name__)[:200]
        raise ConfigError(f"checkpoint {str(source)!r} does not fit this model: another "
                          f"architecture or number of classes ({detail.rstrip('.')})") from None


def _first(e: Exception) -> str:
    """The first sentence of an exception's message, on one line."""
    text = " ".join(str(e).split())
    return (text.split(". ")[0] or type(e).__name__)[:160]
