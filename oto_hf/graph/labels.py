"""What the propagation knows about each value of the traced graph.

A value's *label* is one of:
- `None`: it carries no prunable channel (masks, positions, inputs, constants);
- a `torch.Tensor` of int64 element ids with the value's shape (-1 where an entry carries no channel);
- a `TensorRef`: a parameter or buffer, possibly transposed, unsqueezed, expanded or cast, not yet combined with
  activations (its dims are resolved to element blocks only by the op that consumes it);
- a tuple of labels for ops with several outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Union

import torch

from .channels import ChannelRegistry


@dataclass(frozen=True)
class TensorRef:
    """A parameter (or buffer) seen through dimension-only ops.

    `dims[i]` is the dimension of the original tensor that the current dimension `i` indexes, or `None` for a
    dimension added by unsqueeze/expand.
    """

    name: str
    shape: tuple[int, ...]
    dims: tuple[int | None, ...]
    is_buffer: bool = False

    def elements(self, registry: ChannelRegistry, dim: int) -> torch.Tensor:
        """Element ids along current dimension `dim` (which must index the original tensor)."""
        source_dim = self.dims[dim]
        if source_dim is None:
            raise ValueError(f"Dimension {dim} of {self.name} is a broadcast dimension.")
        return registry.elements(self.name, source_dim, self.shape[dim], self.is_buffer)

    def channel_dims(self) -> list[int]:
        """Current dims that index the tensor with more than one entry."""
        return [i for i, (d, n) in enumerate(zip(self.dims, self.shape)) if d is not None and n > 1]

    def all_elements(self, registry: ChannelRegistry) -> torch.Tensor:
        ids = [self.elements(registry, d) for d in range(len(self.dims)) if self.dims[d] is not None]
        return torch.cat(ids) if ids else torch.empty(0, dtype=torch.long)

    def with_dims(self, shape: tuple[int, ...], dims: tuple[int | None, ...]) -> TensorRef:
        return replace(self, shape=tuple(shape), dims=tuple(dims))


Label = Union[None, torch.Tensor, TensorRef, tuple]


def unlabeled(shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """A dense label with no channel anywhere."""
    return torch.full(tuple(shape), -1, dtype=torch.long)


def along(ids: torch.Tensor, dim: int, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """A dense label of `shape` whose entries at index i along `dim` are `ids[i]`."""
    view = [1] * len(shape)
    view[dim] = -1
    return ids.reshape(view).expand(tuple(shape)).clone()


def varies_along(label: torch.Tensor, dim: int) -> bool:
    """Whether entries of `label` differ along `dim` (that dim carries channel identity)."""
    if label.shape[dim] <= 1:
        return False
    return bool((label != label.narrow(dim, 0, 1)).any())


def labeled_ids(label: Label) -> torch.Tensor:
    """All element ids in a dense label (empty for anything else)."""
    if isinstance(label, torch.Tensor):
        ids = label[label >= 0]
        return ids.unique() if ids.numel() else ids
    return torch.empty(0, dtype=torch.long)
