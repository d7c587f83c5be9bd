"""Run configuration: one dataclass, YAML presets, `key=value` overrides checked against
field types, and validation that runs before any work starts."""
from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from torch import nn

from .augment import CROPS, PAD_MODES
from .data import Data, DatasetInfo, dataset_info, pixel_stats
from .errors import ConfigError
from .files import dump_yaml, load_yaml, read_yaml
from .methods import METHODS
from .models import MODELS, UserModel, build_model, is_user_model, parse_spec
from .options import DiagnosticsOptions, GuardOptions
from .precision import AMP_DTYPES
from .registry import did_you_mean
from .schedules import SCHEDULES
from .userdata import FOLDER, canonical, is_user_data, parse_bytes

PRESET_DIR = Path(__file__).parent / "presets"


@dataclass
class Config:
    """Everything a training run needs. eps is absolute; every alpha is a multiple of eps."""

    dataset: str = "cifar10"
    model: str = "preact_resnet18"
    method: str = "zerograd"
    eps: float = 8 / 255
    epochs: int = 30
    batch_size: int = 128
    lr_max: float = 0.2
    seed: int = 0
    method_args: dict = field(default_factory=dict)
    model_args: dict = field(default_factory=dict)
    grad_align: float = 0.0  # GradAlign lambda; 0 turns it off
    grad_align_backprop_clean: bool = False  # also through the clean gradient (the reference detaches it)
    eps_ramp_epochs: int = 0  # the training eps grows linearly from 0 over these first epochs
    alpha_ramp_epochs: int = 0  # the training step alpha grows linearly from 0 over these epochs
    clip_grad_norm: float | None = None  # weight-gradient norm clipping (paper, Appendix C.5)
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cyclic"
    schedule_args: dict = field(default_factory=dict)
    val_size: int = 1000  # carved from the training set; used for best checkpoint and CO detection
    val_pgd_steps: int = 10
    val_alpha: float = 0.25
    train_subset: int | None = None
    augment: bool | None = None  # None: the dataset's default
    pad_mode: str = "zeros"  # the random crop's 4-pixel padding: zeros or reflect
    flip: bool = True  # random horizontal flips (with augment)
    rotate: float = 0.0  # random rotation by up to this many degrees (with augment; 0: none)
    crop: str = "auto"  # pad (pad-and-crop), resized (random-resized-crop); auto: resized from 128 px
    mean: list | None = None  # per-channel normalization inside the model (None: the dataset's;
    std: list | None = None  # your own data's are computed from its training split and recorded)
    image_size: int | list | None = None  # folder: data resized to this (H, W) or square size
    stream: bool | str = "auto"  # stream the training split: true, false, or auto (above data_budget)
    data_budget: int | str | None = None  # bytes ("2GiB" too); null: half the device's free memory
    loader_workers: int | None = None  # processes reading images (null: min(4, CPUs)); 0: in-process
    data_dir: str | None = None
    device: str = "auto"
    amp: bool = False  # mixed precision (opt-in: the paper trains in float32, its section 4.4)
    amp_dtype: str = "auto"  # with amp: bf16 (else fp16) on CUDA only; bf16: also on CPU; fp16: CUDA
    channels_last: bool = True  # used on CUDA only
    compile: bool = False  # torch.compile the model (in place)
    sync_bn: bool = False  # SyncBatchNorm across processes (CUDA, several processes)
    multigrad_ranks: int = 1  # processes sharing a batch and splitting MultiGrad's n starts
    tensorboard: bool = False
    final_checkpoint: str = "last"  # which checkpoint the end-of-run test evaluation uses
    test_n: int | None = None  # evaluate on the first n test images (None: all)
    test_pgd_steps: int = 50
    test_restarts: int = 10
    test_alpha: float = 0.25
    # epoch-N.pt (weights + optimizer, ~2x the model: ~90 MB for PreActResNet-18): true keeps
    # every epoch's (the CO guard's rollback needs them), false none, an integer K the last K
    keep_epoch_checkpoints: bool | int = True
    # a resume point (checkpoints/last.pt) inside an epoch, every N steps and/or M minutes
    # (null: only at epoch ends), for long epochs a crash should not lose (docs/reliability.md)
    checkpoint_every_steps: int | None = None
    checkpoint_every_minutes: float | None = None
    nan_policy: str = "rollback"  # on a non-finite loss/gradient: "rollback" or "stop" (nanguard.py)
    nan_lr_factor: float = 0.5  # a NaN rollback multiplies the learning rate by this
    nan_max_rollbacks: int = 3  # after this many NaN rollbacks the run stops instead
    diagnostics: dict = field(default_factory=dict)  # CO diagnostics (diagnostics.DiagnosticsOptions)
    guard: dict = field(default_factory=dict)  # CO detection and rolling back (guard.GuardOptions)
    description: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def eval_batch_size(self) -> int:
        """Batch size of evaluation passes (no weight gradients: larger batches are cheaper)."""
        return max(self.batch_size, 256)


