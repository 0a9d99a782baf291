"""H2SPG's choice: the Fisher importance of groups and whole operators (checked against autograd masks), and the
greedy choice of the cheapest units per importance under narrowing limits that do not limit erasing."""

from __future__ import annotations

import copy

import pytest
import torch

from oto_hf.graph.groups import TensorSlice, ZeroInvariantGroup
from oto_hf.graph.operators import Operator
from oto_hf.optim.h2spg import UnitImportance, choose_units, operator_costs_in
from tests.utils.operators import found_operators


def _loss(model, inputs, scales=None):
    """Mean square of the logits, with some parameters multiplied by a scale (a mask at 1)."""
    params = {name: p for name, p in model.named_parameters()}
    for name, scale in (scales or {}).items():
        params[name] = params[name] * scale
    return torch.func.functional_call(model, params, (), inputs).logits.square().mean()


def test_importance_is_the_squared_gradient_of_a_mask_on_the_unit():
    """An operator's importance is `(d loss / d m)^2` for one mask `m` on all its tensors (not the sum of its groups'
    importances); a group's is the same with a mask on its slices only."""
    found = found_operators("llama")
    model, groups, operators = copy.deepcopy(found.model), found.groups, found.operators
    inputs = groups.example_inputs
    meter = UnitImportance(model, groups, operators)
    _loss(model, inputs).backward()
    meter.accumulate()
    group_importance, operator_importance = meter.importance()

    attention = next(op for op in operators if op.kind == "attention" and op.layer == 0)
    mask = torch.ones((), requires_grad=True)
    params = dict(model.named_parameters())
    (grad,) = torch.autograd.grad(
        _loss(model, inputs, {name: mask for name in attention.tensors if name in params}), mask
    )
    index = operators.index(attention)
    assert torch.isclose(operator_importance[index], grad.double().square(), rtol=1e-4)
    members = group_importance[attention.group_ids].sum()
    assert not torch.isclose(operator_importance[index], members, rtol=1e-2)  # added before squaring

    group = groups[attention.group_ids[0]]
    mask = torch.ones((), requires_grad=True)
    scales = {}
    for name, dim, indices in group.slices:
        selector = torch.zeros(params[name].shape[dim])
        selector[indices] = 1.0
        shape = [1] * params[name].dim()
        shape[dim] = -1
        scales[name] = 1 + (mask - 1) * selector.reshape(shape)
    (grad,) = torch.autograd.grad(_loss(model, inputs, scales), mask)
    assert torch.isclose(group_importance[group.id], grad.double().square(), rtol=1e-4)


def _group(id: int, tensor: str, layer: int) -> ZeroInvariantGroup:
    return ZeroInvariantGroup(id, "neuron", layer, f"layers.{layer}", [TensorSlice(tensor, 0, torch.tensor([id]))])


def _toy(own: float = 0.5):
    """Two families of four groups (cost 1 each): an attention-like one (A) and an FFN-like one (B), each an operator
    with an own tensor (a norm) costing `own`, and the block of both."""
    groups = [_group(i, "a.weight", 0) for i in range(4)] + [_group(i, "b.weight", 0) for i in range(4, 8)]
    attention = Operator("attention", 0, "layers.0", [0, 1, 2, 3], ["a.weight", "a.norm"], ["a.norm"], {"a": "zero"})
    ffn = Operator("ffn", 0, "layers.0", [4, 5, 6, 7], ["b.weight", "b.norm"], ["b.norm"], {"b": "zero"})
    tensors = [*attention.tensors, *ffn.tensors]
    block = Operator("block", 0, "layers.0", list(range(8)), tensors, ["a.norm", "b.norm"], {"layers.0": "identity"})
    return groups, [attention, ffn, block], [1.0] * 8, [4 + own, 4 + own, 8 + 2 * own]


def test_an_operator_whose_removal_matters_little_is_erased_whole():
    groups, operators, costs, operator_costs = _toy()
    group_importance = torch.ones(8)
    operator_importance = torch.tensor([0.1, 9.0, 9.0])  # A's groups cancel when removed together
    choice = choose_units(groups, operators, group_importance, operator_importance, costs, operator_costs, 4.5)
    assert choice == choice.__class__([0, 1, 2, 3], [0], 4.5)
    narrow = choose_units(groups, operators, group_importance, operator_importance, costs, operator_costs, 4.5,
                          erase=False)  # fmt: skip
    assert narrow.operators == [] and len(narrow.group_ids) == 5 and narrow.removed_cost == 5.0


def test_max_family_sparsity_limits_narrowing_not_erasing():
    groups, operators, costs, operator_costs = _toy()
    group_importance = torch.arange(8, dtype=torch.float64)
    cheap_ffn = torch.tensor([9.0, 0.5, 99.0])
    choice = choose_units(groups, operators, group_importance, cheap_ffn, costs, operator_costs, 6.5,
                          max_family_sparsity=0.5)  # fmt: skip
    assert choice.operators == [1] and choice.group_ids == [0, 1, 4, 5, 6, 7]  # B erased, A narrowed to its cap
    assert choice.removed_cost == 6.5
    with pytest.raises(ValueError, match="can be removed with `max_family_sparsity=0.5` and erasing off"):
        choose_units(groups, operators, group_importance, cheap_ffn, costs, operator_costs, 6.5,
                     max_family_sparsity=0.5, erase=False)  # fmt: skip


def test_a_block_adds_only_what_its_erased_part_did_not_remove():
    groups, operators, costs, operator_costs = _toy()
    # The attention first, then the block (the FFN alone is dearer): the block adds B's groups and B's norm.
    importance = torch.tensor([0.1, 50.0, 10.0])
    choice = choose_units(groups, operators, torch.full((8,), 100.0), importance, costs, operator_costs, 9.0)
    assert choice.operators == [2] and choice.group_ids == list(range(8)) and choice.removed_cost == 9.0


def test_operator_costs_in_the_budget_unit():
    groups, operators, *_ = _toy()
    operators[0].num_params, operators[0].flops = 10, 100
    assert operator_costs_in(operators[:1], "params") == [10.0]
    assert operator_costs_in(operators[:1], "flops") == [100.0]
    with pytest.raises(ValueError, match="no FLOPs"):
        operator_costs_in(operators[1:], "flops")
    with pytest.raises(ValueError, match="'params' or 'flops'"):
        operator_costs_in(operators, "groups")
