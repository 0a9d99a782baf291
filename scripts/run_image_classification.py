"""Prune a vision model (ResNet/ConvNeXt channels and neurons; ViT heads and neurons) with Only-Train-Once.

The model comes from a folder (`--model_name_or_path`) or is built from a config (`--model_type resnet
--config_overrides ...`, random weights). Images come from Fashion-MNIST's IDX files, any IDX files, image folders
(one sub-folder per class) or a Hub dataset; they are resized and normalised with plain torch ops (no torchvision),
and grayscale images are repeated to the model's `num_channels` (a model built from a config gets `num_channels=1`).
The dense starting model is evaluated, trained with `OTOTrainer`, sliced, saved with `save_pruned` (with a
`preprocessor_config.json`), reloaded and evaluated again. Written to `--output_dir`: `eval_results.json`,
`compression_report.json` (parameters, FLOPs, latency ratio measured in this run) and the pruned folder
(`<output_dir>/pruned` by default) with its model card.

Offline, Fashion-MNIST from Debian (`apt-get install dataset-fashion-mnist`) and a small ResNet built from a config,
half of its FLOPs pruned (20 to 60 seconds on 2 CPU cores; accuracy 0.83 on the 10,000 test images, the same before
and after slicing, with 55% of the parameters and 55% of the FLOPs kept):

```bash
python scripts/run_image_classification.py \
    --fashion_mnist_dir /usr/share/datasets/fashion-mnist \
    --model_type resnet \
    --config_overrides "embedding_size=16,hidden_sizes=[32,64],depths=[1,1],layer_type=bottleneck" \
    --image_mean 0.286 --image_std 0.353 --sparsity_budget flops --target_sparsity 0.5 --pruning_end_ratio 0.6 \
    --learning_rate 3e-3 --per_device_train_batch_size 64 --per_device_eval_batch_size 500 --max_steps 1200 \
    --save_strategy no --output_dir outputs/resnet-fashion-mnist-oto
```

A ConvNeXt or a ViT instead (ViT needs `image_size` and `patch_size` that suit the 28 x 28 images):

```bash
python scripts/run_image_classification.py --fashion_mnist_dir /usr/share/datasets/fashion-mnist \
    --model_type vit --config_overrides "image_size=28,patch_size=4,hidden_size=64,num_hidden_layers=4,\
num_attention_heads=4,intermediate_size=128" --max_steps 600 --output_dir outputs/vit-fashion-mnist-oto
```

Image folders (needs Pillow) and a model folder; a Hub dataset with `--dataset_name` (online):

```bash
python scripts/run_image_classification.py --model_name_or_path path/to/convnext --train_dir data/train \
    --validation_dir data/val --ignore_mismatched_sizes --num_train_epochs 3 --output_dir outputs/convnext-oto
```

A lone `.json` or `.yaml` argument is read as a file of arguments.
"""

from __future__ import annotations

import ast
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import AutoConfig, AutoModelForImageClassification, HfArgumentParser, set_seed

from oto_hf import OTOTrainer, OTOTrainingArguments
from utils_classification import load_metrics, make_compute_metrics
from utils_common import (
    check_model_source,
    check_output_dir,
    finish_run,
    hub_id,
    model_error,
    parse_arguments,
    setup_logging,
    subsample,
    train_prune_evaluate,
    write_json,
)
from utils_image import FASHION_MNIST_DIR, ArrayImageDataset, ImageCollator, load_image_datasets, read_processor_config

logger = logging.getLogger(__name__)

DEFAULT_IMAGE_SIZE = 224  # for image folders and Hub datasets when neither the model nor `--image_size` sets one


