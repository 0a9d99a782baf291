"""The DHSPG settings that `DHSPG` and `OTOTrainingArguments` share: their defaults and the one check of their values.

`DHSPG.__init__` and `OTOTrainingArguments.__post_init__` both call `check_dhspg_settings`, so a bad value fails when
the arguments are built, before discovery. Every check raises a `ValueError` that names the argument, the allowed
values and the value given.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .base_steps import VARIANTS
from .families import MIN_KEPT_ARGUMENTS
from .rounding import check_round_to
from .selection import BUDGETS

# "progressive": quotas of groups driven to zero along planned trajectories (default); "constant": OTOv2's lambdas.
LAMBDA_SCHEDULES: tuple[str, ...] = ("progressive", "constant")
# "fisher": loss-based importance per unit of cost (`DHSPG`'s default); "sample_fisher": the same per training sequence
# (`sample_fisher`); "kfac": measured at each group's reader against the gradient's second moment there, "output": the
# same with the gradient taken as isotropic (both `output_importance`); "auto" (`OTOTrainer`'s default, resolved with
# the model by `readers.choose_saliency`): "output" where every group has a Linear reader, else "fisher"; "otov2":
# OTOv2's cosine and magnitude mix.
SALIENCIES: tuple[str, ...] = ("auto", "fisher", "output", "kfac", "sample_fisher", "otov2")
# The saliencies scored by hooks on the readers of the groups (`importance_source`), not by the optimizer's own steps.
HOOKED_SALIENCIES: tuple[str, ...] = ("output", "kfac", "sample_fisher")
# Reference defaults of the legacy OTOv2 code: (lambda, amplify, cap) per base optimizer.
LAMBDA_DEFAULTS: dict[str, tuple[float, float, float]] = {
    "sgd": (1e-3, 2.0, 10.0),
    "adam": (1e-2, 20.0, 1000.0),
    "adamw": (1e-2, 20.0, 1000.0),
}


@dataclass(frozen=True)
class DHSPGDefaults:
    """Defaults of the DHSPG settings, under `DHSPG`'s argument names (`OTOTrainingArguments` adds `dhspg_` to some).

    `None` means: decided from other settings (`num_partition_periods`: 5 with the progressive schedule, 1 with the
    constant one; the lambdas: `LAMBDA_DEFAULTS` of the variant; `final_epsilon`: a constant `epsilon`).
    """

    variant: str = "adamw"
    target_sparsity: float = 0.5
    sparsity_budget: str = "groups"
    partition_steps: int = 0
    num_partition_periods: int | None = None
    lambda_: float | None = None
    lambda_amplify: float | None = None
    lambda_cap: float | None = None
    epsilon: float = 0.0
    final_epsilon: float | None = None
    tolerance: float = 0.05
    saliency: str = "fisher"
    importance_window: int = 0
    saliency_cosine_weight: float = 0.5
    saliency_magnitude_weight: float = 0.5
    min_heads_per_layer: int = 0
    min_neurons_per_layer: int = 0
    min_channels_per_layer: int = 1
    max_family_sparsity: float = 1.0
    uniform_widths: bool = False
    round_to: Mapping[str, int | str] | None = None
    lambda_schedule: str = "progressive"


# `DHSPG`'s defaults: neutral, for any model and any use of the groups.
DEFAULTS = DHSPGDefaults()
# `OTOTrainer`'s, where they differ on purpose (each reason is in `OTOTrainingArguments`' docstring): the FLOPs
# budget, the saliency chosen from the model, one head kept per layer, at most 90% of a layer's width removed, and 5
# periods whatever the schedule.
TRAINER_DEFAULTS = dataclasses.replace(
    DEFAULTS,
    sparsity_budget="flops",
    saliency="auto",
    min_heads_per_layer=1,
    max_family_sparsity=0.9,
    num_partition_periods=5,
)
# The settings `check_dhspg_settings` knows: those with a default, and `pruning_end_steps` (no default).
SETTING_NAMES: tuple[str, ...] = (*(f.name for f in dataclasses.fields(DHSPGDefaults)), "pruning_end_steps")


def check_dhspg_settings(settings: Mapping[str, Any], names: Mapping[str, str] | None = None) -> None:
    """Check the DHSPG settings given in `settings` (keyed by `DHSPG`'s argument names); `None` values are not checked.

    `pruning_end_steps` is checked against `partition_steps` (0 when absent). The lambdas, when given, must be valid on
    their own; the per-variant defaults are. The upper bound of `num_partition_periods` needs the schedule in steps:
    `schedule.PruningSchedule.resolve` checks it once both ends are known.

    Args:
        settings (`Mapping[str, Any]`): some or all of `SETTING_NAMES`, with their values.
        names (`Mapping[str, str]`, *optional*): the name to show for a setting in messages, e.g.
            `{"tolerance": "dhspg_tolerance"}`; defaults to the setting's own name.
    """
    unknown = sorted(set(settings) - set(SETTING_NAMES))
    if unknown:
        raise TypeError(f"Unknown DHSPG settings {unknown}; the settings are {list(SETTING_NAMES)}.")
    names = names or {}

    def given(key: str) -> tuple[str, Any] | None:
        value = settings.get(key)
        return None if value is None else (names.get(key, key), value)

    for key, choices in (
        ("variant", VARIANTS),
        ("sparsity_budget", BUDGETS),
        ("saliency", SALIENCIES),
        ("lambda_schedule", LAMBDA_SCHEDULES),
    ):
        if key in settings:
            check_choice(names.get(key, key), settings[key], choices)
    for key in ("target_sparsity", "tolerance", "epsilon", "final_epsilon"):
        if item := given(key):
            check_range(*item, 0.0, 1.0)
    for key, low, allowed in (("lambda_", 0.0, "> 0"), ("lambda_amplify", 1.0, ">= 1"), ("lambda_cap", 1.0, ">= 1")):
        if item := given(key):
            check_at_least(*item, low, allowed)
    for key, low in (
        ("partition_steps", 0),
        ("num_partition_periods", 1),
        ("importance_window", 0),
        *((name, 0) for name in MIN_KEPT_ARGUMENTS.values()),
    ):
        if item := given(key):
            check_int(*item, low)
    if item := given("pruning_end_steps"):
        partition = settings.get("partition_steps") or 0
        check_int(
            *item, partition + 1, f"greater than `{names.get('partition_steps', 'partition_steps')}` ({partition})"
        )
    if item := given("max_family_sparsity"):
        name, value = item
        if not _is_number(value) or not 0 < value <= 1:
            raise ValueError(f"`{name}` must be in (0, 1], got {value!r}.")
    if item := given("uniform_widths"):
        name, value = item
        if not isinstance(value, bool):
            raise ValueError(f"`{name}` must be a bool, got {value!r}.")
    if item := given("round_to"):
        check_round_to(*item)
    weights = {
        names.get(key, key): settings.get(key, getattr(DEFAULTS, key))
        for key in ("saliency_cosine_weight", "saliency_magnitude_weight")
    }
    values = tuple(weights.values())
    if not all(_is_number(w) and 0 <= w < math.inf for w in values) or sum(values) == 0:
        first, second = (f"`{name}`" for name in weights)
        raise ValueError(f"{first} and {second} must be non-negative numbers, not both zero, got {values!r}.")


def check_erasing(erase: object, settings: Mapping[str, Any], names: Mapping[str, str] | None = None) -> None:
    """Erasing operators (`operator_erasing`) is a bool, and works with the progressive schedule, free widths and the
    Fisher saliency (or `"auto"`, which then resolves to it) only: `uniform_widths` and `round_to` plan per-family
    quotas that an erased family would break, the constant schedule has no ramps to drive an operator's groups to zero
    together, and operators are scored by their Fisher importance."""
    names = names or {}
    if not isinstance(erase, bool):
        raise ValueError(f"`{names.get('erase', 'erase')}` must be a bool, got {erase!r}.")
    if not erase:
        return
    clashes = {
        "uniform_widths": settings.get("uniform_widths"),
        "round_to": settings.get("round_to"),
        "lambda_schedule": settings.get("lambda_schedule", DEFAULTS.lambda_schedule) == "constant",
        # operators are scored by their Fisher importance; "auto" resolves to it when erasing
        "saliency": settings.get("saliency", DEFAULTS.saliency) not in ("fisher", "auto"),
    }
    for key, clash in clashes.items():
        if clash:
            raise ValueError(
                f"Erasing operators (`{names.get('erase', 'erase')}=True`) does not work with "
                f"`{names.get(key, key)}={settings[key]!r}` yet; turn one of them off."
            )


def check_choice(name: str, value: object, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {tuple(choices)}, got {value!r}.")


def check_range(name: str, value: float, low: float, high: float) -> None:
    """`low <= value < high`."""
    if not _is_number(value) or not low <= value < high:
        raise ValueError(f"`{name}` must be in [{low:g}, {high:g}), got {value!r}.")


def check_at_least(name: str, value: float, low: float, allowed: str) -> None:
    """A finite number `>= low` (`> 0` when `low` is 0)."""
    if not _is_number(value) or not math.isfinite(value) or value < low or (low == 0 and value == 0):
        raise ValueError(f"`{name}` must be {allowed}, got {value!r}.")


def check_int(name: str, value: object, low: int, allowed: str | None = None, high: int | None = None) -> None:
    """An int (not a bool) in `[low, high]`."""
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
        raise ValueError(f"`{name}` must be an int {allowed or f'>= {low}'}, got {value!r}.")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
