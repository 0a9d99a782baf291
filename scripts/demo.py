"""The main job of `make demo`: discover groups, prune, save, reload, and show that nothing changed.

    python scripts/demo.py                                   # tiny BERT-for-QA built from a config (no downloads)
    python scripts/demo.py --sparsity 0.5 --output_dir outputs/demo

It removes the groups (attention heads, FFN neurons) with the smallest L2 norm, a fraction `--sparsity` of each
kind, then checks the three promises of oto_hf: the pruned model equals the zero-masked model, it is physically
smaller, and `AutoModelForQuestionAnswering.from_pretrained` reloads it exactly.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from transformers import AutoModelForQuestionAnswering, BertConfig, BertForQuestionAnswering
from transformers.utils import logging as hf_logging

from oto_hf import GroupSet, construct_subnet, discover_groups, save_pruned
from oto_hf.stats import forward_outputs


def group_norms(model: torch.nn.Module, groups: GroupSet) -> torch.Tensor:
    params = dict(model.named_parameters())
    norms = torch.zeros(len(groups))
    for group in groups:
        squares = sum(params[name].detach().index_select(dim, idx).pow(2).sum() for name, dim, idx in group.slices)
        norms[group.id] = squares.sqrt()
    return norms


def smallest_groups(model: torch.nn.Module, groups: GroupSet, sparsity: float) -> list[int]:
    """The `sparsity` fraction of each kind with the smallest norm, keeping at least one group per block."""
    norms = group_norms(model, groups)
    chosen: list[int] = []
    for kind in groups.counts():
        ids = [g.id for g in groups if g.kind == kind]
        ranked = sorted(ids, key=lambda i: float(norms[i]))
        chosen += ranked[: round(sparsity * len(ids))]
    kept_per_block: dict[str, int] = {}
    for group in groups:
        if group.id not in chosen:
            kept_per_block[(group.module, group.kind)] = kept_per_block.get((group.module, group.kind), 0) + 1
    for group in sorted(groups, key=lambda g: -float(norms[g.id])):
        if group.id in chosen and not kept_per_block.get((group.module, group.kind)):
            chosen.remove(group.id)
            kept_per_block[(group.module, group.kind)] = 1
    return sorted(chosen)


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


def main(args: argparse.Namespace) -> None:
    hf_logging.set_verbosity_warning()
    hf_logging.disable_progress_bar()
    torch.manual_seed(args.seed)
    config = BertConfig(vocab_size=1000, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                        intermediate_size=512)
    model = BertForQuestionAnswering(config).eval()
    with torch.no_grad():  # give groups different sizes, as training would
        for name, param in model.named_parameters():
            if "encoder" in name and param.dim() == 2:
                param.mul_(torch.rand(param.shape[0], 1) * 2)
    print(f"[1/4] Discovering zero-invariant groups of {type(model).__name__} "
          f"({config.num_hidden_layers} layers, {config.num_attention_heads} heads, FFN {config.intermediate_size})")
    start = time.perf_counter()
    groups = discover_groups(model)
    print(groups.summary())
    print(f"      ({time.perf_counter() - start:.1f} s)")

    ids = smallest_groups(model, groups, args.sparsity)
    print(f"\n[2/4] Removing the {len(ids)} smallest-norm groups ({args.sparsity:.0%} of each kind)")
    pruned = construct_subnet(model, groups, ids)
    record = pruned.oto_pruning
    for family in record["layers"]:
        if family["kept"] != family["total"]:
            print(f"      layer {family['layer']}: {family['kind']}s kept {family['kept']}/{family['total']}")
    print(f"      parameters {record['params_before']:,} -> {record['params_after']:,} "
          f"({record['params_after'] / record['params_before']:.1%}); FLOPs {record['flops_before']:,} -> "
          f"{record['flops_after']:,} ({record['flops_after'] / record['flops_before']:.1%})")

    inputs = groups.example_inputs
    masked = BertForQuestionAnswering(config).eval()
    masked.load_state_dict(model.state_dict())
    groups.zero_(masked, ids)
    pruned_outputs, _ = forward_outputs(pruned, inputs)
    print(f"\n[3/4] Zero-invariance: max |pruned - zero-masked| = "
          f"{max_diff(pruned_outputs, forward_outputs(masked, inputs)[0]):.2e}")

    folder = save_pruned(pruned, args.output_dir, overwrite=True)
    reloaded = AutoModelForQuestionAnswering.from_pretrained(folder).eval()
    print(f"\n[4/4] Saved to {folder} ({', '.join(sorted(p.name for p in Path(folder).iterdir()))})")
    print(f"      reloaded as {type(reloaded).__name__}: max |reloaded - pruned| = "
          f"{max_diff(forward_outputs(reloaded, inputs)[0], pruned_outputs):.2e}")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sparsity", type=float, default=0.4, help="fraction of each group kind to remove")
    parser.add_argument("--output_dir", default="outputs/demo-pruned", help="where to save the pruned model")
    parser.add_argument("--seed", type=int, default=0)
    return parser


if __name__ == "__main__":
    main(make_parser().parse_args())
