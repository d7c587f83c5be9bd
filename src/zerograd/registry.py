"""One name table for everything chosen by name (methods, regularizers, models, datasets,
schedules, attacks): lookup with did-you-mean, and each entry's hyperparameters read from its
signature, so the signature is the schema the config, the CLI and the docs use."""
from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from .errors import ConfigError

T = TypeVar("T")


def did_you_mean(name: str, choices) -> str:
    """' (did you mean 'x'?)' when a close match exists, else ''."""
    close = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


class UnknownName(ConfigError, KeyError):
    """A name that is not in a registry: a bad config value (ConfigError) and a missing key."""

    __str__ = ConfigError.__str__


@dataclass(frozen=True)
class Param:
    """One hyperparameter: its default and its type as written in the signature."""

    default: object
    annotation: str  # e.g. 'float', 'int | None'; for an unannotated one, its default's type


Rule = tuple[Callable[[object], bool], str]  # (is the value valid?, what would be valid)


class Registry(Mapping[str, T], Generic[T]):
    """name -> entry. `params(name)` are the entry's keyword hyperparameters (those with a
    default, minus `fixed`: the arguments the caller always passes), and `check(name, args)`
    refuses unknown keys and values outside `rules` before any work starts."""

    def __init__(self, kind: str, *, section: str = "", fixed: tuple[str, ...] = (),
                 rules: Mapping[str, Rule] | None = None, check: Callable[[str, dict], None] | None = None):
        self.kind = kind
        self.section = section  # the config section of the hyperparameters, e.g. 'method_args'
        self.fixed = fixed
        self.rules = dict(rules or {})
        self._extra_check = check
        self._entries: dict[str, T] = {}

    # ------------------------------------------------------------------ the table

    def register(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            valid = ", ".join(sorted(self._entries))
            raise UnknownName(f"unknown {self.kind} {name!r}{did_you_mean(name, self._entries)}; "
                              f"valid: {valid}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    # ------------------------------------------------------------------ the schema

    def params(self, name: str) -> dict[str, Param]:
        """The entry's hyperparameters with defaults and annotated types, in signature order."""
        out = {}
        for p in inspect.signature(self[name]).parameters.values():
            if p.name in self.fixed or p.default is p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            annotation = p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", "")
            if p.annotation is p.empty or not annotation:
                annotation = "object" if p.default is None else type(p.default).__name__
            out[p.name] = Param(p.default, annotation)
        return out

    def defaults(self, name: str) -> dict[str, object]:
        return {k: p.default for k, p in self.params(name).items()}

    def check(self, name: str, args: Mapping[str, object]) -> None:
        """ConfigError for an unknown name, an unknown hyperparameter or a value outside its
        rule (values are already of the annotated type: see config.coerce)."""
        params = self.params(name)
        for key, value in args.items():
            if key not in params:
                raise ConfigError(f"{self.kind} {name!r} has no hyperparameter {key!r}"
                                  f"{did_you_mean(key, params)}; valid: {', '.join(params) or 'none'}")
            rule = self.rules.get(key)
            if rule is not None and value is not None and not rule[0](value):
                where = f"{self.section}.{key}" if self.section else key
                raise ConfigError(f"{where}={value!r} is invalid for {name!r}: must be {rule[1]}")
        if self._extra_check is not None:
            self._extra_check(name, {**self.defaults(name), **args})
