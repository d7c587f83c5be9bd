"""Checkpoint files: atomic writes (files.atomic_write), a SHA-256 of the content stored inside
and verified on load, and loading that never runs code (`torch.load(weights_only=True)`);
every failure becomes one clear line.

Weights made outside zerograd (`read_weights`: .safetensors, or a .pt/.pth state_dict) load
through the same data-only paths, with a key or shape mismatch named in one line
(`fit_weights`).

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
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch.nn.parameter import is_lazy

from .errors import ConfigError
from .files import atomic_write

DIGEST = "sha256"
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth")
# where a .pt file may hold its state_dict: most trainers; zerograd's checkpoints; the
# "saving a general checkpoint" recipe of PyTorch's tutorials
STATE_DICT_ENTRIES = ("state_dict", "model", "model_state_dict")
PARALLEL_PREFIX = "module."  # what (Distributed)DataParallel puts before every key


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


WEIGHTS_FILE = "weights file"  # how messages name a weights file zerograd did not write


def load_checkpoint(path: str | Path, map_location="cpu", what: str = "checkpoint") -> dict:
    """Load a checkpoint as data only: a file carrying pickled code, a truncated or corrupt
    file, or a missing one gets a ConfigError (naming the file as `what`), and nothing in it
    is executed."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        if found is None:  # not a pickle at all: random bytes, a torn legacy file
            raise ConfigError(f"{what} {str(path)!r} is truncated or corrupt and cannot be read "
                              "(not a torch checkpoint)") from None
        hint = "; save the network's weights instead: torch.save(net.state_dict(), FILE)" \
            if what == WEIGHTS_FILE else ""
        raise ConfigError(
            f"{what} {str(path)!r} was refused: it asks to run {found[1]}, not plain data; "
            f"nothing in it was executed{hint}"
        ) from None
    # random bytes can read as a legacy pickle and fail anywhere in torch's restricted unpickler
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, IndexError, KeyError,
            TypeError, AttributeError, struct.error, MemoryError, OverflowError) as e:
        raise ConfigError(
            f"{what} {str(path)!r} is truncated or corrupt and cannot be read ({_first(e)})"
        ) from None
    if not isinstance(state, dict):
        expected = "a zerograd checkpoint" if what == "checkpoint" else "a state_dict"
        raise ConfigError(f"{what} {str(path)!r} is not {expected} (expected a mapping)")
    if DIGEST in state and state.pop(DIGEST) != content_digest(state):
        raise ConfigError(f"{what} {str(path)!r} is corrupt: its content does not match the "
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


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A state_dict from a weights file made anywhere, read as data only: `.safetensors`, or
    `.pt` / `.pth` loaded like a checkpoint (`load_checkpoint`) holding a plain state_dict or a
    mapping whose 'state_dict', 'model' or 'model_state_dict' entry is one (a zerograd
    checkpoint is 'model').
    DataParallel's `module.` prefix is dropped when every key has it. Non-finite values are
    refused: an attack on NaN logits measures nothing."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"weights file {str(path)!r} is a folder: give the file inside it (e.g. "
                          "a zerograd export's model.safetensors)")
    if not path.is_file():
        raise ConfigError(f"weights file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix not in WEIGHT_SUFFIXES:
        raise ConfigError(f"weights file {str(path)!r} has an unknown type {suffix or '(no suffix)'!r}: "
                          f"expected {', '.join(WEIGHT_SUFFIXES)}")
    if suffix == ".safetensors":
        try:
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError, MemoryError, OverflowError) as e:
            raise ConfigError(f"weights file {str(path)!r} is not a readable safetensors file "
                              f"({_first(e)})") from None
    else:
        state = load_checkpoint(path, what=WEIGHTS_FILE)
        if not all(isinstance(v, torch.Tensor) for v in state.values()):
            inner = next((state[k] for k in STATE_DICT_ENTRIES if isinstance(state.get(k), dict)), None)
            if inner is None:
                keys = ", ".join(map(str, list(state)[:4])) or "none"
                raise ConfigError(f"weights file {str(path)!r} holds no state_dict: expected a mapping "
                                  f"of names to tensors, or one under {', '.join(map(repr, STATE_DICT_ENTRIES))} (its "
                                  f"keys: {keys})")
            state = inner
    bad = next((k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)), None)
    if bad is not None or not state:
        what = "no tensors" if not state else f"{bad!r}, which is not a named tensor"
        raise ConfigError(f"weights file {str(path)!r} is not a state_dict: it holds {what}")
    if all(k.startswith(PARALLEL_PREFIX) for k in state):
        state = {k[len(PARALLEL_PREFIX):]: v for k, v in state.items()}
    for key, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ConfigError(f"weights file {str(path)!r} holds non-finite values (NaN or inf) in "
                              f"{key!r}; refusing to evaluate them")
    return state


def weights_mismatch(expected: dict, weights: dict, shown: int = 3) -> str | None:
    """What keeps `weights` from loading into a module whose state_dict is `expected` (missing
    and unexpected keys, a few of each, and the first wrong shape), or None when they fit."""
    def few(keys: list[str]) -> str:
        more = f", ... ({len(keys)} in all)" if len(keys) > shown else ""
        return ", ".join(keys[:shown]) + more

    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    shapes = [k for k in expected if k in weights and not is_lazy(expected[k])  # lazy: any shape
              and expected[k].shape != weights[k].shape]
    parts = []
    if missing:
        parts.append(f"the model expects {few(missing)}, missing from the file")
    if unexpected:
        parts.append(f"the file has {few(unexpected)}, which the model does not")
    if shapes:
        k = shapes[0]
        parts.append(f"{k} is {tuple(weights[k].shape)} in the file, {tuple(expected[k].shape)} in "
                     f"the model" + (f" ({len(shapes)} shapes differ)" if len(shapes) > 1 else ""))
    return "; ".join(parts) or None


def fit_weights(module: torch.nn.Module, weights: dict, source: str | Path, what: str) -> None:
    """Load `weights` into `module` exactly (strict), or one line naming what does not fit."""
    problem = weights_mismatch(module.state_dict(), weights)
    if problem is None:
        try:
            module.load_state_dict(weights)
        except (RuntimeError, TypeError) as e:
            problem = _first(e)
    if problem is not None:
        raise ConfigError(f"weights file {str(source)!r} does not fit {what}: {problem}")
