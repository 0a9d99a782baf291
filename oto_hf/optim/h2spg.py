"""H2SPG's choice (OTOv3): single groups and whole operators compete on one importance-per-cost scale.

Narrowing removes single groups (a head, a neuron); erasing removes an operator (`oto_hf.erasing`) with every group
inside it and the tensors that exist only for it (its norm, its output bias). The importance of a unit is the
Fisher/OBD estimate DHSPG uses for groups: the mean over steps of the squared gradient of one mask on the unit's
tensors, `(sum of <x_t, grad_t> over its tensors)^2`. For an operator that is the importance of removing it at once,
which is not the sum of its members' importances: their first-order terms add before squaring, so they may cancel or
reinforce. `choose_units` takes the units with the least importance per cost until the target cost is removed.

This module scores and chooses; `operator_erasing` drives the chosen operators to zero inside DHSPG.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..graph.families import family_key
from ..graph.groups import ZeroInvariantGroup
from ..graph.operators import Operator


class UnitImportance:
    """Running Fisher importance of every group and every operator, from the gradients of training steps.

    Call `accumulate()` after each backward pass (before the optimizer step changes the weights).

    Args:
        model (`nn.Module`): the model being trained.
        groups (`Sequence[ZeroInvariantGroup]`): its groups (group `i` at position `i`).
        operators (`Sequence[Operator]`): its operators (`oto_hf.find_operators`).

    Example:
    ```python
    >>> meter = UnitImportance(model, groups, operators)
    >>> for batch in batches:
    ...     model(**batch).loss.backward()
    ...     meter.accumulate()
    ...     model.zero_grad()
    >>> group_importance, operator_importance = meter.importance()
    ```
    """

    def __init__(self, model: nn.Module, groups: Sequence[ZeroInvariantGroup], operators: Sequence[Operator]) -> None:
        self.params = dict(model.named_parameters(remove_duplicate=False))
        self.num_groups = len(groups)
        # For each (tensor, dim) that groups slice: the group of each index along `dim` (-1: none).
        self.rows: dict[tuple[str, int], torch.Tensor] = {}
        for group in groups:
            for name, dim, indices in group.slices:
                owner = self.rows.get((name, dim))
                if owner is None:
                    owner = self.rows[(name, dim)] = torch.full((self.params[name].shape[dim],), -1, dtype=torch.long)
                owner[indices] = group.id
        self.members = [torch.tensor(op.group_ids, dtype=torch.long) for op in operators]
        self.extras = [[name for name in op.extra_params if name in self.params] for op in operators]
        self.group_sums = torch.zeros(self.num_groups, dtype=torch.float64)
        self.operator_sums = torch.zeros(len(operators), dtype=torch.float64)
        self.steps = 0

    @torch.no_grad()
    def accumulate(self) -> None:
        """Add this step's squared mask gradients (`<x, grad>` summed over each unit's tensors, squared)."""
        xg = torch.zeros(self.num_groups, dtype=torch.float64)
        for (name, dim), owner in self.rows.items():
            param = self.params[name]
            if param.grad is None:
                continue
            product = (param.detach() * param.grad).double()
            per_index = product.sum(dim=[d for d in range(product.dim()) if d != dim]).cpu()
            inside = owner >= 0
            xg.index_add_(0, owner[inside], per_index[inside])
        for index, (members, extras) in enumerate(zip(self.members, self.extras)):
            total = xg[members].sum()
            for name in extras:
                param = self.params[name]
                if param.grad is not None:
                    total += float((param.detach() * param.grad).double().sum())
            self.operator_sums[index] += total.square()
        self.group_sums += xg.square()
        self.steps += 1

    def importance(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean importance per group and per operator (float64, on the CPU)."""
        steps = max(self.steps, 1)
        return self.group_sums / steps, self.operator_sums / steps


@dataclass(frozen=True)
class Choice:
    """What `choose_units` removes: every zero group (operators' members included), the operators erased, and the
    cost removed in the budget's unit."""

    group_ids: list[int]
    operators: list[int]
    removed_cost: float


