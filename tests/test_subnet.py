"""Subnet construction: default mask, in-place, width attributes, refusals, rollback, fused projections (every
architecture's random non-uniform mask is checked in test_architectures.py)."""

import copy

import pytest
import torch
from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel

from oto_hf import construct_subnet, discover_groups
from oto_hf import subnet as subnet_module
from tests.utils.asserts import masked_copy, max_output_diff
from tests.utils.tiny_models import TEXT


@pytest.fixture(scope="module")
def _discovered():
    """Tiny BertModel and GPT-2 discovered once per module: name -> (model, groups)."""
    found = {}
    for name, build in [
        ("bert", lambda: BertModel(BertConfig(**TEXT))),
        ("gpt2", lambda: GPT2LMHeadModel(GPT2Config(vocab_size=99, n_embd=32, n_layer=2, n_head=4, n_inner=37))),
    ]:
        torch.manual_seed(0)
        model = build().eval()
        found[name] = (model, discover_groups(model))
    return found


@pytest.fixture
def bert(_discovered):
    """A fresh copy of the tiny BertModel (tests may change it) and its groups."""
    model, groups = _discovered["bert"]
    return copy.deepcopy(model), groups


@pytest.fixture
def gpt2(_discovered):
    """A fresh copy of the tiny GPT-2 (tests may change it) and its groups."""
    model, groups = _discovered["gpt2"]
    return copy.deepcopy(model), groups


def test_default_removes_exactly_the_zero_groups(bert):
    model, groups = bert
    groups.zero_(model, [2, 9, 20])
    assert groups.zero_group_ids(model) == [2, 9, 20]
    pruned = construct_subnet(model, groups)
    assert pruned.oto_pruning.removed_groups == {"head": 1, "neuron": 2, "channel": 0}
    assert max_output_diff(pruned, model, groups.example_inputs) <= 1e-5


def test_original_is_untouched_unless_inplace(bert):
    model, groups = bert
    before = copy.deepcopy(model.state_dict())
    construct_subnet(model, groups, [0, 10])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    same = construct_subnet(model, groups, [0, 10], inplace=True)
    assert same is model and model.encoder.layer[0].attention.self.query.out_features == 24
    assert model.encoder.layer[0].attention.self.num_attention_heads == 3


def test_width_attributes_follow_the_weights(gpt2):
    model, groups = gpt2
    pruned = construct_subnet(model, groups, [0, 1, 8])  # two heads of layer 0, one neuron of layer 0
    attention = pruned.transformer.h[0].attn
    assert (attention.num_heads, attention.split_size, attention.c_attn.nf) == (2, 16, 48)
    assert pruned.transformer.h[0].mlp.c_fc.nf == 36


def test_removing_every_head_of_a_layer_is_refused(bert):
    model, groups = bert
    heads = [g.id for g in groups if g.kind == "head" and g.layer == 1]
    with pytest.raises(ValueError, match="all 4 heads of layer 1"):
        construct_subnet(model, groups, heads)


def test_empty_ffn_allowed_when_asked(bert):
    model, groups = bert
    neurons = [g.id for g in groups if g.kind == "neuron" and g.layer == 0]
    with pytest.raises(ValueError, match="allow_empty_layers=True"):
        construct_subnet(model, groups, neurons)
    pruned = construct_subnet(model, groups, neurons, allow_empty_layers=True)
    assert pruned.encoder.layer[0].intermediate.dense.out_features == 0
    assert max_output_diff(pruned, masked_copy(model, groups, neurons), groups.example_inputs) <= 1e-5


def test_unknown_group_ids(bert):
    model, groups = bert
    with pytest.raises(ValueError, match=r"Unknown group ids \[82, 100\].*\[0, 81\]"):
        construct_subnet(model, groups, [1, 82, 100])


def test_a_wrong_result_is_never_returned(gpt2, monkeypatch):
    model, groups = gpt2
    before = copy.deepcopy(model.state_dict())
    # Pretend oto_hf did not know GPT-2's `split_size`: the forward breaks, and the in-place model is restored.
    monkeypatch.setattr(subnet_module, "_scale_block_attributes", lambda *args: None)
    with pytest.raises(Exception):
        construct_subnet(model, groups, [0, 5], inplace=True)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.transformer.h[0].attn.c_attn.nf == 96


def test_fused_qkv_and_gate_up_projections_get_per_layer_widths():
    """Phi-3 splits `qkv_proj` at points read from the config at every forward: each layer gets its own copy."""
    from transformers import Phi3Config, Phi3ForCausalLM

    model = Phi3ForCausalLM(Phi3Config(**TEXT, num_key_value_heads=2, pad_token_id=0)).eval()
    groups = discover_groups(model)
    assert groups.counts() == {"head": 2 * 4, "kv_head": 2 * 2, "neuron": 2 * 37}
    kv = next(g for g in groups if g.kind == "kv_head" and g.layer == 1)
    qkv = next(s for s in kv.slices if s.name.endswith("qkv_proj.weight"))
    # KV head 0: key rows 32-39 and value rows 48-55 of the fused weight; its query heads hold rows 0-7 and 8-15
    assert qkv.indices.tolist() == list(range(32, 40)) + list(range(48, 56))
    heads = [g for g in groups if g.kind == "head" and g.layer == 1 and g.nest == kv.nest]
    assert [next(s for s in h.slices if s.name == qkv.name).indices.tolist() for h in heads] == [
        list(range(0, 8)),
        list(range(8, 16)),
    ]
    layer0_heads = [g.id for g in groups if g.kind == "kv_head" and g.layer == 0][:1]  # with its two query heads
    layer1_neurons = [g.id for g in groups if g.kind == "neuron" and g.layer == 1][:5]
    ids = layer0_heads + layer1_neurons
    pruned = construct_subnet(model, groups, ids)
    assert max_output_diff(pruned, masked_copy(model, groups, ids), groups.example_inputs) <= 1e-5
    layers = pruned.model.layers
    assert (layers[0].self_attn.config.num_attention_heads, layers[0].self_attn.config.num_key_value_heads) == (2, 1)
    assert layers[1].self_attn.config.num_attention_heads == 4 and layers[1].mlp.config.intermediate_size == 32
    assert pruned.config.num_attention_heads == 4 and pruned.config.intermediate_size == 37  # the model's own
    assert layers[1].mlp.gate_up_proj.out_features == 2 * 32
    pruned.set_attn_implementation("eager")  # settings changed later on the model's config still reach the layers
    assert layers[0].self_attn.config._attn_implementation == "eager"
    assert max_output_diff(pruned, masked_copy(model, groups, ids), groups.example_inputs) <= 1e-5


def test_eager_attention_heads_are_heads_and_their_counts_follow():
    """Attention written as matmuls (no SDPA) still yields head groups, so `num_attention_heads` is scaled."""
    model = BertModel(BertConfig(**TEXT, attn_implementation="eager")).eval()
    groups = discover_groups(model)
    assert groups.counts()["head"] == 8
    pruned = construct_subnet(model, groups, [0])
    assert pruned.encoder.layer[0].attention.self.num_attention_heads == 3


def test_a_bare_tensor_as_example_inputs_is_used_for_the_check():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    inputs = torch.randn(4, 6)
    groups = discover_groups(model, inputs)
    assert groups.example_inputs is inputs
    smaller = construct_subnet(model, groups, [0, 2])
    assert smaller[0].out_features == 3 and smaller.oto_pruning.flops_after is not None  # the check ran
    torch.testing.assert_close(smaller(inputs), masked_copy(model, groups, [0, 2])(inputs))
