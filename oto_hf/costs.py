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
    attention), a KV group costs what removing it with its query heads saves, and a query head its share of removing
    one query head from every KV group of its layer (removing fewer is padded back, `oto_hf.graph.nesting`). The
    inputs are fake tensors, as under `torch.export`: code that would read a tensor back to the host (transformers'
    padding and packed-sequence checks) takes its tracing path, which computes the same layers.

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
    return dense, costs


def _meta_copy(model: nn.Module) -> nn.Module:
    if isinstance(model, PreTrainedModel):
        with torch.device("meta"):
            return type(model)(copy.deepcopy(model.config))
    return copy.deepcopy(model).to("meta")
