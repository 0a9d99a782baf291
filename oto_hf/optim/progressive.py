"""The progressive schedule of DHSPG: quotas of *due* groups per period, each driven along a planned norm trajectory.

The pruning window `[partition_step, pruning_end)` is split into periods that start at the partition steps. At the
start of period `k` (of `P`), after re-scoring, the next quota of groups becomes *due*: enough that the due and zero
groups together cover `(k + 1) / P` of the target (per family with `uniform_widths`; in the last period, the rest of
the target exactly, by the deadline rule). A due group that starts at step `t0` with norm `n0` and whose period ends
at step `t1` has the planned norm `n*(t) = n0 * max(0, 1 - (t - t0) / (t1 + 1 - t0))`, which reaches zero after step
`t1`. In every step its `lambda_g` is raised to the value that puts the trial point's component along `x_g` on that
plan, so time-to-zero does not depend on the learning rate, the group's size or the weights' scale. The half-space
test then projects the group at the end of its ramp, with a few percent of its norm left.

Every rule here is a tensor op on per-group vectors, with no host sync.
"""

from __future__ import annotations

import torch

# Half-space threshold of due groups: the planned step removes all that is left of the group only at its ramp's end.
DUE_EPSILON = 0.05
_TINY = 1e-30


def planned_lambda(
    xx: torch.Tensor,
    axd: torch.Tensor,
    axx: torch.Tensor,
    due_start: torch.Tensor,
    due_end: torch.Tensor,
    due_norm: torch.Tensor,
    step: int,
) -> torch.Tensor:
    """Per group, the `lambda_g` that puts the trial point's component along `x_g` on the planned norm after `step`.

    With `x_hat = x - lr * (d + lambda * x / ||x||)`, the component along `x` is `(xx - axd - lambda * axx / ||x||) /
    ||x||` (`axd`, `axx`: `<x, d>` and `||x||^2` with the learning rate folded in per parameter). Groups that are not
    due, are zero, or do not move (`lr == 0`) get 0; the result is never negative (the plan never grows a group).
    """
    norm = xx.sqrt()
    span = (due_end + 1 - due_start).clamp_min(1).float()
    done = ((step + 1 - due_start).float() / span).clamp(0.0, 1.0)
    planned = due_norm * (1.0 - done)
    movable = (due_start >= 0) & (axx > 0) & (norm > 0)
    lam = (xx - axd - planned * norm) * norm / axx.clamp_min(_TINY)
    return torch.where(movable, lam.clamp_min(0.0), torch.zeros_like(lam))


def mark_due(
    new: torch.Tensor,
    due_start: torch.Tensor,
    due_end: torch.Tensor,
    due_norm: torch.Tensor,
    norm: torch.Tensor,
    step: int,
    end: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Start the ramps of the `new` groups at `step` (from their current `norm`) to end after step `end`."""
    return (
        torch.where(new, torch.full_like(due_start, step), due_start),
        torch.where(new, torch.full_like(due_end, end), due_end),
        torch.where(new, norm, due_norm),
    )
