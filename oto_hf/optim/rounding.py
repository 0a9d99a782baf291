"""`round_to`: widths on a grid that serving engines like, planned into DHSPG's family quotas during training.

`round_to` maps a group kind (`oto_hf.graph.groups.ALL_KINDS`: `"kv_head"` is a KV group of grouped-query attention,
`"head"` a query head) to its rule; kinds not named are `"free"`:

- an int `m`: every family of the kind keeps a multiple of `m` of its groups, or all of them (e.g. `{"neuron": 128}`:
  FFN widths 1536, 1408, ..., 128 or 0 for a 1536-wide FFN);
- `"uniform"`: every family of the kind and size keeps the same number of groups (the same head count in every layer);
- `"free"`: any number.

With a rule other than `"free"`, every family gets an exact quota: the number of its groups that are zero from
`pruning_end` on. `GridPlanner.plan` chooses the quotas from the scores at every partition (families of a uniform class
move together), so the model trains in its final shape and is built without padding. `uniform_widths=True` makes every
kind uniform as well.

Grouped-query attention (`"head"` groups nested in `"kv_head"` ones, `graph.nesting`): the built model keeps the same
number of query heads in every KV group of a layer. With `round_to`, the query heads of each KV group are a family of
their own, and the KV groups of one layer move together (one class), so they keep equally many and nothing is padded;
`"head"` rules count query heads per KV group (`"uniform"`: the same number in every KV group of every layer), and
`min_heads_per_layer` counts per KV group too. A KV group whose query heads all go is removed with them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from ..graph.groups import ALL_KINDS

ROUND_TO_MODES: tuple[str, ...] = ("free", "uniform")


@dataclass(frozen=True)
class KindRule:
    """The grid of one kind: kept counts are multiples of `multiple` (or the full width); `uniform`: the same count in
    every family of the kind and size."""

    multiple: int = 1
    uniform: bool = False


def check_round_to(name: str, value: object) -> None:
    """Raise a `ValueError` unless `value` is `None` or maps known kinds to an int >= 1, "free" or "uniform"."""
    if value is None:
        return
    example = "e.g. {'neuron': 128, 'head': 'uniform'}"
    if not isinstance(value, Mapping):
        raise ValueError(
            f"`{name}` must be a dict from group kind to an int multiple, 'free' or 'uniform', {example}; got "
            f"{value!r}."
        )
    for kind, rule in value.items():
        if kind not in ALL_KINDS:
            raise ValueError(f"`{name}` names an unknown group kind {kind!r}; the kinds are {list(ALL_KINDS)}.")
        if isinstance(rule, str) and rule in ROUND_TO_MODES:
            continue
        if not isinstance(rule, int) or isinstance(rule, bool) or rule < 1:
            raise ValueError(
                f"`{name}[{kind!r}]` must be an int >= 1 (every layer keeps a multiple of it), 'free' or 'uniform', "
                f"got {rule!r}."
            )


def parse_round_to(name: str, text: str) -> dict[str, int | str]:
    """`round_to` from the command line: JSON (`{"neuron": 128}`) or `kind=value` pairs (`neuron=128,head=uniform`)."""
    if text.lstrip().startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"`{name}` is not valid JSON ({error}): {text!r}.") from None
        check_round_to(name, value)
        return value
    pairs: dict[str, int | str] = {}
    for pair in text.split(","):
        kind, sep, rule = (part.strip() for part in pair.partition("="))
        if not (kind and sep and rule):
            raise ValueError(
                f"`{name}` must be JSON or `kind=value` pairs separated by commas, e.g. 'neuron=128,head=uniform', "
                f"got {text!r}."
            )
        pairs[kind] = int(rule) if rule.isdigit() else rule
    check_round_to(name, pairs)
    return pairs


def resolve_rules(round_to: Mapping[str, int | str] | None, uniform_widths: bool) -> dict[str, KindRule] | None:
    """The rule of each kind named, or `None` when `round_to` asks for nothing (no multiple above 1, no "uniform"):
    DHSPG then runs as without it. With `uniform_widths`, every kind is uniform as well (`uniform_widths` alone keeps
    its own upfront plan, `families.plan_uniform_quotas`)."""
    rules = {
        kind: KindRule(1, True) if rule == "uniform" else KindRule(1 if rule == "free" else int(rule), uniform_widths)
        for kind, rule in (round_to or {}).items()
    }
    if all(rule == "free" or rule == 1 for rule in (round_to or {}).values()):
        return None
    return rules


def zero_grid_ceil(count: torch.Tensor, size: torch.Tensor, multiple: torch.Tensor) -> torch.Tensor:
    """The smallest zero count `z >= count` whose kept count `size - z` is a multiple of `multiple` or `size`."""
    first = (size - 1) % multiple + 1  # the smallest positive zero count on the grid
    up = first + torch.div((count - first).clamp_min(0) + multiple - 1, multiple, rounding_mode="floor") * multiple
    return torch.where(count > 0, up, torch.zeros_like(up))


class GridPlanner:
    """The grid of every family and the planner of their quotas.

    Args:
        kinds (`Sequence[str]`): kind of each family.
        members (`Sequence[Sequence[int]]`): group ids of each family.
        min_kept (`Sequence[int]`): groups each family must keep (minimums, `max_family_sparsity`, `never_empty`).
        rules (`Mapping[str, KindRule]`): from `resolve_rules`.
        uniform_widths (`bool`): the rule of kinds not in `rules` is uniform.
        layers (`Sequence[object]`): per family, a key shared by the families that must move together unless uniform
            (the query heads of one layer's KV groups, `families.find_families(split_nests=True)`), or `None`.
    """

    def __init__(
        self,
        kinds: Sequence[str],
        members: Sequence[Sequence[int]],
        min_kept: Sequence[int],
        rules: Mapping[str, KindRule],
        uniform_widths: bool,
        layers: Sequence[object],
    ) -> None:
        default = KindRule(1, uniform_widths)
        family_rules = [rules.get(kind, default) for kind in kinds]
        sizes = [len(ids) for ids in members]
        for kind, rule, size in zip(kinds, family_rules, sizes):
            if rule.multiple > size:
                raise ValueError(
                    f"`round_to[{kind!r}]={rule.multiple}` is larger than a family of {size} {kind!r} groups (one "
                    f"layer's width), which could then only be kept whole or removed whole. Use a multiple of at most "
                    f"{min(s for k, s in zip(kinds, sizes) if k == kind)} or 'free'."
                )
        # A uniform class: the families of one kind and size; else those of one layer (`layers`), or one family.
        keys = [
            ("uniform", kind, size) if rule.uniform else i if layer is None else ("layer", layer)
            for i, (kind, rule, size, layer) in enumerate(zip(kinds, family_rules, sizes, layers))
        ]
        class_ids: dict[object, int] = {}
        self.class_of = torch.tensor([class_ids.setdefault(key, len(class_ids)) for key in keys], dtype=torch.long)
        self.num_classes = len(class_ids)
        self.sizes = torch.tensor(sizes, dtype=torch.long)
        self.multiples = torch.tensor([rule.multiple for rule in family_rules], dtype=torch.long)
        # The most zero groups on the grid: the full width minus the minimum kept rounded up to the grid.
        kept = torch.tensor([min(k, s) for k, s in zip(min_kept, sizes)], dtype=torch.long)
        least_kept = torch.div(kept + self.multiples - 1, self.multiples, rounding_mode="floor") * self.multiples
        most = torch.where(least_kept < self.sizes, self.sizes - least_kept, torch.zeros_like(kept))
        class_most = torch.full((self.num_classes,), max(sizes, default=0), dtype=torch.long)
        self.most = class_most.scatter_reduce_(0, self.class_of, most, "amin")[self.class_of]

    def is_on_grid(self, quotas: torch.Tensor) -> bool:
        """Whether `quotas` (zero groups per family) are on the grid, within `most` and equal within each class."""
        quotas = quotas.cpu().long()
        if quotas.shape != self.most.shape:
            return False
        on_grid = torch.equal(zero_grid_ceil(quotas, self.sizes, self.multiples), quotas)
        same = torch.equal(quotas[self._first_of_class()][self.class_of], quotas)
        return on_grid and same and bool((quotas <= self.most).all())

    def _first_of_class(self) -> torch.Tensor:
        """A family of each class."""
        first = torch.full((self.num_classes,), len(self.class_of), dtype=torch.long)
        return first.scatter_reduce_(0, self.class_of, torch.arange(len(self.class_of)), "amin")

    def plan(
        self, scores: torch.Tensor, taken: torch.Tensor, costs: torch.Tensor, family_of: torch.Tensor, target: float
    ) -> torch.Tensor:
        """Zero groups per family on the grid so that the removed cost reaches `target` (CPU tensors in and out).

        In each family the groups are ranked: `taken` ones (zero or on their way) first, then by decreasing score.
        A family keeps at least its taken groups rounded up to the grid, and so does its *class* (the families that
        move together: uniform ones, the KV groups of one layer); from there, a *step* zeroes the next ranked groups up
        to the next grid point in every family of the class, within `most`. Steps come by decreasing mean score (ties:
        the class that comes first, then the smaller step), each class's in their own order. The same rule as
        `selection.deadline_selection`, on steps: a step is taken while the removed cost (the taken groups' rounding
        included) stays at or below the target; a class whose next step would exceed it takes no more steps; if the
        removed cost is still below the target afterwards, the cheapest next step of those classes closes the gap. So
        the plan reaches the target and exceeds it by less than the cost of that closing step (or by the rounding of
        the taken groups, when that alone exceeds it). A plan within `most` exists: the caller checked that `most`
        reaches the target.
        """
        lowest, removed, steps = self._steps(scores, taken, costs, family_of)
        plan = lowest.tolist()
        step_class, step_end, step_cost = (t.tolist() for t in steps[:3])
        queues: list[list[int]] = [[] for _ in plan]  # each class's steps, smallest first
        for step, klass in enumerate(step_class):
            queues[klass].append(step)
        position, closed = [0] * len(plan), [False] * len(plan)
        order = torch.sort(steps[3], descending=True, stable=True).indices.tolist()
        for klass in (step_class[index] for index in order):
            if removed >= target:
                break
            if closed[klass]:
                continue
            step = queues[klass][position[klass]]
            if removed + step_cost[step] <= target:
                plan[klass], removed, position[klass] = step_end[step], removed + step_cost[step], position[klass] + 1
            else:
                closed[klass] = True
        closing = [queues[k][position[k]] for k in range(len(plan)) if closed[k]]
        if removed < target and closing:
            rank = {index: i for i, index in enumerate(order)}
            step = min(closing, key=lambda s: (step_cost[s], rank[s]))  # the cheapest; ties: the higher score
            plan[step_class[step]] = step_end[step]
        return torch.tensor(plan, dtype=torch.long)[self.class_of]

    def _steps(
        self, scores: torch.Tensor, taken: torch.Tensor, costs: torch.Tensor, family_of: torch.Tensor
    ) -> tuple[torch.Tensor, float, tuple[torch.Tensor, ...]]:
        """The lowest plan of each class, its cost, and the steps above it: `(class, end, cost, mean score)`, sorted by
        class, then end."""
        num_groups, num_families = len(family_of), len(self.sizes)
        priority = torch.sort(scores, descending=True, stable=True).indices
        priority = priority[torch.sort((~taken[priority]).long(), stable=True).indices]
        grouped = priority[torch.sort(family_of[priority], stable=True).indices]
        start = torch.cumsum(self.sizes, 0) - self.sizes
        rank = torch.empty(num_groups, dtype=torch.long)
        rank[grouped] = torch.arange(num_groups) - start[family_of[grouped]]

        taken_counts = torch.zeros(num_families, dtype=torch.long).index_add_(0, family_of, taken.long())
        lowest = zero_grid_ceil(taken_counts, self.sizes, self.multiples)
        lowest = torch.zeros(self.num_classes, dtype=torch.long).scatter_reduce_(0, self.class_of, lowest, "amax")
        # Each group's step: the grid point that zeroing it (and the groups ranked before it) reaches.
        klass = self.class_of[family_of]
        step_end = zero_grid_ceil(rank + 1, self.sizes[family_of], self.multiples[family_of])
        base = step_end <= lowest[klass]
        above = ~base & (step_end <= self.most[family_of])
        stride = int(self.sizes.max()) + 1 if num_families else 1
        keys, inverse = torch.unique(klass[above] * stride + step_end[above], return_inverse=True)
        total = torch.zeros(len(keys), dtype=torch.float64).index_add_(0, inverse, scores[above].double())
        mean = total / torch.bincount(inverse, minlength=len(keys)).clamp_min(1)
        cost = torch.zeros(len(keys), dtype=torch.float64).index_add_(0, inverse, costs[above].double())
        return lowest, float(costs[base].sum()), (keys // stride, keys % stride, cost, mean)
