"""One lookup helper for every name table (methods, models, datasets, presets)."""
from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import TypeVar

from .errors import ConfigError

T = TypeVar("T")


def did_you_mean(name: str, choices) -> str:
    """' (did you mean 'x'?)' when a close match exists, else ''."""
    close = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def lookup(table: Mapping[str, T], name: str, kind: str) -> T:
    """table[name], or a ConfigError naming the bad value and the valid ones."""
    if name in table:
        return table[name]
    valid = ", ".join(sorted(table))
    raise ConfigError(f"unknown {kind} {name!r}{did_you_mean(name, table)}; valid: {valid}")
