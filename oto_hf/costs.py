"""What each group costs in FLOPs, for `DHSPG(sparsity_budget="flops", group_costs=...)` and the `kept_flops` log."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

# Private: `FakeTensorMode` (checked against torch 2.13, pinned by tests/test_private_apis.py).
from torch._subclasses.fake_tensor import FakeTensorMode
from transformers import PreTrainedModel

from .graph.groups import KV_HEAD, GroupSet
from .stats import count_flops
from .subnet import construct_subnet


def group_flop_costs(model: nn.Module, groups: GroupSet, example_inputs: Any) -> tuple[int, list[int]]:
    """The dense model's FLOPs on `example_inputs` and the FLOPs each group's removal saves.

    Counted on a meta-device copy (no weights are read or allocated), with one forward per family: the groups of a
    family (e.g. the heads of one layer) cost the same. With query heads nested in KV groups (grouped-query
    attention), a query head costs its share of removing one query head from every KV group of its layer (removing
    fewer is padded back, `oto_hf.graph.nesting`), and a KV group what removing it saves beyond its query heads (its
    key and value rows): removing a KV group with its query heads saves its cost plus theirs. The prices add up over
    a set of zero groups: DHSPG zeroes the query heads of a zero KV group too (nothing flows through them any more),
    and a KV group priced with its query heads would count them twice. The inputs are fake tensors, as under
    `torch.export`: code that would read a tensor back to the host (transformers' padding and packed-sequence checks)
    takes its tracing path, which computes the same layers.

    Example:
    ```python
    >>> dense, costs = group_flop_costs(model, groups, inputs)
    >>> optimizer = DHSPG.from_model(model, groups, sparsity_budget="flops", group_costs=costs, budget_total=dense,
    ...                              target_sparsity=0.5, pruning_end_steps=1000)  # half the FLOPs
    ```
    """
    meta = _meta_copy(model)
    # Meta weights join the fake mode where they are used (`allow_non_fake_inputs`); slicing stays outside it.
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    # Private: `torch.utils._pytree` (checked against torch 2.13, pinned by tests/test_private_apis.py).
    inputs = torch.utils._pytree.tree_map(
        lambda t: mode.from_tensor(t.to("meta")) if isinstance(t, torch.Tensor) else t, example_inputs
    )

    def flops(module: nn.Module) -> int:
        with mode:
            return count_flops(module, inputs)

    dense = flops(meta)
    costs = [0] * len(groups)
    for members in groups.families().values():
        nested = members[0].nest is not None and members[0].kind != KV_HEAD
        ids = list({g.nest: g.id for g in members}.values()) if nested else [members[0].id]
        smaller = construct_subnet(meta, groups, ids, verify=False, allow_empty_layers=True)
        per_group = (dense - flops(smaller)) // len(ids)
        for group in members:
            costs[group.id] = per_group
    for parent, children in groups.nests().values():
        if parent is not None:  # `construct_subnet` removed its query heads with it
            costs[parent.id] -= sum(costs[child.id] for child in children)
    return dense, costs


def _meta_copy(model: nn.Module) -> nn.Module:
    """The model on the meta device; rebuilt from its config unless it was pruned in memory (its config still holds
    the dense widths)."""
    if isinstance(model, PreTrainedModel) and getattr(model, "oto_pruning", None) is None:
        with torch.device("meta"):
            return type(model)(copy.deepcopy(model.config))
    return copy.deepcopy(model).to("meta")
