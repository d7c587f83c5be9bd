"""Checkpoints: atomic writes (temp file, fsync, rename) and loading that never runs code
(`torch.load(weights_only=True)`); every failure becomes one clear line."""
from __future__ import annotations

import io
import os
import pickle
import re
import tempfile
import zipfile
from pathlib import Path

import torch

from .errors import ConfigError


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write bytes so that `path` holds either its old content or the new, never a mix. A
    failed write (full disk, read-only folder) is one line saying the old file is intact."""
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            with _suppress():
                os.unlink(tmp)
        if isinstance(e, OSError):
            kept = "its previous version is intact" if path.exists() else "nothing was written"
            raise ConfigError(f"cannot write {str(path)!r}: {e.strerror or e}; {kept}") from None
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
