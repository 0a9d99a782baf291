"""The per-group statistics of a DHSPG step, from one dense reduction per axis and one segmented sum."""

from __future__ import annotations

import torch

from .packed_index import GroupIndex

# Per-group statistics of every pruning step: squared norms of x and d and <x, d>, and the last two with each
# parameter's learning rate folded in.
STEP_KEYS: tuple[str, ...] = ("xx", "xd", "dd", "axx", "axd")


class Scratch:
    """One reusable flat buffer per dtype and device: elementwise products and denominators land there instead of in
    a fresh allocation per parameter and step. Tensors above `limit` elements (e.g. an embedding larger than every
    grouped weight) get a fresh tensor, so the buffer stays as small as the largest grouped weight."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._buffers: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}

    def like(self, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.numel() > self.limit:
            return torch.empty_like(tensor, memory_format=torch.contiguous_format)
        key = (tensor.dtype, tensor.device)
        buffer = self._buffers.get(key)
        if buffer is None or buffer.numel() < tensor.numel():
            buffer = self._buffers[key] = torch.empty(tensor.numel(), dtype=tensor.dtype, device=tensor.device)
        return buffer[: tensor.numel()].view(tensor.shape)

    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self._buffers.values())


def pruning_statistics(
    index: GroupIndex,
    params: list[torch.Tensor],
    directions: list[torch.Tensor | None],
    decays: list[float],
    lrs: list[float],
    importance: list[torch.Tensor] | None,
    with_l1: bool,
    scratch: Scratch,
) -> dict[str, torch.Tensor]:
    """Per-group statistics of one pruning step, over the local tensors of `index.params` (same order).

    `d + decay * x` is the step direction of a parameter; its statistics come from those of `d` without materialising
    it. Besides `STEP_KEYS`, `"xg"` (`<x, grad>`) comes from the `importance` rows when given (`importance_rows`,
    taken before the gradients were consumed), and `"l1"` (`sum |x|`) is computed `with_l1`.
    """
    keys = [*STEP_KEYS, *(["xg"] if importance is not None else []), *(["l1"] if with_l1 else [])]
    importance_of_axis = iter(importance or ())
    rows = []
    for x, d, decay, lr, axes in zip(params, directions, decays, lrs, index.axes, strict=True):
        buffer = scratch.like(x) if x.is_contiguous() else None
        for axis in axes:
            xx = axis.squared_norms(x, buffer)
            if d is None:
                xd = dd = torch.zeros_like(xx)
            else:
                xd, dd = axis.inner_products(x, d, buffer), axis.squared_norms(d, buffer)
            if decay:
                dd = (dd + 2 * decay * xd + decay**2 * xx).clamp_min_(0)
                xd = xd + decay * xx
            block = [xx, xd, dd, xx * lr, xd * lr]
            if importance is not None:
                block.append(next(importance_of_axis)[0])
            if with_l1:
                block.append(axis.sum_over_others(x.abs()))
            rows.append(torch.stack(block))
    return dict(zip(keys, index.segment_sums(rows), strict=True))


def importance_rows(
    index: GroupIndex, params: list[torch.Tensor], grads: list[torch.Tensor | None], scratch: Scratch
) -> list[torch.Tensor]:
    """Per axis of `index`, the `[1, n]` row of `<x, grad>` per hyper-row (local tensors in `index.params` order)."""
    rows = []
    for x, grad, axes in zip(params, grads, index.axes, strict=True):
        for axis in axes:
            if grad is None:
                rows.append(torch.zeros(1, axis.view_shape[axis.dim], device=x.device))
            else:
                buffer = scratch.like(x) if x.is_contiguous() and grad.dtype == x.dtype else None
                rows.append(axis.inner_products(x, grad, buffer)[None])
    return rows


def importance_statistics(
    index: GroupIndex, params: list[torch.Tensor], grads: list[torch.Tensor | None], scratch: Scratch
) -> torch.Tensor:
    """Per group, `<x_g, grad_g>` (the gradient of a mask on the group), over the local tensors of `index.params`."""
    return index.segment_sums(importance_rows(index, params, grads, scratch))[0]
