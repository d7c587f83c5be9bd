"""Checkpoints: atomic writes (temp file, fsync, rename) and loading that never runs code
(`torch.load(weights_only=True)`); every failure becomes one clear line."""
from __future__ import annotations

import io
import os
import pickle
import tempfile
import zipfile
from pathlib import Path

import torch

from .errors import ConfigError


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write bytes so that `path` holds either its old content or the new, never a mix."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with _suppress():
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


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
        first = str(e).strip().splitlines()[0] if str(e).strip() else "unsupported content"
        raise ConfigError(
            f"checkpoint {str(path)!r} was refused: it holds objects other than plain data, "
            f"so it was not loaded ({first[:160]})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise ConfigError(
            f"checkpoint {str(path)!r} is truncated or corrupt and cannot be read "
            f"({type(e).__name__}: {str(e).strip().splitlines()[0][:160] if str(e).strip() else ''})"
        ) from None
    if not isinstance(state, dict):
        raise ConfigError(f"checkpoint {str(path)!r} is not a zerograd checkpoint (expected a mapping)")
    return state


def _fsync_dir(directory: Path) -> None:
    with _suppress():
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is not None and issubclass(exc[0], OSError)