FIELDS = {f.name: f for f in dataclasses.fields(Config)}
NESTED = ("method_args", "model_args", "schedule_args", "diagnostics", "guard")
OWNED = {"method": "method_args", "model": "model_args", "schedule": "schedule_args"}


# --------------------------------------------------------------------------- parsing


MAX_INT = 2**63 - 1  # what torch and numpy hold in an int64
MAX_SEED = 2**32 - 1  # numpy's RandomState takes seeds in 0..2**32 - 1
MAX_FLOAT = 3.4028234663852886e38  # float32's largest: torch refuses larger factors for its tensors


def parse_number(value, name: str, kind: type):
    """Coerce value to int or float; accepts "8/255" for floats. ConfigError otherwise, and
    for NaN, an infinity, a float beyond float32 or an integer beyond int64 (values torch
    and numpy refuse)."""
    if isinstance(value, bool):
        raise ConfigError(f"{name}={value!r} has the wrong type: expected {kind.__name__}")
    if kind is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int):
            raise ConfigError(f"{name}={value!r} has the wrong type: expected an integer")
        if abs(value) > MAX_INT:
            raise ConfigError(f"{name}={value} is invalid: must be within +-{MAX_INT}")
        return value
    number = None
    if isinstance(value, (int, float)):
        number = float(value) if abs(value) < 1e308 or isinstance(value, float) else math.inf
    elif isinstance(value, str):  # from the command line: "0.03", "8/255"
        try:
            number = float(value)
        except ValueError:
            num, sep, den = value.partition("/")
            try:
                number = float(num) / float(den) if sep else None
            except (ValueError, ZeroDivisionError, OverflowError):
                pass
    if number is None:
        raise ConfigError(f"{name}={value!r} has the wrong type: expected a number (e.g. 0.03 or 8/255)")
    if not math.isfinite(number):
        raise ConfigError(f"{name}={value!r} is invalid: must be a finite number")
    if abs(number) > MAX_FLOAT:
        raise ConfigError(f"{name}={value!r} is invalid: must be within +-{MAX_FLOAT:.4g} (float32)")
    return number


def coerce(value, annotation, name: str):
    """Coerce a YAML-parsed value to a type annotation (a type or its string form)."""
    ann = annotation if isinstance(annotation, str) else _type_name(annotation)
    options = [a.strip() for a in ann.split("|")]
    if value is None:
        if "None" in options:
            return None
        raise ConfigError(f"{name} must not be null: expected {ann}")
    kinds = [o for o in options if o != "None"]
    if len(kinds) > 1:  # a union: the first kind that takes the value
        for kind in kinds:
            try:
                return coerce(value, kind, name)
            except ConfigError:
                pass
        raise ConfigError(f"{name}={value!r} has the wrong type: expected {' or '.join(kinds)}")
    kind = kinds[0] if kinds else "object"
    if kind in ("int", "float"):
        return parse_number(value, name, int if kind == "int" else float)
    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name}={value!r} has the wrong type: expected true or false")
    if kind == "str":
        if isinstance(value, str):
            return value
        raise ConfigError(f"{name}={value!r} has the wrong type: expected a string")
    if kind == "dict":
        if isinstance(value, dict):
            return dict(value)
        raise ConfigError(f"{name}={value!r} has the wrong type: expected a mapping")
    if kind == "list":
        if isinstance(value, (list, tuple)):
            return [parse_number(v, f"{name}[{i}]", float) for i, v in enumerate(value)]
        raise ConfigError(f"{name}={value!r} has the wrong type: expected a list (e.g. [0.5, 0.5, 0.5])")
    return value


