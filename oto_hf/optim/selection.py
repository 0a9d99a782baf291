"""DHSPG's budget, saliency and selection rules, on per-group vectors of length `num_groups`.

`cap_projections` runs in every pruning step and uses tensor ops only; the other functions run at
the rare partition and deadline events and may read values back.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

BUDGETS: tuple[str, ...] = ("groups", "params", "flops")
TINY = 1e-30


@dataclass(frozen=True)
class Budget:
    """What the target counts and how much of it must be removed.

    Args:
        kind (`str`): `"groups"`, `"params"` or `"flops"`.
        costs (`torch.Tensor`): float64 cost of each group in the budget's unit (1 per group for `"groups"`).
        total (`float`): the denominator of the removed fraction.
        target_cost (`float`): cost that must be zero at the deadline: `round(target * num_groups)` (half up) for
            `"groups"`, `target * total` otherwise.
        redundant_cost (`float`): cost of the redundant set chosen at each partition, at least `target_cost`.
    """

    kind: str
    costs: torch.Tensor
    total: float
    target_cost: float
    redundant_cost: float

    @property
    def active(self) -> bool:
        """Whether anything has to be pruned at all."""
        return self.target_cost > 0


def resolve_budget(
    kind: str,
    target: float,
    tolerance: float,
    num_params: Sequence[int],
    group_costs: Sequence[float] | torch.Tensor | None,
    budget_total: float | None,
) -> Budget:
    """Check the budget arguments and turn the target fraction into a cost to remove."""
    num_groups = len(num_params)
    if kind not in BUDGETS:
        raise ValueError(f"`sparsity_budget` must be one of {BUDGETS}, got {kind!r}.")
    if group_costs is not None and kind != "flops":
        raise ValueError(f"`group_costs` is only used with `sparsity_budget='flops'`, got `sparsity_budget={kind!r}`.")
    if budget_total is not None and kind == "groups":
        raise ValueError("`budget_total` is only used with `sparsity_budget='params'` or `sparsity_budget='flops'`.")
    if target > 0 and num_groups == 0:
        raise ValueError(f"`target_sparsity` is {target} but `groups` is empty: there is nothing to prune.")

    if kind == "groups":
        costs = torch.ones(num_groups, dtype=torch.float64)
        count = math.floor(target * num_groups + 0.5)
        redundant = min(num_groups, max(count, math.ceil((target + tolerance) * num_groups - 1e-9)))
        return Budget(kind, costs, float(num_groups), float(count), float(redundant))

    if kind == "params" or group_costs is None:
        costs = torch.tensor([float(n) for n in num_params], dtype=torch.float64)
    else:
        costs = torch.as_tensor(group_costs, dtype=torch.float64).flatten().cpu().clone()
        if costs.numel() != num_groups:
            raise ValueError(f"`group_costs` must have one entry per group ({num_groups}), got {costs.numel()}.")
        if not bool(torch.isfinite(costs).all()) or bool((costs < 0).any()):
            raise ValueError("`group_costs` must be finite and non-negative.")
    prunable = float(costs.sum())
    total = prunable if budget_total is None else float(budget_total)
    if budget_total is not None and not (math.isfinite(total) and total > 0):
        raise ValueError(f"`budget_total` must be a positive number, got {budget_total}.")
    target_cost = target * total
    if target_cost > prunable or (target > 0 and prunable == 0):
        raise ValueError(
            f"Unreachable budget: `target_sparsity={target}` of {total:g} ({kind}) is {target_cost:g}, but all groups "
            f"together cost only {prunable:g} ({prunable / total if total else 0:.4f} of the total). Lower "
            "`target_sparsity` or pass a smaller `budget_total`."
        )
    redundant_cost = min(prunable, max(target_cost, (target + tolerance) * total))
    return Budget(kind, costs, total, target_cost, redundant_cost)


def redundancy_scores(
    stats: dict[str, torch.Tensor], numel: torch.Tensor, zero: torch.Tensor, weights: tuple[float, float]
) -> torch.Tensor:
    """The OTOv2 mix: `w0 * cos(x_g, d_g) + w1 * 1/avg|x_g|`, each term min-max normalised over the non-zero groups.

    High means redundant: the base step already shrinks the group, and it is small. Zero groups score `+inf`.
    Returned on the CPU in float64.
    """
    xx, xd, dd, l1 = (stats[key].double().cpu() for key in ("xx", "xd", "dd", "l1"))
    zero = zero.cpu()
    cosine = xd / (xx.sqrt() * dd.sqrt()).clamp_min(TINY)
    inverse_magnitude = numel.clamp_min(1) / l1.clamp_min(TINY)
    score = weights[0] * _min_max(cosine, ~zero) + weights[1] * _min_max(inverse_magnitude, ~zero)
    return torch.where(zero, torch.full_like(score, math.inf), score)


def importance_scores(importance: torch.Tensor, costs: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """Redundancy from a loss-based importance per unit of cost: `-importance_g / cost_g` (high means redundant).

    `importance_g` estimates the loss increase from zeroing group `g` (the Fisher/OBD estimate: the mean over steps of
    `<x_g, grad_g>^2`, which is the squared gradient of a mask on the group). It adds up over parameters, so heads and
    neurons are on one scale, and ranking by importance per cost is the greedy knapsack order for the budget. Zero
    groups score `+inf`; groups that cost nothing score `-inf` (removing them gains nothing). On the CPU in float64.
    """
    importance, costs, zero = importance.double().cpu(), costs.double().cpu(), zero.cpu()
    score = -importance / costs.clamp_min(TINY)
    score = torch.where(costs > 0, score, torch.full_like(score, -math.inf))
    return torch.where(zero, torch.full_like(score, math.inf), score)


def _min_max(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if not bool(mask.any()):
        return torch.zeros_like(values)
    low, high = values[mask].min(), values[mask].max()
    return (values - low) / (high - low) if high > low else torch.zeros_like(values)


def choose_redundant(scores: torch.Tensor, zero: torch.Tensor, budget: Budget) -> tuple[torch.Tensor, torch.Tensor]:
    """Redundant set and priority order from fresh scores.

    The priority order sorts groups by decreasing score (zero groups first, ties by id); the redundant set is its
    shortest prefix that holds every zero group and costs at least `budget.redundant_cost`. Returns
    `(redundant_mask, priority)`, both on the CPU.
    """
    priority = torch.sort(scores, descending=True, stable=True).indices
    cumulative = budget.costs[priority].cumsum(0)
    size = int(torch.searchsorted(cumulative, torch.tensor([budget.redundant_cost], dtype=torch.float64))[0]) + 1
    size = min(len(priority), max(size, int(zero.sum())))
    redundant = torch.zeros(len(priority), dtype=torch.bool)
    redundant[priority[:size]] = True
    return redundant, priority


def cap_projections(
    candidates: torch.Tensor,
    zero: torch.Tensor,
    budget: Budget,
    costs: torch.Tensor,
    priority: torch.Tensor,
    limit: float | None = None,
) -> torch.Tensor:
    """Keep the candidates, in priority order, whose cumulative cost still fits under the target (no host sync).

    `limit` replaces the target as the cap on the removed cost, e.g. a quota of the target.
    """
    remaining = (budget.target_cost if limit is None else limit) - (costs * zero).sum()
    ordered = torch.where(candidates, costs, torch.zeros_like(costs))[priority]
    allowed = candidates[priority] & (ordered.cumsum(0) <= remaining)
    return torch.zeros_like(candidates).scatter_(0, priority, allowed)


def deadline_selection(
    scores: torch.Tensor, zero: torch.Tensor, redundant: torch.Tensor, budget: Budget
) -> torch.Tensor:
    """Groups to zero at `pruning_end` so that the removed cost reaches the target (CPU tensors in and out).

    Candidates are the non-zero redundant groups by decreasing score, then the other non-zero groups by decreasing
    score. They are taken in that order whenever they still fit under the target (a greedy fill that skips groups
    that would overshoot); if the removed cost is still below the target afterwards, the cheapest candidate left
    (first in order among equal costs) closes the gap. With the `"groups"` budget every cost is 1, so this takes
    exactly the `target - already_zero` first candidates.
    """
    order = torch.sort(scores, descending=True, stable=True).indices
    order = torch.cat([order[(redundant & ~zero)[order]], order[(~redundant & ~zero)[order]]])
    removed = float((budget.costs * zero).sum())
    chosen = torch.zeros_like(zero)
    if budget.kind == "groups":
        chosen[order[: int(budget.target_cost - removed)]] = True
        return chosen
    for group, cost in zip(order.tolist(), budget.costs[order].tolist()):
        if removed + cost <= budget.target_cost:
            chosen[group] = True
            removed += cost
    if removed < budget.target_cost:
        left = order[~chosen[order]]
        chosen[left[torch.argmin(budget.costs[left])]] = True
    return chosen
