"""Train a tiny LLaMA with DHSPG on one process, or sharded with FSDP2 (`fully_shard`) over several; save the result.

Every run sees the same global batch each step (with `W` ranks, rank `r` takes its `1/W` share, and FSDP2 averages the
gradients), so one process and `W` processes should reach the same zero groups and weights. For each base variant
(`sgd`, `adamw`) it writes to `OUT/<variant>/`: `result.json` (zero group ids), `weights.pt` (the full trained state
dict) and `pruned/` (`save_pruned` of the sliced model), all from the first rank.

    python -m tests.utils.fsdp_run OUT                                            # one process
    python -m torch.distributed.run --nproc_per_node 2 -m tests.utils.fsdp_run OUT  # FSDP2 over 2 ranks (gloo)
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from transformers import LlamaForCausalLM

from oto_hf import DHSPG, construct_subnet, discover_groups, save_pruned
from oto_hf.fsdp import gather_full_model
from tests.utils.tiny_models import CASES_BY_NAME, TEXT

GLOBAL_BATCH = 4
SEQ_LEN = 12
STEPS = 14
# Adam divides by sqrt(v), which amplifies the last-bit differences of a sharded gradient reduction: torch.optim.AdamW
# itself ends 1e-4 apart here after 14 steps, one process against two. SGD does not amplify them.
LEARNING_RATES = {"sgd": 0.1, "adamw": 1e-2}
SETTINGS = dict(
    weight_decay=0.01,
    target_sparsity=0.5,
    partition_steps=3,
    pruning_end_steps=11,
    num_partition_periods=2,
    min_heads_per_layer=1,
)


def build_model() -> LlamaForCausalLM:
    """The tiny LLaMA (GQA) of the architecture table."""
    torch.manual_seed(0)
    config = CASES_BY_NAME["llama"].config()
    config.use_cache = False  # torch.export cannot return the cache object
    return LlamaForCausalLM(config)


def batch(step: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1000 + step)
    return torch.randint(0, TEXT["vocab_size"], (GLOBAL_BATCH, SEQ_LEN), generator=generator)


def train(variant: str, rank: int, world: int, out: Path) -> None:
    model = build_model()
    groups = discover_groups(model, {"input_ids": batch(0)[:1]})  # on the whole model, before sharding

    # With adamw the optimizer is built first and its parameters are then swapped for the sharded ones, as
    # `Trainer` + accelerate do with FSDP2; with sgd it is built on the sharded model.
    def build_optimizer() -> DHSPG:
        return DHSPG.from_model(model, groups, variant=variant, lr=LEARNING_RATES[variant], **SETTINGS)

    names = {id(p): name for name, p in model.named_parameters()}
    optimizer = build_optimizer() if variant == "adamw" else None
    if world > 1:
        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(model)
    if optimizer is None:
        optimizer = build_optimizer()
    else:
        sharded = dict(model.named_parameters())
        for param_group in optimizer.param_groups:
            param_group["params"] = [sharded[names[id(p)]] for p in param_group["params"]]
    share = GLOBAL_BATCH // world
    for step in range(STEPS):
        ids = batch(step)[rank * share : (rank + 1) * share]
        optimizer.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()

    whole = gather_full_model(model)  # every rank takes part; the first rank gets the unsharded copy
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        torch.save(whole.state_dict(), out / "weights.pt")
        zero = optimizer.zero_group_ids()
        assert groups.zero_group_ids(whole) == zero
        save_pruned(construct_subnet(whole, groups, zero), out / "pruned")
        result = {"zero": zero, "world": world, "forced": optimizer.num_forced_zero_groups}
        (out / "result.json").write_text(json.dumps(result))


def main(out: str) -> None:
    distributed = "WORLD_SIZE" in os.environ
    if distributed:
        dist.init_process_group("gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    for variant in LEARNING_RATES:
        train(variant, rank, world, Path(out) / variant)
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
