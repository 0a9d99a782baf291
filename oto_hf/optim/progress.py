"""DHSPG's read-only progress: phase, schedule points, zero and redundant groups, removed fraction, importance.

A mixin of `DHSPG` over its run state (`_groups`), schedule, families, budget and costs; nothing here changes them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .families import FamilyConstraints, GroupFamily
    from .group_state import GroupState
    from .operator_erasing import OperatorErasing
    from .output_importance import OutputImportance
    from .packed_index import GroupIndex
    from .schedule import PruningSchedule
    from .selection import Budget


class DHSPGProgress:
    """Read-only views of a DHSPG run (the attributes below are set by `DHSPG.__init__`)."""

    _index: GroupIndex
    _schedule: PruningSchedule
    _groups: GroupState
    _families: FamilyConstraints
    _budget: Budget
    _costs: torch.Tensor
    _erasing: OperatorErasing | None
    _source: OutputImportance | None
    _num_steps: int
    uniform_widths: bool

    @property
    def num_groups(self) -> int:
        """Number of prunable groups."""
        return self._index.num_groups

    @property
    def num_steps(self) -> int:
        """Calls to `step()` so far."""
        return self._num_steps

    @property
    def phase(self) -> str:
        """Phase of the next step: `"warmup"`, `"pruning"` or `"recovery"`."""
        return self._schedule.phase(self._num_steps)

    @property
    def partition_points(self) -> tuple[int, ...]:
        """Steps (0-based counts of earlier `step()` calls) at which groups are scored and the redundant set chosen."""
        return self._schedule.partition_points

    @property
    def pruning_end_steps(self) -> int:
        """Number of steps after which exactly the target is zero."""
        return self._schedule.pruning_end_steps

    @property
    def target_num_zero_groups(self) -> int | None:
        """Groups zero from `pruning_end_steps` on: known upfront for `sparsity_budget="groups"` or with
        `uniform_widths` (without `round_to`), else once the deadline passed."""
        if self._families.constrained and self.uniform_widths and not self._families.rounded:
            return sum(family.max_zero for family in self._families.families)
        if self._budget.kind == "groups" and not self._families.rounded:
            return int(self._budget.target_cost)
        if not self._budget.active:
            return 0
        return self._groups.final_num_zero_groups

    @property
    def families(self) -> tuple[GroupFamily, ...]:
        """The families (groups that share tensors, e.g. the heads of one layer) with their constraints; read-only."""
        return self._families.families

    @property
    def importance(self) -> torch.Tensor:
        """Per group, the mean of `<x_g, grad_g>^2` over the steps since the last partition (the Fisher estimate of
        the loss increase from zeroing it; accumulated with `saliency="fisher"`; with `"output"`, the importance
        source's estimate); a copy."""
        if self._source is not None:
            return self._source.importance().to(self._groups.importance.device)
        return self._groups.importance / max(self._groups.importance_steps, 1)

    @property
    def num_forced_zero_groups(self) -> int:
        """Groups the deadline projected because the optimizer's steps had not zeroed them (0 before the deadline)."""
        return self._groups.num_forced

    def family_zero_counts(self) -> list[int]:
        """Number of zero groups in each family, in `families` order (reads values back from the device)."""
        return self._families.zero_counts(self._groups.zero).tolist()

    @property
    def lambdas(self) -> torch.Tensor:
        """Per-group lambda of the last pruning step (zero outside the penalised redundant groups); a copy."""
        return self._groups.lambdas.clone()

    def num_zero_groups(self) -> int:
        """Number of groups that are zero now (reads a value back from the device)."""
        return int(self._groups.zero.sum())

    def group_sparsity(self) -> float:
        """Fraction of groups that are zero now (reads a value back from the device)."""
        return self.num_zero_groups() / self.num_groups if self.num_groups else 0.0

    def removed_fraction(self) -> float:
        """Removed fraction in the budget's unit: zero cost over `budget_total` (`group_sparsity` for groups)."""
        removed = float((self._costs * self._groups.zero).sum())
        removed += self._erasing.removed_own_cost(self._num_steps) if self._erasing else 0.0
        return removed / self._budget.total if self._budget.total else 0.0

    def zero_group_ids(self) -> list[int]:
        """Ids of the zero groups, e.g. for `construct_subnet`."""
        return torch.nonzero(self._groups.zero).flatten().tolist()

    def redundant_group_ids(self) -> list[int]:
        """Ids of the current redundant set (empty before the first partition step)."""
        return torch.nonzero(self._groups.redundant).flatten().tolist()