@dataclass
class ModelArguments:
    """Which model to start from (a folder, or a config built from `model_type`), and where the pruned model goes."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Folder (or Hub id, online) of an image classification model."}
    )
    model_type: str | None = field(
        default=None, metadata={"help": "Build a randomly initialised model of this type (resnet, convnext, vit)."}
    )
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": "With `model_type`: `key=value` pairs, comma-separated; lists in brackets, e.g. "
            "`embedding_size=16,hidden_sizes=[32,64],depths=[1,1]`."
        },
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Cache for downloads and processed datasets."})
    model_revision: str = field(default="main", metadata={"help": "Model revision (branch, tag or commit)."})
    token: str | None = field(default=None, metadata={"help": "Hub token for private models or datasets."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow modeling code from the model's folder."})
    ignore_mismatched_sizes: bool = field(
        default=False, metadata={"help": "Re-initialise a classification head whose number of labels differs."}
    )
    pruned_model_dir: str | None = field(
        default=None, metadata={"help": "Where the pruned model is saved (default `<output_dir>/pruned`)."}
    )
    overwrite_pruned_model: bool = field(default=False, metadata={"help": "Replace a non-empty `pruned_model_dir`."})


@dataclass
class DataArguments:
    """Which images to train and evaluate on, and how to preprocess them."""

    fashion_mnist_dir: str | None = field(
        default=None,
        metadata={"help": f"Folder with the four Fashion-MNIST IDX files (e.g. {FASHION_MNIST_DIR})."},
    )
    train_images: str | None = field(default=None, metadata={"help": "IDX file of training images (.gz or not)."})
    train_labels: str | None = field(default=None, metadata={"help": "IDX file of training labels."})
    validation_images: str | None = field(default=None, metadata={"help": "IDX file of evaluation images."})
    validation_labels: str | None = field(default=None, metadata={"help": "IDX file of evaluation labels."})
    train_dir: str | None = field(default=None, metadata={"help": "Image folder, one sub-folder per class (Pillow)."})
    validation_dir: str | None = field(default=None, metadata={"help": "Image folder for evaluation."})
    dataset_name: str | None = field(default=None, metadata={"help": "Dataset on the Hub (online) or a local one."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Configuration of `dataset_name`."})
    image_column_name: str = field(default="image", metadata={"help": "Image column of a datasets dataset."})
    label_column_name: str = field(default="label", metadata={"help": "Label column of a datasets dataset."})
    validation_split_percentage: int | None = field(
        default=None, metadata={"help": "Percent of training images held out when there is no validation data (10)."}
    )
    image_size: int | None = field(
        default=None,
        metadata={
            "help": "Square input size (default: the model config's `image_size`, else the images' own size "
            f"for IDX data, else {DEFAULT_IMAGE_SIZE})."
        },
    )
    image_mean: list[float] | None = field(default=None, metadata={"help": "Per-channel mean (default 0.5)."})
    image_std: list[float] | None = field(default=None, metadata={"help": "Per-channel std (default 0.5)."})
    random_flip: bool = field(default=False, metadata={"help": "Flip training images left-right at random."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Train on this many images at most."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Evaluate on this many images at most."})
    latency_batch_size: int = field(
        default=8, metadata={"help": "Evaluation images per forward when timing dense against pruned."}
    )


def make_parser() -> HfArgumentParser:
    return HfArgumentParser((ModelArguments, DataArguments, OTOTrainingArguments))


def parse_args(argv: list[str] | None = None) -> tuple[ModelArguments, DataArguments, OTOTrainingArguments]:
    return parse_arguments(make_parser(), argv)


def parse_config_overrides(text: str | None) -> dict[str, Any]:
    """`"a=1,b=[2,3],c=bottleneck"` -> `{"a": 1, "b": [2, 3], "c": "bottleneck"}` (commas inside brackets kept)."""
    if not text:
        return {}
    pairs, depth, current = [], 0, ""
    for char in text:
        depth += 1 if char in "[(" else -1 if char in "])" else 0
        if char == "," and depth == 0:
            pairs.append(current)
            current = ""
        else:
            current += char
    pairs.append(current)
    overrides = {}
    for pair in filter(None, (p.strip() for p in pairs)):
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"`--config_overrides` entries must look like `key=value`, got {pair!r}.")
        value = value.strip()
        if value.lower() in ("true", "false"):
            overrides[key.strip()] = value.lower() == "true"
            continue
        try:
            overrides[key.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[key.strip()] = value
    return overrides


def build_model(
    model_args: ModelArguments, label_names: list[str], data_channels: int, image_size: int | None
) -> tuple[Any, str | None]:
    """The model to prune, with the data's labels, and the folder it came from (None when built from a config)."""
    labels = dict(
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={name: i for i, name in enumerate(label_names)},
    )
    if model_args.model_name_or_path and model_args.model_type:
        raise ValueError("Pass either `--model_name_or_path` or `--model_type`, not both.")
    if model_args.model_name_or_path:
        check_model_source(model_args.model_name_or_path)
        common = dict(
            cache_dir=model_args.cache_dir,
            revision=model_args.model_revision,
            token=model_args.token,
            trust_remote_code=model_args.trust_remote_code,
        )
        try:
            config = AutoConfig.from_pretrained(
                model_args.model_name_or_path, finetuning_task="image-classification", **labels, **common
            )
            model = AutoModelForImageClassification.from_pretrained(
                model_args.model_name_or_path,
                config=config,
                ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
                **common,
            )
        except OSError as error:  # not a local folder and no Hub access, or a folder without weights
            raise model_error(model_args.model_name_or_path, error) from error
        return model, model_args.model_name_or_path
    if not model_args.model_type:
        raise ValueError(
            "No model: pass `--model_name_or_path` (a folder) or `--model_type` (e.g. resnet, convnext, "
            "vit) with optional `--config_overrides`."
        )
    try:
        defaults = AutoConfig.for_model(model_args.model_type)
    except ValueError as error:
        raise ValueError(f"Unknown `--model_type` {model_args.model_type!r} ({error}).") from error
    overrides = parse_config_overrides(model_args.config_overrides)
    unknown = [key for key in overrides if not hasattr(defaults, key)]
    if unknown:
        raise ValueError(f"`--config_overrides` keys {unknown} are not attributes of {type(defaults).__name__}.")
    if "num_channels" not in overrides and hasattr(defaults, "num_channels"):
        overrides["num_channels"] = data_channels  # grayscale data: a 1-channel stem rather than repeated channels
    if image_size is not None and "image_size" not in overrides and hasattr(defaults, "image_size"):
        overrides["image_size"] = image_size
    config = AutoConfig.for_model(model_args.model_type, **overrides, **labels)
    logger.info(f"Building a randomly initialised {model_args.model_type} from {config}")
    return AutoModelForImageClassification.from_config(config), None


