"""`oto_hf.costs.group_flop_costs`: the FLOPs each group costs, for DHSPG's FLOPs budget."""

from __future__ import annotations

import copy

from oto_hf import DHSPG, construct_subnet, count_flops, group_flop_costs
from oto_hf.graph.discover import discover_groups
from tests.utils.data import TinyClassification
from tests.utils.train_tiny import tiny_model


def test_group_flop_costs_serve_dhspg_without_the_trainer():
    model = tiny_model(dropout=0.0)
    inputs = {"input_ids": TinyClassification(size=2).input_ids}
    groups = discover_groups(model, inputs)
    dense, costs = group_flop_costs(model, groups, inputs)
    head = next(g.id for g in groups if g.kind == "head")
    neuron = next(g.id for g in groups if g.kind == "neuron")
    # A neuron: one row of the 32-wide up projection and one column of the down projection, 2 FLOPs per MAC, 24 tokens.
    assert costs[neuron] == 2 * (32 + 32) * 24 and costs[head] > 12 * costs[neuron]
    # Counted on the meta device (where attention's matmuls are counted too); removing groups of two families saves
    # the sum of their costs.
    meta_inputs = {"input_ids": inputs["input_ids"].to("meta")}
    meta = copy.deepcopy(model).to("meta")
    assert dense == count_flops(meta, meta_inputs)
    smaller = construct_subnet(meta, groups, [head, neuron], verify=False)
    assert dense - count_flops(smaller, meta_inputs) == costs[head] + costs[neuron]
    optimizer = DHSPG.from_model(model, groups, sparsity_budget="flops", group_costs=costs, budget_total=dense,
                                 target_sparsity=0.3, pruning_end_steps=10)  # fmt: skip
    assert optimizer.sparsity_budget == "flops"
