"""DHSPG's pruning schedule in steps: warm-up, the partition points of the pruning window, the deadline, the epsilon
ramp, and the first step whose gradients score the groups."""

from __future__ import annotations

from dataclasses import dataclass

from .checks import check_int


@dataclass(frozen=True)
class PruningSchedule:
    """When each part of DHSPG happens, in 0-based counts of earlier `step()` calls.

    Args:
        partition_steps (`int`): warm-up steps; the pruning window starts there.
        pruning_end_steps (`int`): the deadline: the target is exact from this step on.
        partition_points (`tuple[int, ...]`): steps that re-score the groups, evenly spaced from `partition_steps`.
        importance_from (`int`): first warm-up step whose gradients score the groups at the first partition.
        epsilon (`float`): half-space threshold at the first partition step.
        final_epsilon (`float`): half-space threshold at the deadline (linear in between).
    """

    partition_steps: int
    pruning_end_steps: int
    partition_points: tuple[int, ...]
    importance_from: int
    epsilon: float
    final_epsilon: float

    @classmethod
    def resolve(
        cls,
        partition_steps: int,
        pruning_end_steps: int,
        num_partition_periods: int | None,
        lambda_schedule: str,
        importance_window: int,
        epsilon: float,
        final_epsilon: float | None,
    ) -> PruningSchedule:
        """The schedule of checked DHSPG settings: `num_partition_periods` defaults to 5 periods with the progressive
        schedule (at most one per step), 1 with the constant one, and must fit the window; `importance_window` 0 is
        one period; `final_epsilon` `None` keeps `epsilon`."""
        window = pruning_end_steps - partition_steps
        if num_partition_periods is None:
            num_partition_periods = min(5, window) if lambda_schedule == "progressive" else 1
        check_int(
            "num_partition_periods",
            num_partition_periods,
            1,
            f"in [1, pruning_end_steps - partition_steps] = [1, {window}]",
            high=window,
        )
        period = window // num_partition_periods
        return cls(
            partition_steps,
            pruning_end_steps,
            tuple(partition_steps + i * period for i in range(num_partition_periods)),
            max(0, partition_steps - (importance_window or period)),
            epsilon,
            epsilon if final_epsilon is None else final_epsilon,
        )

    def phase(self, step: int) -> str:
        """`"warmup"`, `"pruning"` or `"recovery"`."""
        if step < self.partition_steps:
            return "warmup"
        return "pruning" if step < self.pruning_end_steps else "recovery"

    def ramp_end(self, period: int) -> int:
        """Last step of period `period`: the step before the next partition point, or before the deadline."""
        points = self.partition_points
        return self.pruning_end_steps - 1 if period == len(points) - 1 else points[period + 1] - 1

    def epsilon_at(self, step: int) -> float:
        """The half-space threshold of a pruning step, ramped from `epsilon` to `final_epsilon`."""
        span = max(1, self.pruning_end_steps - 1 - self.partition_steps)
        progress = min(1.0, (step - self.partition_steps) / span)
        return self.epsilon + (self.final_epsilon - self.epsilon) * progress
