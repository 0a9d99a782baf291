"""H2SPG inside DHSPG (OTOv3): whole operators compete with single groups for the target and ramp to zero together.

At each partition `OperatorErasing.partition` runs H2SPG's choice (`h2spg.choose_units`) on the importance gathered
since the last partition: operators (attention or FFN sub-blocks, whole blocks; `oto_hf.find_operators`) and single
groups on one importance-per-cost scale, under DHSPG's per-family quotas for narrowing only; what is zero or on its
way to zero already stays taken. An operator chosen is admitted when the period's quota of the target has room for
its whole cost (in the last period, always): all its member groups then become due together, on one ramp, whatever
their families' quotas or minimums. Its own tensors (a pre-norm branch's norm, an output bias; `Operator.extra_params`)
follow the same ramp, are exactly zero when it ends, and are kept at zero after every later step, so that erasing the
operator (`oto_hf.erase_operators(..., zero_first=False)`) leaves the model unchanged. The budget counts an admitted
operator's full cost: DHSPG's target for groups is lowered by its own tensors' cost.

Per step the cost is one `index_add` over the member groups and a dot product per own tensor (no host sync); the
rare partition events read values back.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..graph.groups import ZeroInvariantGroup
from ..graph.operators import Operator
from .families import FamilyConstraints
from .group_state import GroupState
from .h2spg import choose_units, operator_costs_in
from .progressive import mark_due
from .schedule import PruningSchedule
from .selection import TINY, Budget
from .sharding import from_first_rank


def family_budget(budget: Budget) -> Budget:
    """The budget to build `FamilyConstraints` with when operators may be erased: a tiny target, so that its check
    that narrowing alone reaches the target does not refuse what erasing reaches (`OperatorErasing` checks that)."""
    return dataclasses.replace(budget, target_cost=min(budget.target_cost, TINY))


class OperatorErasing:
    """The erasing half of DHSPG: operator importance, H2SPG's choice at partitions, and the operators' own tensors.

    Args:
        groups (`Sequence[ZeroInvariantGroup]`): DHSPG's groups.
        operators (`Sequence[Operator]`): the erasable operators, priced on the example inputs of the group costs.
        named_parameters (`Mapping[str, torch.Tensor]`): the model's parameters by name (the operators' own tensors).
        budget (`Budget`): DHSPG's resolved budget.
        families (`FamilyConstraints`): DHSPG's families; their quotas limit narrowing only.
        schedule (`PruningSchedule`): DHSPG's schedule (partition points and ramp ends).
        sync (`bool`): take the ramps from the first rank under `torch.distributed`.
    """

    def __init__(
        self,
        groups: Sequence[ZeroInvariantGroup],
        operators: Sequence[Operator],
        named_parameters: Mapping[str, torch.Tensor],
        budget: Budget,
        families: FamilyConstraints,
        schedule: PruningSchedule,
        sync: bool,
    ) -> None:
        self.groups, self.operators, self.schedule, self.sync = groups, list(operators), schedule, sync
        costs = self.group_costs = budget.costs.double().cpu()
        if budget.kind == "groups":
            totals = [float(len(op.group_ids)) for op in self.operators]
        else:
            totals = operator_costs_in(self.operators, budget.kind)
        # An operator's own cost: what it removes beyond its groups (its own tensors, for params or FLOPs).
        self.own = [max(0.0, total - float(costs[op.group_ids].sum())) for total, op in zip(totals, self.operators)]
        self.costs = [float(costs[op.group_ids].sum()) + own for op, own in zip(self.operators, self.own)]
        self.target, self.redundant = budget.target_cost, budget.redundant_cost
        self.family_of = [0] * len(groups)
        for index, family in enumerate(families.families):
            for group in family.group_ids:
                self.family_of[group] = index
        self.family_room = [family.max_zero for family in families.families]
        device = families.family_of.device
        self.member_ids = torch.tensor([i for op in self.operators for i in op.group_ids], dtype=torch.long)
        self.member_op = torch.repeat_interleave(torch.tensor([len(op.group_ids) for op in self.operators]))
        self.extra_names = sorted({name for op in self.operators for name in op.extra_params})
        self.extra_params = [named_parameters[name] for name in self.extra_names]
        pairs = [(j, self.extra_names.index(name)) for j, op in enumerate(self.operators) for name in op.extra_params]
        self.extra_op = torch.tensor([j for j, _ in pairs], dtype=torch.long)
        self.extra_index = torch.tensor([e for _, e in pairs], dtype=torch.long)
        self.member_ids, self.member_op = self.member_ids.to(device), self.member_op.to(device)
        self.extra_op, self.extra_index = self.extra_op.to(device), self.extra_index.to(device)
        self.sums = torch.zeros(len(self.operators), dtype=torch.float32, device=device)
        self.steps = 0
        self.erased: list[int] = []
        self.ramps: dict[str, tuple[int, int]] = {}  # own tensor -> (first, last step) of its ramp to zero
        self.ends: dict[int, int] = {}  # admitted operator -> last step of its ramp
        self._check_reachable()

    def _check_reachable(self) -> None:
        """The target must be reachable by narrowing within the quotas and erasing (`choose_units` raises)."""
        zeros = torch.zeros(len(self.groups), dtype=torch.float64)
        choose_units(self.groups, self.operators, zeros, torch.zeros(len(self.operators), dtype=torch.float64),
                     self.group_costs, self.costs, self.target,
                     family_of=self.family_of, family_room=self.family_room)  # fmt: skip

    @torch.no_grad()
    def accumulate(self, xg: torch.Tensor) -> None:
        """Add this step's squared mask gradient of every operator: `(sum of <x, grad> over its tensors)^2`."""
        total = torch.zeros_like(self.sums).index_add_(0, self.member_op, xg[self.member_ids].float())
        if self.extra_params:
            dots = torch.stack([
                (p.detach() * p.grad).sum().float() if p.grad is not None else p.new_zeros((), dtype=torch.float32)
                for p in self.extra_params
            ])  # fmt: skip
            total.index_add_(0, self.extra_op, dots[self.extra_index])
        self.sums += total.square()
        self.steps += 1

    def partition(
        self,
        state: GroupState,
        scores: torch.Tensor,
        group_importance: torch.Tensor,
        budget: Budget,
        norms: torch.Tensor,
        step: int,
    ) -> tuple[torch.Tensor, Budget]:
        """Choose and admit operators at a partition step; mark their groups due. Returns the scores with the
        admitted operators' groups first (as zero groups are) and the budget for groups (its target less the
        admitted operators' own cost)."""
        points = self.schedule.partition_points
        period = points.index(step)
        operator_importance = (self.sums / max(self.steps, 1)).double().cpu()
        self.sums.zero_()
        self.steps = 0
        taken = (state.zero | state.due).cpu()
        costs = self.group_costs
        choice = choose_units(
            self.groups, self.operators, group_importance.double().cpu(), operator_importance, costs, self.costs,
            self.target, family_of=self.family_of, family_room=self.family_room,
            fixed_groups=torch.nonzero(taken).flatten().tolist(), fixed_operators=self.erased,
        )  # fmt: skip
        quota = self.target * (period + 1) / len(points)
        removed = float(costs[taken].sum()) + sum(self.own[j] for j in self.erased)
        new = sorted(
            (j for j in choice.operators if j not in self.erased),
            key=lambda j: float(operator_importance[j]) / max(self.costs[j], TINY),
        )
        admitted = torch.zeros_like(taken)
        for j in new:
            op = self.operators[j]
            parts = [k for k in self.erased if set(self.operators[k].tensors) <= set(op.tensors)]
            members = torch.tensor(op.group_ids, dtype=torch.long)
            gain = float(costs[members[~taken[members]]].sum()) + self.own[j] - sum(self.own[k] for k in parts)
            if period < len(points) - 1 and removed + gain > quota:
                continue
            removed += gain
            self.erased = [k for k in self.erased if k not in parts] + [j]
            admitted[members[~taken[members]]] = True
            taken[members] = True
            end = self.ends[j] = self.schedule.ramp_end(period)
            for name in op.extra_params:
                self.ramps.setdefault(name, (step, end))
        if bool(admitted.any()):
            device = state.due_start.device
            ramps = mark_due(admitted.to(device), state.due_start, state.due_end, state.due_norm, norms, step,
                             self.schedule.ramp_end(period))  # fmt: skip
            state.due_start, state.due_end, state.due_norm = from_first_rank(*ramps) if self.sync else ramps
        erased_members = torch.zeros_like(taken)
        for j in self.erased:
            erased_members[self.operators[j].group_ids] = True
        scores = torch.where(erased_members, torch.full_like(scores, float("inf")), scores)
        return scores, self._budget_for_groups(budget)

    def _budget_for_groups(self, budget: Budget) -> Budget:
        """DHSPG's budget less the own cost of the admitted operators (which no group holds)."""
        own = sum(self.own[j] for j in self.erased)
        target = max(self.target - own, TINY)  # still active: the due groups go on to zero
        return dataclasses.replace(budget, target_cost=target, redundant_cost=max(self.redundant - own, target))

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        """Move the admitted operators' own tensors along their ramps: scaled so that they shrink linearly from the
        ramp's start, exactly zero from its last step on (and kept zero after every later step)."""
        params = dict(zip(self.extra_names, self.extra_params))
        for name, (first, last) in self.ramps.items():
            span = last + 1 - first
            now = max(0.0, 1.0 - (step + 1 - first) / span)
            before = max(0.0, 1.0 - (step - first) / span) if step > first else 1.0
            if now == 0.0:
                params[name].zero_()
            elif now < before:
                params[name].mul_(now / before)

    def to_dict(self) -> dict[str, Any]:
        """The run state, for `DHSPG.state_dict()` (plain values and a tensor: it loads with `weights_only=True`)."""
        return {
            "erased": list(self.erased),
            "ramps": {name: list(ramp) for name, ramp in self.ramps.items()},
            "ends": {str(j): end for j, end in self.ends.items()},
            "sums": self.sums.clone(),
            "steps": self.steps,
        }

    def load(self, state: dict[str, Any], budget: Budget) -> Budget:
        """Restore `to_dict()` from a DHSPG state dict; returns the budget for groups of that state."""
        if "erasing" not in state:
            raise ValueError("This state dict has no 'erasing' entry: it was written by a DHSPG without operators.")
        values = state["erasing"]
        self.erased = [int(j) for j in values["erased"]]
        self.ramps = {name: (int(first), int(last)) for name, (first, last) in values["ramps"].items()}
        self.ends = {int(j): int(end) for j, end in values["ends"].items()}
        self.sums = values["sums"].to(self.sums.device, self.sums.dtype).clone()
        self.steps = int(values["steps"])
        return self._budget_for_groups(budget)

    def removed_own_cost(self, num_steps: int) -> float:
        """Own cost of the admitted operators whose ramps have ended after `num_steps` steps."""
        return sum(self.own[j] for j in self.erased if self.ends[j] < num_steps)


def zero_operators(
    operators: Sequence[Operator], zero_group_ids: Sequence[int], named_parameters: Mapping[str, torch.Tensor]
) -> list[Operator]:
    """The operators that add exactly nothing: all their groups zero and all their own tensors zero. A whole block is
    preferred to its parts, so the result never overlaps (as `oto_hf.erase_operators` needs)."""
    zero = set(zero_group_ids)

    def adds_nothing(op: Operator) -> bool:
        own_zero = all(not bool(named_parameters[name].detach().any()) for name in op.extra_params)
        return bool(op.group_ids) and zero.issuperset(op.group_ids) and own_zero

    blocks = [op for op in operators if op.kind == "block" and adds_nothing(op)]
    covered = {name for op in blocks for name in op.tensors}
    parts = [op for op in operators if op.kind != "block" and adds_nothing(op) and not covered & set(op.tensors)]
    return blocks + parts
