"""Export a trained model for RobustBench-style code: the weights in safetensors (plain tensors,
no pickle, so loading runs no code) and a JSON naming the architecture and its arguments, the
classes, the normalization (inside the model: it takes pixels in [0, 1]) and the threat model.

    from zerograd.export import load_exported
    model = load_exported("runs/x/export")   # nn.Module in eval mode, inputs in [0, 1]
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from .config import dataset_facts, normalization
from .errors import ConfigError
from .files import atomic_write, write_json
from .models import build_model, is_user_model, needs_user_model, user_model
from .runfolder import checkpoint_facts, export_folder, load_checkpoint_model
from .runtime import environment

EXPORT_FORMAT = "zerograd-export-1"
WEIGHTS = "model.safetensors"
META = "model.json"
REQUIRED = ("architecture", "model_args", "num_classes", "in_channels", "mean", "std")


def export_model(path, out=None, *, which: str | None = None, force: bool = False, model=None) -> Path:
    """Write model.safetensors and model.json for a run folder's (or a checkpoint's) model to
    `out` (default RUN/export, or <checkpoint stem>-export beside a checkpoint file). A run of
    your own model needs `model` (its spec, or a module of its class): see docs/api.md."""
    model, cfg, ckpt_path, ckpt = load_checkpoint_model(path, which, model=model)
    out = Path(out) if out is not None else export_folder(ckpt_path)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not force)):
        raise ConfigError(f"export folder {str(out)!r} exists and is not empty; choose another "
                          "--out or pass --force to overwrite")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create export folder {str(out)!r}: {e.strerror}") from None
    info = dataset_facts(cfg)
    mean, std = normalization(cfg)
    facts = checkpoint_facts(ckpt_path, ckpt, cfg)
    meta = {
        "format": EXPORT_FORMAT,
        "architecture": cfg.model,
        "model_args": dict(cfg.model_args),
        "num_classes": info.num_classes,
        "in_channels": info.shape[0],
        "input_shape": list(info.shape),
        "input_range": [0.0, 1.0],
        "mean": mean,
        "std": std,
        "normalization": "inside the model (its first layer); feed pixels in [0, 1]",
        "dataset": cfg.dataset,
        "threat_model": "Linf",
        "eps": cfg.eps,
        "method": cfg.method,
        "method_args": dict(cfg.method_args),
        "weights": WEIGHTS,
        **{k: v for k, v in facts.items() if k != "checkpoint"},
        "source_checkpoint": facts["checkpoint"],
        **environment(),
    }
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    # in memory, then the one atomic write: a crash never leaves a half-written weights file
    atomic_write(out / WEIGHTS, save(weights, metadata={"format": "pt"}))
    # the old model.json describes the old weights: gone before the new one is written, so a
    # failure here leaves an export that is refused as incomplete, never a mismatched pair
    (out / META).unlink(missing_ok=True)
    write_json(out / META, meta)
    return out


def load_exported(path: str | Path, *, device: str | torch.device = "cpu", model=None) -> nn.Module:
    """The exported model (nn.Module in eval mode, pixels in [0, 1] in, logits out) from a
    folder written by `export_model`. Unknown formats, architectures or mismatched weights
    are a ConfigError. An export of your own model needs `model`: the spec recorded as its
    architecture (imported only then) or a module of the recorded class."""
    path = Path(path)
    meta_path, weights_path = path / META, path / WEIGHTS
    for f in (meta_path, weights_path):
        if not f.is_file():
            raise ConfigError(f"{str(path)!r} is not a zerograd export: {f.name} is missing")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{str(meta_path)!r} is not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
        raise ConfigError(f"{str(meta_path)!r} is not a {EXPORT_FORMAT} file")
    missing = [k for k in REQUIRED if k not in meta]
    if missing or not isinstance(meta["model_args"], dict):
        raise ConfigError(f"{str(meta_path)!r} lacks {', '.join(missing) or 'a model_args mapping'}; "
                          f"an export needs {', '.join(REQUIRED)}")
    architecture = meta["architecture"]
    user = None
    if is_user_model(architecture):
        if model is None:
            raise ConfigError(needs_user_model(architecture, f"export {str(path)!r}"))
        user = user_model(model, recorded=architecture)
    elif model is not None:
        raise ConfigError(f"export {str(path)!r} holds the built-in model {architecture!r}: "
                          "load it without model=")
    model = build_model(architecture, num_classes=meta["num_classes"],
                        in_channels=meta["in_channels"], mean=meta["mean"], std=meta["std"],
                        user=user, **meta["model_args"])
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError) as e:
        raise ConfigError(f"{str(weights_path)!r} is not a readable safetensors file "
                          f"({str(e).splitlines()[0][:160]})") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ConfigError(f"{str(weights_path)!r} does not match {meta['architecture']!r} "
                          f"({str(e).splitlines()[0][:160]})") from None
    return model.to(device).eval()