def _type_name(t) -> str:
    if isinstance(t, types.UnionType) or typing.get_origin(t) is typing.Union:
        return " | ".join(_type_name(a) for a in typing.get_args(t))
    return "None" if t is type(None) else getattr(t, "__name__", str(t))


REGISTRIES = {"method_args": METHODS, "model_args": MODELS, "schedule_args": SCHEDULES}


def _nested_types(section: str, owner: str) -> dict[str, str]:
    """Types of the keys allowed in a nested section, read from the owner's signature."""
    return {k: p.annotation for k, p in REGISTRIES[section].params(owner).items()}


def apply(cfg: Config, updates: dict, source: str = "config") -> Config:
    """A copy of cfg with `updates` (a mapping, possibly nested) applied and type-checked."""
    values = cfg.to_dict()
    for owner, section in OWNED.items():  # a new method/model/schedule starts from its own defaults
        if owner in updates and updates[owner] != values[owner]:
            values[section] = {}
    for key, value in updates.items():
        if key not in FIELDS:
            raise ConfigError(f"unknown {source} key {key!r}{did_you_mean(key, FIELDS)}")
        if key in NESTED:
            if value is None:
                value = {}
            if not isinstance(value, dict):
                raise ConfigError(f"{key} must be a mapping, got {value!r}")
            values[key] = {**values[key], **value}
        else:
            values[key] = coerce(value, FIELDS[key].type, key)
    return Config(**values)


def parse_override(text: str) -> dict:
    """'a.b=value' -> {'a': {'b': value}}; the value is parsed as YAML ("8/255" stays text)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {text!r} is not of the form key=value (e.g. --set eps=8/255)")
    try:
        value = load_yaml(raw) if raw.strip() else None
    except yaml.YAMLError:  # not YAML (or an alias): the text itself
        value = raw
    if isinstance(value, dict) and key in FIELDS and "str" in str(FIELDS[key].type):
        value = raw.strip()  # "folder:" or "folder: my images" is YAML's {folder: ...}, meant as text
    head, _, rest = key.partition(".")
    if rest:
        if head not in NESTED:
            raise ConfigError(
                f"--set {key}: {head!r} has no sub-keys; nested sections are {', '.join(NESTED)}"
            )
        return {head: {rest: value}}
    return {key: value}


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


REFERENCE_KEYS = ("reproduces", "reported", "sources", "differences")


def read_preset(name: str) -> dict:
    """A preset by name (or a path to a YAML file) as a mapping of config keys; a `base:` key
    names a preset whose keys it starts from. Its `reference:` metadata is left out (see
    `preset_reference`)."""
    return _read_preset(name)[0]


def preset_reference(name: str) -> dict:
    """A preset's `reference:` metadata for the docs: what it reproduces, the reported
    numbers, and the mappings `sources` and `differences`, merged along the `base:` chain
    (a key set to null drops the base's entry)."""
    return _read_preset(name)[1]


def _read_preset(name: str, _seen: tuple = ()) -> tuple[dict, dict]:
    path = Path(name)
    if not (path.suffix in (".yaml", ".yml") and path.is_file()):
        path = PRESET_DIR / f"{name}.yaml"
        if not path.is_file():
            names = preset_names()
            raise ConfigError(
                f"unknown preset {name!r}{did_you_mean(name, names)}; valid: {', '.join(names)}"
            )
    data = read_yaml(path, f"preset {str(path)!r}") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"preset {str(path)!r} must be a mapping of config keys")
    reference = data.pop("reference", None) or {}
    if not isinstance(reference, dict) or set(reference) - set(REFERENCE_KEYS):
        raise ConfigError(f"preset {str(path)!r}: reference must be a mapping with keys "
                          f"{', '.join(REFERENCE_KEYS)}")
    base = data.pop("base", None)
    if base is None:
        return data, _merge_reference({}, reference)
    if len(_seen) > 10 or base in _seen:
        raise ConfigError(f"preset {name!r}: 'base' chain loops through {base!r}")
    merged, base_reference = _read_preset(str(base), _seen + (name,))
    for owner, section in OWNED.items():  # another method/model/schedule: drop the base's args
        if owner in data and data[owner] != merged.get(owner):
            merged.pop(section, None)
    for key, value in data.items():
        if key in NESTED and isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged, _merge_reference(base_reference, reference)