def choose_units(
    groups: Sequence[ZeroInvariantGroup],
    operators: Sequence[Operator],
    group_importance: torch.Tensor,
    operator_importance: torch.Tensor,
    group_costs: Sequence[float] | torch.Tensor,
    operator_costs: Sequence[float] | torch.Tensor,
    target_cost: float,
    *,
    max_family_sparsity: float = 1.0,
    erase: bool = True,
    family_of: Sequence[int] | None = None,
    family_room: Sequence[int] | None = None,
    fixed_groups: Sequence[int] = (),
    fixed_operators: Sequence[int] = (),
) -> Choice:
    """The least important units per cost, greedily, until at least `target_cost` is removed.

    A unit is one group (narrowing) or one operator (erasing, with all of its groups). Units are taken by increasing
    importance per cost whenever they still fit under the target (a unit already covered, such as a group of an erased
    operator or an operator inside an erased block, is skipped; an operator adds only what is not removed yet); if
    the target is still not met, the unit that closes the gap at the least cost is taken, as DHSPG's deadline does.
    `max_family_sparsity` limits narrowing (single groups taken from one family: the heads of a layer, the neurons of
    an FFN), not erasing, so a layer may keep part of its FFN and lose its attention. Ties go to the earlier unit
    (groups first, then operators).

    Args:
        groups (`Sequence[ZeroInvariantGroup]`): the groups, group `i` at position `i`.
        operators (`Sequence[Operator]`): the operators that may be erased.
        group_importance (`torch.Tensor`): importance of each group (`UnitImportance.importance`).
        operator_importance (`torch.Tensor`): importance of each operator.
        group_costs (`Sequence[float]` or `torch.Tensor`): cost of each group in the budget's unit.
        operator_costs (`Sequence[float]` or `torch.Tensor`): cost of each operator (members and own tensors).
        target_cost (`float`): cost to remove.
        max_family_sparsity (`float`, *optional*, defaults to `1.0`): most of each family's groups that narrowing may
            remove, in `(0, 1]`.
        erase (`bool`, *optional*, defaults to `True`): let operators compete; `False` narrows only.
        family_of (`Sequence[int]`, *optional*): the family index of each group; with `family_room` (the most groups
            of each family that narrowing may remove, e.g. DHSPG's quotas) it replaces `max_family_sparsity`.
        family_room (`Sequence[int]`, *optional*): see `family_of`.
        fixed_groups (`Sequence[int]`, *optional*): groups removed already (zero or on their way), taken first.
        fixed_operators (`Sequence[int]`, *optional*): operators erased already, taken first.

    Returns:
        `Choice`: the groups to zero (sorted), the indices of the operators to erase, and the removed cost.
    """
    if not 0 < max_family_sparsity <= 1:
        raise ValueError(f"`max_family_sparsity` must be in (0, 1], got {max_family_sparsity!r}.")
    group_costs = torch.as_tensor(group_costs, dtype=torch.float64)
    operator_costs = torch.as_tensor(operator_costs, dtype=torch.float64)
    if len(group_costs) != len(groups) or len(group_importance) != len(groups):
        raise ValueError(f"Need one cost and one importance per group ({len(groups)}).")
    if len(operator_costs) != len(operators) or len(operator_importance) != len(operators):
        raise ValueError(f"Need one cost and one importance per operator ({len(operators)}).")
    reachable = float(group_costs.sum()) + (float(operator_costs.sum()) if erase else 0.0)
    if target_cost > reachable:
        raise ValueError(f"`target_cost` {target_cost:g} exceeds what all units cost together ({reachable:g}).")

    units = [(float(group_importance[i]) / _positive(group_costs[i]), 0, i) for i in range(len(groups))]
    if erase:
        units += [(float(operator_importance[j]) / _positive(operator_costs[j]), 1, j) for j in range(len(operators))]
    units.sort(key=lambda unit: (unit[0], unit[1], unit[2]))

    if (family_of is None) != (family_room is None):
        raise ValueError("Pass both `family_of` and `family_room`, or neither.")
    if family_of is None:
        keys: dict[tuple, int] = {}
        family_of = [keys.setdefault(family_key(group), len(keys)) for group in groups]
        sizes = torch.bincount(torch.tensor(family_of, dtype=torch.long), minlength=len(keys)).tolist()
        family_room = [math.floor(max_family_sparsity * size + 1e-9) for size in sizes]
        limits = f"`max_family_sparsity={max_family_sparsity:g}`"
    else:
        limits = "the narrowing limits (`max_family_sparsity`, the per-layer minimums, `never_empty`)"
    state = _Greedy(operators, group_costs, operator_costs, list(family_of), list(family_room))
    for index in fixed_operators:
        state.take(1, index, fixed=True)
    for index in fixed_groups:
        if index not in state.zero:
            state.take(0, index, fixed=True)
    for _, is_operator, index in units:  # what fits under the target, in order
        gain = state.gain(is_operator, index)
        if gain is not None and state.removed + gain <= target_cost:
            state.take(is_operator, index)
    while state.removed < target_cost:  # the unit that closes the gap at the least cost
        gains = [(gain, is_operator, index) for _, is_operator, index in units
                 if (gain := state.gain(is_operator, index)) is not None]  # fmt: skip
        if not gains:
            raise ValueError(
                f"Only {state.removed:g} of `target_cost` {target_cost:g} can be removed with {limits}"
                f"{'' if erase else ' and erasing off'}: raise either, or lower the target."
            )
        _, is_operator, index = min(gains, key=lambda item: item[0])
        state.take(is_operator, index)
    return Choice(sorted(state.zero), sorted(state.erased), state.removed)


