"""What each group costs in FLOPs, for `DHSPG(sparsity_budget="flops", group_costs=...)` and the `kept_flops` log."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from .graph.groups import GroupSet
from .stats import count_flops
from .subnet import construct_subnet


def group_flop_costs(model: nn.Module, groups: GroupSet, example_inputs: Any) -> tuple[int, list[int]]:
    """The dense model's FLOPs on `example_inputs` and the FLOPs each group's removal saves.

    Counted on a meta-device copy (no weights are read or allocated), with one forward per family: the groups of a
    family (e.g. the heads of one layer) cost the same. `attention_mask` is left out of dict inputs: transformers reads
    padding masks back to the host, which meta tensors cannot do, and a mask does not change the layers' FLOPs.

    Example:
    ```python
    >>> dense, costs = group_flop_costs(model, groups, inputs)
    >>> optimizer = DHSPG.from_model(model, groups, sparsity_budget="flops", group_costs=costs, budget_total=dense,
    ...                              target_sparsity=0.5, pruning_end_steps=1000)  # half the FLOPs
    ```
    """
    meta = _meta_copy(model)
    # Private: `torch.utils._pytree` (checked against torch 2.13, pinned by tests/test_private_apis.py).
    inputs = torch.utils._pytree.tree_map(lambda t: t.to("meta") if isinstance(t, torch.Tensor) else t, example_inputs)
    if isinstance(inputs, dict):
        inputs = {k: v for k, v in inputs.items() if k != "attention_mask"}
    dense = count_flops(meta, inputs)
    costs = [0] * len(groups)
    for members in groups.families().values():
        smaller = construct_subnet(meta, groups, [members[0].id], verify=False, allow_empty_layers=True)
        per_group = dense - count_flops(smaller, inputs)
        for group in members:
            costs[group.id] = per_group
    return dense, costs


def _meta_copy(model: nn.Module) -> nn.Module:
    if isinstance(model, PreTrainedModel):
        with torch.device("meta"):
            return type(model)(copy.deepcopy(model.config))
    return copy.deepcopy(model).to("meta")
