"""The scripts' `main()` on their defaults, fast."""


import pytest

from tests.utils.scripts import load_script


def test_demo_runs_run_squad_on_the_fetched_assets(tmp_path, monkeypatch, capsys):
    """The demo's wiring on a tiny random BERT and tiny SQuAD files standing in for the fetched assets."""
    import torch
    from transformers import BertConfig, BertModel

    from tests.utils.qa_data import qa_records, write_jsonl, write_nested
    from tests.utils.tiny_models import TEXT
    from tests.utils.tokenizers import tiny_wordpiece_tokenizer

    model = tmp_path / "model"
    torch.manual_seed(0)
    BertModel(BertConfig(**TEXT)).save_pretrained(model)
    tiny_wordpiece_tokenizer().save_pretrained(model)
    squad = {"new_wiki": write_nested(tmp_path / "new_wiki.json", qa_records(24, seed=0)),
             "dev": write_jsonl(tmp_path / "dev.jsonl", qa_records(12, seed=1))}
    demo = load_script("demo")
    monkeypatch.setattr(demo, "fetch_minilm", lambda cache=None: model)
    monkeypatch.setattr(demo, "fetch_squad", lambda cache=None: squad)
    args = demo.make_parser().parse_args(["--output_dir", str(tmp_path / "out"), "--train_samples", "24",
                                          "--eval_samples", "8"])
    assert "--validation_file" in demo.build_args(args, model, squad["new_wiki"], squad["dev"])

    results = demo.main(["--output_dir", str(tmp_path / "out"), "--train_samples", "24", "--eval_samples", "8",
                         "--baseline"])
    printed = capsys.readouterr().out
    # The demo's default: half of the FLOPs removed (counted on a training window; the report counts an eval batch).
    assert results["zero_groups"] > 0 and results["baseline"]["zero_groups"] == 0
    assert results["report"]["flops_ratio"] < 0.75
    assert "trained     EM" in printed and "dense fine-tuned vs OTO pruned" in printed
    assert results["eval_results"]["baseline"] == results["baseline"]["eval_results"]["pruned"]
    assert "baseline    EM" in printed
    assert results["eval_results"]["eval_questions"] == 8 and results["eval_results"]["train_questions"] == 24
    for line in ("dense       EM", "pruned      EM", "parameters", "FLOPs", "latency     pruned/dense",
                 f"saved to    {tmp_path / 'out' / 'pruned'}", "Demo wall time"):
        assert line in printed, line
    assert (tmp_path / "out" / "pruned" / "config.json").is_file()


@pytest.mark.slow
def test_discovery_benchmark_small(capsys):
    bench = load_script("bench_discovery")
    bench.main(bench.make_parser().parse_args(["--layers", "2", "--hidden", "256", "--ffn", "688", "--heads", "4",
                                               "--kv-heads", "2"]))
    assert "all parameters still on meta: True" in capsys.readouterr().out