class _Greedy:
    """What `choose_units` has taken so far, and what each further unit would add."""

    def __init__(self, operators, group_costs, operator_costs, family_of: list[int], room: list[int]) -> None:
        self.operators, self.group_costs, self.family_of = operators, group_costs, family_of
        # An operator's own cost: its tensors outside every group (norms, output biases).
        self.own = [
            float(operator_costs[j]) - float(group_costs[op.group_ids].sum()) for j, op in enumerate(operators)
        ]
        self.allowed = room
        self.narrowed = [0] * len(room)
        self.zero: set[int] = set()
        self.erased: list[int] = []
        self.removed = 0.0

    def gain(self, is_operator: int, index: int, fixed: bool = False) -> float | None:
        """Cost this unit would remove on top of what is taken; `None` if it cannot be taken (or adds nothing)."""
        if not is_operator:
            family = self.family_of[index]
            taken = index in self.zero or (self.narrowed[family] >= self.allowed[family] and not fixed)
            return None if taken else float(self.group_costs[index])
        op = self.operators[index]
        tensors = set(op.tensors)
        if any(tensors <= set(self.operators[k].tensors) for k in self.erased):
            return None  # inside an erased block
        parts = [k for k in self.erased if set(self.operators[k].tensors) <= tensors]
        left = [i for i in op.group_ids if i not in self.zero]
        return float(self.group_costs[left].sum()) + self.own[index] - sum(self.own[k] for k in parts)

    def take(self, is_operator: int, index: int, fixed: bool = False) -> None:
        """Take a unit; a `fixed` one (removed already) also beyond its family's room."""
        self.removed += self.gain(is_operator, index, fixed) or 0.0
        if is_operator:
            self.zero.update(self.operators[index].group_ids)
            self.erased = [
                k for k in self.erased if not set(self.operators[k].tensors) <= set(self.operators[index].tensors)
            ]
            self.erased.append(index)
        else:
            self.narrowed[self.family_of[index]] += 1
            self.zero.add(index)


def _positive(value: torch.Tensor) -> float:
    return max(float(value), 1e-30)


def operator_costs_in(operators: Sequence[Operator], budget: str) -> list[float]:
    """Each operator's cost in a budget's unit: `"params"` (`num_params`) or `"flops"` (`flops`)."""
    if budget not in ("params", "flops"):
        raise ValueError(f"Operators are priced in 'params' or 'flops', got {budget!r}.")
    values = [op.num_params if budget == "params" else op.flops for op in operators]
    if any(value is None for value in values):
        raise ValueError("Some operators have no FLOPs: find them with `oto_hf.find_operators`, which prices them.")
    return [float(value) for value in values]
