"""DHSPG's per-group penalty and half-space projection for one pruning step, on per-group vectors (no host sync)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .families import FamilyConstraints
from .group_state import GroupState
from .progressive import DUE_EPSILON, planned_lambda
from .selection import TINY, Budget, cap_projections


@dataclass(frozen=True)
class LambdaRule:
    """OTOv2's per-group lambda: `lambda_` by default, raised to `lambda_amplify` times the lower bound that makes the
    penalty shrink the group, capped at `lambda_ * lambda_cap` and kept below the bound that keeps a descent step."""

    lambda_: float
    lambda_amplify: float
    lambda_cap: float

    def __call__(self, xx: torch.Tensor, xd: torch.Tensor, dd: torch.Tensor) -> torch.Tensor:
        norm = xx.sqrt()
        grows = xd < 0
        low = -xd / norm.clamp_min(TINY)
        high = -dd * norm / torch.where(grows, xd, torch.full_like(xd, -1.0))
        lam = (self.lambda_amplify * low).clamp(self.lambda_, self.lambda_ * self.lambda_cap)
        lam = torch.where(lam > high, (low + high) / 2, lam)
        return torch.where(grows, lam, torch.full_like(lam, self.lambda_))


def penalise(
    stats: dict[str, torch.Tensor],
    state: GroupState,
    rule: LambdaRule,
    budget: Budget,
    costs: torch.Tensor,
    families: FamilyConstraints,
    progressive: bool,
    epsilon: float,
    step: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-group lambda, half-space projection and caps.

    Returns the new zero mask, `lambda_g / ||x_g||` (the coefficient on `x_g` in the step) and the lambdas.
    """
    xx = stats["xx"]
    zero = state.zero
    due = state.due & ~zero
    active = (costs * zero).sum() < budget.target_cost
    penalised = state.redundant & ~zero & active
    if families.constrained:
        # A family at its quota loses no more groups, so its groups are no longer penalised.
        penalised &= families.has_room(zero | due)
    # Due groups were budgeted when they became due: they are penalised until they are zero.
    penalised |= due
    lam = rule(xx, stats["xd"], stats["dd"]) * penalised
    if progressive:
        planned = planned_lambda(xx, stats["axd"], stats["axx"], state.due_start, state.due_end, state.due_norm, step)
        lam = torch.where(due, torch.maximum(lam, planned), lam)
    norm = xx.sqrt()
    coef = torch.where(norm > 0, lam / norm.clamp_min(TINY), torch.zeros_like(lam))
    # <x_hat, x> for x_hat = x - lr * (d + lam * x / ||x||), with lr folded into axx and axd per parameter. A
    # redundant group that is already exactly zero is simply marked zero.
    inner = xx - stats["axd"] - coef * stats["axx"]
    threshold = torch.where(due, max(DUE_EPSILON, epsilon), epsilon)
    candidates = penalised & ((inner < threshold * xx) | (xx == 0))
    # Due groups project within their budget; others within what the due groups leave of the target.
    others = candidates & ~due
    taken = zero | due
    if families.constrained:
        others = families.cap(others, taken, state.family_order)
    others = cap_projections(others, taken, budget, costs, state.priority)
    return zero | (candidates & due) | others, coef, lam
