"""The QA model of `run_squad.py`: loaded with its fast tokenizer (a fresh QA head when the checkpoint has none), and
scored on SQuAD (EM/F1 of its predictions through the trainer's evaluation loop, post-processed by `utils_qa.py`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import datasets
import torch
from transformers import AutoConfig, AutoModelForQuestionAnswering, AutoTokenizer

from oto_hf import OTOTrainer
from utils_qa import postprocess_qa_predictions, references
from utils_squad_data import ASSETS_HINT

if TYPE_CHECKING:
    from run_squad import DataArguments, ModelArguments

logger = logging.getLogger(__name__)


def load_model_and_tokenizer(model_args: ModelArguments) -> tuple[Any, Any, bool]:
    """The QA model, its fast tokenizer, and whether the QA head is freshly initialised."""
    source = model_args.model_name_or_path
    common = dict(
        cache_dir=model_args.cache_dir,
        revision=model_args.model_revision,
        trust_remote_code=model_args.trust_remote_code,
    )
    try:
        config = AutoConfig.from_pretrained(source, **common)
    except (OSError, ValueError) as error:
        local = Path(source).expanduser()
        if local.exists():
            raise ValueError(
                f"--model_name_or_path {source!r} is not a model folder: it needs config.json and weights "
                f"(model.safetensors) beside a tokenizer ({error}). For a real offline BERT-family model, "
                f"{ASSETS_HINT} (all-MiniLM-L6-v2)."
            ) from error
        raise ValueError(
            f"Could not load {source!r}: not a local folder, and the Hub did not provide it ({error}). Offline, pass "
            f"a local model folder; {ASSETS_HINT} (all-MiniLM-L6-v2)."
        ) from error
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name or source, use_fast=True, **common)
    except (OSError, ValueError) as error:
        name = model_args.tokenizer_name or source
        raise ValueError(
            f"Could not load a tokenizer from {name!r} ({error}); save one beside the model or pass --tokenizer_name."
        ) from error
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"{type(tokenizer).__name__} is not a fast tokenizer; SQuAD preprocessing needs offset "
            "mappings. Use a tokenizer with a tokenizer.json (PreTrainedTokenizerFast)."
        )
    model, info = AutoModelForQuestionAnswering.from_pretrained(
        source, config=config, output_loading_info=True, **common
    )
    fresh_head = any(key.split(".")[0] == "qa_outputs" for key in info.get("missing_keys", []))
    if fresh_head:
        logger.info(
            "%s has no QA head: qa_outputs is freshly initialised, so the dense EM/F1 before training is near 0.",
            source,
        )
    return model, tokenizer, fresh_head


# ---- evaluation ----------------------------------------------------------------------------------------------------


def evaluate_squad(
    trainer: OTOTrainer,
    model: torch.nn.Module,
    examples: datasets.Dataset,
    features: datasets.Dataset,
    data_args: DataArguments,
    metric,
    prefix: str,
) -> dict[str, float]:
    """EM/F1 of `model` on `examples` (predictions through the trainer's evaluation loop, then post-processing)."""
    for_model = features.remove_columns(["example_id", "offset_mapping"])
    previous, strategy = trainer.model, trainer.args.train_sampling_strategy
    trainer.model = model  # the trainer's loop batches, gathers across processes and shows a progress bar
    # transformers 5.23 also applies `train_sampling_strategy="group_by_length"` to evaluation (a LengthGroupedSampler
    # in `Trainer._get_eval_sampler`), which reorders the windows; post-processing needs them in dataset order.
    if strategy == "group_by_length":
        trainer.args.train_sampling_strategy = "random"
    try:
        output = trainer.predict(for_model, metric_key_prefix=prefix)
    finally:
        trainer.model, trainer.args.train_sampling_strategy = previous, strategy
    start_logits, end_logits = output.predictions[:2]
    predictions = postprocess_qa_predictions(
        examples,
        features,
        start_logits,
        end_logits,
        version_2_with_negative=data_args.version_2_with_negative,
        n_best_size=data_args.n_best_size,
        max_answer_length=data_args.max_answer_length,
        null_score_diff_threshold=data_args.null_score_diff_threshold,
        show_progress=not trainer.args.disable_tqdm,
    )
    if trainer.is_world_process_zero():
        predictions.save(trainer.args.output_dir, prefix)
    metrics = metric.compute(
        predictions=predictions.for_metric(data_args.version_2_with_negative), references=references(examples)
    )
    logger.info("%s: %s", prefix, json.dumps({k: round(v, 4) for k, v in metrics.items()}))
    return metrics
