"""Resuming a run folder exactly: what a checkpoint must hold beyond the weights (RNG states,
schedule position, callback state, how many metrics lines it covers) and how a killed run is
picked up again. Every check happens before anything in the folder is touched."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
import yaml

from .checkpoint import atomic_write, load_checkpoint, load_weights
from .config import FIELDS, Config, apply, load_config, parse_override, validate
from .errors import ConfigError

FORMAT = "zerograd-checkpoint-2"  # 2: with RNG, schedule, callback and log state
# Keys a resumed run may change: where the data lives and which device runs it. method_args
# may legitimately differ between config.yaml and the checkpoint after a rollback.
MAY_DIFFER = ("data_dir", "device")

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


# --------------------------------------------------------------------------- callbacks


def _callback_keys(callbacks) -> list[str]:
    """Each callback's key: its class name (with #2, #3 ... for repeats)."""
    keys, seen = [], {}
    for cb in callbacks:
        name = type(cb).__name__
        seen[name] = seen.get(name, 0) + 1
        keys.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return keys


def callback_states(callbacks) -> dict:
    """{key: cb.state_dict()} for the callbacks that have state."""
    return {key: cb.state_dict() for key, cb in zip(_callback_keys(callbacks), callbacks)
            if callable(getattr(cb, "state_dict", None))}


def load_callback_states(callbacks, states: dict) -> None:
    for key, cb in zip(_callback_keys(callbacks), callbacks):
        if key in states and callable(getattr(cb, "load_state_dict", None)):
            cb.load_state_dict(states[key])


# --------------------------------------------------------------------------- weights


def load_training_state(state, ckpt: dict, source: str | Path) -> None:
    """Put a checkpoint's model, optimizer, epoch and step into a TrainState."""
    for key in ("model", "optimizer", "epoch", "step"):
        if key not in ckpt:
            raise ConfigError(f"checkpoint {str(source)!r} is not a zerograd training checkpoint "
                              f"(no {key!r})")
    load_weights(state.model, ckpt["model"], source)
    try:
        state.optimizer.load_state_dict(ckpt["optimizer"])
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        raise ConfigError(f"checkpoint {str(source)!r} has an optimizer state that does not fit "
                          f"this model ({str(e).strip()[:160]})") from None
    state.epoch, state.step = int(ckpt["epoch"]), int(ckpt["step"])


def restore(state, ckpt: dict, callbacks, source: str | Path) -> None:
    """Everything `train` needs to continue exactly where `ckpt` was written."""
    load_training_state(state, ckpt, source)
    schedule = ckpt.get("schedule", {})
    state.lr_scale = float(schedule.get("lr_scale", 1.0))
    state.rollbacks = int(ckpt.get("rollbacks", 0))
    state.nan_rollbacks = int(ckpt.get("nan_rollbacks", 0))
    if ckpt.get("method_args") != state.cfg.method_args:
        state.cfg = validate(apply(state.cfg, {"method_args": ckpt.get("method_args") or {}}))
    load_callback_states(callbacks, ckpt.get("callbacks", {}))
    if "rng" in ckpt:
        set_rng_state(ckpt["rng"])


# --------------------------------------------------------------------------- run folders


def _config_path(run_dir: Path) -> Path:
    if not run_dir.is_dir():
        raise ConfigError(f"--resume {str(run_dir)!r}: no such run folder")
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"--resume {str(run_dir)!r} is not a zerograd run folder (no config.yaml)")
    return path


def read_run_config(run_dir: str | Path) -> Config:
    """The Config recorded in a run folder's config.yaml, checked like any other config."""
    path = _config_path(Path(run_dir))
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{str(path)!r} is not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{str(path)!r} is not a zerograd config (expected a mapping of keys)")
    return validate(apply(Config(), {k: v for k, v in data.items() if k in FIELDS},
                          source=f"{path.name}"))


def differences(a: Config, b: Config, ignore=MAY_DIFFER) -> list[str]:
    """'key: a != b' for every config key (outside `ignore`) on which a and b disagree."""
    da, db = a.to_dict(), b.to_dict()
    return [f"{k}: {da[k]!r} != {db[k]!r}" for k in da if k not in ignore and da[k] != db[k]]


def resume_config(run_dir: str | Path, preset: str | None = None, overrides=(),
                  data_dir: str | None = None) -> Config:
    """The config to resume `run_dir` with. A preset or overrides must reproduce the recorded
    config (they cannot change a half-finished run); data_dir may point elsewhere."""
    cfg = read_run_config(run_dir)
    if preset or overrides:  # overrides apply on top of the preset if given, else of the run
        given = load_config(preset, list(overrides)) if preset else cfg
        for text in [] if preset else overrides:
            given = validate(apply(given, parse_override(text), source="--set"))
        diff = differences(cfg, given)
        if diff:
            raise ConfigError(f"--resume {str(run_dir)!r}: the given config differs from the run's "
                              f"config.yaml ({'; '.join(diff)[:300]}); resume without --preset/--set")
    if data_dir:
        cfg = apply(cfg, {"data_dir": str(data_dir)})
    return cfg


def resume_point(run_dir: Path, cfg: Config) -> dict | None:
    """The checkpoint to continue from (checkpoints/last.pt), after checking that the run is
    unfinished and that the checkpoint belongs to this config; None if training never got as
    far as its first checkpoint."""
    _config_path(run_dir)
    if (run_dir / "eval.json").exists():
        raise ConfigError(f"--resume {str(run_dir)!r}: the run is finished (eval.json exists); "
                          f"evaluate it with 'zerograd eval {run_dir}' or start a new run")
    path = run_dir / "checkpoints" / "last.pt"
    if not path.exists():
        return None
    ckpt = load_checkpoint(path)
    if ckpt.get("format") != FORMAT or "config" not in ckpt:
        raise ConfigError(f"checkpoint {str(path)!r} is not a {FORMAT} file (an older zerograd's, or "
                          "another program's): it cannot be resumed exactly")
    try:
        saved = apply(Config(), {k: v for k, v in ckpt["config"].items() if k in FIELDS})
    except (ConfigError, AttributeError, TypeError):
        raise ConfigError(f"checkpoint {str(path)!r} holds an unreadable config") from None
    diff = differences(cfg, saved, MAY_DIFFER + ("method_args",))
    if diff:
        raise ConfigError(f"checkpoint {str(path)!r} belongs to another config than config.yaml "
                          f"({'; '.join(diff)[:300]})")
    return ckpt


def remove_temp_files(run_dir: Path) -> None:
    """Delete the temp files of atomic writes that a kill interrupted (.NAME.XXXX.tmp)."""
    for path in [*run_dir.glob(".*.tmp"), *run_dir.glob("checkpoints/.*.tmp")]:
        path.unlink(missing_ok=True)


def truncate_metrics(path: Path, records: int) -> list[dict]:
    """Keep the first `records` complete lines of metrics.jsonl (those written before the
    checkpoint resumed from), atomically; returns them parsed."""
    if not path.is_file():
        return []
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            json.loads(line)
        except json.JSONDecodeError:
            break  # a torn line: only the last one can be torn, and nothing after it counts
        lines.append(line)
    kept = lines[:records]
    atomic_write(path, "".join(line + "\n" for line in kept).encode())
    return [json.loads(line) for line in kept]
