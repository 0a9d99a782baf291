"""The adaptive lambda schedule of DHSPG: a linear ramp of the zero count and a multiplicative lambda scale.

With the reference lambdas, groups rarely leave the half-space before the deadline, so most of the target would be
projected at once in the last pruning step. The adaptive schedule lets the zero count follow a linear ramp from zero
at `partition_step` to the target at `pruning_end`: in each pruning step the groups the ramp still lacks (the next ones
in priority order) get their lambda multiplied by a scale, and projections are capped by the ramp. After every pruning
step the scale is multiplied by `growth` where the zero count lags the ramp and divided by it elsewhere, within
`[1, max_scale]`. Only the due groups are pushed harder, so the others keep training while the ramp advances. Every
rule is a tensor op on per-group or per-family vectors, with no host sync.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .group_ops import Budget


LAMBDA_SCHEDULES: tuple[str, ...] = ("adaptive", "constant")


class LambdaRamp:
    """Rules of `lambda_schedule="adaptive"` for a pruning window `[partition_step, pruning_end)`.

    Args:
        partition_step (`int`): first pruning step.
        pruning_end (`int`): step count at which the ramp reaches the target.
        growth (`float`, *optional*): factor per step; defaults to `max(1.1, max_scale ** (2 / window))`, so the scale
            can span its whole range in half the window.
        max_scale (`float`, *optional*, defaults to `1e6`): upper bound of the scale.
    """

    def __init__(self, partition_step: int, pruning_end: int, growth: float | None = None, max_scale: float = 1e6):
        _check_at_least_one("lambda_max_scale", max_scale)
        if growth is None:
            growth = max(1.1, max_scale ** (2 / (pruning_end - partition_step)))
        _check_at_least_one("lambda_growth", growth)
        self.start = partition_step
        self.end = pruning_end
        self.growth = float(growth)
        self.max_scale = float(max_scale)

    def progress(self, step: int) -> float:
        """Fraction of the window done once `step` (0-based) is taken: 1 at the deadline step."""
        return (step + 1 - self.start) / (self.end - self.start)

    def limit(self, budget: Budget, progress: float) -> float:
        """Most cost the ramp lets be zero at `progress` (rounded up to whole groups for `budget="groups"`)."""
        if budget.kind == "groups":
            return float(math.ceil(budget.target_cost * progress - 1e-9))
        return budget.target_cost * progress

    def rescale(self, scale: torch.Tensor, lags: torch.Tensor) -> torch.Tensor:
        """New scale: times `growth` where `lags`, divided by it elsewhere, clamped to `[1, max_scale]`."""
        factor = torch.where(lags, self.growth, 1 / self.growth)
        return (scale * factor).clamp_(1.0, self.max_scale)


def _check_at_least_one(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 1:
        raise ValueError(f"`{name}` must be a finite number >= 1, got {value!r}.")