def _merge_reference(base: dict, own: dict) -> dict:
    """`sources` and `differences` are inherited and updated; the rest is the preset's own."""
    merged = {k: own[k] for k in ("reproduces", "reported") if k in own}
    for key in ("sources", "differences"):
        items = {**base.get(key, {}), **(own.get(key) or {})}
        merged[key] = {k: v for k, v in items.items() if v is not None}
    return merged


def load_config(preset: str | None = None, overrides: list[str] = (), base: dict | None = None) -> Config:
    """Defaults, then the preset, then `--set` overrides, validated."""
    cfg = Config()
    if base:
        cfg = apply(cfg, base)
    if preset:
        cfg = apply(cfg, read_preset(preset), source=f"preset {preset!r}")
    for text in overrides:
        cfg = apply(cfg, parse_override(text), source="--set")
    return validate(cfg)


# --------------------------------------------------------------------------- validation

DEVICES = ("auto", "cpu", "cuda", "mps")
OPTIMIZERS = ("sgd", "adam")
NAN_POLICIES = ("rollback", "stop")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate(cfg: Config) -> Config:
    """Check every value and name; returns cfg with nested sections type-coerced."""
    _require(0 < cfg.eps <= 1, f"eps={cfg.eps!r} is invalid: must be in (0, 1] (pixels are in [0, 1]; e.g. 8/255)")
    _require(cfg.epochs >= 1, f"epochs={cfg.epochs} is invalid: must be >= 1")
    _require(0 <= cfg.seed <= MAX_SEED, f"seed={cfg.seed} is invalid: must be in 0..{MAX_SEED}")
    _require(cfg.batch_size >= 1, f"batch_size={cfg.batch_size} is invalid: must be >= 1")
    _require(cfg.lr_max > 0, f"lr_max={cfg.lr_max} is invalid: must be > 0")
    _require(cfg.momentum >= 0, f"momentum={cfg.momentum} is invalid: must be >= 0")
    _require(cfg.weight_decay >= 0, f"weight_decay={cfg.weight_decay} is invalid: must be >= 0")
    _require(cfg.grad_align >= 0, f"grad_align={cfg.grad_align} is invalid: must be >= 0 (0 = off)")
    _require(cfg.clip_grad_norm is None or cfg.clip_grad_norm > 0,
             f"clip_grad_norm={cfg.clip_grad_norm} is invalid: must be > 0 or null")
    _require(cfg.val_size >= 0, f"val_size={cfg.val_size} is invalid: must be >= 0")
    _require(cfg.val_pgd_steps >= 1, f"val_pgd_steps={cfg.val_pgd_steps} is invalid: must be >= 1")
    _require(cfg.test_pgd_steps >= 1, f"test_pgd_steps={cfg.test_pgd_steps} is invalid: must be >= 1")
    _require(cfg.test_restarts >= 1, f"test_restarts={cfg.test_restarts} is invalid: must be >= 1")
    for name in ("val_alpha", "test_alpha"):
        _require(getattr(cfg, name) > 0, f"{name}={getattr(cfg, name)} is invalid: must be > 0 (a multiple of eps)")
    _require(cfg.train_subset is None or cfg.train_subset >= 1,
             f"train_subset={cfg.train_subset} is invalid: must be >= 1 or null")
    _require(cfg.test_n is None or cfg.test_n >= 1, f"test_n={cfg.test_n} is invalid: must be >= 1 or null")
    _require(cfg.optimizer in OPTIMIZERS,
             f"unknown optimizer {cfg.optimizer!r}{did_you_mean(cfg.optimizer, OPTIMIZERS)}; valid: {', '.join(OPTIMIZERS)}")
    _require(cfg.final_checkpoint in ("last", "best"),
             f"final_checkpoint={cfg.final_checkpoint!r} is invalid: must be 'last' or 'best'")
    _require(cfg.device.split(":")[0] in DEVICES,
             f"device={cfg.device!r} is invalid: must be one of {', '.join(DEVICES)} (cuda:N allowed)")
    _require(cfg.amp_dtype in AMP_DTYPES,
             f"amp_dtype={cfg.amp_dtype!r} is invalid: must be one of {', '.join(AMP_DTYPES)}")
    _require(cfg.multigrad_ranks >= 1, f"multigrad_ranks={cfg.multigrad_ranks} is invalid: must be >= 1")
    _require(cfg.multigrad_ranks == 1 or cfg.method == "multigrad",
             f"multigrad_ranks={cfg.multigrad_ranks} spreads MultiGrad's starts and needs method=multigrad "
             f"(method is {cfg.method!r}); use multigrad_ranks=1")
    _require(cfg.keep_epoch_checkpoints is True or cfg.keep_epoch_checkpoints >= 0,
             f"keep_epoch_checkpoints={cfg.keep_epoch_checkpoints} is invalid: must be true, false "
             "or a number of epochs >= 0")
    _require(cfg.checkpoint_every_steps is None or cfg.checkpoint_every_steps >= 1,
             f"checkpoint_every_steps={cfg.checkpoint_every_steps} is invalid: must be >= 1 or null (off)")
    _require(cfg.checkpoint_every_minutes is None or cfg.checkpoint_every_minutes > 0,
             f"checkpoint_every_minutes={cfg.checkpoint_every_minutes} is invalid: must be > 0 or null (off)")
    _require(cfg.nan_policy in NAN_POLICIES,
             f"nan_policy={cfg.nan_policy!r} is invalid: must be one of {', '.join(NAN_POLICIES)}")
    _require(0 < cfg.nan_lr_factor < 1, f"nan_lr_factor={cfg.nan_lr_factor} is invalid: must be in (0, 1)")
    _require(cfg.nan_max_rollbacks >= 0, f"nan_max_rollbacks={cfg.nan_max_rollbacks} is invalid: must be >= 0")
    _require(cfg.pad_mode in PAD_MODES,
             f"pad_mode={cfg.pad_mode!r} is invalid: must be one of {', '.join(PAD_MODES)}")
    _require(0 <= cfg.rotate <= 180, f"rotate={cfg.rotate} is invalid: must be in [0, 180] (degrees)")
    for name in ("eps_ramp_epochs", "alpha_ramp_epochs"):
        _require(getattr(cfg, name) >= 0, f"{name}={getattr(cfg, name)} is invalid: must be >= 0 (0: no ramp)")
    cfg = _check_data_keys(cfg)
    info = dataset_facts(cfg)  # unknown names: one line with did-you-mean
    for name in ("mean", "std"):
        values = getattr(cfg, name)
        _require(values is None or len(values) == info.shape[0],
                 f"{name}={values} is invalid: {cfg.dataset} needs {info.shape[0]} values "
                 f"(one per channel) or null (the dataset's)")
    _require(cfg.std is None or all(v > 0 for v in cfg.std), f"std={cfg.std} is invalid: must be > 0")

    user = is_user_model(cfg.model)
    if user:  # its arguments' schema lives in the user's code, imported only when built
        cfg = dataclasses.replace(cfg, model=parse_spec(cfg.model))
    nested = {"model_args": dict(cfg.model_args)} if user else {}
    for section, owner in (("method_args", cfg.method), ("model_args", cfg.model),
                           ("schedule_args", cfg.schedule)):
        if section in nested:
            continue
        allowed = _nested_types(section, owner)
        values = {}
        for key, value in getattr(cfg, section).items():
            if key not in allowed:
                raise ConfigError(
                    f"unknown key {section}.{key} for {owner!r}{did_you_mean(key, allowed)}; "
                    f"valid: {', '.join(allowed) or 'none'}"
                )
            values[key] = coerce(value, allowed[key], f"{section}.{key}")
        nested[section] = values
    for section, owner in (("method_args", cfg.method), ("model_args", cfg.model),
                           ("schedule_args", cfg.schedule)):
        if user and section == "model_args":
            continue
        REGISTRIES[section].check(owner, nested[section])
        # every effective value, so config.yaml and checkpoints record what was used
        nested[section] = {**REGISTRIES[section].defaults(owner), **nested[section]}
    cfg = dataclasses.replace(cfg, **nested)
    return check_options(cfg)


