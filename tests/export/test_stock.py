"""The `"stock"` format: the model's own config, every layer zero-padded to the widest, the same outputs."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, BertConfig, BertModel, Phi3Config, Phi3ForCausalLM

from oto_hf import count_parameters, save_pruned
from oto_hf.export.decoder import LayerWidths, fewest_kv_heads, head_sources, plan_attention, plan_query_heads
from oto_hf.saving import export_pruned
from tests.export.pruned_llms import (
    greedy,
    logits,
    pruned_llm,
    slice_attention,
    tiny_llm,
    widths,
)
from tests.utils.tiny_models import TEXT


@pytest.fixture(scope="module", params=["llama", "qwen2", "qwen3", "mistral"])
def exported(request, tmp_path_factory):
    """(pruned model, its report, the folder reloaded with plain transformers)."""
    pruned = pruned_llm(request.param)
    report = export_pruned(pruned, tmp_path_factory.mktemp("stock") / request.param, format="stock")
    return pruned, report, AutoModelForCausalLM.from_pretrained(report.path).eval()


def test_the_config_is_the_stock_one_with_the_widest_layer(exported):
    pruned, report, reloaded = exported
    config = json.loads((report.path / "config.json").read_text())
    assert config["model_type"] == pruned.config.model_type
    assert config["architectures"] == [type(pruned).__name__]
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["intermediate_size"]) == (8, 4, 36)
    assert config["head_dim"] == 4 and "auto_map" not in config and "oto_tensor_shapes" not in config
    assert config["oto_pruning_summary"]["params_after"] == count_parameters(pruned)
    assert type(reloaded).__name__ == type(pruned).__name__
    assert widths(reloaded) == [(8, 4, 36)] * 3


def test_padding_is_exact(exported):
    pruned, _, reloaded = exported
    torch.testing.assert_close(logits(reloaded), logits(pruned), atol=1e-5, rtol=1e-5)
    assert greedy(reloaded) == greedy(pruned)


def test_the_report_says_what_the_padding_costs(exported):
    pruned, report, reloaded = exported
    own = widths(pruned)  # (8, 4, 7), (4, 2, 18), (6, 3, 36)
    assert {(p.layer, p.kind): (p.kept, p.written) for p in report.padded} == {
        (0, "ffn"): (7, 36),
        (1, "heads"): (4, 8),
        (1, "kv_heads"): (2, 4),
        (1, "ffn"): (18, 36),
        (2, "heads"): (6, 8),
        (2, "kv_heads"): (3, 4),
    }
    assert report.padded_parameters == count_parameters(reloaded) - count_parameters(pruned) > 0
    head_dim, hidden = 4, TEXT["hidden_size"]
    extra_heads, extra_kv = sum(8 - w[0] for w in own), sum(4 - w[1] for w in own)
    extra_neurons = sum(36 - w[2] for w in own)
    added_weights = hidden * head_dim * 2 * (extra_heads + extra_kv) + 3 * hidden * extra_neurons
    assert report.padded_flops_per_token == 2 * added_weights
    assert report.padded_attention_flops_per_context_token == 4 * head_dim * extra_heads
    assert report.padded_kv_bytes_per_token == 2 * head_dim * extra_kv * 4  # float32
    assert "+" in report.summary() and "KV-cache bytes/token" in report.summary()
    recorded = json.loads((report.path / "config.json").read_text())["oto_export"]
    assert recorded == {
        "format": "stock",
        "padded_parameters": report.padded_parameters,
        "padded_flops_per_token": report.padded_flops_per_token,
        "padded_attention_flops_per_context_token": report.padded_attention_flops_per_context_token,
        "padded_kv_bytes_per_token": report.padded_kv_bytes_per_token,
    }


@torch.no_grad()
def test_kv_heads_are_copied_when_a_layer_has_larger_query_groups(tmp_path):
    """Layers 0 and 1 keep one query head per KV head (groups of 1), layer 2 one KV head with both its query heads (a
    group of 2): four query heads in four KV groups hold them all, with layer 2's KV head written twice."""
    model = tiny_llm("llama")
    slice_attention(model, 0, query_heads=[0, 2, 4, 6], kv_heads=[0, 1, 2, 3])
    slice_attention(model, 1, query_heads=[1, 3, 5, 7], kv_heads=[0, 1, 2, 3])
    slice_attention(model, 2, query_heads=[2, 3], kv_heads=[1])
    assert [w[:2] for w in widths(model)] == [(4, 4), (4, 4), (2, 1)]
    report = export_pruned(model, tmp_path / "out", format="stock")
    reloaded = AutoModelForCausalLM.from_pretrained(report.path).eval()
    assert [w[:2] for w in widths(reloaded)] == [(4, 4)] * 3
    k_proj = reloaded.model.layers[2].self_attn.k_proj.weight
    torch.testing.assert_close(k_proj[0:4], k_proj[4:8])  # the copy
    assert k_proj[8:].abs().sum() == 0
    torch.testing.assert_close(logits(reloaded), logits(model), atol=1e-5, rtol=1e-5)
    assert greedy(reloaded) == greedy(model)
    assert report.padded_kv_bytes_per_token == 2 * 4 * 3 * 4  # 3 more KV heads of head_dim 4 in float32


