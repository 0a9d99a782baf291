"""scripts/run_classification.py: train-and-prune a tiny BERT on generated text files, then check what it wrote."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

import utils_classification
import utils_text
from tests.utils.scripts import load_script
from tests.utils.text_data import text_rows, write_csv
from tests.utils.tiny_models import TEXT
from tests.utils.tokenizers import tiny_wordpiece_tokenizer

run_classification = load_script("run_classification")
pytestmark = pytest.mark.usefixtures("one_thread")


def save_text_model(folder: Path, num_labels: int = 2) -> Path:
    """A random tiny BERT classifier with its in-process WordPiece tokenizer, as a model folder."""
    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig(**TEXT, num_labels=num_labels)).save_pretrained(folder)
    tiny_wordpiece_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_text_model(tmp_path_factory.mktemp("tiny-bert"))


def run_args(tmp_path: Path, model_dir: Path, *extra: str) -> list[str]:
    return [
        "--model_name_or_path",
        str(model_dir),
        "--output_dir",
        str(tmp_path / "out"),
        "--cache_dir",
        str(tmp_path / "cache"),
        "--max_steps",
        "8",
        "--partition_steps",
        "2",
        "--pruning_end_steps",
        "5",
        "--target_sparsity",
        "0.3",
        "--learning_rate",
        "2e-3",
        "--per_device_train_batch_size",
        "8",
        "--per_device_eval_batch_size",
        "8",
        "--save_strategy",
        "no",
        "--report_to",
        "none",
        "--use_cpu",
        "--disable_tqdm",
        "true",
        "--log_level",
        "error",
        "--seed",
        "0",
        *extra,
    ]


def test_prunes_saves_and_reloads_exactly(tmp_path, model_dir, capsys):
    train = write_csv(tmp_path / "train.csv", text_rows(48, 0))
    dev = write_csv(tmp_path / "dev.csv", text_rows(16, 1))
    args = run_classification.parse_args(
        run_args(tmp_path, model_dir, "--train_file", str(train), "--validation_file", str(dev), "--metric", "f1")
    )
    result = run_classification.main(*args)
    printed = capsys.readouterr().out

    out = tmp_path / "out"
    for name in (
        "eval_results.json",
        "compression_report.json",
        "pruned/config.json",
        "pruned/model.safetensors",
        "pruned/tokenizer.json",
    ):
        assert (out / name).is_file(), name
    assert "Metric 'accuracy': " in printed and "Metric 'f1': " in printed and "(local copy)" in printed
    assert f"saved to      {out / 'pruned'}" in printed and "pruned/dense = " in printed

    trainer = result["trainer"]
    assert trainer.dense_flops > 0  # counted on the meta copy: the example inputs carry no attention_mask
    assert trainer.groups.counts() == {"head": 2 * 4, "neuron": 2 * 37}  # the pooler's 32 neurons are left alone
    zero = trainer.groups.zero_group_ids(trainer.model)
    assert result["groups"]["zero"] == len(zero) > 0
    # The default budget: 0.3 of the FLOPs, removed by the optimizer's own steps.
    assert sum(trainer.group_flops[i] for i in zero) / trainer.dense_flops >= 0.3
    assert trainer.optimizer.optimizer.num_forced_zero_groups == 0  # accelerate wraps DHSPG

    written = json.loads((out / "eval_results.json").read_text())
    assert set(written["metric_sources"]) == {"accuracy", "f1"}
    for key in ("eval_accuracy", "eval_f1"):
        assert written["pruned"][key] == written["trained"][key]
    assert written["pruned"]["eval_loss"] == pytest.approx(written["trained"]["eval_loss"], abs=1e-5)
    report = json.loads((out / "compression_report.json").read_text())
    assert report["params_pruned"] < report["params_dense"] and report["latency_ratio"] > 0

    reloaded = AutoModelForSequenceClassification.from_pretrained(out / "pruned").eval()
    assert reloaded.config.id2label == {0: "neg", 1: "pos"}
    batch = trainer.data_collator([trainer.eval_dataset[i] for i in range(8)])
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    masked = trainer.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, masked(**inputs).logits, atol=1e-5, rtol=1e-4)
    try:
        import oto_hf.model_card  # noqa: F401
    except ImportError:
        return
    assert (out / "pruned" / "README.md").is_file()


def test_sentence_pairs_from_jsonl_with_held_out_split(tmp_path, model_dir):
    rows = text_rows(60, 2, labels=("agree", "disagree", "neutral"))
    with open(tmp_path / "pairs.jsonl", "w", encoding="utf-8") as handle:
        for text, label in rows:
            handle.write(json.dumps({"claim": text, "evidence": text[::-1], "verdict": label}) + "\n")
    args = run_classification.parse_args(
        run_args(
            tmp_path,
            model_dir,
            "--train_file",
            str(tmp_path / "pairs.jsonl"),
            "--text_column_names",
            "claim,evidence",
            "--label_column_name",
            "verdict",
            "--validation_split_percentage",
            "20",
            "--ignore_mismatched_sizes",
            "--max_train_samples",
            "40",
            "--metric",
            "accuracy",
            "f1",
            "--pad_to_max_length",
            "--max_seq_length",
            "24",
        )
    )
    result = run_classification.main(*args)
    assert result["pruned"]["eval_f1"] == result["trained"]["eval_f1"]  # macro F1 over three labels
    config = json.loads((tmp_path / "out" / "pruned" / "config.json").read_text())
    assert config["id2label"] == {"0": "agree", "1": "disagree", "2": "neutral"}
    assert len(result["trainer"].eval_dataset) == 12 and result["report"]["latency_batch"]["input_ids"] == [8, 24]


def test_head_neurons_are_pruned_only_when_asked(model_dir):
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    inputs = {"input_ids": torch.arange(1, 9)[None]}
    encoder_only = run_classification.groups_to_prune(model, inputs, ["head", "neuron"], skip_outside_layers=True)
    assert encoder_only.counts() == {"head": 8, "neuron": 74} and [g.id for g in encoder_only] == list(range(82))
    everything = run_classification.groups_to_prune(model, inputs, ["head", "neuron"], skip_outside_layers=False)
    assert everything.counts() == {"head": 8, "neuron": 74 + 32}  # + the pooler


def test_header_less_csv_with_bom_and_numeric_labels(tmp_path):
    path = tmp_path / "polarity.csv"
    path.write_text('\ufeff"1","a fine film \n"\n"-1","a dull one"\n"1","great"\n"-1","bad"\n', encoding="utf-8")
    raw = utils_text.load_text_datasets(
        train_file=str(path),
        csv_column_names="label,sentence",
        validation_split_percentage=50,
        cache_dir=str(tmp_path / "cache"),
    )
    assert raw["train"].column_names == ["label", "sentence"] and len(raw["validation"]) == 2
    names = utils_classification.dataset_label_names(raw, "label")
    assert names == ["-1", "1"]
    assert [utils_classification.encode_label(v, {"-1": 0, "1": 1}) for v in (-1, 1, "1", 1.0)] == [0, 1, 1, 1]


def test_class_label_columns_keep_their_ids(tmp_path):
    from datasets import ClassLabel, Dataset, DatasetDict

    data = Dataset.from_dict({"sentence": ["the cat sat", "a dog ran", "the mat"], "label": [1, 0, 1]})
    data = data.cast_column("label", ClassLabel(names=["negative", "positive"]))
    names = utils_classification.dataset_label_names(DatasetDict({"train": data}), "label")
    assert names == ["negative", "positive"]
    encoded = utils_text.tokenize_text(
        data,
        tiny_wordpiece_tokenizer(),
        ["sentence"],
        "label",
        {name: i for i, name in enumerate(names)},
        16,
        False,
        num_labels=2,
    )
    assert encoded["labels"] == [1, 0, 1] and "sentence" not in encoded.column_names


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_arguments_from_a_file(tmp_path, model_dir, suffix):
    values = {
        "model_name_or_path": str(model_dir),
        "train_file": "t.csv",
        "output_dir": str(tmp_path / "o"),
        "target_sparsity": 0.4,
        "metric": ["accuracy", "f1"],
    }
    path = tmp_path / f"args{suffix}"
    path.write_text(
        json.dumps(values)
        if suffix == ".json"
        else "\n".join(f"{key}: {json.dumps(value)}" for key, value in values.items())
    )
    model_args, data_args, training_args = run_classification.parse_args([str(path)])
    assert model_args.model_name_or_path == str(model_dir) and data_args.metric == ["accuracy", "f1"]
    assert training_args.target_sparsity == 0.4
    with pytest.raises(ValueError, match="Config file .* does not exist"):
        run_classification.parse_args([str(tmp_path / "missing.yaml")])


@pytest.mark.parametrize(
    "extra, error, message",
    [
        (["--train_file", "missing.csv"], ValueError, "`--train_file` '.*missing.csv' does not exist"),
        (["--label_column_name", "stars"], ValueError, "Label column 'stars' is not in the data"),
        (["--text_column_names", "title"], ValueError, "`--text_column_names` must name"),
        (["--task_name", "stsb"], ValueError, "regression"),
        (["--task_name", "sst2"], RuntimeError, "--train_file train.csv"),  # the Hub is unreachable in tests
        (["--metric", "bleu"], ValueError, "`--metric` must be among"),
    ],
)
def test_bad_input(tmp_path, model_dir, extra, error, message):
    train = write_csv(tmp_path / "train.csv", text_rows(8, 0))
    data = [] if "--task_name" in extra or "--train_file" in extra else ["--train_file", str(train)]
    args = run_classification.parse_args(run_args(tmp_path, model_dir, *data, *extra))
    with pytest.raises(error, match=message):
        run_classification.main(*args)


def test_refuses_a_non_empty_pruned_dir_before_training(tmp_path, model_dir):
    (tmp_path / "out" / "pruned").mkdir(parents=True)
    (tmp_path / "out" / "pruned" / "keep.txt").write_text("x")
    args = run_classification.parse_args(run_args(tmp_path, model_dir, "--train_file", "never-read.csv"))
    with pytest.raises(ValueError, match="--overwrite_pruned_model"):
        run_classification.main(*args)


def test_a_hub_model_offline(tmp_path):
    train = write_csv(tmp_path / "train.csv", text_rows(8, 0))
    args = run_classification.parse_args(run_args(tmp_path, "someone/some-bert", "--train_file", str(train)))
    with pytest.raises(RuntimeError, match="(?s)Could not load model 'someone/some-bert'.*scripts/assets.py minilm"):
        run_classification.main(*args)


def test_not_a_model_folder(tmp_path):
    train = write_csv(tmp_path / "train.csv", text_rows(8, 0))
    (tmp_path / "empty").mkdir()
    args = run_classification.parse_args(run_args(tmp_path, tmp_path / "empty", "--train_file", str(train)))
    with pytest.raises(ValueError, match="is not a model folder: it has no config.json"):
        run_classification.main(*args)
