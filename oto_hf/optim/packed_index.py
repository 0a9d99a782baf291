"""The packed group index of DHSPG and its segmented reductions.

A group slice covers whole hyper-rows of one parameter: every element whose index along `dim` is in `indices`. So
instead of a group id per *element* (as large as the model), the index stores, for every sliced `(parameter, dim)` pair
(an *axis*), one group id per index along `dim`: a vector of length `param.shape[dim]`. A per-group quantity is then
one dense reduction per axis (sum over the other dims) followed by a single `index_add_` over the concatenation of all
axes; a per-group factor reaches the elements by an `index_select` on the axis vector and broadcasting. An element may
lie on two axes of the same parameter (rows of one group and columns of another, as in a conv or MLP layer whose
out-channels and in-channels are both prunable); it then counts in both group norms, as in OTO.

With FSDP2 (see `sharding`) every axis describes this rank's shard: an axis along dim 0 keeps the ids of the local
rows, and `segment_sums` adds the other ranks' partial sums with one `all_reduce`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .sharding import all_reduce_sum, is_first_rank, local, row_shard, shard_group

if TYPE_CHECKING:
    from oto_hf.graph.groups import ZeroInvariantGroup


@dataclass
class Axis:
    """Group id of every index along `dim` of one parameter's local part (`num_groups` marks indices in no group)."""

    dim: int
    group_ids: torch.Tensor
    reduce_dims: tuple[int, ...]
    view_shape: tuple[int, ...]

    def sum_over_others(self, values: torch.Tensor) -> torch.Tensor:
        """Sum `values` (shaped like the local parameter) over every dim but `dim`, in float32."""
        if not self.reduce_dims:
            return values.float()
        return values.sum(dim=self.reduce_dims, dtype=torch.float32)

    def squared_norms(self, values: torch.Tensor, scratch: torch.Tensor | None = None) -> torch.Tensor:
        """Squared L2 norm of each hyper-row of `values` along `dim`, in float32 (`scratch`: see `inner_products`)."""
        if not self.reduce_dims:
            return values.float().square()
        if self.dim == 0 and values.is_contiguous():
            # Reducing contiguous trailing dims: one pass, no temporary.
            return torch.linalg.vector_norm(values, dim=self.reduce_dims, dtype=torch.float32).square()
        # `vector_norm` over leading dims is ~10x slower on CPU than a product and a sum.
        return self.inner_products(values, values, scratch)

    def inner_products(
        self, values: torch.Tensor, other: torch.Tensor, scratch: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`<values, other>` over each hyper-row along `dim`, in float32.

        `scratch`, a tensor shaped and typed like `values`, receives the elementwise product, so that a step allocates
        no temporary of the parameter's size (on a CPU, fresh large allocations cost more than the arithmetic).
        """
        if scratch is None or not self.reduce_dims:  # without a reduction the product itself is the result
            return self.sum_over_others(values * other)
        return self.sum_over_others(torch.mul(values, other, out=scratch))

    def expand(self, per_group: torch.Tensor) -> torch.Tensor:
        """Broadcastable view of a `[num_groups + 1]` vector (last entry: indices in no group) along this axis."""
        return per_group.index_select(0, self.group_ids).view(self.view_shape)


class GroupIndex:
    """For each parameter touched by a group, its axes; plus the per-group sizes the budgets need.

    Args:
        groups (`Sequence[ZeroInvariantGroup]`): the groups, in id order (group `i` must have position `i`).
        params_by_name (`Mapping[str, torch.Tensor]`): every parameter a group slice names.
        optimizer_params (`Sequence[torch.Tensor]`): the parameters the optimizer updates; every sliced parameter
            must be one of them.
    """

    def __init__(
        self,
        groups: Sequence[ZeroInvariantGroup],
        params_by_name: Mapping[str, torch.Tensor],
        optimizer_params: Sequence[torch.Tensor],
    ) -> None:
        self.num_groups = len(groups)
        known = {id(p) for p in optimizer_params}
        # Keyed by parameter identity, so tied weights reached under two names share one entry.
        params: dict[int, torch.Tensor] = {}
        names: dict[int, str] = {}
        pieces: dict[int, dict[int, tuple[list[torch.Tensor], list[int]]]] = {}
        for position, group in enumerate(groups):
            if getattr(group, "id", position) != position:
                raise ValueError(
                    f"The group at position {position} has id {group.id}; group ids must equal positions."
                )
            for name, dim, indices in group.slices:
                param = params_by_name.get(name)
                if param is None:
                    raise ValueError(
                        f"Group {position} slices parameter {name!r}, which is not in `named_parameters`. Pass the "
                        "names and parameters of the model the GroupSet was discovered on."
                    )
                if id(param) not in known:
                    raise ValueError(
                        f"Group {position} slices parameter {name!r}, which is not in the optimizer's `params` (is it "
                        "frozen?). Every parameter of a prunable group must be optimised."
                    )
                if not -param.dim() <= dim < param.dim():
                    raise ValueError(
                        f"Group {position} slices {name!r} along dim {dim}, but it has {param.dim()} dims."
                    )
                params[id(param)] = param
                names.setdefault(id(param), name)
                per_dim = pieces.setdefault(id(param), {}).setdefault(dim % param.dim(), ([], []))
                per_dim[0].append(torch.as_tensor(indices, dtype=torch.long).flatten().cpu())
                per_dim[1].append(position)

        self.params: list[torch.Tensor] = list(params.values())
        self.shard_group = shard_group(self.params)
        self.axes: list[list[Axis]] = []
        group_numel = torch.zeros(self.num_groups + 1, dtype=torch.float64)
        counted_ids = []
        for param in self.params:
            name = names[id(param)]
            shard = row_shard(param, name)
            local_shape = tuple(local(param).shape)
            param_axes = []
            for dim, (index_list, positions) in sorted(pieces[id(param)].items()):
                ids = _axis_ids(name, dim, param.shape[dim], index_list, positions, self.num_groups)
                # Elements per group, over the whole parameter, counting an element on two axes once per group.
                group_numel.index_add_(
                    0, ids, torch.full(ids.shape, param.numel() / param.shape[dim], dtype=torch.float64)
                )
                if shard is not None and dim == 0:
                    ids = ids[shard.start : shard.start + shard.length]
                view_shape = tuple(local_shape[d] if d == dim else 1 for d in range(param.dim()))
                reduce_dims = tuple(d for d in range(param.dim()) if d != dim)
                device = local(param).device
                param_axes.append(Axis(dim, ids.to(device), reduce_dims, view_shape))
                # A parameter held whole by every rank counts on the first rank only (the others add nothing).
                counted = shard is not None or is_first_rank(self.shard_group)
                counted_ids.append(ids if counted else torch.full_like(ids, self.num_groups))
            self.axes.append(param_axes)
        self.group_numel = group_numel[: self.num_groups]
        self.device = local(self.params[0]).device if self.params else torch.device("cpu")
        self.segment_ids = torch.cat(counted_ids).to(self.device) if counted_ids else torch.zeros(0, dtype=torch.long)

    def segment_sums(self, rows: list[torch.Tensor]) -> torch.Tensor:
        """Per-group sums: `rows[i]` is a `[k, local shape[dim]]` block for the i-th axis in `self.axes` order.

        Returns a `[k, num_groups]` tensor, computed with one `index_add_` over the packed group ids (and, with
        sharded parameters, one `all_reduce` over the ranks).
        """
        packed = torch.cat([row.to(self.device) for row in rows], dim=1)
        sums = torch.zeros(packed.shape[0], self.num_groups + 1, dtype=packed.dtype, device=self.device)
        sums.index_add_(1, self.segment_ids, packed)
        return all_reduce_sum(sums[:, : self.num_groups].contiguous(), self.shard_group)

    def expand(self, per_group: torch.Tensor, position: int, combine: Callable) -> torch.Tensor:
        """Broadcastable per-element view of an `extend`ed per-group vector for the parameter at `position` in
        `self.params`, its axes combined with `combine` (e.g. `torch.mul` for masks)."""
        axes = self.axes[position]
        out = axes[0].expand(per_group)
        for axis in axes[1:]:
            out = combine(out, axis.expand(per_group))
        return out

    def index_nbytes(self) -> int:
        """Bytes held by the index tensors (kept for the optimizer's lifetime)."""
        return sum(axis.group_ids.numel() * axis.group_ids.element_size() for a in self.axes for axis in a) + (
            self.segment_ids.numel() * self.segment_ids.element_size()
        )


def _axis_ids(
    name: str, dim: int, size: int, index_list: list[torch.Tensor], positions: list[int], sentinel: int
) -> torch.Tensor:
    """Group id per index along `dim` of `name`, checking that no index is claimed twice."""
    indices = torch.cat(index_list)
    owners = torch.repeat_interleave(
        torch.tensor(positions, dtype=torch.long), torch.tensor([len(i) for i in index_list], dtype=torch.long)
    )
    if indices.numel() and (indices.min() < 0 or indices.max() >= size):
        bad = owners[(indices < 0) | (indices >= size)][0]
        raise ValueError(f"Group {int(bad)} slices {name!r} along dim {dim} at indices outside [0, {size - 1}].")
    counts = torch.bincount(indices, minlength=size)
    if indices.numel() and counts.max() > 1:
        index = int(counts.argmax())
        claimants = owners[indices == index].tolist()
        raise ValueError(
            f"Groups {claimants[0]} and {claimants[1]} both slice {name!r} along dim {dim} at index {index}; each "
            "index of a parameter dim may belong to one group only."
        )
    ids = torch.full((size,), sentinel, dtype=torch.long)
    ids[indices] = owners
    return ids


def extend(per_group: torch.Tensor, fill: float) -> torch.Tensor:
    """Append the value for indices that belong to no group to a `[num_groups]` vector."""
    return torch.cat([per_group, per_group.new_full((1,), fill)])
