"""How DHSPG sees parameters sharded by FSDP2 (`torch.distributed.fsdp.fully_shard`) and talks to the other ranks.

FSDP2 turns each parameter into a `DTensor` sharded on dim 0: rank `r` of a mesh of `W` ranks holds rows
`[r * c, r * c + n_r)` of the full tensor, with `c = ceil(rows / W)` (the `torch.chunk` layout; trailing ranks may
hold fewer rows or none). DHSPG does all its arithmetic on these local shards: elementwise steps need nothing else,
and a per-group statistic is a sum over a group's elements, so each rank sums its own rows and one `all_reduce` of the
stacked statistics completes them. Parameters that are not sharded (plain tensors, or replicated `DTensor`s) are
counted on the first rank only, so that the reduction does not count them once per rank.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, Replicate, Shard


def local(tensor: torch.Tensor) -> torch.Tensor:
    """The part of `tensor` this rank holds: the local shard of a `DTensor` (a view: in-place ops write through)."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


@dataclass(frozen=True)
class RowShard:
    """Rows `[start, start + length)` of dim 0 that this rank holds of a sharded parameter."""

    start: int
    length: int


def row_shard(param: torch.Tensor, name: str) -> RowShard | None:
    """This rank's rows of `param` when FSDP2 shards it on dim 0; `None` for a parameter held whole.

    Raises a `ValueError` for any other placement (DHSPG's group statistics need whole hyper-rows or dim-0 shards).
    """
    if not isinstance(param, DTensor):
        return None
    placements = param.placements
    if all(isinstance(p, Replicate) for p in placements):
        return None
    if len(placements) != 1 or placements[0] != Shard(0):
        raise ValueError(
            f"Parameter {name!r} is a DTensor with placements {placements}; DHSPG supports parameters sharded on "
            "dim 0 over a 1-D mesh (FSDP2's `fully_shard`) or replicated ones."
        )
    mesh = param.device_mesh
    rows, world, rank = param.shape[0], mesh.size(), mesh.get_local_rank()
    chunk = -(-rows // world)
    start = min(rows, rank * chunk)
    length = min(chunk, rows - start)
    if param.to_local().shape[0] != length:
        raise ValueError(
            f"Parameter {name!r}: rank {rank} holds {param.to_local().shape[0]} rows, but the dim-0 chunk layout of "
            f"{rows} rows over {world} ranks gives {length}; DHSPG expects FSDP2's even chunking."
        )
    return RowShard(start, length)


def shard_group(params: list[torch.Tensor]) -> dist.ProcessGroup | None:
    """The process group over which the sharded parameters among `params` are split (`None` if none is sharded)."""
    meshes = {id(p.device_mesh): p.device_mesh for p in params if isinstance(p, DTensor) and p.device_mesh.size() > 1}
    if not meshes:
        return None
    if len(meshes) > 1:
        raise ValueError("DHSPG needs every sharded parameter on the same device mesh (one `fully_shard` mesh).")
    (mesh,) = meshes.values()
    return mesh.get_group()


def is_first_rank(group: dist.ProcessGroup | None) -> bool:
    """Whether this process is the first rank of `group` (always true without one)."""
    return group is None or dist.get_rank(group) == 0


def all_reduce_sum(tensor: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """Sum `tensor` over the ranks of `group`, in place (one collective); a no-op without a group."""
    if group is not None:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
    return tensor


def sum_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over every rank, in place, when a process group with several ranks is initialised (data parallel:
    each rank recorded its own share of the batch); a no-op otherwise. One collective."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor)
    return tensor


def from_first_rank(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The tensors as rank 0 holds them, when a process group with several ranks is initialised (one collective)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensors
    # One flat float64 buffer (exact for bools, group ids and float32 norms), broadcast once.
    packed = torch.cat([t.to(torch.float64).flatten() for t in tensors])
    dist.broadcast(packed, src=0)
    out, start = [], 0
    for t in tensors:
        out.append(packed[start : start + t.numel()].view(t.shape).to(t.dtype))
        start += t.numel()
    return tuple(out)
