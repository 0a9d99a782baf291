"""DHSPG's rare events: re-choosing the redundant set at a partition step (and, with the progressive schedule, marking
the next quota due), and the deadline's projection of whatever the target still misses. Both read values back from
the device; every decision is taken from the first rank when `sync` is set (see `sharding.from_first_rank`)."""

from __future__ import annotations

import logging

import torch

from .families import FamilyConstraints
from .group_state import GroupState
from .nesting import QueryHeadNests
from .progressive import mark_due
from .selection import Budget, cap_projections, choose_redundant, deadline_selection
from .sharding import from_first_rank

logger = logging.getLogger(__name__)


def choose_redundant_set(
    groups: GroupState, scores: torch.Tensor, families: FamilyConstraints, budget: Budget, sync: bool, step: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-choose `groups.redundant` and the priority orders from fresh scores; returns them on the CPU."""
    zero = groups.zero.cpu()
    if families.constrained:
        redundant, priority = families.choose_redundant(scores, zero, budget)
    else:
        redundant, priority = choose_redundant(scores, zero, budget)
    device = groups.zero.device
    groups.redundant, groups.priority = redundant.to(device), priority.to(device)
    if sync:
        groups.redundant, groups.priority = from_first_rank(groups.redundant, groups.priority)
    groups.family_order = families.family_order(groups.priority)
    logger.info("DHSPG step %d: %d redundant groups chosen.", step, int(redundant.sum()))
    return redundant, priority


def mark_next_quota(
    groups: GroupState,
    scores: torch.Tensor,
    redundant: torch.Tensor,
    priority: torch.Tensor,
    families: FamilyConstraints,
    budget: Budget,
    norms: torch.Tensor,
    *,
    period: int,
    num_periods: int,
    step: int,
    ramp_end: int,
    uniform_widths: bool,
    sync: bool,
    nests: QueryHeadNests | None = None,
) -> None:
    """Progressive schedule: start the ramps to zero of the next quota, so that due and zero groups cover
    `(period + 1) / num_periods` of the target (the last period: the rest of it, by the deadline rule). With `nests`
    (grouped-query attention), the query heads that even out each layer's KV groups start their ramps too, so that the
    deadline does not have to zero them at once."""
    taken = groups.zero.cpu() | groups.due.cpu()  # zero, or already on its way
    candidates = redundant & ~taken
    if families.constrained and uniform_widths:
        new = families.due(candidates, taken, families.family_order(priority), (period + 1) / num_periods)
    elif period == num_periods - 1:
        select = families.deadline_selection if families.constrained else deadline_selection
        new = select(scores, taken, redundant, budget)
    else:
        if families.constrained:
            candidates = families.cap(candidates, taken, families.family_order(priority))
        quota = budget.target_cost * (period + 1) / num_periods
        new = cap_projections(candidates, taken, budget, budget.costs, priority, quota)
    if nests is not None:
        new = nests.even_out(taken, new.cpu(), scores, families)
    ramps = mark_due(
        new.to(groups.zero.device), groups.due_start, groups.due_end, groups.due_norm, norms, step, ramp_end
    )
    groups.due_start, groups.due_end, groups.due_norm = from_first_rank(*ramps) if sync else ramps
    logger.info(
        "DHSPG step %d: %d groups start their ramp to zero (end of ramp: step %d).", step, int(new.sum()), ramp_end
    )


def deadline_projection(
    zero: torch.Tensor,
    scores: torch.Tensor,
    redundant: torch.Tensor,
    families: FamilyConstraints,
    budget: Budget,
    sync: bool,
    step: int,
) -> torch.Tensor:
    """The groups the target still misses at the last pruning step (the *forced* zeros); logs how many, with a
    warning when they exceed 1% of the target (one-shot pruning, not OTO)."""
    select = families.deadline_selection if families.constrained else deadline_selection
    chosen = select(scores, zero.cpu(), redundant.cpu(), budget).to(zero.device)
    if sync:
        (chosen,) = from_first_rank(chosen)
    forced_share = float((budget.costs.to(zero.device) * chosen).sum()) / budget.target_cost
    log = logger.warning if forced_share > 0.01 else logger.info
    log(
        "DHSPG step %d: deadline reached, %d groups zero, %d of them forced by the deadline (%.1f%% of the target)%s.",
        step,
        int((zero | chosen).sum()),
        int(chosen.sum()),
        100 * forced_share,
        ": the optimizer's steps did not zero them in time; prune over a longer window or more periods"
        if forced_share > 0.01
        else "",
    )
    return chosen
