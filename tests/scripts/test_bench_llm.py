"""`scripts/bench_llm.py` end to end on a tiny random GQA LLaMA, and its width and depth baselines
(`scripts/llm_baselines.py`)."""

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from oto_hf import discover_groups
from tests.scripts.test_run_clm import write_text
from tests.utils.scripts import load_script
from tests.utils.tiny_models import TEXT
from tests.utils.tokenizers import tiny_wordpiece_tokenizer

bench_llm = load_script("bench_llm")
llm_baselines = load_script("llm_baselines")
LAYERS = 4


def tiny_llama() -> LlamaForCausalLM:
    """4 layers, 4 query heads in 2 KV groups, FFN 37."""
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**{**TEXT, "num_hidden_layers": LAYERS}, num_key_value_heads=2)).eval()


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama-bench")
    tiny_llama().save_pretrained(folder)
    tiny_wordpiece_tokenizer().save_pretrained(folder)
    return folder


def batches(count: int = 3, length: int = 16) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    ids = [torch.randint(5, 99, (2, length), generator=generator) for _ in range(count)]
    return [{"input_ids": x, "attention_mask": torch.ones_like(x), "labels": x} for x in ids]


def test_every_method_end_to_end(tiny_llama_dir, tmp_path, one_thread):
    train, validation = write_text(tmp_path / "train.txt", 300, 0), write_text(tmp_path / "validation.txt", 60, 1)
    argv = ["--model", str(tiny_llama_dir), "--train_file", str(train), "--validation_file", str(validation)]
    argv += ["--max_steps", "2", "--batch_size", "2", "--block_size", "16", "--eval_blocks", "4"]
    argv += ["--calibration_blocks", "2", "--new_tokens", "4", "--latency_repeats", "5", "--speedups", "1.5"]
    rows = bench_llm.main([*argv, "--output_dir", str(tmp_path / "out")])

    by_method = {row["method"]: row for row in rows}
    assert list(by_method) == ["dense", "dense-trained", "oto", "width", "depth"]
    for row in rows:
        assert row["perplexity"] > 1 and row["decode_tokens_per_s"] > 0 and row["prefill_latency_ratio"] > 0
        assert len(row["continuations"]) == len(bench_llm.PROMPTS)
        if row["method"] != "dense":
            assert row["training_tokens"] == 2 * 2 * 16 and len(row["train_loss"]) == 2
    dense = by_method["dense"]
    assert dense["decode_speed_ratio"] == 1 and dense["kept_flops"] == 1 and dense["widths_per_layer"] == "4/2/37 x4"
    assert by_method["dense-trained"]["kept_params"] == 1
    for method in ("oto", "width", "depth"):  # every pruned model meets the level on the decoder layers' FLOPs
        assert by_method[method]["kept_decoder_flops"] <= 1 / 1.5 + 1e-6
        assert by_method[method]["kept_flops"] > by_method[method]["kept_decoder_flops"]  # the LM head stays
    assert by_method["depth"]["layers"] == LAYERS - 2 and by_method["depth"]["kv_bytes_per_token"] == (
        dense["kv_bytes_per_token"] / 2
    )
    assert 0 < by_method["oto"]["oto_target_sparsity"] < 1 / 3

    saved = json.loads((tmp_path / "out" / "bench_llm.json").read_text())
    assert [row["method"] for row in saved["rows"]] == list(by_method)
    report = (tmp_path / "out" / "bench_llm.md").read_text()
    header = report.splitlines()[0]
    for column in ("perplexity", "ppl / dense-trained", "kept params", "kept FLOPs decoder", "decode tok/s"):
        assert column in header
    for column in ("prefill latency ratio", "KV bytes / token", "heads/KV heads/neurons", "training tokens", "min"):
        assert column in header
    assert all(prompt in report for prompt in bench_llm.PROMPTS) and "| width 1.5x (seed 0) |" in report