def check_options(cfg: Config) -> Config:
    """Type-check the `diagnostics` and `guard` sections against their options dataclasses
    (unknown keys refused with did-you-mean), then let each check its ranges against cfg."""
    sections = {}
    for section, options in (("diagnostics", DiagnosticsOptions), ("guard", GuardOptions)):
        allowed = {f.name: f.type for f in dataclasses.fields(options)}
        values = {}
        for key, value in getattr(cfg, section).items():
            if key not in allowed:
                raise ConfigError(f"unknown key {section}.{key}{did_you_mean(key, allowed)}; "
                                  f"valid: {', '.join(allowed)}")
            values[key] = coerce(value, allowed[key], f"{section}.{key}")
        options(**values).check(cfg)
        sections[section] = values
    return dataclasses.replace(cfg, **sections)


def to_yaml(cfg: Config, extra: dict | None = None) -> str:
    return dump_yaml({**cfg.to_dict(), **(extra or {})})


def from_yaml_dict(data: dict) -> Config:
    """A Config from a run folder's config.yaml (extra recorded keys such as versions ignored)."""
    known = {k: v for k, v in data.items() if k in FIELDS}
    return validate(apply(Config(), known))


MAX_WORKERS = 64
RESIZED_FROM = 128  # crop=auto: random-resized-crop for images at least this large (both sides)


