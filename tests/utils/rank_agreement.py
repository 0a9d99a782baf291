"""Two ranks with different gradients (so different local statistics): with `sync_ranks` their DHSPG decisions agree.

Run under `python -m torch.distributed.run --nproc_per_node 2 -m tests.utils.rank_agreement OUT.json`.
"""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F

from tests.utils.dhspg_toys import batch, make


def zero_masks(sync: bool, rank: int) -> list[list[bool]]:
    model, _, optimizer = make(variant="adamw", lr=1e-2, target_sparsity=0.5, sync_ranks=sync)
    masks = []
    for step in range(optimizer.pruning_end_steps + 2):
        x, y = batch(step + 1000 * rank)  # each rank sees other data: other gradients, other statistics
        optimizer.zero_grad()
        F.mse_loss(model(x), y).backward()
        optimizer.step()
        masks.append([i in set(optimizer.zero_group_ids()) for i in range(optimizer.num_groups)])
    return masks


def main(path: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    result = {}
    for sync in (True, False):
        mine = torch.tensor(zero_masks(sync, rank), dtype=torch.uint8)
        gathered = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, mine)
        result["synced" if sync else "local"] = all(torch.equal(gathered[0], g) for g in gathered[1:])
    if rank == 0:
        with open(path, "w") as handle:
            json.dump(result, handle)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
