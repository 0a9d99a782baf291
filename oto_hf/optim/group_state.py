"""DHSPG's per-group run state: zero, redundant and due masks, ramps and priority orders, and its checkpoint."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch

from .families import FamilyConstraints

_DTYPES = {
    "zero": torch.bool,
    "redundant": torch.bool,
    "priority": torch.long,
    "due_start": torch.long,
    "due_end": torch.long,
    "due_norm": torch.float32,
}


@dataclass
class GroupState:
    """Per-group vectors on the optimizer's device. `family_order` is derived from `priority` (not checkpointed)."""

    zero: torch.Tensor
    redundant: torch.Tensor
    priority: torch.Tensor
    family_order: torch.Tensor
    due_start: torch.Tensor
    due_end: torch.Tensor
    due_norm: torch.Tensor

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
        )

    @property
    def due(self) -> torch.Tensor:
        """Groups whose ramp to zero has started (zero ones included)."""
        return self.due_start >= 0

    def to_dict(self) -> dict[str, torch.Tensor]:
        """Copies of the checkpointed vectors."""
        return {key: getattr(self, key).clone() for key in _DTYPES}

    @classmethod
    def from_dict(cls, values: dict[str, Any], families: FamilyConstraints, device: torch.device) -> GroupState:
        """Rebuild from `to_dict()` output (e.g. a loaded checkpoint) on `device`."""
        restored = {key: values[key].to(device=device, dtype=dtype).clone() for key, dtype in _DTYPES.items()}
        return cls(**restored, family_order=families.family_order(restored["priority"]))

    def to(self, device: torch.device) -> GroupState:
        """The same state on `device`."""
        return GroupState(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def nbytes(self) -> int:
        return sum(getattr(self, f.name).numel() * getattr(self, f.name).element_size() for f in fields(self))
