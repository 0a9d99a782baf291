#!/usr/bin/env python
"""Which groups should go? One-shot selection on a real LLM, before any training: the importance signals DHSPG ranks
by, against the width baseline's activation ranking, at the same decoder FLOPs.

SmolLM2-135M and the BBC training blocks of `bench_llm.py` (same assets, same data reading). Each signal is computed
on the same calibration blocks, exactly as OTO computes it before its first partition: a `DHSPG` built with that
saliency takes `--calibration_batches` steps at learning rate 0 (the weights do not move) and its `importance` is
read back:

- `fisher`: the mean over steps of `<x_g, grad_g>^2` (one mean gradient per batch), DHSPG's own default;
- `kfac`: `OutputImportance` (a group's output at its reader against the loss gradient's second moment there);
- `output`: the same with the gradient taken as isotropic (output energy times gradient energy, per token);
- `sample_fisher`: `SampleFisher` (the squared loss gradient of a mask on the group, per training sequence).

Each signal chooses groups two ways: `global` (the greedy knapsack DHSPG's selection follows: groups in order of
importance per FLOP until the decoder FLOPs drop by the level; a KV group takes its query heads with it) and
`uniform` (the width baseline's mix of KV groups and neurons per layer, ranked inside each layer by the signal). The
chosen groups are zeroed and the held-out perplexity measured; `width` is the width baseline itself
(`llm_baselines.width_prune`, activation importance, uniform). Lower is better; none of these models is trained, so
this isolates the choice from the training that follows (`bench_llm.py` measures both together).

    python scripts/bench_selection.py                          # 1.5x, 3 batches of 4 blocks, 16 held-out blocks
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import bench_llm
import run_clm
from assets import fetch_bbc, fetch_smollm2
from llm_baselines import width_prune, width_units
from oto_hf import DHSPG, GroupSet, discover_groups, group_flop_costs
from oto_hf.optim.dhspg import importance_source_for
from utils_common import subsample

SIGNALS = ("fisher", "kfac", "output", "sample_fisher")


def signal_importance(
    model: nn.Module, groups: GroupSet, batches: list[dict[str, torch.Tensor]], saliency: str
) -> torch.Tensor:
    """DHSPG's importance after `len(batches)` warm-up steps at learning rate 0 (the first partition's scores)."""
    steps = len(batches)
    source = importance_source_for(saliency, model, groups)
    optimizer = DHSPG.from_model(
        model, groups, lr=0.0, saliency=saliency, target_sparsity=0.1, partition_steps=steps,
        pruning_end_steps=steps + 1, importance_window=steps, importance_source=source,
    )  # fmt: skip
    was_training = model.training
    model.train()
    try:
        for batch in batches:
            model.zero_grad()
            model(**batch, use_cache=False).loss.backward()
            optimizer.step()
        importance = optimizer.importance.double().cpu()
    finally:
        model.zero_grad()
        model.train(was_training)
        if source is not None:
            source.remove()
    return importance


def global_choice(groups: GroupSet, importance: torch.Tensor, costs: torch.Tensor, flops: float) -> list[int]:
    """Positions of the groups, by importance per FLOP (least first), until `flops` are removed; a KV group's query
    heads go with it (and their cost counts once)."""
    position_of = {id(group): p for p, group in enumerate(groups)}
    children = {nest: [position_of[id(g)] for g in heads] for nest, (_, heads) in groups.nests().items()}
    chosen: set[int] = set()
    removed = 0.0
    for position in torch.argsort(importance / costs.clamp_min(1e-30)).tolist():
        if removed >= flops:
            break
        if costs[position] <= 0 or position in chosen:
            continue
        group = groups[position]
        members = [position] + (children.get(group.nest, []) if group.kind == "kv_head" else [])
        new = [m for m in members if m not in chosen]
        chosen.update(new)
        removed += float(costs[new].sum())
    return sorted(chosen)


def uniform_choice(groups: GroupSet, importance: torch.Tensor, mix: dict[str, int]) -> list[int]:
    """Positions of the `mix` least important units of each kind in every layer (`width_units`)."""
    position = {group.id: i for i, group in enumerate(groups)}
    chosen = []
    for kind, layers in width_units(groups).items():
        for layer in layers:
            scores = [float(sum(importance[position[g.id]] for g in unit)) for unit in layer]
            order = sorted(range(len(layer)), key=scores.__getitem__)[: mix[kind]]
            chosen += [position[g.id] for index in order for g in layer[index]]
    return chosen


def masked_perplexity(model: nn.Module, groups: GroupSet, positions: list[int], held_out: list) -> float:
    masked = groups.zero_(copy.deepcopy(model), [groups[p].id for p in positions])
    return math.exp(bench_llm.mean_loss(masked, held_out))


def describe(groups: GroupSet, positions: list[int]) -> str:
    counts: dict[str, int] = {}
    for p in positions:
        counts[groups[p].kind] = counts.get(groups[p].kind, 0) + 1
    return ", ".join(f"{count} {kind}" for kind, count in sorted(counts.items()))


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--speedup", type=float, default=1.5, help="factor by which the decoder FLOPs drop")
    parser.add_argument("--calibration_batches", type=int, default=3, help="batches of 4 training blocks")
    parser.add_argument("--eval_blocks", type=int, default=16)
    parser.add_argument("--model", default=None, help="causal LM folder (default: SmolLM2-135M from assets.py)")
    parser.add_argument("--train_file", default=None)
    parser.add_argument("--validation_file", default=None)
    parser.add_argument("--block_size", type=int, default=128)
    parser.add_argument("--output_dir", default="outputs/bench_selection")
    args = parser.parse_args(argv)
    if not args.speedup > 1 or args.calibration_batches <= 0 or args.eval_blocks <= 0:
        raise ValueError("`--speedup` must be > 1, `--calibration_batches` and `--eval_blocks` positive.")
    start = time.perf_counter()
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    if args.train_file is None or args.validation_file is None:
        bbc = fetch_bbc()
    model, tokenizer = run_clm.load_model_and_tokenizer(
        run_clm.ModelArguments(model_name_or_path=args.model or str(fetch_smollm2()))
    )
    blocks = bench_llm.load_blocks(
        tokenizer, args.train_file or str(bbc["train"]), args.validation_file or str(bbc["validation"]),
        args.block_size, output,
    )  # fmt: skip
    held_out = bench_llm.batches_of(subsample(blocks["validation"], args.eval_blocks, None), 4)
    train = subsample(blocks["train"], 4 * args.calibration_batches, 0)
    calibration = bench_llm.batches_of(train, 4)
    example = {"input_ids": held_out[0]["input_ids"][:1], "attention_mask": held_out[0]["attention_mask"][:1]}
    sizes = bench_llm.flops_and_params(model, example)
    flops = sizes["decoder_flops"] * (1 - 1 / args.speedup)
    groups = discover_groups(model, example)
    _, costs = group_flop_costs(model, groups, example)
    costs = torch.tensor(costs, dtype=torch.float64)

    rows = [{"signal": "none (dense)", "choice": "-", "perplexity": math.exp(bench_llm.mean_loss(model, held_out))}]
    width = width_prune(model, groups, calibration, flops, bench_llm.mean_loss)
    mix = width.removed_per_layer
    position = {group.id: i for i, group in enumerate(groups)}
    width_ids = [position[i] for i in width.removed_ids]
    rows.append({"signal": "activation (width)", "choice": "uniform", "perplexity": math.exp(
        bench_llm.mean_loss(width.model, held_out)), "removed": describe(groups, width_ids)})  # fmt: skip
    for signal in SIGNALS:
        importance = signal_importance(model, groups, calibration, signal)
        for choice, positions in (
            ("global", global_choice(groups, importance, costs, flops)),
            ("uniform", uniform_choice(groups, importance, mix)),
        ):
            perplexity = masked_perplexity(model, groups, positions, held_out)
            rows.append({"signal": signal, "choice": choice, "perplexity": perplexity,
                         "removed": describe(groups, positions)})  # fmt: skip
            print(rows[-1], flush=True)
    lines = ["| signal | choice | perplexity (no training) | groups removed |", "|---|---|---|---|"]
    lines += [f"| {r['signal']} | {r['choice']} | {r['perplexity']:.1f} | {r.get('removed', '')} |" for r in rows]
    note = (
        f"{args.speedup:g}x fewer decoder FLOPs; width's mix per layer: {mix}; {args.calibration_batches} calibration "
        f"batches of 4 x {args.block_size} tokens; {args.eval_blocks} held-out blocks; "
        f"{(time.perf_counter() - start) / 60:.1f} min"
    )
    text = "\n".join(lines) + f"\n\n{note}\n"
    (output / "bench_selection.md").write_text(text)
    (output / "bench_selection.json").write_text(json.dumps({"rows": rows, "settings": vars(args)}, indent=2))
    print("\n" + text)
    return rows


if __name__ == "__main__":
    main()
