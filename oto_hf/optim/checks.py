"""Argument checks of the optimizers, each raising a `ValueError` that names the argument, the allowed values and the
value given."""

from __future__ import annotations

import math
from collections.abc import Sequence


def check_choice(name: str, value: object, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {tuple(choices)}, got {value!r}.")


def check_range(name: str, value: float, low: float, high: float) -> None:
    """`low <= value < high`."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not low <= value < high:
        raise ValueError(f"`{name}` must be in [{low:g}, {high:g}), got {value!r}.")


def check_at_least(name: str, value: float, low: float, allowed: str) -> None:
    """A finite number `>= low` (`> 0` when `low` is 0)."""
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value < low or (low == 0 and value == 0):
        raise ValueError(f"`{name}` must be {allowed}, got {value!r}.")


def check_int(name: str, value: object, low: int, allowed: str | None = None, high: int | None = None) -> None:
    """An int (not a bool) in `[low, high]`."""
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
        raise ValueError(f"`{name}` must be an int {allowed or f'>= {low}'}, got {value!r}.")
