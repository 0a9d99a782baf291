"""The `"decilm"` format: `nemotron-nas` block_configs with exact FFN widths, no-op sub-blocks and uniform attention,
loaded with `trust_remote_code=True` in a process without oto_hf."""

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaModel, MistralConfig, MistralForCausalLM, Qwen3Config, Qwen3ForCausalLM

from oto_hf import discover_groups, save_pruned
from oto_hf.erasing import erase_operators, find_operators
from oto_hf.export.decilm import FFN_MULT_GRID, ffn_block
from oto_hf.saving import export_pruned
from tests.export.pruned_llms import (
    greedy,
    load_without_oto_hf,
    logits,
    pruned_llm,
    tiny_llm,
    widths,
)
from tests.utils.tiny_models import TEXT

# (architecture, `kv_heads` option) -> each layer's `n_heads_in_group` under 8 query heads, for PLAN's widths (8, 4),
# (4, 2), (6, 3): per layer, layer 1's 4 query heads in 2 KV groups fit 2 groups of 4; uniform, 4 groups everywhere.
CASES = {("llama", "per_layer"): [2, 4, 2], ("qwen2", "per_layer"): [2, 4, 2], ("mistral", "uniform"): [2, 2, 2]}


@pytest.fixture(scope="module", params=list(CASES), ids="-".join)
def exported(request, tmp_path_factory):
    """(pruned model, its report, what a process without oto_hf loaded from the folder, the expected groups)."""
    name, kv_heads = request.param
    root = tmp_path_factory.mktemp("decilm")
    pruned = pruned_llm(name)
    report = export_pruned(pruned, root / name, format="decilm", kv_heads=kv_heads)
    return pruned, report, load_without_oto_hf(report.path, root / "modules"), CASES[request.param]


def test_the_config_has_a_block_per_layer(exported):
    pruned, report, _, groups = exported
    config = json.loads((report.path / "config.json").read_text())
    assert config["model_type"] == "nemotron-nas" and config["architectures"] == ["DeciLMForCausalLM"]
    assert config["auto_map"] == {
        "AutoConfig": "configuration_decilm.DeciLMConfig",
        "AutoModelForCausalLM": "modeling_decilm.DeciLMForCausalLM",
    }
    assert {"configuration_decilm.py", "modeling_decilm.py", "model.safetensors"} <= {
        p.name for p in report.path.iterdir()
    }
    assert (config["num_attention_heads"], config["head_dim"]) == (8, 4)
    own = widths(pruned)
    for block, (_, _, ffn), group in zip(config["block_configs"], own, groups):
        assert block["attention"] == {"no_op": False, "replace_with_linear": False, "n_heads_in_group": group}
        # Widths off the 256 grid: `ffn_mult` is absent, so vLLM reads `intermediate_size`.
        assert block["ffn"] == {"no_op": False, "replace_with_linear": False, "intermediate_size": ffn}
    is_qwen2 = pruned.config.model_type == "qwen2"
    assert config["attention_bias"] is False and config.get("qkv_bias") is (True if is_qwen2 else None)
    assert config["tie_word_embeddings"] is is_qwen2


def test_it_loads_without_oto_hf_and_generates_the_same_tokens(exported):
    pruned, _, loaded, _ = exported
    assert loaded["class"] == "DeciLMForCausalLM"
    torch.testing.assert_close(torch.tensor(loaded["logits"]), logits(pruned), atol=1e-5, rtol=1e-5)
    assert loaded["tokens"] == greedy(pruned)


def test_only_attention_is_padded(exported):
    pruned, report, _, groups = exported
    uniform = groups == [2, 2, 2]
    expected = {(1, "heads"): (4, 8), (2, "heads"): (6, 8), (2, "kv_heads"): (3, 4)}
    if uniform:
        expected[(1, "kv_heads")] = (2, 4)
    assert {(p.layer, p.kind): (p.kept, p.written) for p in report.padded} == expected
    extra_heads, extra_kv, head_dim, hidden = 4 + 2, (2 if uniform else 0) + 1, 4, TEXT["hidden_size"]
    assert report.padded_flops_per_token == 2 * hidden * head_dim * 2 * (extra_heads + extra_kv)
    assert report.padded_kv_bytes_per_token == 2 * head_dim * extra_kv * 4
    biases = head_dim * (extra_heads + 2 * extra_kv) if pruned.config.model_type == "qwen2" else 0
    assert report.padded_parameters == report.padded_flops_per_token // 2 + biases
    assert any("`intermediate_size` only" in note for note in report.notes)
    recorded = json.loads((report.path / "config.json").read_text())["oto_export"]
    assert recorded["format"] == "decilm" and recorded["padded_parameters"] == report.padded_parameters


