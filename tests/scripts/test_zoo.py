"""`scripts/bench_zoo.py` itself: one architecture swept end to end, the x10 query/key sharpening and the table.

The representatives this file used to sweep one by one (fused projections, QK-norm, disentangled attention, windowed
attention, depthwise convolutions, a shared layer, renamed checkpoint keys) are cases of
`tests/utils/tiny_models.CASES`, where `tests/test_architectures.py` and `tests/test_saving.py` run every shared check
on them.
"""

import torch

from tests.utils.scripts import load_script


def test_sweep_prunes_an_architecture_exactly(tmp_path):
    """Phi-3 from the zoo's generic tiny config (2 layers, 2 KV heads, FFN 37) through every step of the sweep: the x10
    query/key check scales its fused qkv_proj, a causal LM is checked with generate(), and the reload runs in a
    process without oto_hf."""
    zoo = load_script("bench_zoo")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        (result,) = zoo.sweep(["phi3"], tmp_path, verbose=False)
    finally:
        torch.set_num_threads(threads)
    assert result.outcome == "exact", result.reason
    assert (result.model_class, result.auto_class) == ("Phi3ForCausalLM", "AutoModelForCausalLM")
    assert result.groups == {"head": 2 * 4, "kv_head": 2 * 2, "neuron": 2 * 37}  # 4 query heads in 2 KV groups
    assert 0 < result.removed < 2 * 4 + 2 * 2 + 2 * 37 and result.params[1] < result.params[0]
    checks = {"subnet", "subnet_qk_x10", "reload", "generate_tokens_differ", "reload_without_oto_hf"}
    assert set(result.checks) == checks
    assert result.checks["subnet"] <= zoo.SUBNET_TOLERANCE
    assert result.checks["subnet_qk_x10"] <= zoo.SUBNET_TOLERANCE
    assert result.checks["reload"] <= zoo.RELOAD_TOLERANCE
    assert result.checks["reload_without_oto_hf"] <= zoo.RELOAD_TOLERANCE
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
