"""DHSPG's run state: per-group masks, ramps, priority orders, lambdas and importance, a few counters, and their
checkpoint."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from .families import FamilyConstraints

# The checkpointed per-group vectors and their dtypes.
_DTYPES = {
    "zero": torch.bool,
    "redundant": torch.bool,
    "priority": torch.long,
    "due_start": torch.long,
    "due_end": torch.long,
    "due_norm": torch.float32,
    "lambdas": torch.float32,
    "importance": torch.float32,
}
_COUNTERS = ("importance_steps", "num_forced", "final_num_zero_groups")


@dataclass
class GroupState:
    """Per-group vectors on the optimizer's device, and counters. `family_order` is derived from `priority` (not
    checkpointed)."""

    zero: torch.Tensor
    redundant: torch.Tensor
    priority: torch.Tensor
    family_order: torch.Tensor
    due_start: torch.Tensor
    due_end: torch.Tensor
    due_norm: torch.Tensor
    lambdas: torch.Tensor  # of the last pruning step; zero outside the penalised redundant groups
    importance: torch.Tensor  # sum of `<x_g, grad_g>^2` over the `importance_steps` steps since the last partition
    importance_steps: int = 0
    num_forced: int = 0  # groups the deadline projected
    final_num_zero_groups: int | None = None  # zero groups after the deadline

    @classmethod
    def initial(cls, num_groups: int, families: FamilyConstraints, device: torch.device) -> GroupState:
        """Nothing zero, redundant or due yet; priority by group id."""
        priority = torch.arange(num_groups, device=device)
        return cls(
            zero=torch.zeros(num_groups, dtype=torch.bool, device=device),
            redundant=torch.zeros(num_groups, dtype=torch.bool, device=device),
            priority=priority,
            family_order=families.family_order(priority),
            due_start=torch.full((num_groups,), -1, dtype=torch.long, device=device),
            due_end=torch.full((num_groups,), -1, dtype=torch.long, device=device),
            due_norm=torch.zeros(num_groups, dtype=torch.float32, device=device),
            lambdas=torch.zeros(num_groups, dtype=torch.float32, device=device),
            importance=torch.zeros(num_groups, dtype=torch.float32, device=device),
        )

    @property
    def due(self) -> torch.Tensor:
        """Groups whose ramp to zero has started (zero ones included)."""
        return self.due_start >= 0

    def to_dict(self, families: FamilyConstraints) -> dict[str, Any]:
        """Copies of the checkpointed vectors, the counters, the group count and the families' quotas (checked on
        load): plain Python values and tensors only, so that it loads with `torch.load(path, weights_only=True)`."""
        return {
            **{key: getattr(self, key).clone() for key in _DTYPES},
            **{key: getattr(self, key) for key in _COUNTERS},
            "num_groups": len(self.zero),
            "family_max_zero": families.max_zero.clone(),
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any], families: FamilyConstraints, device: torch.device) -> GroupState:
        """Rebuild from `to_dict()` output (e.g. a loaded checkpoint) on `device`, for the same groups and families."""
        num_groups = len(families.family_of)
        if values["num_groups"] != num_groups:
            raise ValueError(
                f"The state dict is for {values['num_groups']} groups, but this optimizer has {num_groups}."
            )
        if not torch.equal(values["family_max_zero"].cpu(), families.max_zero.cpu()):
            raise ValueError(
                "The state dict was written with other family quotas (the per-layer minimums, `uniform_widths` or "
                "`target_sparsity` differ); build the optimizer with the arguments of the saved run."
            )
        restored = {key: values[key].to(device=device, dtype=dtype).clone() for key, dtype in _DTYPES.items()}
        counters = {key: values[key] for key in _COUNTERS}
        return cls(**restored, **counters, family_order=families.family_order(restored["priority"]))

    def to(self, device: torch.device) -> GroupState:
        """The same state on `device`."""
        tensors = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in _COUNTERS}
        return dataclasses.replace(self, **{name: tensor.to(device) for name, tensor in tensors.items()})

    def nbytes(self) -> int:
        """Bytes of the per-group vectors."""
        tensors = [getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in _COUNTERS]
        return sum(t.numel() * t.element_size() for t in tensors)