def test_erased_operators_are_no_ops_and_generate_uses_the_cache(tmp_path):
    """Layer 1's block and layer 2's FFN erased after narrowing (`erase_operators`): no-op sub-blocks without
    weights. Layer 0's erased attention comes before its FFN, which vLLM's DeciLM layer cannot run (it starts the
    residual stream in the first attention), so it is written as zero heads. The same logits and greedy tokens."""
    model = pruned_llm("llama", erase={"attention": 0, "block": 1, "ffn": 2})
    report = export_pruned(model, tmp_path / "out", format="decilm")
    blocks = json.loads((report.path / "config.json").read_text())["block_configs"]
    no_op_attention = {"no_op": True, "replace_with_linear": False, "n_heads_in_group": None}
    no_op_ffn = {"no_op": True, "replace_with_linear": False, "ffn_mult": None}
    assert [block["attention"] == no_op_attention for block in blocks] == [False, True, False]
    assert blocks[0]["attention"]["n_heads_in_group"] == 6  # one zero KV head
    assert [block["ffn"] == no_op_ffn for block in blocks] == [False, True, True]
    assert any("layer 0's empty attention is written as zero heads" in note for note in report.notes)
    # Layer 2 keeps 6 query and 3 KV heads (head_dim 4): layer 0 gets 6 zero query heads, 1 zero KV head, its norm.
    assert {(p.layer, p.kind): (p.kept, p.written) for p in report.padded} == {
        (0, "heads"): (0, 6),
        (0, "kv_heads"): (0, 1),
    }
    hidden = TEXT["hidden_size"]
    assert report.padded_parameters == hidden * 4 * (6 + 1 + 1 + 6) + hidden
    loaded = load_without_oto_hf(report.path, tmp_path / "modules")
    torch.testing.assert_close(torch.tensor(loaded["logits"]), logits(model), atol=1e-5, rtol=1e-5)
    assert loaded["tokens"] == greedy(model)


def test_a_first_erased_block_stays_a_no_op_and_the_next_lone_ffn_gets_zero_heads(tmp_path):
    """Layer 0 erased whole passes the stream on (vLLM too); layer 1's FFN would be the first before an attention."""
    model = pruned_llm("llama", erase={"block": 0, "attention": 1})
    report = export_pruned(model, tmp_path / "out", format="decilm")
    blocks = json.loads((report.path / "config.json").read_text())["block_configs"]
    assert [block["attention"]["no_op"] for block in blocks] == [True, False, False]
    assert [block["ffn"]["no_op"] for block in blocks] == [True, False, False]


@pytest.mark.parametrize(("width", "hidden_size"), [(256, 576), (512, 576), (1536, 576), (11008, 4096), (14336, 4096)])
def test_ffn_mult_is_written_where_engines_that_read_only_it_get_the_same_width(width, hidden_size):
    block = ffn_block(width, hidden_size)
    assert block["intermediate_size"] == width
    # vLLM, SGLang, TensorRT-LLM, MLX and llama.cpp's converter: int(2 * ffn_mult * hidden / 3), rounded up to 256.
    size = int(2 * block["ffn_mult"] * hidden_size / 3)
    assert -(-size // FFN_MULT_GRID) * FFN_MULT_GRID == width
    assert "ffn_mult" not in ffn_block(width + 1, hidden_size)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: Qwen3ForCausalLM(Qwen3Config(**TEXT, num_key_value_heads=2, head_dim=8)),
            r"holds LLaMA-style decoders \(llama, mistral, qwen2\); Qwen3ForCausalLM has model_type 'qwen3'",
        ),
        (
            lambda: MistralForCausalLM(MistralConfig(**TEXT, num_key_value_heads=2, sliding_window=16)),
            "has no sliding-window attention, but MistralForCausalLM uses it",
        ),
        (lambda: LlamaModel(LlamaConfig(**TEXT)), "writes causal LMs .*; got LlamaModel"),
    ],
)
def test_what_the_format_cannot_hold_is_refused_and_nothing_is_written(build, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        save_pruned(build(), tmp_path / "out", format="decilm")
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_kv_heads_option_is_refused(tmp_path):
    with pytest.raises(ValueError, match="`kv_heads` must be 'uniform' or 'per_layer', got 'auto'"):
        save_pruned(pruned_llm("llama"), tmp_path / "out", format="decilm", kv_heads="auto")
    assert list(tmp_path.iterdir()) == []


def test_a_model_without_any_attention_keeps_one_zero_head(tmp_path):
    """Every attention erased: layer 0 gets one zero query head and one zero KV head (for vLLM), the rest no-ops."""
    model = tiny_llm("llama")
    groups = discover_groups(model)
    attention = [op for op in find_operators(model, groups, verify=False) if op.kind == "attention"]
    erased = erase_operators(model, attention, groups.example_inputs)
    report = export_pruned(erased, tmp_path / "out", format="decilm")
    blocks = json.loads((report.path / "config.json").read_text())["block_configs"]
    assert [block["attention"]["no_op"] for block in blocks] == [False, True, True]
    assert report.padded_parameters == 4 * TEXT["hidden_size"] * 4 + TEXT["hidden_size"]  # head_dim 4, and a norm
    loaded = load_without_oto_hf(report.path, tmp_path / "modules")
    torch.testing.assert_close(torch.tensor(loaded["logits"]), logits(erased), atol=1e-5, rtol=1e-5)
