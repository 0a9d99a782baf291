"""scripts/evaluate_pruned.py: metrics and a same-run latency comparison for pruned folders, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, ResNetConfig, ResNetForImageClassification

import utils_common
import utils_image
from oto_hf import construct_subnet, count_parameters, discover_groups, save_pruned
from tests.utils.asserts import random_nonuniform_ids
from tests.utils.image_data import write_fashion_mnist_like
from tests.utils.scripts import load_script
from tests.utils.text_data import text_rows, write_csv
from tests.utils.tiny_models import TEXT
from tests.utils.tokenizers import tiny_wordpiece_tokenizer

evaluate_pruned = load_script("evaluate_pruned")
pytestmark = pytest.mark.usefixtures("one_thread")


def prune_and_save(model, folder: Path, tokenizer=None):
    """Zero a non-uniform set of groups, slice them away and save: a pruned folder without training."""
    model.eval()
    groups = discover_groups(model)
    ids = random_nonuniform_ids(groups)
    groups.zero_(model, ids)
    pruned = construct_subnet(model, groups, ids)
    save_pruned(pruned, folder, tokenizer=tokenizer)
    return pruned


@pytest.fixture(scope="module")
def text_folder(tmp_path_factory):
    torch.manual_seed(0)
    config = BertConfig(**TEXT, num_labels=2, id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1})
    folder = tmp_path_factory.mktemp("text") / "pruned"
    return folder, prune_and_save(BertForSequenceClassification(config), folder, tiny_wordpiece_tokenizer())


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    torch.manual_seed(0)
    config = ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="bottleneck", num_labels=10, num_channels=1
    )
    folder = tmp_path_factory.mktemp("image") / "pruned"
    pruned = prune_and_save(ResNetForImageClassification(config), folder)
    collator = utils_image.ImageCollator(size=(12, 12), num_channels=1, mean=[0.3], std=[0.35])
    utils_common.write_json(folder / "preprocessor_config.json", collator.processor_config())
    return folder, pruned, collator


def run(*argv: str):
    return evaluate_pruned.main(*evaluate_pruned.parse_args([*argv, "--log_level", "error"]))


def test_text_classifier(tmp_path, text_folder, capsys):
    folder, pruned = text_folder
    rows = text_rows(20, 3)
    dev = write_csv(tmp_path / "dev.csv", rows)
    output = tmp_path / "results.json"
    results = run(
        "--model_name_or_path",
        str(folder),
        "--validation_file",
        str(dev),
        "--metric",
        "accuracy",
        "f1",
        "--output_file",
        str(output),
        "--latency_repeats",
        "3",
        "--cache_dir",
        str(tmp_path / "cache"),
    )
    printed = capsys.readouterr().out
    assert "Metric 'accuracy': " in printed and "(local copy)" in printed and "latency:" in printed
    assert json.loads(output.read_text()) == json.loads(json.dumps(results))

    tokenizer = tiny_wordpiece_tokenizer()
    batch = tokenizer([text for text, _ in rows], padding=True, return_tensors="pt")
    with torch.no_grad():
        predictions = pruned.eval()(**batch).logits.argmax(-1).numpy()
    labels = np.array([0 if label == "neg" else 1 for _, label in rows])
    assert results["metrics"]["accuracy"] == pytest.approx(float((predictions == labels).mean()))
    assert results["task"] == "text-classification" and results["num_examples"] == 20
    report = results["compression"]
    assert report["params_dense"] == pruned.oto_pruning.params_before > report["params_pruned"]
    assert report["params_pruned"] == count_parameters(pruned) and report["latency_ratio"] > 0


def test_remote_code_and_a_given_dense_model(tmp_path, text_folder, capsys):
    folder, pruned = text_folder
    dense_dir = tmp_path / "dense"
    BertForSequenceClassification(BertConfig(**TEXT, num_labels=2)).save_pretrained(dense_dir)
    dev = write_csv(tmp_path / "dev.csv", text_rows(8, 4))
    results = run(
        "--model_name_or_path",
        str(folder),
        "--validation_file",
        str(dev),
        "--trust_remote_code",
        "--dense_model_name_or_path",
        str(dense_dir),
        "--output_file",
        str(tmp_path / "r.json"),
        "--latency_repeats",
        "2",
        "--cache_dir",
        str(tmp_path / "cache"),
    )
    assert "Loaded transformers_modules." in capsys.readouterr().out  # the modeling file saved beside the weights
    assert results["dense_reference"] == str(dense_dir)
    assert results["compression"]["params_dense"] == pruned.oto_pruning.params_before


def test_image_classifier(tmp_path, image_folder):
    folder, pruned, collator = image_folder
    data = write_fashion_mnist_like(tmp_path / "fashion", train=8, test=24, num_classes=10)
    results = run(
        "--model_name_or_path",
        str(folder),
        "--fashion_mnist_dir",
        str(data),
        "--per_device_eval_batch_size",
        "10",
        "--output_file",
        str(tmp_path / "r.json"),
        "--latency_repeats",
        "3",
    )
    images = utils_image.read_idx(data / "t10k-images-idx3-ubyte.gz")
    labels = utils_image.read_idx(data / "t10k-labels-idx1-ubyte.gz")
    batch = collator([{"pixel_values": torch.from_numpy(image)[None]} for image in images])
    with torch.no_grad():
        predictions = pruned.eval()(**batch).logits.argmax(-1).numpy()
    assert results["metrics"]["accuracy"] == pytest.approx(float((predictions == labels).mean()))
    assert results["task"] == "image-classification" and results["num_examples"] == 24
    assert results["compression"]["latency_batch"] == {"pixel_values": [8, 1, 12, 12]}
    assert results["compression"]["params_dense"] == pruned.oto_pruning.params_before


def test_not_a_pruned_model(tmp_path):
    dense_dir = tmp_path / "dense"
    BertForSequenceClassification(BertConfig(**TEXT, num_labels=2)).save_pretrained(dense_dir)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("hello")
    (tmp_path / "config.json").write_text("{}")
    cases = [
        (tmp_path / "missing", "does not exist"),
        (tmp_path / "notes", "has no config.json"),
        (tmp_path / "notes" / "a.txt", "is a file"),
        (dense_dir, "was not saved by oto_hf"),
        (tmp_path, "not a transformers config"),
    ]
    for folder, message in cases:
        with pytest.raises(ValueError, match=message):
            run("--model_name_or_path", str(folder), "--validation_file", "x.csv")


def test_task_errors(tmp_path, text_folder):
    folder, _ = text_folder
    with pytest.raises(ValueError, match="Cannot tell the task"):
        evaluate_pruned.task_for({"architectures": ["BertModel"]}, None)
    with pytest.raises(ValueError, match="`--task` must be one of"):
        run("--model_name_or_path", str(folder), "--task", "summarization", "--validation_file", "x.csv")
    with pytest.raises(ValueError, match="`--validation_file` 'x.csv' does not exist"):
        run("--model_name_or_path", str(folder), "--validation_file", "x.csv")
