#!/usr/bin/env python
"""LLM benchmark: OTO against the width and depth pruning that LLM users choose today, with the same tokens for all.

SmolLM2-135M-Instruct (30 layers, 9 query / 3 KV heads, FFN 1,536; dequantized to fp32) on BBC News, split by
article (`assets.fetch_smollm2`, `assets.fetch_bbc`; `OTO_HF_CACHE` names the cache). Per seed, every trained method
sees the same training blocks in the same order, with the same steps, learning rate and distillation (KL to the
frozen original model, alpha 0.5, temperature 2, from `OTOTrainer`), and all are measured on the same held-out blocks:

- `dense`: the original model, evaluated only;
- `dense-trained`: the original model trained on the same tokens (separates domain adaptation from pruning);
- `oto`: `OTOTrainer` (DHSPG with its defaults) with a FLOPs budget that cuts the decoder layers' FLOPs by the level;
- `width` (Minitron-style, `llm_baselines.width_prune`): KV groups (with their query heads) ranked by the norm of
  their heads' output before `o_proj`, neurons by the mean |act(gate) * up|, over the calibration blocks; the least
  important removed, the same number in every layer (the mix of the two chosen by the calibration loss), sliced with
  `discover_groups` + `construct_subnet`; then trained as above;
- `depth` (ShortGPT-style, `llm_baselines.depth_prune`): the blocks with the least influence (1 - cos(input, output)
  over the calibration blocks) removed, then trained as above.

Levels (`--speedups`) are factors by which the decoder layers' FLOPs drop: 1.5 keeps 1/1.5 of them. FLOPs are those
`torch.utils.flop_counter` counts on one block (matmuls and attention; the embedding lookup and the norms count 0):
the total is the decoder layers plus the LM head (tied to the embedding, never pruned), and both ratios are given.
OTO's `target_sparsity`, a fraction of the total, is set to remove the same decoder FLOPs. The calibration blocks are
the first `--calibration_blocks` of the training blocks (no extra text).

Reported per method: held-out perplexity (exp of the mean token loss), kept parameters and FLOPs (decoder and total),
CPU decode speed (`generate` with the KV cache, batch 1, greedy, `--new_tokens` new tokens, the models interleaved in
one run; tokens/s and the ratio over dense), prefill latency ratio (a forward on one held-out block, interleaved),
KV-cache bytes per token, heads / KV heads / neurons kept per layer, greedy continuations of three fixed prompts,
training tokens, seed and wall time. Written to `<output_dir>/bench_llm.json` and `bench_llm.md`.

    python scripts/bench_llm.py --speedups 1.5                  # the 1.5x comparison, seed 0
    python scripts/bench_llm.py --speedups 1.5 2 --seeds 0 1
    python scripts/bench_llm.py --methods dense oto width --max_steps 2 --eval_blocks 4    # a smoke run
    python scripts/bench_llm.py --methods oto --oto_args dhspg_saliency=output --oto_erase  # OTO variants

Budget: by default each trained run sees 32 steps of 4 blocks of 128 tokens (16,384 tokens; the baselines' 8
calibration blocks are the first 8 of these), and perplexity is measured on 32 held-out blocks (4,096 tokens). On the
2-core CPU machine this was developed on, a training step (4 x 128 tokens, with the teacher's forward) took 4-16 s when
the machine was quiet and up to 112 s when other jobs shared it: the 1.5x comparison at the default budget is under
an hour on 2 cores that nothing else uses, and a few hours on busy ones (see the README for measured runs).
"""

from __future__ import annotations

import argparse
import ast
import copy
import gc
import json
import logging
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from transformers import GenerationConfig, PreTrainedTokenizerBase, default_data_collator, set_seed
from transformers.utils import logging as hf_logging

import run_clm
from assets import fetch_bbc, fetch_smollm2
from llm_baselines import decoder_layers, depth_prune, width_prune
from oto_hf import GroupSet, OTOTrainer, OTOTrainingArguments, count_parameters, discover_groups
from oto_hf.models.no_op import ErasedModule
from oto_hf.report import measure_latency
from oto_hf.stats import count_flops
from utils_common import key_value, subsample