def test_width_keeps_one_width_in_every_layer_and_meets_the_flops(one_thread):
    model = tiny_llama()
    calibration = batches()
    example = {"input_ids": calibration[0]["input_ids"][:1]}
    groups = discover_groups(model, example)
    decoder = bench_llm.flops_and_params(model, example)["decoder_flops"]
    result = llm_baselines.width_prune(model, groups, calibration, decoder / 2, bench_llm.mean_loss)

    widths = bench_llm.widths_per_layer(result.model)
    kept = result.kept_per_layer
    assert len(set(widths)) == 1 and widths[0] == (2 * kept["attention"], kept["attention"], kept["neuron"])
    assert bench_llm.flops_and_params(result.model, example)["decoder_flops"] <= decoder / 2
    assert (
        len(result.candidates) == 2
    )  # none or one of the two KV groups removed per layer, neurons making up the rest
    assert min(c["loss"] for c in result.candidates) == pytest.approx(bench_llm.mean_loss(result.model, calibration))
    # the removed units are the least important of their layer
    units = llm_baselines.width_units(groups)
    scores = llm_baselines.activation_importance(model, units, calibration)
    removed = set(result.removed_ids)
    for kind, layers in units.items():
        for layer, layer_scores in zip(layers, scores[kind]):
            gone = [s for unit, s in zip(layer, layer_scores) if unit[0].id in removed]
            left = [s for unit, s in zip(layer, layer_scores) if unit[0].id not in removed]
            assert len(gone) == result.removed_per_layer[kind] and (not gone or max(gone) <= min(left))


def test_width_importance_is_the_activation_of_each_unit(one_thread):
    model = tiny_llama()
    calibration = batches(1)
    groups = discover_groups(model, {"input_ids": calibration[0]["input_ids"][:1]})
    captured = {}
    layer = model.model.layers[1]
    hooks = [
        layer.self_attn.o_proj.register_forward_pre_hook(lambda m, a: captured.__setitem__("o", a[0])),
        layer.mlp.down_proj.register_forward_pre_hook(lambda m, a: captured.__setitem__("down", a[0])),
    ]
    with torch.no_grad():
        model(input_ids=calibration[0]["input_ids"])
    for hook in hooks:
        hook.remove()
    units = llm_baselines.width_units(groups)
    assert [len(units[kind]) for kind in ("attention", "neuron")] == [LAYERS, LAYERS]
    assert len(units["attention"][1]) == 2 and len(units["neuron"][1]) == 37
    scores = llm_baselines.activation_importance(model, units, calibration)
    head_dim = 32 // 4
    for index, score in enumerate(scores["attention"][1]):  # a KV group: o_proj reads its 2 query heads' columns
        expected = captured["o"][..., index * 2 * head_dim : (index + 1) * 2 * head_dim].norm()
        assert score == pytest.approx(float(expected), rel=1e-5)
    neuron = units["neuron"][1][5][0]
    down = [s for s in neuron.slices if s.name.endswith("down_proj.weight")][0]
    expected = captured["down"][..., down.indices].abs().mean()
    assert scores["neuron"][1][5] == pytest.approx(float(expected), rel=1e-5)


def test_depth_removes_the_block_that_changes_nothing(one_thread):
    model = tiny_llama()
    with torch.no_grad():  # block 2 becomes the identity: its attention and FFN add zero to the residual stream
        model.model.layers[2].self_attn.o_proj.weight.zero_()
        model.model.layers[2].mlp.down_proj.weight.zero_()
    calibration = batches()
    influence = llm_baselines.block_influence(model, calibration)
    assert influence[2] == pytest.approx(0, abs=1e-6) and min(influence[:2] + influence[3:]) > 1e-3

    result = llm_baselines.depth_prune(model, calibration, 1)
    assert result.removed == [2] and result.model.config.num_hidden_layers == LAYERS - 1
    assert [block.self_attn.layer_idx for block in result.model.model.layers] == [0, 1, 2]
    ids = calibration[0]["input_ids"][:1]
    with torch.no_grad():
        torch.testing.assert_close(result.model(input_ids=ids).logits, model(input_ids=ids).logits)
    # the KV cache follows the renumbered blocks: greedy generation is unchanged
    settings = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(result.model.generate(ids, **settings), model.generate(ids, **settings))
    assert len(llm_baselines.depth_prune(model, calibration, 2).model.model.layers) == LAYERS - 2


