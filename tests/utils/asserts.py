"""Shared checks: masks, zero-invariance and output comparison."""

from __future__ import annotations

import copy
from collections import defaultdict

import torch

from oto_hf import GroupSet
from oto_hf.stats import forward_outputs


def random_nonuniform_ids(groups: GroupSet, seed: int = 0) -> list[int]:
    """A different number of groups per family (layer and block), never all of one family, at least one somewhere."""
    generator = torch.Generator().manual_seed(seed)
    families: dict[tuple, list[int]] = defaultdict(list)
    for group in groups:
        families[tuple(sorted((s.name, s.dim) for s in group.slices))].append(group.id)
    chosen: list[int] = []
    for position, members in enumerate(families.values()):
        if len(members) < 2:
            continue
        count = 1 + (position + int(torch.randint(0, len(members) - 1, (1,), generator=generator))) % (len(members) - 1)
        order = torch.randperm(len(members), generator=generator)[:count]
        chosen += [members[i] for i in order.tolist()]
    return sorted(chosen)


def masked_copy(model, groups: GroupSet, ids: list[int]):
    masked = copy.deepcopy(model)
    groups.zero_(masked, ids)
    return masked


def max_output_diff(a, b, inputs) -> float:
    outputs_a, _ = forward_outputs(a, inputs)
    outputs_b, _ = forward_outputs(b, inputs)
    assert len(outputs_a) == len(outputs_b)
    return max(float((x - y).abs().max()) for x, y in zip(outputs_a, outputs_b))