def main(model_args: ModelArguments, data_args: DataArguments, training_args: OTOTrainingArguments) -> dict[str, Any]:
    """Train-and-prune, save and evaluate.

    Returns:
        `dict`: what `eval_results.json` holds, plus `report` (the compression report), `trainer` and `reloaded_model`
        (loaded back from the saved folder).
    """
    setup_logging(training_args.get_process_log_level(), logger)
    logger.info(f"Training arguments: {training_args}")
    pruned_dir = Path(model_args.pruned_model_dir or Path(training_args.output_dir) / "pruned")
    check_output_dir(pruned_dir, model_args.overwrite_pruned_model, "--pruned_model_dir")
    if not (model_args.model_name_or_path or model_args.model_type):
        raise ValueError("No model: pass `--model_name_or_path` (a folder) or `--model_type` (e.g. resnet).")
    set_seed(training_args.seed)

    # ---- data ----
    splits, label_names = load_image_datasets(data_args, training_args.seed, model_args.cache_dir, model_args.token)
    train_dataset = subsample(splits["train"], data_args.max_train_samples, training_args.seed)
    eval_dataset = subsample(splits["validation"], data_args.max_eval_samples, training_args.seed)
    train_dataset.random_flip = data_args.random_flip
    data_channels = train_dataset.num_channels
    native_size = None  # IDX images share one size: keep it unless told otherwise
    if isinstance(train_dataset, ArrayImageDataset) and len(set(train_dataset.images.shape[-2:])) == 1:
        native_size = int(train_dataset.images.shape[-1])
    logger.info(
        f"{len(train_dataset)} training and {len(eval_dataset)} evaluation images, {data_channels} "
        f"channel(s), {len(label_names)} labels: {label_names}"
    )

    # ---- model and preprocessing ----
    model, source_folder = build_model(model_args, label_names, data_channels, data_args.image_size or native_size)
    saved = read_processor_config(source_folder) if source_folder and Path(source_folder).is_dir() else {}
    config_size = getattr(model.config, "image_size", None)
    if isinstance(config_size, (list, tuple)):
        config_size = config_size[0]
    if data_args.image_size and config_size and data_args.image_size != config_size and source_folder:
        logger.warning(
            f"`--image_size {data_args.image_size}` differs from the model's image_size {config_size}; "
            "using the model's."
        )
    saved_size = (saved.get("size") or (None,))[0]
    size = config_size or data_args.image_size or saved_size or native_size or DEFAULT_IMAGE_SIZE
    collator = ImageCollator(
        size=(int(size), int(size)),
        num_channels=int(getattr(model.config, "num_channels", data_channels)),
        mean=data_args.image_mean or saved.get("image_mean") or (0.5,),
        std=data_args.image_std or saved.get("image_std") or (0.5,),
    )
    logger.info(f"Preprocessing: {collator}")

    modules, sources = load_metrics(["accuracy"])
    compute_metrics = make_compute_metrics(modules, "macro")

    # ---- dense evaluation, training with pruning, export ----
    trainer = OTOTrainer(
        model,
        training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=collator,
        compute_metrics=compute_metrics,
    )
    logger.info(f"{len(trainer.groups)} prunable groups: {trainer.groups.counts()}")

    def write_preprocessor_config() -> None:
        if trainer.is_world_process_zero():
            write_json(pruned_dir / "preprocessor_config.json", collator.processor_config())

    run = train_prune_evaluate(
        trainer,
        pruned_dir,
        model_args.overwrite_pruned_model,
        AutoModelForImageClassification,
        on_saved=write_preprocessor_config,
    )

    # ---- reports ----
    dataset = hub_id(data_args.dataset_name) or (
        "zalando-datasets/fashion_mnist" if data_args.fashion_mnist_dir else None
    )
    return finish_run(
        trainer=trainer,
        reloaded=run["reloaded"],
        pruned_dir=pruned_dir,
        eval_dataset=eval_dataset,
        collator=collator,
        latency_batch_size=data_args.latency_batch_size,
        stages=run["stages"],
        sources=sources,
        zero_groups=run["zero_groups"],
        script_logger=logger,
        card=dict(
            base_model=hub_id(source_folder),
            task="image-classification",
            dataset=dataset,
            language=None,
        ),
        title="Image classification with Only-Train-Once",
    )


if __name__ == "__main__":
    main(*parse_args())