def test_plan_attention_prefers_copies_to_wider_layouts_and_respects_the_config():
    layers = [LayerWidths(heads=4, kv_heads=4, ffn=1), LayerWidths(heads=2, kv_heads=1, ffn=1)]
    assert plan_attention(layers, dense=(8, 4), valid=lambda heads, kv_heads: True) == (4, 4)
    assert head_sources(layers[1], 4, 4) == ([0, 1, -1, -1], [0, 0, -1, -1])
    assert head_sources(LayerWidths(heads=4, kv_heads=2, ffn=1), 8, 2) == ([0, 1, -1, -1, 2, 3, -1, -1], [0, 1])
    three = [LayerWidths(heads=3, kv_heads=3, ffn=1)]
    assert plan_attention(three, dense=(4, 4), valid=lambda heads, kv_heads: True) == (3, 3)
    # LLaMA's config requires hidden_size % num_attention_heads == 0: 3 heads do not divide 32, 4 do.
    assert plan_attention(three, dense=(4, 4), valid=lambda heads, kv_heads: 32 % heads == 0) == (4, 4)


def test_per_layer_kv_heads_are_the_fewest_that_hold_each_layer():
    layers = [LayerWidths(heads=8, kv_heads=4, ffn=1), LayerWidths(heads=4, kv_heads=2, ffn=1)]
    assert plan_query_heads(layers, dense=(8, 4)) == 8
    assert [fewest_kv_heads(w, 8) for w in layers] == [4, 2]  # 2 groups of 4 hold layer 1's 2 groups of 2
    assert fewest_kv_heads(LayerWidths(heads=3, kv_heads=1, ffn=1), 9) == 1
    assert fewest_kv_heads(LayerWidths(heads=0, kv_heads=0, ffn=1), 9) == 1


@torch.no_grad()
def test_erased_operators_are_written_as_zeros(tmp_path):
    """Layer 0's attention, layer 1's whole block and layer 2's FFN erased (`erase_operators`) after narrowing: the
    stock model holds zeros there and computes the same."""
    model = pruned_llm("llama", erase={"attention": 0, "block": 1, "ffn": 2})
    report = export_pruned(model, tmp_path / "out", format="stock")
    reloaded = AutoModelForCausalLM.from_pretrained(report.path).eval()
    layers = reloaded.model.layers
    assert layers[0].self_attn.q_proj.weight.abs().sum() == 0 and layers[2].mlp.down_proj.weight.abs().sum() == 0
    assert sum(p.abs().sum() for p in layers[1].parameters()) == 0
    torch.testing.assert_close(logits(reloaded), logits(model), atol=1e-5, rtol=1e-5)
    assert greedy(reloaded) == greedy(model)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: BertModel(BertConfig(**TEXT)), "writes LLaMA-family decoders .* BertModel has no decoder `layers`"),
        (
            lambda: Phi3ForCausalLM(Phi3Config(**TEXT, num_key_value_heads=2, pad_token_id=0)),
            r"layer 0 of Phi3ForCausalLM has no nn.Linear self_attn.q_proj, self_attn.k_proj, .*mlp.gate_proj",
        ),
    ],
)
def test_other_architectures_are_refused_and_nothing_is_written(build, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        save_pruned(build(), tmp_path / "out", format="stock")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("format", ["stock", "decilm"])
def test_a_model_reloaded_from_an_oto_folder_exports_the_same(format, tmp_path):
    pruned = pruned_llm("llama")
    save_pruned(pruned, tmp_path / "oto")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "oto").eval()
    assert reloaded.config.model_type == "oto_llama"
    report = export_pruned(reloaded, tmp_path / format, format=format)
    config = json.loads((report.path / "config.json").read_text())
    assert {key for key in config if key.startswith("oto_")} == {"oto_hf_version", "oto_pruning_summary", "oto_export"}
    exported = AutoModelForCausalLM.from_pretrained(report.path, trust_remote_code=True).eval()
    torch.testing.assert_close(logits(exported), logits(pruned), atol=1e-5, rtol=1e-5)
