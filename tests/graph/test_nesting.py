"""Query heads nested in KV groups (grouped-query attention): discovery under every attention path, `select`, and
what `plan_removal` removes (construction, reload and generation of every GQA/MQA case: test_architectures.py)."""

import pytest
import torch
from transformers import (
    GemmaConfig,
    GemmaForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
)

from oto_hf import discover_groups
from oto_hf.graph.nesting import plan_removal
from tests.utils.asserts import assert_zero_invariant
from tests.utils.tiny_models import CASES_BY_NAME, TEXT, user_inputs


@pytest.fixture(scope="module")
def llama():
    """The table's GQA LLaMA (2 layers, 4 query heads in 2 KV groups, 37 neurons) and its groups."""
    torch.manual_seed(0)
    model = CASES_BY_NAME["llama"].build().eval()
    return model, discover_groups(model)


def _layout(groups):
    """Per layer: the KV group ids and, for each, its query head ids."""
    layout = {}
    for nest, (parent, children) in sorted(groups.nests().items()):
        layout.setdefault(children[0].layer, []).append((parent.id, [c.id for c in children]))
    return layout


def test_plan_removes_query_heads_with_their_kv_group_and_pads_uneven_ones(llama):
    _, groups = llama
    layout = _layout(groups)
    (kv0, (q0, q1)), (kv1, (q2, q3)) = layout[0]
    (kv2, (q4, q5)), (kv3, (q6, q7)) = layout[1]
    assert plan_removal(groups, [q0, q2]) == plan_removal(groups, [q2, q0])  # one per KV group: as asked
    assert plan_removal(groups, [q0, q2]).removed == [q0, q2] and not plan_removal(groups, [q0, q2]).padded
    kv = plan_removal(groups, [kv0])  # a KV group takes its query heads along
    assert (kv.removed, kv.implied, kv.padded) == (sorted([kv0, q0, q1]), [q0, q1], [])
    emptied = plan_removal(groups, [q6, q7])  # a KV group left without query heads goes too
    assert (emptied.removed, emptied.implied) == (sorted([kv3, q6, q7]), [kv3])
    uneven = plan_removal(groups, [q4])  # the other KV group keeps two: q4 stays, zero
    assert (uneven.removed, uneven.padded) == ([], [q4])
    mixed = plan_removal(groups, [kv0, q2, q3, q4, q5])  # a whole layer: nothing is padded back, it is all gone
    assert mixed.removed == sorted([kv0, q0, q1, kv1, q2, q3, kv2, q4, q5]) and not mixed.padded
    neurons = [g.id for g in groups if g.kind == "neuron"][:3]
    assert plan_removal(groups, neurons).removed == neurons  # other groups as asked


def test_select_keeps_kv_groups_only_with_all_their_query_heads(llama):
    _, groups = llama
    heads = groups.select(kinds=["head"])  # "head" covers the KV groups
    assert heads.counts() == {"head": 8, "kv_head": 4}
    kv = next(g for g in heads if g.kind == "kv_head")
    children = [g for g in heads if g.kind == "head" and g.nest == kv.nest]
    assert [heads.parent_of(c.id) for c in children] == [kv.id, kv.id]  # parents follow the new ids
    without_one = groups.select(where=lambda g: g.id != children[0].id)
    assert without_one.counts() == {"head": 7, "kv_head": 3, "neuron": 74}  # its KV group cannot go alone any more
    orphan = next(g for g in without_one if g.nest == kv.nest)
    assert without_one.parent_of(orphan.id) is None
    assert plan_removal(without_one, [orphan.id]).padded == [orphan.id]  # the KV group stays, with one query head


@pytest.mark.parametrize("attention", ["eager", "sdpa_padded_batch", "sdpa_enable_gqa"])
def test_every_attention_path_nests_the_same_heads(llama, attention, monkeypatch):
    """The fixture's groups come from SDPA after `repeat_kv` (expand and reshape; traced, the causal mask is a
    tensor). Eager attention (`repeat_kv`, then two matmuls), SDPA on a padded batch and SDPA with `enable_gqa=True`
    (transformers' choice on XPU/MPS, or on CUDA without a mask; forced here) give the same groups."""
    model, groups = llama
    inputs = user_inputs(model)
    if attention == "eager":
        model = LlamaForCausalLM(LlamaConfig(**TEXT, num_key_value_heads=2, attn_implementation="eager")).eval()
    elif attention == "sdpa_enable_gqa":
        monkeypatch.setenv("TRANSFORMERS_SDPA_FORCE_GQA", "1")
    found = discover_groups(model, inputs, probe=False)
    assert [repr(g) for g in found] == [repr(g) for g in groups]


@pytest.mark.parametrize(
    "build",
    [
        lambda: GemmaForCausalLM(GemmaConfig(**TEXT, num_key_value_heads=2, head_dim=8)),
        lambda: MistralForCausalLM(MistralConfig(**TEXT, num_key_value_heads=2)),
    ],
    ids=["gemma", "mistral"],
)
def test_gemma_and_mistral_gqa(build):
    torch.manual_seed(0)
    model = build().eval()
    groups = discover_groups(model)
    assert groups.counts() == {"head": 2 * 4, "kv_head": 2 * 2, "neuron": 2 * 37}
    layout = _layout(groups)
    (kv0, _), (_, (q2, _)) = layout[0]
    ids = [kv0, q2] + [children[0] for _, children in layout[1]]
    pruned = assert_zero_invariant(model, groups, ids)
    attention = pruned.model.layers[0].self_attn
    assert attention.num_key_value_groups == 1 and attention.k_proj.out_features == 8
    assert pruned.model.layers[1].self_attn.num_key_value_groups == 1


def test_mqa_query_heads_are_groups_and_its_kv_head_is_reported():
    torch.manual_seed(0)
    model = CASES_BY_NAME["mistral_mqa"].build().eval()
    groups = discover_groups(model)
    assert groups.counts() == {"head": 8, "neuron": 74}
    assert len(groups.nests()) == 2 and all(parent is None for parent, _ in groups.nests().values())
    reasons = [c.reason for c in groups.unprunable if "only removable key/value head" in c.reason]
    assert len(reasons) == 2 and "model.layers.0" in reasons[0]
