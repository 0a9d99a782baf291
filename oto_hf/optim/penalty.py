"""DHSPG's per-group penalty and half-space projection for one pruning step, on per-group vectors, and the step that
applies them to the grouped parameters (no host sync)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .checks import LAMBDA_DEFAULTS
from .families import FamilyConstraints
from .group_state import GroupState
from .packed_index import GroupIndex
from .progressive import DUE_EPSILON, planned_lambda
from .selection import TINY, Budget, cap_projections


@dataclass(frozen=True)
class LambdaRule:
    """OTOv2's per-group lambda: `lambda_` by default, raised to `lambda_amplify` times the lower bound that makes the
    penalty shrink the group, capped at `lambda_ * lambda_cap` and kept below the bound that keeps a descent step."""

    lambda_: float
    lambda_amplify: float
    lambda_cap: float

    @classmethod
    def for_variant(
        cls, variant: str, lambda_: float | None, lambda_amplify: float | None, lambda_cap: float | None
    ) -> LambdaRule:
        """The rule with the values given, and the defaults of the base optimizer `variant` for those left `None`."""
        given = (lambda_, lambda_amplify, lambda_cap)
        return cls(*(default if value is None else value for value, default in zip(given, LAMBDA_DEFAULTS[variant])))

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


def apply_step(
    index: GroupIndex,
    params: list[torch.Tensor],
    directions: list[torch.Tensor | None],
    decays: list[float],
    lrs: list[float],
    keep: torch.Tensor,
    coef: torch.Tensor,
) -> None:
    """Update the grouped parameters (`index.params`, local tensors) in place: the penalised step along each base
    direction, zero groups masked to exactly zero. `keep` and `coef` are `extend`ed per-group vectors."""
    for position, (param, d, decay, lr) in enumerate(zip(params, directions, decays, lrs)):
        keep_p = index.expand(keep, position, torch.mul).to(param.dtype)
        if d is None:
            param.mul_(keep_p)
            continue
        # x <- keep * ((1 - lr * (decay + lambda_g / ||x_g||)) * x - lr * d)
        # In float32: 1 - lr * coef must not round to 1 in a low-precision dtype before it multiplies x.
        scale = index.expand(coef, position, torch.add).add(decay).mul_(-lr).add_(1).mul_(keep_p)
        param.mul_(scale).addcmul_(d, keep_p, value=-lr)
