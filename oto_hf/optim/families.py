"""Families of groups and the per-family constraints of DHSPG: a minimum of groups kept, and uniform widths.

A *family* is the set of groups that slice the same tensors along the same dims, e.g. the heads of one attention
layer or the neurons of one FFN; `oto_hf.graph.families.family_key` is its key.

**Quotas.** Every family `f` gets `max_zero[f]`, the most groups of it that may be zero. Without `uniform_widths` it
is `size - min(size, min_kept)`, also at most `floor(max_family_sparsity * size)`, and at most `size - 1` for a family
in `never_empty`; with `uniform_widths` it is the planned number of zero groups of the family (see
`plan_uniform_quotas`), which the deadline then fills exactly. With `round_to` (`rounding`) it is also an exact quota,
on the family's grid, re-planned from the scores at every partition (`FamilyConstraints.replan`); before the first
partition it is the most the grid and the limits allow. With `round_to` and grouped-query attention, the query heads
of each KV group are a family of their own (`find_families(split_nests=True)`).

**Segmented ranks.** To cap projections per family without a loop over groups, a priority order of the groups is
re-sorted stably by family (`FamilyConstraints.family_order`): each family is then one contiguous segment, in the same
place for every priority order, and the rank of a group inside its family is an exclusive cumulative sum minus the
value at the start of its segment.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from ..graph.families import FamilyKey, family_key
from ..graph.groups import KV_HEAD
from .rounding import GridPlanner, resolve_rules
from .sharding import from_first_rank

if TYPE_CHECKING:
    from oto_hf.graph.groups import ZeroInvariantGroup

    from .selection import Budget


# The `DHSPG` / `OTOTrainingArguments` argument that sets the minimum of each group kind.
MIN_KEPT_ARGUMENTS: dict[str, str] = {
    "head": "min_heads_per_layer",
    "neuron": "min_neurons_per_layer",
    "channel": "min_channels_per_layer",
}


@dataclass(frozen=True)
class GroupFamily:
    """Groups that share the same tensors (e.g. the heads of one layer), with their constraint.

    Args:
        kind (`str`): kind of its groups (`"head"`, `"neuron"`, `"channel"`, or a custom kind).
        tensors (`tuple[tuple[str, int], ...]`): the family key, sorted `(parameter name, dim)` pairs.
        group_ids (`tuple[int, ...]`): its groups, in id order.
        min_kept (`int`): groups that always stay non-zero: `min(size, the per-layer minimum of its kind)`.
        max_zero (`int`): most groups that may be zero; with `uniform_widths` or `round_to`, exactly this many are
            zero from `pruning_end` on (with `round_to`: as planned at the last partition so far).
    """

    kind: str
    tensors: FamilyKey
    group_ids: tuple[int, ...]
    min_kept: int
    max_zero: int

    @property
    def size(self) -> int:
        """Number of groups in the family."""
        return len(self.group_ids)


def find_families(
    groups: Sequence[ZeroInvariantGroup], split_nests: bool = False
) -> tuple[list[FamilyKey], list[str], list[list[int]], str | None]:
    """Keys, kinds (of each family's first group) and member ids of the families, in order of first appearance, plus
    a message naming two groups of one family with different kinds, if any. With `split_nests`, the query heads of
    each KV group (grouped-query attention, `ZeroInvariantGroup.nest`) are a family of their own (same key)."""
    index: dict[tuple[FamilyKey, int | None], int] = {}
    keys: list[FamilyKey] = []
    kinds: list[str] = []
    members: list[list[int]] = []
    mixed = None
    for position, group in enumerate(groups):
        key = family_key(group)
        kind = str(getattr(group, "kind", ""))
        nest = getattr(group, "nest", None) if split_nests and kind == "head" else None
        family = index.setdefault((key, nest), len(keys))
        if family == len(keys):
            keys.append(key)
            kinds.append(kind)
            members.append([])
        elif kinds[family] != kind and mixed is None:
            mixed = (
                f"Groups {members[family][0]} ({kinds[family]!r}) and {position} ({kind!r}) slice the same tensors "
                "but have different kinds; family constraints need one kind per family (groups sharing tensors)."
            )
        members[family].append(position)
    return keys, kinds, members, mixed


def describe_minimums(min_kept: Mapping[str, int], kinds: Sequence[str]) -> str:
    """The minimums of the `kinds` present, as the user set them, for error messages: "`min_heads_per_layer=1`"."""
    named = [
        f"`{MIN_KEPT_ARGUMENTS.get(kind, kind)}={value}`"
        for kind, value in min_kept.items()
        if value and kind in kinds and kind != KV_HEAD  # set by `min_heads_per_layer`
    ]
    return ", ".join(named) or "no per-layer minimums"


def plan_uniform_quotas(
    kinds: Sequence[str], members: Sequence[Sequence[int]], max_zero: Sequence[int], costs: torch.Tensor, target: float
) -> list[int]:
    """Zero groups per family so that families of one kind and size match and the removed cost reaches `target`.

    Families of the same kind and size form a class; a class `c` of families of `n` groups may zero `k` groups in each
    family, `0 <= k <= max_zero`. Steps `(c, k)` (zero a `k`-th group in every family of `c`) are taken in order of
    the width fraction `k / n` they lead to (ties: the class that appears first in `groups`), each adding the costs
    of the `k`-th cheapest group of every family of `c`, until the total reaches `target`. So every class is pruned
    to about the same fraction of its width, and the planned cost is the first one along that path at or above
    the target, above it by less than the last step. The caller checks beforehand that all steps together reach it.
    """
    classes: dict[tuple[str, int], list[int]] = {}
    for family, ids in enumerate(members):
        classes.setdefault((kinds[family], len(ids)), []).append(family)
    sorted_costs = [torch.sort(costs[list(ids)]).values.tolist() for ids in members]
    steps = []
    for class_index, ((_, size), families) in enumerate(classes.items()):
        for k in range(1, max_zero[families[0]] + 1):
            cost = math.fsum(sorted_costs[f][k - 1] for f in families)
            steps.append((Fraction(k, size), class_index, cost))
    steps.sort(key=lambda step: (step[0], step[1]))
    per_class = [0] * len(classes)
    removed = 0.0
    for _, class_index, cost in steps:
        if removed >= target:
            break
        per_class[class_index] += 1
        removed += cost
    quotas = [0] * len(members)
    for class_index, families in enumerate(classes.values()):
        for family in families:
            quotas[family] = per_class[class_index]
    return quotas


class FamilyConstraints:
    """Families of a group list with their quotas, and the family-aware selection rules DHSPG uses.

    Args:
        groups (`Sequence[ZeroInvariantGroup]`): the groups, group `i` at position `i`.
        min_kept (`dict[str, int]`): groups each family of a kind keeps (`DHSPG`'s per-layer minimums).
        uniform_widths (`bool`): see `DHSPG`.
        budget (`Budget`): the resolved budget (its costs plan the quotas).
        tolerance (`float`): extra share of each family's width penalised beyond its quota with exact quotas.
        max_family_sparsity (`float`): most of each family's groups that may be zero, in `(0, 1]`.
        never_empty (`Sequence[FamilyKey]`): families that always keep at least one group.
        round_to (`Mapping[str, int | str]`, *optional*): the grid of each kind (`rounding`); `None`: free widths.
    """

    def __init__(
        self,
        groups: Sequence[ZeroInvariantGroup],
        min_kept: Mapping[str, int],
        uniform_widths: bool,
        budget: Budget,
        tolerance: float,
        max_family_sparsity: float = 1.0,
        never_empty: Sequence[FamilyKey] = (),
        round_to: Mapping[str, int | str] | None = None,
    ) -> None:
        if not isinstance(uniform_widths, bool):
            raise ValueError(f"`uniform_widths` must be a bool, got {uniform_widths!r}.")
        if not isinstance(max_family_sparsity, (int, float)) or not 0 < max_family_sparsity <= 1:
            raise ValueError(f"`max_family_sparsity` must be in (0, 1], got {max_family_sparsity!r}.")
        rules = resolve_rules(round_to, uniform_widths)
        keys, kinds, members, mixed = find_families(groups, split_nests=rules is not None)
        unknown = set(map(tuple, never_empty)) - set(keys)
        if unknown:
            raise ValueError(
                f"`never_empty` names {len(unknown)} family key(s) that no group has, e.g. {sorted(unknown)[0]!r}; "
                "use keys of `DHSPG.families` (`family.tensors`)."
            )
        protected = set(map(tuple, never_empty))
        minimum = [int(min_kept.get(kind, 0)) for kind in kinds]
        minimum = [
            max(m, len(ids) - math.floor(max_family_sparsity * len(ids) + 1e-9), int(key in protected))
            for m, ids, key in zip(minimum, members, keys)
        ]
        kept = [min(len(ids), m) for ids, m in zip(members, minimum)]
        # With `round_to` the query heads of each KV group are a family (`find_families`); a layer's move together.
        nested = [
            getattr(groups[ids[0]], "nest", None) is not None and kind == "head" for kind, ids in zip(kinds, members)
        ]
        layers = [key if nest else None for key, nest in zip(keys, nested)]
        self.planner = None if rules is None else GridPlanner(kinds, members, kept, rules, uniform_widths, layers)
        most = [len(ids) - k for ids, k in zip(members, kept)] if self.planner is None else self.planner.most.tolist()
        self.uniform = uniform_widths
        # Exact quotas: every family ends with exactly `max_zero` zero groups (planned upfront, or at each partition).
        self.exact = uniform_widths or self.planner is not None
        self.tolerance = tolerance
        # Without any constraint DHSPG keeps its global rules, and this object only describes the families.
        self.constrained = budget.active and (self.exact or any(k > 0 for k in kept))
        target = budget.target_cost
        if self.constrained and mixed:
            raise ValueError(mixed)
        if self.constrained:
            limits = describe_minimums(min_kept, kinds)
            if max_family_sparsity < 1:
                limits += f", `max_family_sparsity={max_family_sparsity:g}`"
            if protected:
                limits += f" and {len(protected)} `never_empty` families"
            if self.planner is not None:
                limits += f", `round_to={dict(round_to or {})}`"
            _check_capacity(limits, members, most, budget)
        if self.constrained and self.exact:
            quotas = most if self.planner else plan_uniform_quotas(kinds, members, most, budget.costs, target)
            allowance = _allowance(quotas, members, tolerance)
        else:
            quotas = most if budget.active else [0] * len(members)
            allowance = quotas
        self.families = tuple(
            GroupFamily(kind, key, tuple(ids), k, q)
            for key, kind, ids, k, q in zip(keys, kinds, members, kept, quotas)
        )
        family_of = torch.zeros(len(groups), dtype=torch.long)
        for family, ids in enumerate(members):
            family_of[ids] = family
        sizes = torch.tensor([len(ids) for ids in members], dtype=torch.long)
        # Static tensors on the CPU (for the partition and deadline events) and on `device` (for every step).
        self._cpu = _Tensors(
            family_of,
            torch.tensor(quotas, dtype=torch.long),
            torch.tensor(allowance, dtype=torch.long),
            torch.repeat_interleave(torch.arange(len(members)), sizes),
            torch.cumsum(sizes, 0) - sizes,
        )
        self._device = self._cpu

    @classmethod
    def from_settings(
        cls,
        groups: Sequence[ZeroInvariantGroup],
        budget: Budget,
        settings: Mapping[str, Any],
        never_empty: Sequence[FamilyKey],
    ) -> FamilyConstraints:
        """From `DHSPG`'s settings, keyed by its argument names (`checks.SETTING_NAMES`)."""
        minimums = {kind: settings[name] for kind, name in MIN_KEPT_ARGUMENTS.items()}
        # Grouped-query attention: a layer that keeps a query head keeps a KV group.
        minimums[KV_HEAD] = min(1, minimums["head"])
        limits = (settings["max_family_sparsity"], never_empty, settings["round_to"])
        return cls(groups, minimums, settings["uniform_widths"], budget, settings["tolerance"], *limits)

    @property
    def num_families(self) -> int:
        """Number of families."""
        return len(self.families)

    @property
    def family_of(self) -> torch.Tensor:
        """Family index of each group, on the optimizer's device."""
        return self._device.family_of

    @property
    def max_zero(self) -> torch.Tensor:
        """Quota of each family, on the optimizer's device."""
        return self._device.max_zero

    @property
    def rounded(self) -> bool:
        """Whether `round_to` puts the widths on a grid (the quotas are then re-planned at every partition)."""
        return self.constrained and self.planner is not None

    def replan(self, scores: torch.Tensor, taken: torch.Tensor, budget: Budget, sync: bool) -> None:
        """With `round_to`, re-plan the quotas from fresh scores (`rounding.GridPlanner.plan`): `taken` groups (zero or
        due) stay within them. With `sync`, the quotas of the first rank are kept (one collective)."""
        if not self.rounded:
            return
        quotas = self.planner.plan(scores.cpu(), taken.cpu(), budget.costs, self._cpu.family_of, budget.target_cost)
        if sync:
            (quotas,) = from_first_rank(quotas.to(self._device.family_of.device))
        self.set_quotas(quotas)

    def set_quotas(self, quotas: torch.Tensor) -> None:
        """Set the quotas of a `round_to` plan, e.g. those of a checkpoint; they must be on the grid."""
        if not (self.rounded and self.planner.is_on_grid(quotas)):
            raise ValueError(
                f"These family quotas {quotas.tolist()} are not on the `round_to` grid of these families; the "
                "checkpoint was written with other `round_to`, per-layer minimums or groups."
            )
        quotas = quotas.cpu().long()
        members = [family.group_ids for family in self.families]
        allowance = torch.tensor(_allowance(quotas.tolist(), members, self.tolerance), dtype=torch.long)
        self.families = tuple(dataclasses.replace(f, max_zero=q) for f, q in zip(self.families, quotas.tolist()))
        self._cpu = self._cpu._replace(max_zero=quotas, allowance=allowance)
        self.to(self._device.family_of.device)

    def planned_budget(self, budget: Budget) -> Budget:
        """`budget`, whose target becomes the planned count of zero groups with `uniform_widths` and the `"groups"`
        budget (uniform widths may need a few more than `round(target * num_groups)`). Unchanged with `round_to`."""
        if not (self.constrained and self.uniform and not self.rounded and budget.kind == "groups"):
            return budget
        planned = float(sum(family.max_zero for family in self.families))
        return dataclasses.replace(budget, target_cost=planned, redundant_cost=planned)

    def to(self, device: torch.device) -> FamilyConstraints:
        """Keep a copy of the static tensors on `device` for the per-step rules; returns self."""
        self._device = _Tensors(*(t.to(device) for t in self._cpu))
        return self

    def _tensors_for(self, tensor: torch.Tensor) -> _Tensors:
        """The static tensors on `tensor`'s side: the CPU copy for the partition and deadline events, else the
        device copy."""
        return self._cpu if tensor.device.type == "cpu" else self._device

    def zero_counts(self, zero: torch.Tensor) -> torch.Tensor:
        """Zero groups per family, on `zero`'s device (no host sync)."""
        tensors = self._tensors_for(zero)
        counts = torch.zeros(self.num_families, dtype=torch.long, device=zero.device)
        return counts.index_add_(0, tensors.family_of, zero.long())

    def family_order(self, order: torch.Tensor) -> torch.Tensor:
        """`order` (a permutation of the groups) re-sorted stably by family: one contiguous segment per family."""
        tensors = self._tensors_for(order)
        return order[torch.sort(tensors.family_of[order], stable=True).indices]

    def has_room(self, zero: torch.Tensor) -> torch.Tensor:
        """Per group: whether its family may still lose a group (no host sync)."""
        return (self.zero_counts(zero) < self._device.max_zero)[self._device.family_of]

    def cap(self, candidates: torch.Tensor, zero: torch.Tensor, grouped_order: torch.Tensor) -> torch.Tensor:
        """The candidates that fit in their family's quota, by priority; `grouped_order` is `family_order(priority)`.

        Tensor ops only, no host sync.
        """
        tensors = self._tensors_for(candidates)
        room = tensors.max_zero - self.zero_counts(zero)
        ranks = _segment_ranks(candidates, grouped_order, tensors)
        return candidates & (ranks < room[tensors.family_of])

    def due(
        self, penalised: torch.Tensor, zero: torch.Tensor, grouped_order: torch.Tensor, progress: float
    ) -> torch.Tensor:
        """Per family, the first groups of `penalised` by priority that `ceil(progress * quota)` still lacks.

        Tensor ops only, no host sync.
        """
        tensors = self._tensors_for(penalised)
        limit = torch.ceil(tensors.max_zero * progress - 1e-9).long().clamp_(max=tensors.max_zero)
        need = limit - self.zero_counts(zero)
        ranks = _segment_ranks(penalised, grouped_order, tensors)
        return penalised & (ranks < need[tensors.family_of])

    def choose_redundant(
        self, scores: torch.Tensor, zero: torch.Tensor, budget: Budget
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Redundant set and priority order under the family constraints (CPU tensors in and out).

        Within each family only its `allowance` highest-scoring groups (zero groups first) are eligible: with exact
        quotas (`uniform_widths`, `round_to`) they are the redundant set; otherwise the redundant set is the shortest
        prefix of the eligible groups by decreasing score that holds every zero group and costs at least
        `budget.redundant_cost`. The priority order lists the eligible groups by decreasing score, then the others.
        """
        cpu = self._cpu
        by_score = torch.sort(scores, descending=True, stable=True).indices
        ranks = _segment_ranks(torch.ones_like(zero), self.family_order(by_score), cpu)
        eligible = ranks < cpu.allowance[cpu.family_of]
        first = by_score[eligible[by_score]]
        priority = torch.cat([first, by_score[~eligible[by_score]]])
        if self.exact:
            return eligible, priority
        cumulative = budget.costs[first].cumsum(0)
        size = int(torch.searchsorted(cumulative, torch.tensor([budget.redundant_cost], dtype=torch.float64))[0]) + 1
        size = min(len(first), max(size, int(zero.sum())))
        redundant = torch.zeros_like(zero)
        redundant[first[:size]] = True
        return redundant, priority

    def deadline_selection(
        self, scores: torch.Tensor, zero: torch.Tensor, redundant: torch.Tensor, budget: Budget
    ) -> torch.Tensor:
        """Groups to zero at `pruning_end` under the family constraints (CPU tensors in and out).

        Candidates come in the order of `selection.deadline_selection` (non-zero redundant groups by decreasing score,
        then the other non-zero groups); a candidate is only taken while its family is under its quota. With exact
        quotas (`uniform_widths`, `round_to`) every family is filled to its quota. Otherwise, for `"groups"`, the
        first candidates are taken until the target count is zero; for a cost budget, candidates are taken whenever
        they still fit under the target, then, if the removed cost is still below it, the cheapest candidate whose
        family has room closes the gap.
        """
        cpu = self._cpu
        by_score = torch.sort(scores, descending=True, stable=True).indices
        order = torch.cat([by_score[(redundant & ~zero)[by_score]], by_score[(~redundant & ~zero)[by_score]]])
        full_order = torch.cat([order, by_score[zero[by_score]]])
        room = cpu.max_zero - self.zero_counts(zero)
        fits = ~zero & (_segment_ranks(~zero, self.family_order(full_order), cpu) < room[cpu.family_of])
        if self.exact:
            return fits
        chosen = torch.zeros_like(zero)
        removed = float((budget.costs * zero).sum())
        if budget.kind == "groups":
            chosen[order[fits[order]][: int(budget.target_cost - removed)]] = True
            return chosen
        # Cost budgets: a one-off greedy pass at the deadline.
        room_left = room.tolist()
        families = cpu.family_of[order].tolist()
        for group, cost, family in zip(order.tolist(), budget.costs[order].tolist(), families):
            if room_left[family] > 0 and removed + cost <= budget.target_cost:
                chosen[group] = True
                removed += cost
                room_left[family] -= 1
        if removed < budget.target_cost:
            open_family = torch.tensor(room_left, dtype=torch.long)[cpu.family_of] > 0
            left = order[(~chosen & open_family)[order]]
            if len(left):
                chosen[left[torch.argmin(budget.costs[left])]] = True
        return chosen


class _Tensors(NamedTuple):
    family_of: torch.Tensor  # [num_groups] family index of each group
    max_zero: torch.Tensor  # [num_families] quota
    allowance: torch.Tensor  # [num_families] size of the family's share of the redundant set
    segment_family: torch.Tensor  # [num_groups] family of each position of a family-sorted order
    segment_start: torch.Tensor  # [num_families] first position of each family in a family-sorted order


def _allowance(quotas: Sequence[int], members: Sequence[Sequence[int]], tolerance: float) -> list[int]:
    """The redundant set of each family with exact quotas: its quota plus `tolerance` of its width, so there is a
    choice."""
    return [
        0 if q == 0 else min(len(ids), q + math.floor(tolerance * len(ids) + 0.5)) for ids, q in zip(members, quotas)
    ]


def _segment_ranks(mask: torch.Tensor, grouped_order: torch.Tensor, tensors: _Tensors) -> torch.Tensor:
    """For each group, how many groups of `mask` in its family come before it in `grouped_order` (no host sync)."""
    flags = mask[grouped_order].long()
    before = flags.cumsum(0) - flags
    ranks = before - before[tensors.segment_start][tensors.segment_family]
    return torch.zeros_like(ranks).scatter_(0, grouped_order, ranks)


def _check_capacity(
    limits: str,
    members: Sequence[Sequence[int]],
    most: Sequence[int],
    budget: Budget,
) -> None:
    """Raise a `ValueError` if keeping the minimum of every family leaves too little to remove."""
    # With costs, count each family's cheapest removable groups: any choice of that many groups then reaches it.
    capacity = math.fsum(
        float(torch.sort(budget.costs[list(ids)]).values[:m].sum()) for ids, m in zip(members, most) if m
    )
    if capacity >= budget.target_cost:
        return
    if budget.kind == "groups":
        need = f"needs {int(budget.target_cost)} zero groups"
        have = f"at most {int(capacity)} of the {sum(len(ids) for ids in members)} groups can be zero"
    else:
        need = f"needs removing {budget.target_cost:g} ({budget.kind})"
        have = f"the groups that may be removed cost at least {capacity:g} (counting each family's cheapest)"
    most_fraction = capacity / budget.total
    raise ValueError(
        f"Unreachable target under {limits}: the target {need}, but keeping that minimum in every family, {have}. "
        f"Lower `target_sparsity` to at most {math.floor(most_fraction * 1e4) / 1e4:g} or relax those limits."
    )
