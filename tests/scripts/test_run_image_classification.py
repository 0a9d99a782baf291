"""scripts/run_image_classification.py: conv-channel pruning of tiny ResNet/ConvNeXt models on generated images."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForImageClassification, ConvNextConfig, ConvNextForImageClassification

import utils_common
import utils_image
from tests.utils.image_data import pattern_images, write_fashion_mnist_like, write_idx, write_image_folder
from tests.utils.scripts import load_script

RESNET = "embedding_size=8,hidden_sizes=[8,16],depths=[1,1],layer_type=bottleneck"


run_image = load_script("run_image_classification")
pytestmark = pytest.mark.usefixtures("one_thread")


def run_args(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "--output_dir",
        str(tmp_path / "out"),
        "--max_steps",
        "8",
        "--partition_steps",
        "2",
        "--pruning_end_steps",
        "5",
        "--target_sparsity",
        "0.3",
        "--learning_rate",
        "3e-3",
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


def assert_reload_matches(result, out: Path) -> None:
    """The saved folder reloads with the Auto class and predicts what the zero-masked trained model predicts."""
    trainer = result["trainer"]
    reloaded = AutoModelForImageClassification.from_pretrained(out / "pruned").eval()
    batch = trainer.data_collator([trainer.eval_dataset[i] for i in range(8)])
    with torch.no_grad():
        expected = trainer.model.eval()(pixel_values=batch["pixel_values"]).logits
        torch.testing.assert_close(reloaded(pixel_values=batch["pixel_values"]).logits, expected, atol=1e-5, rtol=1e-4)
    zero = trainer.groups.zero_group_ids(trainer.model)
    assert result["groups"]["zero"] == len(zero) > 0
    assert sum(trainer.group_flops[i] for i in zero) / trainer.dense_flops >= 0.3  # the default FLOPs budget
    assert result["pruned"]["eval_accuracy"] == result["trained"]["eval_accuracy"]


def test_resnet_from_config_on_idx_files(tmp_path, capsys):
    data = write_fashion_mnist_like(tmp_path / "fashion", num_classes=10)
    args = run_image.parse_args(
        run_args(
            tmp_path,
            "--fashion_mnist_dir",
            str(data),
            "--model_type",
            "resnet",
            "--config_overrides",
            RESNET,
            "--image_mean",
            "0.3",
            "--image_std",
            "0.35",
        )
    )
    result = run_image.main(*args)
    printed = capsys.readouterr().out
    out = tmp_path / "out"
    for name in (
        "eval_results.json",
        "compression_report.json",
        "pruned/config.json",
        "pruned/model.safetensors",
        "pruned/preprocessor_config.json",
    ):
        assert (out / name).is_file(), name
    assert (
        "Metric 'accuracy': " in printed and "(local copy)" in printed and f"saved to      {out / 'pruned'}" in printed
    )

    config = json.loads((out / "pruned" / "config.json").read_text())
    assert config["num_channels"] == 1 and config["id2label"]["9"] == "Ankle boot"
    processor = json.loads((out / "pruned" / "preprocessor_config.json").read_text())
    assert processor["size"] == {"height": 12, "width": 12} and processor["image_mean"] == [0.3]
    report = json.loads((out / "compression_report.json").read_text())
    assert report["params_pruned"] < report["params_dense"] and report["latency_ratio"] > 0
    assert report["removed_groups"]["channel"] == result["groups"]["zero"]
    assert result["groups"]["total"] == 36
    assert_reload_matches(result, out)


@pytest.mark.skipif(importlib.util.find_spec("PIL") is None, reason="image folders need Pillow")
def test_convnext_folder_on_an_image_folder(tmp_path):
    model_dir = tmp_path / "convnext"
    torch.manual_seed(0)
    ConvNextForImageClassification(
        ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, num_labels=3, image_size=16)
    ).save_pretrained(model_dir)
    images = write_image_folder(tmp_path / "images", count=40, size=20)
    args = run_image.parse_args(
        run_args(
            tmp_path,
            "--model_name_or_path",
            str(model_dir),
            "--train_dir",
            str(images),
            "--validation_split_percentage",
            "25",
            "--cache_dir",
            str(tmp_path / "c"),
        )
    )
    result = run_image.main(*args)
    out = tmp_path / "out"
    config = json.loads((out / "pruned" / "config.json").read_text())
    assert config["id2label"] == {"0": "circle", "1": "square", "2": "stripe"}
    assert len(result["trainer"].eval_dataset) == 10
    assert result["report"]["latency_batch"]["pixel_values"] == [8, 3, 16, 16]
    assert_reload_matches(result, out)


def test_idx_reader(tmp_path):
    images, labels = pattern_images(5, size=6)
    for name in ("a.idx", "a.idx.gz"):
        np.testing.assert_array_equal(utils_image.read_idx(write_idx(tmp_path / name, images)), images)
    wide = np.arange(-6, 6, dtype=np.int32).reshape(3, 4)
    np.testing.assert_array_equal(utils_image.read_idx(write_idx(tmp_path / "w.idx", wide)), wide)
    (tmp_path / "bad.idx").write_bytes(b"\x89PNG\r\n")
    with pytest.raises(ValueError, match="not an IDX file"):
        utils_image.read_idx(tmp_path / "bad.idx")
    (tmp_path / "short.idx").write_bytes((tmp_path / "a.idx").read_bytes()[:-3])
    with pytest.raises(ValueError, match="its header \\[5, 6, 6\\] needs 180"):
        utils_image.read_idx(tmp_path / "short.idx")


def test_collator_repeats_grayscale_resizes_and_normalises():
    collator = utils_image.ImageCollator(size=(8, 8), num_channels=3, mean=[0.5], std=[0.25])
    image = torch.full((1, 4, 4), 255, dtype=torch.uint8)
    batch = collator(
        [
            {"pixel_values": image, "labels": 2},
            {"pixel_values": torch.zeros(3, 16, 16, dtype=torch.uint8), "labels": 0},
        ]
    )
    assert batch["pixel_values"].shape == (2, 3, 8, 8) and batch["labels"].tolist() == [2, 0]
    torch.testing.assert_close(batch["pixel_values"][0], torch.full((3, 8, 8), 2.0))  # (1 - 0.5) / 0.25
    torch.testing.assert_close(batch["pixel_values"][1], torch.full((3, 8, 8), -2.0))
    to_gray = utils_image.ImageCollator(size=(2, 2), num_channels=1)
    assert to_gray([{"pixel_values": torch.zeros(3, 2, 2, dtype=torch.uint8)}])["pixel_values"].shape == (1, 1, 2, 2)


def test_config_overrides():
    parsed = run_image.parse_config_overrides(
        "embedding_size=8, hidden_sizes=[8,16],layer_type=bottleneck,downsample_in_first_stage=true,drop=0.1"
    )
    assert parsed == {
        "embedding_size": 8,
        "hidden_sizes": [8, 16],
        "layer_type": "bottleneck",
        "downsample_in_first_stage": True,
        "drop": 0.1,
    }
    with pytest.raises(ValueError, match="key=value"):
        run_image.parse_config_overrides("depths")


def test_a_failed_slice_keeps_the_trained_model(tmp_path):
    class Trainer:  # what save_pruned_model uses of an OTOTrainer
        args = type("Args", (), {"output_dir": str(tmp_path)})()
        saved = None

        def save_pruned(self, output_dir, overwrite=False, model_card=True):
            raise ValueError("Removing these groups would remove all 16 channels of layer 1.")

        def save_model(self, output_dir):
            self.saved = output_dir

    trainer = Trainer()
    with pytest.raises(ValueError, match="all 16 channels(.|\n)*saved to .*trained-unsliced"):
        utils_common.save_pruned_model(trainer, tmp_path / "pruned", overwrite=False)
    assert trainer.saved == str(tmp_path / "trained-unsliced")


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--model_type", "resnet"], "No image data given"),
        (["--model_type", "resnet", "--fashion_mnist_dir", "/nonexistent"], "apt-get install dataset-fashion-mnist"),
        (["--model_type", "resnet", "--train_images", "missing-idx"], "`--train_images` 'missing-idx' does not exist"),
        (["--fashion_mnist_dir", "DATA"], "No model"),
        (["--fashion_mnist_dir", "DATA", "--model_type", "not-a-model"], "Unknown `--model_type`"),
        (
            ["--fashion_mnist_dir", "DATA", "--model_type", "resnet", "--config_overrides", "widths=[1]"],
            r"keys \['widths'\] are not attributes of ResNetConfig",
        ),
        (["--fashion_mnist_dir", "DATA", "--model_name_or_path", "EMPTY"], "is not a model folder"),
    ],
)
def test_bad_input(tmp_path, extra, message):
    data = write_fashion_mnist_like(tmp_path / "fashion", train=8, test=4)
    (tmp_path / "empty").mkdir()
    extra = [str(data) if e == "DATA" else str(tmp_path / "empty") if e == "EMPTY" else e for e in extra]
    with pytest.raises(ValueError, match=message):
        run_image.main(*run_image.parse_args(run_args(tmp_path, *extra)))


@pytest.mark.slow
def test_fashion_mnist_for_real(tmp_path):
    """1,200 steps (1.3 epochs) on the real Fashion-MNIST (`apt-get install dataset-fashion-mnist`), half the FLOPs
    pruned; the full 10,000-image test set. About a minute on 2 CPU cores."""
    if not Path(utils_image.FASHION_MNIST_DIR).is_dir():
        pytest.skip(f"{utils_image.FASHION_MNIST_DIR} is missing: apt-get install dataset-fashion-mnist")
    args = run_image.parse_args(
        [
            "--fashion_mnist_dir",
            utils_image.FASHION_MNIST_DIR,
            "--model_type",
            "resnet",
            "--config_overrides",
            "embedding_size=16,hidden_sizes=[32,64],depths=[1,1],layer_type=bottleneck",
            "--image_mean",
            "0.286",
            "--image_std",
            "0.353",
            "--max_steps",
            "1200",
            "--sparsity_budget",
            "flops",
            "--target_sparsity",
            "0.5",
            "--pruning_end_ratio",
            "0.6",
            "--learning_rate",
            "3e-3",
            "--per_device_train_batch_size",
            "64",
            "--per_device_eval_batch_size",
            "500",
            "--output_dir",
            str(tmp_path / "out"),
            "--save_strategy",
            "no",
            "--report_to",
            "none",
            "--disable_tqdm",
            "true",
            "--logging_steps",
            "50",
            "--seed",
            "0",
        ]
    )
    result = run_image.main(*args)  # the figures: <tmp>/out/eval_results.json and compression_report.json
    assert result["pruned"]["eval_accuracy"] == result["trained"]["eval_accuracy"] > 0.75
    assert result["report"]["flops_ratio"] < 0.75 and result["report"]["params_ratio"] < 0.75
