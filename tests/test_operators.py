"""find_operators: the residual branches of every architecture of the table, found from the traced graph, with what
each holds and costs."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from oto_hf import SubnetMismatchError, count_flops, discover_groups
from oto_hf.erasing import erase_operators, find_operators
from oto_hf.graph.export import export_model
from oto_hf.graph.operators import Operator, find_branch_operators
from tests.utils.operators import Found, found_operators
from tests.utils.tiny_models import CASE_IDS, CASES_BY_NAME

TRANSFORMER_LAYERS = {"swin": 3, "albert": 0}  # numbered layers holding an attention and an FFN operator, if not 2
# Operators of the architectures that are not stacks of attention and FFN sub-blocks, per kind.
OTHER = {
    # One layer applied twice: its tensors are not any one branch's own.
    "albert": {},
    # Stage 0's bottleneck adds its input back (stage 1's adds a projected shortcut, not a residual stream).
    "resnet": {"ffn": 1},
    # Each layer scales its branch by a parameter of the layer itself, which also holds the add: nothing to replace.
    "convnext": {},
    # The inverted residual blocks whose input and output widths match (10 of 16).
    "mobilenet_v2": {"ffn": 10},
}


@pytest.fixture(params=CASE_IDS)
def found(request) -> Found:
    return found_operators(request.param)


def _kinds(operators: list[Operator]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for op in operators:
        counts[op.kind] = counts.get(op.kind, 0) + 1
    return counts


def test_every_sub_block_and_block_is_found(found, request):
    name = request.node.callspec.id
    layers = TRANSFORMER_LAYERS.get(name, 2)
    expected = OTHER.get(name, {"attention": layers, "ffn": layers, "block": layers})
    assert _kinds(found.operators) == expected
    for op in found.operators:
        kinds = {"attention": {"head", "kv_head"}, "ffn": {"neuron", "channel"}}.get(op.kind)
        in_layer = [g.id for g in found.groups if g.layer == op.layer and (kinds is None or g.kind in kinds)]
        if name not in OTHER:  # the whole sub-block: every head (or neuron) of the layer, and nothing else
            assert op.group_ids == in_layer, op


def test_the_branch_holds_its_own_tensors_only():
    """BERT is post-norm: the LayerNorm after the add is not in the branch (erasing makes the add an identity before
    it), the output projection's bias is. LLaMA is pre-norm: the norm that feeds only the branch is in it, and a whole
    block (both sub-blocks and their adds) is one module that returns its input."""
    operators = found_operators("bert").operators
    attention = next(op for op in operators if op.kind == "attention" and op.layer == 0)
    assert attention.extra_params == ["bert.encoder.layer.0.attention.output.dense.bias"]
    assert not any("LayerNorm" in name for name in attention.tensors)
    assert set(attention.replaced) == {
        "bert.encoder.layer.0.attention.self",
        "bert.encoder.layer.0.attention.output.dense",
    }

    operators = found_operators("llama").operators
    attention = next(op for op in operators if op.kind == "attention" and op.layer == 1)
    assert attention.extra_params == ["model.layers.1.input_layernorm.weight"]
    block = next(op for op in operators if op.kind == "block" and op.layer == 1)
    assert block.replaced == {"model.layers.1": "identity"}


def test_costs_are_what_erasing_saves(found):
    """Parameters and FLOPs (counted on meta and fake tensors) equal what the real erased model saves. Eager
    attention, whose matmuls the counter sees on any device (as in test_architectures)."""
    if not found.operators:
        pytest.skip("no operator")
    model = copy.deepcopy(found.model)
    model.set_attn_implementation("eager")
    inputs = found.groups.example_inputs
    operators = find_operators(model, found.groups, verify=False)
    dense = count_flops(model, inputs)
    params = dict(model.named_parameters())
    for op in (operators[0], operators[-1]):
        erased = erase_operators(model, [op], inputs)
        assert op.num_params == sum(params[name].numel() for name in op.tensors if name in params)
        assert op.num_params == sum(p.numel() for p in model.parameters()) - sum(
            p.numel() for p in erased.parameters()
        )
        assert op.flops == dense - count_flops(erased, inputs) > 0


def test_kv_cache_bytes_per_token():
    """Keys and values of each KV head (GQA: 2 for 4 query heads), head_dim 8, float32; encoders cache nothing."""
    by_kind = {op.kind: op for op in found_operators("llama").operators}
    assert by_kind["attention"].kv_cache_bytes_per_token == 2 * 2 * 8 * 4
    assert by_kind["block"].kv_cache_bytes_per_token == 2 * 2 * 8 * 4
    assert by_kind["ffn"].kv_cache_bytes_per_token == 0
    assert all(op.kv_cache_bytes_per_token == 0 for op in found_operators("bert").operators)


def test_a_shared_layer_is_not_an_operator_and_says_why():
    albert, groups = found_operators("albert").model, found_operators("albert").groups
    operators, skipped = find_branch_operators(export_model(albert, groups.example_inputs), groups, albert)
    assert operators == [] and skipped
    assert all("no group lies wholly inside it" in reason for reason in skipped)


def test_erasing_refuses_what_is_not_the_zero_masked_model():
    """The check of `erase_operators` (which `find_operators` uses to keep only exact operators): an operator whose
    keys, values and output projection are left out of what it zeroes does not add zero, so replacing its modules
    changes the model. In place, the model is left as it was."""
    llama, operators = found_operators("llama").model, found_operators("llama").operators
    broken = copy.deepcopy(operators[0])
    broken.tensors = [name for name in broken.tensors if "q_proj" in name]  # keys, values, output left as they are
    with pytest.raises(SubnetMismatchError, match="differs from the reference .* fed something other than the branch"):
        erase_operators(llama, [broken])
    model = copy.deepcopy(llama)
    with pytest.raises(SubnetMismatchError):
        erase_operators(model, [broken], inplace=True)
    assert [type(m) for m in model.modules()] == [type(m) for m in llama.modules()]  # left as it was
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), llama.state_dict().values()))


def test_operators_of_a_model_on_the_meta_device():
    """A model built on the meta device (a large model without its weights) has the same operators and prices; only
    the check by erasing, which needs values, is skipped."""
    with torch.device("meta"):
        meta = CASES_BY_NAME["llama"].build().eval()
    operators = find_operators(meta, discover_groups(meta))
    expected = found_operators("llama").operators
    assert [(op.kind, op.layer, op.replaced, op.num_params, op.flops) for op in operators] == [
        (op.kind, op.layer, op.replaced, op.num_params, op.flops) for op in expected
    ]


class _OnlyThroughTheBranch(nn.Module):
    """`y = s + mlp(s + h)` with `s = 0 * h`: a residual branch whose skip carries nothing, so erasing it would leave
    the output constant (and equal to the zero-masked model's)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 8)
        self.up, self.down = nn.Linear(8, 5), nn.Linear(5, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        s = h * 0
        return s + self.down(torch.relu(self.up(s + h)))


def test_a_branch_whose_erasing_disconnects_the_output_is_not_erasable():
    torch.manual_seed(0)
    model = _OnlyThroughTheBranch().eval()
    inputs = (torch.randn(2, 8),)  # a tuple: `GroupSet` cannot hold a bare tensor as its example inputs
    groups = discover_groups(model, inputs)
    structural, _ = find_branch_operators(export_model(model, inputs), groups, model)
    assert [op.kind for op in structural] == ["ffn"]
    assert find_operators(model, groups, inputs) == []
