"""Your own network: a factory named by a spec, or an `nn.Module` passed to the Python API.

    model=module:path/to/file.py:factory     a function in a Python file
    model=pkg.module:factory                 a function in an importable module
                                              (also written module:pkg.module:factory)
    zerograd.train(cfg, out, model=net)      recorded as object:<module>.<Class>

A spec is only text until `user_model` is called with it: parsing and normalizing
(`parse_spec`) never imports anything, so a checkpoint or a config.yaml naming a user model
can be read without running its code. Code is imported only by `user_model(spec)`, which the
applications call only for a spec the user gave to this run (see docs/api.md).
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError

MODULE = "module:"
OBJECT = "object:"


def is_user_model(name: object) -> bool:
    """A user model's spec or a Python object's record, as opposed to a registered name."""
    return isinstance(name, str) and (name.startswith(OBJECT) or ":" in name)


def is_object_model(name: object) -> bool:
    return isinstance(name, str) and name.startswith(OBJECT)


def parse_spec(text: str) -> str:
    """The canonical spec, `module:<absolute file.py or dotted module>:<factory>` (or an
    `object:` record unchanged); a ConfigError for a malformed one. Imports nothing."""
    if text.startswith(OBJECT):
        name = text[len(OBJECT):]
        if not name or not all(p.isidentifier() for p in name.replace("<locals>", "locals").split(".")):
            raise ConfigError(f"model {text!r} is not a Python object record (object:module.Class)")
        return text
    body = text.removeprefix(MODULE)
    target, _, factory = body.rpartition(":")
    form = (f"model spec {text!r} is invalid: expected module:path/to/file.py:factory or "
            "pkg.module:factory")
    if not target or not factory.isidentifier():
        raise ConfigError(form)
    if target.endswith(".py"):
        target = str(Path(target).expanduser().resolve())
    elif not all(p.isidentifier() for p in target.split(".")):
        raise ConfigError(form)
    return f"{MODULE}{target}:{factory}"


def object_record(module: nn.Module) -> str:
    """`object:<module>.<Class>` of an nn.Module passed to the Python API."""
    cls = type(module)
    return f"{OBJECT}{cls.__module__}.{cls.__qualname__}"


@dataclass(frozen=True)
class UserModel:
    """A user model ready to build: a factory (imported) or a module (passed in)."""

    spec: str  # canonical (parse_spec) or an object: record
    factory: Callable | None = None
    module: nn.Module | None = None

    def build(self, num_classes: int, in_channels: int, **model_args) -> nn.Module:
        """The user's network (Normalize is put in front by `build_model`)."""
        if self.module is not None:
            if model_args:
                raise ConfigError(f"model {self.spec!r} is a Python object: it takes no model_args "
                                  f"(got {', '.join(model_args)})")
            return self.module
        try:
            net = self.factory(num_classes=num_classes, in_channels=in_channels, **model_args)
        except Exception as e:  # noqa: BLE001 (the user's code: any failure is a bad input)
            raise ConfigError(f"model {self.spec!r}: the factory raised {type(e).__name__}: "
                              f"{_first_line(e)}") from None
        if not isinstance(net, nn.Module):
            raise ConfigError(f"model {self.spec!r}: the factory returned {type(net).__name__}, "
                              "not a torch.nn.Module")
        return net

    def check(self, num_classes: int, in_channels: int, model_args: dict) -> None:
        """Build once and throw away (the global RNG is left as it was), so that a bad factory
        or model_args fails before any work."""
        with torch.random.fork_rng(devices=[]):
            self.build(num_classes, in_channels, **model_args)


def user_model(source: str | nn.Module, recorded: str | None = None) -> UserModel:
    """A spec (imported now: the caller vouches that the user gave it) or an nn.Module. With
    `recorded` (the spec a run or checkpoint was made with), the source must match it."""
    if isinstance(source, nn.Module):
        spec = object_record(source)
        if recorded is not None and is_object_model(recorded) and recorded != spec:
            raise ConfigError(f"the model passed is {spec[len(OBJECT):]}, but the run was made with "
                              f"{recorded[len(OBJECT):]}: pass a module of the same class")
        return UserModel(recorded if recorded is not None else spec, module=source)
    if not isinstance(source, str):
        raise ConfigError(f"model must be a spec (module:file.py:factory) or a torch.nn.Module, "
                          f"got {type(source).__name__}")
    if is_object_model(source):
        raise ConfigError(f"model {source!r} is a Python object's record: it cannot be rebuilt from "
                          "disk; pass the module itself (zerograd.train(cfg, out, model=net))")
    spec = parse_spec(source)
    if recorded is not None and spec != recorded:
        raise ConfigError(f"--model {source!r} does not match the run's model {recorded!r}; "
                          "pass the same spec")
    return UserModel(spec, factory=_import_factory(spec))


def _import_factory(spec: str) -> Callable:
    target, _, name = spec[len(MODULE):].rpartition(":")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise ConfigError(f"model {spec!r}: no such file {target!r}")
        module_name = "zerograd_user_" + hashlib.sha256(target.encode()).hexdigest()[:16]
        module = sys.modules.get(module_name)
        if module is None:
            loader_spec = importlib.util.spec_from_file_location(module_name, path)
            if loader_spec is None or loader_spec.loader is None:
                raise ConfigError(f"model {spec!r}: {target!r} cannot be imported as Python")
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[module_name] = module
            try:
                loader_spec.loader.exec_module(module)
            except Exception as e:  # noqa: BLE001 (the user's code)
                del sys.modules[module_name]
                raise ConfigError(f"model {spec!r}: importing {target!r} failed: "
                                  f"{type(e).__name__}: {_first_line(e)}") from None
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as e:
            raise ConfigError(f"model {spec!r}: no module named {e.name!r}") from None
        except Exception as e:  # noqa: BLE001 (the user's code)
            raise ConfigError(f"model {spec!r}: importing {target!r} failed: "
                              f"{type(e).__name__}: {_first_line(e)}") from None
    factory = getattr(module, name, None)
    if factory is None:
        raise ConfigError(f"model {spec!r}: {target!r} has no attribute {name!r}")
    if not callable(factory):
        raise ConfigError(f"model {spec!r}: {name!r} is a {type(factory).__name__}, not a factory")
    return factory


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [""])[0][:200]