def _check_data_keys(cfg: Config) -> Config:
    """The data keys (image_size, stream, data_budget, loader_workers, crop); your own data's
    path made absolute, so config.yaml names it from anywhere."""
    if is_user_data(cfg.dataset):
        cfg = dataclasses.replace(cfg, dataset=canonical(cfg.dataset))
    size = cfg.image_size
    if size is not None:
        sizes = [size] if not isinstance(size, list) else size
        _require(cfg.dataset.startswith(FOLDER),
                 f"image_size={size} resizes folder: datasets only (dataset is {cfg.dataset!r}); use null")
        _require(len(sizes) in (1, 2) and all(float(v).is_integer() and 1 <= v <= 65536 for v in sizes),
                 f"image_size={size} is invalid: must be a size in pixels (1..65536) or [height, width]")
        size = [int(v) for v in sizes] * (3 - len(sizes))
    _require(isinstance(cfg.stream, bool) or cfg.stream == "auto",
             f"stream={cfg.stream!r} is invalid: must be true, false or auto")
    if cfg.data_budget is not None:
        parse_bytes(cfg.data_budget)
    _require(cfg.loader_workers is None or 0 <= cfg.loader_workers <= MAX_WORKERS,
             f"loader_workers={cfg.loader_workers} is invalid: must be in 0..{MAX_WORKERS} or null")
    _require(cfg.crop in ("auto", *CROPS),
             f"crop={cfg.crop!r} is invalid: must be one of auto, {', '.join(CROPS)}")
    _require(cfg.rotate == 0 or cfg.crop != "resized",
             f"rotate={cfg.rotate} needs crop=pad (random-resized-crop does not rotate)")
    return dataclasses.replace(cfg, image_size=size)


