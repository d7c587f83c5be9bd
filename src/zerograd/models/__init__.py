"""Model registry: every network takes pixels in [0, 1] and normalizes inside.

`build_model` wraps a registered network as `nn.Sequential(Normalize(mean, std), net)`
(the RobustBench convention), so attacks and epsilons live in pixel space and a saved
state_dict carries its own normalization.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ConfigError
from ..registry import Registry
from .preact_resnet import preact_resnet18
from .small import mlp, one_layer_cnn, small_cnn
from .user import UserModel, is_object_model, is_user_model, parse_spec, user_model
from .wide_resnet import wide_resnet

__all__ = ["MODELS", "Normalize", "UserModel", "build_model", "check_model_args", "is_object_model",
           "is_user_model", "model_params", "needs_user_model", "parse_spec", "user_model"]


def _check_model(name: str, args: dict) -> None:
    """Types follow the defaults; structural constraints (e.g. WRN depth = 6n+4) are raised
    by the constructor itself, run on the meta device (no weights allocated)."""
    for key, value in args.items():
        _check_value(f"model_args.{key}", value, MODELS.defaults(name)[key])
    with torch.device("meta"):
        MODELS[name](num_classes=2, in_channels=1, **args)


MODELS: Registry = Registry("model", section="model_args", fixed=("num_classes", "in_channels"),
                            check=_check_model)
MODELS.register("preact_resnet18", preact_resnet18)
MODELS.register("wide_resnet", wide_resnet)
# A named preset of wide_resnet (its arguments can still be overridden).
MODELS.register("wrn34_10", functools.partial(wide_resnet, depth=34, widen_factor=10))
MODELS.register("small_cnn", small_cnn)
MODELS.register("one_layer_cnn", one_layer_cnn)
MODELS.register("mlp", mlp)


class Normalize(nn.Module):
    """(x - mean) / std per channel; mean/std are persistent buffers shaped (1, C, 1, 1)."""

    def __init__(self, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor):
        super().__init__()
        self.register_buffer("mean", _per_channel(mean))
        self.register_buffer("std", _per_channel(std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


def _per_channel(values) -> torch.Tensor:
    return torch.as_tensor(values, dtype=torch.float32).clone().reshape(1, -1, 1, 1)


def model_params(name: str) -> dict[str, object]:
    """The model's hyperparameters and their defaults, read from its constructor."""
    return MODELS.defaults(name)


def check_model_args(name: str, args: dict) -> None:
    """Raise ConfigError for an unknown model or argument, or a bad value, before any work."""
    MODELS.check(name, args)


def _check_value(what: str, value, default) -> None:
    """Type follows the default; every integer hyperparameter is a count or size, so >= 1."""
    if isinstance(default, bool):
        ok, valid = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        ok, valid = isinstance(value, int) and not isinstance(value, bool) and value >= 1, \
            "an integer >= 1"
    elif isinstance(default, float):
        ok, valid = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
    else:
        ok, valid = True, ""
    if not ok:
        raise ConfigError(f"{what}={value!r} is invalid: must be {valid}")


def build_model(name: str, *, num_classes: int, in_channels: int = 3,
                mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor,
                user: UserModel | None = None, **model_args) -> nn.Module:
    """nn.Sequential(Normalize(mean, std), net): the model takes pixels in [0, 1]. A user
    model (`name` a spec or an object record, see models/user.py) is built from `user`, which
    must be given: building never imports code by itself."""
    _check_value("num_classes", num_classes, 1)
    _check_value("in_channels", in_channels, 1)
    if is_user_model(name):
        if user is None or user.spec != name:
            raise ConfigError(needs_user_model(name))
    else:
        check_model_args(name, model_args)
    normalize = Normalize(mean, std)
    for label, buf in (("mean", normalize.mean), ("std", normalize.std)):
        if buf.numel() != in_channels:
            raise ConfigError(f"{label} has {buf.numel()} values; need one per input channel "
                              f"(in_channels={in_channels})")
    if not bool((normalize.std > 0).all()):
        raise ConfigError(f"std={normalize.std.flatten().tolist()} is invalid: must be > 0")
    if is_user_model(name):
        net = user.build(num_classes, in_channels, **model_args)
    else:
        net = MODELS[name](num_classes=num_classes, in_channels=in_channels, **model_args)
    return nn.Sequential(normalize, net)


def needs_user_model(name: str, where: str = "the run") -> str:
    """The one line for loading a user model without being given it."""
    if is_object_model(name):
        return (f"{where} was trained on a Python object ({name}), which cannot be rebuilt from "
                "disk: pass a module of that class (model=net)")
    return (f"{where} uses the model {name!r}; zerograd imports no code on its own: pass that "
            f"spec explicitly (--model {name}, or model= in Python) to load it")
