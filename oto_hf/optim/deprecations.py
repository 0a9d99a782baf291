"""DHSPG keyword arguments renamed to the names `OTOTrainingArguments` uses; the old names still work, with a
`FutureWarning`, until they are removed."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from .checks import check_int
from .families import MIN_KEPT_ARGUMENTS

RENAMED_ARGUMENTS: dict[str, str] = {
    "budget": "sparsity_budget",
    "partition_step": "partition_steps",
    "pruning_end": "pruning_end_steps",
    "lmbda": "lambda_",
    "lmbda_amplify": "lambda_amplify",
    "lmbda_cap": "lambda_cap",
}
_SPLIT_ARGUMENTS: dict[str, tuple[str, ...]] = {
    "saliency_weights": ("saliency_cosine_weight", "saliency_magnitude_weight"),
    "min_kept_per_family": tuple(MIN_KEPT_ARGUMENTS.values()),
}


def renamed_kwargs(deprecated: dict[str, Any], given: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """`given` (the keyword arguments under their new names) updated with the `deprecated` ones, renamed.

    Raises a `TypeError` for an unknown name or for an old name whose new name was also passed (not at its default).
    """
    kwargs = dict(given)
    for old, value in deprecated.items():
        if old in RENAMED_ARGUMENTS:
            new_names: tuple[str, ...] = (RENAMED_ARGUMENTS[old],)
            values = (value,)
        elif old in _SPLIT_ARGUMENTS:
            new_names = _SPLIT_ARGUMENTS[old]
            values = tuple(value) if old == "saliency_weights" else _minimums(value)
        else:
            raise TypeError(f"DHSPG got an unexpected keyword argument {old!r}.")
        for new, new_value in zip(new_names, values, strict=True):
            if given[new] != defaults[new]:
                raise TypeError(f"DHSPG got `{new}` and its old name `{old}`; pass `{new}` only.")
            kwargs[new] = new_value
        names = " and ".join(f"`{name}`" for name in new_names)
        warnings.warn(
            f"DHSPG's `{old}` is renamed {names}, the names `OTOTrainingArguments` uses; `{old}` will be removed.",
            FutureWarning,
            stacklevel=3,
        )
    return kwargs


def _minimums(min_kept_per_family: int | Mapping[str, int]) -> tuple[int, ...]:
    """The old `min_kept_per_family` (an int for every kind, or `{kind: int}`) as the three per-kind minimums."""
    if not isinstance(min_kept_per_family, Mapping):
        check_int("min_kept_per_family", min_kept_per_family, 0, ">= 0 (or a dict of kind to int)")
        return (min_kept_per_family,) * len(MIN_KEPT_ARGUMENTS)
    for kind, value in min_kept_per_family.items():
        if kind not in MIN_KEPT_ARGUMENTS:
            raise ValueError(
                f"`min_kept_per_family` has an unknown kind {kind!r}; use kinds among {sorted(MIN_KEPT_ARGUMENTS)}, "
                "e.g. `{'head': 1}`."
            )
        check_int(f"min_kept_per_family[{kind!r}]", value, 0)
    return tuple(min_kept_per_family.get(kind, 0) for kind in MIN_KEPT_ARGUMENTS)