def test_bad_arguments_say_what_is_allowed(tmp_path):
    with pytest.raises(ValueError, match=r"`--speedups` .* must be > 1, got \[1.0\]"):
        bench_llm.main(["--speedups", "1", "--output_dir", str(tmp_path)])
    with pytest.raises(ValueError, match=r"`--max_steps` must be positive, got 0"):
        bench_llm.main(["--max_steps", "0", "--output_dir", str(tmp_path)])
    with pytest.raises(ValueError, match=r"Pass `--oto_erase` instead of `--oto_args erase_operators=...`"):
        bench_llm.main(["--oto_args", "erase_operators=True", "--output_dir", str(tmp_path)])
    with pytest.raises(ValueError, match=r"some, not all, of 0\.\.3"):
        llm_baselines.drop_blocks(tiny_llama(), [0, 1, 2, 3])


def test_oto_args_reach_the_trainer_and_name_the_row(tiny_llama_dir, tmp_path, one_thread):
    train, validation = write_text(tmp_path / "train.txt", 300, 0), write_text(tmp_path / "validation.txt", 60, 1)
    argv = ["--model", str(tiny_llama_dir), "--train_file", str(train), "--validation_file", str(validation)]
    argv += ["--max_steps", "4", "--batch_size", "2", "--block_size", "16", "--eval_blocks", "4", "--speedups", "1.5"]
    argv += ["--new_tokens", "2", "--latency_repeats", "2", "--methods", "oto"]
    argv += ["--oto_args", "dhspg_saliency=output", "num_partition_periods=1", "--output_dir", str(tmp_path / "out")]
    rows = bench_llm.main(argv)
    assert [row["method"] for row in rows] == ["dense", "oto[dhspg_saliency=output,num_partition_periods=1]"]
    assert rows[1]["kept_decoder_flops"] <= 1 / 1.5 + 1e-6
    with pytest.raises(SystemExit):
        bench_llm.make_parser().parse_args(["--oto_args", "no-equals-sign"])
    assert bench_llm.setting("erase_operators=True") == ("erase_operators", True)
    assert bench_llm.setting("dhspg_saliency=output") == ("dhspg_saliency", "output")


def test_widths_of_erased_sub_blocks_are_zero():
    from oto_hf.models.no_op import ErasedModule

    model = tiny_llama()
    spec = {"mode": "zero", "input": 0, "shape": None, "outputs": 2, "cache_layer": None}
    model.model.layers[1].self_attn = ErasedModule(spec)
    model.model.layers[2].mlp = ErasedModule({**spec, "outputs": None})
    assert bench_llm.widths_per_layer(model) == [(4, 2, 37), (0, 0, 37), (4, 2, 0), (4, 2, 37)]


def test_bench_selection_end_to_end(tiny_llama_dir, tmp_path, one_thread):
    bench_selection = load_script("bench_selection")
    train, validation = write_text(tmp_path / "train.txt", 300, 0), write_text(tmp_path / "validation.txt", 60, 1)
    argv = ["--model", str(tiny_llama_dir), "--train_file", str(train), "--validation_file", str(validation)]
    argv += ["--calibration_batches", "1", "--eval_blocks", "4", "--block_size", "16"]
    rows = bench_selection.main([*argv, "--output_dir", str(tmp_path / "out")])
    assert [(row["signal"], row["choice"]) for row in rows] == [
        ("none (dense)", "-"),
        ("activation (width)", "uniform"),
        ("fisher", "global"),
        ("fisher", "uniform"),
        ("kfac", "global"),
        ("kfac", "uniform"),
        ("output", "global"),
        ("output", "uniform"),
        ("sample_fisher", "global"),
        ("sample_fisher", "uniform"),
    ]
    assert all(row["perplexity"] > 1 for row in rows)
    assert "| output | global |" in (tmp_path / "out" / "bench_selection.md").read_text()


def test_global_choice_meets_the_flops_and_takes_query_heads_with_their_kv_group():
    bench_selection = load_script("bench_selection")
    model = tiny_llama()
    inputs = {"input_ids": batches(1)[0]["input_ids"]}
    groups = discover_groups(model, inputs)
    costs = torch.ones(len(groups), dtype=torch.float64)
    importance = torch.ones(len(groups), dtype=torch.float64)
    kv = next(i for i, g in enumerate(groups) if g.kind == "kv_head")
    importance[kv] = 0.0  # least important: chosen first, with its 2 query heads
    chosen = bench_selection.global_choice(groups, importance, costs, flops=2.5)
    heads = [i for i, g in enumerate(groups) if g.kind == "head" and g.nest == groups[kv].nest]
    assert kv in chosen and set(heads) <= set(chosen) and len(chosen) == 3
