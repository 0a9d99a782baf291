"""Family keys: groups that slice the same tensors along the same dims form a *family* (the heads of one attention
layer, the neurons of one FFN). The optimizer's per-family constraints and `bottleneck_families` both name families
by this key."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .groups import ZeroInvariantGroup

FamilyKey = tuple[tuple[str, int], ...]


def family_key(group: ZeroInvariantGroup) -> FamilyKey:
    """The tensors (`(name, dim)` pairs, sorted) a group slices: groups with equal keys form a family."""
    return tuple(sorted((name, dim) for name, dim, _ in group.slices))