def dataset_facts(cfg: Config) -> DatasetInfo:
    """cfg's dataset's facts (`data.dataset_info`): shape, classes, mean/std, augmentation."""
    size = tuple(cfg.image_size) if isinstance(cfg.image_size, list) else None
    return dataset_info(cfg.dataset, cfg.data_dir, size)


def data_options(cfg: Config, device, **changes) -> dict:
    """`data.load_data`'s keyword arguments for cfg on `device`, updated by `changes` (e.g.
    an evaluation's test_subset, or stream=True where the training images are never read)."""
    workers = min(4, os.cpu_count() or 1) if cfg.loader_workers is None else cfg.loader_workers
    return {"data_dir": cfg.data_dir, "val_size": cfg.val_size, "train_subset": cfg.train_subset,
            "test_subset": cfg.test_n, "device": device, "seed": cfg.seed,
            "image_size": tuple(cfg.image_size) if cfg.image_size else None, "stream": cfg.stream,
            "budget": None if cfg.data_budget is None else parse_bytes(cfg.data_budget),
            "workers": workers, **changes}


def with_statistics(cfg: Config, data: Data) -> Config:
    """cfg with mean/std set: given ones kept, else the dataset's, else (your own data)
    computed once from the training split, so config.yaml records what the model uses."""
    info = data.info
    if (cfg.mean is not None or info.mean is not None) and (cfg.std is not None or info.std is not None):
        return cfg
    mean, std = pixel_stats(data.train)
    return dataclasses.replace(cfg, mean=cfg.mean or mean, std=cfg.std or std)


def normalization(cfg: Config) -> tuple[list[float], list[float]]:
    """The per-channel mean and std the model normalizes with: cfg's, else the dataset's."""
    info = dataset_facts(cfg)
    mean, std = cfg.mean or info.mean, cfg.std or info.std
    if mean is None or std is None:
        raise ConfigError(f"dataset {cfg.dataset!r} has no built-in mean/std: give mean= and std= "
                          "(training computes and records them)")
    return list(mean), list(std)


def augmentation(cfg: Config) -> dict:
    """The training batches' augmentation arguments of `data.batches`."""
    info = dataset_facts(cfg)
    augment = info.augment if cfg.augment is None else cfg.augment
    crop = cfg.crop
    if crop == "auto":
        crop = "resized" if min(info.shape[1:]) >= RESIZED_FROM and cfg.rotate == 0 else "pad"
    return {"augment": augment, "pad_mode": cfg.pad_mode, "flip": cfg.flip, "rotate": cfg.rotate,
            "crop": crop}


def model_for(cfg: Config, user: UserModel | None = None) -> nn.Module:
    """The network cfg names, shaped and normalized for cfg's dataset (on the CPU). A user
    model (cfg.model a spec or an object record) needs `user` (models.user_model)."""
    info = dataset_facts(cfg)
    mean, std = normalization(cfg)
    return build_model(cfg.model, num_classes=info.num_classes, in_channels=info.shape[0],
                       mean=mean, std=std, user=user, **cfg.model_args)


def check_user_model(cfg: Config, user: UserModel) -> None:
    """Build cfg's user model once (RNG untouched), so a bad factory fails before any work."""
    info = dataset_facts(cfg)
    user.check(info.num_classes, info.shape[0], cfg.model_args)