METHODS = ("dense", "dense-trained", "oto", "width", "depth")
PROMPTS = (
    "The government said on Tuesday that",
    "Shares in the company rose sharply after",
    "The capital of Italy is",
)
LOG = logging.getLogger("bench_llm")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument(
        "--speedups", nargs="+", type=float, default=[1.5, 2.0], help="factors by which the decoder FLOPs drop"
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--max_steps", type=int, default=32, help="training steps of every trained run")
    parser.add_argument("--batch_size", type=int, default=4, help="blocks per training step")
    parser.add_argument("--block_size", type=int, default=128)
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--eval_blocks", type=int, default=32, help="held-out blocks for perplexity")
    parser.add_argument(
        "--oto_args",
        nargs="*",
        default=[],
        type=setting,
        help="OTOTrainingArguments of the oto runs as key=value, e.g. dhspg_saliency=output num_partition_periods=1",
    )
    parser.add_argument(
        "--oto_erase", action="store_true", help="OTO also erases whole sub-blocks (`erase_operators`, H2SPG)"
    )
    parser.add_argument("--calibration_blocks", type=int, default=8, help="training blocks scoring the baselines")
    parser.add_argument("--new_tokens", type=int, default=128, help="tokens generated per prompt for decode speed")
    parser.add_argument("--decode_rounds", type=int, default=1, help="rounds over the prompts for decode speed")
    parser.add_argument("--latency_repeats", type=int, default=20, help="timed prefill forwards per model")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--model", default=None, help="causal LM folder (default: SmolLM2-135M from assets.py)")
    parser.add_argument("--train_file", default=None, help="training text (default: BBC News train.txt)")
    parser.add_argument("--validation_file", default=None, help="held-out text (default: BBC News validation.txt)")
    parser.add_argument("--output_dir", default="outputs/bench_llm")
    return parser


def check_args(args: argparse.Namespace) -> None:
    for name in ("max_steps", "batch_size", "block_size", "eval_blocks", "new_tokens", "decode_rounds"):
        if getattr(args, name) <= 0:
            raise ValueError(f"`--{name}` must be positive, got {getattr(args, name)}.")
    if not 0 < args.calibration_blocks:
        raise ValueError(f"`--calibration_blocks` must be positive, got {args.calibration_blocks}.")
    if "erase_operators" in dict(args.oto_args):
        raise ValueError("Pass `--oto_erase` instead of `--oto_args erase_operators=...` (the run's label names it).")
    bad = [s for s in args.speedups if not s > 1]
    if bad:
        raise ValueError(f"`--speedups` are factors by which the decoder FLOPs drop and must be > 1, got {bad}.")


# ---- data and measurements -----------------------------------------------------------------------------------------


def load_blocks(
    tokenizer: PreTrainedTokenizerBase, train_file: str, validation_file: str, block_size: int, work: Path
) -> Any:
    """The training and held-out text as blocks of `block_size` tokens (run_clm's reading and grouping)."""
    data_args = run_clm.DataArguments(train_file=train_file, validation_file=validation_file, block_size=block_size)
    raw, _ = run_clm.load_raw_text(data_args, None, None)
    return run_clm.text_blocks(raw, tokenizer, block_size, data_args, OTOTrainingArguments(str(work / "data")))


def setting(text: str) -> tuple[str, Any]:
    """`key=value` of `--oto_args`: the value as a Python literal (number, bool, ...) or else as a string."""
    key, value = key_value(text)
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def oto_label(args: argparse.Namespace) -> str:
    """`oto`, with the `--oto_args` given (`oto[dhspg_saliency=output]`) and `+erase` when it erases sub-blocks."""
    given = ",".join(f"{key}={value}" for key, value in args.oto_args)
    return "oto" + (f"[{given}]" if given else "") + ("+erase" if args.oto_erase else "")


def batches_of(blocks: Any, batch_size: int) -> list[dict[str, torch.Tensor]]:
    rows = [blocks[i] for i in range(len(blocks))]
    return [default_data_collator(rows[i : i + batch_size]) for i in range(0, len(rows), batch_size)]


@torch.no_grad()
def mean_loss(model: nn.Module, batches: Sequence[dict[str, torch.Tensor]]) -> float:
    """Mean token loss over `batches` of equal-length blocks (labels = inputs)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in batches:
        size = batch["input_ids"].shape[0]
        total += float(model(**batch, use_cache=False).loss) * size
        count += size
    model.train(was_training)
    return total / count


def flops_and_params(model: nn.Module, example: dict[str, torch.Tensor]) -> dict[str, int]:
    """Parameters and FLOPs on `example`, in all and in the decoder layers (the total less the LM head's)."""
    _, layers = decoder_layers(model)
    total = count_flops(model, example)
    head = model.get_output_embeddings()
    hidden = torch.zeros(*example["input_ids"].shape, head.in_features)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        head(hidden)
    return {
        "params": count_parameters(model),
        "decoder_params": sum(p.numel() for p in layers.parameters()),
        "flops": total,
        "decoder_flops": total - int(counter.get_total_flops()),
    }


@torch.no_grad()
def kv_bytes_per_token(model: nn.Module, input_ids: torch.Tensor) -> float:
    """Bytes the KV cache holds per token of one sequence, read from the cache after a forward."""
    outputs = model(input_ids=input_ids[:1], use_cache=True)
    cache = outputs.get("cache")
    if cache is None:
        cache = outputs.get("past_key_values")
    size = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    return size / input_ids.shape[1]


def widths_per_layer(model: nn.Module) -> list[tuple[int, int, int]]:
    """(query heads, KV heads, FFN neurons) of each decoder layer, read from the projections' shapes (0 for an
    erased attention or FFN sub-block)."""
    _, layers = decoder_layers(model)
    head_dim = getattr(model.config, "head_dim", None) or model.config.hidden_size // model.config.num_attention_heads
    widths = []
    for layer in layers:
        modules = dict(layer.named_modules())
        if isinstance(layer, ErasedModule):  # a whole block erased
            widths.append((0, 0, 0))
            continue
        try:
            attention, mlp = modules["self_attn"], modules["mlp"]
            heads = (0, 0) if isinstance(attention, ErasedModule) else (
                attention.q_proj.out_features // head_dim, attention.k_proj.out_features // head_dim
            )  # fmt: skip
            neurons = 0 if isinstance(mlp, ErasedModule) else mlp.down_proj.in_features
        except (KeyError, AttributeError) as error:
            raise ValueError(
                f"bench_llm reads LLaMA-style projections; {type(layer).__name__} lacks {error}."
            ) from None
        widths.append((*heads, neurons))
    return widths


def compact_widths(widths: list[tuple[int, int, int]]) -> str:
    """`9/3/1536 x30`: runs of equal (heads / KV heads / neurons) per layer."""
    runs: list[list] = []
    for width in widths:
        if runs and runs[-1][0] == width:
            runs[-1][1] += 1
        else:
            runs.append([width, 1])
    return ", ".join(f"{h}/{kv}/{n}" + (f" x{c}" if c > 1 else "") for (h, kv, n), c in runs)


@torch.no_grad()
def decode_and_prefill(
    models: dict[str, nn.Module],
    tokenizer: PreTrainedTokenizerBase,
    block: torch.Tensor,
    new_tokens: int,
    rounds: int,
    latency_repeats: int,
) -> dict[str, dict[str, Any]]:
    """Greedy decode speed (batch 1, KV cache) on `PROMPTS` and prefill latency on `block`, models interleaved (the
    order rotates every prompt), so load changes hit all alike. Ratios are over `dense`, the median of per-prompt
    (per-round for prefill) ratios."""
    config = GenerationConfig(
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    names = list(models)
    times: dict[str, list[float]] = {name: [] for name in names}
    texts: dict[str, list[str]] = {name: [] for name in names}
    for model in models.values():
        model.eval()
    steps = [(r, p) for r in range(rounds) for p in range(len(PROMPTS))]
    for index, (round_index, prompt_index) in enumerate(hf_logging.tqdm(steps, desc="Decoding")):
        encoded = tokenizer(PROMPTS[prompt_index], return_tensors="pt")
        for name in names[index % len(names) :] + names[: index % len(names)]:
            start = time.perf_counter()
            output = models[name].generate(**encoded, generation_config=config)
            times[name].append(time.perf_counter() - start)
            if round_index == 0:
                texts[name].append(tokenizer.decode(output[0, encoded["input_ids"].shape[1] :]))
    prefill: dict[str, list[float]] = {name: [] for name in names}
    inputs = {"input_ids": block[None]}
    for _ in hf_logging.tqdm(range(max(1, latency_repeats // 5)), desc="Prefill latency"):
        for name in names:
            prefill[name].append(measure_latency(models[name], inputs, repeats=5, warmup=1))
    results = {}
    for name in names:
        results[name] = {
            "decode_tokens_per_s": new_tokens * len(times[name]) / sum(times[name]),
            "decode_speed_ratio": statistics.median(d / t for d, t in zip(times["dense"], times[name])),
            "prefill_ms": statistics.median(prefill[name]),
            "prefill_latency_ratio": statistics.median(t / d for d, t in zip(prefill["dense"], prefill[name])),
            "continuations": texts[name],
        }
    return results


# ---- runs ----------------------------------------------------------------------------------------------------------


def train(
    student: nn.Module,
    teacher: nn.Module,
    train_blocks: Any,
    args: argparse.Namespace,
    seed: int,
    out: Path,
    groups: GroupSet | None = None,
    target: float = 0.0,
    example: dict[str, torch.Tensor] | None = None,
) -> tuple[nn.Module, list[dict[str, Any]]]:
    """`OTOTrainer` with distillation from `teacher` on `train_blocks`: with `groups` and `target`, OTO (the zero
    groups sliced away at the end); without, plain AdamW steps on `student` as it is. Returns the model and the log."""
    training_args = OTOTrainingArguments(
        output_dir=str(out),
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        seed=seed,
        target_sparsity=target,
        distillation="dense",
        **(dict(args.oto_args) if target else {}),
        erase_operators=bool(target) and args.oto_erase,
        save_strategy="no",
        report_to="none",
        logging_steps=max(1, args.max_steps // 10),
        dataloader_pin_memory=False,
    )
    student.requires_grad_(True)
    trainer = OTOTrainer(
        student,
        training_args,
        train_dataset=train_blocks,
        data_collator=default_data_collator,
        groups=groups if groups is not None else GroupSet([]),
        example_inputs=example,
        teacher=teacher,
    )
    trainer.train()
    model = trainer.pruned_model() if target else trainer.model
    log = trainer.state.log_history
    del trainer
    gc.collect()
    return model.eval(), log


def summarise(
    method: str,
    speedup: float | None,
    seed: int | None,
    model: nn.Module,
    dense_sizes: dict[str, int],
    example: dict[str, torch.Tensor],
    perplexity: float,
    tokens: int,
    wall: float,
    extra: dict[str, Any],
) -> dict[str, Any]:
    sizes = flops_and_params(model, example)
    widths = widths_per_layer(model)
    return {
        "method": method,
        "speedup_target": speedup,
        "seed": seed,
        "perplexity": perplexity,
        **sizes,
        "kept_params": sizes["params"] / dense_sizes["params"],
        "kept_decoder_params": sizes["decoder_params"] / dense_sizes["decoder_params"],
        "kept_flops": sizes["flops"] / dense_sizes["flops"],
        "kept_decoder_flops": sizes["decoder_flops"] / dense_sizes["decoder_flops"],
        "decoder_speedup": dense_sizes["decoder_flops"] / sizes["decoder_flops"],
        "kv_bytes_per_token": kv_bytes_per_token(model, example["input_ids"]),
        "layers": len(widths),
        "widths_per_layer": compact_widths(widths),
        "training_tokens": tokens,
        "wall_min": wall / 60,
        **extra,
    }


def table(rows: list[dict[str, Any]]) -> str:
    head = [
        "method",
        "level",
        "seed",
        "perplexity",
        "ppl / dense",
        "ppl / dense-trained",
        "kept params (decoder)",
        "kept FLOPs decoder (total)",
        "decode tok/s (x dense)",
        "prefill latency ratio",
        "KV bytes / token",
        "layers: heads/KV heads/neurons",
        "training tokens",
        "min",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        dense = next(r for r in rows if r["method"] == "dense")
        trained = next((r for r in rows if r["method"] == "dense-trained" and r["seed"] == row["seed"]), None)
        cells = [
            row["method"],
            f"{row['speedup_target']:g}x" if row["speedup_target"] else "-",
            "-" if row["seed"] is None else str(row["seed"]),
            f"{row['perplexity']:.2f}",
            f"{row['perplexity'] / dense['perplexity']:.3f}",
            f"{row['perplexity'] / trained['perplexity']:.3f}" if trained else "",
            f"{row['kept_params']:.3f} ({row['kept_decoder_params']:.3f})",
            f"{row['kept_decoder_flops']:.3f} ({row['kept_flops']:.3f})",
            f"{row['decode_tokens_per_s']:.1f} ({row['decode_speed_ratio']:.2f})"
            if "decode_tokens_per_s" in row
            else "",
            f"{row['prefill_latency_ratio']:.2f}" if "prefill_latency_ratio" in row else "",
            f"{row['kv_bytes_per_token']:,.0f}",
            f"{row['layers']}: {row['widths_per_layer']}",
            f"{row['training_tokens']:,}",
            f"{row['wall_min']:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def continuations(rows: list[dict[str, Any]]) -> str:
    lines = []
    for index, prompt in enumerate(PROMPTS):
        lines += [f"\n**{prompt}**\n", "| model | greedy continuation |", "|---|---|"]
        for row in rows:
            if "continuations" in row:
                text = " ".join(row["continuations"][index].split()).replace("|", "\\|")
                name = row["method"] + (f" {row['speedup_target']:g}x" if row["speedup_target"] else "")
                seed = "" if row["seed"] is None else f" (seed {row['seed']})"
                lines.append(f"| {name}{seed} | {text[:300]} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = make_parser().parse_args(argv)
    check_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    methods = [m for m in METHODS if m in args.methods]
    if "dense" not in methods:
        methods.insert(0, "dense")  # every ratio is over the original model
    model_dir = args.model or str(fetch_smollm2())
    if args.train_file is None or args.validation_file is None:
        bbc = fetch_bbc()
    train_file = args.train_file or str(bbc["train"])
    validation_file = args.validation_file or str(bbc["validation"])

    dense, tokenizer = run_clm.load_model_and_tokenizer(run_clm.ModelArguments(model_name_or_path=model_dir))
    dense.eval()
    blocks = load_blocks(tokenizer, train_file, validation_file, args.block_size, output)
    held_out = batches_of(subsample(blocks["validation"], args.eval_blocks, None), args.batch_size)
    example = {"input_ids": held_out[0]["input_ids"][:1], "attention_mask": held_out[0]["attention_mask"][:1]}
    dense_sizes = flops_and_params(dense, example)
    flops_note = (
        f"dense: {dense_sizes['flops']:,} FLOPs per block of {args.block_size} tokens, "
        f"{dense_sizes['decoder_flops']:,} in the decoder layers; the rest is the LM head (embedding lookup and norms "
        "count 0)"
    )
    print(flops_note, flush=True)

    rows: list[dict[str, Any]] = []
    began = time.perf_counter()
    rows.append(
        summarise("dense", None, None, dense, dense_sizes, example, math.exp(mean_loss(dense, held_out)), 0, 0.0, {})
    )
    rows[-1]["wall_min"] = (time.perf_counter() - began) / 60
    groups = None
    if {"oto", "width"} & set(methods):
        began = time.perf_counter()
        groups = discover_groups(dense, example)
        print(f"{len(groups)} groups: {groups.counts()} ({(time.perf_counter() - began) / 60:.1f} min)", flush=True)

    settings = {
        "model": model_dir,
        "train_file": train_file,
        "validation_file": validation_file,
        "held_out_blocks": args.eval_blocks,
        "flops": flops_note,
        **{k: v for k, v in vars(args).items() if k not in ("model", "train_file", "validation_file")},
        "prompts": PROMPTS,
        "distillation": "KL to the original model (alpha 0.5, temperature 2) and the LM loss, every trained run",
    }
    for seed in args.seeds:
        set_seed(seed)
        train_blocks = subsample(blocks["train"], args.max_steps * args.batch_size, seed)
        tokens = len(train_blocks) * args.block_size
        calibration = batches_of(train_blocks.select(range(args.calibration_blocks)), args.batch_size)
        speed_models: dict[str, nn.Module] = {"dense": dense}
        seed_rows: dict[str, dict[str, Any]] = {"dense": rows[0]}
        plan = [("dense-trained", None)] if "dense-trained" in methods else []
        plan += [(m, s) for s in args.speedups for m in methods if m in ("oto", "width", "depth")]
        for method, speedup in plan:
            name = method + (f"-{speedup:g}x" if speedup else "") + f"-seed{seed}"
            print(f"\n=== {name} ===", flush=True)
            set_seed(seed)
            began = time.perf_counter()
            extra: dict[str, Any] = {}
            with tempfile.TemporaryDirectory(dir=output) as work:
                if method == "dense-trained":
                    model, log = train(copy.deepcopy(dense), dense, train_blocks, args, seed, Path(work))
                else:
                    remove = dense_sizes["decoder_flops"] * (1 - 1 / speedup)
                    if method == "oto":
                        target = remove / dense_sizes["flops"]
                        extra["oto_target_sparsity"] = target
                        model, log = train(
                            copy.deepcopy(dense), dense, train_blocks, args, seed, Path(work), groups, target, example
                        )
                    elif method == "width":
                        result = width_prune(dense, groups, calibration, remove, mean_loss)
                        extra["width"] = {
                            "removed_per_layer": result.removed_per_layer,
                            "kept_per_layer": result.kept_per_layer,
                            "candidates": result.candidates,
                        }
                        model, log = train(result.model, dense, train_blocks, args, seed, Path(work))
                    else:
                        layers = len(decoder_layers(dense)[1])
                        result = depth_prune(dense, calibration, math.ceil(layers * (1 - 1 / speedup) - 1e-9))
                        extra["depth"] = {"influence": result.influence, "removed_blocks": result.removed}
                        model, log = train(result.model, dense, train_blocks, args, seed, Path(work))
            extra["train_loss"] = [entry["loss"] for entry in log if "loss" in entry]
            perplexity = math.exp(mean_loss(model, held_out))
            row = summarise(
                oto_label(args) if method == "oto" else method,
                speedup,
                seed,
                model,
                dense_sizes,
                example,
                perplexity,
                tokens,
                time.perf_counter() - began,
                extra,
            )
            rows.append(row)
            seed_rows[name] = row
            speed_models[name] = model
            print(table([rows[0], row]), flush=True)
            write_outputs(output, rows, settings, start, partial=True)
        print("\n=== decode speed and prefill latency ===", flush=True)
        measured = decode_and_prefill(
            speed_models,
            tokenizer,
            held_out[0]["input_ids"][0],
            args.new_tokens,
            args.decode_rounds,
            args.latency_repeats,
        )
        for name, figures in measured.items():
            if name == "dense" and "decode_tokens_per_s" in rows[0]:
                rows[0].setdefault("speed_by_seed", {})[seed] = figures
                continue
            seed_rows[name].update(figures)
        del speed_models
        gc.collect()
    summary = write_outputs(output, rows, settings, start, partial=False)
    print("\n" + summary, flush=True)
    return rows


def write_outputs(
    output: Path, rows: list[dict[str, Any]], settings: dict[str, Any], start: float, partial: bool
) -> str:
    """`bench_llm.json` and `bench_llm.md`, rewritten after every run (atomically: a temporary file, then renamed)."""
    text = (
        f"{table(rows)}\n\nlevel: factor by which the decoder layers' FLOPs drop; kept FLOPs: decoder layers "
        f"(whole model, LM head included); widths: query heads / KV heads / FFN neurons per layer.\n"
        f"{continuations(rows)}\n\n{settings['flops']}. Seeds {settings['seeds']}; total wall time "
        f"{(time.perf_counter() - start) / 60:.1f} min{' so far' if partial else ''}; {sys.platform}, CPU, "
        f"{torch.get_num_threads()} threads."
    )
    for name, content in (
        ("bench_llm.json", json.dumps({"settings": settings, "rows": rows}, indent=2, default=str)),
        ("bench_llm.md", text + "\n"),
    ):
        temporary = output / f".{name}.tmp{os.getpid()}"
        temporary.write_text(content)
        temporary.replace(output / name)
    return text


if __name__ == "__main__":
    main()
