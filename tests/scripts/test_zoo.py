"""A fast subset of the zoo sweep (`scripts/bench_zoo.py`): one architecture per structural family, end to end."""

import pytest
import torch

from tests.utils.scripts import load_script

# model type -> (structural family, group kinds it must have)
REPRESENTATIVES = {
    "phi3": ("fused qkv_proj and gate_up_proj", {"head", "neuron"}),
    "qwen3": ("per-head RMSNorm on queries and keys (QK-norm)", {"head", "neuron"}),
    "deberta-v2": ("disentangled relative-position attention, eager matmuls", {"head", "neuron"}),
    "swin": ("windowed attention with a relative-position bias table", {"head", "neuron"}),
    "mobilenet_v2": ("depthwise convolutions", {"channel"}),
    "albert": ("one layer shared by every position", {"head", "neuron"}),
    "gpt_neox": ("checkpoint keys renamed by transformers on save and load", {"head", "neuron"}),
}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    zoo = load_script("bench_zoo")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        results = zoo.sweep(list(REPRESENTATIVES), tmp_path_factory.mktemp("zoo"), verbose=False)
    finally:
        torch.set_num_threads(threads)
    return zoo, {result.model_type: result for result in results}


@pytest.mark.parametrize("model_type", list(REPRESENTATIVES))
def test_representative_is_pruned_exactly(model_type, sweep):
    zoo, results = sweep
    result = results[model_type]
    assert result.outcome == "exact", f"{REPRESENTATIVES[model_type][0]}: {result.reason}"
    assert REPRESENTATIVES[model_type][1] <= set(result.groups), result.groups
    assert result.params[1] < result.params[0]
    assert result.checks["subnet"] <= zoo.SUBNET_TOLERANCE
    assert result.checks["subnet_qk_x10"] <= zoo.SUBNET_TOLERANCE
    assert result.checks["reload"] <= zoo.RELOAD_TOLERANCE
    assert result.checks["reload_without_oto_hf"] <= zoo.RELOAD_TOLERANCE
    if result.auto_class == "AutoModelForCausalLM":
        assert result.checks["generate_tokens_differ"] == 0


def test_sharpened_attention_exposes_head_mixing():
    """Near-uniform random attention hides heads mixed by mistake: the x10 query/key check must not."""
    zoo = load_script("bench_zoo")
    model, _ = zoo.build("bert")
    before = {name: p.clone() for name, p in model.named_parameters()}
    assert zoo.scale_queries_and_keys(model) == 2 * 2  # query and key of both layers
    scaled = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert scaled == {f"bert.encoder.layer.{i}.attention.self.{w}.weight" for i in range(2) for w in ("query", "key")}


def test_table_reports_counts_and_reasons():
    zoo = load_script("bench_zoo")
    results = [
        zoo.Result("a", "AModel", outcome="exact", groups={"head": 4}),
        zoo.Result("b", "BModel", outcome="refused", reason="BModel has nothing prunable"),
        zoo.Result("c", outcome="skipped", reason="composite config"),
    ]
    text = zoo.table(results)
    assert "2 architectures: 1 exact, 1 refused, 0 failed (50% exact)" in text
    assert "BModel has nothing prunable" in text and "1 model types skipped" in text
