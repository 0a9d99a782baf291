"""Per-group machinery of DHSPG: the packed group index with its segmented reductions, and the budget, saliency and
selection rules.

**Packed index.** A group slice covers whole hyper-rows of one parameter: every element whose index along `dim` is in
`indices`. So instead of a group id per *element* (as large as the model), the index stores, for every sliced
`(parameter, dim)` pair (an *axis*), one group id per index along `dim`: a vector of length `param.shape[dim]`. A
per-group quantity is then one dense reduction per axis (sum over the other dims) followed by a single `index_add_`
over the concatenation of all axes; a per-group factor reaches the elements by an `index_select` on the axis vector
and broadcasting. An element may lie on two axes of the same parameter (rows of one group and columns of another, as
in a conv or MLP layer whose out-channels and in-channels are both prunable); it then counts in both group norms, as
in OTO.

**Selection.** Budgets, scores and choices work on per-group vectors of length `num_groups`. `cap_projections` and
`first_within` run in every pruning step and use tensor ops only; the other selection functions run at the rare
partition and deadline events and may read values back.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from oto_hf.graph.groups import ZeroInvariantGroup


BUDGETS: tuple[str, ...] = ("groups", "params", "flops")
_TINY = 1e-30


@dataclass
class Axis:
    """Group id of every index along `dim` of one parameter (`num_groups` marks indices in no group)."""

    dim: int
    group_ids: torch.Tensor
    reduce_dims: tuple[int, ...]
    view_shape: tuple[int, ...]

    def sum_over_others(self, values: torch.Tensor) -> torch.Tensor:
        """Sum `values` (shaped like the parameter) over every dim but `dim`, in float32."""
        if not self.reduce_dims:
            return values.float()
        return values.sum(dim=self.reduce_dims, dtype=torch.float32)

    def squared_norms(self, values: torch.Tensor) -> torch.Tensor:
        """Squared L2 norm of each hyper-row of `values` along `dim`, in float32."""
        if not self.reduce_dims:
            return values.float().square()
        if self.dim == 0 and values.is_contiguous():
            # Reducing contiguous trailing dims: one pass, no temporary.
            return torch.linalg.vector_norm(values, dim=self.reduce_dims, dtype=torch.float32).square()
        # `vector_norm` over leading dims is ~10x slower on CPU than a product and a sum.
        return torch.mul(values, values).sum(dim=self.reduce_dims, dtype=torch.float32)

    def expand(self, per_group: torch.Tensor) -> torch.Tensor:
        """Broadcastable view of a `[num_groups + 1]` vector (last entry: indices in no group) along this axis."""
        return per_group.index_select(0, self.group_ids).view(self.view_shape)


class GroupIndex:
    """For each parameter touched by a group, its axes; plus the per-group sizes the budgets need.

    Args:
        groups (`Sequence[ZeroInvariantGroup]`): the groups, in id order (group `i` must have position `i`).
        params_by_name (`Mapping[str, torch.Tensor]`): every parameter a group slice names.
        optimizer_params (`Sequence[torch.Tensor]`): the parameters the optimizer updates; every sliced parameter
            must be one of them.
    """

    def __init__(
        self,
        groups: Sequence[ZeroInvariantGroup],
        params_by_name: Mapping[str, torch.Tensor],
        optimizer_params: Sequence[torch.Tensor],
    ) -> None:
        self.num_groups = len(groups)
        known = {id(p) for p in optimizer_params}
        # Keyed by parameter identity, so tied weights reached under two names share one entry.
        params: dict[int, torch.Tensor] = {}
        names: dict[int, str] = {}
        pieces: dict[int, dict[int, tuple[list[torch.Tensor], list[int]]]] = {}
        for position, group in enumerate(groups):
            if getattr(group, "id", position) != position:
                raise ValueError(
                    f"The group at position {position} has id {group.id}; group ids must equal positions."
                )
            for name, dim, indices in group.slices:
                param = params_by_name.get(name)
                if param is None:
                    raise ValueError(
                        f"Group {position} slices parameter {name!r}, which is not in `named_parameters`. Pass the "
                        "names and parameters of the model the GroupSet was discovered on."
                    )
                if id(param) not in known:
                    raise ValueError(
                        f"Group {position} slices parameter {name!r}, which is not in the optimizer's `params` (is it "
                        "frozen?). Every parameter of a prunable group must be optimised."
                    )
                if not -param.dim() <= dim < param.dim():
                    raise ValueError(
                        f"Group {position} slices {name!r} along dim {dim}, but it has {param.dim()} dims."
                    )
                params[id(param)] = param
                names.setdefault(id(param), name)
                per_dim = pieces.setdefault(id(param), {}).setdefault(dim % param.dim(), ([], []))
                per_dim[0].append(torch.as_tensor(indices, dtype=torch.long).flatten().cpu())
                per_dim[1].append(position)

        axes: dict[int, dict[int, torch.Tensor]] = {}
        for key, per_param in pieces.items():
            for dim, (index_list, positions) in per_param.items():
                axes.setdefault(key, {})[dim] = _axis_ids(
                    names[key], dim, params[key].shape[dim], index_list, positions, self.num_groups
                )

        self.params: list[torch.Tensor] = list(params.values())
        self.axes: list[list[Axis]] = []
        group_numel = torch.zeros(self.num_groups + 1, dtype=torch.float64)
        for param in self.params:
            param_axes = []
            for dim, ids in sorted(axes[id(param)].items()):
                view_shape = tuple(param.shape[d] if d == dim else 1 for d in range(param.dim()))
                reduce_dims = tuple(d for d in range(param.dim()) if d != dim)
                group_numel.index_add_(
                    0, ids, torch.full(ids.shape, param.numel() / param.shape[dim], dtype=torch.float64)
                )
                param_axes.append(Axis(dim, ids.to(param.device), reduce_dims, view_shape))
            self.axes.append(param_axes)
        # Elements per group, counting an element on two axes once per group it is in.
        self.group_numel = group_numel[: self.num_groups]
        self.device = self.params[0].device if self.params else torch.device("cpu")
        self.segment_ids = (
            torch.cat([axis.group_ids.to(self.device) for param_axes in self.axes for axis in param_axes])
            if self.params
            else torch.zeros(0, dtype=torch.long, device=self.device)
        )

    def segment_sums(self, rows: list[torch.Tensor]) -> torch.Tensor:
        """Per-group sums: `rows[i]` is a `[k, shape[dim]]` block for the i-th axis in `self.axes` order.

        Returns a `[k, num_groups]` tensor, computed with one `index_add_` over the packed group ids.
        """
        packed = torch.cat([row.to(self.device) for row in rows], dim=1)
        sums = torch.zeros(packed.shape[0], self.num_groups + 1, dtype=packed.dtype, device=self.device)
        sums.index_add_(1, self.segment_ids, packed)
        return sums[:, : self.num_groups]

    def index_nbytes(self) -> int:
        """Bytes held by the index tensors (kept for the optimizer's lifetime)."""
        return sum(axis.group_ids.numel() * axis.group_ids.element_size() for a in self.axes for axis in a) + (
            self.segment_ids.numel() * self.segment_ids.element_size()
        )


def _axis_ids(
    name: str, dim: int, size: int, index_list: list[torch.Tensor], positions: list[int], sentinel: int
) -> torch.Tensor:
    """Group id per index along `dim` of `name`, checking that no index is claimed twice."""
    indices = torch.cat(index_list)
    owners = torch.repeat_interleave(
        torch.tensor(positions, dtype=torch.long), torch.tensor([len(i) for i in index_list], dtype=torch.long)
    )
    if indices.numel() and (indices.min() < 0 or indices.max() >= size):
        bad = owners[(indices < 0) | (indices >= size)][0]
        raise ValueError(f"Group {int(bad)} slices {name!r} along dim {dim} at indices outside [0, {size - 1}].")
    counts = torch.bincount(indices, minlength=size)
    if indices.numel() and counts.max() > 1:
        index = int(counts.argmax())
        claimants = owners[indices == index].tolist()
        raise ValueError(
            f"Groups {claimants[0]} and {claimants[1]} both slice {name!r} along dim {dim} at index {index}; each "
            "index of a parameter dim may belong to one group only."
        )
    ids = torch.full((size,), sentinel, dtype=torch.long)
    ids[indices] = owners
    return ids


def extend(per_group: torch.Tensor, fill: float) -> torch.Tensor:
    """Append the value for indices that belong to no group to a `[num_groups]` vector."""
    return torch.cat([per_group, per_group.new_full((1,), fill)])


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
        raise ValueError(f"`budget` must be one of {BUDGETS}, got {kind!r}.")
    if group_costs is not None and kind != "flops":
        raise ValueError(f"`group_costs` is only used with `budget='flops'`, got `budget={kind!r}`.")
    if budget_total is not None and kind == "groups":
        raise ValueError("`budget_total` is only used with `budget='params'` or `budget='flops'`.")
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
    cosine = xd / (xx.sqrt() * dd.sqrt()).clamp_min(_TINY)
    inverse_magnitude = numel.clamp_min(1) / l1.clamp_min(_TINY)
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
    score = -importance / costs.clamp_min(_TINY)
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


def first_within(mask: torch.Tensor, costs: torch.Tensor, priority: torch.Tensor, need: torch.Tensor) -> torch.Tensor:
    """Groups of `mask`, in priority order, that start before their cumulative cost reaches `need` (no host sync)."""
    ordered = torch.where(mask, costs, torch.zeros_like(costs))[priority]
    within = mask[priority] & (ordered.cumsum(0) - ordered < need)
    return torch.zeros_like(mask).scatter_(0, priority, within)


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
