"""A study's settings, its frozen Config dataclass, checked whole when a Config is made.

A Config derives from `Settings` and states its limits in one table, LIMITS (field → limit):

    a number            the least value allowed, of the field or of each of its entries
    a tuple of strings  the values allowed, of the field or of each of its entries
    a function          of the config, giving the least value (a bound set by other fields)

Types come from the field annotations: int (not bool), float (finite; an int is taken),
str (non-empty), and tuple[int, ...] / tuple[str, ...] (a list is taken; non-empty, no entry
twice). A bad setting raises ValueError naming it and its value, e.g. "G=-1 must be >= 2".
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import ClassVar

# type → (one, several), as error messages name them
_KINDS = {int: ("an integer in (-2**63, 2**63)", "integers in (-2**63, 2**63)"),
          float: ("a finite number", "finite numbers"),
          str: ("a non-empty string", "non-empty strings")}


class Settings:
    """Base of a study's Config: its fields are checked against their types and LIMITS (and
    lists made tuples, ints in float fields floats) when it is made, so that no Config with
    a bad setting exists."""

    LIMITS: ClassVar[dict[str, object]] = {}

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for field in dataclasses.fields(self):
            value = _typed(field.name, hints[field.name], getattr(self, field.name))
            object.__setattr__(self, field.name, value)  # frozen: only the normalised value
        for name, limit in self.LIMITS.items():
            _within(name, getattr(self, name), limit(self) if callable(limit) else limit)


def _show(value) -> str:
    """A value as the user wrote it: lists and tuples alike as lists."""
    return repr(list(value)) if isinstance(value, (list, tuple)) else repr(value)


def _is(kind: type, value) -> bool:
    if kind is float:
        return type(value) in (int, float) and math.isfinite(value)
    if kind is str:
        return type(value) is str and value != ""
    return type(value) is kind and (kind is not int or abs(value) < 2**63)


def _typed(name: str, hint, value):
    """`value` checked against the annotation `hint` and normalised (see the module)."""
    if typing.get_origin(hint) is tuple:
        kind = typing.get_args(hint)[0]
        if not isinstance(value, (list, tuple)) or not value or \
                not all(_is(kind, v) for v in value):
            raise ValueError(f"{name}={_show(value)} must be a non-empty list of "
                             f"{_KINDS[kind][1]}")
        repeated = [v for i, v in enumerate(value) if v in value[:i]]
        if repeated:
            raise ValueError(f"{name}={_show(value)} repeats {repeated[0]!r}")
        return tuple(kind(v) for v in value)
    if not _is(hint, value):
        raise ValueError(f"{name}={value!r} must be {_KINDS[hint][0]}")
    return hint(value)


def _within(name: str, value, limit) -> None:
    """`value` (or each entry of a tuple) is in `limit` (a tuple of choices) or >= it."""
    if isinstance(limit, tuple):
        ok, rule = (lambda v: v in limit), f"in {limit}"
    else:
        ok, rule = (lambda v: v >= limit), f">= {limit}"
    if isinstance(value, tuple):
        if not all(ok(v) for v in value):
            raise ValueError(f"{name}={_show(value)} must hold only values {rule}")
    elif not ok(value):
        raise ValueError(f"{name}={value!r} must be {rule}")
