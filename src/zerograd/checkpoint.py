"""Checkpoint files: atomic writes (files.atomic_write), a SHA-256 of the content stored inside
and verified on load, and loading that never runs code (`torch.load(weights_only=True)`);
every failure becomes one clear line.

The digest (`sha256` entry) covers every key, number, string and tensor byte of the saved
mapping. Files written before it existed (zerograd-checkpoint-2 without `sha256`) still load,
unverified: nothing in them says what their bytes should be."""
from __future__ import annotations

import hashlib
import io
import pickle
import re
import struct
import zipfile
from pathlib import Path

import torch

from .errors import ConfigError
from .files import atomic_write

DIGEST = "sha256"


def content_digest(obj, h=None) -> str:
    """Hex SHA-256 of plain data (dicts, lists, tuples, tensors, numbers, strings, None), the
    same wherever the tensors live; a dict's `sha256` entry is left out at the top level."""
    top = h is None
    h = hashlib.sha256() if top else h
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}".encode())
        for key in sorted(obj, key=repr):
            if top and key == DIGEST:
                continue
            h.update(repr(key).encode())
            content_digest(obj[key], h)
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}".encode())
        for item in obj:
            content_digest(item, h)
    else:
        h.update(f"V{type(obj).__name__}:{obj!r}".encode())
    return h.hexdigest()


def save_checkpoint(path: str | Path, state: dict) -> None:
    """torch.save `state` (tensors, numbers, strings, lists, dicts only) with the SHA-256 of
    its content, atomically."""
    buf = io.BytesIO()
    torch.save({**state, DIGEST: content_digest(state)}, buf)
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
    # random bytes can read as a legacy pickle and fail anywhere in torch's restricted unpickler
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, IndexError, KeyError,
            TypeError, AttributeError, struct.error, MemoryError, OverflowError) as e:
        raise ConfigError(
            f"checkpoint {str(path)!r} is truncated or corrupt and cannot be read ({_first(e)})"
        ) from None
    if not isinstance(state, dict):
        raise ConfigError(f"checkpoint {str(path)!r} is not a zerograd checkpoint (expected a mapping)")
    if DIGEST in state and state.pop(DIGEST) != content_digest(state):
        raise ConfigError(f"checkpoint {str(path)!r} is corrupt: its content does not match the "
                          "SHA-256 stored in it (changed bytes); use another checkpoint")
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
